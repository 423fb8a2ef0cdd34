//! The gateway beside nginx and HAProxy, same machine, same run.
//!
//! `cargo run --release -p tests --bin perf-compare [-- --rounds 3 --seconds 6 --out FILE]`
//! (installs wrk, h2load, hey, nginx and haproxy from Debian packages if missing; root).
//!
//! One origin (the sample backend) and the load generators run on CPU 0; each proxy runs with
//! one worker thread pinned to CPU 1. Rounds interleave the proxies (gateway, nginx, haproxy,
//! gateway, ...). Access logs are off for all three (nginx `access_log off`, HAProxy without
//! `log`, the gateway at `RUST_LOG=warn`), so what is measured is proxying. Scenarios:
//! * `h1`: HTTP/1.1 keep-alive, `wrk -t1 -c50`, saturating;
//! * `h1_rate`: HTTP/1.1 at a fixed 2,000 req/s (`hey -q`), for latency at moderate load;
//! * `h2`: HTTPS + HTTP/2, `h2load -c50 -m10`, saturating;
//! * `h2_h2` (gateway and HAProxy; nginx cannot proxy to HTTP/2 upstreams): the same load,
//!   and HTTP/2 to the origin too (the gateway's `protocol = "h2"`, HAProxy's `proto h2`);
//! * `tls_new`: a new TLS connection per request (`wrk` with `Connection: close` over https):
//!   full TLS 1.3 handshakes (X25519, ECDSA P-256), since wrk does not resume TLS 1.3 sessions;
//! * `idle_10k`: RSS with 10,000 idle keep-alive connections (one request each, then idle);
//! * `h1_full` (gateway only): the route with the full policy chain: JWT RS256 (token cached),
//!   a local rate limit that never triggers, consistent hashing on a header, metrics;
//! * `h1_full_trace100`, `h1_full_trace1` (gateway only): `h1_full` with `[tracing]` exporting
//!   spans (OTLP/HTTP protobuf) to a local receiver at `sample_ratio` 1.0 and 0.01;
//! * `h1_all` (gateway only): `h1_full` plus every second-wave route policy: CORS (an allowed
//!   `Origin`), forward auth (its verdict cached), request and response header rules, and
//!   `compress = true` (the origin's small JSON stays under the 1 KiB threshold: checked, not
//!   compressed).
//!
//! Per scenario: requests/s, p50/p99 latency, CPU seconds of the proxy's processes per 100,000
//! requests (steadiest on a shared machine), peak RSS. Output: a Markdown table with medians
//! and min–max spreads and ratios to nginx, and a JSON file with every sample.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

#[path = "common.rs"]
mod common;
use common::{build_siblings, ensure, free_port, sibling, wait_listening, Proc};

/// Where a proxy's own complaints go (kept in its round's directory; printed on failure).
fn log_file(dir: &Path) -> Stdio {
    std::fs::File::create(dir.join("stderr.log")).map_or_else(|_| Stdio::null(), Stdio::from)
}

