//! The gpu-worker tier: pulls preprocessed uint8 NHWC tensors from the tensors stream, runs them
//! through the TorchScript model in batches, and publishes each prediction to its caller.
//!
//! - [`config`]: command line and environment ([`Config`]);
//! - [`model`]: the checked TorchScript model ([`Model`]), usable on its own (tests, benchmarks);
//! - [`engine`]: the threads that own the model's replicas; the async side sends them batches;
//! - [`serving`]: the model versions served now, each with its engine; [`rollout`]: follows the
//!   serving policy in NATS, loading and retiring versions without a restart;
//! - [`gather`]: the batching policy; [`queue`]: the batcher's state (queue, engines busy,
//!   stopping), both without I/O; [`batcher`]: the task that feeds that state from the pull
//!   source ([`tierkit::pull`]) and carries out its decisions; [`admit`]: the checks a tensor
//!   passes before it is queued; [`batch`]: one batch on the engine, answered and acked;
//! - [`reply`]: replies over core NATS and acks; [`metrics`]: Prometheus metrics;
//! - [`malloc`]: glibc settings that keep the model's freed memory for the next batch;
//!   [`device_memory`]: the CUDA memory gauge, from NVML;
//! - [`testing`]: exports the tiny test model (needs Python with torch).
//!
//! [`run`] ties them together: health server first, then the model (loaded and warmed up on the
//! engine threads) and NATS side by side, ready when all three are; on shutdown it stops pulling,
//! hands back the tensors it holds but has not started, finishes the batches running within the
//! grace period (handing back those still running then) and returns, whatever NATS does.

pub mod admit;
pub mod batch;
pub mod batcher;
pub mod config;
pub mod device_memory;
pub mod engine;
pub mod gather;
pub mod leave;
pub mod malloc;
pub mod metrics;
pub mod model;
pub mod queue;
pub mod reply;
pub mod rollout;
pub mod serving;
pub mod testing;
pub mod trace;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::jetstream;
use protocol::Manifest;
use protocol::names::{GPU_WORKER_CONSUMER, TENSORS_STREAM};
use tierkit::cancel;
use tierkit::models::Registry;
use tierkit::provision::wait_for_consumer;
use tierkit::pull::PullSource;
use tierkit::runtime::{Grace, bounded, token_from};
use tierkit::worker::{Health, Readiness, flush_within};
use tokio_util::sync::CancellationToken;

pub use config::{Config, DeviceChoice};
pub use model::Model;

use crate::batch::BatchContext;
use crate::batcher::Batcher;
use crate::engine::{Engine, EngineOptions};
use crate::metrics::Metrics;
use crate::reply::Responder;
use crate::rollout::Follower;
use crate::serving::{Serving, Version};

/// How long a stopping worker waits for its model policy follower (at most: never beyond the
/// grace).
const FOLLOWER_STOPS_WITHIN: Duration = Duration::from_secs(2);

