//! What every clothesline binary shares: NATS connection options, logging, the shutdown signal,
//! and the small HTTP server with `/healthz`, `/readyz` and `/metrics` that worker tiers expose.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often a tier pings its NATS server (see [`NatsArgs::connect`]).
pub const PING_INTERVAL: Duration = Duration::from_secs(5);

/// NATS connection options, shared by every tier's command line.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL(s), comma separated.
    #[arg(
        long = "nats-url",
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222"
    )]
    pub url: String,
    /// NATS credentials file (JWT + nkey seed).
    #[arg(long = "nats-creds", env = "NATS_CREDS")]
    pub creds: Option<std::path::PathBuf>,
    /// NATS user name (with --nats-password).
    #[arg(long = "nats-user", env = "NATS_USER")]
    pub user: Option<String>,
    /// NATS password.
    #[arg(long = "nats-password", env = "NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Prefix of this connection's reply inboxes (PubAcks, JetStream API answers). With per-role
    /// NATS users each role has its own (`_INBOX_<role>`, see nats/auth.conf), so no role can
    /// read another's replies.
    #[arg(
        long = "nats-inbox-prefix",
        env = "NATS_INBOX_PREFIX",
        default_value = "_INBOX"
    )]
    pub inbox_prefix: String,
}

impl NatsArgs {
    /// A one-shot job over JetStream (the provisioning and model commands): connects as `name`,
    /// runs `work`, flushes, all within `timeout`.
    pub async fn run_job<F, Fut>(
        &self,
        name: &str,
        timeout: Duration,
        work: F,
    ) -> anyhow::Result<()>
    where
        F: FnOnce(async_nats::jetstream::Context) -> Fut,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let job = async {
            let client = self.connect(name).await?;
            work(async_nats::jetstream::new(client.clone())).await?;
            client.flush().await?;
            anyhow::Ok(())
        };
        tokio::time::timeout(timeout, job).await.map_err(|_| {
            anyhow::anyhow!(
                "not done within {} s (NATS at {})",
                timeout.as_secs(),
                self.url
            )
        })?
    }

    pub fn local(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            creds: None,
            user: None,
            password: None,
            inbox_prefix: "_INBOX".into(),
        }
    }

    /// The server addresses of `--nats-url`: one URL, or several separated by commas (the
    /// servers of a cluster; the client picks one and fails over to the others).
    pub fn server_addrs(&self) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
        parse_server_addrs(&self.url)
    }

    /// Connects, naming the connection after the tier. The first connection is retried in the
    /// background, so a tier can start before NATS; readiness reports the connection state.
    pub async fn connect(&self, name: &str) -> anyhow::Result<async_nats::Client> {
        let mut opts = async_nats::ConnectOptions::new()
            .name(name)
            .retry_on_initial_connect()
            .max_reconnects(None)
            // A server cut off the network leaves a connection that looks open: pings every
            // PING_INTERVAL (two unanswered end it) make the client move to another server within
            // seconds instead of minutes (async-nats' default is 60 s).
            .ping_interval(PING_INTERVAL)
            .custom_inbox_prefix(&self.inbox_prefix)
            .event_callback(|event| async move { tracing::info!(%event, "nats connection event") });
        if let Some(creds) = &self.creds {
            opts = opts.credentials_file(creds).await?;
        }
        if let (Some(user), Some(password)) = (&self.user, &self.password) {
            opts = opts.user_and_password(user.clone(), password.clone());
        }
        Ok(opts.connect(self.server_addrs()?).await?)
    }
}

/// Splits a comma-separated list of NATS URLs (`nats://a:4222,nats://b:4222`; blanks around the
/// commas are ignored) into server addresses; a list with an empty or invalid entry is an error
/// naming that entry.
pub fn parse_server_addrs(urls: &str) -> anyhow::Result<Vec<async_nats::ServerAddr>> {
    urls.split(',')
        .map(str::trim)
        .map(|url| {
            anyhow::ensure!(!url.is_empty(), "empty NATS server URL in {urls:?}");
            url.parse::<async_nats::ServerAddr>()
                .map_err(|e| anyhow::anyhow!("invalid NATS server URL {url:?}: {e}"))
        })
        .collect()
}

/// Whether the client is connected right now.
pub fn nats_connected(client: &async_nats::Client) -> bool {
    client.connection_state() == async_nats::connection::State::Connected
}

/// Log output options.
#[derive(Debug, Clone, clap::Args)]
pub struct LogArgs {
    /// Log format: `plain` for people, `json` for log collectors.
    #[arg(long = "log-format", env = "LOG_FORMAT", default_value = "plain", value_parser = ["plain", "json"])]
    pub format: String,
    /// Log filter, as RUST_LOG (e.g. `info,clothesline_ingress=debug`).
    #[arg(long = "log", env = "RUST_LOG", default_value = "info")]
    pub filter: String,
}

impl LogArgs {
    /// Installs the log subscriber alone (tools without traces). Tiers call
    /// [`crate::telemetry::Telemetry::init`], which adds the OpenTelemetry layer when asked.
    pub fn init(&self) {
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        tracing_subscriber::registry().with(self.fmt_layer()).init();
    }

