//! Real processes on loopback ports: the `gateway` binary started on a config whose
//! listeners bind port 0 (the real ports are read from its start-up log), and sample backends
//! started in-process on `127.0.0.1:0`. Each test owns its processes; they stop on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

pub const GATEWAY_BIN: &str = env!("CARGO_BIN_EXE_gateway-under-test");
pub const BACKEND_BIN: &str = env!("CARGO_BIN_EXE_backend-under-test");

/// Lines a process wrote (stdout and stderr), shared with the threads that read them.
#[derive(Clone, Default)]
pub struct Lines {
    inner: Arc<(Mutex<Vec<String>>, Condvar)>,
}

impl Lines {
    fn push(&self, line: String) {
        let (lock, cv) = &*self.inner;
        lock.lock().unwrap().push(line);
        cv.notify_all();
    }

    pub fn all(&self) -> Vec<String> {
        self.inner.0.lock().unwrap().clone()
    }

    /// The first line for which `pred` holds, waiting up to `timeout` for it to appear.
    pub fn wait_for(&self, timeout: Duration, pred: impl Fn(&str) -> bool) -> Option<String> {
        let (lock, cv) = &*self.inner;
        let deadline = Instant::now() + timeout;
        let mut lines = lock.lock().unwrap();
        loop {
            if let Some(l) = lines.iter().find(|l| pred(l)) {
                return Some(l.clone());
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            lines = cv.wait_timeout(lines, deadline - now).unwrap().0;
        }
    }

    /// Lines that parse as JSON log records.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.all()
            .iter()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    fn spawn_reader(&self, stream: impl std::io::Read + Send + 'static) {
        let lines = self.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                match line {
                    Ok(l) => lines.push(l),
                    Err(_) => break,
                }
            }
        });
    }
}

/// A running gateway process.
pub struct Gateway {
    child: Child,
    _dir: tempfile::TempDir,
    listeners: HashMap<String, SocketAddr>,
    pub admin: Option<SocketAddr>,
    pub lines: Lines,
}

impl Gateway {
    /// Start `gateway run -c <config>` and wait until it is ready.
    pub fn start(config: &str) -> Gateway {
        Self::start_with_env(config, &[])
    }

    pub fn start_with_env(config: &str, env: &[(&str, &str)]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).unwrap();
        let mut cmd = Command::new(GATEWAY_BIN);
        cmd.arg("run")
            .arg("-c")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start the gateway binary");
        let lines = Lines::default();
        lines.spawn_reader(child.stdout.take().unwrap());
        lines.spawn_reader(child.stderr.take().unwrap());
        let ready = lines.wait_for(Duration::from_secs(30), |l| {
            l.contains("\"gateway ready\"") || l.contains("error")
        });
        if !ready
            .as_deref()
            .is_some_and(|l| l.contains("gateway ready"))
        {
            let _ = child.kill();
            panic!(
                "gateway did not become ready; its output:\n{}",
                lines.all().join("\n")
            );
        }
        let mut listeners = HashMap::new();
        let mut admin = None;
        for v in lines.json() {
            match v["message"].as_str() {
                Some("listener bound") => {
                    let name = v["listener"].as_str().unwrap().to_string();
                    listeners.insert(name, v["addr"].as_str().unwrap().parse().unwrap());
                }
                Some("admin bound") => admin = Some(v["addr"].as_str().unwrap().parse().unwrap()),
                _ => {}
            }
        }
        Gateway {
            child,
            _dir: dir,
            listeners,
            admin,
            lines,
        }
    }

    /// The address a listener really bound.
    pub fn addr(&self, listener: &str) -> SocketAddr {
        *self
            .listeners
            .get(listener)
            .unwrap_or_else(|| panic!("no listener {listener:?}"))
    }

    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("admin listener")
    }

    /// `GET /metrics` on the admin port, as text.
    pub async fn metrics_text(&self) -> String {
        let body = crate::client::get(self.admin(), "/metrics").await.body;
        String::from_utf8(body.to_vec()).unwrap()
    }

    /// The events of `kind` in `/admin/events` (oldest first).
    pub async fn events(&self, kind: &str) -> Vec<serde_json::Value> {
        let ev = crate::client::get(self.admin(), "/admin/events")
            .await
            .json();
        ev["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["kind"] == kind)
            .cloned()
            .collect()
    }

    /// The value of the first metric line starting with `line_prefix` (name and labels).
    pub async fn metric(&self, line_prefix: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .find_map(|l| l.strip_prefix(line_prefix))
            .map(|v| v.trim().parse().unwrap())
            .unwrap_or_else(|| panic!("no metric {line_prefix}"))
    }

    /// The config file the gateway runs (and reloads).
    pub fn config_path(&self) -> PathBuf {
        self._dir.path().join("gateway.toml")
    }

    /// Replace the config file (atomically, as careful tools do: write aside, rename).
    pub fn write_config(&self, config: &str) {
        let aside = self._dir.path().join("gateway.toml.new");
        std::fs::write(&aside, config).unwrap();
        std::fs::rename(&aside, self.config_path()).unwrap();
    }

    /// Send SIGHUP (reload).
    pub fn sighup(&self) {
        let status = Command::new("kill")
            .arg("-HUP")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The address a listener bound most recently (listeners added by a reload included).
    pub fn latest_addr(&self, listener: &str) -> Option<SocketAddr> {
        self.lines
            .json()
            .iter()
            .rev()
            .find(|v| v["message"] == "listener bound" && v["listener"] == listener)
            .and_then(|v| v["addr"].as_str()?.parse().ok())
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send SIGTERM (graceful drain).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Wait for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Peak resident memory of the process (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Run `gateway <args>` to completion: (exit code, stdout, stderr).
pub fn gateway_cmd(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let out = Command::new(GATEWAY_BIN)
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run the gateway binary");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A sample backend in this test's runtime, on an ephemeral loopback port.
pub async fn backend(name: &str) -> backends::Handle {
    backend_with(backends::Options {
        name: name.to_string(),
        ..Default::default()
    })
    .await
}

pub async fn backend_with(opts: backends::Options) -> backends::Handle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    backends::spawn(listener, &opts).unwrap()
}

/// Seconds since the Unix epoch (JWT and signature timestamps).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// An HS256 token for `sub`, valid for ten minutes.
pub fn hs256_token(secret: &[u8], sub: &str) -> String {
    let claims = serde_json::json!({"sub": sub, "exp": unix_now() + 600});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .unwrap()
}

/// An address nothing listens on (connections are refused).
pub fn closed_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

/// The repository root (for `config/demo.toml` and friends).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A config with one plain listener and one upstream of the given targets, one catch-all
/// route, and any extra TOML appended.
pub fn simple_config(targets: &[SocketAddr], extra: &str) -> String {
    let targets: Vec<String> = targets
        .iter()
        .map(|a| format!("{{ addr = \"{a}\" }}"))
        .collect();
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[upstreams.app]
targets = [{}]

[[routes]]
name = "all"
match = {{ path_prefix = "/" }}
upstream = "app"
{extra}
"#,
        targets.join(", ")
    )
}

pub type OriginBody = http_body_util::combinators::BoxBody<bytes::Bytes, std::convert::Infallible>;

/// A custom origin in this test's runtime, for what the sample backend cannot do (odd
/// headers, a body streamed at the test's pace).
pub async fn origin<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(http::Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<OriginBody>> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let handler = handler.clone();
                    async move { Ok::<_, std::convert::Infallible>(handler(req).await) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

pub fn full(body: &'static str) -> OriginBody {
    use http_body_util::BodyExt;
    http_body_util::Full::new(bytes::Bytes::from_static(body.as_bytes())).boxed()
}

/// Make sure a command-line tool the tests drive is installed: tests never skip for a
/// missing tool, they install it (Debian package, as root; `.ci/run` does it up front).
pub fn require_tool(command: &str, package: &str) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let present = |c: &str| {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {c}"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if present(command) {
        return;
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}"
        ))
        .status()
        .expect("run apt-get");
    assert!(
        status.success() && present(command),
        "could not install {package} (needed for {command}); run .ci/run as root"
    );
}

/// Make sure a Debian package the tests need (a library, a server) is installed.
pub fn require_package(package: &str) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let installed = |p: &str| {
        Command::new("dpkg")
            .args(["-s", p])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if installed(package) {
        return;
    }
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "(apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}"
        ))
        .status()
        .expect("run apt-get");
    assert!(
        status.success() && installed(package),
        "could not install {package}; run .ci/run as root"
    );
}

