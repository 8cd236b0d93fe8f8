//! Prometheus metrics of the tier, in its own registry (served on `/metrics`).

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use protocol::ErrorCode;

/// `preprocessor_requests_total{outcome}` values.
pub mod outcome {
    /// Tensor published and request acknowledged.
    pub const OK: &str = "ok";
    /// Failed for good: error reply sent (if anyone listens), request terminated.
    pub const ERROR: &str = "error";
    /// Failed transiently: request handed back for redelivery.
    pub const RETRY: &str = "retry";
    /// Its caller went away: acked without work or reply.
    pub const CANCELLED: &str = "cancelled";
}

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub errors: IntCounterVec,
    pub download_seconds: Histogram,
    pub decode_seconds: Histogram,
    pub resize_seconds: Histogram,
    pub downloaded_bytes: IntCounter,
    pub inflight: IntGauge,
    /// Cancelled request ids received on `clothesline.cancel`.
    pub cancellations_received: IntCounter,
    /// Requests terminated unanswered because their reply subject is invalid.
    pub invalid_reply_subjects: IntCounter,
    /// Requests routed to each model version (tensors prepared for it, or about to be).
    pub model_requests: IntCounterVec,
}

impl Metrics {
    pub fn new() -> prometheus::Result<Self> {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "preprocessor_requests_total",
                "Requests handled, by outcome (ok, error, retry, cancelled).",
            ),
            &["outcome"],
        )?;
        let errors = IntCounterVec::new(
            Opts::new(
                "preprocessor_errors_total",
                "Request errors, by error code.",
            ),
            &["code"],
        )?;
        let download_seconds = histogram(
            "preprocessor_download_seconds",
            "Time to download an image by URL.",
            vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0],
        )?;
        let decode_seconds = histogram(
            "preprocessor_decode_seconds",
            "Time to decode an image to RGB8 and orient it.",
            vec![
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
            ],
        )?;
        let resize_seconds = histogram(
            "preprocessor_resize_seconds",
            "Time to resize a decoded image to the model's input size.",
            vec![
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
            ],
        )?;
        let downloaded_bytes = IntCounter::new(
            "preprocessor_downloaded_bytes_total",
            "Bytes of image bodies downloaded.",
        )?;
        let inflight = IntGauge::new("preprocessor_inflight", "Requests being handled now.")?;
        let cancellations_received = IntCounter::new(
            "preprocessor_cancellations_received_total",
            "Cancelled request ids received on clothesline.cancel.",
        )?;
        let invalid_reply_subjects = IntCounter::new(
            "preprocessor_invalid_reply_subjects_total",
            "Requests terminated unanswered because their Clothesline-Reply-To is invalid.",
        )?;
        let model_requests = IntCounterVec::new(
            Opts::new(
                "preprocessor_model_requests_total",
                "Requests routed to each model version.",
            ),
            &["version"],
        )?;
        registry.register(Box::new(model_requests.clone()))?;
        registry.register(Box::new(invalid_reply_subjects.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(download_seconds.clone()))?;
        registry.register(Box::new(decode_seconds.clone()))?;
        registry.register(Box::new(resize_seconds.clone()))?;
        registry.register(Box::new(downloaded_bytes.clone()))?;
        registry.register(Box::new(inflight.clone()))?;
        registry.register(Box::new(cancellations_received.clone()))?;
        for o in [
            outcome::OK,
            outcome::ERROR,
            outcome::RETRY,
            outcome::CANCELLED,
        ] {
            requests.with_label_values(&[o]);
        }
        Ok(Self {
            registry,
            requests,
            errors,
            download_seconds,
            decode_seconds,
            resize_seconds,
            downloaded_bytes,
            inflight,
            cancellations_received,
            invalid_reply_subjects,
            model_requests,
        })
    }

    pub fn outcome(&self, outcome: &str) {
        self.requests.with_label_values(&[outcome]).inc();
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors.with_label_values(&[code.as_str()]).inc();
    }
}

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> prometheus::Result<Histogram> {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_exposed() {
        let m = Metrics::new().unwrap();
        m.error(ErrorCode::TooLarge);
        m.outcome(outcome::ERROR);
        m.download_seconds.observe(0.2);
        m.downloaded_bytes.inc_by(10);
        m.inflight.inc();
        let text = tierkit::runtime::metrics_text(&m.registry);
        for name in [
            "preprocessor_requests_total{outcome=\"error\"} 1",
            "preprocessor_requests_total{outcome=\"ok\"} 0",
            "preprocessor_errors_total{code=\"too_large\"} 1",
            "preprocessor_download_seconds_bucket",
            "preprocessor_decode_seconds_count 0",
            "preprocessor_resize_seconds_count 0",
            "preprocessor_downloaded_bytes_total 10",
            "preprocessor_inflight 1",
            "preprocessor_requests_total{outcome=\"cancelled\"} 0",
            "preprocessor_cancellations_received_total 0",
            "preprocessor_invalid_reply_subjects_total 0",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
