//! The shipped Prometheus config, alert rules and Grafana dashboard, against a real
//! `prometheus` scraping a gateway under traffic with failures: every panel query and every
//! alert query (threshold removed) returns series, and injected faults make the upstream-down
//! and 5xx-ratio alerts fire.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use crate::client::{get, request, send, tls_connect, H1};
use crate::harness::{backend, closed_port, repo_root, require_tool, Gateway, Proc};

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

async fn query(prom: SocketAddr, expr: &str) -> Value {
    let res = get(prom, &format!("/api/v1/query?query={}", encode(expr))).await;
    let v = res.json();
    assert_eq!(v["status"], "success", "{expr}: {v}");
    v["data"]["result"].clone()
}

/// The query of an alert without its threshold: `QUERY <op> THRESHOLD` → `QUERY`.
fn without_threshold(expr: &str) -> &str {
    [" == ", " > ", " < ", " >= ", " <= ", " != "]
        .iter()
        .filter_map(|op| expr.rfind(op))
        .max()
        .map_or(expr, |i| expr[..i].trim())
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn config(good: SocketAddr, victim: SocketAddr, broken: SocketAddr) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[[listeners]]
name = "https"
listen = "127.0.0.1:0"
tls = {{ self_signed = true }}

[jwt.partners]
algorithms = ["HS256"]
secret_env = "OBS_JWT_SECRET"

[integrity.digest]
content_digest = "required"
signature = "off"
json = true

[rate_limits.tight]
key = "ip"
rate = 5
per = "1s"
burst = 5

[upstreams.api]
targets = [{{ addr = "{good}", id = "good" }}, {{ addr = "{victim}", id = "victim" }}]
health = {{ interval = "300ms", timeout = "200ms", unhealthy_threshold = 1 }}
circuit_breaker = {{ error_ratio = 0.5, min_requests = 5, window = "10s", open_for = "30s" }}

[upstreams.broken]
targets = [{{ addr = "{broken}", id = "broken" }}]

[[routes]]
name = "broken"
match = {{ path_prefix = "/broken" }}
upstream = "broken"
retry = {{ attempts = 1, on = ["5xx"] }}

[[routes]]
name = "signed"
match = {{ path_prefix = "/signed" }}
upstream = "api"
integrity = "digest"

[[routes]]
name = "limited"
match = {{ path_prefix = "/limited" }}
upstream = "api"
rate_limit = "tight"

[[routes]]
name = "secure"
match = {{ path_prefix = "/secure" }}
upstream = "api"
jwt = "partners"

[[routes]]
name = "api"
match = {{ path_prefix = "/" }}
upstream = "api"
"#
    )
}

