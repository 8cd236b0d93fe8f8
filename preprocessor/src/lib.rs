//! The preprocessor tier: pulls classification requests from the requests stream, downloads
//! (URL requests) and decodes the images, and publishes the model's uint8 NHWC input tensor to
//! the tensors stream for the gpu-worker.
//!
//! - [`imaging`]: bytes -> tensor, the same as `model/preprocess.py` ([`preprocess_image`]);
//! - [`net`]: safe, bounded downloads ([`Downloader`]) and the address policy;
//! - [`pipeline`]: a request's payload -> [`protocol::TensorMessage`], without NATS;
//! - [`router`]: which model version each request is prepared for (pin, canary, policy);
//! - [`settle`]: one request message end to end: publish, ack, retry or reply with the error;
//! - [`trace`]: the spans of a request through this tier;
//! - [`worker`]: the main loop ([`run`]) with backpressure and graceful shutdown;
//! - [`config`], [`metrics`].

pub mod config;
pub mod imaging;
pub mod metrics;
pub mod net;
pub mod pipeline;
pub mod router;
pub mod settle;
pub mod trace;
pub mod worker;

pub use config::Config;
pub use imaging::{ImageSpec, Preprocessed, preprocess_image, preprocess_image_timed};
pub use metrics::Metrics;
pub use net::{DownloadPolicy, Downloaded, Downloader};
pub use pipeline::{Arrival, Pipeline};
pub use worker::run;
