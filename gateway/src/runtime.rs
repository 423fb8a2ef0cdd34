//! One config generation made live: listeners' TLS, upstreams with their pools and balancers,
//! route stacks and the edge stack. Built whole from a validated `Config`, then swapped in
//! atomically (`ArcSwap` in `edge::Shared`); requests in flight keep the generation they
//! started on.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;
use tokio_rustls::TlsAcceptor;

use crate::config::{ApiKeyPolicy, Config};
use crate::edge::tls::{self, CertMaterial};
use crate::edge::ListenerInfo;
use crate::metrics::{ListenerMetrics, Metrics};
use crate::policy::api_key::ApiKeyLayer;
use crate::policy::integrity::{IntegrityFailures, IntegrityLayer, IntegrityRt};
use crate::policy::ip_filter::IpFilterLayer;
use crate::policy::jwt::{AuthFailures, JwtLayer, JwtPolicyRt};
use crate::policy::observe::RouteObs;
use crate::policy::rate_limit::{RateLimitLayer, RateLimiterRt};
use crate::policy::request_id::Snowflake;
use crate::route::table::RouteTable;
use crate::route::Router;
use crate::stack;
pub use crate::stack::EdgeService;
use crate::upstream::{ForwardConfig, UpstreamRt};

/// A listener's per-generation parts.
pub struct ListenerRt {
    pub info: Arc<ListenerInfo>,
    pub tls: Option<TlsAcceptor>,
    pub certs: Vec<Arc<CertMaterial>>,
    pub metrics: ListenerMetrics,
}

impl std::fmt::Debug for ListenerRt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerRt")
            .field("info", &self.info)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

