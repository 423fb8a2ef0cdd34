//! Integration tests: one test binary, real processes on loopback ports, no mocks.

mod client;
mod harness;

mod access_log;
mod admin;
mod auth;
mod backends;
mod balance;
mod check;
mod demo;
mod deploy;
mod discovery;
mod docs;
mod edge;
mod h2_abuse;
mod hardening;
mod integrity;
mod observability;
mod proxy;
mod rate_limit;
mod reload;
mod resilience;
mod restart;
mod route_policies;
mod security;
mod spans;
mod status_page;
mod tracing;
mod upstream_h1;
mod upstream_reach;
