//! The HTTP client's DNS resolver: it resolves host names itself and hands the client only the
//! addresses the policy allows, so the connection goes to an address that was checked (a second
//! lookup cannot return another one: no DNS rebinding). Every redirect hop and every new
//! connection goes through it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

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

/// A resolver that applies [`address::is_allowed`], unless private addresses are allowed. Static
/// overrides (host -> addresses) replace the DNS lookup for their hosts, and go through the same
/// policy.
#[derive(Debug, Clone)]
pub struct GuardedResolver {
    allow_private: bool,
    overrides: Arc<HashMap<String, Vec<IpAddr>>>,
}

impl GuardedResolver {
    pub fn new(allow_private: bool, overrides: &[(String, IpAddr)]) -> Self {
        let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (host, ip) in overrides {
            map.entry(host.to_ascii_lowercase()).or_default().push(*ip);
        }
        Self {
            allow_private,
            overrides: Arc::new(map),
        }
    }
}

impl Resolve for GuardedResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let host = name.as_str().to_owned();
        let allow_private = self.allow_private;
        let overridden = self.overrides.get(&host.to_ascii_lowercase()).cloned();
        Box::pin(async move {
            let found: Vec<SocketAddr> = match overridden {
                Some(ips) => ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect(),
                None => tokio::net::lookup_host((host.as_str(), 0))
                    .await?
                    .take(MAX_ADDRS)
                    .collect(),
            };
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

    #[tokio::test]
    async fn overrides_replace_the_lookup_and_still_meet_the_policy() {
        let overrides = [
            (
                "Images.Example.com".to_string(),
                "127.0.0.1".parse().unwrap(),
            ),
            (
                "public.example".to_string(),
                "93.184.215.14".parse().unwrap(),
            ),
        ];
        let strict = GuardedResolver::new(false, &overrides);
        let name = |h: &str| h.parse::<Name>().unwrap();
        let err = match strict.resolve(name("images.example.com")).await {
            Ok(_) => panic!("a name overridden to loopback must be refused"),
            Err(e) => e,
        };
        assert!(err.downcast_ref::<BlockedAddressError>().is_some(), "{err}");
        let addrs: Vec<_> = strict
            .resolve(name("public.example"))
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs, [addr("93.184.215.14")]);
        let open = GuardedResolver::new(true, &overrides);
        let addrs: Vec<_> = open
            .resolve(name("images.example.com"))
            .await
            .unwrap()
            .collect();
        assert_eq!(addrs, [addr("127.0.0.1")]);
    }
}
