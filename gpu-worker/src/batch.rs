//! One batch on the engine: the tensors that expired or were cancelled while queued are answered
//! (or dropped), the rest run as one batch per model version, and each is answered and acked. A
//! failing batch is retried item by item, so only the poison tensor fails. While a batch runs
//! longer than half the ack wait, its tensors are reported in progress; when the grace period
//! ends first, they are handed back (nak) for another worker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_nats::jetstream::{AckKind, Message};
use protocol::cancel::CancelSet;
use protocol::meta::now_ms;
use protocol::{Error, ErrorCode, RequestMeta, TensorMessage};
use tierkit::pull::{hand_back, in_progress};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::engine::{BatchOutput, EngineError};
use crate::metrics::Metrics;
use crate::reply::{Responder, ack};
use crate::serving::{Serving, Version};

/// A pulled tensor that passed the checks ([`crate::admit`]), waiting for its batch or in it.
pub struct CheckedTensor {
    pub msg: Message,
    pub meta: RequestMeta,
    pub tensor: TensorMessage,
    /// The model version that runs it.
    pub version: Arc<Version>,
    /// When the tensor entered the stream (ms since the epoch), else when it reached the batcher.
    pub queued_at_ms: u64,
    /// Its span (see [`crate::trace`]).
    pub span: tracing::Span,
}

/// What admission and every batch task need; shared by all of them.
pub struct BatchContext {
    pub serving: Serving,
    pub responder: Responder,
    pub metrics: Metrics,
    pub ack_wait: Duration,
    /// Ids whose callers went away; `None` when cancellations are ignored.
    pub cancelled: Option<CancelSet>,
    /// The consumer's `max_deliver` (0 or less: unlimited).
    pub max_deliver: i64,
    /// Cancelled when the grace period is over: each batch still running hands its items back.
    pub abandon: CancellationToken,
}

impl BatchContext {
    pub fn is_cancelled(&self, meta: &RequestMeta) -> bool {
        self.cancelled
            .as_ref()
            .is_some_and(|set| set.contains(&meta.request_id))
    }
}

/// [`run_batch`], unless the grace period ends first: then the batch's items are handed back (nak,
/// no delay) for another worker (those already answered are acked, and their nak ignored).
pub async fn run_batch_or_hand_back(
    context: Arc<BatchContext>,
    batch: Vec<(CheckedTensor, Instant)>,
) -> Result<(), EngineError> {
    let msgs: Vec<Message> = batch.iter().map(|(item, _)| item.msg.clone()).collect();
    let abandon = context.abandon.clone();
    tokio::select! {
        done = run_batch(context, batch) => done,
        () = abandon.cancelled() => {
            hand_back(&msgs).await;
            Ok(())
        }
    }
}

