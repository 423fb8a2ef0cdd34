//! The process shell: state that outlives config generations (`Shared`), binding the
//! listeners, serving until a signal, draining, and the reload (`reload.rs`) and binary
//! hand-over (`handover.rs`) machinery. Not part of the request path: it starts the edge's
//! accept loops (`edge/`) and swaps config generations (`runtime.rs`) under them.

pub mod diff;
pub mod discover;
pub mod handover;
pub mod reload;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};

use crate::config::Config;
use crate::edge::spawn_accept;
use crate::metrics::Metrics;
use crate::policy::request_id::Snowflake;
use crate::runtime::Runtime;

/// State of the process that outlives config generations.
pub struct Shared {
    pub runtime: ArcSwap<Runtime>,
    pub metrics: Arc<Metrics>,
    pub ids: Arc<Snowflake>,
    pub started: Instant,
    draining: AtomicBool,
    drain_tx: watch::Sender<bool>,
    connections: AtomicUsize,
    connections_done: Notify,
    /// One reload at a time.
    pub reload_lock: tokio::sync::Mutex<()>,
    /// The running accept loops, by listener name.
    pub listeners: std::sync::Mutex<std::collections::HashMap<String, reload::ListenerHandle>>,
    /// A duplicate of the admin socket (handed over on a binary upgrade too).
    admin_socket: std::sync::Mutex<Option<std::net::TcpListener>>,
    /// A new process took over our sockets (SIGUSR2): drain and exit.
    pub handed_over: Notify,
    /// Set at a binary-upgrade hand-over: the admin port is the new process's from then on.
    admin_stop: watch::Sender<bool>,
    /// The readings behind `/admin/status` (touched only when someone asks).
    pub status: crate::admin::status::Sampler,
}

impl Shared {
    pub fn new(runtime: Runtime, metrics: Arc<Metrics>, ids: Arc<Snowflake>) -> Self {
        Self {
            runtime: ArcSwap::from_pointee(runtime),
            metrics,
            ids,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            drain_tx: watch::channel(false).0,
            connections: AtomicUsize::new(0),
            connections_done: Notify::new(),
            reload_lock: tokio::sync::Mutex::new(()),
            status: crate::admin::status::Sampler::default(),
            listeners: std::sync::Mutex::new(std::collections::HashMap::new()),
            admin_socket: std::sync::Mutex::new(None),
            handed_over: Notify::new(),
            admin_stop: watch::channel(false).0,
        }
    }

    /// Hand the admin port to the new process: stop accepting on it, close our copy of the
    /// socket, and let admin connections close after their current response.
    pub fn stop_admin(&self) {
        if let Ok(mut slot) = self.admin_socket.lock() {
            slot.take();
        }
        self.admin_stop.send_replace(true);
    }

    /// Whether a binary upgrade handed our sockets to a new process.
    pub fn is_handed_over(&self) -> bool {
        *self.admin_stop.borrow()
    }

    /// Resolves (changes to `true`) when the admin port was handed over.
    pub fn admin_stop_signal(&self) -> watch::Receiver<bool> {
        self.admin_stop.subscribe()
    }

    /// Duplicates of the listening sockets, by listener name (`admin` for the admin port),
    /// for a binary upgrade.
    pub fn listening_sockets(&self) -> std::io::Result<Vec<(String, std::os::fd::OwnedFd)>> {
        let mut out = Vec::new();
        if let Ok(h) = self.listeners.lock() {
            for (name, l) in h.iter() {
                out.push((name.clone(), l.socket.try_clone()?.into()));
            }
        }
        if let Ok(Some(admin)) = self.admin_socket.lock().as_deref() {
            out.push(("admin".to_string(), admin.try_clone()?.into()));
        }
        Ok(out)
    }

    /// Resolves (changes to `true`) when the gateway starts draining.
    pub fn drain_signal(&self) -> watch::Receiver<bool> {
        self.drain_tx.subscribe()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// A client connection was accepted (it counts for the drain until `connection_closed`).
    pub(crate) fn connection_opened(&self) {
        self.connections.fetch_add(1, Ordering::AcqRel);
    }

    /// A client connection (or the tunnel it became) closed.
    pub(crate) fn connection_closed(&self) {
        if self.connections.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.connections_done.notify_waiters();
        }
    }

    /// Client connections open now, on every listener.
    pub fn open_connections(&self) -> usize {
        self.connections.load(Ordering::Acquire)
    }

    /// Stop accepting, tell every connection to finish its requests and close.
    fn start_drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.drain_tx.send_replace(true);
    }
}

/// Listeners bound before serving, so a taken port fails the start, not the first request.
/// Tests bind `127.0.0.1:0` and read the real addresses from here.
#[derive(Debug)]
pub struct Bound {
    pub listeners: Vec<(String, std::net::TcpListener)>,
    pub admin: Option<std::net::TcpListener>,
}

