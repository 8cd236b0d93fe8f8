//! What idempotent requests cost the ingress per request: the results bucket's round trips,
//! measured alone. [`Idempotent`] wraps a backend that answers at once (no pipeline), against a
//! real nats-server with JetStream at `NATS_URL` (default `nats://127.0.0.1:4222`), provisioned
//! here with the built-in topology (file storage, as deployed). Sequential requests, one at a
//! time: without a caller's id (pass-through), with a new id (claim, then answer: two writes),
//! and the same ids again (a refused claim and a read: the kept answer).
//!
//! `cargo run -p clothesline-ingress --example idempotency_cost [-- <requests>]`

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clothesline_ingress::backend::{Backend, Job};
use clothesline_ingress::idempotency::Idempotent;
use clothesline_ingress::metrics::Metrics;
use futures::future::BoxFuture;
use protocol::{Error, ModelRef, Prediction, RequestMeta, Timings};
use tierkit::provision::{Topology, provision};

/// Answers every job at once with the same prediction.
struct Instant0;

impl Backend for Instant0 {
    fn submit(&self, _job: Job) -> BoxFuture<'static, Result<Prediction, Error>> {
        Box::pin(async {
            Ok(Prediction {
                model: ModelRef {
                    name: "bench".into(),
                    version: "1".into(),
                },
                classes: (0..10).map(|i| format!("class-{i}")).collect(),
                logits: (0..10).map(|i| i as f32 / 10.0).collect(),
                timings: Timings::default(),
            })
        })
    }

    fn ready(&self) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

fn job(id: &str, caller_id: bool) -> Job {
    let timeout = Duration::from_secs(10);
    Job {
        meta: RequestMeta::new(id).with_timeout(timeout),
        caller_id,
        content_type: "application/json".into(),
        payload: Bytes::from(format!(r#"{{"url":"http://images.example/{id}.jpg"}}"#)),
        timeout,
    }
}

/// Runs `n` jobs one after another; returns p50, p99 and mean latency in ms.
async fn measure(backend: &Idempotent, ids: &[String], caller_id: bool) -> (f64, f64, f64) {
    let mut ms = Vec::with_capacity(ids.len());
    for id in ids {
        let started = Instant::now();
        backend.submit(job(id, caller_id)).await.expect("answered");
        ms.push(started.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.99), ms.iter().sum::<f64>() / ms.len() as f64)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(2000);
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&url).await?;
    let js = async_nats::jetstream::new(client);
    provision(&js, &Topology::builtin()).await?;
    let metrics = Metrics::new();
    let backend = Idempotent::new(Arc::new(Instant0), js, "bench".into(), metrics.clone());
    let run = protocol::meta::new_request_id();
    let ids: Vec<String> = (0..n).map(|i| format!("bench-{run}-{i}")).collect();
    // Warm up: the bucket lookup, connections, the server's caches.
    measure(&backend, &ids[..n.min(100)], false).await;

    println!("{n} sequential requests each, against {url}");
    println!("case | p50 ms | p99 ms | mean ms");
    for (name, caller_id) in [
        ("no caller id (pass-through)", false),
        ("new caller id (claim + answer)", true),
        ("same id again (kept answer)", true),
    ] {
        let (p50, p99, mean) = measure(&backend, &ids, caller_id).await;
        println!("{name} | {p50:.3} | {p99:.3} | {mean:.3}");
    }
    let counted = |o: &str| metrics.idempotent.with_label_values(&[o]).get();
    println!(
        "counted: new {}, cached {}",
        counted("new"),
        counted("cached")
    );
    Ok(())
}
