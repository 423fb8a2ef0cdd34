//! (2) `strip_prefix`, after matching and the policies, just before the upstream. The path is
//! already normal (`crate::path`); the prefix is removed by segments, as matching saw them.

use std::future::Ready;
use std::task::{Context, Poll};

use futures_util::future::Either;

use http::uri::{PathAndQuery, Uri};
use http::Request;
use tower::{Layer, Service};

use crate::error::GatewayError;
use crate::path;

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

use crate::ctx::OriginalPath;

/// The route's `strip_prefix`, applied after matching.
#[derive(Clone, Debug)]
pub struct RewriteLayer {
    strip_prefix: Option<std::sync::Arc<str>>,
    keep_original: bool,
    case_insensitive: bool,
}

impl RewriteLayer {
    /// `keep_original`: remember the path before rewriting (the upstream hashes on it).
    /// `case_insensitive`: the route's `case_sensitive = false`.
    pub fn new(strip_prefix: Option<&str>, keep_original: bool, case_insensitive: bool) -> Self {
        Self {
            strip_prefix: strip_prefix.map(Into::into),
            keep_original,
            case_insensitive,
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
            case_insensitive: self.case_insensitive,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Rewrite<S> {
    inner: S,
    strip_prefix: Option<std::sync::Arc<str>>,
    keep_original: bool,
    case_insensitive: bool,
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
            if let Some(rest) = path::strip_prefix(req.uri().path(), prefix, self.case_insensitive)
            {
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
    fn rewriting_the_path_keeps_the_query() {
        let uri: Uri = "/api/users?id=7&x=%20".parse().unwrap();
        assert_eq!(with_path(&uri, "/users").unwrap(), "/users?id=7&x=%20");
        let abs: Uri = "https://a.example/x/../y?q".parse().unwrap();
        assert_eq!(with_path(&abs, "/y").unwrap(), "https://a.example/y?q");
    }
}
