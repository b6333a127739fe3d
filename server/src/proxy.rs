//! The PROXY protocol (HAProxy's, versions 1 and 2): a load balancer in
//! front of pop3sd prepends the real client's address to the TCP stream.
//!
//! Parsing is a pure function over the bytes received so far (fuzzed in
//! `fuzz/`): it says "need more", "here is the header and its length", or
//! why the bytes are not a PROXY header. Whether to believe a header is the
//! driver's decision: only peers in the configured trusted networks may send
//! one, and on a PROXY listener every connection from them must.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// v2 signature: `\r\n\r\n\0\r\nQUIT\n`.
const V2_SIG: [u8; 12] = [
    0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A,
];
/// Longest v1 line, CRLF included (spec section 2.1).
const V1_MAX: usize = 107;
/// Largest v2 header we accept (address block plus TLVs).
const V2_MAX: usize = 16 + 1024;

/// A parsed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyHeader {
    /// Bytes the header occupied (application data follows).
    pub len: usize,
    /// The original client, or None for LOCAL / UNKNOWN (health checks:
    /// use the connection's own peer address).
    pub source: Option<SocketAddr>,
}

/// Why bytes are not a valid PROXY header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    #[error("no PROXY protocol signature")]
    NotProxy,
    #[error("malformed PROXY v1 line")]
    BadV1,
    #[error("malformed PROXY v2 header")]
    BadV2,
    #[error("PROXY header too long")]
    TooLong,
}

/// Result of looking at the bytes received so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parse {
    Complete(ProxyHeader),
    Incomplete,
}

/// Parses a PROXY header at the start of `buf`.
pub fn parse(buf: &[u8]) -> Result<Parse, ProxyError> {
    if buf.is_empty() {
        return Ok(Parse::Incomplete);
    }
    let sig_len = buf.len().min(V2_SIG.len());
    if buf[..sig_len] == V2_SIG[..sig_len] {
        return parse_v2(buf);
    }
    let v1 = b"PROXY ";
    let n = buf.len().min(v1.len());
    if buf[..n] == v1[..n] {
        return parse_v1(buf);
    }
    Err(ProxyError::NotProxy)
}

fn parse_v1(buf: &[u8]) -> Result<Parse, ProxyError> {
    let Some(end) = buf.iter().take(V1_MAX).position(|&b| b == b'\n') else {
        return if buf.len() >= V1_MAX {
            Err(ProxyError::TooLong)
        } else {
            Ok(Parse::Incomplete)
        };
    };
    if end == 0 || buf[end - 1] != b'\r' {
        return Err(ProxyError::BadV1);
    }
    let line = std::str::from_utf8(&buf[..end - 1]).map_err(|_| ProxyError::BadV1)?;
    let fields: Vec<&str> = line.split(' ').collect();
    let header = |source| {
        Ok(Parse::Complete(ProxyHeader {
            len: end + 1,
            source,
        }))
    };
    match fields.as_slice() {
        ["PROXY", "UNKNOWN", ..] => header(None),
        ["PROXY", proto @ ("TCP4" | "TCP6"), src, dst, sport, dport] => {
            let src: IpAddr = src.parse().map_err(|_| ProxyError::BadV1)?;
            let _dst: IpAddr = dst.parse().map_err(|_| ProxyError::BadV1)?;
            let port = |p: &str| {
                if p.len() > 1 && p.starts_with('0') {
                    return Err(ProxyError::BadV1);
                }
                p.parse::<u16>().map_err(|_| ProxyError::BadV1)
            };
            let sport = port(sport)?;
            port(dport)?;
            let family_ok = matches!(
                (*proto, src),
                ("TCP4", IpAddr::V4(_)) | ("TCP6", IpAddr::V6(_))
            );
            if !family_ok {
                return Err(ProxyError::BadV1);
            }
            header(Some(SocketAddr::new(src, sport)))
        }
        _ => Err(ProxyError::BadV1),
    }
}

fn parse_v2(buf: &[u8]) -> Result<Parse, ProxyError> {
    if buf.len() < 16 {
        return Ok(Parse::Incomplete);
    }
    let ver_cmd = buf[12];
    if ver_cmd >> 4 != 2 {
        return Err(ProxyError::BadV2);
    }
    let cmd = ver_cmd & 0x0F;
    let fam = buf[13];
    let len = u16::from_be_bytes([buf[14], buf[15]]) as usize;
    if 16 + len > V2_MAX {
        return Err(ProxyError::TooLong);
    }
    if buf.len() < 16 + len {
        return Ok(Parse::Incomplete);
    }
    let body = &buf[16..16 + len];
    let total = 16 + len;
    match cmd {
        // LOCAL: the proxy's own connection (health check).
        0 => Ok(Parse::Complete(ProxyHeader {
            len: total,
            source: None,
        })),
        1 => {
            let source = match fam {
                // TCP or UDP over IPv4: src(4) dst(4) sport(2) dport(2).
                0x11 | 0x12 => {
                    if body.len() < 12 {
                        return Err(ProxyError::BadV2);
                    }
                    let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
                    Some(SocketAddr::new(
                        IpAddr::V4(ip),
                        u16::from_be_bytes([body[8], body[9]]),
                    ))
                }
                // Over IPv6: src(16) dst(16) sport(2) dport(2).
                0x21 | 0x22 => {
                    if body.len() < 36 {
                        return Err(ProxyError::BadV2);
                    }
                    let mut a = [0u8; 16];
                    a.copy_from_slice(&body[..16]);
                    Some(SocketAddr::new(
                        IpAddr::V6(Ipv6Addr::from(a)),
                        u16::from_be_bytes([body[32], body[33]]),
                    ))
                }
                // UNSPEC or Unix sockets: no usable address.
                _ => None,
            };
            Ok(Parse::Complete(ProxyHeader { len: total, source }))
        }
        _ => Err(ProxyError::BadV2),
    }
}

