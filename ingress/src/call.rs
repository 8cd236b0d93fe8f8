//! What every request goes through, over HTTP or NATS: an id, a deadline (the default or a
//! shorter one the caller asks for), an in-flight permit (or `overloaded` at once), and metrics on
//! the way out. Also the `/v1/classify` answer shape, shared by both transports.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use protocol::meta::Deadline;
use protocol::{Error, ErrorCode, ModelRef, Prediction, RequestMeta, Timings};
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use crate::backend::{Backend, Job};
use crate::metrics::Metrics;

/// Everything a request handler needs, whatever the transport.
#[derive(Clone)]
pub struct AppState {
    pub backend: Arc<dyn Backend>,
    pub metrics: Metrics,
    pub inflight: Arc<Semaphore>,
    pub default_timeout: Duration,
    pub max_timeout: Duration,
    pub max_body_bytes: usize,
    /// Most URLs in one `/v1/classify/batch` call.
    pub max_batch_urls: usize,
}

/// What the caller said about its request, from HTTP or NATS headers.
#[derive(Debug, Default, Clone, Copy)]
pub struct CallHeaders<'a> {
    pub request_id: Option<&'a str>,
    pub timeout_ms: Option<&'a str>,
    pub traceparent: Option<&'a str>,
    /// The model version the request is pinned to.
    pub model_version: Option<&'a str>,
}

