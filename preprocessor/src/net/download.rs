//! Bounded image downloads: a connect timeout, a total timeout (capped by the request's
//! deadline), a byte cap enforced while the body streams in, redirects followed by hand (each hop
//! checked again), and connections only to addresses the policy allows.
//!
//! Errors say what failed without echoing credentials (a URL's userinfo is redacted from every
//! message), and only what may succeed later is transient: an origin that does not speak the
//! expected protocol (TLS to a plain-HTTP port, a malformed status line or header) is answered
//! `origin_error` at once.

use std::error::Error as StdError;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use protocol::redact::redact_urls;
use protocol::{Error, ErrorCode};
use reqwest::header::{ACCEPT, LOCATION};
use reqwest::{Client, Response, StatusCode, Url, redirect};

use super::address;
use super::resolver::{BlockedAddressError, GuardedResolver};

/// Largest buffer reserved up front from a `Content-Length`.
const MAX_PREALLOC: u64 = 1 << 20;

/// What a download may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DownloadPolicy {
    /// Time to establish one TCP (+TLS) connection.
    pub connect_timeout: Duration,
    /// Time for the whole download: every hop, headers and body.
    pub timeout: Duration,
    /// Largest body accepted; checked against `Content-Length` and while streaming.
    pub max_bytes: u64,
    /// Most redirects followed.
    pub max_redirects: u32,
    /// Allow loopback, private and other non-public addresses (tests, local use).
    pub allow_private_addresses: bool,
    /// Host names answered with these addresses instead of a DNS lookup (like curl's
    /// `--resolve`), still subject to the address policy.
    pub resolve: Vec<(String, IpAddr)>,
}

impl Default for DownloadPolicy {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            timeout: Duration::from_secs(10),
            max_bytes: 8 << 20,
            max_redirects: 5,
            allow_private_addresses: false,
            resolve: Vec::new(),
        }
    }
}

/// A downloaded body.
#[derive(Debug, Clone)]
pub struct Downloaded {
    pub bytes: Bytes,
    /// The URL the body came from, after redirects.
    pub url: Url,
    pub redirects: u32,
    pub elapsed: Duration,
}

/// An HTTP client with a [`DownloadPolicy`]; cheap to clone, share one per process.
#[derive(Debug, Clone)]
pub struct Downloader {
    client: Client,
    policy: DownloadPolicy,
}

impl Downloader {
    pub fn new(policy: DownloadPolicy) -> anyhow::Result<Self> {
        let client = Client::builder()
            .user_agent(concat!(
                "clothesline-preprocessor/",
                env!("CARGO_PKG_VERSION")
            ))
            .connect_timeout(policy.connect_timeout)
            .timeout(policy.timeout)
            .redirect(redirect::Policy::none())
            // A proxy would resolve names itself, out of the policy's reach.
            .no_proxy()
            .dns_resolver(GuardedResolver::new(
                policy.allow_private_addresses,
                &policy.resolve,
            ))
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(8)
            .build()?;
        Ok(Self { client, policy })
    }

    pub fn policy(&self) -> &DownloadPolicy {
        &self.policy
    }

    /// Downloads `url`. `deadline`, the time left until the request's deadline, caps the
    /// download's time; running out of it is `deadline_exceeded` rather than `download_timeout`.
    pub async fn download(
        &self,
        url: &str,
        deadline: Option<Duration>,
    ) -> Result<Downloaded, Error> {
        self.download_unredacted(url, deadline)
            .await
            .map_err(|mut e| {
                if let std::borrow::Cow::Owned(clean) = redact_urls(&e.message) {
                    e.message = clean;
                }
                e
            })
    }

    async fn download_unredacted(
        &self,
        url: &str,
        deadline: Option<Duration>,
    ) -> Result<Downloaded, Error> {
        let started = Instant::now();
        let url = address::parse_url(url)?;
        let (limit, by_deadline) = match deadline {
            Some(left) if left < self.policy.timeout => (left, true),
            _ => (self.policy.timeout, false),
        };
        match tokio::time::timeout(limit, self.fetch(url.clone())).await {
            Ok(Ok((bytes, url, redirects))) => Ok(Downloaded {
                bytes,
                url,
                redirects,
                elapsed: started.elapsed(),
            }),
            Ok(Err(e)) => Err(e),
            Err(_) if by_deadline => Err(Error::new(
                ErrorCode::DeadlineExceeded,
                format!("the request's deadline passed while downloading {url}"),
            )),
            Err(_) => Err(timeout(&url, self.policy.timeout)),
        }
    }

