//! HTTP/2 abuse, spoken frame by frame over TLS: rapid reset, CONTINUATION floods, HPACK
//! bombs, PING and SETTINGS floods, connection-specific headers. Each attack must stay
//! bounded (closed, refused, or absorbed without memory growth) and never reach the upstream
//! or hurt other clients.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use crate::client::tls_connect;
use crate::harness::{backend, backend_with, Gateway};

const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = Vec::with_capacity(9 + payload.len());
    f.extend_from_slice(&len.to_be_bytes()[1..]);
    f.push(kind);
    f.push(flags);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// An HPACK integer with an `n`-bit prefix, the prefix bits given in `first`.
fn hpack_int(first: u8, n: u32, mut v: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

/// A literal header field without indexing, plain (no Huffman).
fn literal(name: &str, value: &[u8], out: &mut Vec<u8>) {
    out.push(0x00);
    hpack_int(0, 7, name.len(), out);
    out.extend_from_slice(name.as_bytes());
    hpack_int(0, 7, value.len(), out);
    out.extend_from_slice(value);
}

fn request_block(path: &str) -> Vec<u8> {
    let mut b = Vec::new();
    literal(":method", b"GET", &mut b);
    literal(":scheme", b"https", &mut b);
    literal(":path", path.as_bytes(), &mut b);
    literal(":authority", b"localhost", &mut b);
    b
}

/// What the server sent on a raw connection, read in the background.
#[derive(Default)]
struct Seen {
    goaway: AtomicBool,
    closed: AtomicBool,
    rst: AtomicU64,
    headers: AtomicU64,
}

struct Raw {
    w: WriteHalf<TlsStream<TcpStream>>,
    seen: Arc<Seen>,
}

impl Raw {
    async fn open(gw: &Gateway) -> Raw {
        Self::open_with(gw, &[]).await
    }

    /// A connection whose client SETTINGS carry `settings` (id/value pairs, 6 bytes each).
    async fn open_with(gw: &Gateway, settings: &[u8]) -> Raw {
        let tls = tls_connect(
            gw.addr("https"),
            "localhost",
            &[b"h2"],
            &[&rustls::version::TLS13],
        )
        .await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        let (r, mut w) = tokio::io::split(tls);
        let seen = Arc::new(Seen::default());
        tokio::spawn(read_frames(r, seen.clone()));
        w.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .await
            .unwrap();
        w.write_all(&frame(SETTINGS, 0, 0, settings)).await.unwrap();
        // ACK the server's SETTINGS (sent blind: it comes first).
        w.write_all(&frame(SETTINGS, 0x1, 0, &[])).await.unwrap();
        Raw { w, seen }
    }

    /// Write, returning false once the server has closed the connection.
    async fn send(&mut self, bytes: &[u8]) -> bool {
        tokio::time::timeout(Duration::from_secs(5), self.w.write_all(bytes))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    async fn ended_within(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if self.seen.closed.load(Ordering::Relaxed) || self.seen.goaway.load(Ordering::Relaxed)
            {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }
}

async fn read_frames(mut r: ReadHalf<TlsStream<TcpStream>>, seen: Arc<Seen>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    loop {
        match r.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            match buf[3] {
                GOAWAY => seen.goaway.store(true, Ordering::Relaxed),
                RST_STREAM => {
                    seen.rst.fetch_add(1, Ordering::Relaxed);
                }
                HEADERS => {
                    seen.headers.fetch_add(1, Ordering::Relaxed);
                }
                _ => {}
            }
            buf.drain(..9 + len);
        }
    }
    seen.closed.store(true, Ordering::Relaxed);
}

fn tls_gateway(upstream: std::net::SocketAddr) -> Gateway {
    tls_gateway_with(upstream, "", "")
}

/// The TLS gateway with extra top-level TOML (`tables`) and extra keys on its one route.
fn tls_gateway_with(upstream: std::net::SocketAddr, tables: &str, route: &str) -> Gateway {
    Gateway::start(&format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "https"
listen = "127.0.0.1:0"
tls = {{ self_signed = true }}
{tables}
[upstreams.app]
targets = [{{ addr = "{upstream}" }}]

[[routes]]
name = "all"
upstream = "app"
{route}
"#
    ))
}

/// A well-behaved HTTP/2 client still gets its answer.
async fn others_are_served(gw: &Gateway) {
    let tls = tls_connect(
        gw.addr("https"),
        "localhost",
        &[b"h2"],
        &[&rustls::version::TLS13],
    )
    .await;
    let req = http::Request::builder()
        .uri(format!("https://localhost:{}/", gw.addr("https").port()))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let res = crate::client::h2_send(tls, req).await;
    assert_eq!(res.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_reset_connections_are_dropped() {
    // A slow upstream: every stream is still in flight when its reset arrives.
    let b = backend_with(backends::Options {
        name: "slow".into(),
        delay_ms: 200,
        ..Default::default()
    })
    .await;
    let gw = tls_gateway(b.addr);
    let mut raw = Raw::open(&gw).await;
    let block = request_block("/");
    let mut sent = 0u32;
    let mut batch = Vec::new();
    for i in 0..20_000u32 {
        let id = 1 + 2 * i;
        batch.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        batch.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        if batch.len() > 16_000 {
            if !raw.send(&batch).await || raw.seen.closed.load(Ordering::Relaxed) {
                break;
            }
            batch.clear();
            sent = i + 1;
        }
    }
    assert!(raw.ended_within(Duration::from_secs(5)).await);
    assert!(
        sent < 20_000,
        "the connection took all 20,000 reset streams"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reached = b.state.requests();
    eprintln!(
        "rapid reset: {sent} streams sent before the close, {reached} reached the upstream, goaway={}, our check fired={}",
        raw.seen.goaway.load(Ordering::Relaxed),
        gw.lines.all().iter().any(|l| l.contains("rapid reset"))
    );
    assert!(
        reached < 1_000,
        "{reached} reset streams reached the upstream"
    );
    others_are_served(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resets_sent_after_the_streams_were_accepted_are_caught_too() {
    // The variant that slips past h2's pending-accept check: open a batch of streams, let the
    // gateway start them, then reset them all. The gateway's own premature-reset check drops
    // the connection once at least 200 streams ran and half of them were reset unanswered.
    let b = backend_with(backends::Options {
        name: "slow".into(),
        delay_ms: 500,
        ..Default::default()
    })
    .await;
    let gw = tls_gateway(b.addr);
    let mut raw = Raw::open(&gw).await;
    let block = request_block("/");
    let mut next = 1u32;
    let mut sent = 0;
    'attack: for _ in 0..200 {
        let ids: Vec<u32> = (0..10).map(|k| next + 2 * k).collect();
        next += 20;
        let mut open = Vec::new();
        for &id in &ids {
            open.extend(frame(HEADERS, END_HEADERS | END_STREAM, id, &block));
        }
        if !raw.send(&open).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut reset = Vec::new();
        for &id in &ids {
            reset.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
        }
        if !raw.send(&reset).await {
            break 'attack;
        }
        sent += ids.len();
        if raw.seen.closed.load(Ordering::Relaxed) {
            break;
        }
    }
    assert!(raw.ended_within(Duration::from_secs(5)).await);
    eprintln!(
        "accepted-then-reset: {sent} streams, goaway={}, upstream saw {}",
        raw.seen.goaway.load(Ordering::Relaxed),
        b.state.requests()
    );
    assert!(sent < 2000, "the connection took all 2,000 reset streams");
    assert!(
        gw.lines.all().iter().any(|l| l.contains("rapid reset")),
        "the gateway's premature-reset check did not fire"
    );
    assert_eq!(
        gw.metric("gateway_h2_connections_closed_total{listener=\"https\",reason=\"rapid_reset\"}")
            .await,
        1.0
    );
    let reached = b.state.requests();
    assert!(
        reached <= 400,
        "{reached} reset streams reached the upstream"
    );
    others_are_served(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn continuation_floods_are_cut_and_memory_stays_flat() {
    let b = backend("b").await;
    let gw = tls_gateway(b.addr);
    let mut raw = Raw::open(&gw).await;
    let mut start = request_block("/");
    literal("x-pad", &[b'a'; 100], &mut start);
    assert!(raw.send(&frame(HEADERS, END_STREAM, 1, &start)).await);
    // 1 KiB CONTINUATION frames of header fields, never END_HEADERS: 100 MiB if all taken.
    let mut field = Vec::new();
    while field.len() < 1000 {
        literal("x-flood", &[b'f'; 40], &mut field);
    }
    let one = frame(CONTINUATION, 0, 1, &field);
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 64).collect();
    let mut frames = 0;
    while frames < 100_000 {
        if !raw.send(&batch).await || raw.seen.closed.load(Ordering::Relaxed) {
            break;
        }
        frames += 64;
    }
    assert!(raw.ended_within(Duration::from_secs(5)).await);
    assert!(frames < 100_000, "the flood was read to its end");
    assert_eq!(b.state.requests(), 0);
    others_are_served(&gw).await;
    let rss = gw.peak_rss_kib();
    assert!(rss < 256 * 1024, "peak RSS {rss} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hpack_bombs_are_refused_before_they_grow() {
    let b = backend("b").await;
    let gw = tls_gateway(b.addr);
    let mut raw = Raw::open(&gw).await;
    // A 4 KB field stored in the dynamic table, then referenced 4,000 times (1 byte each):
    // 16 MB of headers from a 4 KB request.
    let mut block = request_block("/");
    block.push(0x40);
    hpack_int(0, 7, 6, &mut block);
    block.extend_from_slice(b"x-bomb");
    hpack_int(0, 7, 4000, &mut block);
    block.extend_from_slice(&[b'b'; 4000]);
    block.extend(std::iter::repeat_n(0x80 | 62, 4000));
    assert!(
        raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
            .await
    );
    // Refused: a 431, a reset stream or the connection closed; never forwarded.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline
        && raw.seen.headers.load(Ordering::Relaxed) == 0
        && raw.seen.rst.load(Ordering::Relaxed) == 0
        && !raw.seen.closed.load(Ordering::Relaxed)
        && !raw.seen.goaway.load(Ordering::Relaxed)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.state.requests(), 0, "the bomb reached the upstream");
    others_are_served(&gw).await;
    let rss = gw.peak_rss_kib();
    assert!(rss < 256 * 1024, "peak RSS {rss} KiB");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_specific_headers_in_http2_requests_are_refused() {
    let b = backend("b").await;
    let gw = tls_gateway(b.addr);
    let mut raw = Raw::open(&gw).await;
    let bad: [(&str, &[u8]); 5] = [
        ("connection", b"keep-alive"),
        ("keep-alive", b"timeout=5"),
        ("transfer-encoding", b"chunked"),
        ("upgrade", b"websocket"),
        ("te", b"gzip"),
    ];
    for (i, (name, value)) in bad.iter().enumerate() {
        let mut block = request_block("/");
        literal(name, value, &mut block);
        let id = 1 + 2 * i as u32;
        if !raw
            .send(&frame(HEADERS, END_HEADERS | END_STREAM, id, &block))
            .await
        {
            break;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        b.state.requests(),
        0,
        "a malformed h2 request was forwarded"
    );
    // A valid request (te: trailers is allowed) still works on a new connection.
    let mut ok = Raw::open(&gw).await;
    let mut block = request_block("/");
    literal("te", b"trailers", &mut block);
    assert!(
        ok.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
            .await
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while ok.seen.headers.load(Ordering::Relaxed) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.state.requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_settings_floods_do_not_grow_memory_or_starve_others() {
    let b = backend("b").await;
    let gw = tls_gateway(b.addr);
    let before = gw.peak_rss_kib();
    for kind in [PING, SETTINGS] {
        let mut raw = Raw::open(&gw).await;
        let one = if kind == PING {
            frame(PING, 0, 0, b"12345678")
        } else {
            frame(SETTINGS, 0, 0, &[0x00, 0x03, 0, 0, 0, 100])
        };
        let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
        // 200,000 frames, as fast as the server takes them; the reader drains the acks.
        for _ in 0..200 {
            if !raw.send(&batch).await {
                break;
            }
        }
        others_are_served(&gw).await;
        drop(raw);
    }
    // Also a flood whose acks are never read: the server stops reading when its writes back
    // up, instead of queueing acks.
    let tls = tls_connect(
        gw.addr("https"),
        "localhost",
        &[b"h2"],
        &[&rustls::version::TLS13],
    )
    .await;
    let (_r, mut w) = tokio::io::split(tls);
    w.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    w.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    let one = frame(PING, 0, 0, b"abcdefgh");
    let batch: Vec<u8> = one.iter().copied().cycle().take(one.len() * 1000).collect();
    // 2,000,000 PINGs (34 MB, 34 MB of acks): far more than socket buffers hold.
    let mut written = 0;
    for _ in 0..2000 {
        match tokio::time::timeout(Duration::from_millis(500), w.write_all(&batch)).await {
            Ok(Ok(())) => written += 1000,
            _ => break,
        }
    }
    assert!(written < 2_000_000, "{written} unread PINGs were all taken");
    eprintln!("unread PING flood: the gateway stopped reading after {written} PINGs");
    others_are_served(&gw).await;
    let after = gw.peak_rss_kib();
    assert!(
        after < before + 64 * 1024,
        "peak RSS grew from {before} to {after} KiB"
    );
}

/// A raw HTTP/2 connection whose client never opens its stream windows
/// (SETTINGS_INITIAL_WINDOW_SIZE = 0): the server can send headers, never body bytes.
async fn zero_window_connection(gw: &Gateway, streams: u32) -> Raw {
    // SETTINGS_INITIAL_WINDOW_SIZE (0x4) = 0.
    let mut raw = Raw::open_with(gw, &[0, 4, 0, 0, 0, 0]).await;
    let block = request_block("/zero-window");
    let mut open = Vec::new();
    for k in 0..streams {
        open.extend(frame(HEADERS, END_HEADERS | END_STREAM, 1 + 2 * k, &block));
    }
    assert!(raw.send(&open).await);
    raw
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_window_streams_release_their_upstream_connections_and_fall_to_send_timeout() {
    let b = backend("small").await;
    let gw = tls_gateway_with(b.addr, "[limits]\nsend_timeout = \"4s\"\n", "");
    let mut conns = Vec::new();
    for _ in 0..10 {
        conns.push(zero_window_connection(&gw, 100).await);
    }
    // Every stream reached the upstream and got its (small) answer...
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.state.requests() < 1000 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.state.requests(), 1000);
    // ...read whole, so the upstream connections went back to the pool (at most
    // max_idle_per_target = 64 kept): far under 10 % of the 1,000 streams stay open, although
    // no client took a byte of body.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let open = b.state.open_connections();
    eprintln!(
        "zero-window: 1000 streams, {} upstream connections made, {open} open",
        b.state.connections()
    );
    assert!(open <= 64, "{open} upstream connections still open");
    assert!(conns.iter().all(|c| !c.seen.closed.load(Ordering::Relaxed)));
    // send_timeout: the stalled connections are closed, their streams counted as reset.
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !conns.iter().all(|c| c.seen.closed.load(Ordering::Relaxed))
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        conns.iter().all(|c| c.seen.closed.load(Ordering::Relaxed)),
        "a connection that took no byte for send_timeout is still open"
    );
    let stalled = gw
        .metric("gateway_h2_connections_closed_total{listener=\"https\",reason=\"stalled\"}")
        .await;
    assert_eq!(stalled, 10.0);
    let resets = gw
        .metric("gateway_h2_streams_reset_total{listener=\"https\",reason=\"send_timeout\"}")
        .await;
    assert_eq!(resets, 1000.0);
    others_are_served(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsigned_bodies_to_an_integrity_route_are_refused_before_they_are_read() {
    let b = backend("signed-only").await;
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.toml");
    std::fs::write(
        &keys,
        "client-1 = \"c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0\"\n",
    )
    .unwrap();
    let gw = tls_gateway_with(
        b.addr,
        &format!(
            "[integrity.strict]\nsignature = \"required\"\nsignature_keys_file = \"{}\"\n",
            keys.display()
        ),
        "integrity = \"strict\"",
    );
    // 64 streams on one connection, each with a 9.9 MiB body and no signature.
    let tls = tls_connect(
        gw.addr("https"),
        "localhost",
        &[b"h2"],
        &[&rustls::version::TLS13],
    )
    .await;
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let body = bytes::Bytes::from(vec![b'x'; 9_900 * 1024]);
    let mut calls = Vec::new();
    for _ in 0..64 {
        let mut sender = sender.clone();
        let body = body.clone();
        calls.push(tokio::spawn(async move {
            let req = http::Request::builder()
                .method("POST")
                .uri("https://localhost/upload")
                .header("content-type", "application/octet-stream")
                .body(http_body_util::Full::new(body))
                .unwrap();
            sender.ready().await.ok()?;
            let res = tokio::time::timeout(Duration::from_secs(20), sender.send_request(req))
                .await
                .ok()?
                .ok()?;
            Some(res.status())
        }));
    }
    let mut refused = 0;
    for c in calls {
        if c.await.unwrap() == Some(StatusCode::BAD_REQUEST) {
            refused += 1;
        }
    }
    assert_eq!(refused, 64, "every unsigned upload is answered 400");
    assert_eq!(b.state.requests(), 0, "nothing reached the upstream");
    let rss_mib = gw.peak_rss_kib() / 1024;
    eprintln!("integrity before the body: 64 x 9.9 MiB refused, gateway peak RSS {rss_mib} MiB");
    assert!(rss_mib < 200, "peak RSS {rss_mib} MiB");
}
