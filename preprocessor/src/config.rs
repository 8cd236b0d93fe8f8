//! Command line and environment of the preprocessor tier; every option has an environment
//! variable.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use tierkit::runtime::{LogArgs, NatsArgs};

use crate::imaging::{DEFAULT_MAX_PIXELS, ImageSpec};
use crate::net::DownloadPolicy;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "clothesline-preprocessor",
    version,
    about = "Pulls classification requests, downloads and decodes the images, publishes uint8 NHWC tensors."
)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// The model manifest: input size and preprocessing, model name and version.
    #[arg(long, env = "MODEL_MANIFEST", default_value = protocol::manifest::DEFAULT_MANIFEST)]
    pub manifest: PathBuf,
    /// Address of the /healthz, /readyz and /metrics server.
    #[arg(long, env = "PREPROCESSOR_HTTP_ADDR", default_value = "0.0.0.0:9091")]
    pub http_addr: SocketAddr,
    /// Most requests in flight in this process; when reached, no more are pulled.
    #[arg(long, env = "PREPROCESSOR_CONCURRENCY", default_value_t = 64,
          value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub concurrency: u32,
    /// Most images decoded and resized at once (blocking threads); default: the number of cores.
    #[arg(long, env = "PREPROCESSOR_CPU_THREADS", default_value_t = default_cpu_threads(),
          value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub cpu_threads: u32,
    /// Time for a whole download (all redirects, headers and body), in milliseconds.
    #[arg(long, env = "PREPROCESSOR_DOWNLOAD_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub download_timeout_ms: u64,
    /// Time to connect to an origin, in milliseconds.
    #[arg(long, env = "PREPROCESSOR_CONNECT_TIMEOUT_MS", default_value_t = 3_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_timeout_ms: u64,
    /// Largest image downloaded, in bytes (enforced while streaming).
    #[arg(long, env = "PREPROCESSOR_MAX_DOWNLOAD_BYTES", default_value_t = 8 << 20,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_download_bytes: u64,
    /// Largest image decoded, in pixels (checked on the header, before decoding).
    #[arg(long, env = "PREPROCESSOR_MAX_PIXELS", default_value_t = DEFAULT_MAX_PIXELS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pixels: u64,
    /// Most scans in a JPEG (libjpeg-turbo's scan limit); progressive JPEGs are also refused
    /// over `max-pixels x 10` pixel-scans, the bound on a decode's work.
    #[arg(long, env = "PREPROCESSOR_MAX_JPEG_SCANS", default_value_t = crate::imaging::DEFAULT_MAX_SCANS)]
    pub max_jpeg_scans: u32,
    /// Most redirects followed per download.
    #[arg(long, env = "PREPROCESSOR_MAX_REDIRECTS", default_value_t = 5,
          value_parser = clap::value_parser!(u32).range(0..=20))]
    pub max_redirects: u32,
    /// Allow downloads from loopback, private, link-local and other non-public addresses.
    /// Only for tests and local use: it lets any request reach into the network.
    #[arg(long, env = "PREPROCESSOR_ALLOW_PRIVATE_ADDRESSES")]
    pub allow_private_addresses: bool,
    /// Host names to answer without DNS, as `host=ip` (comma separated or repeated), like curl's
    /// --resolve; the addresses still go through the address policy.
    #[arg(long, env = "PREPROCESSOR_RESOLVE", value_delimiter = ',', value_parser = parse_resolve)]
    pub resolve: Vec<(String, IpAddr)>,
    /// Delay before a request that failed transiently is redelivered, in milliseconds.
    #[arg(long, env = "PREPROCESSOR_RETRY_DELAY_MS", default_value_t = 1_000)]
    pub retry_delay_ms: u64,
    /// On shutdown, how long to wait for requests in flight, in milliseconds.
    #[arg(long, env = "PREPROCESSOR_SHUTDOWN_GRACE_MS", default_value_t = 20_000)]
    pub shutdown_grace_ms: u64,
    /// Skip requests whose caller went away (ids published on clothesline.cancel); `false`
    /// processes them anyway, e.g. to measure what cancellation saves.
    #[arg(long, env = "PREPROCESSOR_HONOR_CANCELLATIONS", default_value_t = true,
          action = clap::ArgAction::Set)]
    pub honor_cancellations: bool,
}

