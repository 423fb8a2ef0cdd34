//! `[access_log]` (SPEC §8.1): JSON lines with exactly the configured fields (parsed by
//! serde_json), nginx's combined format (parsed by GoAccess and by the regex of nginx's
//! documented format), a file reopened on SIGUSR1, and no credential ever written.

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::client::{self, request, send};
use crate::harness::{recording_origin, require_tool, Gateway};

fn config(upstream: SocketAddr, access_log: &str) -> String {
    format!(
        r#"
[admin]
listen = "127.0.0.1:0"

[[listeners]]
name = "web"
listen = "127.0.0.1:0"

[access_log]
{access_log}

[upstreams.app]
targets = [{{ addr = "{upstream}" }}]

[[routes]]
name = "api"
match = {{ path_prefix = "/api" }}
upstream = "app"
"#
    )
}

/// The file's lines once it has `n` (at most 5 s).
fn lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

const SECRETS: [&str; 3] = ["s3cret-bearer", "s3cret-query", "s3cret-cookie"];

async fn traffic(web: SocketAddr) {
    let r = send(
        web,
        request(
            "GET",
            "/api/users?token=s3cret-query",
            &[
                ("authorization", "Bearer s3cret-bearer"),
                ("cookie", "session=s3cret-cookie"),
                ("user-agent", "Mozilla/5.0 (X11; \"quoted\")"),
                ("referer", "https://app.example.com/page"),
            ],
            Bytes::new(),
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(client::get(web, "/nowhere").await.status, 404);
    let r = send(
        web,
        request("POST", "/api/items", &[], Bytes::from_static(b"{}")),
    )
    .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_have_exactly_the_configured_fields() {
    let (up, _seen) = recording_origin(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.json");
    let gw = Gateway::start(&config(
        up,
        &format!(
            "format = \"json\"\nfields = [\"time\", \"request_id\", \"trace_id\", \"method\", \"host\", \"path\", \"status\", \"route\", \"upstream\", \"target\", \"upstream_ms\", \"user_agent\", \"referer\", \"error\", \"protocol\", \"listener\", \"client_ip\", \"bytes_sent\", \"duration_ms\"]\npath = \"{}\"",
            path.display()
        ),
    ));
    traffic(gw.addr("web")).await;
    let lines = lines(&path, 3);
    assert_eq!(lines.len(), 3, "{lines:?}");
    let text = lines.join("\n");
    for s in SECRETS {
        assert!(
            !text.contains(s),
            "a credential reached the access log: {text}"
        );
    }
    let parsed: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    for v in &parsed {
        assert_eq!(v.as_object().unwrap().len(), 19, "{v}");
    }
    let ok = &parsed[0];
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["path"], "/api/users", "never the query");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["route"], "api");
    assert_eq!(ok["upstream"], "app");
    assert_eq!(ok["target"], up.to_string());
    assert!(ok["upstream_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(ok["host"], "test.local");
    assert_eq!(ok["referer"], "https://app.example.com/page");
    assert_eq!(ok["user_agent"], "Mozilla/5.0 (X11; \"quoted\")");
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["listener"], "web");
    assert_eq!(ok["client_ip"], "127.0.0.1");
    assert_eq!(ok["trace_id"].as_str().unwrap().len(), 32);
    assert!(ok["error"].is_null());
    assert!(ok["time"].as_str().unwrap().ends_with('Z'));
    let missing = &parsed[1];
    assert_eq!(missing["status"], 404);
    assert_eq!(missing["route"], "none");
    assert!(missing["upstream"].is_null() && missing["target"].is_null());
    assert_eq!(missing["error"], "no_route");

    // jq agrees.
    require_tool("jq", "jq");
    let out = Command::new("jq")
        .args(["-r", ".status"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200\n404\n200\n");
}

/// nginx's documented combined format, then ` key=value` pairs.
const COMBINED: &str = r#"^(\S+) - (\S+) \[(\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4})\] "(\S+) (\S+) (\S+)" (\d{3}) (\d+) "([^"]*)" "([^"]*)"((?: [a-z_]+=\S+)*)$"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn combined_lines_parse_with_goaccess_and_the_file_reopens_on_sigusr1() {
    let (up, _seen) = recording_origin(|_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let gw = Gateway::start(&config(
        up,
        &format!(
            "format = \"combined\"\nfields = [\"client_ip\", \"time\", \"method\", \"path\", \"status\", \"bytes_sent\", \"referer\", \"user_agent\", \"request_id\", \"route\", \"upstream_ms\", \"error\"]\npath = \"{}\"",
            path.display()
        ),
    ));
    let web = gw.addr("web");
    traffic(web).await;
    let got = lines(&path, 3);
    assert_eq!(got.len(), 3, "{got:?}");
    let text = got.join("\n");
    for s in SECRETS {
        assert!(
            !text.contains(s),
            "a credential reached the access log: {text}"
        );
    }
    let re = regex::Regex::new(COMBINED).unwrap();
    for l in &got {
        let c = re
            .captures(l)
            .unwrap_or_else(|| panic!("not combined: {l}"));
        let extra = c.get(11).unwrap().as_str();
        let keys: Vec<&str> = extra
            .split_whitespace()
            .map(|kv| kv.split('=').next().unwrap())
            .collect();
        assert_eq!(keys, ["request_id", "route", "upstream_ms", "error"], "{l}");
    }
    let first = re.captures(&got[0]).unwrap();
    assert_eq!(&first[1], "127.0.0.1");
    assert_eq!(&first[4], "GET");
    assert_eq!(&first[5], "/api/users");
    assert_eq!(&first[6], "HTTP/1.1");
    assert_eq!(&first[7], "200");
    assert_eq!(&first[9], "https://app.example.com/page");
    assert_eq!(&first[10], "Mozilla/5.0 (X11; \\x22quoted\\x22)");
    assert!(
        got[1].contains("\"GET /nowhere HTTP/1.1\" 404 ")
            && got[1].contains(" route=none upstream_ms=- error=no_route"),
        "{}",
        got[1]
    );

    // GoAccess reads the file as COMBINED: every line valid.
    require_tool("goaccess", "goaccess");
    let report = dir.path().join("report.json");
    let out = Command::new("goaccess")
        .arg(&path)
        .args(["--log-format=COMBINED", "--no-global-config", "-o"])
        .arg(&report)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["general"]["total_requests"], 3, "{}", r["general"]);
    assert_eq!(r["general"]["valid_requests"], 3);
    assert_eq!(r["general"]["failed_requests"], 0);

    // logrotate: the file is moved, SIGUSR1, and new lines go to a new file at the path.
    let rotated = dir.path().join("access.log.1");
    std::fs::rename(&path, &rotated).unwrap();
    let ok = Command::new("kill")
        .args(["-USR1", &gw.pid().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    assert!(gw
        .lines
        .wait_for(Duration::from_secs(5), |l| l.contains("SIGUSR1"))
        .is_some());
    assert_eq!(client::get(web, "/api/after-rotation").await.status, 200);
    let fresh = lines(&path, 1);
    assert_eq!(fresh.len(), 1, "{fresh:?}");
    assert!(fresh[0].contains("/api/after-rotation"));
    assert_eq!(
        lines(&rotated, 3).len(),
        3,
        "the rotated file keeps its lines"
    );
}

#[test]
fn check_refuses_unknown_fields_and_formats() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("g.toml");
    std::fs::write(
        &p,
        "[[listeners]]\nname = \"w\"\nlisten = \"127.0.0.1:0\"\n\n[access_log]\nformat = \"apache\"\nfields = [\"status\", \"cookie\", \"status\"]\npath = \"/nonexistent-dir/x.log\"\n\n[tracing]\notlp_endpoint = \"udp://x\"\nsample_ratio = 1.5\n\n[upstreams.u]\ntargets = [{ addr = \"127.0.0.1:1\" }]\n\n[[routes]]\nname = \"r\"\nupstream = \"u\"\n",
    )
    .unwrap();
    let (code, _, err) =
        crate::harness::gateway_cmd(&["check", "-c", p.to_str().unwrap()], dir.path());
    assert_eq!(code, 1);
    for want in [
        "g.toml:6:10: format must be \"json\" or \"combined\", not \"apache\"",
        "g.toml:7:21: unknown access-log field \"cookie\" (allowed: time, request_id,",
        "g.toml:7:31: field \"status\" is listed twice",
        "g.toml:8:8: the directory of access-log path",
        "g.toml:11:17: otlp_endpoint \"udp://x\" is not an http:// or https:// URL",
        "g.toml:12:16: sample_ratio must be within 0.0..=1.0, not 1.5",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}
