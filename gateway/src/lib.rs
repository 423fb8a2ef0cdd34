//! A layered API gateway and reverse proxy.
//!
//! ```text
//! client ─TLS/h2, h1─▶ (1) edge ──▶ request id ──▶ (2) route ──▶ (3) policies ──▶ (4) balance
//!                      listeners     snowflake      match,        observe, body     pick a shard
//!                      TLS + ALPN                   rewrite       limit, ...            │
//!                      limits, drain                                                     ▼
//!                                              (6) upstream ◀── (5) endpoint: primary, else
//!                                              pooled client      first up backup
//! ```
//!
//! Modules are listed in request order; `stack.rs` assembles the same order as tower layers.
//! `runtime.rs` holds one config generation; `admin.rs`, `metrics.rs`, `status.rs` and `events.rs` watch it all.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::panic))]

pub mod client_addr;
pub mod config;
pub mod ctx;
pub mod jwks;
pub mod key;
pub mod path;
pub mod tls;

pub mod balance;
pub mod edge;
pub mod endpoint;
pub mod policy;
pub mod route;
pub mod upstream;

pub mod admin;
pub mod body;
pub mod clock;
pub mod demo;
pub mod error;
pub mod events;
pub mod metrics;
pub mod runtime;
pub mod server;
pub mod stack;
pub mod telemetry;
pub mod token;
