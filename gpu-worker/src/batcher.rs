//! The batcher: pulls tensors from the gpu-worker consumer, checks them, gathers them into
//! batches (policy in [`crate::gather`]) and runs one batch per engine replica at a time while it
//! goes on collecting the next one (at most one batch waits). Each item is answered and acked
//! after its batch. A failing batch is retried item by item, so only the poison item fails.
//! Each pull asks for no more tensors than the gatherer has room for, so on shutdown everything
//! held but not started can be handed back (nak) to the other workers at once; so are the items
//! of batches still running when the grace period ends.
//! Each tensor runs on the engine of its model version ([`crate::serving`]); a tensor of a version
//! this worker does not serve is handed back with a delay (another worker may serve it, or this
//! one soon), and answered with its error once its deadline passes or its deliveries run out.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::bail;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::consumer::pull::Batch;
use async_nats::jetstream::{AckKind, Message};
use futures::StreamExt;
use protocol::cancel::CancelSet;
use protocol::meta::{MalformedMeta, fallback_request_id, now_ms};
use protocol::names::*;
use protocol::reply_to;
use protocol::{Error, ErrorCode, RequestMeta, TensorMessage};
use tierkit::runtime::{Grace, bounded};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::engine::{BatchOutput, EngineError};
use crate::gather::{Gatherer, Next};
use crate::metrics::Metrics;
use crate::reply::{Responder, ack};
use crate::serving::{Serving, Version};

/// How long one pull waits on the server for tensors; a stopping worker waits at most this long
/// for its open pull to end (handing back what arrives meanwhile).
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// How long a tensor of a version this worker does not serve waits before it is redelivered.
const NOT_SERVED_DELAY: Duration = Duration::from_millis(500);

/// A checked tensor waiting for its batch.
struct Item {
    msg: Message,
    meta: RequestMeta,
    tensor: TensorMessage,
    /// The model version that runs it.
    version: Arc<Version>,
    /// When the tensor entered the stream (ms since the epoch), else when it reached the batcher.
    queued_at_ms: u64,
    /// Its span (see [`crate::trace`]).
    span: tracing::Span,
}

/// What a batch task needs; shared by all of them.
struct Shared {
    serving: Serving,
    responder: Responder,
    metrics: Metrics,
    ack_wait: Duration,
    /// Ids whose callers went away; `None` when cancellations are ignored.
    cancelled: Option<CancelSet>,
    /// The consumer's `max_deliver` (0 or less: unlimited).
    max_deliver: i64,
    /// Cancelled when the grace period is over: each batch still running hands its items back.
    abandon: CancellationToken,
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
    gather: Gatherer<Item>,
}

impl Batcher {
    pub fn new(
        serving: Serving,
        responder: Responder,
        metrics: Metrics,
        max_delay: Duration,
        ack_wait: Duration,
        max_deliver: i64,
    ) -> Self {
        let max_batch = serving.info().max_batch;
        Self {
            shared: Arc::new(Shared {
                serving,
                responder,
                metrics,
                ack_wait,
                cancelled: None,
                max_deliver,
                abandon: CancellationToken::new(),
            }),
            gather: Gatherer::new(max_batch, max_delay),
        }
    }

    /// With `false`, a partial batch always waits the batch delay for more, even when the server
    /// has nothing more pending (see [`crate::gather`]); by default it runs at once then.
    pub fn with_idle_dispatch(mut self, on: bool) -> Self {
        if !on {
            self.gather = self.gather.always_wait();
        }
        self
    }

