//! Who is calling, by network address: the client IP (through trusted proxies only) and the allow/deny lists.
//!
//! `X-Forwarded-For` is honoured only when the peer is a configured trusted proxy, and then read from the right:
//! the client is the first address that is not itself a trusted proxy. Anyone else's `X-Forwarded-For` is
//! ignored, so a client cannot pick its own address to dodge per-IP limits or pass an allow list.

use std::net::IpAddr;

use actix_web::{HttpMessage, HttpRequest, http::header::HeaderMap};
use ipnet::IpNet;

/// Address-based policy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetworkPolicy {
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// When non-empty, only clients in these networks are served.
    pub allow: Vec<IpNet>,
    /// Clients in these networks are refused (checked before `allow`).
    pub deny: Vec<IpNet>,
}

/// The client's address, resolved once per request and kept in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// An IPv4-mapped IPv6 address (`::ffff:10.0.0.1`, as dual-stack sockets report) compares as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_any(nets: &[IpNet], ip: IpAddr) -> bool {
    nets.iter().any(|net| net.contains(&ip))
}

/// One `X-Forwarded-For` entry: an address, optionally with a port (`1.2.3.4:5`, `[::1]:5`).
fn parse_entry(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry.parse::<IpAddr>().ok().or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|s| s.ip())).map(canonical)
}

impl NetworkPolicy {
    /// The client address of a request that came from `peer` with these headers.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let mut client = canonical(peer);
        if !in_any(&self.trusted_proxies, client) {
            return client;
        }
        // All X-Forwarded-For headers, in order, as one list; walk it from the nearest hop back.
        let hops: Vec<&str> =
            headers.get_all("x-forwarded-for").filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')).collect();
        for hop in hops.iter().rev() {
            match parse_entry(hop) {
                Some(ip) => {
                    client = ip;
                    if !in_any(&self.trusted_proxies, ip) {
                        break;
                    }
                }
                // Garbage in the chain: stop at the last address a trusted proxy vouched for.
                None => break,
            }
        }
        client
    }

    /// Whether the lists let `ip` in.
    pub fn admits(&self, ip: IpAddr) -> bool {
        !in_any(&self.deny, ip) && (self.allow.is_empty() || in_any(&self.allow, ip))
    }
}

/// The client IP recorded for this request (the peer address if none was recorded, e.g. in unit tests).
pub(crate) fn client_ip(req: &HttpRequest) -> IpAddr {
    req.extensions()
        .get::<ClientIp>()
        .map(|c| c.0)
        .or_else(|| req.peer_addr().map(|a| canonical(a.ip())))
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::{HeaderName, HeaderValue};

    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|n| n.parse().unwrap_or_else(|e| panic!("{n}: {e}"))).collect()
    }

    fn xff(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for v in values {
            headers.append(
                HeaderName::from_static("x-forwarded-for"),
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        headers
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let policy = NetworkPolicy { trusted_proxies: nets(&["10.0.0.0/8"]), ..NetworkPolicy::default() };
        let headers = xff(&["203.0.113.9"]);
        assert_eq!(policy.client_ip(ip("198.51.100.1"), &headers), ip("198.51.100.1"), "untrusted peer");
        assert_eq!(policy.client_ip(ip("10.1.2.3"), &headers), ip("203.0.113.9"), "trusted peer");
        assert_eq!(policy.client_ip(ip("10.1.2.3"), &HeaderMap::new()), ip("10.1.2.3"), "no header");
    }

    #[test]
    fn the_chain_is_read_from_the_right_past_trusted_hops_only() {
        let policy = NetworkPolicy { trusted_proxies: nets(&["10.0.0.0/8"]), ..NetworkPolicy::default() };
        // The client forged "1.1.1.1"; its real address was appended by the first trusted proxy.
        let spoofed = xff(&["1.1.1.1, 203.0.113.9", "10.0.0.5"]);
        assert_eq!(policy.client_ip(ip("10.0.0.7"), &spoofed), ip("203.0.113.9"));
        let garbage = xff(&["203.0.113.9, not-an-ip, 10.0.0.5"]);
        assert_eq!(policy.client_ip(ip("10.0.0.7"), &garbage), ip("10.0.0.5"), "stops at garbage");
        let ported = xff(&["[2001:db8::1]:4711"]);
        assert_eq!(policy.client_ip(ip("10.0.0.7"), &ported), ip("2001:db8::1"));
        let mapped = NetworkPolicy::default().client_ip(ip("::ffff:192.0.2.1"), &HeaderMap::new());
        assert_eq!(mapped, ip("192.0.2.1"), "v4-mapped peers compare as v4");
    }

    #[test]
    fn deny_wins_over_allow_and_an_empty_allow_list_admits_all() {
        let open = NetworkPolicy { deny: nets(&["192.0.2.0/24"]), ..NetworkPolicy::default() };
        assert!(open.admits(ip("198.51.100.1")) && !open.admits(ip("192.0.2.7")));
        let closed = NetworkPolicy {
            allow: nets(&["10.0.0.0/8", "2001:db8::/32"]),
            deny: nets(&["10.9.0.0/16"]),
            ..NetworkPolicy::default()
        };
        assert!(closed.admits(ip("10.1.1.1")) && closed.admits(ip("2001:db8::5")));
        assert!(!closed.admits(ip("10.9.1.1")), "deny wins");
        assert!(!closed.admits(ip("198.51.100.1")), "not allowed");
    }
}
