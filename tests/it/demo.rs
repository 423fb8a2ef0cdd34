//! `gateway demo` as a new user runs it: the curl lines it prints work.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{repo_root, require_tool, Proc, GATEWAY_BIN};

#[test]
fn the_demo_starts_and_its_printed_curl_lines_work() {
    require_tool("curl", "curl");
    let mut proc = Proc(
        Command::new(GATEWAY_BIN)
            .arg("demo")
            .current_dir(repo_root())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Killed on drop, also when an assertion below fails.
    let child = &mut proc.0;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut banner = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(line) => {
                let done = line.contains("Ctrl-C stops everything");
                banner.push(line);
                if done {
                    break;
                }
            }
            Err(_) => {
                if let Some(status) = child.try_wait().unwrap() {
                    let mut err = String::new();
                    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err)
                        .unwrap();
                    panic!("demo exited early ({status}): {err}\n{}", banner.join("\n"));
                }
            }
        }
    }
    // (command, whether the banner says it shows an error on purpose)
    let curls: Vec<(String, bool)> = banner
        .iter()
        .map(|l| l.trim())
        .filter(|l| l.starts_with("curl "))
        .map(|l| {
            let mut parts = l.splitn(2, "  #");
            let cmd = parts.next().unwrap().trim().to_string();
            let comment = parts.next().unwrap_or("");
            let error_on_purpose = comment.contains("404") || comment.contains("401");
            (cmd, error_on_purpose)
        })
        .collect();
    assert!(
        curls.len() >= 5,
        "the demo printed too few curl lines:\n{}",
        banner.join("\n")
    );
    assert!(curls
        .iter()
        .any(|(c, _)| c.contains("--http2") && c.contains("https://")));
    assert!(
        curls
            .iter()
            .any(|(c, _)| c.contains("authorization: Bearer ")),
        "the demo prints a token"
    );
    for (curl, error_on_purpose) in &curls {
        // -f: fail on HTTP errors, except the lines that show an error on purpose.
        let cmd = if *error_on_purpose {
            curl.clone()
        } else {
            curl.replacen("curl -s", "curl -fs", 1)
        };
        let out = Command::new("sh").arg("-c").arg(&cmd).output().unwrap();
        assert!(
            out.status.success(),
            "{cmd} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let body = String::from_utf8_lossy(&out.stdout);
        assert!(!body.trim().is_empty(), "{cmd} printed nothing");
        if curl.contains("/admin/explain") {
            assert!(body.contains("\"target\": \"users-"), "{cmd}: {body}");
        } else if curl.contains("/api/users") {
            assert!(body.contains("\"served_by\":\"users-"), "{cmd}: {body}");
        } else if curl.contains("/api/inventory") {
            assert!(
                body.contains("\"served_by\":\"inventory-a\""),
                "{cmd}: {body}"
            );
        } else if curl.contains("/api/catalog") {
            assert!(body.contains("\"served_by\":\"catalog-"), "{cmd}: {body}");
        }
        if curl.contains("/nowhere") {
            assert!(
                body.contains("404") && body.contains("request_id"),
                "{cmd}: {body}"
            );
        }
        if *error_on_purpose && curl.contains("/api/orders") {
            assert!(
                body.contains("401") && body.to_lowercase().contains("www-authenticate: bearer"),
                "{cmd}: {body}"
            );
        }
        if curl.contains("authorization: Bearer") {
            assert!(body.contains("\"served_by\":\"orders-"), "{cmd}: {body}");
            assert!(
                body.contains("\"x-auth-user\":\"demo-user-7\""),
                "the sub claim goes upstream: {body}"
            );
        }
    }
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "demo exited with {status}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the demo did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