fn wait_up(dir: &Path, addrs: &[SocketAddr]) {
    for &addr in addrs {
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
                panic!("nothing listens on {addr}; the proxy said:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// CPU seconds (user + system) of `pid` and its threads/children listed in /proc.
fn cpu_seconds(pids: &[u32]) -> f64 {
    let tick = 100.0; // USER_HZ on Linux
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .map(|s| {
            // Fields after the command name (which may contain spaces) start after ')'.
            let rest = s.rsplit_once(')').map_or("", |r| r.1);
            let f: Vec<&str> = rest.split_whitespace().collect();
            let ut: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            let st: f64 = f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
            (ut + st) / tick
        })
        .sum()
}

fn status_kib(pids: &[u32], field: &str) -> u64 {
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/status")).ok())
        .filter_map(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .sum()
}

/// The proxy's processes: the started one and its children (nginx's workers).
fn pids_of(root: u32) -> Vec<u32> {
    let mut out = vec![root];
    if let Ok(children) = std::fs::read_to_string(format!("/proc/{root}/task/{root}/children")) {
        out.extend(
            children
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok()),
        );
    }
    out
}

struct Tls {
    cert: PathBuf,
    key: PathBuf,
    pem: PathBuf,
}

fn make_cert(dir: &Path) -> Tls {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
        .expect("cert");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    let pem = dir.join("both.pem");
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    std::fs::write(
        &pem,
        format!("{}{}", ck.cert.pem(), ck.signing_key.serialize_pem()),
    )
    .unwrap();
    Tls { cert, key, pem }
}

struct Running {
    _proc: Proc,
    pid: u32,
    http: SocketAddr,
    https: SocketAddr,
}

fn pinned(cpu: &str, program: &Path) -> Command {
    let mut c = Command::new("taskset");
    c.args(["-c", cpu]).arg(program);
    c
}

/// `sample_ratio`: with `Some`, `[tracing]` exports spans to the origin (which answers every
/// POST with 200: a local OTLP receiver that accepts and discards).
fn start_gateway(
    dir: &Path,
    origin: SocketAddr,
    tls: &Tls,
    jwks: &Path,
    sample_ratio: Option<f64>,
) -> Running {
    let (http, https) = (free_port(), free_port());
    let tracing = sample_ratio.map_or(String::new(), |r| {
        format!("[tracing]\notlp_endpoint = \"http://{origin}/v1/traces\"\nsample_ratio = {r:?}\n")
    });
    let conf = format!(
        r#"[server]
worker_threads = 1

{tracing}

[limits]
max_connections = 30000

[[listeners]]
name = "http"
listen = "{http}"

[[listeners]]
name = "https"
listen = "{https}"
tls = {{ certs = [{{ cert = "{cert}", key = "{key}" }}] }}

[jwt.bench]
algorithms = ["RS256"]
jwks_file = "{jwks}"
issuer = "https://issuer.bench"
audiences = ["api"]

[rate_limits.high]
key = "jwt.sub"
rate = 1000000
per = "1s"
burst = 1000000

[upstreams.plain]
targets = [{{ addr = "{origin}" }}]

[upstreams.sharded]
balancer = "consistent_hash"
hash_on = "header.x-user-id"
targets = [{{ addr = "{origin}", id = "shard-a" }}]

[upstreams.h2up]
protocol = "h2"
targets = [{{ addr = "{origin}" }}]

[[routes]]
name = "h2up"
match = {{ path_prefix = "/h2up" }}
upstream = "h2up"

[cors.bench]
allow_origins = ["https://app.bench"]

[forward_auth.bench]
url = "http://{origin}/verify"
cache = "60s"

[[routes]]
name = "all"
match = {{ path_prefix = "/all" }}
upstream = "sharded"
jwt = "bench"
rate_limit = "high"
cors = "bench"
forward_auth = "bench"
request_headers = {{ set = {{ "x-env" = "bench" }} }}
response_headers = {{ set = {{ "strict-transport-security" = "max-age=31536000" }}, remove = ["x-served-by"] }}
compress = true

[[routes]]
name = "full"
match = {{ path_prefix = "/full" }}
upstream = "sharded"
jwt = "bench"
rate_limit = "high"

[[routes]]
name = "plain"
upstream = "plain"
"#,
        cert = tls.cert.display(),
        key = tls.key.display(),
        jwks = jwks.display(),
    );
    let path = dir.join("gateway.toml");
    std::fs::write(&path, conf).unwrap();
    let child = pinned("1", &sibling("gateway-under-test"))
        .args(["run", "-c", path.to_str().unwrap()])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(log_file(dir))
        .spawn()
        .expect("start gateway");
    wait_up(dir, &[http, https]);
    Running {
        pid: child.id(),
        _proc: Proc(child),
        http,
        https,
    }
}

fn start_nginx(dir: &Path, origin: SocketAddr, tls: &Tls) -> Running {
    let (http, https) = (free_port(), free_port());
    let conf = format!(
        r#"worker_processes 1;
worker_cpu_affinity 10;
worker_rlimit_nofile 20000;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 30000; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  upstream origin {{
    server {origin};
    keepalive 128;
  }}
  server {{
    listen {http};
    listen {https} ssl http2;
    # nginx 1.22 leaves TLS 1.3 out by default; the others offer it, so all three do.
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_certificate {cert};
    ssl_certificate_key {key};
    location / {{
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }}
  }}
}}
"#,
        dir = dir.display(),
        cert = tls.cert.display(),
        key = tls.key.display(),
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).unwrap();
    let child = pinned("1", Path::new("nginx"))
        .args([
            "-p",
            dir.to_str().unwrap(),
            "-c",
            path.to_str().unwrap(),
            "-g",
            "daemon off;",
        ])
        .stdout(Stdio::null())
        .stderr(log_file(dir))
        .spawn()
        .expect("start nginx");
    wait_up(dir, &[http, https]);
    Running {
        pid: child.id(),
        _proc: Proc(child),
        http,
        https,
    }
}

fn start_haproxy(dir: &Path, origin: SocketAddr, tls: &Tls) -> Running {
    let (http, https) = (free_port(), free_port());
    let conf = format!(
        r#"global
  nbthread 1
  cpu-map 1/1 1
  # HAProxy wants 2 × maxconn descriptors and by default refuses to start without them;
  # the idle test needs 10,000 client connections, well under the machine's hard limit.
  maxconn 10100
  no strict-limits
  tune.ssl.default-dh-param 2048

defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  http-reuse always

frontend plain
  bind {http}
  bind {https} ssl crt {pem} alpn h2,http/1.1
  use_backend origin_h2 if {{ path_beg /h2up }}
  default_backend origin

backend origin
  server o {origin}

backend origin_h2
  server o {origin} proto h2
"#,
        pem = tls.pem.display(),
    );
    let path = dir.join("haproxy.cfg");
    std::fs::write(&path, conf).unwrap();
    let child = pinned("1", Path::new("haproxy"))
        .args(["-f", path.to_str().unwrap(), "-db"])
        .stdout(Stdio::null())
        .stderr(log_file(dir))
        .spawn()
        .expect("start haproxy");
    wait_up(dir, &[http, https]);
    Running {
        pid: child.id(),
        _proc: Proc(child),
        http,
        https,
    }
}

#[derive(Clone, Debug, Default)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    cpu_per_100k: f64,
    rss_kib: u64,
}