impl Bound {
    pub fn addr(&self, listener: &str) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|(n, _)| n == listener)
            .and_then(|(_, l)| l.local_addr().ok())
    }
}

/// Bind every listener and the admin port of `config`, or take them over from the process
/// this one replaces (`handover.rs`).
pub fn bind(config: &Config) -> Result<Bound, String> {
    let mut inherited = handover::Inherited::from_env();
    let mut listeners = Vec::new();
    for l in &config.listeners {
        let socket = match inherited.take(&l.name, l.listen) {
            Some(s) => s,
            None => bind_one(l.listen).map_err(|e| {
                format!("listener {:?}: cannot listen on {}: {e}", l.name, l.listen)
            })?,
        };
        listeners.push((l.name.clone(), socket));
    }
    let admin = match &config.admin {
        Some(a) => Some(match inherited.take("admin", a.listen) {
            Some(s) => s,
            None => bind_one(a.listen)
                .map_err(|e| format!("admin: cannot listen on {}: {e}", a.listen))?,
        }),
        None => None,
    };
    // Sockets the new config no longer has are closed here (dropped).
    Ok(Bound { listeners, admin })
}

pub(crate) fn bind_one(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Serve `config` on `bound` until `shutdown` resolves, then drain: stop accepting, let
/// in-flight requests finish (up to `drain_timeout`), return.
pub async fn serve(
    config: Config,
    bound: Bound,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let metrics = Arc::new(Metrics::new());
    let ids = Arc::new(Snowflake::new(config.server.node_id));
    let drain_timeout = config.server.drain_timeout;
    let summary = config.summary();
    let path = config.path.clone();
    let configured: Vec<(String, SocketAddr)> = config
        .listeners
        .iter()
        .map(|l| (l.name.clone(), l.listen))
        .collect();
    // Names are looked up before anything serves: a `host:port` target that does not resolve
    // fails the start; discovering upstreams get a first lookup (they may start empty).
    crate::discovery::prepare(&config, &metrics)
        .await
        .map_err(|e| e.join("\n"))?;
    let found = crate::discovery::found();
    let runtime = Runtime::build(Arc::new(config), &metrics, &ids, 1, None, &found, false)?;
    let shared = Arc::new(Shared::new(runtime, metrics, ids));
    discover::reconcile(&shared);

    for (name, std_listener) in bound.listeners {
        let addr = std_listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(listener = %name, %addr, "listener bound");
        let configured = configured
            .iter()
            .find(|(n, _)| *n == name)
            .map_or(addr, |(_, a)| *a);
        let handle = spawn_accept(std_listener, name.clone(), configured, shared.clone())
            .map_err(|e| format!("listener {name:?}: {e}"))?;
        if let Ok(mut h) = shared.listeners.lock() {
            h.insert(name, handle);
        }
    }
    reload::spawn_signal_reloads(&shared);
    crate::access_log::spawn_reopen_on_signal();
    reload::spawn_file_watch(&shared, &path);
    if let Some(std_listener) = bound.admin {
        if let (Ok(mut slot), Ok(dup)) = (shared.admin_socket.lock(), std_listener.try_clone()) {
            *slot = Some(dup);
        }
        let listener = TcpListener::from_std(std_listener).map_err(|e| format!("admin: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        tracing::info!(%addr, "admin bound");
        tokio::spawn(crate::admin::serve(listener, shared.clone()));
    }
    tracing::info!(%summary, generation = 1, pid = std::process::id(), "gateway ready");
    handover::announce_ready();
    handover::spawn_upgrade_on_signal(&shared);

    tokio::select! {
        () = shutdown => {}
        () = shared.handed_over.notified() => {
            tracing::info!("the new process serves now: draining");
        }
    }

    let open = shared.open_connections();
    tracing::info!(
        open_connections = open,
        drain_timeout_ms = drain_timeout.as_millis() as u64,
        "draining"
    );
    shared.start_drain();
    let loops: Vec<_> = shared
        .listeners
        .lock()
        .map(|mut h| h.drain().map(|(_, h)| h).collect())
        .unwrap_or_default();
    for h in loops {
        // The accept loops stop on the drain signal; wait until each has.
        let mut rx = h.stop.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(1), rx.wait_for(|gone| *gone)).await;
    }
    let drained = tokio::time::timeout(drain_timeout, async {
        loop {
            let notified = shared.connections_done.notified();
            if shared.open_connections() == 0 {
                break;
            }
            notified.await;
        }
    })
    .await;
    match drained {
        Ok(()) => tracing::info!("drained: every connection closed"),
        Err(_) => tracing::warn!(
            open_connections = shared.open_connections(),
            "drain_timeout reached: closing the remaining connections"
        ),
    }
    Ok(())
}
