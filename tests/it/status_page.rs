//! The status page on the admin port, in a real headless Chromium driven over the Chrome
//! DevTools Protocol; and its JSON (`/admin/status`, `/admin/events`) against the config.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::{SinkExt, StreamExt};
use http::StatusCode;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{get, request, send};
use crate::harness::{backend, require_tool, Gateway};

/// Headless Chromium with a DevTools websocket; killed on drop.
pub(crate) struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: tokio_tungstenite::WebSocketStream<
        tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>,
    >,
    next_id: u64,
    session: String,
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Browser {
    pub(crate) async fn start() -> Browser {
        require_tool("chromium", "chromium");
        let profile = tempfile::tempdir().unwrap();
        let mut child = Command::new("chromium")
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1400,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start chromium");
        // "DevTools listening on ws://127.0.0.1:PORT/devtools/browser/ID"
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if !sent {
                    if let Some(url) = line.split_whitespace().find(|w| w.starts_with("ws://")) {
                        let _ = tx.send(url.to_string());
                        sent = true;
                    }
                }
            }
        });
        let url = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("chromium printed no DevTools address");
        let (ws, _) = tokio_tungstenite::connect_async(url.as_str())
            .await
            .expect("connect to DevTools");
        let mut b = Browser {
            child,
            _profile: profile,
            ws,
            next_id: 0,
            session: String::new(),
        };
        let target = b
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let target_id = target["targetId"].as_str().unwrap().to_string();
        let attached = b
            .call(
                "Target.attachToTarget",
                json!({"targetId": target_id, "flatten": true}),
            )
            .await;
        b.session = attached["sessionId"].as_str().unwrap().to_string();
        b.call("Page.enable", json!({})).await;
        b.call("Runtime.enable", json!({})).await;
        b
    }

    /// One DevTools command; its result (events in between are skipped).
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        self.ws
            .send(Message::Text(msg.to_string().into()))
            .await
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let frame = tokio::time::timeout(left, self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("DevTools closed")
                .unwrap();
            let Message::Text(t) = frame else { continue };
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            if v["id"].as_u64() == Some(id) {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluate `js` in the page; its value.
    pub(crate) async fn eval(&mut self, js: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": js, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        assert!(
            r.get("exceptionDetails").is_none(),
            "{js}: {}",
            r["exceptionDetails"]
        );
        r["result"]["value"].clone()
    }

    /// Wait until `js` is true in the page.
    async fn wait_for(&mut self, js: &str, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            if self.eval(js).await == json!(true) {
                return;
            }
            if Instant::now() > deadline {
                let body = self.eval("document.body.innerText").await;
                panic!("{what}: not within {timeout:?}; the page shows:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub(crate) async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(10),
            "page load",
        )
        .await;
    }

    async fn screenshot(&mut self, name: &str) -> PathBuf {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        let dir = crate::harness::repo_root().join("target/test-artifacts");
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, png).unwrap();
        path
    }
}

fn config(
    users: &[SocketAddr],
    backup: SocketAddr,
    orders: SocketAddr,
    admin_extra: &str,
) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
{admin_extra}

[[listeners]]
name = "public"
listen = "127.0.0.1:0"

[rate_limits.per_ip]
key = "ip"
rate = 1000
per = "1s"
burst = 1000

[upstreams.users]
balancer = "consistent_hash"
hash_on = "header.x-user"
on_missing_key = "random"
targets = [{{ addr = "{u0}", id = "users-0", backups = ["{backup}"] }}, {{ addr = "{u1}", id = "users-1" }}]
health = {{ path = "/health", interval = "150ms", timeout = "100ms", healthy_threshold = 1, unhealthy_threshold = 1 }}

[upstreams.orders]
targets = [{{ addr = "{orders}", id = "orders-0" }}]

[[routes]]
name = "users-api"
match = {{ path_prefix = "/users" }}
upstream = "users"
rate_limit = "per_ip"

