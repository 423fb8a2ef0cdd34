//! The tasks behind `discover`: one per discovering upstream, looking again when the TTL ends
//! (after a failed or empty lookup, after `min_refresh`). A changed target set is applied like a
//! small reload: the running config is built again with the new set (`Runtime::build` with
//! `rediscovery`), off the request path and under the reload lock. Targets that stay keep
//! their endpoints (health, circuit, outlier, in-flight counts and pooled connections), new
//! ones start up (probed when health checks are on), and removed ones take no new requests
//! while the requests that hold the previous generation finish on them. Each change is a
//! `discovery` event with the targets added and removed and, for keyed balancers, the share
//! of keys that moved (`balance::remap`, as `gateway diff` reports it).

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Shared;
use crate::config::Discover;
use crate::discovery;
use crate::runtime::Runtime;

/// Give every discovering upstream of the running config its task (once).
pub fn reconcile(shared: &Arc<Shared>) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let config = shared.runtime.load().config.clone();
    for u in &config.upstreams {
        let Some(spec) = u.discover.clone() else {
            continue;
        };
        let weak = Arc::downgrade(shared);
        let name = u.name.clone();
        discovery::adopt(&u.name, || rt.spawn(watch(weak, name, spec)).abort_handle());
    }
}

async fn watch(shared: Weak<Shared>, upstream: String, spec: Discover) {
    loop {
        let wait = discovery::next_lookup_in(&upstream).unwrap_or(Duration::from_secs(1));
        tokio::time::sleep(wait).await;
        if discovery::spec(&upstream).as_ref() != Some(&spec) {
            return;
        }
        let Some(resolver) = discovery::resolver() else {
            return;
        };
        let (answer, hosts) = resolver.discover(&spec).await;
        let min = resolver.min_refresh();
        if discovery::record(&upstream, &spec, answer, hosts, min) {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            apply(&shared, &upstream, &spec).await;
        } else if shared.strong_count() == 0 {
            return;
        }
    }
}

/// Build the running config again with the discovered set now in `discovery`, and swap it in.
async fn apply(shared: &Arc<Shared>, upstream: &str, spec: &Discover) {
    let _one_at_a_time = shared.reload_lock.lock().await;
    let current = shared.runtime.load_full();
    let Some(old) = current.upstream(upstream).cloned() else {
        return;
    };
    if old.config.discover.as_ref() != Some(spec) {
        return;
    }
    let found = discovery::found();
    let runtime = match Runtime::build(
        current.config.clone(),
        &shared.metrics,
        &shared.ids,
        current.generation,
        Some(&current),
        &found,
        true,
    ) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            tracing::error!(upstream, error = %e, "discovery: could not apply the new targets; the running ones stay");
            return;
        }
    };
    let Some(new) = runtime.upstream(upstream).cloned() else {
        return;
    };
    if new.config.targets == old.config.targets {
        return;
    }
    let ids = |u: &crate::config::Upstream| -> Vec<String> {
        u.targets.iter().map(|t| t.id.clone()).collect()
    };
    let (before, after) = (ids(&old.config), ids(&new.config));
    let added: Vec<&String> = after.iter().filter(|t| !before.contains(t)).collect();
    let removed: Vec<&String> = before.iter().filter(|t| !after.contains(t)).collect();
    let moves = crate::balance::remap::moves(&old.config, &new.config);
    shared.runtime.store(runtime.clone());
    shared.metrics.prune(&runtime.config, &runtime.target_ids());
    let list = |v: &[&String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        }
    };
    let mut detail = format!(
        "{} {}: {} target(s); added {}; removed {}",
        spec.kind(),
        spec.name(),
        after.len(),
        list(&added),
        list(&removed)
    );
    if let Some(m) = &moves {
        detail.push_str(&format!("; {} (moved={:.4})", m.summary(), m.moved));
    }
    tracing::info!(upstream, added = ?added, removed = ?removed, targets = after.len(),
        key_moves = moves.as_ref().map(|m| m.moved), "discovery: targets changed");
    crate::events::push(
        crate::events::Kind::Discovery,
        if after.is_empty() { "bad" } else { "info" },
        format!("upstream/{upstream}"),
        detail,
    );
}
