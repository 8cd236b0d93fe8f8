//! Idempotent provisioning of the JetStream topology: two work-queue streams, each with one
//! durable pull consumer, the key-value bucket of idempotent requests ([`RESULTS_BUCKET`], its max
//! age the idempotency window), and the (initially empty) model buckets of [`crate::models`]. The
//! stream and consumer definitions live in `nats/jetstream/*.json` in the server's own JSON format
//! (usable with `nats stream add --config`) and are compiled in as defaults; the buckets are
//! declared in code.
//!
//! Running [`provision`] twice is harmless: a stream or the bucket is created or updated to the
//! declared config, a consumer is created or updated (only fields the server allows to change).

use std::path::Path;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, kv, stream};
use tokio_util::sync::CancellationToken;

use protocol::names::*;

/// The declared topology: the stream, consumer and bucket configs.
#[derive(Debug, Clone)]
pub struct Topology {
    pub requests: stream::Config,
    pub tensors: stream::Config,
    pub preprocessor: pull::Config,
    pub gpu_worker: pull::Config,
    /// The bucket of idempotent requests ([`RESULTS_BUCKET`]).
    pub results: kv::Config,
}

/// How long the answer to a request with a caller's id is kept by default (the bucket's max
/// age, counted from the answer).
pub const DEFAULT_IDEMPOTENCY_WINDOW: Duration = Duration::from_secs(600);

/// The bucket of idempotent requests: one entry per request id (history 1), each at most
/// 64 KiB (an answer is about 1 KiB), the whole bounded to 256 MiB (discard new: when full, a
/// request with a caller's id is answered `unavailable`), entries dropped `window` after their
/// last write.
fn results_bucket(window: Duration) -> kv::Config {
    kv::Config {
        bucket: RESULTS_BUCKET.into(),
        description: "clothesline: claims and answers of requests with a caller's id".into(),
        history: 1,
        max_age: window,
        max_bytes: 256 << 20,
        max_value_size: 64 << 10,
        storage: stream::StorageType::File,
        num_replicas: 1,
        ..Default::default()
    }
}

const REQUESTS_JSON: &str = include_str!("../../nats/jetstream/requests.stream.json");
const TENSORS_JSON: &str = include_str!("../../nats/jetstream/tensors.stream.json");
const PREPROCESSOR_JSON: &str = include_str!("../../nats/jetstream/preprocessor.consumer.json");
const GPU_WORKER_JSON: &str = include_str!("../../nats/jetstream/gpu-worker.consumer.json");

#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    #[error("definition {name}: {source}")]
    Definition {
        name: String,
        source: serde_json::Error,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("definition {name} does not match the contract: {reason}")]
    Contract { name: String, reason: String },
    #[error("stream {name}: {source}")]
    Stream {
        name: String,
        source: async_nats::Error,
    },
    #[error("consumer {name}: {source}")]
    Consumer {
        name: String,
        source: async_nats::Error,
    },
}

fn parse<T: serde::de::DeserializeOwned>(name: &str, text: &str) -> Result<T, ProvisionError> {
    serde_json::from_str(text).map_err(|source| ProvisionError::Definition {
        name: name.into(),
        source,
    })
}

impl Topology {
    /// The definitions compiled in from `nats/jetstream/`.
    pub fn builtin() -> Self {
        Self::from_json(
            REQUESTS_JSON,
            TENSORS_JSON,
            PREPROCESSOR_JSON,
            GPU_WORKER_JSON,
        )
        .expect("the built-in definitions are valid (tested)")
    }

    /// Reads the four definitions from a folder laid out like `nats/jetstream/`.
    pub fn from_dir(dir: &Path) -> Result<Self, ProvisionError> {
        let read = |f: &str| {
            let path = dir.join(f);
            std::fs::read_to_string(&path).map_err(|source| ProvisionError::Read {
                path: path.display().to_string(),
                source,
            })
        };
        Self::from_json(
            &read("requests.stream.json")?,
            &read("tensors.stream.json")?,
            &read("preprocessor.consumer.json")?,
            &read("gpu-worker.consumer.json")?,
        )
    }