async fn traffic(gw: &Gateway, rounds: usize) {
    let http = gw.addr("http");
    let mut conn = H1::connect(http).await;
    for _ in 0..rounds {
        for path in ["/api", "/broken", "/limited", "/secure"] {
            let _ = conn.send(request("GET", path, &[], Bytes::new())).await;
        }
        let _ = conn
            .send(request("POST", "/signed", &[], Bytes::from_static(b"{}")))
            .await;
    }
    let tls = tls_connect(
        gw.addr("https"),
        "localhost",
        &[b"h2"],
        &[&rustls::version::TLS13],
    )
    .await;
    drop(tls);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_panel_and_alert_has_data_in_a_real_prometheus_and_faults_fire_alerts() {
    require_tool("prometheus", "prometheus");
    promtool(&["check", "config", "deploy/prometheus/prometheus.yml"]);
    promtool(&["check", "rules", "deploy/prometheus/alerts.yml"]);

    let good = backend("good").await;
    let victim = backend("victim").await;
    let broken = backend("broken").await;
    broken.state.set_faults(Some(1.0), None);
    let gw = Gateway::start_with_env(
        &config(good.addr, victim.addr, broken.addr),
        &[(
            "OBS_JWT_SECRET",
            "an observability test secret of 32+ bytes",
        )],
    );

    // Prometheus scraping the admin port every second, with the shipped rules made to fire at
    // once (`for:` removed) so the test need not wait minutes.
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(repo_root().join("deploy/prometheus/alerts.yml")).unwrap();
    let rules: String = rules
        .lines()
        .filter(|l| !l.trim_start().starts_with("for:"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(dir.path().join("alerts.yml"), rules).unwrap();
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - alerts.yml\nscrape_configs:\n  - job_name: gateway\n    static_configs:\n      - targets: [\"{}\"]\n",
            gw.admin()
        ),
    )
    .unwrap();
    let prom = closed_port();
    let _prometheus = Proc(
        Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={prom}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(Ok(_)) = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(prom),
        )
        .await
        {
            if send(prom, request("GET", "/-/ready", &[], Bytes::new()))
                .await
                .status
                == http::StatusCode::OK
            {
                break;
            }
        }
        assert!(Instant::now() < deadline, "prometheus did not become ready");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Traffic with failures while Prometheus takes several scrapes.
    for _ in 0..6 {
        traffic(&gw, 20).await;
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    // rate() needs a few samples: wait for five scrapes, traffic still flowing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while query(prom, "count_over_time(up{job=\"gateway\"}[1m]) >= 5")
        .await
        .as_array()
        .unwrap()
        .is_empty()
    {
        assert!(
            Instant::now() < deadline,
            "prometheus never scraped the gateway"
        );
        traffic(&gw, 5).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    // Every panel of the dashboard returns series.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_root().join("deploy/grafana/gateway.json")).unwrap(),
    )
    .unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().into_iter().flatten() {
            exprs.push((
                p["title"].as_str().unwrap().to_string(),
                t["expr"]
                    .as_str()
                    .unwrap()
                    .replace("$__rate_interval", "30s"),
            ));
        }
    }
    assert!(exprs.len() >= 20);
    let mut empty = Vec::new();
    for (title, e) in &exprs {
        if query(prom, e).await.as_array().unwrap().is_empty() {
            empty.push(format!("{title}: {e}"));
        }
    }
    assert!(
        empty.is_empty(),
        "panels without data:\n{}",
        empty.join("\n")
    );

    // Every alert's query (threshold removed) returns series.
    let rules: serde_yaml_like::Rules = serde_yaml_like::parse(
        &std::fs::read_to_string(repo_root().join("deploy/prometheus/alerts.yml")).unwrap(),
    );
    assert!(rules.0.len() >= 9, "{:?}", rules.0);
    let mut empty = Vec::new();
    for (name, expr) in &rules.0 {
        let q = without_threshold(expr);
        if query(prom, q).await.as_array().unwrap().is_empty() {
            empty.push(format!("{name}: {q}"));
        }
    }
    assert!(
        empty.is_empty(),
        "alert queries without data:\n{}",
        empty.join("\n")
    );

    // Faults: a target's probes fail; /broken answers 5xx. Both alerts fire.
    victim.state.set_healthy(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    let want = ["GatewayUpstreamTargetDown", "GatewayRoute5xxRatioHigh"];
    loop {
        traffic(&gw, 5).await;
        let v = get(prom, "/api/v1/alerts").await.json();
        let firing: Vec<String> = v["data"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| a["state"] == "firing")
            .map(|a| a["labels"]["alertname"].as_str().unwrap().to_string())
            .collect();
        if want.iter().all(|w| firing.iter().any(|f| f == w)) {
            let down = v["data"]["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .find(|a| a["labels"]["alertname"] == "GatewayUpstreamTargetDown")
                .unwrap();
            assert_eq!(down["labels"]["target"], "victim");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "alerts firing: {firing:?}, want {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Just enough of the rules file to list (alert, expr): the file is ours and line-based.
mod serde_yaml_like {
    #[derive(Debug)]
    pub struct Rules(pub Vec<(String, String)>);

    pub fn parse(text: &str) -> Rules {
        let mut out = Vec::new();
        let mut name = None;
        for line in text.lines() {
            let t = line.trim();
            if let Some(n) = t.strip_prefix("- alert: ") {
                name = Some(n.to_string());
            } else if let (Some(e), Some(n)) = (t.strip_prefix("expr: "), name.take()) {
                out.push((n, e.to_string()));
            }
        }
        Rules(out)
    }
}
