//! Following the serving policy (#17): watches the policy key of the model KV bucket; on a change
//! fetches each wanted version that is not loaded (sha256 checked), starts its engine beside the
//! serving ones (load and warm-up), adds it, and reports what this worker serves
//! (`serving.<instance>`, renewed every [`SERVING_HEARTBEAT_MS`]) so the preprocessors route to
//! it. Versions the policy no longer names keep serving for `linger` (tensors already prepared
//! for them are still answered), then are removed; their engine threads end once their last batch
//! is answered. A version that cannot be fetched, loaded or warmed up is refused with a log line
//! and `gpu_worker_model_refused_total{version}`, and everything loaded keeps serving.

use std::time::Duration;

use async_nats::jetstream::kv;
use futures::StreamExt;
use protocol::meta::now_ms;
use protocol::models::{
    POLICY_KEY, Policy, SERVING_HEARTBEAT_MS, SERVING_PREFIX, Serving as Report, parse_policy,
};
use tierkit::models::Registry;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::engine::{Engine, EngineOptions};
use crate::metrics::Metrics;
use crate::serving::{Serving, Version};

/// What the follower needs.
pub struct Follower {
    pub registry: Registry,
    pub serving: Serving,
    /// The engine options of the shipped model; a fetched version replaces manifest and bytes.
    pub base: EngineOptions,
    pub metrics: Metrics,
    /// This worker's name in the serving reports.
    pub instance: String,
    /// How long a version the policy dropped keeps serving.
    pub linger: Duration,
}

impl Follower {
    /// Runs until `token` is cancelled, then deletes this worker's serving report.
    pub async fn run(self, token: CancellationToken) {
        let key = format!("{SERVING_PREFIX}{}", self.instance);
        let mut watch = loop {
            match self.registry.kv().watch_with_history(POLICY_KEY).await {
                Ok(w) => break w,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot watch the model policy; retrying");
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                    }
                }
            }
        };
        self.report(&key).await;
        let heartbeat = Duration::from_millis(SERVING_HEARTBEAT_MS);
        let mut next_report = Instant::now() + heartbeat;
        // Versions to remove, and when.
        let mut retire: Option<(Instant, Vec<String>)> = None;
        loop {
            let retire_at = retire.as_ref().map(|(at, _)| *at);
            tokio::select! {
                _ = token.cancelled() => break,
                entry = watch.next() => match entry {
                    Some(Ok(entry)) => {
                        if let Some(wanted) = self.apply(&entry).await {
                            retire = Some((Instant::now() + self.linger, wanted));
                        }
                        self.report(&key).await;
                        next_report = Instant::now() + heartbeat;
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "watching the model policy failed"),
                    None => {
                        tracing::warn!("the model policy watch ended; serving what is loaded");
                        token.cancelled().await;
                        break;
                    }
                },
                _ = tokio::time::sleep_until(next_report) => {
                    self.report(&key).await;
                    next_report = Instant::now() + heartbeat;
                }
                _ = tokio::time::sleep_until(retire_at.unwrap_or(next_report)), if retire_at.is_some() => {
                    if let Some((_, wanted)) = retire.take() {
                        self.retire(&wanted);
                        self.report(&key).await;
                    }
                }
            }
        }
        if let Err(e) = self.registry.kv().delete(&key).await {
            tracing::warn!(error = %e, "cannot delete this worker's serving report");
        }
    }

    /// Applies a policy entry: loads what is wanted and missing. Returns the wanted versions when
    /// they are all served (the others can retire), `None` otherwise (keep everything).
    async fn apply(&self, entry: &kv::Entry) -> Option<Vec<String>> {
        if entry.operation != kv::Operation::Put {
            tracing::warn!("the model policy was deleted; serving what is loaded");
            return None;
        }
        let policy: Policy = match parse_policy(&entry.value) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "ignoring an invalid model policy");
                return None;
            }
        };
        tracing::info!(policy = %policy.describe(), revision = entry.revision,
            serving = ?self.serving.versions(), "model policy changed");
        let wanted = policy.versions();
        let mut all_served = true;
        for version in &wanted {
            if self.serving.get(version).is_some() {
                continue;
            }
            let started = std::time::Instant::now();
            match self.load(version).await {
                Ok(v) => {
                    self.serving.insert(v);
                    self.metrics.model_swaps.inc();
                    tracing::info!(%version, ms = started.elapsed().as_millis() as u64,
                        serving = ?self.serving.versions(), "model version loaded, warmed up and serving");
                }
                Err(e) => {
                    all_served = false;
                    self.metrics
                        .model_refused
                        .with_label_values(&[version.as_str()])
                        .inc();
                    tracing::error!(%version, error = format!("{e:#}"),
                        serving = ?self.serving.versions(),
                        "model version refused; the versions loaded keep serving");
                }
            }
        }
        all_served.then_some(wanted)
    }

    /// Fetches (or, for the shipped version, reads) a version and starts its engine.
    async fn load(&self, version: &str) -> anyhow::Result<Version> {
        let (manifest, bytes) = match self.registry.fetch(version).await {
            Ok((m, b)) => (m, Some(b)),
            Err(tierkit::models::RegistryError::Unknown(_))
                if version == self.base.manifest.version =>
            {
                (self.base.manifest.clone(), None)
            }
            Err(e) => return Err(e.into()),
        };
        let options = EngineOptions {
            manifest: manifest.clone(),
            model_bytes: bytes.map(std::sync::Arc::new),
            ..self.base.clone()
        };
        let (engine, threads) = Engine::start(options).await?;
        // The threads end when the last handle (held by the serving set and running batches)
        // is dropped; joined on the blocking pool, so the memory's release is logged.
        let name = version.to_string();
        tokio::task::spawn_blocking(move || {
            if threads.join().is_err() {
                tracing::error!(version = %name, "an engine thread panicked");
            } else {
                tracing::info!(version = %name, "model version freed: its engine threads ended");
            }
        });
        Ok(Version::new(&manifest, engine))
    }

    fn retire(&self, wanted: &[String]) {
        let removed = self.serving.retain(|v| wanted.iter().any(|w| w == v));
        for v in removed {
            tracing::info!(version = %v.model.version, serving = ?self.serving.versions(),
                "model version retired; its engine ends after its last batch");
        }
    }

    async fn report(&self, key: &str) {
        let report = Report {
            versions: self.serving.versions(),
            at_ms: now_ms(),
        };
        self.metrics.models_loaded.set(report.versions.len() as i64);
        if let Err(e) = self.registry.kv().put(key, report.to_json().into()).await {
            tracing::warn!(error = %e, "cannot report the versions served");
        }
    }
}