fn load(cpu: &str, program: &str, args: &[String]) -> String {
    let out = Command::new("taskset")
        .args(["-c", cpu, program])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A wrk duration like "1.23ms" / "850.00us" / "1.02s" in milliseconds.
fn ms(v: &str) -> f64 {
    let v = v.trim();
    if let Some(x) = v.strip_suffix("us") {
        x.parse::<f64>().unwrap_or(0.0) / 1000.0
    } else if let Some(x) = v.strip_suffix("ms") {
        x.parse().unwrap_or(0.0)
    } else if let Some(x) = v.strip_suffix('s') {
        x.parse::<f64>().unwrap_or(0.0) * 1000.0
    } else {
        0.0
    }
}

fn parse_wrk(out: &str) -> (f64, f64, f64, f64) {
    let mut rps = 0.0;
    let (mut p50, mut p99) = (0.0, 0.0);
    let mut total = 0.0;
    for line in out.lines() {
        let t = line.trim();
        if let Some(v) = t.strip_prefix("Requests/sec:") {
            rps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = t.strip_prefix("50%") {
            p50 = ms(v);
        } else if let Some(v) = t.strip_prefix("99%") {
            p99 = ms(v);
        } else if t.contains("requests in") {
            total = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0.0);
        }
    }
    (rps, p50, p99, total)
}

/// Reset the processes' peak RSS (`VmHWM`) to their current RSS, so the peak read after a
/// scenario is that scenario's own, not the largest of every scenario before it on the same
/// process. Linux's `clear_refs` value 5; without the permission the peak stays cumulative.
fn reset_peak(pids: &[u32]) {
    for p in pids {
        let _ = std::fs::write(format!("/proc/{p}/clear_refs"), "5");
    }
}

fn measure<F: FnOnce() -> (f64, f64, f64, f64)>(p: &Running, run: F) -> Sample {
    let pids = pids_of(p.pid);
    reset_peak(&pids);
    let before = cpu_seconds(&pids);
    let (rps, p50, p99, requests) = run();
    let cpu = cpu_seconds(&pids) - before;
    Sample {
        rps,
        p50_ms: p50,
        p99_ms: p99,
        cpu_per_100k: if requests > 0.0 {
            cpu * 100_000.0 / requests
        } else {
            0.0
        },
        rss_kib: status_kib(&pids, "VmHWM:"),
    }
}

fn h1(p: &Running, path: &str, headers: &[String], secs: u64) -> Sample {
    measure(p, || {
        let mut args: Vec<String> = vec![
            "-t1".into(),
            "-c50".into(),
            format!("-d{secs}s"),
            "--latency".into(),
        ];
        for h in headers {
            args.push("-H".into());
            args.push(h.clone());
        }
        args.push(format!("http://{}{path}", p.http));
        parse_wrk(&load("0", "wrk", &args))
    })
}

fn h1_rate(p: &Running, secs: u64) -> Sample {
    measure(p, || {
        // 16 workers × 125 req/s = 2,000 req/s.
        let out = load(
            "0",
            "hey",
            &[
                "-z".into(),
                format!("{secs}s"),
                "-c".into(),
                "16".into(),
                "-q".into(),
                "125".into(),
                format!("http://{}/", p.http),
            ],
        );
        let mut rps = 0.0;
        let (mut p50, mut p99) = (0.0, 0.0);
        let mut total = 0.0;
        for line in out.lines() {
            let t = line.trim();
            if let Some(v) = t.strip_prefix("Requests/sec:") {
                rps = v.trim().parse().unwrap_or(0.0);
            } else if let Some(v) = t.strip_prefix("50% in ") {
                p50 = v.trim_end_matches(" secs").parse::<f64>().unwrap_or(0.0) * 1000.0;
            } else if let Some(v) = t.strip_prefix("99% in ") {
                p99 = v.trim_end_matches(" secs").parse::<f64>().unwrap_or(0.0) * 1000.0;
            } else if t.starts_with("[200]") {
                total = t
                    .split_whitespace()
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0.0);
            }
        }
        (rps, p50, p99, total)
    })
}

