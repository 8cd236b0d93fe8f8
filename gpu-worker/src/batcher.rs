//! The batcher: pulls tensors from the gpu-worker consumer, checks them, gathers them into
//! batches (policy in [`crate::gather`]) and runs one batch per engine replica at a time while it
//! goes on collecting the next one (at most one batch waits). Each item is answered and acked
//! after its batch. A failing batch is retried item by item, so only the poison item fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use protocol::cancel::CancelSet;
use protocol::manifest::InputSpec;
use protocol::messages::ModelRef;
use protocol::meta::now_ms;
use protocol::names::*;
use protocol::{Error, ErrorCode, RequestMeta, TensorMessage};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::engine::{BatchOutput, Engine, EngineError};
use crate::gather::{Gatherer, Next};
use crate::metrics::Metrics;
use crate::reply::{Responder, ack};

/// Pull with this idle heartbeat, so a dead pull is noticed.
const PULL_HEARTBEAT: Duration = Duration::from_secs(15);

/// A checked tensor waiting for its batch.
struct Item {
    msg: Message,
    meta: RequestMeta,
    tensor: TensorMessage,
    /// When the tensor entered the stream (ms since the epoch), else when it reached the batcher.
    queued_at_ms: u64,
    /// Its span (see [`crate::trace`]).
    span: tracing::Span,
}

/// What a batch task needs; shared by all of them.
struct Shared {
    engine: Engine,
    responder: Responder,
    metrics: Metrics,
    ack_wait: Duration,
    /// Ids whose callers went away; `None` when cancellations are ignored.
    cancelled: Option<CancelSet>,
}

impl Shared {
    fn is_cancelled(&self, meta: &RequestMeta) -> bool {
        self.cancelled
            .as_ref()
            .is_some_and(|set| set.contains(&meta.request_id))
    }
}

pub struct Batcher {
    shared: Arc<Shared>,
    model: ModelRef,
    input: InputSpec,
    gather: Gatherer<Item>,
}

impl Batcher {
    pub fn new(
        engine: Engine,
        responder: Responder,
        metrics: Metrics,
        model: ModelRef,
        input: InputSpec,
        max_delay: Duration,
        ack_wait: Duration,
    ) -> Self {
        let max_batch = engine.info().max_batch;
        Self {
            shared: Arc::new(Shared {
                engine,
                responder,
                metrics,
                ack_wait,
                cancelled: None,
            }),
            model,
            input,
            gather: Gatherer::new(max_batch, max_delay),
        }
    }