    /// Skips the items whose ids `set` holds (checked when pulled and again when their batch
    /// starts). Call before [`Batcher::run`].
    pub fn with_cancellations(mut self, set: CancelSet) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.cancelled = Some(set);
        }
        self
    }

    /// Runs until `shutdown`; then stops pulling, hands back (nak, no delay) what it holds but
    /// has not started and what still arrives for its open pull, once that pull has ended (at
    /// most [`PULL_EXPIRES`]; earlier, a tensor could be redelivered into it and bounce), so other
    /// workers take them, and returns once the batches running are answered. When `grace`'s work
    /// ends first, the batches still running hand their items back, within its last steps.
    /// `pulling` tells readiness whether the pull works. An error means the engine is gone, or
    /// batches were still running at the end of the grace period.
    pub async fn run(
        mut self,
        consumer: &PullConsumer,
        shutdown: &CancellationToken,
        pulling: &AtomicBool,
        grace: &Grace,
    ) -> anyhow::Result<()> {
        // The open pull, for at most as many tensors as the gatherer has room for.
        let mut pull: Option<Batch> = None;
        // When stopping: what was gathered but not started, and what still arrives for the open
        // pull, handed back once that pull has ended (so none can come back into it).
        let mut held: Vec<Message> = Vec::new();
        // One batch at a time on each replica.
        let replicas = self.shared.serving.info().replicas.max(1);
        let mut inflight: JoinSet<Result<(), EngineError>> = JoinSet::new();
        let mut draining = false;
        let mut restart_delay = Duration::from_millis(100);
        let mut restart_at = Instant::now();
        loop {
            let now = Instant::now();
            let wake = match self.gather.next(inflight.len() < replicas, draining, now) {
                Next::Dispatch(n) => {
                    let batch = self.gather.take(n);
                    inflight.spawn(run_batch_or_hand_back(self.shared.clone(), batch));
                    continue;
                }
                Next::WaitUntil(t) => Some(t),
                Next::Idle => None,
            };
            if draining && pull.is_none() && !held.is_empty() {
                bounded(grace.ends(), "hand back tensors", hand_back(&held)).await;
                held.clear();
            }
            if draining && inflight.is_empty() && self.gather.is_empty() && pull.is_none() {
                return Ok(());
            }
            let room = self.gather.max_batch() - self.gather.len();
            if pull.is_none() && !draining && room > 0 && now >= restart_at {
                match consumer
                    .batch()
                    .max_messages(room)
                    .expires(PULL_EXPIRES)
                    .messages()
                    .await
                {
                    Ok(b) => {
                        pull = Some(b);
                        pulling.store(true, Ordering::Relaxed);
                        restart_delay = Duration::from_millis(100);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot pull tensors; retrying");
                        pulling.store(false, Ordering::Relaxed);
                        restart_at = Instant::now() + restart_delay;
                        restart_delay = (restart_delay * 2).min(Duration::from_secs(5));
                    }
                }
            }
            let far = now + Duration::from_secs(3600);
            let restart = (pull.is_none() && !draining && room > 0).then_some(restart_at);
            tokio::select! {
                _ = shutdown.cancelled(), if !draining => {
                    tracing::info!(queued = self.gather.len(), running = inflight.len(),
                        "stopping: no more pulls; handing back what has not started, \
                         finishing the batches running");
                    draining = true;
                    held.extend(self.gather.take_all().into_iter().map(|(item, _)| item.msg));
                }
                Some(done) = inflight.join_next(), if !inflight.is_empty() => {
                    match done {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            // The other batches running finish (or are redelivered) on their own.
                            inflight.detach_all();
                            self.abandon().await;
                            hand_back(&held).await;
                            bail!("{e}");
                        }
                        Err(e) => tracing::error!(error = %e,
                            "a batch task failed; its items will be redelivered"),
                    }
                }
                next = async { match pull.as_mut() {
                    Some(b) => b.next().await,
                    None => std::future::pending().await,
                } }, if pull.is_some() => match next {
                    Some(Ok(msg)) if draining => held.push(msg),
                    Some(Ok(msg)) => {
                        let span = crate::trace::item_span(&msg);
                        self.admit(msg).instrument(span).await;
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "pulling tensors failed"),
                    None => pull = None,
                },
                _ = tokio::time::sleep_until(wake.unwrap_or(far).into()), if wake.is_some() => {}
                _ = tokio::time::sleep_until(restart.unwrap_or(far).into()), if restart.is_some() => {}
                // The batches running, or a pull the server does not end (gone away), outlast the
                // grace period: hand back everything, then go.
                _ = tokio::time::sleep_until(grace.work_ends()), if draining => {
                    // The last pull goes first: its inbox unsubscribed before any nak, the server
                    // cannot redeliver a handed-back tensor into it (a pull opened while the last
                    // batch ran is still open when a short grace ends).
                    drop(pull.take());
                    let running = inflight.len();
                    self.shared.abandon.cancel();
                    let handed_back = async {
                        hand_back(&held).await;
                        while inflight.join_next().await.is_some() {}
                    };
                    bounded(grace.ends(), "hand back tensors", handed_back).await;
                    if running > 0 {
                        return Err(crate::leave::AbandonedBatches { running }.into());
                    }
                    tracing::warn!("stopping: the last pull did not end within the grace period");
                    return Ok(());
                }
            }
        }
    }

    /// Checks a pulled message and queues it, or answers it at once (expired, bad tensor).
    async fn admit(&mut self, msg: Message) {
        let responder = &self.shared.responder;
        let (meta, meta_error) =
            match RequestMeta::from_headers(msg.headers.as_ref(), || fallback_id(&msg)) {
                Ok(meta) => (meta, None),
                Err(bad) => {
                    let MalformedMeta { meta, error } = *bad;
                    (meta, Some(error))
                }
            };
        // Tensors can be published straight onto the stream: this is the first tier to read
        // their reply subject.
        if let Some(Err(e)) = meta.reply_to.as_deref().map(reply_to::validate) {
            responder.refuse_reply_to(&msg, &meta, e).await;
            return;
        }
        if let Some(e) = meta_error {
            responder.fail(&msg, &meta, e, AckKind::Term).await;
            return;
        }
        if meta.expired() {
            responder.expire(&msg, &meta).await;
            return;
        }
        if self.shared.is_cancelled(&meta) {
            responder.cancel(&msg, &meta).await;
            return;
        }
        let tensor = match TensorMessage::decode(&msg.payload) {
            Ok(t) => t,
            Err(e) => {
                responder.fail(&msg, &meta, e, AckKind::Term).await;
                return;
            }
        };
        let Some(version) = self.shared.serving.get(&tensor.model.version) else {
            not_served(&self.shared, &msg, &meta, &tensor).await;
            return;
        };
        if let Err(e) = tensor.check(&version.model, &version.input) {
            responder.fail(&msg, &meta, e, AckKind::Term).await;
            return;
        }
        let info = msg.info().ok();
        let queued_at_ms = info
            .as_ref()
            .and_then(|i| {
                SystemTime::from(i.published)
                    .duration_since(UNIX_EPOCH)
                    .ok()
            })
            .map_or_else(now_ms, |d| d.as_millis() as u64);
        // What the server still had for this consumer when it delivered this one.
        let behind = info.map(|i| i.pending);
        crate::trace::queue_wait(queued_at_ms);
        let item = Item {
            msg,
            meta,
            tensor,
            version,
            queued_at_ms,
            span: tracing::Span::current(),
        };
        self.gather.push(item, Instant::now(), behind);
    }

    /// Gives back what is queued (nak: redelivered at once), when nothing more can run here.
    async fn abandon(&mut self) {
        for (item, _) in self.gather.take_all() {
            tracing::debug!(request_id = %item.meta.request_id, "giving the item back");
            ack(&item.msg, &item.meta, AckKind::Nak(None)).await;
        }
    }
}

