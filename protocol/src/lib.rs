//! The wire contract shared by every clothesline tier.
//!
//! Tiers never depend on each other, only on this crate. It holds:
//! - [`names`]: stream, subject, consumer and header names;
//! - [`messages`]: the request, tensor and reply messages and their encodings;
//! - [`cancel`]: the bounded set of cancelled request ids workers check before working;
//! - [`error`]: one error type with stable codes and its HTTP status mapping;
//! - [`manifest`]: the model manifest every tier reads;
//! - [`provision`]: idempotent creation of the JetStream streams and consumers;
//! - [`models`]: model versions in an Object Store bucket, the serving policy in KV;
//! - [`meta`]: the per-request metadata carried in NATS headers;
//! - [`publish`]: a JetStream publish retried through a leader election or a reconnect;
//! - [`reply_to`]: reply subjects: validation, and an ingress's per-request subjects;
//! - [`redact`]: credentials taken out of URLs before they are echoed or logged;
//! - [`runtime`]: what every binary shares (NATS connection options, logging, shutdown, health server);
//! - [`telemetry`]: traces over OTLP and the `traceparent` that joins them across tiers.

pub mod cancel;
pub mod error;
pub mod manifest;
pub mod messages;
pub mod meta;
pub mod models;
pub mod names;
pub mod provision;
pub mod publish;
pub mod redact;
pub mod reply_to;
pub mod runtime;
pub mod telemetry;

pub use error::{Error, ErrorCode};
pub use manifest::Manifest;
pub use messages::{ClassifyRequest, ModelRef, Prediction, Reply, TensorMessage, Timings};
pub use meta::RequestMeta;
