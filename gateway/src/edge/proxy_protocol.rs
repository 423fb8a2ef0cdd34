//! The PROXY protocol (HAProxy, versions 1 and 2) on listeners with `proxy_protocol = true`:
//! an L4 balancer in front says who the client is before the first byte of TLS or HTTP.
//!
//! On such a listener every connection must start with a PROXY header (else the first bytes
//! would be read as HTTP); one that does not is closed. The header's source address becomes
//! the client address only when the TCP peer is in `trusted_proxies`: anyone else's header is
//! read and ignored, as nginx does with `set_real_ip_from`. `LOCAL` (v2) and `UNKNOWN` (v1),
//! which balancers send for their own health checks, keep the TCP peer.
//!
//! Exactly the header's bytes are consumed: what follows stays in the socket for TLS or HTTP.

use std::fmt;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The v2 signature.
pub const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// A v1 line is at most 107 bytes, CRLF included.
const V1_MAX: usize = 107;
/// The longest v2 header accepted (16 bytes + addresses + TLVs). Balancers add a few small
/// TLVs (AWS: the VPC endpoint id, Azure: the link id); a large one is not from a balancer.
const V2_MAX: usize = 16 + 2048;

/// What a PROXY header said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Header {
    /// The original connection's source and destination.
    Proxied {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// The balancer's own connection (v2 `LOCAL`, v1 `UNKNOWN`, or an address family other
    /// than IPv4/IPv6): the TCP peer is the client.
    Local,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Error {
    /// The connection does not start with a PROXY header.
    Missing,
    /// It starts like one but is not a valid one.
    Malformed(&'static str),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("no PROXY protocol header"),
            Self::Malformed(why) => write!(f, "malformed PROXY protocol header: {why}"),
        }
    }
}

/// Read the PROXY header at the start of `stream`, consuming exactly its bytes.
pub async fn read(stream: &mut TcpStream) -> io::Result<Result<Header, Error>> {
    let mut head = [0u8; 16];
    // 15 bytes is the shortest v1 line ("PROXY UNKNOWN\r\n"); v2 has a 16-byte fixed part.
    stream.read_exact(&mut head[..15]).await?;
    if head[..12] == V2_SIGNATURE {
        stream.read_exact(&mut head[15..16]).await?;
        let len = usize::from(u16::from_be_bytes([head[14], head[15]]));
        if 16 + len > V2_MAX {
            return Ok(Err(Error::Malformed("v2 header longer than 2 KiB")));
        }
        let mut rest = vec![0u8; len];
        stream.read_exact(&mut rest).await?;
        return Ok(parse_v2(&head, &rest));
    }
    if &head[..6] != b"PROXY " {
        return Ok(Err(Error::Missing));
    }
    // v1: up to the CRLF. What is already buffered is looked at first, so the whole line
    // usually comes in one read; byte by byte otherwise.
    let mut line = Vec::with_capacity(V1_MAX);
    line.extend_from_slice(&head[..15]);
    if !line.ends_with(b"\r\n") {
        let mut peeked = [0u8; V1_MAX];
        let n = stream.peek(&mut peeked[..V1_MAX - 15]).await?;
        if let Some(end) = peeked[..n].windows(2).position(|w| w == b"\r\n") {
            let mut take = vec![0u8; end + 2];
            stream.read_exact(&mut take).await?;
            line.extend_from_slice(&take);
        } else {
            let mut byte = [0u8; 1];
            while !line.ends_with(b"\r\n") {
                if line.len() >= V1_MAX {
                    return Ok(Err(Error::Malformed("v1 line longer than 107 bytes")));
                }
                stream.read_exact(&mut byte).await?;
                line.push(byte[0]);
            }
        }
    }
    Ok(parse_v1(&line))
}

