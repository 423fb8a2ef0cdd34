//! Replacing the binary without refusing a connection (nginx's binary upgrade, done the same
//! way): on SIGUSR2 the running gateway starts the binary now at its path and hands it its
//! listening sockets, by systemd's socket-passing convention (`LISTEN_FDS`, descriptors from
//! 3, `LISTEN_FDNAMES`). The new process serves on those very sockets, so connections waiting
//! in their accept queues are taken by whichever process accepts first: none is refused. Once
//! the new process is ready it says so on a Unix socket the old one listens on
//! (`GATEWAY_READY_SOCKET`); the old one then drains (stops accepting, finishes its requests,
//! exits) as on SIGTERM. If the new one fails to start or is not ready within 30 s, the old
//! one kills it and keeps serving.
//!
//! The same convention means a systemd `.socket` unit can pass the sockets too (name them with
//! `FileDescriptorName=` after the listener, `admin` for the admin port). Under systemd
//! (`Type=notify`, `NotifyAccess=all`) the new process tells systemd it is the main process
//! now (`MAINPID=`), so the old one exiting does not stop the service.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};

use super::Shared;

const READY: &str = "GATEWAY_READY_SOCKET";

/// Sockets handed over by the previous process (or systemd), by name (`admin` for the admin
/// port).
pub struct Inherited(HashMap<String, std::net::TcpListener>);

impl Inherited {
    /// Take the passed sockets (once: the variables are removed).
    pub fn from_env() -> Self {
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|n| n.split(':').map(str::to_string).collect())
            .unwrap_or_default();
        let mut fds = listenfd::ListenFd::from_env();
        let mut out = HashMap::new();
        for i in 0..fds.len() {
            if let (Ok(Some(socket)), Some(name)) = (fds.take_tcp_listener(i), names.get(i)) {
                out.insert(name.clone(), socket);
            }
        }
        if !out.is_empty() {
            tracing::info!(sockets = ?out.keys().collect::<Vec<_>>(), "serving on sockets handed over by the previous process");
        }
        Self(out)
    }

    /// The inherited socket for `name` if it listens on `addr` (any port when `addr`'s is 0).
    pub fn take(
        &mut self,
        name: &str,
        addr: std::net::SocketAddr,
    ) -> Option<std::net::TcpListener> {
        let socket = self.0.remove(name)?;
        let local = socket.local_addr().ok()?;
        let same = local.ip() == addr.ip() && (addr.port() == 0 || local.port() == addr.port());
        if !same {
            return None;
        }
        socket.set_nonblocking(true).ok()?;
        Some(socket)
    }
}

/// Tell the previous process (if any) and systemd (if any) that this one is ready.
pub fn announce_ready() {
    if let Ok(path) = std::env::var(READY) {
        if let Ok(mut s) = UnixStream::connect(&path) {
            let _ = writeln!(s, "ready {}", std::process::id());
        }
    }
    if let Ok(path) = std::env::var("NOTIFY_SOCKET") {
        let msg = format!("READY=1\nMAINPID={}\n", std::process::id());
        if let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() {
            if let Some(abstract_name) = path.strip_prefix('@') {
                use std::os::linux::net::SocketAddrExt;
                if let Ok(addr) =
                    std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes())
                {
                    let _ = sock.send_to_addr(msg.as_bytes(), &addr);
                }
            } else {
                let _ = sock.send_to(msg.as_bytes(), &path);
            }
        }
    }
}

/// Start the new binary with `sockets`; `Ok(pid)` once it is ready.
fn spawn_successor(sockets: Vec<(String, OwnedFd)>) -> Result<u32, String> {
    let exe = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    // The binary was replaced on disk: /proc/self/exe names the old, deleted file.
    let exe = std::path::PathBuf::from(
        exe.to_string_lossy()
            .trim_end_matches(" (deleted)")
            .to_string(),
    );
    let dir = std::env::temp_dir();
    let ready_path = dir.join(format!("gateway-handover-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&ready_path);
    let ready = UnixListener::bind(&ready_path).map_err(|e| format!("ready socket: {e}"))?;
    let names: Vec<String> = sockets.iter().map(|(n, _)| n.clone()).collect();
    let mappings: Vec<FdMapping> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, (_, fd))| FdMapping {
            parent_fd: fd,
            child_fd: 3 + i as i32,
        })
        .collect();
    let mut cmd = Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env("LISTEN_FDS", names.len().to_string())
        .env("LISTEN_FDNAMES", names.join(":"))
        .env_remove("LISTEN_PID")
        .env(READY, &ready_path)
        .stdin(Stdio::null());
    cmd.fd_mappings(mappings)
        .map_err(|e| format!("socket hand-over: {e}"))?;
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    drop(cmd);
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let ok = ready.accept().is_ok_and(|(s, _)| {
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).is_ok() && line.starts_with("ready")
        });
        let _ = tx.send(ok);
    });
    let outcome = rx.recv_timeout(Duration::from_secs(30));
    let _ = std::fs::remove_file(&ready_path);
    match outcome {
        Ok(true) => {
            // Reap it whenever it ends (it normally outlives us).
            std::thread::spawn(move || {
                let _ = child.wait();
            });
            Ok(pid)
        }
        _ => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!(
                "the new process (pid {pid}) did not become ready within 30 s"
            ))
        }
    }
}

/// On SIGUSR2, hand the sockets to a new process of the binary; when it is ready, drain.
pub fn spawn_upgrade_on_signal(shared: &Arc<Shared>) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut usr2) = signal(SignalKind::user_defined2()) else {
        return;
    };
    let shared = shared.clone();
    tokio::spawn(async move {
        while usr2.recv().await.is_some() {
            let sockets = match shared.listening_sockets() {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "binary upgrade: cannot share the sockets; still serving");
                    continue;
                }
            };
            tracing::info!(
                sockets = sockets.len(),
                "SIGUSR2: starting the new binary with our sockets"
            );
            match tokio::task::spawn_blocking(move || spawn_successor(sockets)).await {
                Ok(Ok(pid)) => {
                    tracing::info!(new_pid = pid, "handed over to the new process");
                    // The new process is ready: its admin port answers from now on (ours
                    // would say 503 while we drain, and a probe must not see that).
                    shared.stop_admin();
                    shared.handed_over.notify_one();
                    return;
                }
                Ok(Err(e)) => tracing::error!(error = %e, "binary upgrade failed; still serving"),
                Err(e) => tracing::error!(error = %e, "binary upgrade failed; still serving"),
            }
        }
    });
}
