//! The admin listener: metrics from start-up, config and upstream views, the token.

use bytes::Bytes;
use http::StatusCode;

use crate::client::{get, request, send};
use crate::harness::{backend, Gateway};

const FAMILIES: [&str; 26] = [
    "gateway_requests_total",
    "gateway_request_duration_seconds",
    "gateway_upstream_requests_total",
    "gateway_upstream_duration_seconds",
    "gateway_upstream_up",
    "gateway_upstream_in_flight",
    "gateway_circuit_state",
    "gateway_outlier_ejections_total",
    "gateway_concurrency_rejected_total",
    "gateway_retries_total",
    "gateway_retry_budget_exhausted_total",
    "gateway_rate_limited_total",
    "gateway_rate_limit_store_errors_total",
    "gateway_rate_limit_store_fallback",
    "gateway_auth_failures_total",
    "gateway_integrity_failures_total",
    "gateway_jwks_refresh_total",
    "gateway_jwks_keys",
    "gateway_connections_active",
    "gateway_connections_total",
    "gateway_bytes_received_total",
    "gateway_bytes_sent_total",
    "gateway_tls_handshakes_total",
    "gateway_tls_cert_expiry_timestamp_seconds",
    "gateway_config_reloads_total",
    "gateway_build_info",
];

fn sharded_config(
    primary: std::net::SocketAddr,
    replica: std::net::SocketAddr,
    admin_extra: &str,
) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"
{admin_extra}

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[[listeners]]
name = "https"
listen = "127.0.0.1:0"
tls = {{ self_signed = true }}

[upstreams.users]
targets = [{{ addr = "{primary}", id = "users-0", backups = ["{replica}"] }}]

[[routes]]
name = "users"
match = {{ path_prefix = "/" }}
upstream = "users"
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_family_is_exposed_from_start_up() {
    let p = backend("p").await;
    let r = backend("r").await;
    let gw = Gateway::start(&sharded_config(p.addr, r.addr, ""));
    let text = gw.metrics_text().await;
    for family in FAMILIES {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing"
        );
    }
    for target in ["users-0", &r.addr.to_string()] {
        for outcome in ["ok", "error", "timeout", "connect_error", "reset"] {
            let series = format!("gateway_upstream_requests_total{{outcome=\"{outcome}\",target=\"{target}\",upstream=\"users\"}} 0");
            assert!(text.contains(&series), "{series} missing");
        }
        assert!(text.contains(&format!(
            "gateway_upstream_up{{target=\"{target}\",upstream=\"users\"}} 1"
        )));
    }
    assert!(text.contains("gateway_tls_handshakes_total{listener=\"https\",outcome=\"error\"} 0"));
    assert!(text.contains(
        "gateway_tls_cert_expiry_timestamp_seconds{cert=\"self-signed\",listener=\"https\"}"
    ));
    assert!(text.contains("gateway_build_info{version=\""));

    // After traffic, the request families count it with bounded labels.
    send(gw.addr("http"), request("BREW", "/", &[], Bytes::new())).await;
    get(gw.addr("http"), "/").await;
    let text = gw.metrics_text().await;
    assert!(
        text.contains("gateway_requests_total{method=\"GET\",route=\"users\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("gateway_requests_total{method=\"OTHER\",route=\"users\",status=\"200\"} 1")
    );
    assert!(text.contains("gateway_request_duration_seconds_bucket{route=\"users\",le=\"0.0005\"}"));
    assert!(text.contains(
        "gateway_upstream_requests_total{outcome=\"ok\",target=\"users-0\",upstream=\"users\"} 2"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_config_and_upstreams_are_served() {
    let p = backend("p").await;
    let r = backend("r").await;
    let gw = Gateway::start(&sharded_config(p.addr, r.addr, ""));
    let admin = gw.admin();
    assert_eq!(get(admin, "/healthz").await.status, StatusCode::OK);
    assert_eq!(get(admin, "/readyz").await.status, StatusCode::OK);
    let config = get(admin, "/admin/config").await.json();
    assert_eq!(config["generation"], 1);
    assert_eq!(
        config["config"]["upstreams"]["users"]["targets"][0]["id"],
        "users-0"
    );
    let ups = get(admin, "/admin/upstreams").await.json();
    let t = &ups["upstreams"][0]["targets"][0];
    assert_eq!(ups["upstreams"][0]["name"], "users");
    assert_eq!(t["id"], "users-0");
    assert_eq!(t["up"], true);
    assert_eq!(t["serving"], "users-0");
    assert_eq!(t["circuit"], "closed");
    assert_eq!(t["backups"][0]["id"], r.addr.to_string());
    assert_eq!(t["backups"][0]["up"], true);
    assert_eq!(get(admin, "/nope").await.status, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_paths_need_the_token_when_one_is_set() {
    let p = backend("p").await;
    let r = backend("r").await;
    let gw = Gateway::start_with_env(
        &sharded_config(p.addr, r.addr, "token_env = \"GW_TEST_ADMIN_TOKEN\""),
        &[("GW_TEST_ADMIN_TOKEN", "s3cret-token")],
    );
    let admin = gw.admin();
    assert_eq!(
        get(admin, "/admin/upstreams").await.status,
        StatusCode::UNAUTHORIZED
    );
    let wrong = send(
        admin,
        request(
            "GET",
            "/admin/upstreams",
            &[("authorization", "Bearer nope")],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    let right = send(
        admin,
        request(
            "GET",
            "/admin/config",
            &[("authorization", "Bearer s3cret-token")],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(right.status, StatusCode::OK);
    assert!(
        !String::from_utf8_lossy(&right.body).contains("s3cret-token"),
        "the token leaked"
    );
    // Metrics and probes stay open for scrapers and kubelets.
    assert_eq!(get(admin, "/metrics").await.status, StatusCode::OK);
    assert_eq!(get(admin, "/readyz").await.status, StatusCode::OK);
}
