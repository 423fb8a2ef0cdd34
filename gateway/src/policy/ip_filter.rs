//! A route's `allow_ips` / `deny_ips` (CIDR, IPv4 and IPv6): the client address (the TCP
//! peer, or what trusted proxies say, see `observe.rs`) in `deny_ips` gets 403; with
//! `allow_ips` set, any address outside it gets 403 too. Deny is checked first.
//!
//! Comes right after the body limit, before any authentication work is spent.

use std::future::Ready;
use std::net::IpAddr;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::Request;
use ipnet::IpNet;
use tower::{Layer, Service};

use crate::ctx::ClientIp;
use crate::error::GatewayError;

#[derive(Clone, Debug)]
pub struct IpFilterLayer {
    lists: Arc<(Vec<IpNet>, Vec<IpNet>)>,
}

impl IpFilterLayer {
    pub fn new(allow: Vec<IpNet>, deny: Vec<IpNet>) -> Self {
        Self {
            lists: Arc::new((allow, deny)),
        }
    }
}

/// Whether `ip` may pass (`allow` empty means everyone not denied).
pub fn permits(allow: &[IpNet], deny: &[IpNet], ip: IpAddr) -> bool {
    let ip = crate::client_addr::canonical(ip);
    if deny.iter().any(|n| n.contains(&ip)) {
        return false;
    }
    allow.is_empty() || allow.iter().any(|n| n.contains(&ip))
}

impl<S> Layer<S> for IpFilterLayer {
    type Service = IpFilter<S>;
    fn layer(&self, inner: S) -> IpFilter<S> {
        IpFilter {
            inner,
            lists: self.lists.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct IpFilter<S> {
    inner: S,
    lists: Arc<(Vec<IpNet>, Vec<IpNet>)>,
}

impl<S, B, R> Service<Request<B>> for IpFilter<S>
where
    S: Service<Request<B>, Response = R, Error = GatewayError>,
{
    type Response = R;
    type Error = GatewayError;
    type Future = Either<Ready<Result<R, GatewayError>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), GatewayError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let (allow, deny) = &*self.lists;
        let ok = req
            .extensions()
            .get::<ClientIp>()
            .is_some_and(|c| permits(allow, deny, c.0));
        if ok {
            Either::Right(self.inner.call(req))
        } else {
            Either::Left(std::future::ready(Err(GatewayError::Forbidden)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(l: &[&str]) -> Vec<IpNet> {
        l.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn deny_wins_then_allow_decides() {
        let allow = nets(&["10.0.0.0/8", "2001:db8::/32"]);
        let deny = nets(&["10.6.6.0/24"]);
        assert!(permits(&allow, &deny, "10.1.2.3".parse().unwrap()));
        assert!(!permits(&allow, &deny, "10.6.6.9".parse().unwrap()));
        assert!(!permits(&allow, &deny, "192.168.1.1".parse().unwrap()));
        assert!(permits(&allow, &deny, "2001:db8::1".parse().unwrap()));
        assert!(
            permits(&allow, &deny, "::ffff:10.1.2.3".parse().unwrap()),
            "v4-mapped counts as v4"
        );
        assert!(permits(&[], &deny, "192.168.1.1".parse().unwrap()));
        assert!(!permits(&[], &deny, "10.6.6.1".parse().unwrap()));
    }
}