/// `host=ip` for `--resolve`.
fn parse_resolve(s: &str) -> Result<(String, IpAddr), String> {
    let (host, ip) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected host=ip"))?;
    let host = host.trim();
    if host.is_empty() || host.contains(|c: char| c.is_whitespace() || c == '/' || c == ':') {
        return Err(format!("{s:?}: {host:?} is not a host name"));
    }
    let ip = ip
        .trim()
        .parse()
        .map_err(|e| format!("{s:?}: {ip:?} is not an IP address: {e}"))?;
    Ok((host.to_string(), ip))
}

/// The number of cores, at least 1.
pub fn default_cpu_threads() -> u32 {
    std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX).min(1024))
        .unwrap_or(1)
}

impl Config {
    /// The defaults with `nats_url` and `manifest`, private addresses allowed: for tests.
    pub fn local(nats_url: impl Into<String>, manifest: impl Into<PathBuf>) -> Self {
        let mut config =
            Self::parse_from(["clothesline-preprocessor", "--allow-private-addresses"]);
        config.nats = NatsArgs::local(nats_url);
        config.manifest = manifest.into();
        config.http_addr = SocketAddr::from(([127, 0, 0, 1], 0));
        config
    }

    pub fn download_policy(&self) -> DownloadPolicy {
        DownloadPolicy {
            connect_timeout: Duration::from_millis(self.connect_timeout_ms),
            timeout: Duration::from_millis(self.download_timeout_ms),
            max_bytes: self.max_download_bytes,
            max_redirects: self.max_redirects,
            allow_private_addresses: self.allow_private_addresses,
            resolve: self.resolve.clone(),
        }
    }

    /// The image spec for a model's manifest, with this config's pixel limit.
    pub fn image_spec(&self, manifest: &protocol::Manifest) -> ImageSpec {
        ImageSpec::from_manifest(manifest)
            .with_max_pixels(self.max_pixels)
            .with_max_scans(self.max_jpeg_scans)
    }

    pub fn retry_delay(&self) -> Duration {
        Duration::from_millis(self.retry_delay_ms)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_contract() {
        let c = Config::try_parse_from(["p"]).expect("defaults parse");
        assert_eq!(c.manifest, PathBuf::from("model/manifest.json"));
        assert_eq!(c.http_addr.port(), 9091);
        assert_eq!((c.concurrency, c.max_redirects), (64, 5));
        assert_eq!(c.max_download_bytes, 8 * 1024 * 1024);
        assert_eq!(c.max_pixels, 40_000_000);
        assert!(!c.allow_private_addresses);
        assert!(c.cpu_threads >= 1);
        let p = c.download_policy();
        assert_eq!(p.timeout, Duration::from_secs(10));
        assert_eq!(p.connect_timeout, Duration::from_secs(3));
        assert_eq!(c.retry_delay(), Duration::from_secs(1));
        assert!(Config::try_parse_from(["p", "--concurrency", "0"]).is_err());
        assert!(Config::local("nats://127.0.0.1:1", "m.json").allow_private_addresses);
    }

    #[test]
    fn resolve_overrides_parse_as_host_and_ip() {
        let c = Config::try_parse_from([
            "p",
            "--resolve",
            "images.example.com=10.0.0.7,cdn.example.net=::1",
        ])
        .expect("parses");
        let want: Vec<(String, IpAddr)> = vec![
            ("images.example.com".into(), "10.0.0.7".parse().unwrap()),
            ("cdn.example.net".into(), "::1".parse().unwrap()),
        ];
        assert_eq!(c.download_policy().resolve, want);
        for bad in [
            "nohost",
            "=1.2.3.4",
            "a.b=not-an-ip",
            "a b=1.2.3.4",
            "a:80=1.2.3.4",
        ] {
            assert!(
                Config::try_parse_from(["p", "--resolve", bad]).is_err(),
                "{bad}"
            );
        }
    }
}
