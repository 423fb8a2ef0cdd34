//! The route table of one config generation: immutable, matched in file order, first wins.

use http::request::Parts;
use http::{header, HeaderMap, Method, Uri};

use crate::config::{HostMatch, Match};

/// Routes' match rules in file order.
#[derive(Debug, Default)]
pub struct RouteTable {
    matches: Vec<Match>,
}

impl RouteTable {
    pub fn new(matches: Vec<Match>) -> Self {
        Self { matches }
    }

    /// The index of the first route whose rule holds for this request, if any.
    /// `path` is the match path: normalised, `;` parameters removed (`crate::path`).
    pub fn find(&self, parts: &Parts, path: &str) -> Option<usize> {
        let host = request_host(&parts.uri, &parts.headers);
        self.matches
            .iter()
            .position(|m| matches(m, &parts.method, host, path, &parts.headers))
    }

    /// `find`, with `method` in place of the request's (CORS preflights).
    pub fn find_as(&self, parts: &Parts, method: &Method, path: &str) -> Option<usize> {
        let host = request_host(&parts.uri, &parts.headers);
        self.matches
            .iter()
            .position(|m| matches(m, method, host, path, &parts.headers))
    }

    /// Same as `find`, from loose inputs (for `/admin/explain`).
    pub fn find_by(
        &self,
        method: &Method,
        host: Option<&str>,
        path: &str,
        headers: &HeaderMap,
    ) -> Option<usize> {
        let host = host.map(strip_port);
        self.matches
            .iter()
            .position(|m| matches(m, method, host, path, headers))
    }
}

