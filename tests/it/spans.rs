//! Spans and their OTLP export (SPEC §8.4, `[tracing]`), received by a collector that decodes
//! them with the official protobuf definitions (Python `opentelemetry-proto`).

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use crate::client::{self, request, send};
use crate::harness::{closed_port, full, origin, require_python_module, Gateway, Proc};

struct Receiver {
    _proc: Proc,
    addr: SocketAddr,
    spans: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    fn start(args: &[&str]) -> Receiver {
        require_python_module("opentelemetry.proto", "opentelemetry-proto");
        let addr = closed_port();
        let mut child = Command::new("python3")
            .arg(crate::harness::repo_root().join("tests/reference/otlp_receiver.py"))
            .arg(addr.port().to_string())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the OTLP receiver");
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert_eq!(line.trim(), "ready");
        let spans: Arc<Mutex<Vec<Value>>> = Arc::default();
        let sink = spans.clone();
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str(&line) {
                    sink.lock().unwrap().push(v);
                }
            }
        });
        Receiver {
            _proc: Proc(child),
            addr,
            spans,
        }
    }

    fn endpoint(&self) -> String {
        format!("http://{}/v1/traces", self.addr)
    }

    /// The spans of `trace_id`, once `n` have arrived (at most 10 s).
    async fn trace(&self, trace_id: &str, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got: Vec<Value> = self
                .spans
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s["trace_id"] == trace_id)
                .cloned()
                .collect();
            if got.len() >= n || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn kind<'a>(spans: &'a [Value], k: &str) -> Vec<&'a Value> {
    spans.iter().filter(|s| s["kind"] == k).collect()
}

const SECRET: &str = "spans-test-secret-0123456789abcdef";

fn config(targets: &[SocketAddr], tracing: &str) -> String {
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

[tracing]
{tracing}

[jwt.users]
algorithms = ["HS256"]
secret_env = "SPANS_SECRET"

[upstreams.app]
targets = [{targets}]

[[routes]]
name = "secure"
match = {{ path_prefix = "/secure" }}
upstream = "app"
jwt = "users"

[[routes]]
name = "slow"
match = {{ path_prefix = "/slow" }}
upstream = "app"
timeout = "300ms"

[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
upstream = "app"
retry = {{ attempts = 1, on = ["5xx"] }}
"#,
        targets = targets.join(", ")
    )
}