    /// Skips the items whose ids `set` holds (checked when pulled and again when their batch
    /// starts). Call before [`Batcher::run`].
    pub fn with_cancellations(mut self, set: CancelSet) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.cancelled = Some(set);
        }
        self
    }

    /// Runs until `shutdown`; then stops pulling, runs what it holds, and returns once the last
    /// batch is answered (at most `grace` later). `pulling` tells readiness whether the pull works.
    /// An error means the engine is gone.
    pub async fn run(
        mut self,
        consumer: &PullConsumer,
        shutdown: &CancellationToken,
        pulling: &AtomicBool,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let mut messages = None;
        // One batch at a time on each replica.
        let replicas = self.shared.engine.info().replicas.max(1);
        let mut inflight: JoinSet<Result<(), EngineError>> = JoinSet::new();
        let mut draining = false;
        let mut drain_deadline = Instant::now();
        let mut restart_delay = Duration::from_millis(100);
        let mut restart_at = Instant::now();
        loop {
            let now = Instant::now();
            let wake = match self.gather.next(inflight.len() < replicas, draining, now) {
                Next::Dispatch(n) => {
                    let batch = self.gather.take(n);
                    inflight.spawn(run_batch(self.shared.clone(), batch));
                    continue;
                }
                Next::WaitUntil(t) => Some(t),
                Next::Idle => None,
            };
            if draining && inflight.is_empty() && self.gather.is_empty() {
                return Ok(());
            }
            if messages.is_none() && !draining && now >= restart_at {
                match consumer
                    .stream()
                    .max_messages_per_batch(self.gather.max_batch())
                    .heartbeat(PULL_HEARTBEAT)
                    .messages()
                    .await
                {
                    Ok(m) => {
                        messages = Some(m);
                        pulling.store(true, Ordering::Relaxed);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start pulling tensors; retrying");
                        pulling.store(false, Ordering::Relaxed);
                        restart_at = Instant::now() + restart_delay;
                        restart_delay = (restart_delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            let pull = !draining && messages.is_some() && self.gather.wants_more();
            let far = now + Duration::from_secs(3600);
            let restart = (messages.is_none() && !draining).then_some(restart_at);
            tokio::select! {
                _ = shutdown.cancelled(), if !draining => {
                    tracing::info!(queued = self.gather.len(), running = inflight.len(),
                        "stopping: no more pulls; finishing the batches held");
                    draining = true;
                    drain_deadline = Instant::now() + grace;
                    // Messages the client buffered but we never took are redelivered after the
                    // consumer's ack wait.
                    messages = None;
                }
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    match done {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            // The other batches running finish (or are redelivered) on their own.
                            inflight.detach_all();
                            self.abandon().await;
                            bail!("{e}");
                        }
                        Err(e) => tracing::error!(error = %e,
                            "a batch task failed; its items will be redelivered"),
                    }
                }
                next = async { match messages.as_mut() {
                    Some(m) => m.next().await,
                    None => std::future::pending().await,
                } }, if pull => match next {
                    Some(Ok(msg)) => {
                        restart_delay = Duration::from_millis(100);
                        let span = crate::trace::item_span(&msg);
                        self.admit(msg).instrument(span).await;
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "pulling tensors failed"),
                    None => {
                        tracing::warn!("the pull ended; restarting it");
                        pulling.store(false, Ordering::Relaxed);
                        messages = None;
                        restart_at = Instant::now() + restart_delay;
                        restart_delay = (restart_delay * 2).min(Duration::from_secs(5));
                    }
                },
                _ = tokio::time::sleep_until(wake.unwrap_or(far).into()), if wake.is_some() => {}
                _ = tokio::time::sleep_until(restart.unwrap_or(far).into()), if restart.is_some() => {}
                _ = tokio::time::sleep_until(drain_deadline.into()), if draining => {
                    inflight.detach_all();
                    self.abandon().await;
                    bail!("shutdown grace period over with a batch still running");
                }
            }
        }
    }

    /// Checks a pulled message and queues it, or answers it at once (expired, bad tensor).
    async fn admit(&mut self, msg: Message) {
        let responder = &self.shared.responder;
        let meta = match RequestMeta::from_headers(msg.headers.as_ref(), || fallback_id(&msg)) {
            Ok(meta) => meta,
            Err(e) => {
                let meta = lenient_meta(&msg);
                responder.fail(&msg, &meta, e, AckKind::Term).await;
                return;
            }
        };
        if meta.expired_at(now_ms()) {
            responder.expire(&msg, &meta).await;
            return;
        }
        if self.shared.is_cancelled(&meta) {
            responder.cancel(&msg, &meta).await;
            return;
        }
        let tensor = match TensorMessage::decode(&msg.payload)
            .and_then(|t| t.check(&self.model, &self.input).map(|()| t))
        {
            Ok(t) => t,
            Err(e) => {
                responder.fail(&msg, &meta, e, AckKind::Term).await;
                return;
            }
        };
        let queued_at_ms = msg
            .info()
            .ok()
            .and_then(|i| {
                SystemTime::from(i.published)
                    .duration_since(UNIX_EPOCH)
                    .ok()
            })
            .map_or_else(now_ms, |d| d.as_millis() as u64);
        crate::trace::queue_wait(queued_at_ms);
        let item = Item {
            msg,
            meta,
            tensor,
            queued_at_ms,
            span: tracing::Span::current(),
        };
        self.gather.push(item, Instant::now());
    }

    /// Gives back what is queued (nak: redelivered at once), when nothing more can run here.
    async fn abandon(&mut self) {
        for (item, _) in self.gather.take_all() {
            tracing::debug!(request_id = %item.meta.request_id, "giving the item back");
            ack(&item.msg, &item.meta, AckKind::Nak(None)).await;
        }
    }
}

/// A batch task: drops the items that expired or were cancelled while queued, runs the rest, answers and acks
/// each. Only a vanished engine is an error (the items are nak'ed then).
async fn run_batch(shared: Arc<Shared>, batch: Vec<(Item, Instant)>) -> Result<(), EngineError> {
    let now = now_ms();
    let mut items = Vec::with_capacity(batch.len());
    let mut admitted = Vec::with_capacity(batch.len());
    for (item, at) in batch {
        let span = item.span.clone();
        if item.meta.expired_at(now) {
            shared
                .responder
                .expire(&item.msg, &item.meta)
                .instrument(span)
                .await;
        } else if shared.is_cancelled(&item.meta) {
            shared
                .responder
                .cancel(&item.msg, &item.meta)
                .instrument(span)
                .await;
        } else {
            items.push(item);
            admitted.push(at);
        }
    }
    if items.is_empty() {
        return Ok(());
    }
    let started_ms = now_ms();
    for item in &items {
        let wait = started_ms.saturating_sub(item.queued_at_ms);
        shared.metrics.queue_wait.observe(wait as f64 / 1e3);
    }
    let model = items[0].tensor.model.clone();
    let spans = items.iter().map(|i| &i.span).zip(admitted);
    let batch_span = crate::trace::batch_span(shared.engine.info(), &model, spans);
    match infer(&shared, &items).instrument(batch_span).await {
        Ok(out) => answer(&shared, &items, out, started_ms).await,
        Err(EngineError::Failed(e)) if items.len() == 1 => {
            fail_inference(&shared, &items[0], e).await;
        }
        Err(EngineError::Failed(e)) => {
            tracing::warn!(batch = items.len(), error = %e,
                "batch failed; retrying its items one by one");
            for item in &items {
                let one = std::slice::from_ref(item);
                match infer(&shared, one).await {
                    Ok(out) => answer(&shared, one, out, now_ms()).await,
                    Err(EngineError::Failed(e)) => fail_inference(&shared, item, e).await,
                    Err(EngineError::Gone) => return Err(give_back(&items).await),
                }
            }
        }
        Err(EngineError::Gone) => return Err(give_back(&items).await),
    }
    Ok(())
}

/// Runs `items` as one batch; while it runs longer than half the ack wait, tells the server the
/// items are still being worked on.
async fn infer(shared: &Shared, items: &[Item]) -> Result<BatchOutput, EngineError> {
    let n = items.len();
    let mut data = Vec::with_capacity(n * items[0].tensor.data.len());
    for item in items {
        data.extend_from_slice(&item.tensor.data);
    }
    shared.metrics.batch_size.observe(n as f64);
    let run = shared.engine.run(data, n);
    tokio::pin!(run);
    let period = (shared.ack_wait / 2).max(Duration::from_millis(100));
    let mut progress = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let out = loop {
        tokio::select! {
            out = &mut run => break out?,
            _ = progress.tick() => {
                for item in items {
                    ack(&item.msg, &item.meta, AckKind::Progress).await;
                }
            }
        }
    };
    shared.metrics.inference.observe(out.elapsed.as_secs_f64());
    Ok(out)
}

/// Answers each item with its row of logits, then acks it.
async fn answer(shared: &Shared, items: &[Item], out: BatchOutput, started_ms: u64) {
    let inference_ms = out.elapsed.as_secs_f64() * 1e3;
    for (item, logits) in items.iter().zip(out.logits) {
        let mut timings = item.tensor.timings.clone();
        timings.tensor_queue_ms = Some(started_ms.saturating_sub(item.queued_at_ms) as f64);
        timings.inference_ms = Some(inference_ms);
        timings.batch_size = Some(items.len() as u32);
        shared
            .responder
            .predict(&item.msg, &item.meta, logits, timings)
            .instrument(item.span.clone())
            .await;
    }
}

async fn fail_inference(shared: &Shared, item: &Item, error: String) {
    tracing::warn!(request_id = %item.meta.request_id, %error, "inference failed on this item");
    let error = Error::new(ErrorCode::InferenceFailed, error);
    shared
        .responder
        .fail(&item.msg, &item.meta, error, AckKind::Term)
        .instrument(item.span.clone())
        .await;
}

/// Naks items the engine could not run (it is gone): another replica takes them.
async fn give_back(items: &[Item]) -> EngineError {
    for item in items {
        ack(&item.msg, &item.meta, AckKind::Nak(None)).await;
    }
    EngineError::Gone
}

/// The id of a message published without one: its stream sequence.
fn fallback_id(msg: &Message) -> String {
    msg.info()
        .map(|i| format!("{TENSORS_STREAM}-{}", i.stream_sequence))
        .unwrap_or_else(|_| protocol::meta::new_request_id())
}

/// The metadata of a message whose headers do not parse, so it can still be answered.
fn lenient_meta(msg: &Message) -> RequestMeta {
    let get = |name: &str| {
        msg.headers
            .as_ref()
            .and_then(|h| h.get(name))
            .map(|v| v.as_str().trim().to_string())
            .filter(|v| !v.is_empty())
    };
    RequestMeta {
        request_id: get(HEADER_REQUEST_ID).unwrap_or_else(|| fallback_id(msg)),
        reply_to: get(HEADER_REPLY_TO),
        deadline_ms: None,
        traceparent: get(HEADER_TRACEPARENT),
    }
}
