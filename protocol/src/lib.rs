//! The wire contract shared by every clothesline tier, and by anything that talks to them (the
//! load generator, the client, the fuzz targets): types and rules, no servers, no command lines.
//! What the tiers share to *run* (health server, arguments, logging, traces, provisioning, the
//! retried publish, the model buckets' operations) is the `tierkit` crate.
//!
//! Tiers never depend on each other, only on this crate and `tierkit`. It holds:
//! - [`names`]: stream, subject, consumer and header names;
//! - [`messages`]: the request, tensor and reply messages and their encodings;
//! - [`cancel`]: the bounded set of cancelled request ids workers check before working;
//! - [`error`]: one error type with stable codes and its HTTP status mapping;
//! - [`manifest`]: the model manifest every tier reads;
//! - [`models`]: model versions and the serving policy: bucket names, routing, reports;
//! - [`meta`]: the per-request metadata carried in NATS headers;
//! - [`reply_to`]: reply subjects: validation, and an ingress's per-request subjects;
//! - [`redact`]: credentials taken out of URLs before they are echoed or logged;

pub mod cancel;
pub mod error;
pub mod manifest;
pub mod messages;
pub mod meta;
pub mod models;
pub mod names;
pub mod redact;
pub mod reply_to;

pub use error::{Error, ErrorCode};
pub use manifest::{Manifest, ModelRef};
pub use messages::{ClassifyRequest, Prediction, Reply, TensorMessage, Timings};
pub use meta::RequestMeta;
