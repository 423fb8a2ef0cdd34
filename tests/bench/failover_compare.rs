//! Kill a backend under load, through nginx and through the gateway, and compare what clients
//! see. `cargo run --release -p tests --bin failover-compare` (installs nginx if missing).
//!
//! Three sample backends; 8 clients send GETs over keep-alive connections for 20 s. At 5 s one
//! backend is SIGKILLed and its port taken by a "tombstone" that accepts connections and
//! resets them at once: to a proxy that is a dead backend (connection reset), and it lets us
//! count every attempt the proxy still makes to it. At 12 s the tombstone goes and the backend
//! starts again (the tombstone closes each connection it accepts, which a proxy reads as a
//! backend that died mid-request). Reported per proxy: failed requests seen by clients, how long after the kill
//! the proxy still sent to the dead target (and how many attempts), and how long after the
//! restart it took the target back.
//!
//! Both proxies get equivalent passive settings (3 failures, 10 s out; retry on error,
//! timeout, 502/503/504; 300 ms connect timeout); the gateway also runs its active health
//! check (1 s interval, 2 probes to flip), which open-source nginx does not have.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};

#[path = "common.rs"]
mod common;
use common::{ensure, free_port, sibling, wait_listening, Proc};

const RUN: Duration = Duration::from_secs(20);
const KILL_AT: Duration = Duration::from_secs(5);
const RESTART_AT: Duration = Duration::from_secs(12);
const CLIENTS: usize = 8;

fn start_backend(addr: SocketAddr, name: &str) -> Proc {
    let child = Command::new(sibling("backend-under-test"))
        .args(["--listen", &addr.to_string(), "--name", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start backend");
    wait_listening(addr);
    Proc(child)
}

fn start_nginx(dir: &Path, listen: SocketAddr, backends: &[SocketAddr]) -> Proc {
    let servers: String = backends
        .iter()
        .map(|b| format!("    server {b} max_fails=3 fail_timeout=10s;\n"))
        .collect();
    let conf = format!(
        r#"worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  upstream backends {{
{servers}    keepalive 64;
  }}
  server {{
    listen {listen};
    location / {{
      proxy_pass http://backends;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_next_upstream error timeout http_502 http_503 http_504;
      proxy_next_upstream_tries 3;
      proxy_connect_timeout 300ms;
      proxy_read_timeout 2s;
    }}
  }}
}}
"#,
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new("nginx")
        .args([
            "-p",
            dir.to_str().unwrap(),
            "-c",
            path.to_str().unwrap(),
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    wait_listening(listen);
    Proc(child)
}

fn start_gateway(dir: &Path, listen: SocketAddr, backends: &[SocketAddr]) -> Proc {
    let targets: Vec<String> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| format!("{{ addr = \"{b}\", id = \"b{i}\" }}"))
        .collect();
    let conf = format!(
        r#"[[listeners]]
name = "http"
listen = "{listen}"

[upstreams.app]
connect_timeout = "300ms"
targets = [{}]
health = {{ path = "/health", interval = "1s", timeout = "300ms", healthy_threshold = 2, unhealthy_threshold = 2 }}
outlier = {{ consecutive_failures = 3, base_ejection = "10s", max_ejection = "60s", max_ejection_percent = 50 }}

[[routes]]
name = "app"
upstream = "app"
timeout = "2s"
retry = {{ attempts = 2, budget = 0.2, on = ["reset", "timeout", "502", "503", "504"] }}
"#,
        targets.join(", ")
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, conf).unwrap();
    let child = Command::new(sibling("gateway-under-test"))
        .args(["run", "-c", path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start gateway");
    wait_listening(listen);
    Proc(child)
}

#[derive(Default)]
struct Log {
    /// (time since start, ok, served by the victim)
    requests: Vec<(Duration, bool, bool)>,
}

/// Accepts and closes every connection on the dead backend's port, counting the attempts to
/// send it traffic (active health probes, `GET /health`, are not traffic and are not counted).
async fn tombstone(addr: SocketAddr, start: Instant, stop: Arc<AtomicBool>) -> Vec<Duration> {
    use tokio::io::AsyncReadExt;
    let listener = TcpListener::bind(addr).await.expect("tombstone bind");
    let attempts = Arc::new(Mutex::new(Vec::new()));
    while !stop.load(Ordering::Relaxed) {
        if let Ok(Ok((mut s, _))) =
            tokio::time::timeout(Duration::from_millis(50), listener.accept()).await
        {
            let at = start.elapsed();
            let attempts = attempts.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let n = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf))
                    .await
                    .map_or(0, |r| r.unwrap_or(0));
                if !buf[..n].starts_with(b"GET /health") {
                    attempts.lock().unwrap().push(at);
                }
                drop(s);
            });
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut v = attempts.lock().unwrap().clone();
    v.sort();
    v
}

