//! The ingress tier: the HTTP API users call. It queues each request on the JetStream requests
//! stream with its reply subject in a header, and waits for the reply that the finishing tier
//! publishes on this instance's reply subject.
//!
//! The same classification is offered to NATS services on `clothesline.classify` ([`service`]).
//!
//! [`run`] takes its shutdown future so tests control it; [`api::app`] builds the router from a
//! state whose [`backend::Backend`] can be faked in unit tests.

pub mod api;
pub mod backend;
pub mod call;
pub mod config;
pub mod error;
pub mod metrics;
pub mod replies;
pub mod service;
pub mod trace;

use std::future::Future;
use std::sync::Arc;

pub use api::app;
pub use call::AppState;
pub use config::Config;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::backend::NatsBackend;
use crate::metrics::Metrics;
use crate::replies::ReplyRouter;

/// Runs the ingress until `shutdown` resolves, then drains in-flight requests.
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
    let router = ReplyRouter::new(protocol::names::reply_subject(&instance), metrics.clone());
    let subscriber = client.subscribe(router.subject().to_string()).await?;
    let routing = tokio::spawn(router.clone().route(subscriber));

    let state = AppState {
        backend: Arc::new(NatsBackend {
            client: client.clone(),
            js,
            router: router.clone(),
        }),
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
    tracing::info!(addr = %listener.local_addr()?, reply_subject = router.subject(), "ingress listening");
    let stop = token.clone();
    let shutdown = async move {
        shutdown.await;
        stop.cancel();
    };
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    if let Some(service) = service {
        service.await.ok();
    }
    tracing::info!("HTTP server and NATS service drained; closing NATS");
    routing.abort();
    client.drain().await.ok();
    Ok(())
}
