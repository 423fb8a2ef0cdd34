//! Service discovery by DNS (SPEC §8.3) against a real DNS server: dnsmasq on a loopback port,
//! its records in files this test writes (SIGHUP re-reads host files; a restart changes SRV
//! records). Origins listen on several loopback addresses (127.0.0.x) on one port, as pods of a
//! headless Service do.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::client;
use crate::harness::{full, gateway_cmd, require_tool, Gateway, Proc};

/// dnsmasq on a free loopback port: `--local=/test/` so unknown `.test` names are NXDOMAIN.
struct Dns {
    dir: tempfile::TempDir,
    port: u16,
    proc: Option<Proc>,
    srv: Vec<String>,
}

impl Dns {
    fn start(hosts: &str, srv: &[(&str, &str, u16, u16)]) -> Dns {
        require_tool("dnsmasq", "dnsmasq-base");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("hosts"), hosts).unwrap();
        let mut dns = Dns {
            dir,
            port: free_udp_and_tcp_port(),
            proc: None,
            srv: Vec::new(),
        };
        dns.set_srv(srv);
        dns.run();
        dns
    }

    fn set_srv(&mut self, srv: &[(&str, &str, u16, u16)]) {
        self.srv = srv
            .iter()
            .map(|(name, host, port, weight)| format!("--srv-host={name},{host},{port},0,{weight}"))
            .collect();
    }

    fn run(&mut self) {
        let hosts = self.dir.path().join("hosts");
        let child = Command::new("dnsmasq")
            .arg("--keep-in-foreground")
            .arg(format!("--port={}", self.port))
            .args([
                "--listen-address=127.0.0.1",
                "--bind-interfaces",
                "--no-resolv",
                "--no-hosts",
                "--local=/test/",
                "--local-ttl=1",
                "--user=root",
                "--pid-file=",
                "--conf-file=/dev/null",
                "--log-facility=-",
            ])
            .arg(format!("--addn-hosts={}", hosts.display()))
            .args(&self.srv)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        self.proc = Some(Proc(child));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(self.addr()).is_err() {
            assert!(Instant::now() < deadline, "dnsmasq did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// New host records, re-read on SIGHUP.
    fn set_hosts(&self, hosts: &str) {
        std::fs::write(self.dir.path().join("hosts"), hosts).unwrap();
        let pid = self.proc.as_ref().unwrap().0.id().to_string();
        let ok = Command::new("kill")
            .args(["-HUP", &pid])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    }

    fn stop(&mut self) {
        self.proc = None;
    }

    fn restart(&mut self) {
        self.stop();
        self.run();
    }

    #[allow(dead_code)]
    fn path(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }
}

fn free_udp_and_tcp_port() -> u16 {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port for dnsmasq");
}

/// An origin on one loopback address: answers its name (`x-served-by`), `/slow` after 2 s;
/// counts requests and those in flight.
#[derive(Clone)]
struct Origin {
    name: String,
    requests: Arc<AtomicU64>,
    in_flight: Arc<AtomicU64>,
}

async fn origin_at(addr: SocketAddr, name: &str) -> Origin {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let o = Origin {
        name: name.to_string(),
        requests: Arc::default(),
        in_flight: Arc::default(),
    };
    let me = o.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            let me = me.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let me = me.clone();
                        async move {
                            me.requests.fetch_add(1, Ordering::SeqCst);
                            me.in_flight.fetch_add(1, Ordering::SeqCst);
                            if req.uri().path() == "/slow" {
                                tokio::time::sleep(Duration::from_secs(2)).await;
                            }
                            me.in_flight.fetch_sub(1, Ordering::SeqCst);
                            let mut res = http::Response::new(full("ok"));
                            res.headers_mut()
                                .insert("x-served-by", me.name.parse().unwrap());
                            Ok::<_, std::convert::Infallible>(res)
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    o
}

/// Origins on 127.0.0.{last} for each `last`, all on one port.
async fn origins(lasts: &[u8]) -> (u16, Vec<Origin>) {
    'again: for _ in 0..20 {
        let probe = std::net::TcpListener::bind((IpAddr::from([127, 0, 0, lasts[0]]), 0)).unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        for &l in lasts {
            if std::net::TcpListener::bind((IpAddr::from([127, 0, 0, l]), port)).is_err() {
                continue 'again;
            }
        }
        let mut out = Vec::new();
        for &l in lasts {
            out.push(origin_at(SocketAddr::from(([127, 0, 0, l], port)), &format!("o{l}")).await);
        }
        return (port, out);
    }
    panic!("no port free on every address");
}

fn hosts(name: &str, lasts: &[u8]) -> String {
    lasts
        .iter()
        .map(|l| format!("127.0.0.{l} {name}\n"))
        .collect()
}

fn config(dns: &Dns, upstreams: &str, routes: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "web"
listen = "127.0.0.1:0"

[discovery]
resolvers = ["{}"]
min_refresh = "1s"
max_refresh = "2s"

{upstreams}

{routes}
"#,
        dns.addr()
    )
}

async fn reload(gw: &Gateway) -> serde_json::Value {
    client::send(
        gw.admin(),
        client::request("POST", "/admin/reload", &[], Default::default()),
    )
    .await
    .json()
}

async fn discovery_status(gw: &Gateway, upstream: &str) -> serde_json::Value {
    let v = client::get(gw.admin(), "/admin/upstreams").await.json();
    v["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["name"] == upstream)
        .map(|u| u["discovery"].clone())
        .unwrap()
}

async fn target_ids(gw: &Gateway, upstream: &str) -> Vec<String> {
    let v = discovery_status(gw, upstream).await;
    v["targets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap().to_string())
        .collect()
}

async fn wait_until<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Clients sending requests back to back until stopped (at most 60 s): (ok, failed).
fn load(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<(u64, u64)> {
    tokio::spawn(async move {
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut tasks = Vec::new();
        for _ in 0..clients {
            let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                let mut c = client::H1::connect(addr).await;
                while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                    match c
                        .send(client::request("GET", "/", &[], Default::default()))
                        .await
                    {
                        Ok(r) if r.status == 200 => ok.fetch_add(1, Ordering::SeqCst),
                        _ => {
                            c = client::H1::connect(addr).await;
                            failed.fetch_add(1, Ordering::SeqCst)
                        }
                    };
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_headless_service_grows_and_shrinks_under_load_without_a_failed_request() {
    let (port, o) = origins(&[11, 12, 13, 14]).await;
    let dns = Dns::start(&hosts("svc.test", &[11, 12, 13]), &[]);
    let gw = Gateway::start(&config(
        &dns,
        &format!("[upstreams.svc]\ndiscover = {{ dns = \"svc.test\", port = {port} }}"),
        "[[routes]]\nname = \"svc\"\nmatch = { path_prefix = \"/\" }\nupstream = \"svc\"\ntimeout = \"5s\"",
    ));
    let web = gw.addr("web");
    assert_eq!(
        target_ids(&gw, "svc").await,
        [11, 12, 13].map(|l| format!("127.0.0.{l}:{port}"))
    );
    assert_eq!(
        gw.metric("gateway_discovery_targets{upstream=\"svc\"}")
            .await,
        3.0
    );

    let stop = Arc::new(AtomicBool::new(false));
    let running = load(web, 4, stop.clone());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(o[3].requests.load(Ordering::SeqCst), 0);

    // A fourth pod: traffic reaches it within TTL (1 s) + 1 s (plus slack for a busy CI host).
    dns.set_hosts(&hosts("svc.test", &[11, 12, 13, 14]));
    let changed = Instant::now();
    assert!(
        wait_until(Duration::from_secs(6), || async {
            o[3].requests.load(Ordering::SeqCst) > 0
        })
        .await,
        "the new address never got a request"
    );
    let reached = changed.elapsed();
    assert!(reached < Duration::from_secs(4), "took {reached:?}");

    // Requests in flight on 127.0.0.12 when it goes away finish; no new ones reach it.
    let slow: Vec<_> = (0..8)
        .map(|_| tokio::spawn(async move { client::get(web, "/slow").await.status }))
        .collect();
    assert!(
        wait_until(Duration::from_secs(2), || async {
            o[1].in_flight.load(Ordering::SeqCst) > 0
        })
        .await,
        "no slow request reached 127.0.0.12"
    );
    dns.set_hosts(&hosts("svc.test", &[11, 13, 14]));
    let gone = format!("127.0.0.12:{port}");
    assert!(
        wait_until(Duration::from_secs(6), || {
            let gw = &gw;
            let gone = gone.clone();
            async move { !target_ids(gw, "svc").await.contains(&gone) }
        })
        .await
    );
    let at_removal = o[1].requests.load(Ordering::SeqCst);
    for s in slow {
        assert_eq!(
            s.await.unwrap(),
            200,
            "a request in flight on a removed target failed"
        );
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = running.await.unwrap();
    assert_eq!(
        failed, 0,
        "{failed} failed requests over the changes ({ok} ok)"
    );
    assert!(ok > 100, "the load ran: {ok}");
    assert_eq!(
        o[1].requests.load(Ordering::SeqCst),
        at_removal,
        "a removed target got new requests"
    );

    let events = gw.events("discovery").await;
    let details: Vec<&str> = events
        .iter()
        .map(|e| e["detail"].as_str().unwrap())
        .collect();
    assert!(
        details
            .iter()
            .any(|d| d.contains(&format!("added 127.0.0.14:{port}"))),
        "{details:?}"
    );
    assert!(
        details
            .iter()
            .any(|d| d.contains(&format!("removed 127.0.0.12:{port}"))),
        "{details:?}"
    );
    assert!(
        gw.metric("gateway_discovery_lookups_total{outcome=\"success\",upstream=\"svc\"}")
            .await
            >= 3.0
    );
    // The removed target's series are gone.
    assert!(!gw
        .metrics_text()
        .await
        .contains(&format!("target=\"127.0.0.12:{port}\"")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srv_weights_split_traffic_and_a_changed_record_follows() {
    let (pa, a) = origins(&[21]).await;
    let (pb, b) = origins(&[22]).await;
    let records = "127.0.0.21 a.test\n127.0.0.22 b.test\n";
    let mut dns = Dns::start(
        records,
        &[
            ("_http._tcp.svc.test", "a.test", pa, 1),
            ("_http._tcp.svc.test", "b.test", pb, 3),
        ],
    );
    let gw = Gateway::start(&config(
        &dns,
        "[upstreams.svc]\nbalancer = \"weighted_round_robin\"\ndiscover = { dns_srv = \"_http._tcp.svc.test\" }",
        "[[routes]]\nname = \"svc\"\nmatch = { path_prefix = \"/\" }\nupstream = \"svc\"",
    ));
    assert_eq!(
        target_ids(&gw, "svc").await,
        [format!("a.test:{pa}"), format!("b.test:{pb}")]
    );
    let web = gw.addr("web");
    let mut c = client::H1::connect(web).await;
    for _ in 0..400 {
        let r = c
            .send(client::request("GET", "/", &[], Default::default()))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
    }
    let (na, nb) = (
        a[0].requests.load(Ordering::SeqCst),
        b[0].requests.load(Ordering::SeqCst),
    );
    assert_eq!((na, nb), (100, 300), "weights 1:3");

    // New SRV records (dnsmasq restarted): weights 1:1.
    dns.set_srv(&[
        ("_http._tcp.svc.test", "a.test", pa, 1),
        ("_http._tcp.svc.test", "b.test", pb, 1),
    ]);
    dns.restart();
    assert!(
        wait_until(Duration::from_secs(8), || async {
            let events = gw.events("discovery").await;
            !events.is_empty()
        })
        .await,
        "the weight change was not applied"
    );
    let (a0, b0) = (
        a[0].requests.load(Ordering::SeqCst),
        b[0].requests.load(Ordering::SeqCst),
    );
    let mut c = client::H1::connect(web).await;
    for _ in 0..200 {
        c.send(client::request("GET", "/", &[], Default::default()))
            .await
            .unwrap();
    }
    let (da, db) = (
        a[0].requests.load(Ordering::SeqCst) - a0,
        b[0].requests.load(Ordering::SeqCst) - b0,
    );
    assert_eq!((da, db), (100, 100), "weights 1:1 after the change");
}

async fn owners(web: SocketAddr, keys: usize) -> HashMap<String, String> {
    let mut c = client::H1::connect(web).await;
    let mut out = HashMap::new();
    for i in 0..keys {
        let key = format!("user-{i}");
        let r = c
            .send(client::request(
                "GET",
                "/",
                &[("x-user", &key)],
                Default::default(),
            ))
            .await
            .unwrap();
        assert_eq!(r.status, 200);
        out.insert(key, r.header("x-served-by").to_string());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_over_discovered_targets_moves_the_reported_share() {
    let (port, _o) = origins(&[31, 32, 33, 34, 35]).await;
    let dns = Dns::start(&hosts("ring.test", &[31, 32, 33, 34]), &[]);
    let gw = Gateway::start(&config(
        &dns,
        &format!("[upstreams.ring]\nbalancer = \"consistent_hash\"\nhash_on = \"header.x-user\"\ndiscover = {{ dns = \"ring.test\", port = {port} }}"),
        "[[routes]]\nname = \"ring\"\nmatch = { path_prefix = \"/\" }\nupstream = \"ring\"",
    ));
    let web = gw.addr("web");
    let before = owners(web, 2000).await;
    dns.set_hosts(&hosts("ring.test", &[31, 32, 33, 34, 35]));
    assert!(
        wait_until(Duration::from_secs(8), || async {
            target_ids(&gw, "ring").await.len() == 5
        })
        .await
    );
    let after = owners(web, 2000).await;
    let moved: Vec<(&String, &String)> = before
        .iter()
        .filter(|(k, v)| after[*k] != **v)
        .map(|(k, v)| (v, &after[k]))
        .collect();
    assert!(
        moved.iter().all(|(_, to)| to.as_str() == "o35"),
        "keys moved between old targets: {moved:?}"
    );
    let measured = moved.len() as f64 / 2000.0;
    let event = gw.events("discovery").await;
    let detail = event.last().unwrap()["detail"]
        .as_str()
        .unwrap()
        .to_string();
    let reported: f64 = detail
        .split("(moved=")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no moved share in {detail:?}"));
    assert!(
        (measured - reported).abs() < 0.04,
        "measured {measured:.3}, reported {reported:.3}"
    );
    assert!(
        reported > 0.1 && reported < 0.3,
        "about 1/5 of keys: {reported}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_down_keeps_the_set_and_three_empty_answers_empty_it() {
    let (port, _o) = origins(&[41, 42]).await;
    let mut dns = Dns::start(&hosts("keep.test", &[41, 42]), &[]);
    let gw = Gateway::start(&config(
        &dns,
        &format!("[upstreams.keep]\ndiscover = {{ dns = \"keep.test\", port = {port} }}"),
        "[[routes]]\nname = \"keep\"\nmatch = { path_prefix = \"/\" }\nupstream = \"keep\"",
    ));
    let web = gw.addr("web");
    assert_eq!(target_ids(&gw, "keep").await.len(), 2);

    // The DNS server goes away: lookups fail, the last set keeps serving.
    dns.stop();
    let errors = "gateway_discovery_lookups_total{outcome=\"error\",upstream=\"keep\"}";
    assert!(
        wait_until(Duration::from_secs(15), || async {
            gw.metric(errors).await >= 1.0
        })
        .await,
        "failed lookups are not counted"
    );
    for _ in 0..10 {
        assert_eq!(client::get(web, "/").await.status, 200);
    }
    assert_eq!(discovery_status(&gw, "keep").await["outcome"], "error");
    assert_eq!(target_ids(&gw, "keep").await.len(), 2);

    // Back, without the name: NXDOMAIN. One or two empty answers keep the set...
    dns.run();
    dns.set_hosts("");
    assert!(
        wait_until(Duration::from_secs(10), || async {
            discovery_status(&gw, "keep").await["empty_answers_in_a_row"].as_u64() >= Some(1)
        })
        .await
    );
    let st = discovery_status(&gw, "keep").await;
    if st["empty_answers_in_a_row"].as_u64() < Some(3) {
        assert_eq!(st["targets"].as_array().unwrap().len(), 2, "{st}");
        assert_eq!(client::get(web, "/").await.status, 200);
    }
    // ... the third empties it: 503.
    assert!(
        wait_until(Duration::from_secs(10), || async {
            target_ids(&gw, "keep").await.is_empty()
        })
        .await
    );
    assert!(discovery_status(&gw, "keep").await["empty_answers_in_a_row"].as_u64() >= Some(3));
    assert_eq!(client::get(web, "/").await.status, 503);
    assert!(
        gw.metric("gateway_discovery_lookups_total{outcome=\"empty\",upstream=\"keep\"}")
            .await
            >= 3.0
    );
    assert_eq!(
        gw.metric("gateway_discovery_targets{upstream=\"keep\"}")
            .await,
        0.0
    );

    // The name comes back: served again.
    dns.set_hosts(&hosts("keep.test", &[42]));
    assert!(
        wait_until(Duration::from_secs(8), || async {
            client::get(web, "/").await.status == 200
        })
        .await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discover_may_start_empty_and_a_hostname_that_does_not_resolve_fails_run() {
    let (port, o) = origins(&[51]).await;
    let dns = Dns::start("", &[]);
    // No pod ready yet: the gateway starts, answers 503, and keeps looking.
    let gw = Gateway::start(&config(
        &dns,
        &format!("[upstreams.late]\ndiscover = {{ dns = \"late.test\", port = {port} }}"),
        "[[routes]]\nname = \"late\"\nmatch = { path_prefix = \"/\" }\nupstream = \"late\"",
    ));
    let web = gw.addr("web");
    assert_eq!(client::get(web, "/").await.status, 503);
    dns.set_hosts(&hosts("late.test", &[51]));
    assert!(
        wait_until(Duration::from_secs(8), || async {
            client::get(web, "/").await.status == 200
        })
        .await
    );
    assert!(o[0].requests.load(Ordering::SeqCst) >= 1);

    // A target written as host:port that does not resolve: `check` warns, `run` fails.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        config(
            &dns,
            "[upstreams.api]\ntargets = [{ addr = \"nowhere.test:8080\" }]",
            "[[routes]]\nname = \"api\"\nmatch = { path_prefix = \"/\" }\nupstream = \"api\"",
        ),
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, _out, err) = gateway_cmd(&["check", "-c", p], dir.path());
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: target \"nowhere.test:8080\" does not resolve"),
        "{err}"
    );
    assert!(err.contains("gw.toml:"), "a position: {err}");
    let (code, _out, err) = gateway_cmd(&["run", "-c", p], dir.path());
    assert_ne!(code, 0);
    assert!(
        err.contains("target \"nowhere.test:8080\" does not resolve"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostname_target_follows_its_address_and_keeps_its_keys() {
    let (port, _o) = origins(&[61, 62]).await;
    let fixed = crate::harness::origin(|_req| async {
        let mut res = http::Response::new(full("ok"));
        res.headers_mut()
            .insert("x-served-by", "fixed".parse().unwrap());
        res
    })
    .await;
    let dns = Dns::start(&hosts("api.test", &[61]), &[]);
    let gw = Gateway::start(&config(
        &dns,
        &format!("[upstreams.api]\nbalancer = \"consistent_hash\"\nhash_on = \"header.x-user\"\ntargets = [{{ addr = \"api.test:{port}\" }}, {{ addr = \"{fixed}\" }}]"),
        "[[routes]]\nname = \"api\"\nmatch = { path_prefix = \"/\" }\nupstream = \"api\"",
    ));
    let web = gw.addr("web");
    let before = owners(web, 500).await;
    assert!(before.values().any(|v| v == "o61") && before.values().any(|v| v == "fixed"));
    dns.set_hosts(&hosts("api.test", &[62]));
    assert!(
        wait_until(Duration::from_secs(8), || async {
            let v = client::get(gw.admin(), "/admin/upstreams").await.json();
            v.to_string().contains(&format!("127.0.0.62:{port}"))
        })
        .await,
        "the new address was not picked up"
    );
    // Idle connections to the old address were closed with the change.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = owners(web, 500).await;
    for (k, v) in &before {
        let want = if v == "o61" { "o62" } else { "fixed" };
        let got = &after[k];
        assert_eq!(got, want, "key {k}: {v} before, {got} after");
    }
    assert!(after.values().filter(|v| *v == "o62").count() > 0);
    let ids: Vec<String> = {
        let v = client::get(gw.admin(), "/admin/upstreams").await.json();
        v["upstreams"][0]["targets"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["id"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(ids.contains(&format!("api.test:{port}")), "{ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_to_a_hostname_target_verifies_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::upstream_reach::pki(dir.path());
    let (_nginx, addr) = crate::upstream_reach::nginx_https(dir.path(), &pki, false);
    // The certificate is for "localhost"; "wrong.test" points at the same server.
    let dns = Dns::start("127.0.0.1 localhost\n127.0.0.1 wrong.test\n", &[]);
    let gw = Gateway::start(&config(
        &dns,
        &format!(
            "[upstreams.good]\ntls = {{ ca_file = \"{ca}\" }}\ntargets = [{{ addr = \"localhost:{port}\" }}]\n\n[upstreams.bad]\ntls = {{ ca_file = \"{ca}\" }}\ntargets = [{{ addr = \"wrong.test:{port}\" }}]",
            ca = pki.ca.display(),
            port = addr.port()
        ),
        "[[routes]]\nname = \"good\"\nmatch = { path_prefix = \"/good\" }\nupstream = \"good\"\n\n[[routes]]\nname = \"bad\"\nmatch = { path_prefix = \"/bad\" }\nupstream = \"bad\"",
    ));
    let web = gw.addr("web");
    let r = client::get(web, "/good").await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    assert!(String::from_utf8_lossy(&r.body).contains("nginx over tls"));
    assert_eq!(client::get(web, "/bad").await.status, 502);
    assert!(gw
        .lines
        .wait_for(Duration::from_secs(5), |l| l
            .contains("upstream TLS handshake failed"))
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_adding_a_name_that_does_not_resolve_is_refused() {
    let (port, o) = origins(&[71, 72]).await;
    let dns = Dns::start(&hosts("one.test", &[71]), &[]);
    let routes = "[[routes]]\nname = \"r\"\nmatch = { path_prefix = \"/\" }\nupstream = \"u\"";
    let gw = Gateway::start(&config(
        &dns,
        &format!("[upstreams.u]\ntargets = [{{ addr = \"one.test:{port}\" }}]"),
        routes,
    ));
    gw.write_config(&config(
        &dns,
        &format!("[upstreams.u]\ntargets = [{{ addr = \"one.test:{port}\" }}, {{ addr = \"missing.test:{port}\" }}]"),
        routes,
    ));
    let r = reload(&gw).await;
    assert_eq!(r["outcome"], "error", "{r}");
    assert!(
        r["errors"].to_string().contains("target \\\"missing.test:"),
        "{r}"
    );
    assert_eq!(client::get(gw.addr("web"), "/").await.status, 200);
    // A reload that switches the upstream to discovery applies with a first lookup.
    dns.set_hosts(&(hosts("one.test", &[71]) + &hosts("many.test", &[71, 72])));
    gw.write_config(&config(
        &dns,
        &format!("[upstreams.u]\ndiscover = {{ dns = \"many.test\", port = {port} }}"),
        routes,
    ));
    let r = reload(&gw).await;
    assert_eq!(r["outcome"], "success", "{r}");
    assert_eq!(target_ids(&gw, "u").await.len(), 2);
    for _ in 0..10 {
        assert_eq!(client::get(gw.addr("web"), "/").await.status, 200);
    }
    assert!(o[1].requests.load(Ordering::SeqCst) > 0);
}
