//! Cancellation: when a caller goes away (HTTP client disconnected, deadline passed) the ingress
//! publishes the request id on the core-NATS subject `clothesline.cancel`. Worker tiers keep the
//! recent ids in a bounded [`CancelSet`] and check it before they spend CPU or GPU on a request;
//! a cancelled request is acked and dropped without a reply (nobody listens). The subscription
//! that fills the set is `tierkit::cancel`.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

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