    /// The log layer, filtered by `--log`. JSON lines carry the fields of the spans they are
    /// in: a request's span declares `request_id`, `trace_id` and `span_id`.
    pub fn fmt_layer<S>(&self) -> Box<dyn tracing_subscriber::Layer<S> + Send + Sync>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use tracing_subscriber::Layer;
        let filter = tracing_subscriber::EnvFilter::try_new(&self.filter)
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
        let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        if self.format == "json" {
            layer.json().with_filter(filter).boxed()
        } else {
            layer.with_filter(filter).boxed()
        }
    }
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received, shutting down"),
        _ = term => tracing::info!("SIGTERM received, shutting down"),
    }
}

/// A token cancelled when `shutdown` resolves, for tasks that need to observe it many times.
pub fn token_from(shutdown: impl Future<Output = ()> + Send + 'static) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = shutdown => t.cancel(),
            _ = t.cancelled() => {}
        }
    });
    token
}

/// How long a stopping tier may spend on its last steps once its grace period is over: handing
/// back (nak) what it holds and flushing NATS. Whatever NATS does (gone, restarting, not
/// answering), a tier exits at most this long after its grace period.
pub const LAST_STEPS: Duration = Duration::from_secs(1);

/// A stopping tier's grace period, counted from the moment its shutdown token is cancelled:
/// its work in flight may run until [`Grace::work_ends`], every step after that (and every wait
/// on NATS while stopping) is bounded by [`Grace::ends`], [`LAST_STEPS`] later.
#[derive(Debug, Clone)]
pub struct Grace {
    period: Duration,
    began: Arc<OnceLock<Instant>>,
}

impl Grace {
    /// Starts counting `period` when `token` is cancelled.
    pub fn on_cancel(token: &CancellationToken, period: Duration) -> Self {
        let grace = Self {
            period,
            began: Arc::default(),
        };
        let (token, began) = (token.clone(), grace.began.clone());
        tokio::spawn(async move {
            token.cancelled().await;
            began.get_or_init(Instant::now);
        });
        grace
    }

    /// When shutdown began (now, if it has not begun or its start is not noted yet).
    fn began(&self) -> Instant {
        self.began.get().copied().unwrap_or_else(Instant::now)
    }

    /// When the work in flight must be done (or be given up).
    pub fn work_ends(&self) -> Instant {
        self.began() + self.period
    }

    /// When the process must be on its way out, whatever is still waiting on NATS.
    pub fn ends(&self) -> Instant {
        self.work_ends() + LAST_STEPS
    }
}

/// Runs one step of a shutdown until `deadline`; a step still waiting then (a flush or a nak to a
/// server that went away) is given up and logged, so the process still exits.
pub async fn bounded<T>(deadline: Instant, step: &str, f: impl Future<Output = T>) -> Option<T> {
    let done = tokio::time::timeout_at(deadline, f).await.ok();
    if done.is_none() {
        tracing::warn!(
            step,
            "shutdown step given up at the end of the grace period"
        );
    }
    done
}

/// Readiness check: `Ok` when ready, `Err(reason)` otherwise.
pub type ReadyCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

#[derive(Clone)]
struct HealthState {
    ready: ReadyCheck,
    registry: prometheus::Registry,
}

/// `/healthz` (alive), `/readyz` (the check), `/metrics` (Prometheus text format).
pub fn health_router(ready: ReadyCheck, registry: prometheus::Registry) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(HealthState { ready, registry })
}

async fn readyz(State(s): State<HealthState>) -> impl IntoResponse {
    match (s.ready)() {
        Ok(()) => (StatusCode::OK, "ready".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {reason}"),
        ),
    }
}

async fn metrics(State(s): State<HealthState>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        metrics_text(&s.registry),
    )
}

/// The registry's metrics in the Prometheus text format.
pub fn metrics_text(registry: &prometheus::Registry) -> String {
    let mut buf = String::new();
    let encoder = prometheus::TextEncoder::new();
    if let Err(e) = encoder.encode_utf8(&registry.gather(), &mut buf) {
        tracing::error!(error = %e, "cannot encode metrics");
    }
    buf
}

/// Serves [`health_router`] on `addr` until `shutdown` is cancelled; returns the bound address.
pub async fn serve_health(
    addr: SocketAddr,
    ready: ReadyCheck,
    registry: prometheus::Registry,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let app = health_router(ready, registry);
    let handle = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await });
        if let Err(e) = served.await {
            tracing::error!(error = %e, "health server failed");
        }
    });
    Ok((local, handle))
}

#[cfg(test)]
mod tests {
    use super::parse_server_addrs;

    #[test]
    fn several_comma_separated_urls_are_several_servers() {
        let addrs = parse_server_addrs("nats://10.0.0.1:4222, nats://nats-1.nats:4222,nats-2:4223")
            .unwrap();
        let hosts: Vec<_> = addrs
            .iter()
            .map(|a| (a.host().to_string(), a.port()))
            .collect();
        assert_eq!(
            hosts,
            [
                ("10.0.0.1".to_string(), 4222),
                ("nats-1.nats".to_string(), 4222),
                ("nats-2".to_string(), 4223)
            ]
        );
    }

    #[test]
    fn one_url_is_one_server() {
        assert_eq!(
            parse_server_addrs("nats://127.0.0.1:4222").unwrap().len(),
            1
        );
    }

    #[test]
    fn an_empty_or_invalid_entry_is_an_error_naming_it() {
        let e = parse_server_addrs("nats://a:4222,,nats://b:4222").unwrap_err();
        assert!(e.to_string().contains("empty NATS server URL"), "{e}");
        let e = parse_server_addrs("nats://a:4222,nats://b:notaport").unwrap_err();
        assert!(e.to_string().contains("nats://b:notaport"), "{e}");
    }
}