/// Parse a whole v1 line, CRLF included.
pub fn parse_v1(line: &[u8]) -> Result<Header, Error> {
    let bad = Error::Malformed;
    let text = line
        .strip_suffix(b"\r\n")
        .ok_or(bad("v1 line does not end in CRLF"))?;
    if line.len() > V1_MAX {
        return Err(bad("v1 line longer than 107 bytes"));
    }
    let text = std::str::from_utf8(text).map_err(|_| bad("v1 line is not ASCII"))?;
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(Error::Missing);
    }
    let family = fields.next().ok_or(bad("v1 line has no protocol"))?;
    if family == "UNKNOWN" {
        // "the receiver must ignore anything presented before the CRLF"
        return Ok(Header::Local);
    }
    let v6 = match family {
        "TCP4" => false,
        "TCP6" => true,
        _ => return Err(bad("v1 protocol is not TCP4, TCP6 or UNKNOWN")),
    };
    let (Some(src), Some(dst), Some(sport), Some(dport), None) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return Err(bad("v1 line needs exactly: protocol, 2 addresses, 2 ports"));
    };
    let addr = |s: &str| -> Result<IpAddr, Error> {
        let ip = if v6 {
            s.parse::<Ipv6Addr>().map(IpAddr::V6)
        } else {
            s.parse::<Ipv4Addr>().map(IpAddr::V4)
        };
        ip.map_err(|_| bad("v1 address does not match its protocol"))
    };
    let port = |s: &str| -> Result<u16, Error> {
        if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("v1 port is not a number"));
        }
        if s.len() > 1 && s.starts_with('0') {
            return Err(bad("v1 port has a leading zero"));
        }
        s.parse().map_err(|_| bad("v1 port is over 65535"))
    };
    Ok(Header::Proxied {
        source: SocketAddr::new(addr(src)?, port(sport)?),
        destination: SocketAddr::new(addr(dst)?, port(dport)?),
    })
}