/// One admitted request: holds its in-flight permit until dropped.
pub struct Call {
    pub route: &'static str,
    /// Id, deadline, trace context (this request's span's) and model pin: made here once, carried
    /// unchanged in the request's message to the tier that answers it.
    pub meta: RequestMeta,
    /// Whether the id is the caller's (or derived from it): then the request is idempotent.
    pub caller_id: bool,
    /// The time the caller gave the request (the default or its own), for messages; the
    /// deadline itself is `meta.deadline`.
    pub timeout: Duration,
    pub started: Instant,
    /// The request's span; its outcome is recorded on it.
    pub span: tracing::Span,
    metrics: Metrics,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Call {
    /// Admits a request, or refuses it (`bad_request`, `overloaded`) without queueing anything.
    /// A valid id of the caller's ([`protocol::meta::valid_caller_id`]) names the request (and
    /// makes it idempotent, [`crate::idempotency`]); without one it gets a new id.
    pub fn begin(state: &AppState, route: &'static str, h: CallHeaders<'_>) -> Result<Self, Error> {
        let (id, caller_id) = match h
            .request_id
            .filter(|id| protocol::meta::valid_caller_id(id))
        {
            Some(id) => (id.to_string(), true),
            None => (protocol::meta::new_request_id(), false),
        };
        let timeout = match h.timeout_ms {
            None => state.default_timeout,
            Some(v) => {
                let ms = v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .ok_or_else(|| {
                        Error::new(
                            ErrorCode::BadRequest,
                            format!(
                                "the request timeout must be a positive integer of ms, got {v:?}"
                            ),
                        )
                    })?;
                Duration::from_millis(ms).min(state.max_timeout)
            }
        };
        let model_version = match h.model_version.map(str::trim) {
            None | Some("") => None,
            Some(v) if protocol::models::valid_version(v) => Some(v.to_string()),
            Some(v) => {
                return Err(Error::new(
                    ErrorCode::BadRequest,
                    format!("model version {v:?} must be 1-64 letters, digits, '.', '_' or '-'"),
                ));
            }
        };
        let mut meta = RequestMeta::new(id).with_deadline(Deadline::after(timeout));
        meta.traceparent = h.traceparent.map(str::to_string);
        meta.model_version = model_version;
        Self::admit(state, route, meta, caller_id, timeout)
    }

    /// Admits the `index`th part of this request (a batch item): its id derived from this one's
    /// ([`protocol::meta::derived_request_id`], idempotent when this one's is the caller's), the
    /// same deadline and model version, a span under this request's.
    pub fn item(&self, state: &AppState, route: &'static str, index: usize) -> Result<Self, Error> {
        let meta = RequestMeta {
            request_id: protocol::meta::derived_request_id(&self.meta.request_id, index),
            ..self.meta.clone()
        };
        Self::admit(state, route, meta, self.caller_id, self.timeout)
    }

    /// Takes an in-flight permit and opens the request's span (a child of the caller's
    /// `traceparent`, which `meta` then carries instead).
    fn admit(
        state: &AppState,
        route: &'static str,
        mut meta: RequestMeta,
        caller_id: bool,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let permit = state.inflight.clone().try_acquire_owned().map_err(|_| {
            state
                .metrics
                .rejected
                .with_label_values(&["overloaded"])
                .inc();
            Error::new(
                ErrorCode::Overloaded,
                "too many requests in flight on this instance; retry later",
            )
        })?;
        state.metrics.inflight.inc();
        let (span, traceparent) =
            crate::trace::request_span(route, &meta.request_id, meta.traceparent.as_deref());
        meta.traceparent = Some(traceparent);
        Ok(Self {
            route,
            meta,
            caller_id,
            timeout,
            started: Instant::now(),
            span,
            metrics: state.metrics.clone(),
            _permit: permit,
        })
    }

    /// Records a request that [`Call::begin`] refused: its error code and its status on `route`.
    pub fn refused(state: &AppState, route: &'static str, e: &Error) {
        state
            .metrics
            .errors
            .with_label_values(&[e.code.as_str()])
            .inc();
        state
            .metrics
            .requests
            .with_label_values(&[route, &e.code.http_status().to_string()])
            .inc();
    }

    pub fn job(&self, content_type: &str, payload: Bytes) -> Job {
        Job {
            meta: self.meta.clone(),
            caller_id: self.caller_id,
            content_type: content_type.to_string(),
            payload,
            timeout: self.timeout,
        }
    }

    /// Time left until the request's deadline.
    pub fn remaining(&self) -> Duration {
        self.meta.remaining().unwrap_or(self.timeout)
    }

    /// Records the outcome: status (HTTP's, also for NATS answers), error code, latency.
    pub fn record(&self, status: u16, error: Option<&Error>) {
        crate::trace::record_outcome(&self.span, status, error);
        if let Some(e) = error {
            self.metrics
                .errors
                .with_label_values(&[e.code.as_str()])
                .inc();
            if matches!(e.code, ErrorCode::QueueFull | ErrorCode::Unavailable) {
                self.metrics
                    .rejected
                    .with_label_values(&[e.code.as_str()])
                    .inc();
            }
            tracing::info!(parent: &self.span, request_id = %self.meta.request_id, code = %e.code, error = %e.message, "request failed");
        }
        self.metrics
            .requests
            .with_label_values(&[self.route, &status.to_string()])
            .inc();
        self.metrics
            .latency
            .with_label_values(&[self.route])
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.metrics.inflight.dec();
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Label {
    pub label: String,
    pub probability: f32,
}

/// The answer of `/v1/classify` and of the NATS service.
#[derive(Debug, Serialize, Deserialize)]
pub struct Classification {
    pub request_id: String,
    pub model: ModelRef,
    /// The `top_k` most likely labels, most likely first.
    pub top: Vec<Label>,
    /// Softmax probabilities of every class.
    pub scores: BTreeMap<String, f32>,
    /// Time spent in each tier, and `total_ms` as seen by the ingress.
    pub timings: TimingsOut,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TimingsOut {
    #[serde(flatten)]
    pub tiers: Timings,
    pub total_ms: f64,
}

impl Classification {
    /// The answer for a prediction. Classes and probabilities are paired, never indexed: a
    /// prediction with more logits than classes (which [`protocol::Reply::decode`] already turns
    /// into an `internal` error) cannot make this panic.
    pub fn new(request_id: &str, p: Prediction, top_k: usize, total_ms: f64) -> Self {
        let probs = p.probabilities();
        let mut ranked: Vec<(&String, f32)> = p.classes.iter().zip(probs).collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let top = ranked
            .iter()
            .take(top_k)
            .map(|&(label, probability)| Label {
                label: label.clone(),
                probability,
            })
            .collect();
        let scores = ranked
            .into_iter()
            .map(|(label, probability)| (label.clone(), probability))
            .collect();
        Self {
            request_id: request_id.to_string(),
            top,
            scores,
            model: p.model,
            timings: TimingsOut {
                tiers: p.timings,
                total_ms,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prediction(classes: &[&str], logits: &[f32]) -> Prediction {
        Prediction {
            model: ModelRef {
                name: "m".into(),
                version: "1".into(),
            },
            classes: classes.iter().map(|c| c.to_string()).collect(),
            logits: logits.to_vec(),
            timings: Timings::default(),
        }
    }

    #[test]
    fn labels_are_ranked_by_probability() {
        let c = Classification::new("r", prediction(&["a", "b", "c"], &[1.0, 3.0, 2.0]), 2, 1.0);
        let top: Vec<&str> = c.top.iter().map(|l| l.label.as_str()).collect();
        assert_eq!(top, ["b", "c"]);
        assert_eq!(c.scores.len(), 3);
    }

    #[test]
    fn more_logits_than_classes_never_panics() {
        // Reply::decode refuses such a prediction; this answer must not panic on one either.
        let c = Classification::new("r", prediction(&["a", "b"], &[1.0, 3.0, 9.0]), 3, 1.0);
        assert!(c.top.iter().all(|l| l.label == "a" || l.label == "b"));
        assert_eq!(c.scores.len(), 2);
    }
}
