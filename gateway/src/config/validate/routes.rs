//! `[[routes]]`: match rules, policies named, rewrite, timeouts, retry, fallback.

use std::collections::HashSet;
use std::time::Duration;

use http::{HeaderName, HeaderValue, Method};
use toml::Spanned;

use super::super::file::{self};
use super::super::{
    EncodedSlashes, Fallback, HostMatch, Match, RetryOn, RetryPolicy, Route, RoutePolicies,
    Upstream,
};
use super::*;
use crate::config::HeaderRules;
use std::collections::BTreeMap;

impl Validator<'_> {
    // ===== routes =====

    pub(super) fn routes(
        &mut self,
        f: &file::File,
        upstreams: &[Upstream],
        identity: &[HeaderName],
    ) -> Vec<Route> {
        let mut out = Vec::new();
        let mut names: HashSet<&str> = HashSet::new();
        let known: Vec<&str> = f.upstreams.keys().map(|k| k.get_ref().as_str()).collect();
        if f.routes.is_empty() {
            self.errors.push(Diag {
                span: Some(0..0),
                message: "no [[routes]]: every request would get 404".into(),
            });
        }
        for r in &f.routes {
            let rf = r.get_ref();
            let name = rf.name.get_ref().as_str();
            if !valid_name(name) || name == "none" {
                self.error(rf.name.span(), bad_name_message("route", name));
            }
            if !names.insert(name) {
                self.error(rf.name.span(), format!("route name {name:?} is used twice"));
            }
            let upstream = rf.upstream.get_ref();
            if !upstreams.iter().any(|u| &u.name == upstream) && !known.contains(&upstream.as_str())
            {
                self.error(
                    rf.upstream.span(),
                    format!(
                        "route {name:?}: upstream {upstream:?} is not defined (defined: {})",
                        list_or_none(&known)
                    ),
                );
            }
            self.policy_ref(name, "jwt", &rf.jwt, f.jwt.keys());
            self.policy_ref(name, "api_key", &rf.api_key, f.api_keys.keys());
            self.policy_ref(name, "integrity", &rf.integrity, f.integrity.keys());
            self.policy_ref(name, "rate_limit", &rf.rate_limit, f.rate_limits.keys());
            self.policy_ref(name, "cors", &rf.cors, f.cors.keys());
            self.policy_ref(
                name,
                "forward_auth",
                &rf.forward_auth,
                f.forward_auth.keys(),
            );

            let matcher = rf
                .matcher
                .as_ref()
                .map(|m| self.matcher(m))
                .unwrap_or_default();
            let strip_prefix = rf.strip_prefix.as_ref().map(|s| {
                let p = s.get_ref();
                if !p.starts_with('/') {
                    self.error(s.span(), format!("strip_prefix {p:?} must start with /"));
                }
                let trimmed = p.trim_end_matches('/');
                if let Some(prefix) = &matcher.path_prefix {
                    if !segment_prefix_of(trimmed, prefix) {
                        self.warn(
                            s.span(),
                            format!("strip_prefix {p:?} is not a prefix of path_prefix {prefix:?}: some paths will be forwarded unchanged"),
                        );
                    }
                }
                trimmed.to_string()
            });
            let timeout = self.positive_duration(&rf.timeout, Duration::from_secs(5), "timeout");
            let retry = rf.retry.as_ref().map(|r| self.retry(r));
            let attempts = retry.as_ref().map_or(0, |r| r.attempts);
            let total_timeout = self.positive_duration(
                &rf.total_timeout,
                timeout * (attempts + 1),
                "total_timeout",
            );
            let fallback = rf.fallback.as_ref().map(|f| self.fallback(f));
            let compress = rf.compress.as_ref().is_some_and(|x| *x.get_ref());
            let allow_ips = rf
                .allow_ips
                .as_ref()
                .map(|l| self.cidrs(l.get_ref()))
                .unwrap_or_default();
            let deny_ips = rf
                .deny_ips
                .as_ref()
                .map(|l| self.cidrs(l.get_ref()))
                .unwrap_or_default();
            let websocket = rf.websocket.as_ref().is_some_and(|x| *x.get_ref());
            let idle_timeout = rf
                .idle_timeout
                .as_ref()
                .map(|d| self.duration(&Some(d.clone()), Duration::ZERO));
            let host_rewrite =
                rf.host_rewrite
                    .as_ref()
                    .and_then(|h| match HeaderValue::from_str(h.get_ref()) {
                        Ok(v) if !h.get_ref().is_empty() && !h.get_ref().contains(['/', ' ']) => {
                            Some(v)
                        }
                        _ => {
                            self.error(
                                h.span(),
                                format!("host_rewrite {:?} is not a host[:port]", h.get_ref()),
                            );
                            None
                        }
                    });
            out.push(Route {
                name: name.to_string(),
                matcher,
                upstream: upstream.clone(),
                strip_prefix,
                policies: RoutePolicies {
                    jwt: rf.jwt.as_ref().map(|n| n.get_ref().clone()),
                    api_key: rf.api_key.as_ref().map(|n| n.get_ref().clone()),
                    integrity: rf.integrity.as_ref().map(|n| n.get_ref().clone()),
                    rate_limit: rf.rate_limit.as_ref().map(|n| n.get_ref().clone()),
                },
                timeout,
                total_timeout,
                idle_timeout,
                host_rewrite,
                retry,
                fallback,
                allow_ips,
                deny_ips,
                websocket,
                request_headers: rf
                    .request_headers
                    .as_ref()
                    .map(|h| self.header_rules(h, "request_headers", identity)),
                response_headers: rf
                    .response_headers
                    .as_ref()
                    .map(|h| self.header_rules(h, "response_headers", identity)),
                cors: rf.cors.as_ref().map(|n| n.get_ref().clone()),
                compress,
                forward_auth: rf.forward_auth.as_ref().map(|n| n.get_ref().clone()),
                client_cert_required: match rf
                    .client_cert
                    .as_ref()
                    .map(|c| (c.get_ref().as_str(), c))
                {
                    None | Some(("optional", _)) => false,
                    Some(("required", _)) => true,
                    Some((other, c)) => {
                        self.error(
                            c.span(),
                            format!(
                                "client_cert must be \"required\" (or \"optional\"), not {other:?}"
                            ),
                        );
                        false
                    }
                },
            });
        }
        out
    }

    /// `request_headers` / `response_headers`: names and values must be valid; hop-by-hop
    /// names, `host`, `content-length` and the protected names of SPEC §8.2 are refused.
    pub(super) fn header_rules(
        &mut self,
        h: &Spanned<file::HeaderRulesFile>,
        what: &str,
        identity: &[HeaderName],
    ) -> HeaderRules {
        const HOP_BY_HOP: [&str; 8] = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "proxy-authorization",
        ];
        let hf = h.get_ref();
        let name = |this: &mut Self, n: &Spanned<String>| -> Option<HeaderName> {
            let lower = n.get_ref().to_ascii_lowercase();
            let Ok(hn) = HeaderName::from_bytes(lower.as_bytes()) else {
                this.error(n.span(), format!("{:?} is not a header name", n.get_ref()));
                return None;
            };
            let refused = HOP_BY_HOP.contains(&lower.as_str())
                || lower == "host"
                || lower == "content-length"
                || crate::config::PROTECTED_HEADERS.contains(&lower.as_str())
                || identity.contains(&hn);
            if refused {
                this.error(
                    n.span(),
                    format!("{what} may not name {lower:?} (hop-by-hop, framing, or set only by the gateway)"),
                );
                return None;
            }
            Some(hn)
        };
        let pairs = |this: &mut Self,
                     map: &Option<BTreeMap<file::Name, Spanned<String>>>|
         -> Vec<(HeaderName, HeaderValue)> {
            let mut out = Vec::new();
            for (n, v) in map.iter().flatten() {
                let Some(hn) = name(this, n) else { continue };
                match HeaderValue::from_str(v.get_ref()) {
                    Ok(hv) => out.push((hn, hv)),
                    Err(_) => this.error(v.span(), "not a valid header value"),
                }
            }
            out
        };
        let set = pairs(self, &hf.set);
        let add = pairs(self, &hf.add);
        let mut remove = Vec::new();
        for n in hf.remove.iter().flatten() {
            if let Some(hn) = name(self, n) {
                remove.push(hn);
            }
        }
        HeaderRules { set, add, remove }
    }

    pub(super) fn retry(&mut self, r: &Spanned<file::RetryFile>) -> RetryPolicy {
        let rf = r.get_ref();
        let attempts = self.int_in(&Some(rf.attempts.clone()), 0, 0..=10, "attempts") as u32;
        let budget = match &rf.budget {
            None => 0.2,
            Some(b) if (0.0..=1.0).contains(b.get_ref()) => *b.get_ref(),
            Some(b) => {
                self.error(
                    b.span(),
                    format!(
                        "budget must be within 0..=1 (a share of requests), not {}",
                        b.get_ref()
                    ),
                );
                0.2
            }
        };
        let mut on = RetryOn::default();
        let default_on = ["connect_error", "reset", "timeout", "502", "503", "504"];
        let list: Vec<(String, Option<Range<usize>>)> = match &rf.on {
            Some(list) => list
                .iter()
                .map(|s| (s.get_ref().clone(), Some(s.span())))
                .collect(),
            None => default_on.iter().map(|s| (s.to_string(), None)).collect(),
        };
        for (item, span) in list {
            match item.as_str() {
                "connect_error" => {}
                "reset" => on.reset = true,
                "timeout" => on.timeout = true,
                "5xx" => on.any_5xx = true,
                code => match code.parse::<u16>() {
                    Ok(c) if (100..=599).contains(&c) => on.statuses.push(c),
                    _ => self.error(
                        span.unwrap_or(r.span()),
                        format!("retry on {code:?}: use connect_error, reset, timeout, 5xx or a status code like \"503\""),
                    ),
                },
            }
        }
        RetryPolicy {
            attempts,
            budget,
            on,
        }
    }

    pub(super) fn fallback(&mut self, f: &Spanned<file::FallbackFile>) -> Fallback {
        let ff = f.get_ref();
        let status =
            self.int_in(&Some(ff.status.clone()), 503, 100..=599, "fallback status") as u16;
        let content_type = ff.content_type.as_deref().unwrap_or("application/json");
        let content_type = HeaderValue::from_str(content_type).unwrap_or_else(|_| {
            self.error(
                f.span(),
                "fallback content_type is not a valid header value",
            );
            HeaderValue::from_static("application/json")
        });
        Fallback {
            status: http::StatusCode::from_u16(status)
                .unwrap_or(http::StatusCode::SERVICE_UNAVAILABLE),
            content_type,
            body: bytes::Bytes::from(ff.body.clone().unwrap_or_default()),
        }
    }

    pub(super) fn policy_ref<'k>(
        &mut self,
        route: &str,
        what: &str,
        value: &Option<Spanned<String>>,
        defined: impl Iterator<Item = &'k Spanned<String>>,
    ) {
        let Some(v) = value else { return };
        let names: Vec<&str> = defined.map(|k| k.get_ref().as_str()).collect();
        if !names.contains(&v.get_ref().as_str()) {
            self.error(
                v.span(),
                format!(
                    "route {route:?}: {what} policy {:?} is not defined (defined: {})",
                    v.get_ref(),
                    list_or_none(&names)
                ),
            );
        }
    }

    pub(super) fn matcher(&mut self, m: &Spanned<file::MatchFile>) -> Match {
        let mf = m.get_ref();
        let host = mf.host.as_ref().and_then(|h| {
            let text = h.get_ref().to_ascii_lowercase();
            let bare = text.strip_prefix("*.").unwrap_or(&text);
            if text.is_empty() || text.contains(':') || bare.contains('*') || bare.contains('/') {
                self.error(h.span(), format!("host {:?} must be a host name without port, optionally starting with \"*.\"", h.get_ref()));
                return None;
            }
            Some(match text.strip_prefix('*') {
                Some(suffix) => HostMatch::Suffix(suffix.to_string()),
                None => HostMatch::Exact(text),
            })
        });
        let path_like = |v: &Option<Spanned<String>>, what: &str, this: &mut Self| {
            v.as_ref().map(|p| {
                let text = p.get_ref();
                if !text.starts_with('/') {
                    this.error(p.span(), format!("{what} {text:?} must start with /"));
                } else if !crate::path::is_normal(text) {
                    // Requests are matched on their normalised path (SPEC §8.2): a path
                    // that is not normal itself could never match.
                    let hint = crate::path::normalise(text, EncodedSlashes::Keep)
                        .map(|n| crate::path::match_path(&n).into_owned())
                        .map_or(String::new(), |n| format!(" (write {n:?})"));
                    this.error(
                        p.span(),
                        format!("{what} {text:?} is not a normalised path{hint}"),
                    );
                }
                text.clone()
            })
        };
        let path = path_like(&mf.path, "path", self);
        let path_prefix = path_like(&mf.path_prefix, "path_prefix", self).map(|p| {
            let t = p.trim_end_matches('/');
            if t.is_empty() {
                "/".to_string()
            } else {
                t.to_string()
            }
        });
        let case_insensitive = mf.case_sensitive == Some(false);
        let path_regex = mf.path_regex.as_ref().and_then(|r| {
            match regex::RegexBuilder::new(r.get_ref())
                .case_insensitive(case_insensitive)
                .size_limit(1 << 20)
                .build()
            {
                Ok(re) => Some(re),
                Err(e) => {
                    // regex errors span several lines (a caret diagram); keep the reason.
                    let msg = e.to_string();
                    let reason = msg
                        .lines()
                        .rev()
                        .find(|l| !l.trim().is_empty())
                        .unwrap_or("invalid");
                    let reason = reason.trim().trim_start_matches("error: ");
                    self.error(r.span(), format!("path_regex: {reason}"));
                    None
                }
            }
        });
        let methods = mf.methods.as_ref().map(|list| {
            let mut out = Vec::new();
            if list.is_empty() {
                self.error(m.span(), "methods is empty: the route would match nothing");
            }
            for s in list {
                let text = s.get_ref();
                match Method::from_bytes(text.as_bytes()) {
                    Ok(method) if text.bytes().all(|b| !b.is_ascii_lowercase()) => out.push(method),
                    _ => self.error(
                        s.span(),
                        format!(
                            "{text:?} is not an HTTP method (write it upper-case, e.g. \"GET\")"
                        ),
                    ),
                }
            }
            out
        });
        let mut headers = Vec::new();
        for (name, value) in mf.headers.iter().flatten() {
            let hn = HeaderName::from_bytes(name.get_ref().to_ascii_lowercase().as_bytes());
            let hv = HeaderValue::from_str(value.get_ref());
            match (hn, hv) {
                (Ok(n), Ok(v)) => headers.push((n, v)),
                (Err(_), _) => self.error(
                    name.span(),
                    format!("{:?} is not a header name", name.get_ref()),
                ),
                (_, Err(_)) => self.error(value.span(), "not a valid header value"),
            }
        }
        Match {
            host,
            path,
            path_prefix,
            path_regex,
            methods,
            headers,
            case_insensitive,
        }
    }
}

/// Whether `prefix` is `path` or a parent of it, segment-wise.
pub(super) fn segment_prefix_of(prefix: &str, path: &str) -> bool {
    prefix.is_empty()
        || path == prefix
        || (path.starts_with(prefix) && path.as_bytes().get(prefix.len()) == Some(&b'/'))
}