/// Runs the tier until `shutdown` resolves, then finishes the batches it holds and returns.
/// Fails if the model cannot be loaded, or the engine stops.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let token = token_from(shutdown);
    let grace = Grace::on_cancel(&token, Duration::from_millis(config.shutdown_grace_ms));
    let manifest = Manifest::load(&config.manifest)?;
    let metrics = Metrics::new();

    let readiness = Arc::new(
        Readiness::new(TENSORS_STREAM, GPU_WORKER_CONSUMER)
            .with_gate("model not loaded and warmed up yet"),
    );
    // Up until `run` returns: it answers "not ready" while the tier drains.
    let health = Health::serve(
        config.http_addr,
        readiness.clone(),
        metrics.registry.clone(),
    )
    .await?;
    tracing::info!(
        health_addr = %health.addr, model = %manifest.name, version = %manifest.version,
        device = %config.device,
        omp_wait_policy = std::env::var("OMP_WAIT_POLICY").as_deref().unwrap_or("(libgomp default)"),
        "gpu-worker starting"
    );

    // The model loads on its thread while NATS connects.
    let base = EngineOptions {
        manifest: manifest.clone(),
        model_bytes: None,
        device: config.device,
        half: config.half,
        replicas: config.engines.map(|n| n as usize),
        intra_op_threads: config.intra_op_threads.map(|n| n as usize),
        max_batch: config.max_batch.map(|n| n as usize),
        warmup_batches: config.warmup_batches as usize,
    };
    let engine = Engine::start(base.clone());
    let nats = async {
        let client = config.nats.connect("clothesline-gpu-worker").await?;
        readiness.connected(&client);
        let js = jetstream::new(client.clone());
        let consumer = wait_for_consumer(&js, TENSORS_STREAM, GPU_WORKER_CONSUMER, &token).await;
        // Without the model buckets (not provisioned), the shipped model serves, as before.
        let registry = Registry::open(&js).await;
        anyhow::Ok((client, consumer, registry))
    };
    // A model that cannot load fails at once, whatever NATS is doing.
    let ((engine, engine_threads), (client, consumer, registry)) = tokio::select! {
        both = async { tokio::try_join!(engine, nats) } => both?,
        _ = token.cancelled() => {
            tracing::info!("shut down while starting");
            return Ok(());
        }
    };
    let Some(consumer) = consumer else {
        tracing::info!("shut down before the consumer was found");
        return Ok(());
    };
    readiness.open_gate();

    let info = engine.info().clone();
    if let tch::Device::Cuda(index) = info.device {
        device_memory::start_sampler(index, metrics.cuda_memory.clone());
    }
    let max_delay = config.max_batch_delay_for(info.is_cuda());
    tracing::info!(
        device = ?info.device, precision = info.precision, engines = info.replicas,
        intra_op_threads = info.intra_op_threads, max_batch = info.max_batch,
        max_batch_delay_ms = max_delay.as_millis() as u64, "ready to serve"
    );
    let serving = Serving::new(Version::new(&manifest, engine));
    metrics.models_loaded.set(1);
    let follower = match registry {
        Some(registry) => {
            let follower = Follower {
                registry,
                serving: serving.clone(),
                base,
                metrics: metrics.clone(),
                instance: protocol::meta::new_request_id(),
                linger: Duration::from_millis(config.model_linger_ms),
            };
            Some(tokio::spawn(follower.run(token.clone())))
        }
        None => {
            tracing::info!("no model buckets in NATS: serving the shipped model only");
            None
        }
    };
    // Listening before the first pull: a cancellation published once the worker is ready is seen.
    let received = metrics.cancellations_received.clone();
    let cancels = cancel::subscribe_if(config.honor_cancellations, &client, received)
        .await
        .context("cannot subscribe to cancellations")?;
    let context = BatchContext {
        serving,
        responder: Responder::new(client.clone(), metrics.clone()),
        metrics: metrics.clone(),
        ack_wait: consumer.cached_info().config.ack_wait,
        cancelled: cancels.as_ref().map(|(set, _listener)| set.clone()),
        max_deliver: consumer.cached_info().config.max_deliver,
        abandon: CancellationToken::new(),
    };
    let batcher = Batcher::new(context, max_delay).with_idle_dispatch(config.dispatch_when_idle);
    // No more tensors pulled than a batch holds: at most one batch waits here.
    let source = PullSource::start(consumer, info.max_batch, &token, &grace, "tensors");
    readiness.pulling_from(&source);
    let result = batcher.run(source, &token, &grace).await;
    readiness.stopping();
    // The follower deletes this worker's serving report and drops its hold on the engines;
    // waited for a moment, never beyond the grace.
    if let Some(follower) = follower {
        let until = grace
            .ends()
            .min(tokio::time::Instant::now() + FOLLOWER_STOPS_WITHIN);
        bounded(until, "stop the model policy follower", follower).await;
    }

    flush_within(&client, &grace).await;
    // The batcher held the last engine handle: each thread ends after its batch. Waited for
    // until the grace's end also when batches were abandoned: leaving while libtorch still runs
    // one can crash (SIGSEGV) in its static destructors. A plain thread joins them, so a batch
    // that outlasts the bound does not hold the runtime's shutdown.
    if result.is_ok() || token.is_cancelled() {
        let (done, joined) = tokio::sync::oneshot::channel();
        let _joiner = std::thread::spawn(move || done.send(engine_threads.join()));
        if let Some(Ok(Err(_))) = bounded(grace.ends(), "engine threads", joined).await {
            tracing::error!("an engine thread panicked");
        }
    }
    tracing::info!("gpu-worker stopped");
    result
}
