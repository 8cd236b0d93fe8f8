//! Admission: a pulled tensor is checked before it joins a batch, and answered at once when it
//! cannot (a reply subject refused, malformed metadata, expired, cancelled, a bad tensor). A
//! tensor of a version this worker does not serve is handed back with a delay (another worker
//! may serve it, or this one soon), and answered with its error once its deadline passes or its
//! deliveries run out.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream::{AckKind, Message};
use protocol::meta::{MalformedMeta, fallback_request_id, now_ms};
use protocol::names::TENSORS_STREAM;
use protocol::reply_to;
use protocol::{Error, ErrorCode, RequestMeta, TensorMessage};

use crate::batch::{BatchContext, CheckedTensor};
use crate::reply::ack;

/// How long a tensor of a version this worker does not serve waits before it is redelivered.
const NOT_SERVED_DELAY: Duration = Duration::from_millis(500);

/// A tensor that passed the checks, with what the server still had pending for the consumer
/// when it delivered this one (`None`: not known).
pub struct Admitted {
    pub tensor: CheckedTensor,
    pub behind: Option<u64>,
}

/// Checks a pulled message: `Some` to queue it, `None` when it was answered (or handed back)
/// already. Runs in the message's span.
pub async fn admit(context: &BatchContext, msg: Message) -> Option<Admitted> {
    let responder = &context.responder;
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
        return None;
    }
    if let Some(e) = meta_error {
        responder.fail(&msg, &meta, e, AckKind::Term).await;
        return None;
    }
    if meta.expired() {
        responder.expire(&msg, &meta).await;
        return None;
    }
    if context.is_cancelled(&meta) {
        responder.cancel(&msg, &meta).await;
        return None;
    }
    let tensor = match TensorMessage::decode(&msg.payload) {
        Ok(t) => t,
        Err(e) => {
            responder.fail(&msg, &meta, e, AckKind::Term).await;
            return None;
        }
    };
    let Some(version) = context.serving.get(&tensor.model.version) else {
        not_served(context, &msg, &meta, &tensor).await;
        return None;
    };
    if let Err(e) = tensor.check(&version.model, &version.input) {
        responder.fail(&msg, &meta, e, AckKind::Term).await;
        return None;
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
    let behind = info.map(|i| i.pending);
    crate::trace::queue_wait(queued_at_ms);
    let tensor = CheckedTensor {
        msg,
        meta,
        tensor,
        version,
        queued_at_ms,
        span: tracing::Span::current(),
    };
    Some(Admitted { tensor, behind })
}

/// A tensor of a model version this worker does not serve: handed back with a delay (another
/// worker may serve it, or this one once the version is loaded), or, on its last delivery,
/// answered `unavailable` (its deadline, if it has one, is checked before: past it, the tensor is
/// answered `deadline_exceeded`).
async fn not_served(
    context: &BatchContext,
    msg: &Message,
    meta: &RequestMeta,
    tensor: &TensorMessage,
) {
    let version = tensor.model.version.as_str();
    context
        .metrics
        .not_served
        .with_label_values(&[version])
        .inc();
    let delivered = msg.info().map(|i| i.delivered).unwrap_or(1);
    if context.max_deliver > 0 && delivered >= context.max_deliver {
        let error = Error::new(
            ErrorCode::Unavailable,
            format!(
                "no gpu-worker served model {} {version} within {delivered} deliveries",
                tensor.model.name
            ),
        );
        context
            .metrics
            .version_errors
            .with_label_values(&[version, error.code.as_str()])
            .inc();
        context
            .responder
            .fail(msg, meta, error, AckKind::Term)
            .await;
        return;
    }
    // Redelivered at the deadline at the latest, to be answered then.
    let delay = meta
        .remaining()
        .map_or(NOT_SERVED_DELAY, |r| r.min(NOT_SERVED_DELAY));
    tracing::debug!(request_id = %meta.request_id, %version, delivered,
        serving = ?context.serving.versions(), "model version not served here; handing the tensor back");
    ack(msg, meta, AckKind::Nak(Some(delay))).await;
}

/// The id of a message published without one: its stream sequence.
fn fallback_id(msg: &Message) -> String {
    msg.info()
        .map(|i| fallback_request_id(TENSORS_STREAM, i.stream_sequence))
        .unwrap_or_else(|_| protocol::meta::new_request_id())
}
