//! `GET /admin/explain`: where would this request go, and why? The same route table, key
//! extraction and balancer the request path uses, on a request described by query parameters:
//! `method`, `host`, `path`, `ip`, `header.NAME`, `query.NAME`, `cookie.NAME`, `jwt.CLAIM`.
//! Nothing is sent anywhere and no balancer state moves.

use std::net::IpAddr;

use http::{HeaderName, HeaderValue, Method, Request};
use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use serde_json::{json, Value};

use crate::balance::{key, PickCtx};
use crate::runtime::Runtime;

/// The explanation for the request the query string describes, or a message for a 400.
pub fn explain(rt: &Runtime, query: Option<&str>) -> Result<Value, String> {
    let mut method = Method::GET;
    let mut host: Option<String> = None;
    let mut path = "/".to_string();
    let mut ip: Option<IpAddr> = None;
    let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
    let mut query_pairs: Vec<String> = Vec::new();
    let mut cookies: Vec<String> = Vec::new();
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = percent_decode_str(k).decode_utf8_lossy().into_owned();
        // Percent-decoding only: '+' stays '+', as in the `query.NAME` keys the gateway
        // reads (base64 keys keep their '+').
        let v = percent_decode_str(v).decode_utf8_lossy().into_owned();
        match k.as_str() {
            "method" => {
                method =
                    Method::from_bytes(v.as_bytes()).map_err(|_| format!("bad method {v:?}"))?
            }
            "host" => host = Some(v),
            "path" => path = v,
            "ip" => ip = Some(v.parse().map_err(|_| format!("bad ip {v:?}"))?),
            _ => {
                if let Some(name) = k.strip_prefix("header.") {
                    let n = HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                        .map_err(|_| format!("bad header name {name:?}"))?;
                    let v = HeaderValue::from_str(&v)
                        .map_err(|_| format!("bad value for header {name:?}"))?;
                    headers.push((n, v));
                } else if let Some(name) = k.strip_prefix("query.") {
                    query_pairs.push(format!(
                        "{}={}",
                        utf8_percent_encode(name, NON_ALPHANUMERIC),
                        utf8_percent_encode(&v, NON_ALPHANUMERIC)
                    ));
                } else if let Some(name) = k.strip_prefix("cookie.") {
                    cookies.push(format!("{name}={v}"));
                } else if k.starts_with("jwt.") {
                    // Claims become keys when JWT auth lands; nothing can hash on them yet.
                } else {
                    return Err(format!("unknown parameter {k:?}"));
                }
            }
        }
    }
    if !path.starts_with('/') {
        return Err(format!("path {path:?} must start with /"));
    }
    let path = crate::path::normalise(&path, rt.config.limits.encoded_slashes)
        .map_err(|e| format!("path {path:?}: {}", e.reason()))?
        .into_owned();
    let uri = if query_pairs.is_empty() {
        path
    } else {
        format!("{path}?{}", query_pairs.join("&"))
    };
    let mut b = Request::builder().method(method).uri(&uri);
    if let Some(h) = &host {
        b = b.header(http::header::HOST, h);
    }
    for (n, v) in headers {
        b = b.header(n, v);
    }
    if !cookies.is_empty() {
        b = b.header(http::header::COOKIE, cookies.join("; "));
    }
    let parts = b
        .body(())
        .map_err(|e| format!("bad request: {e}"))?
        .into_parts()
        .0;

    let mut out = json!({
        "route": null, "policies": null, "upstream": null, "balancer": null, "hash_on": null,
        "key": null, "hash": null, "slot": null, "ring_point": null, "target": null,
        "serving": null, "fallbacks": null, "reason": null, "order": null,
    });
    let match_path = crate::path::match_path(parts.uri.path());
    let Some(i) = rt.router.table().find(&parts, &match_path) else {
        out["reason"] = json!("no route matches: the request would get 404");
        return Ok(out);
    };
    let route = &rt.config.routes[i];
    out["route"] = json!(route.name);
    out["path"] = json!(parts.uri.path());
    out["policies"] = json!({
        "jwt": route.policies.jwt, "api_key": route.policies.api_key,
        "integrity": route.policies.integrity, "rate_limit": route.policies.rate_limit,
        "strip_prefix": route.strip_prefix,
        "cors": route.cors, "forward_auth": route.forward_auth,
        "client_cert": route.client_cert_required.then_some("required"),
        "compress": route.compress,
    });
    // The route's policies in the order they run (SPEC §8.4).
    let mut order: Vec<String> = vec!["request_id".into()];
    if !route.allow_ips.is_empty() || !route.deny_ips.is_empty() {
        order.push("ip_lists".into());
    }
    let named = |kind: &str, name: &Option<String>| name.as_ref().map(|n| format!("{kind}:{n}"));
    order.extend(named("cors", &route.cors));
    order.push("body_limit".into());
    order.extend(named("forward_auth", &route.forward_auth));
    order.extend(named("jwt", &route.policies.jwt));
    order.extend(named("api_key", &route.policies.api_key));
    if route.client_cert_required {
        order.push("client_cert".into());
    }
    order.extend(named("integrity", &route.policies.integrity));
    order.extend(named("rate_limit", &route.policies.rate_limit));
    if route.request_headers.is_some() {
        order.push("request_headers".into());
    }
    order.push("balance".into());
    order.push("upstream".into());
    if route.response_headers.is_some() {
        order.push("response_headers".into());
    }
    if route.compress {
        order.push("compress".into());
    }
    out["order"] = json!(order);
    let Some(up) = rt.upstream(&route.upstream) else {
        return Ok(out);
    };
    out["upstream"] = json!(up.name);
    out["balancer"] = json!(up.config.balancer.as_str());
    if up.config.discover.is_some() {
        out["discovery"] = json!(crate::discovery::status_json(&up.name));
    }
    let built = up.balancer.load();
    let hash = match &up.config.hash_on {
        None => None,
        Some(spec) => {
            out["hash_on"] = json!(spec.to_string());
            match key::extract(spec, &parts, ip, parts.uri.path()) {
                Some(k) => {
                    out["key"] = json!(String::from_utf8_lossy(&k));
                    Some(built.algo.hash_key(&k))
                }
                None => {
                    out["reason"] = json!(match up.config.on_missing_key {
                        crate::config::OnMissingKey::Reject => format!("the request has no {spec}: it would get 400"),
                        crate::config::OnMissingKey::Random => format!("the request has no {spec}: a random target (on_missing_key = \"random\")"),
                    });
                    return Ok(out);
                }
            }
        }
    };
    if !built.algo.is_keyed() {
        out["reason"] = json!(format!(
            "{} picks per request, not per key: any up target",
            up.config.balancer.as_str()
        ));
        return Ok(out);
    }
    let Some(hash) = hash else { return Ok(out) };
    out["hash"] = json!(hash);
    let loc = built.algo.locate(hash);
    out["slot"] = json!(loc.slot);
    out["ring_point"] = json!(loc.ring_point);
    // The balancer's order of choices for this key, over the shards that are up: one walk in
    // which every target is refused, so the balancer asks each in its order of preference.
    let mut order: Vec<usize> = Vec::new();
    let ctx = PickCtx::hashed(Some(hash));
    let _ = built.algo.pick(&ctx, &mut |t| {
        if !order.contains(&t) && up.shards[t].is_up() {
            order.push(t);
        }
        false
    });
    match order.first() {
        Some(&t) => {
            let shard = &up.shards[t];
            out["target"] = json!(shard.id);
            out["serving"] = json!(shard.serving().map(
                |e| json!({"id": e.id, "addr": e.addr().to_string(), "backup": e.backup_of.is_some()})
            ));
            out["fallbacks"] = json!(order[1..]
                .iter()
                .map(|&f| up.shards[f].id.as_str())
                .collect::<Vec<_>>());
            out["reason"] = json!(reason(
                up.config.balancer,
                &loc,
                shard.serving().is_some_and(|e| e.backup_of.is_some())
            ));
        }
        None => {
            out["reason"] = json!("no target for this key is up: the request would get 503");
        }
    }
    Ok(out)
}

fn reason(
    kind: crate::config::BalancerKind,
    loc: &crate::balance::Location,
    backup: bool,
) -> String {
    use crate::config::BalancerKind::*;
    let base = match kind {
        Hash => "XXH3-64 of the key modulo the number of targets (next up target in order if down)"
            .to_string(),
        ConsistentHash => match loc.ring_point {
            Some(p) => format!("ketama: first ring point ≥ MD5(key) is {p}"),
            None => "ketama".to_string(),
        },
        Maglev => "maglev: table[XXH3-64(key) mod M]".to_string(),
        Slots => match loc.slot {
            Some(s) => format!("slot {s} = CRC16(key) mod 16384 ({{hashtag}} honoured)"),
            None => "slots".to_string(),
        },
        _ => String::new(),
    };
    if backup {
        format!("{base}; its primary is down, a backup serves the shard")
    } else {
        base
    }
}
