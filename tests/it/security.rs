//! The hardened edge and the security policies, attacked the way a careful attacker would.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;

use crate::client::raw;
use crate::harness::{full, origin, simple_config, Gateway};

/// An origin that records every request it receives: (method, path, body).
async fn logging_origin() -> (
    std::net::SocketAddr,
    Arc<Mutex<Vec<(String, String, Bytes)>>>,
) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let addr = origin(move |req: http::Request<hyper::body::Incoming>| {
        let log = log.clone();
        async move {
            let (parts, body) = req.into_parts();
            let body = body
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            log.lock().unwrap().push((
                parts.method.to_string(),
                parts.uri.path().to_string(),
                body,
            ));
            http::Response::new(full("origin says ok"))
        }
    })
    .await;
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smuggling_corpus_never_gets_anything_past_the_gateway() {
    let (up, seen) = logging_origin().await;
    let gw = Gateway::start(&simple_config(&[up], ""));
    let addr = gw.addr("http");
    let corpus: &[(&str, &str)] = &[
        ("CL.TE", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 35\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("TE.CL", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n2d\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\n\r\n0\r\n\r\n"),
        ("TE.TE twice", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: identity\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("TE list", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n"),
        ("TE xchunked", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\nContent-Length: 4\r\n\r\nABCD"),
        ("TE space before colon", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("TE obs-fold", "POST / HTTP/1.1\r\nHost: a\r\nX: y\r\n Transfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\nABCD"),
        ("two Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nABCD"),
        ("differing Content-Length", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 40\r\n\r\nABCD"),
        ("Content-Length list", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 4, 4\r\n\r\nABCD"),
        ("Content-Length plus", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nABCD"),
        ("Content-Length hex", "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 0x4\r\n\r\nABCD"),
        ("no Host", "GET / HTTP/1.1\r\nX: y\r\n\r\n"),
        ("two Hosts", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
        ("absolute-form mismatch", "GET http://evil.example/ HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: one\r\n  two\r\n\r\n"),
        ("NUL in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\0b\r\n\r\n"),
        ("CR in value", "GET / HTTP/1.1\r\nHost: a\r\nX-A: a\rb\r\n\r\n"),
        ("space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n"),
        ("bad chunk size", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"),
        ("chunk size overflow", "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFFFFFFFFFFF1\r\nhello\r\n0\r\n\r\n"),
        ("encoded traversal", "GET /api/..%2Fadmin HTTP/1.1\r\nHost: a\r\n\r\n"),
    ];
    for (name, payload) in corpus {
        let before = seen.lock().unwrap().len();
        let text = raw(addr, payload.as_bytes(), Duration::from_millis(800)).await;
        let status = text.get(9..12).unwrap_or("");
        assert!(
            text.is_empty() || status.starts_with('4') || status == "501",
            "{name}: answered {:?}",
            text.lines().next()
        );
        let now = seen.lock().unwrap().clone();
        assert_eq!(
            now.len(),
            before,
            "{name}: something reached the origin: {:?}",
            &now[before..]
        );
    }
    // Bare LF line ends: parsed, and re-framed upstream with CRLF, nothing smuggled.
    let text = raw(
        addr,
        b"GET /bare-lf HTTP/1.1\nHost: a\nConnection: close\n\n",
        Duration::from_millis(800),
    )
    .await;
    assert!(
        text.starts_with("HTTP/1.1 200") || text.starts_with("HTTP/1.1 400"),
        "{text}"
    );
    // A legitimate pipelined pair still works, proving the refusals above are not blanket.
    let text = raw(
        addr,
        b"GET /one HTTP/1.1\r\nHost: a\r\n\r\nPOST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
        Duration::from_millis(800),
    )
    .await;
    assert_eq!(text.matches("HTTP/1.1 200").count(), 2, "{text}");
    let paths: Vec<String> = seen.lock().unwrap().iter().map(|r| r.1.clone()).collect();
    assert!(!paths.iter().any(|p| p.contains("smuggled")), "{paths:?}");
    assert!(
        paths.contains(&"/one".to_string()) && paths.contains(&"/two".to_string()),
        "{paths:?}"
    );
}
