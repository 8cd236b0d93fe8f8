//! Cancellation: when a caller goes away (HTTP client disconnected, deadline passed) the ingress
//! publishes the request id on the core-NATS subject `clothesline.cancel`. Worker tiers keep the
//! recent ids in a bounded [`CancelSet`] and check it before they spend CPU or GPU on a request;
//! a cancelled request is acked and dropped without a reply (nobody listens).

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use futures::StreamExt;

use crate::names::CANCEL_SUBJECT;

/// Recently cancelled request ids, bounded: the oldest are forgotten first.
#[derive(Debug, Clone)]
pub struct CancelSet {
    inner: Arc<Mutex<Inner>>,
    capacity: usize,
}

#[derive(Debug, Default)]
struct Inner {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

impl CancelSet {
    pub fn new(capacity: usize) -> Self {
        Self {
            inner: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn insert(&self, id: &str) {
        let mut inner = self.lock();
        if inner.ids.insert(id.to_string()) {
            inner.order.push_back(id.to_string());
            while inner.order.len() > self.capacity {
                if let Some(old) = inner.order.pop_front() {
                    inner.ids.remove(&old);
                }
            }
        }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().ids.contains(id)
    }

    pub fn len(&self) -> usize {
        self.lock().order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Subscribes to `clothesline.cancel` and fills the set until the subscription ends (the
    /// client reconnects and resubscribes by itself). `received` counts each id taken in; the
    /// subscription is registered with the server (flushed) before this returns, so a
    /// cancellation published after it is seen.
    pub async fn listen(
        &self,
        client: &async_nats::Client,
        received: prometheus::IntCounter,
    ) -> anyhow::Result<Listener> {
        let mut sub = client.subscribe(CANCEL_SUBJECT).await?;
        client.flush().await?;
        let set = self.clone();
        Ok(Listener(tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                match std::str::from_utf8(&msg.payload) {
                    Ok(id) if crate::meta::valid_request_id(id) => {
                        set.insert(id);
                        received.inc();
                    }
                    _ => tracing::debug!("ignored a malformed cancellation"),
                }
            }
        })))
    }
}

/// The task filling a [`CancelSet`]; dropping it ends the subscription.
#[derive(Debug)]
pub struct Listener(tokio::task::JoinHandle<()>);

impl Drop for Listener {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A worker tier's cancellations: when `enabled`, a set of [`DEFAULT_CAPACITY`] ids filled from
/// `clothesline.cancel` (subscribed before this returns) and the listener to keep alive with it;
/// `None` when the tier ignores cancellations.
pub async fn subscribe_if(
    enabled: bool,
    client: &async_nats::Client,
    received: prometheus::IntCounter,
) -> anyhow::Result<Option<(CancelSet, Listener)>> {
    if !enabled {
        return Ok(None);
    }
    let set = CancelSet::new(DEFAULT_CAPACITY);
    let listener = set.listen(client, received).await?;
    Ok(Some((set, listener)))
}

/// Default capacity of a tier's set: ids cancelled within the last minutes at a high rate.
pub const DEFAULT_CAPACITY: usize = 65_536;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_recent_ids_and_forgets_the_oldest() {
        let set = CancelSet::new(2);
        set.insert("a");
        set.insert("b");
        set.insert("b");
        assert!(set.contains("a") && set.contains("b"));
        set.insert("c");
        assert!(!set.contains("a"));
        assert!(set.contains("b") && set.contains("c"));
        assert_eq!(set.len(), 2);
    }
}
