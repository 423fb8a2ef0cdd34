//! What changes between two configs, semantically: listeners, routes, upstreams and policy
//! tables added, removed or changed, and for every keyed upstream in both, the exact share of
//! keys that would move to another target (`balance/remap.rs`). Printed by `gateway diff` and
//! returned by `POST /admin/reload?dry_run=true`.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::{json, Value};

use super::Config;
use crate::balance::remap::{self, Moves};

#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// `listener`, `route`, `upstream`, `jwt`, `api_keys`, `integrity`, `rate_limits`,
    /// `redis`, `limits`, `server`, `admin`.
    pub kind: &'static str,
    pub name: String,
    /// `added`, `removed`, `changed`.
    pub what: &'static str,
}

#[derive(Debug, Clone, Default)]
pub struct ConfigDiff {
    pub changes: Vec<Change>,
    /// Keyed upstreams in both configs whose keys would move.
    pub key_moves: Vec<(String, Moves)>,
    /// Changes a reload cannot apply (they need a restart).
    pub needs_restart: Vec<String>,
}

/// Compare two named collections of config values (equal values, and the same bytes in the
/// files they name: see `CertSource`'s and `JwtSource`'s `PartialEq`).
fn compare<'a, T: PartialEq + 'a>(
    kind: &'static str,
    old: impl IntoIterator<Item = (&'a str, &'a T)>,
    new: impl IntoIterator<Item = (&'a str, &'a T)>,
    out: &mut Vec<Change>,
) {
    compare_by(kind, old, new, PartialEq::eq, out);
}

/// Compare two named collections with `eq`.
fn compare_by<'a, T: 'a>(
    kind: &'static str,
    old: impl IntoIterator<Item = (&'a str, &'a T)>,
    new: impl IntoIterator<Item = (&'a str, &'a T)>,
    eq: fn(&T, &T) -> bool,
    out: &mut Vec<Change>,
) {
    let old: BTreeMap<&str, &T> = old.into_iter().collect();
    let new: BTreeMap<&str, &T> = new.into_iter().collect();
    for (name, o) in &old {
        match new.get(name) {
            None => out.push(Change {
                kind,
                name: (*name).to_string(),
                what: "removed",
            }),
            Some(n) if !eq(o, n) => out.push(Change {
                kind,
                name: (*name).to_string(),
                what: "changed",
            }),
            Some(_) => {}
        }
    }
    for name in new.keys() {
        if !old.contains_key(name) {
            out.push(Change {
                kind,
                name: (*name).to_string(),
                what: "added",
            });
        }
    }
}

pub fn diff(old: &Config, new: &Config) -> ConfigDiff {
    let mut d = ConfigDiff::default();
    let c = &mut d.changes;
    compare(
        "listener",
        old.listeners.iter().map(|l| (l.name.as_str(), l)),
        new.listeners.iter().map(|l| (l.name.as_str(), l)),
        c,
    );
    compare(
        "route",
        old.routes.iter().map(|r| (r.name.as_str(), r)),
        new.routes.iter().map(|r| (r.name.as_str(), r)),
        c,
    );
    let order = |cfg: &Config| {
        cfg.routes
            .iter()
            .map(|r| r.name.clone())
            .collect::<Vec<_>>()
    };
    if order(old) != order(new) && c.iter().all(|ch| ch.kind != "route") {
        c.push(Change {
            kind: "route",
            name: "(order)".into(),
            what: "changed",
        });
    }
    compare(
        "upstream",
        old.upstreams.iter().map(|u| (u.name.as_str(), u)),
        new.upstreams.iter().map(|u| (u.name.as_str(), u)),
        c,
    );
    compare_by(
        "jwt",
        old.jwt.iter().map(|(k, v)| (k.as_str(), v)),
        new.jwt.iter().map(|(k, v)| (k.as_str(), v)),
        PartialEq::eq,
        c,
    );
    compare_by(
        "api_keys",
        old.api_keys.iter().map(|(k, v)| (k.as_str(), v)),
        new.api_keys.iter().map(|(k, v)| (k.as_str(), v)),
        PartialEq::eq,
        c,
    );
    compare_by(
        "integrity",
        old.integrity.iter().map(|(k, v)| (k.as_str(), v)),
        new.integrity.iter().map(|(k, v)| (k.as_str(), v)),
        PartialEq::eq,
        c,
    );
    compare_by(
        "rate_limits",
        old.rate_limits.iter().map(|(k, v)| (k.as_str(), v)),
        new.rate_limits.iter().map(|(k, v)| (k.as_str(), v)),
        PartialEq::eq,
        c,
    );
    match (&old.redis, &new.redis) {
        (None, Some(_)) => c.push(Change {
            kind: "redis",
            name: "redis".into(),
            what: "added",
        }),
        (Some(_), None) => c.push(Change {
            kind: "redis",
            name: "redis".into(),
            what: "removed",
        }),
        (Some(a), Some(b)) if a != b => c.push(Change {
            kind: "redis",
            name: "redis".into(),
            what: "changed",
        }),
        _ => {}
    }
    if old.limits != new.limits {
        c.push(Change {
            kind: "limits",
            name: "limits".into(),
            what: "changed",
        });
    }
    if old.discovery != new.discovery {
        c.push(Change {
            kind: "discovery",
            name: "discovery".into(),
            what: "changed",
        });
    }
    if old.server != new.server {
        c.push(Change {
            kind: "server",
            name: "server".into(),
            what: "changed",
        });
    }
    if old.server.node_id != new.server.node_id {
        d.needs_restart.push("server.node_id (request ids)".into());
    }
    if old.server.worker_threads != new.server.worker_threads {
        d.needs_restart.push("server.worker_threads".into());
    }
    let admin = |cfg: &Config| cfg.admin.as_ref().map(|a| a.listen);
    if admin(old) != admin(new) {
        d.needs_restart.push("admin.listen".into());
    }
    for n in &new.upstreams {
        if let Some(o) = old.upstreams.iter().find(|o| o.name == n.name) {
            if let Some(m) = remap::moves(o, n) {
                if m.moved > 0.0 {
                    d.key_moves.push((n.name.clone(), m));
                }
            }
        }
    }
    d
}

impl ConfigDiff {
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty() && self.key_moves.is_empty() && self.needs_restart.is_empty()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "changes": self.changes.iter().map(|c| json!({"kind": c.kind, "name": c.name, "change": c.what})).collect::<Vec<_>>(),
            "key_moves": self.key_moves.iter().map(|(u, m)| json!({
                "upstream": u,
                "moved": m.moved,
                "exact": m.exact,
                "from": m.from.iter().map(|(t, s)| json!({"target": t, "share": s})).collect::<Vec<_>>(),
                "to": m.to.iter().map(|(t, s)| json!({"target": t, "share": s})).collect::<Vec<_>>(),
                "summary": format!("{u}: {}", m.summary()),
            })).collect::<Vec<_>>(),
            "needs_restart": self.needs_restart,
        })
    }

    /// Lines for a terminal.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if self.is_empty() {
            out.push_str("no changes\n");
            return out;
        }
        for c in &self.changes {
            let sign = match c.what {
                "added" => '+',
                "removed" => '-',
                _ => '~',
            };
            let _ = writeln!(out, "{sign} {} {} {}", c.kind, c.name, c.what);
        }
        for (u, m) in &self.key_moves {
            let _ = writeln!(out, "keys: {u}: {}", m.summary());
        }
        for r in &self.needs_restart {
            let _ = writeln!(out, "needs a restart (a reload keeps the old value): {r}");
        }
        out
    }
}
