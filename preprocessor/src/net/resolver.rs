//! The HTTP client's DNS resolver: it resolves host names itself and hands the client only the
//! addresses the policy allows, so the connection goes to an address that was checked (a second
//! lookup cannot return another one: no DNS rebinding). Every redirect hop and every new
//! connection goes through it.

use std::net::{IpAddr, SocketAddr};

use reqwest::dns::{Addrs, Name, Resolve, Resolving};

use super::address;

/// Most addresses kept from one lookup.
const MAX_ADDRS: usize = 16;

/// The error a lookup returns when every address of a host is refused; found again in the
/// client's error chain to answer `blocked_address` rather than `origin_unreachable`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{host} resolves to {ip}, which is not a public address")]
pub struct BlockedAddressError {
    pub host: String,
    pub ip: IpAddr,
}

/// A resolver that applies [`address::is_allowed`], unless private addresses are allowed.
#[derive(Debug, Clone, Copy)]
pub struct GuardedResolver {
    pub allow_private: bool,
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let allow_private = self.allow_private;
        Box::pin(async move {
            let found: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .take(MAX_ADDRS)
                .collect();
            let allowed = filter(&host, found, allow_private)?;
            Ok(Box::new(allowed.into_iter()) as Addrs)
        })
    }
}

/// Keeps the allowed addresses; when none is left, the first refused one is the error.
pub fn filter(
    host: &str,
    found: Vec<SocketAddr>,
    allow_private: bool,
) -> Result<Vec<SocketAddr>, BlockedAddressError> {
    if allow_private {
        return Ok(found);
    }
    let first_refused = found.iter().find(|a| !address::is_allowed(a.ip())).copied();
    let allowed: Vec<SocketAddr> = found
        .into_iter()
        .filter(|a| address::is_allowed(a.ip()))
        .collect();
    match first_refused {
        Some(refused) if allowed.is_empty() => Err(BlockedAddressError {
            host: host.to_owned(),
            ip: refused.ip(),
        }),
        _ => Ok(allowed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        SocketAddr::new(s.parse().unwrap(), 0)
    }

    #[test]
    fn refused_addresses_are_dropped_and_all_refused_is_an_error() {
        let mixed = vec![addr("10.0.0.1"), addr("8.8.8.8")];
        assert_eq!(
            filter("h", mixed.clone(), false).unwrap(),
            [addr("8.8.8.8")]
        );
        assert_eq!(filter("h", mixed.clone(), true).unwrap(), mixed);
        let err = filter("h", vec![addr("127.0.0.1"), addr("::1")], false).unwrap_err();
        assert_eq!(err.ip, "127.0.0.1".parse::<IpAddr>().unwrap());
        assert!(filter("h", vec![], false).unwrap().is_empty());
    }
}
