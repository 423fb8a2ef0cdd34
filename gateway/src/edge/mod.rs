//! (1) Bytes to requests: the accept loop of each listener with its connection limit. Each
//! accepted connection goes to `conn.rs` (TLS, HTTP/1 or HTTP/2, limits, drain), whose requests
//! go to the edge stack (`stack.rs`). The process around it (shared state, serve, drain,
//! reload, binary hand-over) is `server/`.

pub mod conn;
pub mod h1;
pub mod h2_frames;
pub mod io;
pub mod proxy_protocol;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::watch;

pub use crate::ctx::{ConnInfo, ListenerInfo};
pub use crate::server::Shared;

/// Counts a connection as open while it lives, on the listener and for the drain.
struct ConnGuard {
    shared: Arc<Shared>,
    active: prometheus::IntGauge,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.active.dec();
        self.shared.connection_closed();
    }
}

/// Start accepting on `listener`; the handle's sender stops it (a reload removed or moved
/// the listener). It also stops when the gateway drains.
pub(crate) fn spawn_accept(
    socket: std::net::TcpListener,
    name: String,
    configured: SocketAddr,
    shared: Arc<Shared>,
) -> std::io::Result<crate::server::reload::ListenerHandle> {
    let dup = socket.try_clone()?;
    let listener = TcpListener::from_std(socket)?;
    let (stop, stopped) = watch::channel(false);
    let done = stop.clone();
    tokio::spawn(async move {
        accept_loop(listener, name, shared, stopped).await;
        done.send_replace(true);
    });
    Ok(crate::server::reload::ListenerHandle {
        configured,
        stop,
        socket: dup,
    })
}

async fn accept_loop(
    listener: TcpListener,
    name: String,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let mut drain = shared.drain_signal();
    let mut refused_logged: Option<Instant> = None;
    loop {
        let accepted = tokio::select! {
            biased;
            _ = drain.changed() => break,
            _ = stop.wait_for(|s| *s) => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(listener = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let (listener_rt, max) = {
            let rt = shared.runtime.load();
            (
                rt.listener(&name).cloned(),
                rt.config.limits.max_connections,
            )
        };
        let Some(listener_rt) = listener_rt else {
            continue;
        };
        let active = listener_rt.metrics.active.clone();
        if active.get() >= max as i64 {
            if refused_logged.is_none_or(|t| t.elapsed() > Duration::from_secs(10)) {
                refused_logged = Some(Instant::now());
                tracing::warn!(listener = %name, max_connections = max, "connection limit reached: closing new connections at accept");
            }
            drop(stream);
            continue;
        }
        active.inc();
        shared.connection_opened();
        let guard = ConnGuard {
            shared: shared.clone(),
            active,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let _guard = guard;
            conn::serve(stream, peer, listener_rt, shared).await;
        });
    }
    tracing::info!(listener = %name, "stopped accepting");
}
