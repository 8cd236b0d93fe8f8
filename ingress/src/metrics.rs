//! Prometheus metrics of the ingress, registered in one registry served at `/metrics`.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Requests answered, by route and HTTP status.
    pub requests: IntCounterVec,
    /// Errors answered, by stable code.
    pub errors: IntCounterVec,
    /// End-to-end latency as seen by the ingress, by route.
    pub latency: HistogramVec,
    pub inflight: IntGauge,
    /// Requests refused without being served, by reason (overloaded, queue_full, unavailable).
    pub rejected: IntCounterVec,
    /// Replies that arrived for no waiting caller (late or duplicate).
    pub unmatched_replies: IntCounter,
    /// HTTP connections open.
    pub connections_open: IntGauge,
    /// HTTP connections the ingress closed on a slow or surplus client, by reason
    /// (header_timeout, body_timeout, over_capacity, shutdown).
    pub connections_closed: IntCounterVec,
    /// Requests with a caller's id, by what the id found ([`crate::idempotency`]): `new` (ran
    /// the model), `cached` (a kept answer), `attached` (the answer of the same request in
    /// flight), `conflict` (the id was taken by another body).
    pub idempotent: IntCounterVec,
    /// Requests waiting for the answer of the same id's request in flight (attached).
    pub idempotent_waiting: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "ingress_requests_total",
                "Requests answered, by route and status",
            ),
            &["route", "status"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new("ingress_errors_total", "Errors answered, by code"),
            &["code"],
        )
        .expect("valid metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("ingress_request_seconds", "Time from request to answer")
                .buckets(prometheus::exponential_buckets(0.002, 2.0, 14).expect("valid buckets")),
            &["route"],
        )
        .expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "ingress_rejected_total",
                "Requests refused without being served, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let inflight =
            IntGauge::new("ingress_inflight", "Requests in flight").expect("valid metric");
        let unmatched_replies = IntCounter::new(
            "ingress_unmatched_replies_total",
            "Late or duplicate replies dropped",
        )
        .expect("valid metric");
        let connections_open = IntGauge::new("ingress_connections_open", "HTTP connections open")
            .expect("valid metric");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "ingress_connections_closed_total",
                "HTTP connections closed by the ingress on a slow or surplus client, by reason",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let idempotent = IntCounterVec::new(
            Opts::new(
                "ingress_idempotent_requests_total",
                "Requests with a caller's id, by outcome (new, cached, attached, conflict)",
            ),
            &["outcome"],
        )
        .expect("valid metric");
        let idempotent_waiting = IntGauge::new(
            "ingress_idempotent_waiting",
            "Requests waiting for the answer of the same id's request in flight",
        )
        .expect("valid metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(errors.clone()),
            Box::new(latency.clone()),
            Box::new(inflight.clone()),
            Box::new(rejected.clone()),
            Box::new(unmatched_replies.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_closed.clone()),
            Box::new(idempotent.clone()),
            Box::new(idempotent_waiting.clone()),
        ] {
            registry.register(c).expect("metric registered once");
        }
        Self {
            registry,
            requests,
            errors,
            latency,
            inflight,
            rejected,
            unmatched_replies,
            connections_open,
            connections_closed,
            idempotent,
            idempotent_waiting,
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
