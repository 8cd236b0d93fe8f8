//! The tier's main loop: load the manifest, serve health and metrics, connect to NATS, wait for
//! the durable consumer, then pull requests and handle up to `concurrency` at once. A message is
//! pulled only once a slot is free: that is the backpressure. On shutdown, stop pulling, hand
//! back (nak, no delay) what arrives for the last pull, and let the requests in flight finish
//! within the grace period; those still running then are handed back too: scale-in loses no
//! request to the ack wait. Every wait on NATS while stopping is bounded ([`Grace`]), so the
//! process exits in time whatever NATS does.

use std::future::Future;
use std::sync::Arc;

use anyhow::Context as _;
use async_nats::jetstream;
use protocol::Manifest;
use protocol::names::{PREPROCESSOR_CONSUMER, REQUESTS_STREAM};
use tierkit::cancel;
use tierkit::provision::wait_for_consumer;
use tierkit::pull::{PullSource, Pulled, hand_back};
use tierkit::runtime::{Grace, token_from};
use tierkit::worker::{Health, Readiness, flush_within};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::Downloader;
use crate::pipeline::Pipeline;
use crate::router::{Router, Target};
use crate::settle::Settler;

/// What a request's task needs.
#[derive(Clone)]
struct Handler {
    pipeline: Pipeline,
    settler: Settler,
}

/// Runs the tier until `shutdown` resolves, then drains and returns.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = token_from(shutdown);
    let grace = Grace::on_cancel(&token, config.shutdown_grace());
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

    let readiness = Arc::new(Readiness::new(REQUESTS_STREAM, PREPROCESSOR_CONSUMER));
    // Up until `run` returns: it answers "not ready" while the tier drains.
    let health = Health::serve(
        config.http_addr,
        readiness.clone(),
        metrics.registry.clone(),
    )
    .await?;
    tracing::info!(
        health_addr = %health.addr, model = %manifest.name, version = %manifest.version,
        width = manifest.input.width, height = manifest.input.height,
        concurrency = config.concurrency, cpu_threads = config.cpu_threads,
        allow_private_addresses = config.allow_private_addresses, "preprocessor starting"
    );

    let client = config.nats.connect("clothesline-preprocessor").await?;
    readiness.connected(&client);
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
    // Without the model buckets (not provisioned), the shipped model serves, as before.
    let registry = tierkit::models::Registry::open(&js).await;
    if registry.is_none() {
        tracing::info!("no model buckets in NATS: every request gets the shipped model");
    }
    let router = Router::new(Target::new(&manifest, pipeline.spec()), registry);
    let follower = tokio::spawn(router.clone().follow(token.clone()));
    let settler = Settler {
        router,
        js,
        client: client.clone(),
        metrics: metrics.clone(),
        retry_delay: config.retry_delay(),
        max_deliver: consumer.cached_info().config.max_deliver,
        cancelled: cancels.as_ref().map(|(set, _)| set.clone()),
    };

    let mut source = PullSource::start(
        consumer,
        config.concurrency as usize,
        &token,
        &grace,
        "requests",
    );
    readiness.pulling_from(&source);
    let handler = Handler { pipeline, settler };
    let mut in_flight = InFlight::default();
    consume(&mut source, &token, &handler, &mut in_flight).await;

    readiness.stopping();
    follower.abort();
    // What arrives for the last pull is handed back once it ends, while the requests in flight
    // finish.
    tokio::join!(source.drain(Vec::new()), in_flight.drain(&grace));
    flush_within(&client, &grace).await;
    tracing::info!("preprocessor stopped");
    Ok(())
}

/// Starts each request the source pulls on a task of its own, until `token` is cancelled. The
/// source pulls no more requests than there are free slots (each request holds one until it is
/// handled), so every request that arrives starts at once.
async fn consume(
    source: &mut PullSource,
    token: &CancellationToken,
    handler: &Handler,
    in_flight: &mut InFlight,
) {
    loop {
        let pulled = tokio::select! {
            _ = token.cancelled() => return,
            p = source.next() => p,
        };
        let Some(pulled) = pulled else {
            return;
        };
        in_flight.reap();
        in_flight.start(pulled, handler);
    }
}

/// The requests being handled, each on a task of its own.
#[derive(Default)]
struct InFlight {
    tasks: JoinSet<()>,
    /// Cancelled when the grace period is over: each task still running hands its request back.
    abandon: CancellationToken,
}

impl InFlight {
    /// Handles the pulled message on a task of its own, holding its credit (its slot) until done.
    fn start(&mut self, pulled: Pulled, handler: &Handler) {
        let Pulled { msg, credit } = pulled;
        let Handler { pipeline, settler } = handler.clone();
        let abandon = self.abandon.clone();
        let inflight = settler.metrics.inflight.clone();
        let span = crate::trace::item_span(&msg);
        inflight.inc();
        self.tasks.spawn(async move {
            let _credit = credit;
            let _gauge = GaugeGuard(inflight);
            let handling = settler.handle(&pipeline, msg.clone()).instrument(span);
            tokio::select! {
                () = handling => {}
                () = abandon.cancelled() => hand_back(std::slice::from_ref(&msg)).await,
            }
        });
    }

    /// Collects the tasks that ended.
    fn reap(&mut self) {
        while let Some(done) = self.tasks.try_join_next() {
            log_panic(done);
        }
    }

    /// Waits for the requests in flight until the grace period's work ends; those still running
    /// then are handed back (nak, no delay: another preprocessor takes them at once, instead of
    /// after the ack wait), within the grace's last steps.
    async fn drain(&mut self, grace: &Grace) {
        if self.tasks.is_empty() {
            return;
        }
        tracing::info!(
            in_flight = self.tasks.len(),
            "waiting for requests in flight"
        );
        if self.join_all_until(grace.work_ends()).await {
            return;
        }
        tracing::warn!(
            abandoned = self.tasks.len(),
            "grace period over; handing back the requests still in flight"
        );
        self.abandon.cancel();
        if !self.join_all_until(grace.ends()).await {
            self.tasks.shutdown().await;
        }
    }

    /// Whether every task ended before `deadline`.
    async fn join_all_until(&mut self, deadline: tokio::time::Instant) -> bool {
        let all_done = async {
            while let Some(done) = self.tasks.join_next().await {
                log_panic(done);
            }
        };
        tokio::time::timeout_at(deadline, all_done).await.is_ok()
    }
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
