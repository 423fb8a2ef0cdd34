//! The user's manual stays true to the code: every key the config parser accepts is in
//! `docs/configuration.md`, and every whole-config TOML example in `docs/` and the README
//! passes `gateway check` (SPEC §8.6).

use crate::harness::{gateway_cmd, repo_root};

/// The TOML key names of every field of the parser's serde structs (`config/file.rs`), with
/// `#[serde(rename = "...")]` applied.
fn parser_keys() -> Vec<String> {
    let src = std::fs::read_to_string(repo_root().join("gateway/src/config/file.rs")).unwrap();
    let mut keys = Vec::new();
    let mut rename: Option<String> = None;
    let mut in_struct = false;
    for line in src.lines() {
        let t = line.trim();
        if t.starts_with("pub struct ") && t.ends_with('{') {
            in_struct = true;
            continue;
        }
        if in_struct && t == "}" {
            in_struct = false;
            continue;
        }
        if !in_struct {
            continue;
        }
        if let Some(r) = t.strip_prefix("#[serde(rename = \"") {
            rename = r.split('"').next().map(str::to_string);
            continue;
        }
        if let Some(field) = t.strip_prefix("pub ") {
            if let Some((name, _)) = field.split_once(':') {
                keys.push(rename.take().unwrap_or_else(|| name.trim().to_string()));
            }
        }
    }
    keys.sort();
    keys.dedup();
    keys
}

#[test]
fn every_key_the_parser_accepts_is_documented() {
    let keys = parser_keys();
    assert!(
        keys.len() > 60,
        "parsed too few keys from file.rs: {keys:?}"
    );
    for k in [
        "encoded_slashes",
        "max_idle_per_target",
        "case_sensitive",
        "match",
    ] {
        assert!(
            keys.contains(&k.to_string()),
            "{k} not found among {keys:?}"
        );
    }
    let doc = std::fs::read_to_string(repo_root().join("docs/configuration.md")).unwrap();
    let missing: Vec<&String> = keys
        .iter()
        .filter(|k| !doc.contains(&format!("`{k}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "keys the parser accepts but docs/configuration.md does not describe: {missing:?}"
    );
}

/// ```toml blocks of a markdown file.
fn toml_blocks(md: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut current: Option<(usize, String)> = None;
    for (i, line) in md.lines().enumerate() {
        match &mut current {
            None if line.trim_start().starts_with("```toml") => {
                current = Some((i + 1, String::new()))
            }
            Some(_) if line.trim_start().starts_with("```") => {
                out.extend(current.take());
            }
            Some((_, text)) => {
                text.push_str(line);
                text.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn every_whole_config_example_in_the_docs_passes_check() {
    let root = repo_root();
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(root.join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "md"))
        .collect();
    files.push(root.join("README.md"));
    let dir = tempfile::tempdir().unwrap();
    let mut checked = 0;
    for file in files {
        let md = std::fs::read_to_string(&file).unwrap();
        for (line, block) in toml_blocks(&md) {
            let whole = block.lines().any(|l| {
                let l = l.trim();
                l == "[[listeners]]" || l == "[[routes]]"
            });
            if !whole {
                continue;
            }
            let path = dir.path().join(format!("example-{checked}.toml"));
            std::fs::write(&path, &block).unwrap();
            let (code, out, err) =
                gateway_cmd(&["check", "-c", path.to_str().unwrap()], dir.path());
            assert_eq!(
                code,
                0,
                "{}:{line}: the example does not pass `gateway check`:\n{out}{err}",
                file.display()
            );
            checked += 1;
        }
    }
    assert!(checked >= 2, "only {checked} whole-config examples found");
}
