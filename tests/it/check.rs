//! `gateway check`: a summary and exit 0, or every error as FILE:LINE:COL and exit 1.

use crate::harness::{gateway_cmd, repo_root};

fn check(config: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(&path, config).unwrap();
    let (code, out, err) = gateway_cmd(&["check", "-c", path.to_str().unwrap()], dir.path());
    // Messages name the file as given; make them stable for assertions.
    let p = path.to_str().unwrap();
    (code, out.replace(p, "g.toml"), err.replace(p, "g.toml"))
}

#[test]
fn the_demo_config_passes_on_a_fresh_clone() {
    let (code, out, err) = gateway_cmd(&["check", "-c", "config/demo.toml"], &repo_root());
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.starts_with("config/demo.toml: ok: 2 listeners, 4 routes, 4 upstreams"),
        "{out}"
    );
}

#[test]
fn every_example_config_passes() {
    let dir = repo_root().join("config");
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let rel = path
                .strip_prefix(repo_root())
                .unwrap()
                .to_str()
                .unwrap()
                .to_string();
            let (code, out, err) = gateway_cmd(&["check", "-c", &rel], &repo_root());
            assert_eq!(code, 0, "{rel}: {out}{err}");
        }
    }
}

#[test]
fn reports_every_semantic_error_with_line_and_column() {
    let config = r#"[[listeners]]
name = "http"
listen = "127.0.0.1:99999"

[upstreams.users]
connect_timeout = "1 fortnight"
targets = [
  { addr = "127.0.0.1:9001", id = "u0" },
  { addr = "127.0.0.1:9002", id = "u0" },
]

[[routes]]
name = "users"
upstream = "user"
timeout = "5"

[[routes]]
name = "users"
upstream = "users"
match = { path_regex = "([a-z" }
"#;
    let (code, _out, err) = check(config);
    assert_eq!(code, 1, "{err}");
    let expect = [
        "g.toml:3:10: listen \"127.0.0.1:99999\" is not an IP:PORT address",
        "g.toml:6:19: duration \"1 fortnight\"",
        "g.toml:9:35: target id \"u0\" is used twice in upstream \"users\"",
        "g.toml:14:12: route \"users\": upstream \"user\" is not defined (defined: users)",
        "g.toml:15:11: duration \"5\" has no unit",
        "g.toml:18:8: route name \"users\" is used twice",
        "g.toml:20:24: path_regex: unclosed character class",
    ];
    for e in expect {
        assert!(err.contains(e), "missing {e:?} in:\n{err}");
    }
    assert!(err.contains("7 errors"), "{err}");
}

#[test]
fn reports_the_first_syntax_or_schema_error_with_its_place() {
    let (code, _, err) =
        check("[[listeners]]\nname = \"http\"\nlisten = \"127.0.0.1:80\"\nlisten_backlog = 5\n");
    assert_eq!(code, 1);
    assert!(
        err.starts_with("g.toml:4:1: unknown field `listen_backlog`"),
        "{err}"
    );
    let (code, _, err) = check("[server]\nnode_id = \n");
    assert_eq!(code, 1);
    assert!(err.starts_with("g.toml:2:"), "{err}");
    let (code, _, err) = check("[upstreams.u]\nbalancer = \"fastest\"\ntargets = []\n");
    assert_eq!(code, 1);
    assert!(
        err.starts_with("g.toml:2:12: unknown variant `fastest`"),
        "{err}"
    );
}

#[test]
fn refuses_an_unknown_key_instead_of_ignoring_it() {
    let config = r#"[[listeners]]
name = "http"
listen = "127.0.0.1:8080"

[upstreams.u]
targets = [{ addr = "127.0.0.1:9001" }]

[[routes]]
name = "r"
upstream = "u"
idle_timeot = "0s"
"#;
    let (code, _, err) = check(config);
    assert_eq!(code, 1);
    assert!(
        err.contains("g.toml:11:1") && err.contains("unknown field `idle_timeot`"),
        "{err}"
    );
}

#[test]
fn rate_limit_tables_are_checked() {
    let config = r#"[[listeners]]
name = "http"
listen = "127.0.0.1:8080"

[upstreams.u]
targets = [{ addr = "127.0.0.1:9001" }]

[rate_limits.a]
key = "cookie.session"
rate = 0
per = "1s"
burst = 5

[rate_limits.b]
key = "ip"
rate = 10
per = "1s"
burst = 5
store = "redis"

[[routes]]
name = "r"
upstream = "u"
rate_limit = "c"
"#;
    let (code, _, err) = check(config);
    assert_eq!(code, 1);
    for want in [
        "g.toml:9:7: a rate limit key is ip, header.NAME, jwt.CLAIM, query.NAME or route",
        "g.toml:10:8: rate",
        "g.toml:19:9: store = \"redis\" needs a [redis] table",
        "g.toml:24:14:",
    ] {
        assert!(err.contains(want), "no {want:?} in {err}");
    }
}

#[test]
fn the_fleet_example_passes() {
    let (code, out, err) = gateway_cmd(&["check", "-c", "deploy/fleet/gateway.toml"], &repo_root());
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ok: 1 listener, 2 routes"), "{out}");
}

