//! (2) Which route? The one normalised path (`crate::path`), the route table, and dispatch to
//! the route's stack.
//!
//! Comes after the request id (`policy/request_id.rs`) and before the route's own stack
//! (`stack.rs`). Requests no route matches (and every request on a `redirect_https`
//! listener) go to the fallback stack: a 404, or a 308 to HTTPS.

pub mod rewrite;
pub mod table;

use std::borrow::Cow;

use std::future::Ready;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode};
use tower::Service;

use crate::body::{ReqBody, ResBody};
use crate::config::EncodedSlashes;
use crate::ctx::ConnInfo;
use crate::error::GatewayError;
use crate::path;
use table::RouteTable;

/// Dispatches each request to the stack of the first route that matches it. `S` is a route's
/// whole stack, type-erased so every route fits one table (`stack::RouteService`).
#[derive(Debug)]
pub struct Router<S> {
    inner: Arc<RouterInner<S>>,
}

impl<S> Clone for Router<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct RouterInner<S> {
    table: RouteTable,
    routes: Vec<S>,
    fallback: S,
    max_headers: usize,
    encoded_slashes: EncodedSlashes,
    /// Header names only the gateway may set (`Config::identity_headers`).
    identity: Vec<HeaderName>,
}

impl<S> Router<S> {
    /// `max_headers` is checked here for HTTP/2 (hyper's HTTP/1 parser enforces it itself).
    pub fn new(
        table: RouteTable,
        routes: Vec<S>,
        fallback: S,
        max_headers: usize,
        encoded_slashes: EncodedSlashes,
        identity: Vec<HeaderName>,
    ) -> Self {
        Self {
            inner: Arc::new(RouterInner {
                table,
                routes,
                fallback,
                max_headers,
                encoded_slashes,
                identity,
            }),
        }
    }
}

impl<S> Router<S> {
    /// The route table (for `/admin/explain`).
    pub fn table(&self) -> &RouteTable {
        &self.inner.table
    }
}

/// Why the fallback answers a request that never reached routing.
#[derive(Clone, Copy, Debug)]
pub enum Refused {
    TooManyHeaders,
    /// An ambiguous or malformed head (`edge/h1.rs`), or a path `crate::path` refuses.
    Malformed(&'static str),
}

impl<S> Service<Request<ReqBody>> for Router<S>
where
    S: Service<Request<ReqBody>> + Clone,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let (mut parts, body) = req.into_parts();
        let mut found = None;
        protect_identity(&mut parts.headers, &self.inner.identity);
        let conn = parts.extensions.get::<Arc<ConnInfo>>();
        let redirect = conn.is_some_and(|c| c.listener.redirect_https.is_some());
        // A verified client certificate goes upstream (and is a key for hashing and rate
        // limits, so it is set before them).
        if let Some(cert) = conn.and_then(|c| c.client_cert.as_ref()) {
            parts
                .headers
                .insert(crate::ctx::X_CLIENT_CERT_SUBJECT, cert.subject.clone());
            parts
                .headers
                .insert(crate::ctx::X_CLIENT_CERT_SHA256, cert.sha256.clone());
        }
        if parts.extensions.get::<Refused>().is_some() {
            // Refused at the edge already.
        } else if parts.headers.len() > self.inner.max_headers {
            parts.extensions.insert(Refused::TooManyHeaders);
        } else if redirect {
            // Answered with a redirect: the path is passed on as sent.
        } else if parts.uri.path() == "*" && parts.method == http::Method::OPTIONS {
            // `OPTIONS *` asks about the server, not a resource: no route takes it.
        } else {
            match path::normalise(parts.uri.path(), self.inner.encoded_slashes) {
                Err(e) => {
                    parts.extensions.insert(Refused::Malformed(e.reason()));
                }
                Ok(Cow::Borrowed(_)) => {
                    let p = path::match_path(parts.uri.path());
                    found = find_route(&self.inner.table, &parts, &p);
                }
                Ok(Cow::Owned(normal)) => match rewrite::with_path(&parts.uri, &normal) {
                    Ok(uri) => {
                        if let Some(pq) = parts.uri.path_and_query() {
                            parts.extensions.insert(path::RawTarget(pq.clone()));
                        }
                        parts.uri = uri;
                        let p = path::match_path(parts.uri.path());
                        found = find_route(&self.inner.table, &parts, &p);
                    }
                    Err(_) => {
                        parts
                            .extensions
                            .insert(Refused::Malformed("invalid request path"));
                    }
                },
            }
        }
        let svc = match found {
            Some(i) => &self.inner.routes[i],
            None => &self.inner.fallback,
        };
        // Route stacks are always ready (`stack::RouteService`): called directly.
        svc.clone().call(Request::from_parts(parts, body))
    }
}

