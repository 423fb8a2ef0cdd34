//! A layered API gateway and reverse proxy.
//!
//! ```text
//! client ─TLS/h2, h1─▶ (1) edge ──▶ request id ──▶ (2) route ──▶ (3) policies ──▶ (4) balance
//!                      listeners     snowflake      one path,     observe, IP lists, pick a shard
//!                      TLS + ALPN                   match,        body limit, JWT,      │
//!                      limits, drain                rewrite       keys, integrity, RL   ▼
//!                                              (6) upstream ◀── (5) endpoint: primary, else
//!                                              pooled client      first up backup; health,
//!                                                                 outlier, breaker, pool
//! ```
//!
//! The request-path tiers are declared in request order; each imports only earlier tiers and
//! the neutral modules above them (`../shared/tools/layers` checks it). `stack.rs` assembles the
//! same order as tower layers. `runtime.rs` holds one config generation; `server/` is the process
//! around it (serve, drain, reload, hand-over); `admin/`, `metrics.rs` and `events.rs` watch it all.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::panic))]

// Neutral: data and what travels with a request. Every tier may use these.
pub mod config;
// What a request carries between tiers (connection, client address, claims, paths).
pub(crate) mod ctx;
// The client address (peer, PROXY header, trusted X-Forwarded-For).
pub(crate) mod client_addr;
// The one normalised path.
pub mod path;
// Hash and rate-limit keys.
pub mod key;
// TLS and key material.
pub(crate) mod tls;
// JWT key sets.
pub mod jwks;
// Bodies, errors, time, events, metrics.
pub(crate) mod body;
pub(crate) mod clock;
pub(crate) mod error;
pub(crate) mod events;
pub mod metrics;
// gRPC: status mapping, trailers-only answers, grpc-timeout.
pub(crate) mod grpc;
// W3C trace context, spans and their export, the access log.
pub(crate) mod access_log;
pub(crate) mod spans;
pub(crate) mod trace;

// DNS names of targets and `discover` (kept outside config generations).
pub mod discovery;

// (1) bytes to requests.
pub mod edge;
// (2) which route.
pub mod route;
// (3) the route's policies.
pub mod policy;
// (4) which target.
pub mod balance;
// (5) is it usable.
pub(crate) mod endpoint;
/// The lean upstream HTTP/1.1 client's parsing, for the fuzz target.
pub use endpoint::h1 as upstream_h1;
// (6) talk to it.
pub(crate) mod upstream;

// The assembly and the process around it.
pub(crate) mod admin;
pub mod demo;
pub(crate) mod runtime;
pub mod server;
pub(crate) mod stack;
pub mod telemetry;
pub mod token;