#[test]
fn resilience_tables_parse_with_their_defaults_and_ranges() {
    let config = r#"[[listeners]]
name = "http"
listen = "127.0.0.1:8080"

[upstreams.u]
targets = [{ addr = "127.0.0.1:9001" }]
health = { path = "health" }
outlier = { base_ejection = "60s", max_ejection = "10s" }
circuit_breaker = { error_ratio = 1.5 }
max_in_flight = 0

[[routes]]
name = "r"
upstream = "u"
retry = { attempts = 2, budget = 2.0, on = ["reset", "5xx", "599", "flaky"] }
fallback = { status = 700 }
"#;
    let (code, _, err) = check(config);
    assert_eq!(code, 1);
    for e in [
        "g.toml:7:19: health path \"health\" must start with /",
        "g.toml:8:51: max_ejection must be at least base_ejection",
        "g.toml:9:35: error_ratio must be within (0, 1]",
        "g.toml:10:17: max_in_flight must be within 1..=10000000",
        "g.toml:15:34: budget must be within 0..=1",
        "g.toml:15:68: retry on \"flaky\"",
        "g.toml:16:23: fallback status must be within 100..=599",
    ] {
        assert!(err.contains(e), "missing {e:?} in:\n{err}");
    }
    let ok = config
        .replace("path = \"health\"", "path = \"/health\"")
        .replace("max_ejection = \"10s\"", "max_ejection = \"600s\"")
        .replace("error_ratio = 1.5", "error_ratio = 0.5")
        .replace("max_in_flight = 0", "max_in_flight = 100")
        .replace("budget = 2.0", "budget = 0.2")
        .replace(", \"flaky\"", "")
        .replace("status = 700", "status = 503");
    let (code, out, err) = check(&ok);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ok"));
}

#[test]
fn checks_slot_ranges_and_files_the_config_names() {
    let config = r#"[[listeners]]
name = "https"
listen = "127.0.0.1:8443"
tls = { certs = [{ cert = "missing.pem", key = "missing.key" }] }

[upstreams.u]
balancer = "slots"
hash_on = "header.x-user-id"
targets = [
  { addr = "127.0.0.1:9001", slots = ["0-9000"] },
  { addr = "127.0.0.1:9002", slots = ["8000-16000"] },
]

[[routes]]
name = "r"
upstream = "u"
"#;
    let (code, _, err) = check(config);
    assert_eq!(code, 1);
    assert!(
        err.contains("g.toml:4:27: certificate file \"missing.pem\""),
        "{err}"
    );
    assert!(err.contains("slots 8000-16000 overlap slot 9000"), "{err}");
    assert!(
        err.contains("slots 16001-16383 are owned by no target"),
        "{err}"
    );
}

#[test]
fn an_unset_env_variable_warns_in_check_and_fails_run() {
    let config = r#"[server]
node_id_env = "GATEWAY_TEST_UNSET_NODE_ID"

[[listeners]]
name = "http"
listen = "127.0.0.1:0"

[upstreams.u]
targets = [{ addr = "127.0.0.1:9001" }]

[[routes]]
name = "r"
upstream = "u"
"#;
    let (code, out, err) = check(config);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("g.toml:2:15: warning: environment variable GATEWAY_TEST_UNSET_NODE_ID"),
        "{err}"
    );
    assert!(out.contains("ok"));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.toml");
    std::fs::write(&path, config).unwrap();
    let (code, _, err) = gateway_cmd(&["run", "-c", path.to_str().unwrap()], dir.path());
    assert_eq!(code, 1);
    assert!(
        err.contains("environment variable GATEWAY_TEST_UNSET_NODE_ID"),
        "{err}"
    );
}

#[test]
fn gateway_dash_c_alone_means_run_and_version_prints() {
    let (code, out, _) = gateway_cmd(&["--version"], &repo_root());
    assert_eq!(code, 0);
    assert!(out.starts_with("gateway "), "{out}");
    let (code, _, err) = gateway_cmd(&["-c", "/nonexistent/gateway.toml"], &repo_root());
    assert_eq!(code, 1);
    assert!(
        err.contains("/nonexistent/gateway.toml: cannot read config"),
        "{err}"
    );
}

#[test]
fn discovery_keys_are_checked_with_their_place() {
    let config = r#"[[listeners]]
name = "http"
listen = "127.0.0.1:8080"

[discovery]
resolvers = ["not-an-address"]
min_refresh = "5s"
max_refresh = "1s"

[upstreams.both]
targets = [{ addr = "127.0.0.1:9001" }]
discover = { dns = "svc.test", port = 80 }

[upstreams.noport]
discover = { dns = "svc.test" }

[upstreams.badname]
discover = { dns_srv = "_http._tcp.bad..name" }

[upstreams.slots]
balancer = "slots"
hash_on = "header.k"
discover = { dns = "svc.test", port = 80 }

[upstreams.none]
balancer = "round_robin"

[upstreams.hosts]
targets = [{ addr = "api.test:8080" }, { addr = "API.test.:8080" }, { addr = "api.test:0" }]

[[routes]]
name = "r"
upstream = "both"
"#;
    let (code, _, err) = check(config);
    assert_eq!(code, 1, "{err}");
    for want in [
        "g.toml:6:14: resolver \"not-an-address\" is not an IP:PORT address",
        "g.toml:8:15: max_refresh must be at least min_refresh",
        "g.toml:12:12: upstream \"both\": set targets or discover, not both",
        "g.toml:15:12: discover = { dns = ... } needs port = PORT",
        "g.toml:18:24: \"_http._tcp.bad..name\" is not a DNS name",
        "g.toml:23:12: discover cannot be used with balancer = \"slots\"",
        "upstream \"none\" has no targets: set targets = [...] or discover",
        "g.toml:29:49: \"API.test.:8080\" is used twice in upstream \"hosts\"",
        "g.toml:29:78: target addr \"api.test:0\" is not IP:PORT or HOST:PORT",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}
