//! The client's address (SPEC §4): the TCP peer, or behind `trusted_proxies` the PROXY
//! header's source or the last untrusted hop of `X-Forwarded-For`. Neutral: the edge (PROXY
//! headers), the observe and IP-list policies and forwarding all ask it.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

use crate::ctx::X_FORWARDED_FOR;

/// Whether `ip` is one of the trusted proxies.
pub fn is_trusted(ip: IpAddr, trusted: &[IpNet]) -> bool {
    let ip = canonical(ip);
    trusted.iter().any(|n| n.contains(&ip))
}

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) count as the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The client's address: the peer, or behind trusted proxies the last untrusted address of
/// `X-Forwarded-For` (the leftmost when every hop is trusted).
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    if trusted.is_empty() || !is_trusted(peer, trusted) {
        return canonical(peer);
    }
    let mut client = canonical(peer);
    // Walk the chain right to left: each hop was added by the one after it.
    let values: Vec<&str> = headers
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    for v in values.iter().rev() {
        for hop in v.rsplit(',') {
            let Some(ip) = parse_hop(hop) else {
                // Garbage in the chain: stop believing it here.
                return client;
            };
            client = ip;
            if !is_trusted(ip, trusted) {
                return ip;
            }
        }
    }
    client
}

fn parse_hop(hop: &str) -> Option<IpAddr> {
    let hop = hop.trim();
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(canonical(ip));
    }
    // Some proxies write ip:port or [v6]:port.
    hop.parse::<std::net::SocketAddr>()
        .ok()
        .map(|s| canonical(s.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn untrusted_peers_cannot_spoof_their_address() {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, "1.2.3.4".parse().unwrap());
        let peer: IpAddr = "9.9.9.9".parse().unwrap();
        assert_eq!(client_ip(peer, &h, &nets(&["10.0.0.0/8"])), peer);
        assert_eq!(client_ip(peer, &h, &[]), peer);
    }

    #[test]
    fn trusted_proxies_give_the_last_untrusted_hop() {
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, "6.6.6.6, 1.2.3.4".parse().unwrap());
        h.append(X_FORWARDED_FOR, "10.0.0.2".parse().unwrap());
        let peer: IpAddr = "10.0.0.1".parse().unwrap();
        assert_eq!(
            client_ip(peer, &h, &nets(&["10.0.0.0/8"])),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
    }
}
