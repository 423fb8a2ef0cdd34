//! (3) The route's policies, one file each, applied in the order `stack.rs` writes them.
//!
//! Request ids come first of all (before routing). Each route's stack then starts with
//! `observe` (access log, metrics, the one place errors become answers) and the body limit.
//! Auth, integrity and rate limiting land here with their issues.

pub mod api_key;
pub mod body_limit;
pub mod client_cert;
pub mod compress;
pub mod cors;
pub mod forward_auth;
pub mod headers;
pub mod integrity;
pub mod ip_filter;
pub mod jwt;
pub mod observe;
pub mod rate_limit;
pub mod request_id;
