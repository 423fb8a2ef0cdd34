//! Path normalisation before matching, and `strip_prefix` after it.
//!
//! Dot segments (`/./`, `/../`, and their percent-encoded forms `%2e`) are resolved before
//! routing and forwarding, as RFC 3986 §5.2.4 does, so a route's prefix cannot be escaped with
//! `..` and the upstream sees the path the gateway matched.

use std::future::Ready;
use std::task::{Context, Poll};

use futures_util::future::Either;

use http::uri::{PathAndQuery, Uri};
use http::Request;
use tower::{Layer, Service};

use crate::error::GatewayError;
use crate::route::table::has_segment_prefix;

/// The path with dot segments resolved, or `None` when it has none (the common case, no
/// allocation).
pub fn normalize_path(path: &str) -> Option<String> {
    if !has_dot_segment(path) {
        return None;
    }
    let mut out: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for seg in path.split('/').skip(1) {
        trailing_slash = false;
        if is_dot(seg) {
            trailing_slash = true;
        } else if is_dot_dot(seg) {
            out.pop();
            trailing_slash = true;
        } else {
            out.push(seg);
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    Some(s)
}

/// Whether percent-decoding the path's dots and slashes would make new dot-segments
/// (`/api/..%2Fadmin`, `/%2e%2e%5cadmin`): an upstream that decodes them would climb out of
/// the prefix the gateway matched, so such paths are refused. An encoded slash alone
/// (`/repos/group%2Fproject`) is kept as it is.
pub fn has_encoded_traversal(path: &str) -> bool {
    if !path.contains('%') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if !(lower.contains("%2f") || lower.contains("%5c")) {
        // Encoded dots alone are resolved by `normalize_path`.
        return false;
    }
    let decoded = lower
        .replace("%2e", ".")
        .replace("%2f", "/")
        .replace("%5c", "/")
        .replace('\\', "/");
    decoded.split('/').any(|seg| seg == "." || seg == "..")
}

fn has_dot_segment(path: &str) -> bool {
    path.split('/').any(|seg| is_dot(seg) || is_dot_dot(seg))
}

fn is_dot(seg: &str) -> bool {
    seg == "." || seg.eq_ignore_ascii_case("%2e")
}

fn is_dot_dot(seg: &str) -> bool {
    seg == ".."
        || seg.eq_ignore_ascii_case(".%2e")
        || seg.eq_ignore_ascii_case("%2e.")
        || seg.eq_ignore_ascii_case("%2e%2e")
}

/// `path` with `prefix` (no trailing `/`) removed: `/api/users/7` - `/api` = `/users/7`;
/// `/api` - `/api` = `/`. `None` when `prefix` is not a segment prefix of `path`.
pub fn strip_prefix<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    if prefix.is_empty() || prefix == "/" {
        return Some(path);
    }
    if !has_segment_prefix(path, prefix) {
        return None;
    }
    let rest = &path[prefix.len()..];
    Some(if rest.is_empty() { "/" } else { rest })
}

/// Replace the path of `uri`, keeping its query (and scheme and authority, if any).
pub fn with_path(uri: &Uri, path: &str) -> Result<Uri, GatewayError> {
    let pq = match uri.query() {
        Some(q) => {
            let mut s = String::with_capacity(path.len() + q.len() + 1);
            s.push_str(path);
            s.push('?');
            s.push_str(q);
            PathAndQuery::try_from(s)
        }
        None => PathAndQuery::try_from(path),
    }
    .map_err(|_| GatewayError::BadRequest("invalid request path"))?;
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(pq);
    Uri::from_parts(parts).map_err(|_| GatewayError::BadRequest("invalid request path"))
}

/// The path a request was routed on, before `strip_prefix` (kept only when a `path` hash key
/// needs it).
#[derive(Clone, Debug)]
pub struct OriginalPath(pub String);

/// The route's `strip_prefix`, applied after matching.
#[derive(Clone, Debug)]
pub struct RewriteLayer {
    strip_prefix: Option<std::sync::Arc<str>>,
    keep_original: bool,
}

impl RewriteLayer {
    /// `keep_original`: remember the path before rewriting (the upstream hashes on it).
    pub fn new(strip_prefix: Option<&str>, keep_original: bool) -> Self {
        Self {
            strip_prefix: strip_prefix.map(Into::into),
            keep_original,
        }
    }
}

impl<S> Layer<S> for RewriteLayer {
    type Service = Rewrite<S>;
    fn layer(&self, inner: S) -> Rewrite<S> {
        Rewrite {
            inner,
            strip_prefix: self.strip_prefix.clone(),
            keep_original: self.keep_original,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Rewrite<S> {
    inner: S,
    strip_prefix: Option<std::sync::Arc<str>>,
    keep_original: bool,
}

impl<S, B, R> Service<Request<B>> for Rewrite<S>
where
    S: Service<Request<B>, Response = R, Error = GatewayError>,
{
    type Response = R;
    type Error = GatewayError;
    type Future = Either<Ready<Result<R, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        if let Some(prefix) = &self.strip_prefix {
            if let Some(rest) = strip_prefix(req.uri().path(), prefix) {
                if rest.len() != req.uri().path().len() {
                    match with_path(req.uri(), rest) {
                        Ok(uri) => {
                            if self.keep_original {
                                let original = OriginalPath(req.uri().path().to_string());
                                req.extensions_mut().insert(original);
                            }
                            *req.uri_mut() = uri;
                        }
                        Err(e) => return Either::Left(std::future::ready(Err(e))),
                    }
                }
            }
        }
        Either::Right(self.inner.call(req))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_dot_segments_like_rfc_3986() {
        assert_eq!(normalize_path("/a/b/../c"), Some("/a/c".into()));
        assert_eq!(normalize_path("/a/./b"), Some("/a/b".into()));
        assert_eq!(
            normalize_path("/../../etc/passwd"),
            Some("/etc/passwd".into())
        );
        assert_eq!(normalize_path("/a/b/.."), Some("/a/".into()));
        assert_eq!(normalize_path("/.."), Some("/".into()));
        assert_eq!(normalize_path("/api/%2e%2e/admin"), Some("/admin".into()));
        assert_eq!(normalize_path("/api/.%2E/admin"), Some("/admin".into()));
        assert_eq!(normalize_path("/a/b"), None);
        assert_eq!(normalize_path("/a/..b/c"), None);
        assert_eq!(normalize_path("/a/.hidden"), None);
    }

    #[test]
    fn encoded_traversal_is_spotted_and_encoded_slashes_alone_are_kept() {
        assert!(has_encoded_traversal("/api/..%2Fadmin"));
        assert!(has_encoded_traversal("/api/%2e%2e%2fadmin"));
        assert!(has_encoded_traversal("/api/..%5Cadmin"));
        assert!(has_encoded_traversal("/a/%2E%2E%5C..%2F"));
        assert!(!has_encoded_traversal("/repos/group%2Fproject"));
        assert!(
            !has_encoded_traversal("/a/%2e%2e/b"),
            "plain encoded dots are resolved instead"
        );
        assert!(!has_encoded_traversal("/a/b"));
    }

    #[test]
    fn strips_a_prefix_at_segment_boundaries() {
        assert_eq!(strip_prefix("/api/users/7", "/api"), Some("/users/7"));
        assert_eq!(strip_prefix("/api", "/api"), Some("/"));
        assert_eq!(strip_prefix("/api/", "/api"), Some("/"));
        assert_eq!(strip_prefix("/apiary", "/api"), None);
    }

    #[test]
    fn rewriting_the_path_keeps_the_query() {
        let uri: Uri = "/api/users?id=7&x=%20".parse().unwrap();
        assert_eq!(with_path(&uri, "/users").unwrap(), "/users?id=7&x=%20");
        let abs: Uri = "https://a.example/x/../y?q".parse().unwrap();
        assert_eq!(with_path(&abs, "/y").unwrap(), "https://a.example/y?q");
    }
}
