//! What both worker tiers (preprocessor, gpu-worker) do to start and to stop around their work:
//! - [`Readiness`]: one readiness check made of the steps every worker passes (NATS connected,
//!   its durable consumer found and pulled from, not stopping), plus the tier's own gate where
//!   it has one (the gpu-worker's model, loaded and warmed up);
//! - [`Health`]: the health and metrics server, up first (so a probe sees "not ready: why") and
//!   until the tier returns (so it answers "not ready" while draining);
//! - [`flush_within`]: the last flush of NATS, bounded by the grace.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use anyhow::Context as _;
use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::pull::PullSource;
use crate::runtime::{Grace, ReadyCheck, bounded, nats_connected, serve_health};

/// Whether a worker tier is ready, and if not, why. Shared between the tier (which marks each
/// step) and its `/readyz`.
#[derive(Debug)]
pub struct Readiness {
    /// "consumer X on stream Y", for the message while not pulling.
    consumer: String,
    gate: Option<Gate>,
    client: OnceLock<async_nats::Client>,
    /// Whether pulling works ([`PullSource::pulling`]; set once the consumer is found).
    pulling: OnceLock<Arc<AtomicBool>>,
    stopping: AtomicBool,
}

/// A step of the tier's own that readiness waits for.
#[derive(Debug)]
struct Gate {
    open: AtomicBool,
    /// What the tier is still doing while the gate is closed.
    waiting_for: &'static str,
}

impl Readiness {
    /// Readiness of a worker that pulls from `consumer` on `stream`.
    pub fn new(stream: &str, consumer: &str) -> Self {
        Self {
            consumer: format!("consumer {consumer} on stream {stream}"),
            gate: None,
            client: OnceLock::new(),
            pulling: OnceLock::new(),
            stopping: AtomicBool::new(false),
        }
    }

    /// Also waits for [`Readiness::open_gate`]; until then, not ready because of `waiting_for`.
    pub fn with_gate(mut self, waiting_for: &'static str) -> Self {
        self.gate = Some(Gate {
            open: AtomicBool::new(false),
            waiting_for,
        });
        self
    }

    /// The tier's NATS client: ready only while it is connected.
    pub fn connected(&self, client: &async_nats::Client) {
        let _ = self.client.set(client.clone());
    }

    /// The consumer is found: ready only while `source`'s last pull could be opened.
    pub fn pulling_from(&self, source: &PullSource) {
        let _ = self.pulling.set(source.pulling());
    }

    /// The tier's own step is done.
    pub fn open_gate(&self) {
        if let Some(gate) = &self.gate {
            gate.open.store(true, Ordering::Relaxed);
        }
    }

    /// The tier is stopping: not ready any more, whatever else holds.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// `Ok` when ready; otherwise the first reason it is not.
    pub fn check(&self) -> Result<(), String> {
        if self.stopping.load(Ordering::Relaxed) {
            return Err("shutting down".into());
        }
        if let Some(gate) = &self.gate
            && !gate.open.load(Ordering::Relaxed)
        {
            return Err(gate.waiting_for.into());
        }
        match self.client.get() {
            None => return Err("not connected to NATS yet".into()),
            Some(c) if !nats_connected(c) => return Err("NATS connection lost".into()),
            Some(_) => {}
        }
        if !self
            .pulling
            .get()
            .is_some_and(|p| p.load(Ordering::Relaxed))
        {
            return Err(format!("not pulling from {} (yet)", self.consumer));
        }
        Ok(())
    }
}

/// The worker's health and metrics server (`/healthz`, `/readyz`, `/metrics`); it stops when
/// dropped.
pub struct Health {
    /// The address it listens on (the configured one, with the port the OS chose for port 0).
    pub addr: SocketAddr,
    _stop: DropGuard,
    _task: JoinHandle<()>,
}

impl Health {
    /// Serves `readiness` and `registry` on `addr`.
    pub async fn serve(
        addr: SocketAddr,
        readiness: Arc<Readiness>,
        registry: prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let ready: ReadyCheck = Arc::new(move || readiness.check());
        let stop = CancellationToken::new();
        let (addr, task) = serve_health(addr, ready, registry, stop.clone())
            .await
            .with_context(|| format!("cannot serve health on {addr}"))?;
        Ok(Self {
            addr,
            _stop: stop.drop_guard(),
            _task: task,
        })
    }
}

/// Flushes what `client` still buffers (replies, acks, naks), giving up at the grace's end: a
/// flush waits for a server that may be gone, and then it would never end.
pub async fn flush_within(client: &async_nats::Client, grace: &Grace) {
    if let Some(Err(e)) = bounded(grace.ends(), "flush NATS", client.flush()).await {
        tracing::warn!(error = %e, "cannot flush NATS on shutdown");
    }
}

#[cfg(test)]
mod tests {
    use super::Readiness;

    #[test]
    fn stopping_comes_first_then_the_gate_then_nats() {
        let r = Readiness::new("S", "C").with_gate("model not loaded yet");
        assert_eq!(r.check(), Err("model not loaded yet".to_string()));
        r.open_gate();
        assert_eq!(r.check(), Err("not connected to NATS yet".to_string()));
        r.stopping();
        assert_eq!(r.check(), Err("shutting down".to_string()));
    }

    #[test]
    fn without_a_gate_opening_it_changes_nothing() {
        let r = Readiness::new("S", "C");
        r.open_gate();
        assert_eq!(r.check(), Err("not connected to NATS yet".to_string()));
    }
}
