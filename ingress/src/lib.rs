//! The ingress tier: the HTTP API users call. It queues each request on the JetStream requests
//! stream with its own reply subject in a header (under this instance's, with a secret token), and
//! waits for the reply that the finishing tier publishes there.
//!
//! The same classification is offered to NATS services on `clothesline.classify` ([`service`]).
//! A request with the caller's own id is idempotent across replicas ([`idempotency`]).
//!
//! [`run`] takes its shutdown future so tests control it; [`api::app`] builds the router from a
//! state whose [`backend::Backend`] can be faked in unit tests.

pub mod api;
pub mod backend;
pub mod call;
pub mod canned;
pub mod config;
pub mod error;
pub mod idempotency;
pub mod metrics;
pub mod micro;
pub mod replies;
pub mod server;
pub mod service;
pub mod trace;
pub mod ui;

use std::future::Future;
use std::sync::Arc;

pub use api::app;
pub use call::AppState;
pub use config::Config;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::backend::NatsBackend;
use crate::idempotency::Idempotent;
use crate::metrics::Metrics;
use crate::replies::ReplyRouter;

/// Runs the ingress until `shutdown` resolves, then drains in-flight requests ([`server`]).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
    serve(config, listener, shutdown).await
}

/// Like [`run`], on a listener the caller bound (tests bind port 0).
pub async fn serve(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let metrics = Metrics::new();
    let instance = config
        .instance_id
        .clone()
        .unwrap_or_else(protocol::meta::new_request_id);
    let client = config
        .nats
        .connect(&format!("clothesline-ingress-{instance}"))
        .await?;
    let js = async_nats::jetstream::new(client.clone());
    let subjects = protocol::reply_to::IngressReplies::new(&instance)?;
    let router = ReplyRouter::new(subjects, metrics.clone());
    let routing = router.start(&client).await?;

    let nats_backend = Arc::new(NatsBackend {
        client: client.clone(),
        js: js.clone(),
        router: router.clone(),
    });
    let state = AppState {
        backend: Arc::new(Idempotent::new(
            nats_backend,
            js,
            instance.clone(),
            metrics.clone(),
        )),
        metrics,
        inflight: Arc::new(Semaphore::new(config.max_inflight)),
        default_timeout: config.default_timeout(),
        max_timeout: config.max_timeout(),
        max_body_bytes: config.max_body_bytes,
        max_batch_urls: config.max_batch_urls,
    };
    let token = CancellationToken::new();
    let service = (!config.service_subject.is_empty()).then(|| {
        let serving = service::serve(
            client.clone(),
            config.service_subject.clone(),
            state.clone(),
            token.clone(),
        );
        tokio::spawn(async move {
            if let Err(e) = serving.await {
                tracing::error!(error = %e, "NATS service failed");
            }
        })
    });
    tracing::info!(addr = %listener.local_addr()?, replies = router.subscription(), "ingress listening");
    let stop = token.clone();
    tokio::spawn(async move {
        shutdown.await;
        stop.cancel();
    });
    server::serve(
        listener,
        app(state.clone()),
        config.server_limits(),
        state.metrics.clone(),
        token,
    )
    .await;
    if let Some(service) = service {
        service.await.ok();
    }
    tracing::info!("HTTP server and NATS service drained; closing NATS");
    routing.abort();
    // Bounded: with the server gone, the client's command queue can be full and never drain.
    let last_steps = tokio::time::Instant::now() + tierkit::runtime::LAST_STEPS;
    tierkit::runtime::bounded(last_steps, "drain NATS", client.drain()).await;
    Ok(())
}
