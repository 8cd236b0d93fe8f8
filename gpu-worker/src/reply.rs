//! Answering: the [`Reply`] over core NATS to the request's reply subject
//! ([`tierkit::reply`]), then the JetStream ack. The ack is sent only after the reply was handed to the connection, on the same
//! connection, so the server sees the reply first.

use async_nats::jetstream::{AckKind, Message};
use protocol::{Error, ErrorCode, Prediction, Reply, RequestMeta, Timings};

use crate::metrics::Metrics;
use crate::serving::Version;

/// Publishes replies and acks messages, counting outcomes.
#[derive(Clone)]
pub struct Responder {
    client: async_nats::Client,
    metrics: Metrics,
}

impl Responder {
    pub fn new(client: async_nats::Client, metrics: Metrics) -> Self {
        Self { client, metrics }
    }

    /// Publishes `reply` to the request's reply subject, if it has one; `false` if that failed.
    async fn publish(&self, meta: &RequestMeta, reply: &Reply) -> bool {
        let _span = crate::trace::reply_span(meta, reply);
        tierkit::reply::send(&self.client, meta, reply).await
    }

    /// Answers with `version`'s prediction and acks. If the reply cannot be published the
    /// message is nak'ed, to be answered again later.
    pub async fn predict(
        &self,
        msg: &Message,
        meta: &RequestMeta,
        version: &Version,
        logits: Vec<f32>,
        timings: Timings,
    ) {
        let prediction = Prediction {
            model: version.model.clone(),
            classes: version.classes.as_ref().clone(),
            logits,
            timings,
        };
        let reply = Reply::prediction(meta.request_id.clone(), prediction);
        if self.publish(meta, &reply).await {
            self.metrics.items.inc();
            self.metrics
                .version_items
                .with_label_values(&[version.model.version.as_str()])
                .inc();
            ack(msg, meta, AckKind::Ack).await;
        } else {
            ack(msg, meta, AckKind::Nak(None)).await;
        }
    }

    /// Answers with an error and ends the message with `kind` (`Term` for items that can never
    /// succeed, `Ack` for those that are simply done, e.g. expired).
    pub async fn fail(&self, msg: &Message, meta: &RequestMeta, error: Error, kind: AckKind) {
        tracing::debug!(request_id = %meta.request_id, %error, "answering with an error");
        self.metrics.error(error.code);
        self.publish(meta, &Reply::error(meta.request_id.clone(), error))
            .await;
        ack(msg, meta, kind).await;
    }

    /// Drops an item whose deadline passed: counts it, answers `deadline_exceeded`, acks.
    pub async fn expire(&self, msg: &Message, meta: &RequestMeta) {
        self.metrics.expired.inc();
        let error = Error::new(
            ErrorCode::DeadlineExceeded,
            "the request's deadline passed before the model ran it",
        );
        self.fail(msg, meta, error, AckKind::Ack).await;
    }

    /// Terminates an item whose reply subject is invalid, unanswered (publishing there could
    /// cost this worker its connection): counts it, with its error code.
    pub async fn refuse_reply_to(&self, msg: &Message, meta: &RequestMeta, error: Error) {
        tracing::warn!(request_id = %meta.request_id, error = %error.message,
            "tensor terminated unanswered: invalid reply subject");
        self.metrics.invalid_reply_subjects.inc();
        self.metrics.error(error.code);
        ack(msg, meta, AckKind::Term).await;
    }

    /// Drops an item its caller cancelled: counts it and acks it, with no reply (nobody waits).
    pub async fn cancel(&self, msg: &Message, meta: &RequestMeta) {
        tracing::debug!(request_id = %meta.request_id, "cancelled by its caller; skipped");
        self.metrics.cancelled.inc();
        ack(msg, meta, AckKind::Ack).await;
    }
}

/// Acks (or naks, terms, ...) a message, logging a failure: the server redelivers it then.
pub async fn ack(msg: &Message, meta: &RequestMeta, kind: AckKind) {
    if let Err(e) = msg.ack_with(kind).await {
        tracing::warn!(request_id = %meta.request_id, ?kind, error = %e, "cannot ack");
    }
}