[[routes]]
name = "orders-api"
match = {{ path_prefix = "/orders" }}
upstream = "orders"
"#,
        u0 = users[0],
        u1 = users[1],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_routes_targets_a_target_going_down_and_a_reload() {
    let (u0, u1, bk, orders) = (
        backend("users-0").await,
        backend("users-1").await,
        backend("users-0-backup").await,
        backend("orders-0").await,
    );
    let cfg = config(&[u0.addr, u1.addr], bk.addr, orders.addr, "");
    let gw = Gateway::start(&cfg);
    let public = gw.addr("public");
    for i in 0..40 {
        let r = send(
            public,
            request(
                "GET",
                "/users/1",
                &[("x-user", &i.to_string())],
                Default::default(),
            ),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(get(public, "/orders/7").await.status, StatusCode::OK);

    // Light traffic while the page is open, so its rates and sparklines have something.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut i = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) && i < 3000 {
                i += 1;
                let path = if i.is_multiple_of(4) {
                    "/orders/1"
                } else {
                    "/users/1"
                };
                let user = (i % 97).to_string();
                send(
                    public,
                    request("GET", path, &[("x-user", &user)], Default::default()),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    let mut b = Browser::start().await;
    b.navigate(&format!("http://{}/", gw.admin())).await;
    // Routes and every target and backup from the config appear, up.
    b.wait_for(
        "!!document.querySelector('[data-route=\"users-api\"]') && !!document.querySelector('[data-route=\"orders-api\"]')",
        Duration::from_secs(10),
        "both routes listed",
    )
    .await;
    for t in ["users/users-0", "users/users-1", "orders/orders-0"] {
        b.wait_for(
            &format!("document.querySelector('[data-target=\"{t}\"]')?.dataset.state === 'up'"),
            Duration::from_secs(10),
            &format!("{t} shown up"),
        )
        .await;
    }
    let backup_id = bk.addr.to_string();
    let backup = b
        .eval(&format!(
            "document.querySelector('[data-target=\"users/{backup_id}\"]')?.innerText ?? ''"
        ))
        .await;
    assert!(
        backup.as_str().unwrap().contains("backup"),
        "the backup is shown after its primary: {backup}"
    );
    let header = b.eval("document.querySelector('header').innerText").await;
    let header = header.as_str().unwrap().to_string();
    assert!(header.contains(env!("CARGO_PKG_VERSION")), "{header}");
    assert!(header.contains("gateway.toml"), "{header}");
    // Traffic is there: a request rate and the route's policies.
    let users_row = b
        .eval("document.querySelector('[data-route=\"users-api\"]').innerText")
        .await;
    assert!(
        users_row.as_str().unwrap().contains("rate_limit:per_ip"),
        "{users_row}"
    );

    // users-1 fails its health checks: within a few seconds its box says DOWN, in text.
    u1.state.set_healthy(false);
    let t0 = Instant::now();
    b.wait_for(
        "document.querySelector('[data-target=\"users/users-1\"]')?.dataset.state === 'down'",
        Duration::from_secs(5),
        "users-1 shown down",
    )
    .await;
    let took = t0.elapsed();
    let box_text = b
        .eval("document.querySelector('[data-target=\"users/users-1\"]').innerText")
        .await;
    assert!(box_text.as_str().unwrap().contains("DOWN"), "{box_text}");
    assert!(
        box_text.as_str().unwrap().contains("failed health checks"),
        "the page says why: {box_text}"
    );
    b.wait_for(
        "[...document.querySelectorAll('#events li[data-kind=\"health\"]')].some(li => li.innerText.includes('users-1'))",
        Duration::from_secs(10),
        "the health flip in the events",
    )
    .await;
    eprintln!("status page showed users-1 down {took:?} after it started failing");

    // A reload that adds a route: the event and the new row show up.
    let reloaded = cfg.replace(
        "[[routes]]\nname = \"orders-api\"",
        "[[routes]]\nname = \"health-api\"\nmatch = { path = \"/healthz\" }\nupstream = \"orders\"\n\n[[routes]]\nname = \"orders-api\"",
    );
    assert_ne!(reloaded, cfg);
    gw.write_config(&reloaded);
    let r = send(
        gw.admin(),
        request("POST", "/admin/reload", &[], Default::default()),
    )
    .await;
    assert_eq!(
        r.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&r.body)
    );
    b.wait_for(
        "[...document.querySelectorAll('#events li[data-kind=\"reload\"]')].some(li => li.innerText.includes('health-api'))",
        Duration::from_secs(10),
        "the reload and its diff in the events",
    )
    .await;
    b.wait_for(
        "!!document.querySelector('[data-route=\"health-api\"]')",
        Duration::from_secs(10),
        "the new route listed",
    )
    .await;
    b.wait_for(
        "Number(document.querySelector('[data-route=\"users-api\"] td:nth-child(2)').innerText) > 0",
        Duration::from_secs(10),
        "a request rate on users-api",
    )
    .await;
    let shot = b.screenshot("status-page.png").await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = traffic.await;
    eprintln!("screenshot: {}", shot.display());

    // Phone-sized: nothing wider than the screen but the tables' own scroll boxes.
    b.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let overflow = b
        .eval("document.documentElement.scrollWidth - window.innerWidth")
        .await;
    assert!(
        overflow.as_f64().unwrap() <= 1.0,
        "the page is wider than a phone: {overflow} px"
    );
    b.screenshot("status-page-phone.png").await;

    // The page fetched nothing but its own two endpoints.
    let foreign = b
        .eval("performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin))")
        .await;
    assert_eq!(foreign, json!([]), "the page fetched from elsewhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_an_admin_token_the_page_asks_for_it_and_the_json_needs_it() {
    let (u0, u1, bk, orders) = (
        backend("users-0").await,
        backend("users-1").await,
        backend("bk").await,
        backend("orders-0").await,
    );
    let cfg = config(
        &[u0.addr, u1.addr],
        bk.addr,
        orders.addr,
        "token_env = \"STATUS_TEST_TOKEN\"",
    );
    let gw = Gateway::start_with_env(&cfg, &[("STATUS_TEST_TOKEN", "s3cret-token")]);
    for path in ["/admin/status", "/admin/events"] {
        assert_eq!(
            get(gw.admin(), path).await.status,
            StatusCode::UNAUTHORIZED,
            "{path} without the token"
        );
    }
    let ok = send(
        gw.admin(),
        request(
            "GET",
            "/admin/status",
            &[("authorization", "Bearer s3cret-token")],
            Default::default(),
        ),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    assert!(
        !String::from_utf8_lossy(&ok.body).contains("s3cret"),
        "the token never shows"
    );

    let mut b = Browser::start().await;
    b.navigate(&format!("http://{}/", gw.admin())).await;
    b.wait_for(
        "getComputedStyle(document.querySelector('#login')).display !== 'none'",
        Duration::from_secs(10),
        "the page asks for the token",
    )
    .await;
    let routes_shown = b
        .eval("document.querySelectorAll('[data-route]').length")
        .await;
    assert_eq!(routes_shown, json!(0), "nothing shown without the token");
    b.eval("document.querySelector('#token').value = 's3cret-token'; document.querySelector('#login').requestSubmit(); true")
        .await;
    b.wait_for(
        "!!document.querySelector('[data-route=\"users-api\"]')",
        Duration::from_secs(10),
        "the page with the token",
    )
    .await;
    let kept = b
        .eval("sessionStorage.getItem('gateway-admin-token') === 's3cret-token'")
        .await;
    assert_eq!(kept, json!(true), "kept for the session");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_json_matches_the_config_and_counts_traffic() {
    let (u0, u1, bk, orders) = (
        backend("users-0").await,
        backend("users-1").await,
        backend("bk").await,
        backend("orders-0").await,
    );
    orders.state.set_faults(Some(1.0), None);
    let cfg = config(&[u0.addr, u1.addr], bk.addr, orders.addr, "");
    let gw = Gateway::start(&cfg);
    let admin = gw.admin();
    // First reading, then traffic, then a second reading: rates over the gap.
    assert_eq!(get(admin, "/admin/status").await.status, StatusCode::OK);
    let public = gw.addr("public");
    for i in 0..50 {
        send(
            public,
            request(
                "GET",
                "/users/x",
                &[("x-user", &i.to_string())],
                Default::default(),
            ),
        )
        .await;
    }
    for _ in 0..10 {
        assert_eq!(
            get(public, "/orders/1").await.status,
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let s = get(admin, "/admin/status").await.json();
    assert_eq!(s["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(s["generation"], 1);
    assert!(s["config"].as_str().unwrap().ends_with("gateway.toml"));
    let listeners = s["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1);
    assert_eq!(listeners[0]["name"], "public");
    assert_eq!(listeners[0]["listen"], public.to_string());
    assert!(
        listeners[0]["new_connections_per_s"]["h1"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(listeners[0]["bytes_out_per_s"].as_f64().unwrap() > 0.0);

    let routes = s["routes"].as_array().unwrap();
    let names: Vec<&str> = routes.iter().map(|r| r["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["users-api", "orders-api"], "config order");
    let users = &routes[0];
    assert_eq!(users["upstream"], "users");
    assert_eq!(users["policies"], json!(["rate_limit:per_ip"]));
    assert_eq!(users["requests_total"], 50);
    assert!(users["requests_per_s"].as_f64().unwrap() > 0.0);
    assert!(users["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(users["p99_ms"].as_f64().unwrap() >= users["p50_ms"].as_f64().unwrap());
    assert_eq!(users["share_5xx_pct"], 0.0);
    let orders_route = &routes[1];
    assert_eq!(orders_route["share_5xx_pct"], 100.0, "{orders_route}");
    assert_eq!(orders_route["errors_5xx_total"], 10);

    let ups = s["upstreams"].as_array().unwrap();
    assert_eq!(ups.len(), 2);
    let by_name = |n: &str| ups.iter().find(|u| u["name"] == n).unwrap().clone();
    let users_up = by_name("users");
    assert_eq!(users_up["balancer"], "consistent_hash");
    let shards = users_up["shards"].as_array().unwrap();
    assert_eq!(shards.len(), 2);
    assert_eq!(shards[0]["primary"]["id"], "users-0");
    assert_eq!(shards[0]["primary"]["role"], "primary");
    assert_eq!(shards[0]["backups"][0]["id"], bk.addr.to_string());
    assert_eq!(shards[0]["backups"][0]["role"], "backup");
    assert_eq!(shards[1]["primary"]["id"], "users-1");
    let share: f64 = shards
        .iter()
        .map(|s| s["primary"]["traffic_share_pct"].as_f64().unwrap())
        .sum();
    assert!((share - 100.0).abs() < 0.5, "shares add up: {share}");
    for sh in shards {
        let p = &sh["primary"];
        assert_eq!(p["state"], "up");
        assert_eq!(p["circuit"], "closed");
        assert!(p["last_probe"]["ok"].as_bool().unwrap(), "{p}");
    }
    let orders_target = &by_name("orders")["shards"][0]["primary"];
    assert!(orders_target["failures_per_s"].as_f64().unwrap() > 0.0);

    // Events: a reload refused, then one applied; since=ID gives only what is newer.
    let before = get(admin, "/admin/events").await.json()["last_id"]
        .as_u64()
        .unwrap();
    gw.write_config("this is not toml [");
    let r = send(
        admin,
        request("POST", "/admin/reload", &[], Default::default()),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    gw.write_config(&cfg.replace("rate = 1000", "rate = 2000"));
    let r = send(
        admin,
        request("POST", "/admin/reload", &[], Default::default()),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let ev = get(admin, &format!("/admin/events?since={before}"))
        .await
        .json();
    let kinds: Vec<&str> = ev["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["reload_error", "reload"], "{ev}");
    let applied = &ev["events"][1];
    assert!(
        applied["detail"]
            .as_str()
            .unwrap()
            .contains("rate_limits per_ip changed"),
        "{applied}"
    );
    assert!(applied["time"].as_str().unwrap().ends_with('Z'));
    let last = ev["last_id"].as_u64().unwrap();
    let none = get(admin, &format!("/admin/events?since={last}"))
        .await
        .json();
    assert_eq!(none["events"], json!([]));
    assert_eq!(get(admin, "/admin/status").await.json()["generation"], 2);
}