fn h2(p: &Running, requests: u64, path: &str) -> Sample {
    measure(p, || {
        let out = load(
            "0",
            "h2load",
            &[
                "-n".into(),
                requests.to_string(),
                "-c".into(),
                "50".into(),
                "-m".into(),
                "10".into(),
                "-t".into(),
                "1".into(),
                format!("https://127.0.0.1:{}{path}", p.https.port()),
            ],
        );
        let mut rps = 0.0;
        let mut done = 0.0;
        let mut mean = 0.0;
        for line in out.lines() {
            let t = line.trim();
            if t.starts_with("finished in") {
                // finished in 2.01s, 49751.24 req/s, 6.10MB/s
                rps = t
                    .split(',')
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0.0);
            } else if let Some(v) = t.strip_prefix("requests:") {
                // requests: 100000 total, 100000 started, 100000 done, 100000 succeeded, ...
                done = v
                    .split(',')
                    .find(|s| s.contains("succeeded"))
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0.0);
            } else if let Some(v) = t.strip_prefix("time for request:") {
                mean = v.split_whitespace().nth(2).map_or(0.0, ms);
            }
        }
        (rps, mean, 0.0, done)
    })
}

fn tls_new(p: &Running, secs: u64) -> Sample {
    measure(p, || {
        parse_wrk(&load(
            "0",
            "wrk",
            &[
                "-t1".into(),
                "-c16".into(),
                format!("-d{secs}s"),
                "--latency".into(),
                "-H".into(),
                "Connection: close".into(),
                format!("https://127.0.0.1:{}/", p.https.port()),
            ],
        ))
    })
}

