//! The tier's main loop: load the manifest, serve health and metrics, connect to NATS, wait for
//! the durable consumer, then pull requests and handle up to `concurrency` at once. A message is
//! pulled only once a slot is free: that is the backpressure. On shutdown, stop pulling and let
//! the requests in flight finish (bounded by the grace period).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::PullConsumer};
use futures::StreamExt;
use protocol::Manifest;
use protocol::cancel;
use protocol::names::{PREPROCESSOR_CONSUMER, REQUESTS_STREAM};
use protocol::provision::wait_for_consumer;
use protocol::runtime::{ReadyCheck, nats_connected, serve_health, token_from};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::Downloader;
use crate::pipeline::Pipeline;
use crate::settle::Settler;

/// Pull requests with this idle heartbeat, so a dead pull is noticed.
const PULL_HEARTBEAT: Duration = Duration::from_secs(15);
/// Most wait between attempts to restart a failed pull.
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);

/// Readiness: connected to NATS, consumer found, not shutting down.
#[derive(Default)]
struct Readiness {
    client: OnceLock<async_nats::Client>,
    consumer_found: AtomicBool,
    stopping: AtomicBool,
}

impl Readiness {
    fn check(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        match self.client.get() {
            None => return Err("not connected to NATS yet".into()),
            Some(c) if !nats_connected(c) => return Err("NATS connection lost".into()),
            Some(_) => {}
        }
        if !self.consumer_found.load(Ordering::Relaxed) {
            return Err(format!(
                "consumer {PREPROCESSOR_CONSUMER} on stream {REQUESTS_STREAM} not found yet"
            ));
        }
        Ok(())
    }
}

/// Runs the tier until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = token_from(shutdown);
    let manifest = Manifest::load(&config.manifest)?;
    let metrics = Metrics::new().context("metrics")?;
    let downloader = Downloader::new(config.download_policy()).context("HTTP client")?;
    let pipeline = Pipeline::new(
        manifest.model_ref(),
        manifest.input.clone(),
        config.image_spec(&manifest),
        downloader,
        config.cpu_threads as usize,
        metrics.clone(),
    );

    let readiness = Arc::new(Readiness::default());
    let ready: ReadyCheck = {
        let r = readiness.clone();
        Arc::new(move || r.check())
    };
    // The health server outlives the drain: it stops when `run` returns.
    let health_token = CancellationToken::new();
    let _stop_health = health_token.clone().drop_guard();
    let (health_addr, _health) = serve_health(
        config.http_addr,
        ready,
        metrics.registry.clone(),
        health_token.clone(),
    )
    .await
    .with_context(|| format!("cannot serve health on {}", config.http_addr))?;
    tracing::info!(
        %health_addr, model = %manifest.name, version = %manifest.version,
        width = manifest.input.width, height = manifest.input.height,
        concurrency = config.concurrency, cpu_threads = config.cpu_threads,
        allow_private_addresses = config.allow_private_addresses, "preprocessor starting"
    );

    let client = config.nats.connect("clothesline-preprocessor").await?;
    let _ = readiness.client.set(client.clone());
    let js = jetstream::new(client.clone());
    let Some(consumer) =
        wait_for_consumer(&js, REQUESTS_STREAM, PREPROCESSOR_CONSUMER, &token).await
    else {
        tracing::info!("shut down before the consumer was found");
        return Ok(());
    };
    // Listening before readiness: a cancellation published once the tier is ready is seen.
    let received = metrics.cancellations_received.clone();
    let cancels = cancel::subscribe_if(config.honor_cancellations, &client, received)
        .await
        .context("cannot subscribe to cancellations")?;
    readiness.consumer_found.store(true, Ordering::Relaxed);
    let settler = Settler {
        js,
        client: client.clone(),
        metrics: metrics.clone(),
        retry_delay: config.retry_delay(),
        max_deliver: consumer.cached_info().config.max_deliver,
        cancelled: cancels.as_ref().map(|(set, _)| set.clone()),
    };

    let mut tasks = JoinSet::new();
    consume(&consumer, &config, &pipeline, &settler, &token, &mut tasks).await;

    readiness.stopping.store(true, Ordering::Relaxed);
    drain(&mut tasks, config.shutdown_grace()).await;
    if let Err(e) = client.flush().await {
        tracing::warn!(error = %e, "cannot flush NATS on shutdown");
    }
    tracing::info!("preprocessor stopped");
    Ok(())
}

/// Pulls and dispatches messages until `token` is cancelled; restarts a pull that ends.
async fn consume(
    consumer: &PullConsumer,
    config: &Config,
    pipeline: &Pipeline,
    settler: &Settler,
    token: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let slots = Arc::new(Semaphore::new(config.concurrency as usize));
    let mut restart_delay = Duration::from_millis(100);
    while !token.is_cancelled() {
        let pulled = consumer
            .stream()
            .max_messages_per_batch(config.concurrency as usize)
            .heartbeat(PULL_HEARTBEAT)
            .messages()
            .await;
        let mut messages = match pulled {
            Ok(m) => m,
            Err(e) => {
                tracing::warn!(error = %e, "cannot start pulling requests; retrying");
                pause(token, &mut restart_delay).await;
                continue;
            }
        };
        loop {
            // A free slot first, then a message: when all slots are busy, nothing is pulled.
            let permit = tokio::select! {
                _ = token.cancelled() => return,
                p = slots.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => return,
                },
            };
            while let Some(done) = tasks.try_join_next() {
                log_panic(done);
            }
            let next = tokio::select! {
                _ = token.cancelled() => return,
                m = messages.next() => m,
            };
            match next {
                Some(Ok(msg)) => {
                    restart_delay = Duration::from_millis(100);
                    let (pipeline, settler) = (pipeline.clone(), settler.clone());
                    let inflight = settler.metrics.inflight.clone();
                    let span = crate::trace::item_span(&msg);
                    inflight.inc();
                    tasks.spawn(async move {
                        let _permit = permit;
                        let _gauge = GaugeGuard(inflight);
                        settler.handle(&pipeline, msg).instrument(span).await;
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pulling requests failed");
                    pause(token, &mut restart_delay).await;
                }
                None => {
                    tracing::warn!("the pull ended; restarting it");
                    pause(token, &mut restart_delay).await;
                    break;
                }
            }
        }
    }
}

/// Waits for the requests in flight, at most `grace`; those still running then are abandoned
/// (their requests are redelivered after the consumer's ack wait).
async fn drain(tasks: &mut JoinSet<()>, grace: Duration) {
    if tasks.is_empty() {
        return;
    }
    tracing::info!(in_flight = tasks.len(), "waiting for requests in flight");
    let all_done = async {
        while let Some(done) = tasks.join_next().await {
            log_panic(done);
        }
    };
    if tokio::time::timeout(grace, all_done).await.is_err() {
        tracing::warn!(
            abandoned = tasks.len(),
            "grace period over; abandoning requests in flight (they will be redelivered)"
        );
        tasks.shutdown().await;
    }
}

async fn pause(token: &CancellationToken, delay: &mut Duration) {
    tokio::select! {
        _ = token.cancelled() => {}
        _ = tokio::time::sleep(*delay) => {}
    }
    *delay = (*delay * 2).min(MAX_RESTART_DELAY);
}

fn log_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(e) = done
        && e.is_panic()
    {
        tracing::error!(error = %e, "a request handler panicked; the request will be redelivered");
    }
}

/// Decrements the in-flight gauge when a handler ends, however it ends.
struct GaugeGuard(prometheus::IntGauge);

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