    fn from_json(
        requests: &str,
        tensors: &str,
        pre: &str,
        gpu: &str,
    ) -> Result<Self, ProvisionError> {
        let t = Self {
            requests: parse("requests.stream.json", requests)?,
            tensors: parse("tensors.stream.json", tensors)?,
            preprocessor: parse("preprocessor.consumer.json", pre)?,
            gpu_worker: parse("gpu-worker.consumer.json", gpu)?,
            results: results_bucket(DEFAULT_IDEMPOTENCY_WINDOW),
        };
        t.check()?;
        Ok(t)
    }

    /// The names are the contract the tiers are compiled with: refuse definitions that differ.
    fn check(&self) -> Result<(), ProvisionError> {
        let contract = |name: &str, ok: bool, reason: String| {
            if ok {
                Ok(())
            } else {
                Err(ProvisionError::Contract {
                    name: name.into(),
                    reason,
                })
            }
        };
        for (s, name, subjects) in [
            (
                &self.requests,
                REQUESTS_STREAM,
                &[REQUESTS_SUBJECT, INGRESS_REQUESTS_SUBJECT][..],
            ),
            (&self.tensors, TENSORS_STREAM, &[TENSORS_SUBJECT][..]),
        ] {
            contract(
                name,
                s.name == name,
                format!("stream is named {:?}", s.name),
            )?;
            contract(
                name,
                s.subjects == subjects,
                format!("subjects are {:?}, expected {subjects:?}", s.subjects),
            )?;
            contract(
                name,
                s.retention == stream::RetentionPolicy::WorkQueue
                    && s.discard == stream::DiscardPolicy::New,
                "must be a work queue with discard new".into(),
            )?;
            contract(
                name,
                s.max_bytes > 0 && s.max_messages > 0,
                "must be bounded in bytes and messages".into(),
            )?;
        }
        for (c, name) in [
            (&self.preprocessor, PREPROCESSOR_CONSUMER),
            (&self.gpu_worker, GPU_WORKER_CONSUMER),
        ] {
            contract(
                name,
                c.durable_name.as_deref() == Some(name),
                format!("durable name is {:?}", c.durable_name),
            )?;
            contract(
                name,
                c.ack_policy == jetstream::consumer::AckPolicy::Explicit
                    && c.max_ack_pending > 0
                    && c.max_deliver > 0
                    && !c.ack_wait.is_zero(),
                "needs explicit acks, a bounded ack wait, max deliveries and max ack pending"
                    .into(),
            )?;
        }
        Ok(())
    }

    /// Sets the replica count of both streams and of the bucket (3 on a clustered NATS).
    pub fn with_replicas(mut self, replicas: usize) -> Self {
        self.requests.num_replicas = replicas;
        self.tensors.num_replicas = replicas;
        self.results.num_replicas = replicas;
        self
    }

    /// Uses memory instead of file storage (tests that do not restart the server).
    pub fn with_memory_storage(mut self) -> Self {
        self.requests.storage = stream::StorageType::Memory;
        self.tensors.storage = stream::StorageType::Memory;
        self.results.storage = stream::StorageType::Memory;
        self
    }

    /// Keeps answers to requests with a caller's id for `window` (at least a second).
    pub fn with_idempotency_window(mut self, window: Duration) -> Self {
        self.results.max_age = window.max(Duration::from_secs(1));
        self
    }
}

