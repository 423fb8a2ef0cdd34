//! W3C trace context (SPEC §8.4) against the official OpenTelemetry Python SDK's propagator.

use std::io::BufRead;
use std::process::{Command, Stdio};

use bytes::Bytes;

use crate::client::{request, send};
use crate::harness::{closed_port, require_python_module, Gateway, Proc};

pub(crate) fn otel_upstream() -> (Proc, std::net::SocketAddr) {
    require_python_module("opentelemetry.sdk", "opentelemetry-sdk");
    let addr = closed_port();
    let mut child = Command::new("python3")
        .arg(crate::harness::repo_root().join("tests/reference/otel_upstream.py"))
        .arg(addr.port().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the OpenTelemetry upstream");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    (Proc(child), addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_context_is_continued_and_the_gateway_is_the_upstreams_parent() {
    let (_py, up) = otel_upstream();
    let gw = Gateway::start(&crate::harness::simple_config(&[up], ""));
    let addr = gw.addr("http");
    let incoming = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331";
    for flag in ["01", "00"] {
        let res = send(
            addr,
            request(
                "GET",
                "/t",
                &[
                    ("traceparent", &format!("{incoming}-{flag}")),
                    ("tracestate", "vendor=abc,other=1"),
                ],
                Bytes::new(),
            ),
        )
        .await;
        assert_eq!(res.status, 200);
        let v = res.json();
        assert_eq!(v["valid"], true, "{v}");
        assert_eq!(
            v["trace_id"], "0af7651916cd43dd8448eb211c80319c",
            "the trace continues"
        );
        assert_ne!(
            v["parent_span_id"], "b7ad6b7169203331",
            "the gateway's span is the parent"
        );
        assert_eq!(v["sampled"], flag == "01", "the sampled flag is followed");
        assert_eq!(v["own_trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(
            v["tracestate"], "vendor=abc,other=1",
            "tracestate passes unchanged"
        );
    }
    // No (or a malformed) traceparent: a new, sampled trace; the request never fails.
    for tp in [None, Some("00-zzzz-b7ad6b7169203331-01"), Some("ff-")] {
        let headers: Vec<(&str, &str)> = tp.map(|t| ("traceparent", t)).into_iter().collect();
        let res = send(addr, request("GET", "/t", &headers, Bytes::new())).await;
        assert_eq!(res.status, 200);
        let v = res.json();
        assert_eq!(v["valid"], true, "{v}");
        assert_ne!(v["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(v["sampled"], true);
    }
    // The trace id is in the access log and in the gateway's own error bodies.
    let res = send(
        addr,
        request(
            "GET",
            "/%zz",
            &[("traceparent", &format!("{incoming}-01"))],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(res.status, 400);
    assert_eq!(res.json()["trace_id"], "0af7651916cd43dd8448eb211c80319c");
    let logged = gw.lines.wait_for(std::time::Duration::from_secs(5), |l| {
        l.contains("\"access\"") && l.contains("0af7651916cd43dd8448eb211c80319c")
    });
    assert!(logged.is_some(), "no access-log line with the trace id");
}