    async fn fetch(&self, mut url: Url) -> Result<(Bytes, Url, u32), Error> {
        let mut redirects = 0;
        loop {
            if !self.policy.allow_private_addresses {
                address::check_literal_host(&url)?;
            }
            let response = self
                .client
                .get(url.clone())
                .header(ACCEPT, "image/*")
                .send()
                .await
                .map_err(|e| self.classify(&e, &url))?;
            let status = response.status();
            if status.is_redirection() && status != StatusCode::NOT_MODIFIED {
                if redirects >= self.policy.max_redirects {
                    return Err(Error::new(
                        ErrorCode::OriginError,
                        format!(
                            "{url} redirects more than {} times",
                            self.policy.max_redirects
                        ),
                    ));
                }
                let location = response
                    .headers()
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok());
                url = redirect_target(&url, status, location, self.policy.allow_private_addresses)?;
                redirects += 1;
                continue;
            }
            if !status.is_success() {
                let message = format!("origin answered {status} for {url}");
                return Err(if retry_worthy(status) {
                    Error::transient(ErrorCode::OriginError, message)
                } else {
                    Error::new(ErrorCode::OriginError, message)
                });
            }
            let bytes = self.read_body(response, &url).await?;
            return Ok((bytes, url, redirects));
        }
    }

    /// Reads the body, refusing it as soon as it is known to exceed the cap.
    async fn read_body(&self, mut response: Response, url: &Url) -> Result<Bytes, Error> {
        let max = self.policy.max_bytes;
        if let Some(len) = response.content_length().filter(|&l| l > max) {
            return Err(too_large(url, max, Some(len)));
        }
        let reserve = response.content_length().unwrap_or(0).min(MAX_PREALLOC);
        let mut body = BytesMut::with_capacity(usize::try_from(reserve).unwrap_or(0));
        while let Some(chunk) = response.chunk().await.map_err(|e| self.classify(&e, url))? {
            if body.len() as u64 + chunk.len() as u64 > max {
                return Err(too_large(url, max, None));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    }

    /// Maps a client error to the contract's codes.
    fn classify(&self, error: &reqwest::Error, url: &Url) -> Error {
        if let Some(blocked) = find_source::<BlockedAddressError>(error) {
            return address::blocked(&blocked.host, blocked.ip);
        }
        let detail = error_chain(error);
        if error.is_timeout() && !error.is_connect() {
            return timeout(url, self.policy.timeout);
        }
        if let Some(what) = protocol_failure(error) {
            return Error::new(
                ErrorCode::OriginError,
                format!("{url} {what}; not retried: {detail}"),
            );
        }
        if error.is_builder() {
            return Error::new(
                ErrorCode::InvalidUrl,
                format!("cannot fetch {url}: {detail}"),
            );
        }
        let what = if error.is_connect() {
            "cannot connect to"
        } else {
            "connection failed while downloading"
        };
        Error::new(
            ErrorCode::OriginUnreachable,
            format!("{what} {url}: {detail}"),
        )
    }
}

/// An origin's answer worth retrying later: a server error (5xx, except 501 Not Implemented and
/// 505, which the same request will get again), 408 Request Timeout and 429 Too Many Requests.
pub fn retry_worthy(status: StatusCode) -> bool {
    (status.is_server_error()
        && status != StatusCode::NOT_IMPLEMENTED
        && status != StatusCode::HTTP_VERSION_NOT_SUPPORTED)
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
}

/// The next URL of a redirect from `url` (answered `status` with the `Location` header
/// `location`), checked like the first one: http or https, and, unless `allow_private`, not an IP
/// literal outside the public address space. A host name in it is checked when it is resolved,
/// as every hop's connection goes through the guarded resolver.
pub fn redirect_target(
    url: &Url,
    status: StatusCode,
    location: Option<&str>,
    allow_private: bool,
) -> Result<Url, Error> {
    let location = location.ok_or_else(|| {
        Error::new(
            ErrorCode::OriginError,
            format!("origin answered {status} without a usable Location for {url}"),
        )
    })?;
    let next = url.join(location).map_err(|e| {
        Error::new(
            ErrorCode::InvalidUrl,
            format!("{url} redirects to {location:?}, which does not parse: {e}"),
        )
    })?;
    address::check_url(&next)?;
    if !allow_private {
        address::check_literal_host(&next)?;
    }
    Ok(next)
}

fn too_large(url: &Url, max: u64, declared: Option<u64>) -> Error {
    let size = match declared {
        Some(len) => format!("is {len} bytes"),
        None => "is larger".into(),
    };
    Error::new(
        ErrorCode::TooLarge,
        format!("the image at {url} {size}, at most {max} bytes allowed"),
    )
}

fn timeout(url: &Url, limit: Duration) -> Error {
    Error::new(
        ErrorCode::DownloadTimeout,
        format!(
            "downloading {url} took longer than {} ms",
            limit.as_millis()
        ),
    )
}

/// What is wrong when the origin does not speak the protocol expected of it: the same request
/// would fail the same way, so it is not worth a retry. `None` for other failures.
fn protocol_failure(error: &(dyn StdError + 'static)) -> Option<&'static str> {
    if find_source::<rustls::Error>(error).is_some() {
        return Some("failed the TLS handshake (a plain-HTTP port, or a certificate refused)");
    }
    match find_source::<hyper::Error>(error) {
        Some(e) if e.is_parse() || e.is_parse_status() || e.is_parse_too_large() => {
            Some("answered something that is not a valid HTTP response")
        }
        _ => None,
    }
}

/// The first error of type `T` in `error`'s source chain, also inside `io::Error`s (whose
/// `source` skips the error they wrap).
fn find_source<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| find_source::<T>(inner))
        {
            return Some(inner);
        }
        current = e.source();
    }
    None
}

/// `error` and its sources, as `a: b: c` (the client's own message alone says little).
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut parts = vec![error.to_string()];
    let mut current = error.source();
    while let Some(e) = current {
        let text = e.to_string();
        if parts.last() != Some(&text) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_errors_and_throttling_are_worth_a_retry_client_errors_are_not() {
        for code in [500, 502, 503, 504, 408, 429, 599] {
            let status = StatusCode::from_u16(code).expect("status");
            assert!(retry_worthy(status), "{code}");
        }
        for code in [400, 401, 403, 404, 410, 451, 501, 505] {
            let status = StatusCode::from_u16(code).expect("status");
            assert!(!retry_worthy(status), "{code}");
        }
    }
}