async fn client(addr: SocketAddr, start: Instant, log: Arc<Mutex<Log>>) {
    let mut sender: Option<hyper::client::conn::http1::SendRequest<Empty<Bytes>>> = None;
    while start.elapsed() < RUN {
        if sender.as_ref().is_none_or(|s| s.is_closed()) {
            let Ok(stream) = TcpStream::connect(addr).await else {
                log.lock()
                    .unwrap()
                    .requests
                    .push((start.elapsed(), false, false));
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            };
            let Ok((s, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
            else {
                continue;
            };
            tokio::spawn(conn);
            sender = Some(s);
        }
        let Some(s) = sender.as_mut() else { continue };
        let req = http::Request::get("/load")
            .header("host", "bench")
            .body(Empty::new())
            .unwrap();
        let at = start.elapsed();
        let result = async {
            s.ready().await?;
            let res = s.send_request(req).await?;
            let victim = res
                .headers()
                .get("x-served-by")
                .is_some_and(|v| v == "victim");
            let ok = res.status().is_success();
            res.into_body().collect().await?;
            Ok::<_, hyper::Error>((ok, victim))
        }
        .await;
        match result {
            Ok((ok, victim)) => log.lock().unwrap().requests.push((at, ok, victim)),
            Err(_) => {
                log.lock().unwrap().requests.push((at, false, false));
                sender = None;
            }
        }
    }
}

struct Outcome {
    name: &'static str,
    total: usize,
    failed: usize,
    last_attempt_after_kill: Option<Duration>,
    attempts_on_dead: usize,
    taken_back_after: Option<Duration>,
}

async fn scenario(name: &'static str, dir: &Path) -> Outcome {
    let backends = [free_port(), free_port(), free_port()];
    let names = ["steady-a", "victim", "steady-b"];
    let mut procs: Vec<Option<Proc>> = backends
        .iter()
        .zip(names)
        .map(|(a, n)| Some(start_backend(*a, n)))
        .collect();
    let listen = free_port();
    let _proxy = match name {
        "nginx" => start_nginx(dir, listen, &backends),
        _ => start_gateway(dir, listen, &backends),
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    let start = Instant::now();
    let log = Arc::new(Mutex::new(Log::default()));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| tokio::spawn(client(listen, start, log.clone())))
        .collect();

    tokio::time::sleep(KILL_AT).await;
    if let Some(victim) = procs[1].take() {
        victim.kill_now(); // SIGKILL: a crash
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tomb = tokio::spawn(tombstone(backends[1], start, stop.clone()));
    let killed_at = start.elapsed();

    tokio::time::sleep(RESTART_AT - KILL_AT).await;
    stop.store(true, Ordering::Relaxed);
    let attempts = tomb.await.unwrap();
    let restarted_at = start.elapsed();
    procs[1] = Some(start_backend(backends[1], "victim"));

    for c in clients {
        let _ = c.await;
    }
    let log = log.lock().unwrap();
    let failed = log.requests.iter().filter(|r| !r.1).count();
    let taken_back = log
        .requests
        .iter()
        .filter(|r| r.2 && r.0 > restarted_at)
        .map(|r| r.0 - restarted_at)
        .min();
    Outcome {
        name,
        total: log.requests.len(),
        failed,
        last_attempt_after_kill: attempts.last().map(|t| *t - killed_at),
        attempts_on_dead: attempts.len(),
        taken_back_after: taken_back,
    }
}

fn secs(d: Option<Duration>) -> String {
    d.map_or_else(
        || "never".to_string(),
        |d| format!("{:.2} s", d.as_secs_f64()),
    )
}

fn main() {
    ensure("nginx", &["nginx-light", "nginx"]);
    common::build_siblings();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut outcomes = Vec::new();
    for name in ["nginx", "gateway"] {
        let dir =
            std::env::temp_dir().join(format!("failover-compare-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        eprintln!(
            "running the kill-a-backend scenario through {name} ({} s)...",
            RUN.as_secs()
        );
        outcomes.push(rt.block_on(scenario(name, &dir)));
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!("| proxy | requests | failed (seen by clients) | still sending to the dead target after the kill | attempts on the dead target | target taken back after restart |");
    println!("|---|---|---|---|---|---|");
    for o in &outcomes {
        println!(
            "| {} | {} | {} ({:.3}%) | {} | {} | {} |",
            o.name,
            o.total,
            o.failed,
            100.0 * o.failed as f64 / o.total.max(1) as f64,
            secs(o.last_attempt_after_kill),
            o.attempts_on_dead,
            secs(o.taken_back_after),
        );
    }
    let json: Vec<_> = outcomes
        .iter()
        .map(|o| {
            serde_json::json!({
                "proxy": o.name, "requests": o.total, "failed": o.failed,
                "last_attempt_after_kill_s": o.last_attempt_after_kill.map(|d| d.as_secs_f64()),
                "attempts_on_dead": o.attempts_on_dead,
                "taken_back_after_s": o.taken_back_after.map(|d| d.as_secs_f64()),
            })
        })
        .collect();
    let out = std::env::temp_dir().join("failover-compare.json");
    std::fs::write(&out, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    eprintln!("results also in {}", out.display());
}