/// The route for a request; a CORS preflight matches as if its method were the one it asks
/// about (SPEC §8.4), so it reaches the route whose CORS policy answers it.
fn find_route(table: &RouteTable, parts: &http::request::Parts, path: &str) -> Option<usize> {
    let asked = is_preflight(&parts.method, &parts.headers)
        .then(|| {
            parts
                .headers
                .get(header::ACCESS_CONTROL_REQUEST_METHOD)
                .and_then(|m| http::Method::from_bytes(m.as_bytes()).ok())
        })
        .flatten();
    match asked {
        Some(m) => table.find_as(parts, &m, path),
        None => table.find(parts, path),
    }
}

/// A CORS preflight (SPEC §8.4): `OPTIONS` with `Origin` and `Access-Control-Request-Method`.
pub fn is_preflight(method: &http::Method, headers: &HeaderMap) -> bool {
    method == http::Method::OPTIONS
        && headers.contains_key(header::ORIGIN)
        && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD)
}

/// Forged identity headers go (on every route, whatever its policies), and a `Connection`
/// header loses the tokens that name them or the other protected headers, so the hop-by-hop
/// removal before forwarding (`upstream/headers.rs`) cannot take away what the gateway set.
fn protect_identity(headers: &mut HeaderMap, identity: &[HeaderName]) {
    for name in identity {
        headers.remove(name);
    }
    if !headers.contains_key(header::CONNECTION) {
        return;
    }
    let named_protected = |t: &str| {
        let t = t.trim();
        crate::config::PROTECTED_HEADERS
            .iter()
            .any(|p| t.eq_ignore_ascii_case(p))
            || identity.iter().any(|n| t.eq_ignore_ascii_case(n.as_str()))
    };
    let touched = headers.get_all(header::CONNECTION).iter().any(|v| {
        v.to_str()
            .map_or(true, |v| v.split(',').any(named_protected))
    });
    if !touched {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty() && !named_protected(t))
        .map(str::to_string)
        .collect();
    headers.remove(header::CONNECTION);
    if !kept.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&kept.join(", ")) {
            headers.insert(header::CONNECTION, v);
        }
    }
}

/// What answers when no route does: 404, or on a `redirect_https` listener a 308 to HTTPS.
#[derive(Clone, Debug, Default)]
pub struct Fallback;

impl Service<Request<ReqBody>> for Fallback {
    type Response = Response<ResBody>;
    type Error = GatewayError;
    type Future = Ready<Result<Response<ResBody>, GatewayError>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        match req.extensions().get::<Refused>() {
            Some(Refused::TooManyHeaders) => {
                return std::future::ready(Err(GatewayError::TooManyHeaders))
            }
            Some(Refused::Malformed(why)) => {
                return std::future::ready(Err(GatewayError::BadRequest(why)))
            }
            None => {}
        }
        let port = req
            .extensions()
            .get::<Arc<ConnInfo>>()
            .and_then(|c| c.listener.redirect_https);
        std::future::ready(match port {
            Some(port) => redirect(&req, port),
            None => Err(GatewayError::NoRoute),
        })
    }
}

fn redirect(req: &Request<ReqBody>, port: u16) -> Result<Response<ResBody>, GatewayError> {
    let host = table::request_host(req.uri(), req.headers())
        .filter(|h| !h.is_empty())
        .ok_or(GatewayError::BadRequest("missing Host"))?;
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    let pq = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = if port == 443 {
        format!("https://{host}{pq}")
    } else {
        format!("https://{host}:{port}{pq}")
    };
    let location =
        HeaderValue::from_str(&location).map_err(|_| GatewayError::BadRequest("invalid Host"))?;
    let mut res = Response::new(ResBody::empty());
    *res.status_mut() = StatusCode::PERMANENT_REDIRECT;
    res.headers_mut().insert(header::LOCATION, location);
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    Ok(res)
}
