//! The gpu-worker's Prometheus metrics, in their own registry (served on `/metrics`).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    exponential_buckets,
};
use protocol::ErrorCode;

/// The error codes this tier answers with; their counters exist from the start.
pub const ERROR_CODES: [ErrorCode; 4] = [
    ErrorCode::BadRequest,
    ErrorCode::BadTensor,
    ErrorCode::DeadlineExceeded,
    ErrorCode::InferenceFailed,
];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Images per batch run by the model.
    pub batch_size: Histogram,
    /// From the tensor's arrival in the stream to the start of its batch (stream + batcher).
    pub queue_wait: Histogram,
    /// Model time per batch (host-to-device copy, forward, logits back).
    pub inference: Histogram,
    /// Items answered with a prediction.
    pub items: IntCounter,
    /// Items answered with an error (or dropped with one when nobody listens), by code.
    pub errors: IntCounterVec,
    /// Items dropped because their deadline passed before they ran.
    pub expired: IntCounter,
    /// CUDA memory used by this process; stays 0 on CPU (and where it cannot be read).
    pub cuda_memory: IntGauge,
    /// Items dropped unanswered because their caller cancelled them.
    pub cancelled: IntCounter,
    /// Cancelled request ids received on `clothesline.cancel`.
    pub cancellations_received: IntCounter,
    /// Items terminated unanswered because their reply subject is invalid.
    pub invalid_reply_subjects: IntCounter,
    /// By model version: items answered with a prediction.
    pub version_items: IntCounterVec,
    /// By model version and error code: items that ended in an error.
    pub version_errors: IntCounterVec,
    /// By model version: model time per batch.
    pub version_inference: HistogramVec,
    /// By model version: tensors handed back (nak with a delay) because this worker does not
    /// serve their version.
    pub not_served: IntCounterVec,
    /// Model versions loaded, warmed up and added while running (hot swaps).
    pub model_swaps: IntCounter,
    /// By model version: versions the policy named that could not be fetched, loaded or warmed up.
    pub model_refused: IntCounterVec,
    /// Model versions this worker serves now.
    pub models_loaded: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let histogram = |name: &str, help: &str, buckets: Vec<f64>| {
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
                .expect("valid histogram")
        };
        let m = Self {
            batch_size: histogram(
                "gpu_worker_batch_size",
                "Images per batch run by the model.",
                exponential_buckets(1.0, 2.0, 11).expect("valid buckets"),
            ),
            queue_wait: histogram(
                "gpu_worker_queue_wait_seconds",
                "Time from a tensor's arrival in the stream to the start of its batch.",
                exponential_buckets(0.000_5, 2.0, 16).expect("valid buckets"),
            ),
            inference: histogram(
                "gpu_worker_inference_seconds",
                "Model time per batch, including the copies to and from the device.",
                exponential_buckets(0.000_25, 2.0, 16).expect("valid buckets"),
            ),
            items: IntCounter::new(
                "gpu_worker_items_total",
                "Items answered with a prediction.",
            )
            .expect("valid counter"),
            errors: IntCounterVec::new(
                Opts::new(
                    "gpu_worker_errors_total",
                    "Items that ended in an error, by error code.",
                ),
                &["code"],
            )
            .expect("valid counter"),
            expired: IntCounter::new(
                "gpu_worker_expired_total",
                "Items dropped because their deadline passed before they ran.",
            )
            .expect("valid counter"),
            cuda_memory: IntGauge::new(
                "gpu_worker_cuda_memory_bytes",
                "CUDA memory used by this process (0 on CPU).",
            )
            .expect("valid gauge"),
            cancelled: IntCounter::new(
                "gpu_worker_cancelled_total",
                "Items dropped unanswered, before running, because their caller went away.",
            )
            .expect("valid counter"),
            cancellations_received: IntCounter::new(
                "gpu_worker_cancellations_received_total",
                "Cancelled request ids received on clothesline.cancel.",
            )
            .expect("valid counter"),
            invalid_reply_subjects: IntCounter::new(
                "gpu_worker_invalid_reply_subjects_total",
                "Items terminated unanswered because their Clothesline-Reply-To is invalid.",
            )
            .expect("valid counter"),
            version_items: IntCounterVec::new(
                Opts::new(
                    "gpu_worker_model_items_total",
                    "Items answered with a prediction, by model version.",
                ),
                &["version"],
            )
            .expect("valid counter"),
            version_errors: IntCounterVec::new(
                Opts::new(
                    "gpu_worker_model_errors_total",
                    "Items of a known model version that ended in an error, by version and code.",
                ),
                &["version", "code"],
            )
            .expect("valid counter"),
            version_inference: HistogramVec::new(
                HistogramOpts::new(
                    "gpu_worker_model_inference_seconds",
                    "Model time per batch, by model version.",
                )
                .buckets(exponential_buckets(0.000_25, 2.0, 16).expect("valid buckets")),
                &["version"],
            )
            .expect("valid histogram"),
            not_served: IntCounterVec::new(
                Opts::new(
                    "gpu_worker_not_served_total",
                    "Tensors handed back because this worker does not serve their model version.",
                ),
                &["version"],
            )
            .expect("valid counter"),
            model_swaps: IntCounter::new(
                "gpu_worker_model_swaps_total",
                "Model versions loaded, warmed up and added while running.",
            )
            .expect("valid counter"),
            model_refused: IntCounterVec::new(
                Opts::new(
                    "gpu_worker_model_refused_total",
                    "Model versions that could not be fetched, loaded or warmed up, by version.",
                ),
                &["version"],
            )
            .expect("valid counter"),
            models_loaded: IntGauge::new(
                "gpu_worker_models_loaded",
                "Model versions this worker serves now.",
            )
            .expect("valid gauge"),
            registry,
        };
        for code in ERROR_CODES {
            m.errors.with_label_values(&[code.as_str()]);
        }
        let collectors: [Box<dyn prometheus::core::Collector>; 17] = [
            Box::new(m.version_items.clone()),
            Box::new(m.version_errors.clone()),
            Box::new(m.version_inference.clone()),
            Box::new(m.not_served.clone()),
            Box::new(m.model_swaps.clone()),
            Box::new(m.model_refused.clone()),
            Box::new(m.models_loaded.clone()),
            Box::new(m.batch_size.clone()),
            Box::new(m.queue_wait.clone()),
            Box::new(m.inference.clone()),
            Box::new(m.items.clone()),
            Box::new(m.errors.clone()),
            Box::new(m.expired.clone()),
            Box::new(m.cuda_memory.clone()),
            Box::new(m.cancelled.clone()),
            Box::new(m.cancellations_received.clone()),
            Box::new(m.invalid_reply_subjects.clone()),
        ];
        for c in collectors {
            m.registry.register(c).expect("metric names are unique");
        }
        m
    }

    pub fn error(&self, code: ErrorCode) {
        self.errors.with_label_values(&[code.as_str()]).inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_metrics_are_exported() {
        let m = Metrics::new();
        m.error(ErrorCode::BadTensor);
        m.batch_size.observe(3.0);
        let text = tierkit::runtime::metrics_text(&m.registry);
        for name in [
            "gpu_worker_batch_size",
            "gpu_worker_queue_wait_seconds",
            "gpu_worker_inference_seconds",
            "gpu_worker_items_total",
            "gpu_worker_expired_total",
            "gpu_worker_cancelled_total",
            "gpu_worker_cancellations_received_total",
            "gpu_worker_invalid_reply_subjects_total",
            "gpu_worker_cuda_memory_bytes",
            "gpu_worker_model_swaps_total",
            "gpu_worker_models_loaded",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
        assert!(text.contains(r#"gpu_worker_errors_total{code="bad_tensor"} 1"#));
        assert!(text.contains(r#"gpu_worker_errors_total{code="inference_failed"} 0"#));
    }
}