/// Networks allowed to send PROXY headers.
#[derive(Debug, Clone, Default)]
pub struct TrustedNetworks(Vec<ipnet::IpNet>);

impl TrustedNetworks {
    /// Parses CIDR strings ("127.0.0.1/32", "10.0.0.0/8", "::1/128"); a bare
    /// address means just that host.
    pub fn parse<S: AsRef<str>>(items: &[S]) -> Result<Self, String> {
        let mut v = Vec::new();
        for s in items {
            let s = s.as_ref();
            let net = match s.parse::<ipnet::IpNet>() {
                Ok(n) => n,
                Err(_) => match s.parse::<IpAddr>() {
                    Ok(ip) => ipnet::IpNet::from(ip),
                    Err(_) => return Err(format!("{s:?} is not an address or CIDR network")),
                },
            };
            v.push(net);
        }
        Ok(TrustedNetworks(v))
    }

    /// True when `ip` is in one of the networks (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// True when no network is trusted.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1() {
        let h = b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 995\r\n+rest";
        assert_eq!(
            parse(h),
            Ok(Parse::Complete(ProxyHeader {
                len: 45,
                source: Some("192.0.2.7:56324".parse().unwrap())
            }))
        );
        assert_eq!(parse(&h[..20]), Ok(Parse::Incomplete));
        assert_eq!(parse(b"PRO"), Ok(Parse::Incomplete));
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\n"),
            Ok(Parse::Complete(ProxyHeader {
                len: 15,
                source: None
            }))
        );
        let v6 = b"PROXY TCP6 2001:db8::1 2001:db8::2 1 2\r\n";
        assert!(matches!(
            parse(v6),
            Ok(Parse::Complete(ProxyHeader {
                source: Some(_),
                ..
            }))
        ));
        for bad in [
            &b"PROXY TCP4 192.0.2.7 198.51.100.1 56324\r\n"[..],
            b"PROXY TCP4 2001:db8::1 198.51.100.1 1 2\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 65536 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 01 1\r\n",
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 1\n",
        ] {
            assert!(parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse(&[b'P'; 200]), Err(ProxyError::NotProxy));
        let mut long = b"PROXY ".to_vec();
        long.extend_from_slice(&[b'x'; 200]);
        assert_eq!(parse(&long), Err(ProxyError::TooLong));
        assert_eq!(parse(b"USER x\r\n"), Err(ProxyError::NotProxy));
    }

    #[test]
    fn v2() {
        let mut h = V2_SIG.to_vec();
        h.extend_from_slice(&[
            0x21, 0x11, 0, 12, 192, 0, 2, 7, 198, 51, 100, 1, 0xDC, 0x04, 0x03, 0xE3,
        ]);
        h.extend_from_slice(b"data");
        assert_eq!(
            parse(&h),
            Ok(Parse::Complete(ProxyHeader {
                len: 28,
                source: Some("192.0.2.7:56324".parse().unwrap())
            }))
        );
        for cut in 0..28 {
            assert_eq!(parse(&h[..cut]), Ok(Parse::Incomplete), "cut {cut}");
        }
        let mut local = V2_SIG.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(
            parse(&local),
            Ok(Parse::Complete(ProxyHeader {
                len: 16,
                source: None
            }))
        );
        let mut bad = V2_SIG.to_vec();
        bad.extend_from_slice(&[0x31, 0x11, 0, 0]);
        assert_eq!(parse(&bad), Err(ProxyError::BadV2));
        let mut short = V2_SIG.to_vec();
        short.extend_from_slice(&[0x21, 0x11, 0, 4, 1, 2, 3, 4]);
        assert_eq!(parse(&short), Err(ProxyError::BadV2));
        let mut huge = V2_SIG.to_vec();
        huge.extend_from_slice(&[0x21, 0x11, 0xFF, 0xFF]);
        assert_eq!(parse(&huge), Err(ProxyError::TooLong));
    }

    #[test]
    fn trusted() {
        let t = TrustedNetworks::parse(&["127.0.0.1/32", "10.0.0.0/8", "::1"]).unwrap();
        assert!(t.contains("127.0.0.1".parse().unwrap()));
        assert!(!t.contains("127.0.0.2".parse().unwrap()));
        assert!(t.contains("10.9.8.7".parse().unwrap()));
        assert!(t.contains("::ffff:10.1.1.1".parse().unwrap()));
        assert!(t.contains("::1".parse().unwrap()));
        assert!(TrustedNetworks::parse(&["nonsense"]).is_err());
    }
}
