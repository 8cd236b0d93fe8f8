//! The tier's main loop: load the manifest, serve health and metrics, connect to NATS, wait for
//! the durable consumer, then pull requests and handle up to `concurrency` at once. A message is
//! pulled only once a slot is free: that is the backpressure. On shutdown, stop pulling, hand
//! back (nak, no delay) what arrives for the last pull, and let the requests in flight finish
//! within the grace period; those still running then are handed back too: scale-in loses no
//! request to the ack wait. Every wait on NATS while stopping is bounded ([`Grace`]), so the
//! process exits in time whatever NATS does.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream::{self, AckKind, consumer::PullConsumer};
use futures::StreamExt;
use protocol::Manifest;
use protocol::names::{PREPROCESSOR_CONSUMER, REQUESTS_STREAM};
use tierkit::cancel;
use tierkit::provision::wait_for_consumer;
use tierkit::runtime::{Grace, ReadyCheck, bounded, nats_connected, serve_health, token_from};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio::time::sleep_until;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::net::Downloader;
use crate::pipeline::Pipeline;
use crate::router::{Router, Target};
use crate::settle::Settler;

/// How long one pull waits on the server for messages; a stopping preprocessor waits at most this
/// long for its open pull to end (handing back what arrives meanwhile).
const PULL_EXPIRES: Duration = Duration::from_secs(1);
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
    // Without the model buckets (not provisioned), the shipped model serves, as before.
    let registry = tierkit::models::Registry::open(&js).await;
    if registry.is_none() {
        tracing::info!("no model buckets in NATS: every request gets the shipped model");
    }
    let router = Router::new(Target::new(&manifest, pipeline.spec()), registry);
    let follower = tokio::spawn(router.clone().follow(token.clone()));
    readiness.consumer_found.store(true, Ordering::Relaxed);
    let settler = Settler {
        router,
        js,
        client: client.clone(),
        metrics: metrics.clone(),
        retry_delay: config.retry_delay(),
        max_deliver: consumer.cached_info().config.max_deliver,
        cancelled: cancels.as_ref().map(|(set, _)| set.clone()),
    };

    let mut in_flight = InFlight::default();
    let source = Source {
        consumer: &consumer,
        token: &token,
        grace: &grace,
    };
    consume(&source, &config, &pipeline, &settler, &mut in_flight).await;

    readiness.stopping.store(true, Ordering::Relaxed);
    follower.abort();
    in_flight.drain(&grace).await;
    if let Some(Err(e)) = bounded(grace.ends(), "flush NATS", client.flush()).await {
        tracing::warn!(error = %e, "cannot flush NATS on shutdown");
    }
    tracing::info!("preprocessor stopped");
    Ok(())
}

/// Where requests come from, and when to stop taking them.
struct Source<'a> {
    consumer: &'a PullConsumer,
    token: &'a CancellationToken,
    grace: &'a Grace,
}

/// Pulls and dispatches messages until `token` is cancelled. Each pull asks for as many messages
/// as there are free slots, so every message that arrives can start at once; what arrives for
/// the open pull after `token` is cancelled is handed back (nak, no delay) to the other
/// preprocessors once that pull has ended (at most [`PULL_EXPIRES`], or the end of the grace
/// period when the server does not end it), instead of waiting out the ack wait here. Handed back
/// earlier, a message could be redelivered into the same pull and bounce, spending its deliveries.
async fn consume(
    source: &Source<'_>,
    config: &Config,
    pipeline: &Pipeline,
    settler: &Settler,
    in_flight: &mut InFlight,
) {
    let Source {
        consumer,
        token,
        grace,
    } = *source;
    let slots = Arc::new(Semaphore::new(config.concurrency as usize));
    let mut restart_delay = Duration::from_millis(100);
    while !token.is_cancelled() {
        // Free slots first, then a pull for that many: when all slots are busy, nothing is pulled.
        let mut permits = tokio::select! {
            _ = token.cancelled() => return,
            p = slots.clone().acquire_owned() => match p {
                Ok(p) => vec![p],
                Err(_) => return,
            },
        };
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        in_flight.reap();
        let pulled = consumer
            .batch()
            .max_messages(permits.len())
            .expires(PULL_EXPIRES)
            .messages()
            .await;
        let mut batch = match pulled {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(error = %e, "cannot pull requests; retrying");
                pause(token, &mut restart_delay).await;
                continue;
            }
        };
        let mut stopping = false;
        // What arrives for the pull after `token` is cancelled; handed back once the pull has
        // ended, so it cannot come straight back to this pull.
        let mut held = Vec::new();
        loop {
            let next = tokio::select! {
                _ = token.cancelled(), if !stopping => {
                    stopping = true;
                    continue;
                }
                m = batch.next() => m,
                // A server gone away never ends the pull: stop waiting for it at the grace's end.
                _ = sleep_until(grace.work_ends()), if stopping => None,
            };
            match next {
                Some(Ok(msg)) => match permits.pop().filter(|_| !stopping) {
                    Some(permit) => {
                        restart_delay = Duration::from_millis(100);
                        in_flight.start(permit, pipeline, settler, msg);
                    }
                    None => held.push(msg),
                },
                Some(Err(e)) => {
                    tracing::warn!(error = %e, "pulling requests failed");
                    pause(token, &mut restart_delay).await;
                    break;
                }
                None => break,
            }
        }
        let hand_back_all = async {
            for msg in &held {
                hand_back(msg).await;
            }
        };
        if stopping {
            bounded(grace.ends(), "hand back requests", hand_back_all).await;
        } else {
            hand_back_all.await;
        }
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
    /// Handles `msg` on a task of its own, holding `permit` (its slot) until done.
    fn start(
        &mut self,
        permit: OwnedSemaphorePermit,
        pipeline: &Pipeline,
        settler: &Settler,
        msg: jetstream::Message,
    ) {
        let (pipeline, settler) = (pipeline.clone(), settler.clone());
        let abandon = self.abandon.clone();
        let inflight = settler.metrics.inflight.clone();
        let span = crate::trace::item_span(&msg);
        inflight.inc();
        self.tasks.spawn(async move {
            let _permit = permit;
            let _gauge = GaugeGuard(inflight);
            let handling = settler.handle(&pipeline, msg.clone()).instrument(span);
            tokio::select! {
                () = handling => {}
                () = abandon.cancelled() => hand_back(&msg).await,
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

/// Gives a message this process will not start back to the stream at once (stopping).
async fn hand_back(msg: &jetstream::Message) {
    tracing::debug!(subject = %msg.subject, "stopping: handing a request back");
    if let Err(e) = msg.ack_with(AckKind::Nak(None)).await {
        tracing::warn!(error = %e, "cannot hand a request back; redelivered after the ack wait");
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
