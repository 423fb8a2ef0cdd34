//! What the comparison binaries (`perf-compare`, `failover-compare`) share: child processes
//! that stop cleanly, the binaries built beside them, free ports, and tools from Debian.

// Included by both binaries; each uses part of it.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A child process, stopped on drop: SIGTERM first (nginx's master then stops its workers;
/// SIGKILL would orphan them, and they keep using CPU), SIGKILL after 3 s.
pub struct Proc(pub Child);

impl Proc {
    /// Kill it now with SIGKILL (a crash, not a shutdown).
    pub fn kill_now(mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.0.try_wait() {
            return;
        }
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A binary built next to this one (`gateway-under-test`, `backend-under-test`).
/// Build the binaries under test in this profile, so a run measures the sources as they are
/// (`cargo run --bin perf-compare` alone builds only itself).
pub fn build_siblings() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let release = !cfg!(debug_assertions);
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-p",
        "tests",
        "--bin",
        "gateway-under-test",
        "--bin",
        "backend-under-test",
    ]);
    if release {
        cmd.arg("--release");
    }
    let ok = cmd.status().is_ok_and(|s| s.success());
    assert!(ok, "could not build the binaries under test");
}

pub fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().expect("bin dir").join(name)
}

pub fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

pub fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {addr}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Make sure `command` exists, installing the first of `packages` that apt-get can (root).
pub fn ensure(command: &str, packages: &[&str]) {
    let present = || {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {command}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if present() {
        return;
    }
    let _ = Command::new("sh")
        .arg("-c")
        .arg("apt-get update -qq")
        .status();
    for p in packages {
        let ok = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {p}"
            ))
            .status()
            .is_ok_and(|s| s.success());
        if ok && present() {
            return;
        }
    }
    panic!("could not install {command} from {packages:?} (run as root)");
}
