//! Which URLs and addresses the preprocessor may fetch from. A request names any URL it likes;
//! without a policy, `http://169.254.169.254/` or `http://10.0.0.5:8222/` would make this tier a
//! proxy into the cluster (SSRF). Only globally routable unicast addresses are allowed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use protocol::{Error, ErrorCode};
use reqwest::Url;

/// Longest URL accepted.
pub const MAX_URL_LEN: usize = 8192;

/// Parses and checks a URL from a request: http or https, with a host, at most
/// [`MAX_URL_LEN`] bytes. `invalid_url` otherwise.
pub fn parse_url(url: &str) -> Result<Url, Error> {
    if url.len() > MAX_URL_LEN {
        return Err(Error::new(
            ErrorCode::InvalidUrl,
            format!(
                "URL is {} bytes long, at most {MAX_URL_LEN} allowed",
                url.len()
            ),
        ));
    }
    let parsed = Url::parse(url.trim()).map_err(|e| {
        Error::new(
            ErrorCode::InvalidUrl,
            format!("URL {url:?} does not parse: {e}"),
        )
    })?;
    check_url(&parsed)?;
    Ok(parsed)
}

/// Checks an already parsed URL (e.g. a redirect's target): http or https, with a host.
pub fn check_url(url: &Url) -> Result<(), Error> {
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Error::new(
            ErrorCode::InvalidUrl,
            format!(
                "URL scheme {:?} is not allowed: use http or https",
                url.scheme()
            ),
        ));
    }
    if url.host().is_none() {
        return Err(Error::new(
            ErrorCode::InvalidUrl,
            format!("URL {url} has no host"),
        ));
    }
    Ok(())
}

/// When the URL's host is an IP address (connections to those skip DNS, hence the resolver's
/// check), refuses it unless allowed. Host names are checked when they are resolved.
pub fn check_literal_host(url: &Url) -> Result<(), Error> {
    match literal_ip(url) {
        Some(ip) => check_ip(ip, url.host_str().unwrap_or_default()),
        None => Ok(()),
    }
}

/// The URL's host when it is an IP address (`url` normalises IPv4 forms such as `2130706433`
/// or `0x7f.1` to dotted quads, and writes IPv6 hosts in brackets).
pub fn literal_ip(url: &Url) -> Option<IpAddr> {
    let host = url.host_str()?;
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
        .parse()
        .ok()
}

/// `blocked_address` when `ip` is not [`is_allowed`]; `host` names it in the message.
pub fn check_ip(ip: IpAddr, host: &str) -> Result<(), Error> {
    if is_allowed(ip) {
        Ok(())
    } else {
        Err(blocked(host, ip))
    }
}

/// The error for a host that resolves to a refused address.
pub fn blocked(host: &str, ip: IpAddr) -> Error {
    Error::new(
        ErrorCode::BlockedAddress,
        format!("{host} resolves to {ip}, which is not a public address"),
    )
}

/// Whether `ip` is a globally routable unicast address: not loopback, private, shared (CGNAT),
/// link-local (cloud metadata), multicast, broadcast, unspecified, documentation, benchmarking or
/// reserved; for IPv6 only global unicast (`2000::/3`) minus its special ranges, and never an
/// IPv4-mapped or -compatible address. 6to4 and NAT64 addresses are judged by the IPv4 address
/// they embed.
pub fn is_allowed(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_allowed_v4(v4),
        IpAddr::V6(v6) => is_allowed_v6(v6),
    }
}

fn is_allowed_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let blocked = a == 0 // "this network", includes 0.0.0.0
        || a == 10
        || a == 127
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 169 && b == 254) // link-local, cloud metadata
        || (a == 172 && (16..32).contains(&b))
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // TEST-NET-1
        || (a == 192 && b == 88 && c == 99) // 6to4 relay anycast
        || (a == 192 && b == 168)
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || (a == 198 && b == 51 && c == 100) // TEST-NET-2
        || (a == 203 && b == 0 && c == 113) // TEST-NET-3
        || a >= 224; // multicast, reserved, broadcast
    !blocked
}

fn is_allowed_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // Only global unicast; this excludes ::, ::1, IPv4-mapped and -compatible addresses,
    // NAT64's 64:ff9b::/96 (handled below), fc00::/7, fe80::/10, fec0::/10 and ff00::/8.
    if s[0] == 0x0064 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_allowed_v4(embedded_v4(s[6], s[7])); // NAT64
    }
    if s[0] & 0xe000 != 0x2000 {
        return false;
    }
    match (s[0], s[1]) {
        (0x2001, 0x0db8) => false,                             // documentation
        (0x2001, x) if x < 0x0200 => false,                    // 2001::/23 IETF assignments, Teredo
        (0x2002, _) => is_allowed_v4(embedded_v4(s[1], s[2])), // 6to4
        (0x3fff, x) if x < 0x1000 => false,                    // 3fff::/20 documentation
        _ => true,
    }
}

fn embedded_v4(high: u16, low: u16) -> Ipv4Addr {
    let [a, b] = high.to_be_bytes();
    let [c, d] = low.to_be_bytes();
    Ipv4Addr::new(a, b, c, d)
}