/// Drops the items that expired or were cancelled while queued, runs the rest, answers and acks
/// each. Only a vanished engine is an error (the items are nak'ed then).
async fn run_batch(
    context: Arc<BatchContext>,
    batch: Vec<(CheckedTensor, Instant)>,
) -> Result<(), EngineError> {
    let context = context.as_ref();
    let now = now_ms();
    let mut pending = Vec::with_capacity(batch.len());
    for (item, at) in batch {
        let span = item.span.clone();
        if item.meta.deadline.is_some_and(|d| d.expired_at(now)) {
            let expire = context.responder.expire(&item.msg, &item.meta);
            expire.instrument(span).await;
        } else if context.is_cancelled(&item.meta) {
            let cancel = context.responder.cancel(&item.msg, &item.meta);
            cancel.instrument(span).await;
        } else {
            pending.push((item, at));
        }
    }
    if pending.is_empty() {
        return Ok(());
    }
    let started_ms = now_ms();
    for (item, _) in &pending {
        let wait = started_ms.saturating_sub(item.queued_at_ms);
        context.metrics.queue_wait.observe(wait as f64 / 1e3);
    }
    // One batch per model version (two are served during a canary or a swap).
    while let Some((first, _)) = pending.first() {
        let version = first.version.clone();
        let (group, rest): (Vec<_>, Vec<_>) = pending
            .into_iter()
            .partition(|(item, _)| Arc::ptr_eq(&item.version, &version));
        pending = rest;
        if let Err(e) = run_version(context, group, started_ms).await {
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
    context: &BatchContext,
    group: Vec<(CheckedTensor, Instant)>,
    started_ms: u64,
) -> Result<(), EngineError> {
    let (items, admitted): (Vec<CheckedTensor>, Vec<Instant>) = group.into_iter().unzip();
    let Some(first) = items.first() else {
        return Ok(());
    };
    let model = first.tensor.model.clone();
    let spans = items.iter().map(|i| &i.span).zip(admitted);
    let batch_span = crate::trace::batch_span(first.version.engine.info(), &model, spans);
    match infer(context, &items).instrument(batch_span).await {
        Ok(out) => answer(context, &items, out, started_ms).await,
        Err(EngineError::Failed(e)) if items.len() == 1 => {
            fail_inference(context, first, e).await;
        }
        Err(EngineError::Failed(e)) => {
            tracing::warn!(batch = items.len(), error = %e,
                "batch failed; retrying its items one by one");
            for item in &items {
                let one = std::slice::from_ref(item);
                match infer(context, one).await {
                    Ok(out) => answer(context, one, out, now_ms()).await,
                    Err(EngineError::Failed(e)) => fail_inference(context, item, e).await,
                    Err(EngineError::Gone) => return Err(give_back(&items).await),
                }
            }
        }
        Err(EngineError::Gone) => return Err(give_back(&items).await),
    }
    Ok(())
}

/// Runs `items` (at least one, all of one version) as one batch, reporting them in progress
/// while it runs long.
async fn infer(
    context: &BatchContext,
    items: &[CheckedTensor],
) -> Result<BatchOutput, EngineError> {
    let Some(first) = items.first() else {
        return Err(EngineError::Failed("an empty batch".into()));
    };
    let n = items.len();
    let mut data = Vec::with_capacity(n * first.tensor.data.len());
    for item in items {
        data.extend_from_slice(&item.tensor.data);
    }
    context.metrics.batch_size.observe(n as f64);
    let version = &first.version;
    let msgs: Vec<&Message> = items.iter().map(|i| &i.msg).collect();
    let out = in_progress(version.engine.run(data, n), &msgs, context.ack_wait).await?;
    context.metrics.inference.observe(out.elapsed.as_secs_f64());
    context
        .metrics
        .version_inference
        .with_label_values(&[version.model.version.as_str()])
        .observe(out.elapsed.as_secs_f64());
    Ok(out)
}

/// Answers each item with its row of logits, then acks it.
async fn answer(
    context: &BatchContext,
    items: &[CheckedTensor],
    out: BatchOutput,
    started_ms: u64,
) {
    let inference_ms = out.elapsed.as_secs_f64() * 1e3;
    for (item, logits) in items.iter().zip(out.logits) {
        let mut timings = item.tensor.timings.clone();
        timings.tensor_queue_ms = Some(started_ms.saturating_sub(item.queued_at_ms) as f64);
        timings.inference_ms = Some(inference_ms);
        timings.batch_size = Some(items.len() as u32);
        context
            .responder
            .predict(&item.msg, &item.meta, &item.version, logits, timings)
            .instrument(item.span.clone())
            .await;
    }
}

async fn fail_inference(context: &BatchContext, item: &CheckedTensor, error: String) {
    tracing::warn!(request_id = %item.meta.request_id, %error, "inference failed on this item");
    let error = Error::new(ErrorCode::InferenceFailed, error);
    context
        .metrics
        .version_errors
        .with_label_values(&[item.version.model.version.as_str(), error.code.as_str()])
        .inc();
    context
        .responder
        .fail(&item.msg, &item.meta, error, AckKind::Term)
        .instrument(item.span.clone())
        .await;
}

/// Naks items the engine could not run (it is gone): another replica takes them.
async fn give_back(items: &[CheckedTensor]) -> EngineError {
    for item in items {
        ack(&item.msg, &item.meta, AckKind::Nak(None)).await;
    }
    EngineError::Gone
}