/// An origin answering `who`; `/flaky` with 503, `/slow` after 2 s.
async fn named_origin(who: &'static str) -> SocketAddr {
    origin(
        move |req: http::Request<hyper::body::Incoming>| async move {
            let tp = req
                .headers()
                .get("traceparent")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            let path = req.uri().path().to_string();
            if path.starts_with("/slow") {
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let status = if path == "/flaky" && who == "a" {
                503
            } else {
                200
            };
            http::Response::builder()
                .status(status)
                .header("x-who", who)
                .header("x-traceparent", tp)
                .body(full("ok"))
                .unwrap()
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_arrive_with_names_kinds_parents_attributes_and_statuses() {
    let rx = Receiver::start(&[]);
    let (a, b) = (named_origin("a").await, named_origin("b").await);
    let gw = Gateway::start_with_env(
        &config(
            &[a, b],
            &format!(
                "otlp_endpoint = \"{}\"\nservice_name = \"edge-gw\"",
                rx.endpoint()
            ),
        ),
        &[("SPANS_SECRET", SECRET)],
    );
    let web = gw.addr("http");
    let incoming_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming_parent = "00f067aa0ba902b7";

    // A success: a server span (child of the caller's), one client span (its child), and the
    // upstream's parent is that client span.
    let res = send(
        web,
        request(
            "GET",
            "/ok?q=1",
            &[(
                "traceparent",
                &format!("00-{incoming_trace}-{incoming_parent}-01"),
            )],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(res.status, 200);
    let upstream_tp = res.header("x-traceparent").to_string();
    let spans = rx.trace(incoming_trace, 2).await;
    assert_eq!(spans.len(), 2, "{spans:#?}");
    let server = kind(&spans, "SERVER")[0];
    let client = kind(&spans, "CLIENT")[0];
    assert_eq!(server["service"], "edge-gw");
    assert_eq!(server["name"], "GET api");
    assert_eq!(server["parent_span_id"], incoming_parent);
    assert_eq!(server["status"], "UNSET");
    let sa = &server["attributes"];
    assert_eq!(sa["http.request.method"], "GET");
    assert_eq!(sa["url.path"], "/ok");
    assert_eq!(sa["url.scheme"], "http");
    assert_eq!(sa["http.route"], "api");
    assert_eq!(sa["http.response.status_code"], 200);
    assert_eq!(sa["client.address"], "127.0.0.1");
    assert_eq!(sa["server.address"], "test.local");
    assert_eq!(client["name"], "GET");
    assert_eq!(client["parent_span_id"], server["span_id"]);
    assert_eq!(client["attributes"]["http.response.status_code"], 200);
    assert_eq!(client["attributes"]["server.address"], "127.0.0.1");
    assert_eq!(
        upstream_tp,
        format!(
            "00-{incoming_trace}-{}-01",
            client["span_id"].as_str().unwrap()
        ),
        "the upstream's parent is the client span"
    );
    assert_eq!(server["content_type"], "application/x-protobuf");
    assert!(server["start"].as_u64() <= client["start"].as_u64());
    assert!(client["end"].as_u64() <= server["end"].as_u64());

    // A retried request: two client spans, each with its target; the first an error.
    let mut retried = None;
    for i in 0..4u8 {
        let trace = format!("5{i:031x}");
        let res = send(
            web,
            request(
                "GET",
                "/flaky",
                &[("traceparent", &format!("00-{trace}-{incoming_parent}-01"))],
                Bytes::new(),
            ),
        )
        .await;
        assert_eq!(res.status, 200);
        let spans = rx.trace(&trace, 2).await;
        if kind(&spans, "CLIENT").len() == 2 {
            retried = Some(rx.trace(&trace, 3).await);
            break;
        }
    }
    let spans =
        retried.expect("round robin sends one of four requests to the failing target first");
    let clients = kind(&spans, "CLIENT");
    let codes: Vec<&Value> = clients
        .iter()
        .map(|c| &c["attributes"]["http.response.status_code"])
        .collect();
    assert!(
        codes.contains(&&Value::from(503)) && codes.contains(&&Value::from(200)),
        "{spans:#?}"
    );
    let failed = clients
        .iter()
        .find(|c| c["attributes"]["http.response.status_code"] == 503)
        .unwrap();
    assert_eq!(failed["status"], "ERROR");
    assert_eq!(failed["attributes"]["error.type"], "503");
    let targets: Vec<&Value> = clients
        .iter()
        .map(|c| &c["attributes"]["gateway.target"])
        .collect();
    assert_ne!(targets[0], targets[1], "each attempt names its target");
    assert_eq!(kind(&spans, "SERVER")[0]["status"], "UNSET");

    // A 401: no client span; the server span has the refusal as an event, status unset.
    let trace = "11111111111111111111111111111111";
    let res = send(
        web,
        request(
            "GET",
            "/secure",
            &[("traceparent", &format!("00-{trace}-{incoming_parent}-01"))],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(res.status, 401);
    let spans = rx.trace(trace, 1).await;
    assert_eq!(spans.len(), 1, "{spans:#?}");
    let s = &spans[0];
    assert_eq!(s["name"], "GET secure");
    assert_eq!(s["status"], "UNSET");
    assert_eq!(s["attributes"]["http.response.status_code"], 401);
    assert_eq!(s["events"][0]["name"], "policy.refused");
    assert_eq!(s["events"][0]["attributes"]["gateway.policy"], "jwt");

    // A 504: the server span is an error with error.type timeout, and so is the attempt.
    let trace = "22222222222222222222222222222222";
    let res = send(
        web,
        request(
            "GET",
            "/slow",
            &[("traceparent", &format!("00-{trace}-{incoming_parent}-01"))],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(res.status, 504);
    let spans = rx.trace(trace, 2).await;
    let server = kind(&spans, "SERVER")[0];
    assert_eq!(server["status"], "ERROR", "{spans:#?}");
    assert_eq!(server["attributes"]["error.type"], "timeout");
    assert_eq!(server["attributes"]["http.response.status_code"], 504);
    let client = kind(&spans, "CLIENT")[0];
    assert_eq!(client["status"], "ERROR");
    assert_eq!(client["attributes"]["error.type"], "timeout");

    // A caller's sampled flag 0 is followed: no spans.
    let trace = "33333333333333333333333333333333";
    send(
        web,
        request(
            "GET",
            "/ok",
            &[("traceparent", &format!("00-{trace}-{incoming_parent}-00"))],
            Bytes::new(),
        ),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        rx.spans
            .lock()
            .unwrap()
            .iter()
            .all(|s| s["trace_id"] != trace),
        "an unsampled request made spans"
    );
    assert!(gw.metric("gateway_spans_exported_total").await >= 9.0);
    assert_eq!(gw.metric("gateway_spans_dropped_total").await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_ratio_zero_exports_only_what_callers_sampled() {
    let rx = Receiver::start(&[]);
    let a = named_origin("a").await;
    let gw = Gateway::start_with_env(
        &config(
            &[a],
            &format!("otlp_endpoint = \"{}\"\nsample_ratio = 0.0", rx.endpoint()),
        ),
        &[("SPANS_SECRET", SECRET)],
    );
    let web = gw.addr("http");
    for _ in 0..20 {
        let res = client::get(web, "/ok").await;
        assert_eq!(res.status, 200);
        // New traces are not sampled: the upstream sees flag 00.
        assert!(res.header("x-traceparent").ends_with("-00"));
    }
    let trace = "44444444444444444444444444444444";
    send(
        web,
        request(
            "GET",
            "/ok",
            &[("traceparent", &format!("00-{trace}-00f067aa0ba902b7-01"))],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(rx.trace(trace, 2).await.len(), 2);
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        rx.spans.lock().unwrap().len(),
        2,
        "only the caller-sampled request"
    );
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

async fn latencies(web: SocketAddr, n: usize) -> Vec<Duration> {
    let mut c = client::H1::connect(web).await;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = c
            .send(request("GET", "/ok", &[], Bytes::new()))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        out.push(t.elapsed());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_dead_collector_never_slows_requests_and_drops_are_counted() {
    let a = named_origin("a").await;
    // Baseline: a collector that answers at once.
    let fast = Receiver::start(&[]);
    let gw = Gateway::start_with_env(
        &config(&[a], &format!("otlp_endpoint = \"{}\"", fast.endpoint())),
        &[("SPANS_SECRET", SECRET)],
    );
    let base = p99(latencies(gw.addr("http"), 400).await);
    drop(gw);

    // A collector that takes 3 s per export, and a queue of 50: requests go on at the same
    // pace, the spans that do not fit are dropped and counted.
    let slow = Receiver::start(&["--delay", "3"]);
    let gw = Gateway::start_with_env(
        &config(
            &[a],
            &format!("otlp_endpoint = \"{}\"\nmax_queue = 50", slow.endpoint()),
        ),
        &[("SPANS_SECRET", SECRET)],
    );
    let with_slow = p99(latencies(gw.addr("http"), 400).await);
    assert!(
        with_slow < base * 3 + Duration::from_millis(50),
        "p99 {with_slow:?} with a slow collector vs {base:?}"
    );
    assert!(gw.metric("gateway_spans_dropped_total").await > 0.0);
    drop(gw);

    // No collector at all: every export fails, its spans are counted as dropped.
    let gw = Gateway::start_with_env(
        &config(
            &[a],
            &format!("otlp_endpoint = \"http://{}/v1/traces\"", closed_port()),
        ),
        &[("SPANS_SECRET", SECRET)],
    );
    let with_dead = p99(latencies(gw.addr("http"), 400).await);
    assert!(
        with_dead < base * 3 + Duration::from_millis(50),
        "p99 {with_dead:?} with no collector vs {base:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while gw.metric("gateway_spans_dropped_total").await < 800.0 {
        assert!(
            Instant::now() < deadline,
            "failed exports are not counted as drops"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(gw.metric("gateway_spans_exported_total").await, 0.0);
    eprintln!(
        "p99: {base:?} with a collector, {with_slow:?} with a slow one, {with_dead:?} with none"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_headers_come_from_the_environment_and_reload_switches_exporters() {
    let first = Receiver::start(&[]);
    let second = Receiver::start(&[]);
    let a = named_origin("a").await;
    let gw = Gateway::start_with_env(
        &config(
            &[a],
            &format!(
                "otlp_endpoint = \"{}\"\nheaders_env = \"OTLP_HEADERS\"",
                first.endpoint()
            ),
        ),
        &[
            ("SPANS_SECRET", SECRET),
            ("OTLP_HEADERS", "authorization=Bearer collector-token"),
        ],
    );
    let web = gw.addr("http");
    assert_eq!(client::get(web, "/ok").await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while first.spans.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        first.spans.lock().unwrap()[0]["auth"],
        "Bearer collector-token"
    );
    gw.write_config(&config(
        &[a],
        &format!("otlp_endpoint = \"{}\"", second.endpoint()),
    ));
    let r = client::send(
        gw.admin(),
        request("POST", "/admin/reload", &[], Bytes::new()),
    )
    .await
    .json();
    assert_eq!(r["outcome"], "success", "{r}");
    assert_eq!(client::get(web, "/ok").await.status, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    while second.spans.lock().unwrap().is_empty() {
        assert!(
            Instant::now() < deadline,
            "the new exporter exported nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opentelemetry_sdk_upstream_hangs_under_the_exported_client_span() {
    let rx = Receiver::start(&[]);
    let (_py, up) = crate::tracing::otel_upstream();
    let gw = Gateway::start_with_env(
        &config(&[up], &format!("otlp_endpoint = \"{}\"", rx.endpoint())),
        &[("SPANS_SECRET", SECRET)],
    );
    let trace = "0af7651916cd43dd8448eb211c80319c";
    for flag in ["01", "00"] {
        let res = send(
            gw.addr("http"),
            request(
                "GET",
                "/t",
                &[(
                    "traceparent",
                    &format!("00-{trace}-b7ad6b7169203331-{flag}"),
                )],
                Bytes::new(),
            ),
        )
        .await;
        assert_eq!(res.status, 200);
        let v = res.json();
        assert_eq!(v["trace_id"], trace);
        assert_eq!(v["sampled"], flag == "01");
        if flag == "01" {
            let spans = rx.trace(trace, 2).await;
            let client = kind(&spans, "CLIENT")[0];
            assert_eq!(
                v["parent_span_id"], client["span_id"],
                "the SDK's extracted parent is the exported client span"
            );
            assert_eq!(
                client["parent_span_id"],
                kind(&spans, "SERVER")[0]["span_id"]
            );
        }
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        rx.spans.lock().unwrap().len(),
        2,
        "the unsampled call exported nothing"
    );
}
