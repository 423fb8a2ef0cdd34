//! Where an endpoint is reached: one address for a target written as `IP:PORT` (or found as
//! one address by `discover = { dns = ... }`), every address of its name for a target written
//! as `host:port` or found in an SRV record. Those follow DNS (`discovery.rs` keeps the list
//! current) and new connections go to the addresses in turn. Read without a lock: the list is
//! swapped whole.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

pub struct Addrs {
    /// The DNS name (lower-case, no trailing dot): what TLS verifies; with `resolve`, what
    /// the list comes from.
    host: Option<String>,
    port: u16,
    resolve: bool,
    list: ArcSwap<Vec<SocketAddr>>,
    next: AtomicUsize,
    /// A refresher task owns this list (one per name, however many generations share it).
    refreshing: AtomicBool,
}

impl std::fmt::Debug for Addrs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Addrs")
            .field("host", &self.host)
            .field("list", &self.list.load())
            .finish()
    }
}

impl Addrs {
    /// One address; `host`: the name it was found under (TLS verifies it), if any.
    pub fn fixed(addr: SocketAddr, host: Option<String>) -> Self {
        Self {
            host,
            port: addr.port(),
            resolve: false,
            list: ArcSwap::from_pointee(vec![addr]),
            next: AtomicUsize::new(0),
            refreshing: AtomicBool::new(false),
        }
    }

    /// The addresses of `host` (as last looked up) on `port`.
    pub fn resolving(host: String, port: u16, list: Vec<SocketAddr>) -> Self {
        Self {
            host: Some(host),
            port,
            resolve: true,
            list: ArcSwap::from_pointee(list),
            next: AtomicUsize::new(0),
            refreshing: AtomicBool::new(false),
        }
    }

    /// The address for a new connection: the addresses in turn.
    pub fn next(&self) -> SocketAddr {
        let list = self.list.load();
        match list.len() {
            0 => SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port)),
            1 => list[0],
            n => list[self.next.fetch_add(1, Ordering::Relaxed) % n],
        }
    }

    /// The first address (for display and logs).
    pub fn first(&self) -> SocketAddr {
        self.list
            .load()
            .first()
            .copied()
            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, self.port)))
    }

    pub fn all(&self) -> Arc<Vec<SocketAddr>> {
        self.list.load_full()
    }

    /// Replace the addresses; whether they changed.
    pub fn set(&self, mut list: Vec<SocketAddr>) -> bool {
        list.sort();
        list.dedup();
        if **self.list.load() == list {
            return false;
        }
        self.list.store(Arc::new(list));
        true
    }

    pub fn host(&self) -> Option<&str> {
        self.host.as_deref()
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Follows its name's addresses.
    pub fn resolves(&self) -> bool {
        self.resolve
    }

    /// `host:port` for a name, else the address: the `Host` of health probes.
    pub fn authority(&self) -> String {
        match (&self.host, self.resolve) {
            (Some(h), true) => format!("{h}:{}", self.port),
            _ => self.first().to_string(),
        }
    }

    /// Whether these are the addresses a target written this way stands for.
    pub fn same_source(&self, addr: SocketAddr, host: Option<&str>, resolve: bool) -> bool {
        if resolve != self.resolve || host != self.host.as_deref() {
            return false;
        }
        if resolve {
            self.port == addr.port()
        } else {
            self.first() == addr
        }
    }

    /// Claim the refresh of this list; `true` for the first caller only.
    pub fn claim_refresh(&self) -> bool {
        self.resolve && !self.refreshing.swap(true, Ordering::AcqRel)
    }

    /// Let a later claim succeed (the refresher stopped).
    pub fn release_refresh(&self) {
        self.refreshing.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_turn_and_swapped_whole() {
        let a: SocketAddr = "127.0.0.2:80".parse().unwrap();
        let b: SocketAddr = "127.0.0.3:80".parse().unwrap();
        let addrs = Addrs::resolving("api.test".into(), 80, vec![a, b]);
        let picks: Vec<_> = (0..4).map(|_| addrs.next()).collect();
        assert_eq!(picks, vec![a, b, a, b]);
        assert!(!addrs.set(vec![b, a]), "same set, other order");
        assert!(addrs.set(vec![b]));
        assert_eq!(addrs.next(), b);
        assert_eq!(addrs.authority(), "api.test:80");
        assert!(addrs.same_source("0.0.0.0:80".parse().unwrap(), Some("api.test"), true));
        assert!(!addrs.same_source("0.0.0.0:81".parse().unwrap(), Some("api.test"), true));
        assert!(addrs.claim_refresh());
        assert!(!addrs.claim_refresh());
        let fixed = Addrs::fixed(a, None);
        assert!(!fixed.claim_refresh());
        assert!(fixed.same_source(a, None, false));
        assert!(!fixed.same_source(b, None, false));
    }
}