/// Parse a v2 header: the 16-byte fixed part and the `len` bytes after it.
pub fn parse_v2(head: &[u8; 16], rest: &[u8]) -> Result<Header, Error> {
    let bad = Error::Malformed;
    if head[..12] != V2_SIGNATURE {
        return Err(Error::Missing);
    }
    if head[12] >> 4 != 2 {
        return Err(bad("v2 version is not 2"));
    }
    let local = match head[12] & 0x0f {
        0 => true,
        1 => false,
        _ => return Err(bad("v2 command is not LOCAL or PROXY")),
    };
    if usize::from(u16::from_be_bytes([head[14], head[15]])) != rest.len() {
        return Err(bad("v2 length does not match"));
    }
    if local {
        // Addresses, if any, are to be ignored.
        return Ok(Header::Local);
    }
    let (family, transport) = (head[13] >> 4, head[13] & 0x0f);
    if transport > 2 {
        return Err(bad("v2 transport is not UNSPEC, STREAM or DGRAM"));
    }
    match family {
        // AF_INET: 4 + 4 + 2 + 2
        1 => {
            let a = rest
                .get(..12)
                .ok_or(bad("v2 IPv4 addresses are cut short"))?;
            let ip = |o: usize| IpAddr::V4(Ipv4Addr::new(a[o], a[o + 1], a[o + 2], a[o + 3]));
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0), port(8)),
                destination: SocketAddr::new(ip(4), port(10)),
            })
        }
        // AF_INET6: 16 + 16 + 2 + 2
        2 => {
            let a = rest
                .get(..36)
                .ok_or(bad("v2 IPv6 addresses are cut short"))?;
            let ip = |o: usize| {
                let mut b = [0u8; 16];
                b.copy_from_slice(&a[o..o + 16]);
                IpAddr::V6(Ipv6Addr::from(b))
            };
            let port = |o: usize| u16::from_be_bytes([a[o], a[o + 1]]);
            Ok(Header::Proxied {
                source: SocketAddr::new(ip(0), port(32)),
                destination: SocketAddr::new(ip(16), port(34)),
            })
        }
        // AF_UNSPEC and AF_UNIX: no usable client address; the TCP peer stands.
        0 | 3 => Ok(Header::Local),
        _ => Err(bad("v2 address family is unknown")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2(cmd: u8, fam: u8, body: &[u8]) -> ([u8; 16], Vec<u8>) {
        let mut head = [0u8; 16];
        head[..12].copy_from_slice(&V2_SIGNATURE);
        head[12] = 0x20 | cmd;
        head[13] = fam;
        head[14..].copy_from_slice(&(body.len() as u16).to_be_bytes());
        (head, body.to_vec())
    }

    #[test]
    fn v1_lines_from_the_specification() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"),
            Ok(Header::Proxied {
                source: "192.168.0.1:56324".parse().unwrap(),
                destination: "192.168.0.11:443".parse().unwrap(),
            })
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n"),
            Ok(Header::Proxied {
                source: "[2001:db8::1]:1".parse().unwrap(),
                destination: "[2001:db8::2]:65535".parse().unwrap(),
            })
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n"), Ok(Header::Local));
        assert_eq!(
            parse_v1(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n"),
            Ok(Header::Local)
        );
    }

    #[test]
    fn malformed_v1_lines_are_refused() {
        for line in [
            &b"PROXY TCP4 192.168.0.1 192.168.0.11 56324\r\n"[..],
            b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443 extra\r\n",
            b"PROXY TCP4 2001:db8::1 192.168.0.11 1 2\r\n",
            b"PROXY TCP6 192.168.0.1 2001:db8::2 1 2\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 65536 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 0443 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 +1 443\r\n",
            b"PROXY TCP4  192.168.0.1 192.168.0.11 1 443\r\n",
            b"PROXY UDP4 192.168.0.1 192.168.0.11 1 443\r\n",
            b"PROXY TCP4 192.168.0.1 192.168.0.11 1 443\n",
        ] {
            assert!(
                matches!(parse_v1(line), Err(Error::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn v2_headers_with_and_without_tlvs() {
        let mut body = vec![10, 0, 0, 7, 10, 0, 0, 1];
        body.extend_from_slice(&40000u16.to_be_bytes());
        body.extend_from_slice(&443u16.to_be_bytes());
        let (h, r) = v2(1, 0x11, &body);
        assert_eq!(
            parse_v2(&h, &r),
            Ok(Header::Proxied {
                source: "10.0.0.7:40000".parse().unwrap(),
                destination: "10.0.0.1:443".parse().unwrap(),
            })
        );
        // A TLV after the addresses (PP2_TYPE_AUTHORITY) is skipped.
        body.extend_from_slice(&[0x02, 0x00, 0x03, b'a', b'.', b'b']);
        let (h, r) = v2(1, 0x11, &body);
        assert!(matches!(parse_v2(&h, &r), Ok(Header::Proxied { .. })));

        let mut body6 = Vec::new();
        body6.extend_from_slice(&"2001:db8::7".parse::<Ipv6Addr>().unwrap().octets());
        body6.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        body6.extend_from_slice(&[0x12, 0x34, 0x01, 0xbb]);
        let (h, r) = v2(1, 0x21, &body6);
        assert_eq!(
            parse_v2(&h, &r),
            Ok(Header::Proxied {
                source: "[2001:db8::7]:4660".parse().unwrap(),
                destination: "[2001:db8::1]:443".parse().unwrap(),
            })
        );
        // LOCAL: the balancer's health check.
        let (h, r) = v2(0, 0x00, &[]);
        assert_eq!(parse_v2(&h, &r), Ok(Header::Local));
    }

    #[test]
    fn malformed_v2_headers_are_refused() {
        let (mut h, r) = v2(1, 0x11, &[1, 2, 3]);
        assert!(
            matches!(parse_v2(&h, &r), Err(Error::Malformed(_))),
            "short"
        );
        h[12] = 0x11;
        assert!(matches!(parse_v2(&h, &r), Err(Error::Malformed(_))), "v1");
        let (mut h, r) = v2(1, 0x11, &[0; 12]);
        h[12] = 0x2f;
        assert!(matches!(parse_v2(&h, &r), Err(Error::Malformed(_))), "cmd");
        let (h, r) = v2(1, 0x51, &[0; 12]);
        assert!(
            matches!(parse_v2(&h, &r), Err(Error::Malformed(_))),
            "family"
        );
    }
}