/// The host a request is for, without port: the URI's authority (HTTP/2, absolute-form) or the
/// Host header.
pub fn request_host<'a>(uri: &'a Uri, headers: &'a HeaderMap) -> Option<&'a str> {
    if let Some(a) = uri.authority() {
        return Some(a.host());
    }
    headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(strip_port)
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn matches(
    m: &Match,
    method: &Method,
    host: Option<&str>,
    path: &str,
    headers: &HeaderMap,
) -> bool {
    if let Some(methods) = &m.methods {
        if !methods.contains(method) {
            return false;
        }
    }
    if let Some(want) = &m.host {
        let Some(host) = host else { return false };
        let host = host.strip_suffix('.').unwrap_or(host);
        let ok = match want {
            HostMatch::Exact(h) => host.eq_ignore_ascii_case(h),
            HostMatch::Suffix(suffix) => {
                host.len() > suffix.len()
                    && host.is_char_boundary(host.len() - suffix.len())
                    && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
            }
        };
        if !ok {
            return false;
        }
    }
    if let Some(p) = &m.path {
        let same = if m.case_insensitive {
            path.eq_ignore_ascii_case(p)
        } else {
            path == p
        };
        if !same {
            return false;
        }
    }
    if let Some(prefix) = &m.path_prefix {
        if !has_segment_prefix_case(path, prefix, m.case_insensitive) {
            return false;
        }
    }
    if let Some(re) = &m.path_regex {
        if !re.is_match(path) {
            return false;
        }
    }
    m.headers
        .iter()
        .all(|(name, value)| headers.get_all(name).iter().any(|v| v == value))
}

/// `/api` matches `/api`, `/api/` and `/api/x`, not `/apiary`. `prefix` has no trailing `/`
/// (except the root, which matches everything).
pub fn has_segment_prefix(path: &str, prefix: &str) -> bool {
    has_segment_prefix_case(path, prefix, false)
}

/// `has_segment_prefix`, ASCII case-insensitive when asked (`case_sensitive = false`).
pub fn has_segment_prefix_case(path: &str, prefix: &str, case_insensitive: bool) -> bool {
    if prefix == "/" {
        return true;
    }
    let Some(head) = path.get(..prefix.len()) else {
        return false;
    };
    let same = if case_insensitive {
        head.eq_ignore_ascii_case(prefix)
    } else {
        head == prefix
    };
    same && matches!(path.as_bytes().get(prefix.len()), None | Some(b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;

    fn parts(method: &str, uri: &str, host: Option<&str>, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(h) = host {
            b = b.header("host", h);
        }
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    fn prefix(p: &str) -> Match {
        Match {
            path_prefix: Some(p.to_string()),
            ..Match::default()
        }
    }

    #[test]
    fn path_prefix_matches_whole_segments() {
        assert!(has_segment_prefix("/api", "/api"));
        assert!(has_segment_prefix("/api/", "/api"));
        assert!(has_segment_prefix("/api/x", "/api"));
        assert!(!has_segment_prefix("/apiary", "/api"));
        assert!(has_segment_prefix("/anything", "/"));
    }

    #[test]
    fn first_matching_route_in_file_order_wins() {
        let t = RouteTable::new(vec![prefix("/api/users"), prefix("/api"), prefix("/")]);
        let p = parts("GET", "/api/users/7", Some("x"), &[]);
        assert_eq!(t.find(&p, "/api/users/7"), Some(0));
        assert_eq!(t.find(&p, "/api/orders"), Some(1));
        assert_eq!(t.find(&p, "/other"), Some(2));
    }

    #[test]
    fn host_matches_ignore_case_port_and_trailing_dot() {
        let m = Match {
            host: Some(HostMatch::Exact("api.example.com".into())),
            ..Match::default()
        };
        let t = RouteTable::new(vec![m]);
        for host in [
            "api.example.com",
            "API.Example.com:8443",
            "api.example.com.",
        ] {
            assert_eq!(
                t.find(&parts("GET", "/", Some(host), &[]), "/"),
                Some(0),
                "{host}"
            );
        }
        assert_eq!(
            t.find(&parts("GET", "/", Some("other.com"), &[]), "/"),
            None
        );
        assert_eq!(t.find(&parts("GET", "/", None, &[]), "/"), None);
        // HTTP/2 and absolute-form carry the host in the URI.
        assert_eq!(
            t.find(&parts("GET", "https://api.example.com/", None, &[]), "/"),
            Some(0)
        );
    }

    #[test]
    fn wildcard_hosts_match_subdomains_only() {
        let m = Match {
            host: Some(HostMatch::Suffix(".example.com".into())),
            ..Match::default()
        };
        let t = RouteTable::new(vec![m]);
        assert_eq!(
            t.find(&parts("GET", "/", Some("a.example.com"), &[]), "/"),
            Some(0)
        );
        assert_eq!(
            t.find(&parts("GET", "/", Some("example.com"), &[]), "/"),
            None
        );
    }

    #[test]
    fn methods_headers_exact_path_and_regex_all_have_to_hold() {
        let m = Match {
            path: Some("/exact".into()),
            methods: Some(vec![Method::POST]),
            headers: vec![("x-env".parse().unwrap(), "canary".parse().unwrap())],
            ..Match::default()
        };
        let re = Match {
            path_regex: Some(regex::Regex::new("^/v[0-9]+/items$").unwrap()),
            ..Match::default()
        };
        let t = RouteTable::new(vec![m, re]);
        let ok = parts("POST", "/exact", Some("h"), &[("x-env", "canary")]);
        assert_eq!(t.find(&ok, "/exact"), Some(0));
        let get = parts("GET", "/exact", Some("h"), &[("x-env", "canary")]);
        assert_eq!(t.find(&get, "/exact"), None);
        let no_header = parts("POST", "/exact", Some("h"), &[]);
        assert_eq!(t.find(&no_header, "/exact"), None);
        assert_eq!(t.find(&get, "/v2/items"), Some(1));
        assert_eq!(t.find(&get, "/v2/items/x"), None);
    }

    #[test]
    fn strips_ports_from_hosts() {
        assert_eq!(strip_port("a.com:80"), "a.com");
        assert_eq!(strip_port("[::1]:80"), "::1");
        assert_eq!(strip_port("a.com"), "a.com");
    }
}