pub struct Runtime {
    pub generation: u64,
    pub config: Arc<Config>,
    pub edge: EdgeService,
    pub router: Router,
    pub jwt: HashMap<String, Arc<JwtPolicyRt>>,
    pub rate_limits: HashMap<String, Arc<RateLimiterRt>>,
    pub upstreams: Vec<Arc<UpstreamRt>>,
    pub listeners: Vec<Arc<ListenerRt>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl Runtime {
    /// Build a generation. Fails only on what validation cannot know (a self-signed
    /// certificate that cannot be made, say).
    pub fn build(
        config: Arc<Config>,
        metrics: &Metrics,
        ids: &Arc<Snowflake>,
        generation: u64,
    ) -> Result<Self, String> {
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let (tls, certs) = match &l.tls {
                Some(t) => {
                    let (server_config, certs) =
                        tls::server_config(t).map_err(|e| format!("listener {:?}: {e}", l.name))?;
                    (Some(TlsAcceptor::from(server_config)), certs)
                }
                None => (None, Vec::new()),
            };
            for c in &certs {
                metrics
                    .tls_cert_expiry
                    .with_label_values(&[l.name.as_str(), c.label.as_str()])
                    .set(c.not_after);
            }
            listeners.push(Arc::new(ListenerRt {
                info: Arc::new(ListenerInfo {
                    name: l.name.clone(),
                    https: l.tls.is_some(),
                    redirect_https: l.redirect_https,
                    proxy_protocol: l.proxy_protocol,
                }),
                metrics: metrics.listener(&l.name, l.tls.is_some()),
                tls,
                certs,
            }));
        }

        let upstreams: Vec<Arc<UpstreamRt>> = config
            .upstreams
            .iter()
            .map(|u| Arc::new(UpstreamRt::build(u, metrics)))
            .collect();
        for u in &upstreams {
            crate::upstream::spawn_background(u);
        }

        let mut jwt: HashMap<String, Arc<JwtPolicyRt>> = HashMap::new();
        for (name, p) in &config.jwt {
            let rt = Arc::new(JwtPolicyRt::new(name, p.clone(), metrics));
            crate::policy::jwt::source::spawn(&rt);
            jwt.insert(name.clone(), rt);
        }
        let api_keys: HashMap<String, Arc<ApiKeyPolicy>> = config
            .api_keys
            .iter()
            .map(|(n, p)| (n.clone(), Arc::new(p.clone())))
            .collect();

        let integrity: HashMap<String, Arc<IntegrityRt>> = config
            .integrity
            .iter()
            .map(|(n, p)| (n.clone(), Arc::new(IntegrityRt::new(p.clone()))))
            .collect();

        let redis = config
            .redis
            .as_ref()
            .filter(|_| {
                config
                    .rate_limits
                    .values()
                    .any(|p| p.store == crate::config::Store::Redis)
            })
            .and_then(crate::policy::rate_limit::redis::RedisStore::start);
        let rate_limits: HashMap<String, Arc<RateLimiterRt>> = config
            .rate_limits
            .iter()
            .map(|(n, p)| {
                (
                    n.clone(),
                    Arc::new(RateLimiterRt::new(n, p.clone(), redis.as_ref(), metrics)),
                )
            })
            .collect();
        crate::policy::rate_limit::spawn_eviction(
            &rate_limits.values().cloned().collect::<Vec<_>>(),
        );

        let trusted: Arc<[IpNet]> = config.server.trusted_proxies.clone().into();
        let mut stacks = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let upstream = upstreams
                .iter()
                .find(|u| u.name == r.upstream)
                .cloned()
                .ok_or_else(|| format!("route {:?}: upstream {:?} missing", r.name, r.upstream))?;
            let obs = Arc::new(RouteObs {
                name: r.name.as_str().into(),
                metrics: metrics.route(&r.name),
                trusted_proxies: trusted.clone(),
            });
            let failures = (r.policies.jwt.is_some() || r.policies.api_key.is_some())
                .then(|| Arc::new(AuthFailures::new(metrics, &r.name)));
            let policies = stack::RoutePolicies {
                ip_filter: (!r.allow_ips.is_empty() || !r.deny_ips.is_empty())
                    .then(|| IpFilterLayer::new(r.allow_ips.clone(), r.deny_ips.clone())),
                integrity: r
                    .policies
                    .integrity
                    .as_ref()
                    .and_then(|n| integrity.get(n))
                    .map(|p| {
                        IntegrityLayer::new(
                            p.clone(),
                            Arc::new(IntegrityFailures::new(metrics, &r.name)),
                        )
                    }),
                jwt: r
                    .policies
                    .jwt
                    .as_ref()
                    .and_then(|n| jwt.get(n))
                    .zip(failures.clone())
                    .map(|(p, f)| JwtLayer::new(p.clone(), f)),
                api_key: r
                    .policies
                    .api_key
                    .as_ref()
                    .and_then(|n| api_keys.get(n))
                    .zip(failures)
                    .map(|(p, f)| ApiKeyLayer::new(p.clone(), f)),
                rate_limit: r
                    .policies
                    .rate_limit
                    .as_ref()
                    .and_then(|n| rate_limits.get(n))
                    .map(|l| RateLimitLayer::new(l.clone(), &r.name, metrics)),
            };
            stacks.push(stack::route_stack(
                obs,
                config.limits.max_body_bytes,
                policies,
                r.strip_prefix.as_deref(),
                ForwardConfig {
                    upstream,
                    timeout: r.timeout,
                    total_timeout: r.total_timeout,
                    host_rewrite: r.host_rewrite.clone(),
                    trusted_proxies: trusted.clone(),
                    retry: r.retry.clone(),
                    fallback: r.fallback.clone(),
                },
            ));
        }
        let fallback = stack::fallback_stack(Arc::new(RouteObs {
            name: "none".into(),
            metrics: metrics.route("none"),
            trusted_proxies: trusted,
        }));
        let table = RouteTable::new(config.routes.iter().map(|r| r.matcher.clone()).collect());
        let router = Router::new(table, stacks, fallback, config.limits.max_headers);
        let edge = stack::edge_stack(ids.clone(), config.server.trust_request_id, router.clone());
        Ok(Self {
            generation,
            config,
            edge,
            router,
            jwt,
            rate_limits,
            upstreams,
            listeners,
        })
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<UpstreamRt>> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerRt>> {
        self.listeners.iter().find(|l| l.info.name == name)
    }
}
