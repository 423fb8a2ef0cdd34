//! Every file in deploy/ checked by the real checker for its kind: systemd-analyze for the
//! units, a Kubernetes schema validation (kubernetes-validate, strict) for the manifests,
//! `gateway check` for every config they carry, keepalived's own config test for the VRRP
//! pair. (Prometheus files: promtool, in observability.rs.)

use std::process::Command;

use crate::harness::{gateway_cmd, repo_root, require_python_module, require_tool, GATEWAY_BIN};

fn run(cmd: &mut Command) -> (i32, String) {
    use std::os::unix::process::ExitStatusExt;
    let out = cmd.output().unwrap();
    (
        // Killed by a signal: 128 + its number, as a shell reports it.
        out.status
            .code()
            .or_else(|| out.status.signal().map(|s| 128 + s))
            .unwrap_or(-1),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn systemd_units_verify() {
    require_tool("systemd-analyze", "systemd");
    let dir = tempfile::tempdir().unwrap();
    for (src, name) in [
        ("deploy/systemd/gateway.service", "gateway.service"),
        ("deploy/fleet/gateway@.service", "gateway@1.service"),
    ] {
        // The unit as installed: the binary where the unit expects it is this build's.
        let text = std::fs::read_to_string(repo_root().join(src))
            .unwrap()
            .replace("/usr/local/bin/gateway", GATEWAY_BIN);
        let unit = dir.path().join(name);
        std::fs::write(&unit, text).unwrap();
        let (code, out) = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
        let problems: Vec<&str> = out
            .lines()
            .filter(|l| !l.contains("EnvironmentFile") && !l.trim().is_empty())
            .collect();
        assert!(
            code == 0 && problems.is_empty(),
            "{src}: exit {code}\n{out}"
        );
    }
}

#[test]
fn kubernetes_manifests_pass_a_strict_schema_check() {
    require_python_module("kubernetes_validate", "kubernetes-validate");
    let (code, out) = run(Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--quiet"])
        .arg(repo_root().join("deploy/kubernetes/gateway.yaml")));
    assert_eq!(code, 0, "{out}");
    // The ServiceMonitor is a CRD the schema set does not have: its shape is checked here.
    let check = r#"
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
assert d["apiVersion"] == "monitoring.coreos.com/v1" and d["kind"] == "ServiceMonitor", d
ep = d["spec"]["endpoints"][0]
assert ep["port"] == "admin" and ep["path"] == "/metrics", ep
assert d["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] == "admin"
"#;
    let (code, out) = run(Command::new("python3")
        .args(["-c", check])
        .arg(repo_root().join("deploy/kubernetes/servicemonitor.yaml")));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_configmap_config_passes_gateway_check() {
    let yaml = std::fs::read_to_string(repo_root().join("deploy/kubernetes/gateway.yaml")).unwrap();
    let mut toml = String::new();
    let mut inside = false;
    for line in yaml.lines() {
        if line.trim_start().starts_with("gateway.toml: |") {
            inside = true;
            continue;
        }
        if inside {
            if line.starts_with("    ") || line.is_empty() {
                toml.push_str(line.strip_prefix("    ").unwrap_or(""));
                toml.push('\n');
            } else {
                break;
            }
        }
    }
    assert!(toml.contains("[[routes]]"), "{toml}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("gateway.toml"), toml).unwrap();
    let out = Command::new(GATEWAY_BIN)
        .args(["check", "-c", "gateway.toml"])
        .current_dir(dir.path())
        .env("GATEWAY_NODE_ID", "7")
        .env("GATEWAY_ADMIN_TOKEN", "a-token")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(!stderr.contains("warning"), "{stderr}");
    let (code, _, err) = gateway_cmd(&["check", "-c", "deploy/fleet/gateway.toml"], &repo_root());
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = gateway_cmd(
        &["check", "-c", "deploy/tracing/gateway-tracing.toml"],
        &repo_root(),
    );
    assert_eq!(code, 0, "{err}");
    // The collector config is YAML with a traces pipeline from the OTLP HTTP receiver.
    let (code, out) = run(Command::new("python3")
        .args([
            "-c",
            "import sys, yaml; d = yaml.safe_load(open(sys.argv[1])); p = d['service']['pipelines']['traces']; assert 'otlp' in p['receivers'] and d['receivers']['otlp']['protocols']['http']['endpoint'].endswith(':4318'), d",
        ])
        .arg(repo_root().join("deploy/tracing/otel-collector.yaml")));
    assert_eq!(code, 0, "{out}");
}

#[test]
fn the_keepalived_pair_passes_keepalived_config_test() {
    require_tool("keepalived", "keepalived");
    for f in ["keepalived-primary.conf", "keepalived-standby.conf"] {
        let path = repo_root().join("deploy/keepalived").join(f);
        // keepalived's config test ends by signalling itself (exit 143) when the file is
        // good; a bad file exits non-zero with its complaints. Run it in its own session.
        let (code, out) = run(Command::new("setsid")
            .args(["keepalived", "-t", "-f"])
            .arg(&path));
        assert!(
            (code == 0 || code == 143) && out.trim().is_empty(),
            "{f}: exit {code}: {out}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.conf");
    std::fs::write(&bad, "vrrp_instance x {\n  priority abc\n}\n").unwrap();
    let (code, out) = run(Command::new("setsid")
        .args(["keepalived", "-t", "-f"])
        .arg(&bad));
    assert!(
        code != 0 && code != 143 && out.contains("invalid"),
        "the checker must object: {code} {out}"
    );
}
