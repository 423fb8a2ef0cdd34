//! The sample backend binary (SPEC §2): echo, filler bodies, health and fault controls.

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;

use crate::client::{get, request, send};
use crate::harness::{closed_port, BACKEND_BIN};

struct Proc(std::process::Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_binary_echoes_and_obeys_its_controls() {
    let addr = closed_port();
    let child = std::process::Command::new(BACKEND_BIN)
        .args(["--listen", &addr.to_string(), "--name", "shard-7"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let _proc = Proc(child);
    let mut up = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(up);
    let res = send(
        addr,
        request(
            "POST",
            "/a/b?c=1",
            &[("x-multi", "1"), ("x-multi", "2")],
            Bytes::from_static(b"12345"),
        ),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    assert_eq!(res.header("x-served-by"), "shard-7");
    let v = res.json();
    assert_eq!(v["served_by"], "shard-7");
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/a/b");
    assert_eq!(v["query"], "c=1");
    assert_eq!(v["headers"]["x-multi"], "1, 2");
    assert_eq!(v["body_bytes"], 5);

    assert_eq!(get(addr, "/health").await.status, StatusCode::OK);
    let down = send(
        addr,
        request(
            "POST",
            "/_backend/health",
            &[],
            Bytes::from_static(br#"{"healthy":false}"#),
        ),
    )
    .await;
    assert_eq!(down.status, StatusCode::OK);
    assert_eq!(
        get(addr, "/health").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );

    let faults = send(
        addr,
        request(
            "POST",
            "/_backend/faults",
            &[],
            Bytes::from_static(br#"{"fail_rate":1.0}"#),
        ),
    )
    .await;
    assert_eq!(faults.status, StatusCode::OK);
    assert_eq!(
        get(addr, "/x").await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    let stats = get(addr, "/_backend/stats").await.json();
    // Control paths and /health are not counted: one echo and one failure.
    assert_eq!(stats["requests"], 2);
}
