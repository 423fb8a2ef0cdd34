//! Replacing the binary under load (SIGUSR2): the new process takes over the listening
//! sockets, the old one drains; no connection is refused and no request fails.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::StatusCode;

use crate::client::{get, request, H1};
use crate::harness::{backend, simple_config, Gateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr2_hands_the_sockets_to_a_new_process_without_refusing_a_connection() {
    let b = backend("b").await;
    let mut gw = Gateway::start(&simple_config(&[b.addr], ""));
    let http = gw.addr("http");
    let old_pid = gw.pid();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let admin = gw.admin();
    let not_ready = Arc::new(AtomicU64::new(0));
    let probes = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    {
        // A readiness probe on the admin port, keep-alive, throughout: the old process must
        // never answer 503 (draining) once the new one serves; it hands the port over.
        let (stop, not_ready, probes) = (stop.clone(), not_ready.clone(), probes.clone());
        load.push(tokio::spawn(async move {
            let mut conn: Option<H1> = None;
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let c = match conn.as_mut() {
                    Some(c) => c,
                    None => conn.insert(H1::connect(admin).await),
                };
                match c.send(request("GET", "/readyz", &[], Bytes::new())).await {
                    Ok(r) => {
                        probes.fetch_add(1, Ordering::Relaxed);
                        if r.status != StatusCode::OK {
                            not_ready.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => conn = None,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    for k in 0..4 {
        let (stop, ok, refused, failed) =
            (stop.clone(), ok.clone(), refused.clone(), failed.clone());
        load.push(tokio::spawn(async move {
            let mut conn: Option<H1> = None;
            for _ in 0..100_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                if k < 3 {
                    // A new connection per request: the accept queues are what matters.
                    match tokio::net::TcpStream::connect(http).await {
                        Err(_) => {
                            refused.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Ok(s) => drop(s),
                    }
                    let r = get(http, "/").await;
                    if r.status == StatusCode::OK {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    // Keep-alive, retrying a GET once on a connection the server closed, as
                    // HTTP clients do.
                    let mut done = false;
                    for _ in 0..2 {
                        let c = match conn.as_mut() {
                            Some(c) => c,
                            None => conn.insert(H1::connect(http).await),
                        };
                        match c.send(request("GET", "/", &[], Bytes::new())).await {
                            Ok(r) if r.status == StatusCode::OK => {
                                done = true;
                                break;
                            }
                            _ => conn = None,
                        }
                    }
                    if done {
                        ok.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = std::process::Command::new("kill")
        .args(["-USR2", &old_pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let handed = gw
        .lines
        .wait_for(Duration::from_secs(30), |l| {
            l.contains("handed over to the new process") || l.contains("binary upgrade failed")
        })
        .expect("no hand-over within 30 s");
    assert!(handed.contains("handed over"), "{handed}");
    let v: serde_json::Value = serde_json::from_str(&handed).unwrap();
    let new_pid = v["new_pid"].as_u64().unwrap() as u32;
    let exited = gw.wait_exit(Duration::from_secs(30));
    assert!(
        exited.is_some_and(|s| s.success()),
        "the old process must drain and exit: {exited:?}"
    );
    // Load keeps going against the new process alone.
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.unwrap();
    }
    let (ok, refused, failed) = (
        ok.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    eprintln!("binary upgrade under load: {ok} ok, {refused} refused, {failed} failed");
    let admin_pid = get(gw.admin(), "/admin/config").await.json()["pid"]
        .as_u64()
        .unwrap() as u32;
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &new_pid.to_string()])
        .status();
    assert_eq!(admin_pid, new_pid, "the admin port is the new process's");
    assert_ne!(new_pid, old_pid);
    assert!(ok > 200, "too little load: {ok}");
    assert_eq!(refused, 0, "connections refused during the hand-over");
    assert_eq!(failed, 0, "requests failed during the hand-over");
    let (not_ready, probes) = (
        not_ready.load(Ordering::Relaxed),
        probes.load(Ordering::Relaxed),
    );
    eprintln!("readiness probes during the upgrade: {probes}, not ready: {not_ready}");
    assert!(probes > 50, "too few probes: {probes}");
    assert_eq!(not_ready, 0, "/readyz said 503 during the hand-over");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{new_pid}")).exists() {
        if Instant::now() > deadline {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &new_pid.to_string()])
                .status();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