/// RSS growth with 10,000 idle keep-alive connections (each made one request), per connection.
fn idle_10k(p: &Running) -> (u64, f64) {
    let pids = pids_of(p.pid);
    let before = status_kib(&pids, "VmRSS:");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let addr = p.http;
    let held = rt.block_on(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut conns = Vec::with_capacity(10_000);
        for _ in 0..10_000 {
            let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else {
                break;
            };
            if s.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
                .await
                .is_err()
            {
                break;
            }
            let mut buf = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
            conns.push(s);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        conns
    });
    let after = status_kib(&pids, "VmRSS:");
    let n = held.len();
    drop(held);
    let per_conn = (after.saturating_sub(before) as f64 * 1024.0) / n.max(1) as f64;
    (after, per_conn)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str, default: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    build_siblings();
    let rounds: usize = arg("--rounds", "3").parse().unwrap_or(3);
    let secs: u64 = arg("--seconds", "6").parse().unwrap_or(6);
    let out_file = PathBuf::from(arg("--out", "target/perf-compare.json"));
    for (c, p) in [
        ("wrk", &["wrk"][..]),
        ("h2load", &["nghttp2-client"]),
        ("hey", &["hey"]),
        ("nginx", &["nginx-light", "nginx"]),
        ("haproxy", &["haproxy"]),
        ("taskset", &["util-linux"]),
    ] {
        ensure(c, p);
    }
    // 10,000 idle connections need more descriptors than the usual soft limit of 1,024.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();

    let dir = tempfile::tempdir().unwrap();
    let tls = make_cert(dir.path());
    // An RS256 key and a token for the full policy chain.
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256).unwrap();
    let enc = jsonwebtoken::EncodingKey::from_rsa_pem(kp.serialize_pem().as_bytes()).unwrap();
    let mut jwk =
        jsonwebtoken::jwk::Jwk::from_encoding_key(&enc, jsonwebtoken::Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let jwks = dir.path().join("jwks.json");
    std::fs::write(
        &jwks,
        serde_json::to_vec(&jsonwebtoken::jwk::JwkSet { keys: vec![jwk] }).unwrap(),
    )
    .unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    header.kid = Some("k1".into());
    let token = jsonwebtoken::encode(
        &header,
        &json!({"sub": "user-42", "iss": "https://issuer.bench", "aud": "api", "exp": now + 86_400}),
        &enc,
    )
    .unwrap();

    let origin = free_port();
    let _origin = Proc(
        pinned("0", &sibling("backend-under-test"))
            .args(["--listen", &origin.to_string(), "--name", "origin"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start origin"),
    );
    wait_listening(origin);
    let origin_pid = _origin.0.id();

    let mut samples: BTreeMap<(String, String), Vec<Sample>> = BTreeMap::new();
    let mut idle: BTreeMap<String, Vec<(u64, f64)>> = BTreeMap::new();
    // The bare origin, for scale: its own CPU per request is the floor a proxy's cost is
    // compared with (a proxy does about twice an origin's work: two sockets per request).
    let bare = Running {
        _proc: Proc(Command::new("true").spawn().unwrap()),
        pid: origin_pid,
        http: origin,
        https: origin,
    };
    for round in 1..=rounds {
        eprintln!("round {round}/{rounds}: origin alone");
        let s = h1(&bare, "/", &[], secs);
        samples
            .entry(("origin".into(), "h1".into()))
            .or_default()
            .push(Sample { rss_kib: 0, ..s });
        for name in ["gateway", "nginx", "haproxy"] {
            eprintln!("round {round}/{rounds}: {name}");
            let pdir = dir.path().join(format!("{name}-{round}"));
            std::fs::create_dir_all(&pdir).unwrap();
            let p = match name {
                "gateway" => start_gateway(&pdir, origin, &tls, &jwks, None),
                "nginx" => start_nginx(&pdir, origin, &tls),
                _ => start_haproxy(&pdir, origin, &tls),
            };
            std::thread::sleep(Duration::from_millis(300));
            let mut put = |scenario: &str, s: Sample| {
                samples
                    .entry((name.to_string(), scenario.to_string()))
                    .or_default()
                    .push(s);
            };
            put("h1", h1(&p, "/", &[], secs));
            put("h1_rate", h1_rate(&p, secs));
            put("h2", h2(&p, 20_000 * secs, "/"));
            if name != "nginx" {
                put("h2_h2", h2(&p, 20_000 * secs, "/h2up/"));
            }
            put("tls_new", tls_new(&p, secs));
            if name == "gateway" {
                let headers = [
                    format!("Authorization: Bearer {token}"),
                    "x-user-id: 42".into(),
                ];
                put("h1_full", h1(&p, "/full", &headers, secs));
                let all = [
                    headers[0].clone(),
                    headers[1].clone(),
                    "Origin: https://app.bench".into(),
                    "Accept-Encoding: gzip, br, zstd".into(),
                ];
                put("h1_all", h1(&p, "/all", &all, secs));
                // The full chain with span export on: every request sampled, then 1 in 100.
                for (scenario, ratio) in [("h1_full_trace100", 1.0), ("h1_full_trace1", 0.01)] {
                    let tdir = dir.path().join(format!("{scenario}-{round}"));
                    std::fs::create_dir_all(&tdir).unwrap();
                    let t = start_gateway(&tdir, origin, &tls, &jwks, Some(ratio));
                    std::thread::sleep(Duration::from_millis(300));
                    put(scenario, h1(&t, "/full", &headers, secs));
                }
            }
            idle.entry(name.to_string()).or_default().push(idle_10k(&p));
        }
    }

    // The table: medians (min–max) and ratios to nginx.
    let stat =
        |proxy: &str, scenario: &str, f: &dyn Fn(&Sample) -> f64| -> Option<(f64, f64, f64)> {
            let v = samples.get(&(proxy.to_string(), scenario.to_string()))?;
            let mut xs: Vec<f64> = v.iter().map(f).collect();
            let lo = xs.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            Some((median(&mut xs), lo, hi))
        };
    let mut table = String::new();
    table.push_str("| scenario | proxy | req/s | p50 ms | p99 ms | CPU s / 100k req | × nginx CPU | peak RSS MiB |\n|---|---|---|---|---|---|---|---|\n");
    let scenarios = [
        "h1",
        "h1_full",
        "h1_full_trace100",
        "h1_full_trace1",
        "h1_all",
        "h1_rate",
        "h2",
        "h2_h2",
        "tls_new",
    ];
    for scenario in scenarios {
        let nginx_cpu = stat("nginx", scenario, &|s| s.cpu_per_100k)
            .or_else(|| stat("nginx", "h1", &|s| s.cpu_per_100k))
            .map(|x| x.0);
        for proxy in ["origin", "gateway", "nginx", "haproxy"] {
            let Some(rps) = stat(proxy, scenario, &|s| s.rps) else {
                continue;
            };
            let p50 = stat(proxy, scenario, &|s| s.p50_ms).unwrap_or_default();
            let p99 = stat(proxy, scenario, &|s| s.p99_ms).unwrap_or_default();
            let cpu = stat(proxy, scenario, &|s| s.cpu_per_100k).unwrap_or_default();
            let rss = stat(proxy, scenario, &|s| s.rss_kib as f64).unwrap_or_default();
            let ratio = nginx_cpu
                .filter(|n| *n > 0.0 && cpu.0 > 0.0)
                .map_or("–".to_string(), |n| format!("{:.2}", cpu.0 / n));
            // h2load gives a mean, not percentiles: shown in the p50 column, marked.
            let (p50, p99) = if scenario.starts_with("h2") {
                (format!("{:.2} (mean)", p50.0), "–".to_string())
            } else {
                (format!("{:.2}", p50.0), format!("{:.2}", p99.0))
            };
            table.push_str(&format!(
                "| {scenario} | {proxy} | {:.0} ({:.0}–{:.0}) | {p50} | {p99} | {:.2} ({:.2}–{:.2}) | {ratio} | {:.1} |\n",
                rps.0, rps.1, rps.2, cpu.0, cpu.1, cpu.2, rss.0 / 1024.0
            ));
        }
    }
    table.push_str("\n| proxy | RSS with 10,000 idle keep-alive connections MiB | per connection KiB |\n|---|---|---|\n");
    for (proxy, v) in &idle {
        let mut rss: Vec<f64> = v.iter().map(|x| x.0 as f64 / 1024.0).collect();
        let mut per: Vec<f64> = v.iter().map(|x| x.1 / 1024.0).collect();
        table.push_str(&format!(
            "| {proxy} | {:.1} | {:.1} |\n",
            median(&mut rss),
            median(&mut per)
        ));
    }
    println!("{table}");
    let json: Value = json!({
        "rounds": rounds,
        "seconds": secs,
        "machine": std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| c.lines().find(|l| l.starts_with("model name")).map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "samples": samples.iter().map(|((p, s), v)| json!({
            "proxy": p, "scenario": s,
            "runs": v.iter().map(|x| json!({"rps": x.rps, "p50_ms": x.p50_ms, "p99_ms": x.p99_ms, "cpu_s_per_100k": x.cpu_per_100k, "peak_rss_kib": x.rss_kib})).collect::<Vec<_>>(),
        })).collect::<Vec<_>>(),
        "idle_10k": idle.iter().map(|(p, v)| json!({"proxy": p, "runs": v.iter().map(|(rss, per)| json!({"rss_kib": rss, "bytes_per_conn": per})).collect::<Vec<_>>()})).collect::<Vec<_>>(),
        "table_markdown": table,
    });
    if let Some(parent) = out_file.parent() {
        let _ = std::fs::create_dir_all(parent);
    }
    std::fs::write(&out_file, serde_json::to_string_pretty(&json).unwrap()).unwrap();
    eprintln!("wrote {}", out_file.display());
}
