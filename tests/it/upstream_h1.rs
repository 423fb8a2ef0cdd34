//! The lean HTTP/1.1 upstream client (`gateway/src/endpoint/h1.rs`), which carries bodiless
//! GET and HEAD requests to plain-text HTTP/1.1 upstreams, against scripted raw-TCP upstreams:
//! what real servers do at the edges of the protocol (closing idle keep-alive connections,
//! both framing headers, 1xx, cut bodies, chunked trailers), seen from a real client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::client::{request, H1};
use crate::harness::{simple_config, Gateway};

/// Read one request head; `false` when the connection ended first.
async fn read_head(s: &mut TcpStream) -> bool {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return false,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
    }
    true
}

/// An upstream that answers each request on a connection with `answer(n)` (n counts the
/// connection's requests from 0); `None` closes the connection without an answer. Returns its
/// address and the number of connections it accepted.
async fn scripted(answer: fn(usize) -> Option<&'static [u8]>) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conns = Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                for n in 0.. {
                    if !read_head(&mut s).await {
                        return;
                    }
                    let Some(bytes) = answer(n) else { return };
                    // In small pieces: heads and bodies split across reads.
                    for piece in bytes.chunks(9) {
                        if s.write_all(piece).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (addr, conns)
}

async fn get(conn: &mut H1, path: &str) -> crate::client::Resp {
    conn.send(request("GET", path, &[], bytes::Bytes::new()))
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_the_upstream_dropped_is_replaced_without_an_error() {
    // Each upstream connection answers once, then reads the next request and closes without
    // answering: the race of a keep-alive timeout. GET is safe to send again, on a new
    // connection, as hyper's client and nginx do.
    let (origin, conns) =
        scripted(|n| (n == 0).then_some(&b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"[..]))
            .await;
    let gw = Gateway::start(&simple_config(&[origin], ""));
    let mut conn = H1::connect(gw.addr("http")).await;
    for i in 0..20 {
        let r = get(&mut conn, "/").await;
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(&r.body[..], b"ok");
    }
    assert!(conns.load(Ordering::Relaxed) >= 20);
    let metrics = gw.metrics_text().await;
    let resets = metrics
        .lines()
        .find(|l| {
            l.starts_with("gateway_upstream_requests_total{") && l.contains("outcome=\"reset\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or("0");
    assert_eq!(
        resets, "0",
        "a stale pooled connection is not an upstream failure"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_are_reused_and_close_is_honoured() {
    let (origin, conns) =
        scripted(|_| Some(&b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Up: 1\r\n\r\nhello"[..]))
            .await;
    let gw = Gateway::start(&simple_config(&[origin], ""));
    let mut conn = H1::connect(gw.addr("http")).await;
    for _ in 0..30 {
        let r = get(&mut conn, "/").await;
        assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"hello"[..]));
        assert_eq!(r.header("x-up"), "1");
    }
    assert_eq!(
        conns.load(Ordering::Relaxed),
        1,
        "one upstream connection, reused"
    );

    let (origin, conns) = scripted(|_| {
        Some(&b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"[..])
    })
    .await;
    let gw = Gateway::start(&simple_config(&[origin], ""));
    let mut conn = H1::connect(gw.addr("http")).await;
    for _ in 0..5 {
        assert_eq!(get(&mut conn, "/").await.status, 200);
    }
    assert_eq!(
        conns.load(Ordering::Relaxed),
        5,
        "Connection: close is not reused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_at_the_edges_reaches_the_client_intact() {
    // Both framing headers: chunked wins, Content-Length does not reach the client.
    let (origin, _) = scripted(|_| {
        Some(
            &b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n3;ext=1\r\nabc\r\n4\r\ndefg\r\n0\r\nx-trailer: t\r\n\r\n"[..],
        )
    })
    .await;
    let gw = Gateway::start(&simple_config(&[origin], ""));
    let mut conn = H1::connect(gw.addr("http")).await;
    for _ in 0..3 {
        let r = get(&mut conn, "/").await;
        assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"abcdefg"[..]));
        assert!(
            r.headers.get("content-length").is_none_or(|v| v == "7"),
            "{:?}",
            r.headers
        );
    }

    // 1xx before the answer are skipped; a HEAD answer has no body whatever its length says.
    let (origin, _) = scripted(|_| {
        Some(&b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nbody"[..])
    })
    .await;
    let gw = Gateway::start(&simple_config(&[origin], ""));
    let mut conn = H1::connect(gw.addr("http")).await;
    let r = get(&mut conn, "/").await;
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"body"[..]));

    // A HEAD answer has no body, whatever its length says, and the length reaches the client.
    let (origin, conns) =
        scripted(|_| Some(&b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\n"[..])).await;
    let gw = Gateway::start(&simple_config(&[origin], ""));
    let mut conn = H1::connect(gw.addr("http")).await;
    for _ in 0..3 {
        let r = conn
            .send(request("HEAD", "/", &[], bytes::Bytes::new()))
            .await
            .unwrap();
        assert_eq!((r.status.as_u16(), r.body.len()), (200, 0));
        assert_eq!(r.header("content-length"), "50");
    }
    assert_eq!(
        conns.load(Ordering::Relaxed),
        1,
        "HEAD answers keep the connection"
    );

    // No length: the body runs to the connection's end.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut s).await {
                    let _ = s.write_all(b"HTTP/1.1 200 OK\r\n\r\nto the end").await;
                }
            });
        }
    });
    let gw = Gateway::start(&simple_config(&[addr], ""));
    let mut conn = H1::connect(gw.addr("http")).await;
    for _ in 0..3 {
        let r = get(&mut conn, "/").await;
        assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"to the end"[..]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_answer_is_a_502_and_a_cut_body_is_not_passed_off_as_whole() {
    for bad in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"garbage\r\n\r\n",
    ] {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if read_head(&mut s).await {
                        let _ = s.write_all(bad).await;
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                });
            }
        });
        let gw = Gateway::start(&simple_config(&[addr], ""));
        let r = crate::client::get(gw.addr("http"), "/").await;
        assert_eq!(r.status, 502, "{:?}", String::from_utf8_lossy(bad));
    }

    // 3 bytes of 10, then the upstream goes: the client must not get a complete-looking answer.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_head(&mut s).await {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\nabc")
                        .await;
                }
            });
        }
    });
    let gw = Gateway::start(&simple_config(&[addr], ""));
    // A raw client: what arrives is nothing (the error came before hyper flushed the head) or
    // the head with the upstream's length and at most the 3 bytes, then the connection's end;
    // no client can take it for a whole answer.
    let mut raw = TcpStream::connect(gw.addr("http")).await.unwrap();
    raw.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), raw.read_to_end(&mut got)).await;
    assert!(
        read.is_ok(),
        "the gateway must close the client connection of a cut body"
    );
    if got.is_empty() {
        return;
    }
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    assert!(head.starts_with("http/1.1 200"), "{text:?}");
    assert!(head.contains("content-length: 100000"), "{text:?}");
    assert!("abc".starts_with(body), "{text:?}");
}
