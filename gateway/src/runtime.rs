//! One config generation made live: listeners' TLS, upstreams with their pools and balancers,
//! route stacks and the edge stack. Built whole from a validated `Config`, then swapped in
//! atomically (`ArcSwap` in `server::Shared`); requests in flight keep the generation they
//! started on.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;
use tokio_rustls::TlsAcceptor;

use crate::config::{ApiKeyPolicy, Config};
use crate::ctx::ListenerInfo;
use crate::edge::tls::{self, CertMaterial};
use crate::metrics::{ListenerMetrics, Metrics};
use crate::policy::api_key::ApiKeyLayer;
use crate::policy::integrity::{IntegrityFailures, IntegrityLayer, IntegrityRt};
use crate::policy::ip_filter::IpFilterLayer;
use crate::policy::jwt::{AuthFailures, JwtLayer, JwtPolicyRt};
use crate::policy::observe::RouteObs;
use crate::policy::rate_limit::{RateLimitLayer, RateLimiterRt};
use crate::policy::request_id::Snowflake;
use crate::route::table::RouteTable;
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
    pub router: crate::stack::EdgeRouter,
    pub jwt: HashMap<String, Arc<JwtPolicyRt>>,
    pub rate_limits: HashMap<String, Arc<RateLimiterRt>>,
    pub integrity: HashMap<String, Arc<IntegrityRt>>,
    pub redis: Option<Arc<crate::policy::rate_limit::redis::RedisStore>>,
    pub upstreams: Vec<Arc<UpstreamRt>>,
    pub listeners: Vec<Arc<ListenerRt>>,
    pub spans: Option<Arc<crate::spans::Exporter>>,
    pub access_log: Option<Arc<crate::access_log::AccessLogRt>>,
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
    /// certificate that cannot be made, say). `previous`: the generation being replaced by a
    /// reload, whose state carries over where the config did not change: upstreams (health,
    /// circuits, ejections, pools, balancer), endpoints of changed upstreams, JWT key sets and
    /// caches, integrity nonce caches, rate-limit buckets, the Redis connection, and
    /// self-signed certificates. Certificate files are read again, except when `rediscovery`:
    /// the same config rebuilt because a discovered target set changed (`found`: what DNS
    /// says, `discovery.rs`), where every unchanged listener is kept as it is.
    pub fn build(
        config: Arc<Config>,
        metrics: &Metrics,
        ids: &Arc<Snowflake>,
        generation: u64,
        previous: Option<&Runtime>,
        found: &crate::discovery::Found,
        rediscovery: bool,
    ) -> Result<Self, String> {
        crate::body::configure_buffers(
            config.limits.max_buffered_bytes,
            &metrics.buffered_bytes,
            &metrics.buffer_rejected_total,
        );
        // One client and verdict cache per forward-auth policy, shared by its routes.
        let forward_auth: HashMap<String, Arc<crate::policy::forward_auth::ForwardAuthRt>> = config
            .forward_auth
            .iter()
            .map(|(name, p)| {
                let client = Arc::new(crate::upstream::auth_client::AuthClient::new(
                    p,
                    &crate::metrics::EndpointMetrics::detached(),
                ));
                (
                    name.clone(),
                    Arc::new(crate::policy::forward_auth::ForwardAuthRt::new(
                        p.clone(),
                        client,
                    )),
                )
            })
            .collect();
        let mut listeners = Vec::with_capacity(config.listeners.len());
        for l in &config.listeners {
            let keep = previous.and_then(|p| {
                let old = p.config.listeners.iter().find(|o| o.name == l.name)?;
                let self_signed_only = l.tls.as_ref().is_none_or(|t| {
                    t.certs
                        .iter()
                        .all(|c| matches!(c, crate::config::CertSource::SelfSigned))
                });
                ((self_signed_only || rediscovery) && old == l)
                    .then(|| p.listener(&l.name).cloned())
                    .flatten()
            });
            if let Some(kept) = keep {
                listeners.push(kept);
                continue;
            }
            let (tls, certs) = match &l.tls {
                Some(t) => {
                    let (server_config, certs) =
                        tls::server_config(t).map_err(|e| format!("listener {:?}: {e}", l.name))?;
                    (Some(TlsAcceptor::from(server_config)), certs)
                }
                None => (None, Vec::new()),
            };
            metrics.clear_certs(&l.name);
            for c in &certs {
                metrics
                    .tls_cert_expiry
                    .with_label_values(&[l.name.as_str(), c.label.as_str()])
                    .set(c.not_after);
            }
            let listener_metrics = metrics.listener(&l.name, l.tls.is_some());
            listeners.push(Arc::new(ListenerRt {
                info: Arc::new(ListenerInfo {
                    name: l.name.clone(),
                    https: l.tls.is_some(),
                    redirect_https: l.redirect_https,
                    proxy_protocol: l.proxy_protocol,
                    h2c: l.h2c,
                    h2_body_timeouts: listener_metrics.h2_reset_body_timeout.clone(),
                }),
                metrics: listener_metrics,
                tls,
                certs,
            }));
        }

        let mut upstreams: Vec<Arc<UpstreamRt>> = Vec::with_capacity(config.upstreams.len());
        for u in &config.upstreams {
            // A discovering upstream runs with the targets DNS gave it.
            let discovered;
            let u = match &u.discover {
                Some(_) => {
                    discovered = crate::config::Upstream {
                        targets: found.targets.get(&u.name).cloned().unwrap_or_default(),
                        ..u.clone()
                    };
                    &discovered
                }
                None => u,
            };
            let old = previous.and_then(|p| p.upstream(&u.name));
            match old {
                Some(old) if old.config == *u => {
                    upstreams.push(old.clone());
                }
                _ => {
                    let fresh = Arc::new(UpstreamRt::build_reusing(
                        u,
                        metrics,
                        old.map(|o| &**o),
                        &found.hosts,
                    ));
                    crate::upstream::spawn_background(&fresh);
                    upstreams.push(fresh);
                }
            }
        }

        let mut jwt: HashMap<String, Arc<JwtPolicyRt>> = HashMap::new();
        for (name, p) in &config.jwt {
            let old = previous
                .filter(|prev| prev.config.jwt.get(name) == Some(p))
                .and_then(|prev| prev.jwt.get(name));
            if let Some(old) = old {
                jwt.insert(name.clone(), old.clone());
                continue;
            }
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
            .map(|(n, p)| {
                let old = previous
                    .filter(|prev| prev.config.integrity.get(n) == Some(p))
                    .and_then(|prev| prev.integrity.get(n));
                let rt = old
                    .cloned()
                    .unwrap_or_else(|| Arc::new(IntegrityRt::new(p.clone())));
                (n.clone(), rt)
            })
            .collect();

        let wants_redis = config
            .rate_limits
            .values()
            .any(|p| p.store == crate::config::Store::Redis);
        let redis = match &config.redis {
            Some(cfg) if wants_redis => previous
                .filter(|p| p.config.redis.as_ref() == Some(cfg))
                .and_then(|p| p.redis.clone())
                .or_else(|| crate::policy::rate_limit::redis::RedisStore::start(cfg)),
            _ => None,
        };
        let same_redis = |prev: &Runtime| match (&prev.redis, &redis) {
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            (None, None) => true,
            _ => false,
        };
        let mut fresh_limiters = Vec::new();
        let rate_limits: HashMap<String, Arc<RateLimiterRt>> = config
            .rate_limits
            .iter()
            .map(|(n, p)| {
                let old = previous
                    .filter(|prev| prev.config.rate_limits.get(n) == Some(p) && same_redis(prev))
                    .and_then(|prev| prev.rate_limits.get(n));
                let rt = match old {
                    Some(old) => old.clone(),
                    None => {
                        let rt =
                            Arc::new(RateLimiterRt::new(n, p.clone(), redis.as_ref(), metrics));
                        fresh_limiters.push(rt.clone());
                        rt
                    }
                };
                (n.clone(), rt)
            })
            .collect();
        crate::policy::rate_limit::spawn_eviction(&fresh_limiters);

        // Span export and the access log carry over while their tables are unchanged.
        let spans = match previous.and_then(|p| p.spans.clone()) {
            Some(old) if *old.config() == config.tracing => Some(old),
            _ => crate::spans::Exporter::start(&config.tracing, metrics),
        };
        let access_log = match (
            &config.access_log,
            previous.and_then(|p| p.access_log.clone()),
        ) {
            (None, _) => None,
            (Some(cfg), Some(old)) if old.config() == cfg => Some(old),
            (Some(cfg), _) => Some(crate::access_log::AccessLogRt::start(cfg)?),
        };
        let trusted: Arc<[IpNet]> = config.server.trusted_proxies.clone().into();
        let mut stacks = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let upstream = upstreams
                .iter()
                .find(|u| u.name == r.upstream)
                .cloned()
                .ok_or_else(|| format!("route {:?}: upstream {:?} missing", r.name, r.upstream))?;
            let cors = r.cors.as_ref().and_then(|n| config.cors.get(n)).map(|p| {
                let (allowed, refused) = metrics.cors(&r.name);
                Arc::new(crate::policy::cors::CorsRt::new(
                    p.clone(),
                    allowed,
                    refused,
                ))
            });
            let obs = Arc::new(RouteObs {
                name: r.name.as_str().into(),
                metrics: metrics.route(&r.name),
                trusted_proxies: trusted.clone(),
                cors: cors.clone(),
                response_headers: r.response_headers.clone(),
                upstream: Some(r.upstream.as_str().into()),
                spans: spans.clone(),
                access_log: access_log.clone(),
                idle_timeout: r.idle_timeout,
            });
            let failures = (r.policies.jwt.is_some() || r.policies.api_key.is_some())
                .then(|| Arc::new(AuthFailures::new(metrics, &r.name)));
            let policies = stack::RoutePolicies {
                ip_filter: (!r.allow_ips.is_empty() || !r.deny_ips.is_empty())
                    .then(|| IpFilterLayer::new(r.allow_ips.clone(), r.deny_ips.clone())),
                cors: cors.map(crate::policy::cors::CorsLayer::new),
                forward_auth: r.forward_auth.as_ref().and_then(|n| {
                    let rt = forward_auth.get(n)?.clone();
                    Some(crate::policy::forward_auth::ForwardAuthLayer::new(
                        rt,
                        metrics.forward_auth(&r.name, n),
                    ))
                }),
                compress: r.compress.then_some(crate::policy::compress::CompressLayer),
                client_cert: r
                    .client_cert_required
                    .then_some(crate::policy::client_cert::ClientCertLayer),
                request_headers: r
                    .request_headers
                    .clone()
                    .map(crate::policy::headers::RequestHeadersLayer::new),
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
                r.matcher.case_insensitive,
                ForwardConfig {
                    upstream,
                    timeout: r.timeout,
                    total_timeout: r.total_timeout,
                    host_rewrite: r.host_rewrite.clone(),
                    trusted_proxies: trusted.clone(),
                    retry: r.retry.clone(),
                    fallback: r.fallback.clone(),
                    websocket: r
                        .websocket
                        .then_some(r.idle_timeout.unwrap_or(config.limits.idle_timeout)),
                    body_timeout: config.limits.body_timeout,
                    spans: spans.is_some(),
                },
            ));
        }
        let fallback = stack::fallback_stack(Arc::new(RouteObs {
            name: "none".into(),
            metrics: metrics.route("none"),
            trusted_proxies: trusted,
            cors: None,
            response_headers: None,
            upstream: None,
            spans: spans.clone(),
            access_log: access_log.clone(),
            idle_timeout: None,
        }));
        let table = RouteTable::new(config.routes.iter().map(|r| r.matcher.clone()).collect());
        let router = crate::route::Router::new(
            table,
            stacks,
            fallback,
            config.limits.max_headers,
            config.limits.encoded_slashes,
            config.identity_headers(),
        );
        let edge = stack::edge_stack(ids.clone(), config.server.trust_request_id, router.clone());
        Ok(Self {
            generation,
            config,
            edge,
            router,
            jwt,
            rate_limits,
            integrity,
            redis,
            upstreams,
            listeners,
            spans,
            access_log,
        })
    }

    /// (upstream, target id) of every endpoint this generation uses.
    pub fn target_ids(&self) -> Vec<(&str, &str)> {
        self.upstreams
            .iter()
            .flat_map(|u| u.endpoints().map(move |e| (u.name.as_str(), e.id.as_str())))
            .collect()
    }

    pub fn upstream(&self, name: &str) -> Option<&Arc<UpstreamRt>> {
        self.upstreams.iter().find(|u| u.name == name)
    }

    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerRt>> {
        self.listeners.iter().find(|l| l.info.name == name)
    }
}