/// Creates the model buckets when missing (first, so a tier that finds its consumer finds them
/// too), then creates or updates both streams, both consumers and the results bucket to the
/// declared config.
pub async fn provision(js: &jetstream::Context, topology: &Topology) -> Result<(), ProvisionError> {
    crate::models::Registry::create(js, topology.requests.num_replicas)
        .await
        .map_err(|e| ProvisionError::Stream {
            name: protocol::models::MODELS_BUCKET.into(),
            source: e.into(),
        })?;
    provision_queues(js, topology).await?;
    js.create_or_update_key_value(topology.results.clone())
        .await
        .map_err(|e| ProvisionError::Stream {
            name: RESULTS_STREAM.into(),
            source: e.into(),
        })?;
    tracing::info!(
        bucket = RESULTS_BUCKET,
        window_s = topology.results.max_age.as_secs(),
        "provisioned"
    );
    Ok(())
}

async fn provision_queues(
    js: &jetstream::Context,
    topology: &Topology,
) -> Result<(), ProvisionError> {
    for (stream_cfg, consumer_cfg) in [
        (&topology.requests, &topology.preprocessor),
        (&topology.tensors, &topology.gpu_worker),
    ] {
        let name = stream_cfg.name.clone();
        js.create_or_update_stream(stream_cfg.clone())
            .await
            .map_err(|e| ProvisionError::Stream {
                name: name.clone(),
                source: e.into(),
            })?;
        let stream = js
            .get_stream(&name)
            .await
            .map_err(|e| ProvisionError::Stream {
                name: name.clone(),
                source: e.into(),
            })?;
        let consumer_name = consumer_cfg.durable_name.clone().unwrap_or_default();
        stream
            .create_consumer(consumer_cfg.clone())
            .await
            .map_err(|e| ProvisionError::Consumer {
                name: consumer_name.clone(),
                source: e.into(),
            })?;
        tracing::info!(stream = %name, consumer = %consumer_name, "provisioned");
    }
    Ok(())
}

/// Waits until a durable pull consumer exists (provisioning may run after the tier starts),
/// retrying with a capped backoff; returns when found or when `shutdown` fires (then `None`).
pub async fn wait_for_consumer(
    js: &jetstream::Context,
    stream: &str,
    consumer: &str,
    shutdown: &CancellationToken,
) -> Option<jetstream::consumer::Consumer<pull::Config>> {
    let mut delay = Duration::from_millis(100);
    loop {
        match js.get_consumer_from_stream(consumer, stream).await {
            Ok(c) => return Some(c),
            Err(e) => {
                tracing::warn!(%stream, %consumer, error = %e, "consumer not available yet; retrying")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.cancelled() => return None,
        }
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_definitions_parse_and_follow_the_contract() {
        let t = Topology::builtin();
        assert_eq!(t.requests.max_bytes, 1 << 30);
        assert_eq!(t.preprocessor.ack_wait, Duration::from_secs(30));
        assert_eq!(t.gpu_worker.max_deliver, 5);
        assert_eq!(t.results.max_age, DEFAULT_IDEMPOTENCY_WINDOW);
        assert_eq!(t.results.history, 1);
        let t = t
            .with_replicas(3)
            .with_memory_storage()
            .with_idempotency_window(Duration::from_secs(60));
        assert_eq!(t.tensors.num_replicas, 3);
        assert_eq!(t.results.num_replicas, 3);
        assert_eq!(t.requests.storage, stream::StorageType::Memory);
        assert_eq!(t.results.storage, stream::StorageType::Memory);
        assert_eq!(t.results.max_age, Duration::from_secs(60));
    }

    #[test]
    fn definitions_that_break_the_contract_are_refused() {
        let wrong = REQUESTS_JSON.replace("\"new\"", "\"old\"");
        let err = Topology::from_json(&wrong, TENSORS_JSON, PREPROCESSOR_JSON, GPU_WORKER_JSON)
            .unwrap_err();
        assert!(matches!(err, ProvisionError::Contract { .. }), "{err}");
        let renamed = GPU_WORKER_JSON.replace("\"gpu-worker\"", "\"other\"");
        assert!(
            Topology::from_json(REQUESTS_JSON, TENSORS_JSON, PREPROCESSOR_JSON, &renamed).is_err()
        );
    }
}
