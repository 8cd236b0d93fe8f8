//! What the clothesline tiers share to run, beside the wire contract (`protocol`):
//! - [`runtime`]: NATS connection options, logging arguments, shutdown and its grace, the health
//!   and metrics server;
//! - [`telemetry`]: traces over OTLP and the `traceparent` that joins them across tiers;
//! - [`provision`]: idempotent creation of the JetStream streams, consumers and buckets (and the
//!   `clothesline-provision` binary);
//! - [`pull`]: the pull source the worker tiers read their consumer through (room, backoff,
//!   readiness, hand-back on shutdown, in-progress acks);
//! - [`publish`]: a JetStream publish retried through a leader election or a reconnect;
//! - [`reply`]: the reply to a caller, with its headers, over core NATS;
//! - [`cancel`]: the subscription that fills a worker's cancelled-id set;
//! - [`models`]: the model buckets' operations (and the `clothesline-model` binary);
//! - [`worker`]: what both worker tiers do around their work: readiness, the health server, the
//!   last flush.

pub mod cancel;
pub mod models;
pub mod provision;
pub mod publish;
pub mod pull;
pub mod reply;
pub mod runtime;
pub mod telemetry;
pub mod worker;
