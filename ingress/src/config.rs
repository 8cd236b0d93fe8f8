//! Command-line and environment configuration of the ingress.

use std::net::SocketAddr;
use std::time::Duration;

use tierkit::runtime::{LogArgs, NatsArgs};

#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "clothesline-ingress",
    version,
    about = "HTTP front door of clothesline"
)]
pub struct Config {
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub log: LogArgs,
    /// Address the HTTP API listens on.
    #[arg(long, env = "INGRESS_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// Deadline of a request when the caller asks for none, in milliseconds.
    #[arg(long, env = "INGRESS_TIMEOUT_MS", default_value_t = 30_000)]
    pub timeout_ms: u64,
    /// Longest deadline a caller may ask for (`X-Request-Timeout-Ms`), in milliseconds.
    #[arg(long, env = "INGRESS_MAX_TIMEOUT_MS", default_value_t = 120_000)]
    pub max_timeout_ms: u64,
    /// Requests in flight in this instance; beyond it, 429 at once.
    #[arg(long, env = "INGRESS_MAX_INFLIGHT", default_value_t = 1024)]
    pub max_inflight: usize,
    /// Largest accepted request body (uploaded image or JSON), in bytes.
    #[arg(long, env = "INGRESS_MAX_BODY_BYTES", default_value_t = 8 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Most URLs in one `POST /v1/classify/batch` call.
    #[arg(long, env = "INGRESS_MAX_BATCH_URLS", default_value_t = 32)]
    pub max_batch_urls: usize,
    /// Subject of the NATS request-reply service (registered with the NATS services API);
    /// empty to disable it.
    #[arg(long, env = "INGRESS_SERVICE_SUBJECT", default_value = protocol::names::SERVICE_SUBJECT)]
    pub service_subject: String,
    /// Time for a client to send a request's headers, counted from the connection's start or
    /// the end of its previous response (so also how long an idle keep-alive connection stays).
    #[arg(long, env = "INGRESS_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,
    /// Most HTTP connections open at once; one more is answered 503 and closed.
    #[arg(long, env = "INGRESS_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// On shutdown, how long slow clients (still sending headers or a body) may stay.
    #[arg(long, env = "INGRESS_SLOW_CLIENT_GRACE_MS", default_value_t = 1_000)]
    pub slow_client_grace_ms: u64,
    /// On shutdown, how long requests in flight may take before every connection is closed.
    #[arg(long, env = "INGRESS_SHUTDOWN_GRACE_MS", default_value_t = 20_000)]
    pub shutdown_grace_ms: u64,
    /// Name of this instance in its reply subject (`clothesline.replies.<id>`); unique per
    /// process by default.
    #[arg(long, env = "INGRESS_INSTANCE_ID")]
    pub instance_id: Option<String>,
}

impl Config {
    pub fn default_timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }

    pub fn max_timeout(&self) -> Duration {
        Duration::from_millis(self.max_timeout_ms)
    }

    /// The HTTP server's limits on clients.
    pub fn server_limits(&self) -> crate::server::Limits {
        crate::server::Limits {
            header_timeout: Duration::from_millis(self.header_timeout_ms),
            max_connections: self.max_connections,
            slow_client_grace: Duration::from_millis(self.slow_client_grace_ms),
            shutdown_grace: Duration::from_millis(self.shutdown_grace_ms),
        }
    }
}
