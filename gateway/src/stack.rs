//! The layer chains, in request order. Reading this file is reading the request path.
//!
//! ```text
//! edge_stack:  request id → router ─┬─ route_stack (first matching route)
//!                                   └─ fallback_stack (404, or 308 on redirect listeners)
//! route_stack: observe (log, metrics, errors → JSON, CORS and response-header decoration)
//!              → compression (on the way back) → ip allow/deny → CORS preflight → body limit → forward auth → jwt → api key
//!              → client certificate → integrity
//!              → rate limit → request headers → rewrite → upstream (balancer, endpoint,
//!              pooled client, retries)
//! ```
//! Stacks are built once per config generation (`runtime.rs`), never per request.

use std::sync::Arc;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tower::{Service, ServiceBuilder};

use crate::balance::key::KeySpec;
use crate::policy::api_key::ApiKeyLayer;
use crate::policy::body_limit::BodyLimitLayer;
use crate::policy::integrity::IntegrityLayer;
use crate::policy::ip_filter::IpFilterLayer;
use crate::policy::jwt::JwtLayer;
use crate::policy::observe::{ObserveLayer, RouteObs};
use crate::policy::rate_limit::RateLimitLayer;
use crate::policy::request_id::{RequestId, RequestIdLayer, Snowflake};
use crate::route::rewrite::RewriteLayer;
use crate::route::{Fallback, Router};

/// A route's whole stack, type-erased so every route fits one table. Every layer is always
/// ready (none queues), so a request is a direct call: the concrete stack is cloned where it
/// is called (reference counts, no allocation) and its future boxed once; cloning the table's
/// entry is one reference count. (tower's `BoxCloneSyncService` allocated a clone of the stack
/// per request, and `Oneshot` moved the request through one more state.)
#[derive(Clone)]
pub struct RouteService(Arc<dyn RouteCall>);

/// A route's response future.
pub type RouteFuture = Pin<Box<dyn Future<Output = Result<RouteResponse, Infallible>> + Send>>;
type RouteRequest = http::Request<crate::body::ReqBody>;
type RouteResponse = http::Response<crate::policy::observe::ObservedBody>;

trait RouteCall: Send + Sync {
    fn call(&self, req: RouteRequest) -> RouteFuture;
}

struct Erased<S>(S);

impl<S> RouteCall for Erased<S>
where
    S: Service<RouteRequest, Response = RouteResponse, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    fn call(&self, req: RouteRequest) -> RouteFuture {
        Box::pin(self.0.clone().call(req))
    }
}

impl RouteService {
    fn new<S>(svc: S) -> Self
    where
        Erased<S>: RouteCall + 'static,
    {
        Self(Arc::new(Erased(svc)))
    }
}

impl Service<RouteRequest> for RouteService {
    type Response = RouteResponse;
    type Error = Infallible;
    type Future = RouteFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: RouteRequest) -> RouteFuture {
        self.0.call(req)
    }
}

/// The router of one config generation.
pub type EdgeRouter = Router<RouteService>;
use crate::upstream::{Forward, ForwardConfig};

/// What hyper calls for every request of a config generation.
pub type EdgeService = RequestId<EdgeRouter>;

/// Request id, then routing.
pub fn edge_stack(ids: Arc<Snowflake>, trust_request_id: bool, router: EdgeRouter) -> EdgeService {
    ServiceBuilder::new()
        .layer(RequestIdLayer::new(ids, trust_request_id))
        .service(router)
}

/// The policies a route names, ready to layer (absent = off).
#[derive(Default)]
pub struct RoutePolicies {
    pub ip_filter: Option<IpFilterLayer>,
    pub cors: Option<crate::policy::cors::CorsLayer>,
    pub forward_auth: Option<crate::policy::forward_auth::ForwardAuthLayer>,
    pub jwt: Option<JwtLayer>,
    pub api_key: Option<ApiKeyLayer>,
    pub integrity: Option<IntegrityLayer>,
    pub rate_limit: Option<RateLimitLayer>,
    pub client_cert: Option<crate::policy::client_cert::ClientCertLayer>,
    pub request_headers: Option<crate::policy::headers::RequestHeadersLayer>,
    pub compress: Option<crate::policy::compress::CompressLayer>,
}

/// One route: its policies in order, down to its upstream.
pub fn route_stack(
    obs: Arc<RouteObs>,
    max_body_bytes: u64,
    policies: RoutePolicies,
    strip_prefix: Option<&str>,
    case_insensitive: bool,
    forward: ForwardConfig,
) -> RouteService {
    let keeps_path = forward.upstream.config.hash_on == Some(KeySpec::Path);
    let svc = ServiceBuilder::new()
        .layer(ObserveLayer::new(obs))
        .option_layer(policies.compress)
        .option_layer(policies.ip_filter)
        .option_layer(policies.cors)
        .layer(BodyLimitLayer::new(max_body_bytes))
        .option_layer(policies.forward_auth)
        .option_layer(policies.jwt)
        .option_layer(policies.api_key)
        .option_layer(policies.client_cert)
        .option_layer(policies.integrity)
        .option_layer(policies.rate_limit)
        .option_layer(policies.request_headers)
        .layer(RewriteLayer::new(
            strip_prefix,
            keeps_path,
            case_insensitive,
        ))
        .service(Forward::new(forward));
    RouteService::new(svc)
}

/// Requests no route takes.
pub fn fallback_stack(obs: Arc<RouteObs>) -> RouteService {
    let svc = ServiceBuilder::new()
        .layer(ObserveLayer::new(obs))
        .service(Fallback);
    RouteService::new(svc)
}