/// [`run_batch`], unless the grace period ends first: then the batch's items are handed back (nak,
/// no delay) for another worker (those already answered are acked, and their nak ignored).
async fn run_batch_or_hand_back(
    shared: Arc<Shared>,
    batch: Vec<(Item, Instant)>,
) -> Result<(), EngineError> {
    let msgs: Vec<Message> = batch.iter().map(|(item, _)| item.msg.clone()).collect();
    let abandon = shared.abandon.clone();
    tokio::select! {
        done = run_batch(shared, batch) => done,
        () = abandon.cancelled() => {
            hand_back(&msgs).await;
            Ok(())
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
        if item.meta.deadline.is_some_and(|d| d.expired_at(now)) {
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
    // One batch per model version (two are served during a canary or a swap).
    let mut pending: Vec<(Item, Instant)> = items.into_iter().zip(admitted).collect();
    while let Some((first, _)) = pending.first() {
        let version = first.version.clone();
        let (group, rest): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|(item, _)| Arc::ptr_eq(&item.version, &version));
        pending = rest;
        let (group, admitted) = group.into_iter().unzip();
        if let Err(e) = run_version(&shared, group, admitted, started_ms).await {
            for (item, _) in &pending {
                ack(&item.msg, &item.meta, AckKind::Nak(None)).await;
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Runs items of one model version as one batch.
async fn run_version(
    shared: &Arc<Shared>,
    items: Vec<Item>,
    admitted: Vec<Instant>,
    started_ms: u64,
) -> Result<(), EngineError> {
    let shared = shared.as_ref();
    let model = items[0].tensor.model.clone();
    let spans = items.iter().map(|i| &i.span).zip(admitted);
    let batch_span = crate::trace::batch_span(items[0].version.engine.info(), &model, spans);
    match infer(shared, &items).instrument(batch_span).await {
        Ok(out) => answer(shared, &items, out, started_ms).await,
        Err(EngineError::Failed(e)) if items.len() == 1 => {
            fail_inference(shared, &items[0], e).await;
        }
        Err(EngineError::Failed(e)) => {
            tracing::warn!(batch = items.len(), error = %e,
                "batch failed; retrying its items one by one");
            for item in &items {
                let one = std::slice::from_ref(item);
                match infer(shared, one).await {
                    Ok(out) => answer(shared, one, out, now_ms()).await,
                    Err(EngineError::Failed(e)) => fail_inference(shared, item, e).await,
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
    let version = &items[0].version;
    let run = version.engine.run(data, n);
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
    shared
        .metrics
        .version_inference
        .with_label_values(&[version.model.version.as_str()])
        .observe(out.elapsed.as_secs_f64());
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
            .predict(&item.msg, &item.meta, &item.version, logits, timings)
            .instrument(item.span.clone())
            .await;
    }
}

async fn fail_inference(shared: &Shared, item: &Item, error: String) {
    tracing::warn!(request_id = %item.meta.request_id, %error, "inference failed on this item");
    let error = Error::new(ErrorCode::InferenceFailed, error);
    shared
        .metrics
        .version_errors
        .with_label_values(&[item.version.model.version.as_str(), error.code.as_str()])
        .inc();
    shared
        .responder
        .fail(&item.msg, &item.meta, error, AckKind::Term)
        .instrument(item.span.clone())
        .await;
}

/// A tensor of a model version this worker does not serve: handed back with a delay (another
/// worker may serve it, or this one once the version is loaded), or, on its last delivery,
/// answered `unavailable` (its deadline, if it has one, is checked before: past it, the tensor is
/// answered `deadline_exceeded`).
async fn not_served(shared: &Shared, msg: &Message, meta: &RequestMeta, tensor: &TensorMessage) {
    let version = tensor.model.version.as_str();
    shared
        .metrics
        .not_served
        .with_label_values(&[version])
        .inc();
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    if shared.max_deliver > 0 && delivered >= shared.max_deliver {
        let error = Error::new(
            ErrorCode::Unavailable,
            format!(
                "no gpu-worker served model {} {version} within {delivered} deliveries",
                tensor.model.name
            ),
        );
        shared
            .metrics
            .version_errors
            .with_label_values(&[version, error.code.as_str()])
            .inc();
        shared.responder.fail(msg, meta, error, AckKind::Term).await;
        return;
    }
    // Redelivered at the deadline at the latest, to be answered then.
    let delay = meta
        .remaining()
        .map_or(NOT_SERVED_DELAY, |r| r.min(NOT_SERVED_DELAY));
    tracing::debug!(request_id = %meta.request_id, %version, delivered,
        serving = ?shared.serving.versions(), "model version not served here; handing the tensor back");
    ack(msg, meta, AckKind::Nak(Some(delay))).await;
}

/// Gives tensors this worker will not start back to the stream at once (stopping).
async fn hand_back(msgs: &[Message]) {
    for msg in msgs {
        tracing::debug!(subject = %msg.subject, "stopping: handing a tensor back");
        if let Err(e) = msg.ack_with(AckKind::Nak(None)).await {
            tracing::warn!(error = %e, "cannot hand a tensor back; redelivered after the ack wait");
        }
    }
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
        .map(|i| fallback_request_id(TENSORS_STREAM, i.stream_sequence))
        .unwrap_or_else(|_| protocol::meta::new_request_id())
}