/// A process the test owns; killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Make sure a Python module a reference script needs is importable (pip, as root; `.ci/run`
/// does it up front).
pub fn require_python_module(module: &str, pip_name: &str) {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let importable = || {
        Command::new("python3")
            .args(["-c", &format!("import {module}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if importable() {
        return;
    }
    require_tool("python3", "python3");
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "python3 -m pip --version >/dev/null 2>&1 || ((apt-get update -qq || true) && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-pip); python3 -m pip install -q --break-system-packages {pip_name} || python3 -m pip install -q {pip_name}"
        ))
        .status()
        .expect("run pip");
    assert!(
        status.success() && importable(),
        "could not install the Python package {pip_name}; run .ci/run as root"
    );
}

/// A real redis-server on `addr` (loopback), no persistence, its files in `dir`; waits until
/// it accepts connections.
pub fn redis_server(addr: SocketAddr, dir: &Path, extra: &[&str]) -> Proc {
    require_package("redis-server");
    let port = addr.port().to_string();
    let mut args = vec![
        "--port",
        port.as_str(),
        "--bind",
        "127.0.0.1",
        "--dir",
        dir.to_str().unwrap(),
        "--save",
        "",
        "--appendonly",
        "no",
    ];
    args.extend_from_slice(extra);
    let child = Command::new("redis-server")
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server");
    let proc = Proc(child);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "redis-server did not start"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    proc
}

/// What a recording origin saw of one request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    /// Path and query as received.
    pub target: String,
    pub headers: http::HeaderMap,
}

pub type SeenLog = std::sync::Arc<std::sync::Mutex<Vec<Seen>>>;

/// An origin that records every request (method, target, headers) and answers `origin`,
/// with `decorate` applied to its response headers.
pub async fn recording_origin(decorate: fn(&mut http::HeaderMap)) -> (SocketAddr, SeenLog) {
    let seen: SeenLog = Default::default();
    let log = seen.clone();
    let addr = origin(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            log.lock().unwrap().push(Seen {
                method: req.method().to_string(),
                target: req
                    .uri()
                    .path_and_query()
                    .map_or("", |p| p.as_str())
                    .to_string(),
                headers: req.headers().clone(),
            });
            let mut res = http::Response::new(full("origin"));
            decorate(res.headers_mut());
            res
        }
    })
    .await;
    (addr, seen)
}
