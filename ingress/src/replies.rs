//! Reply routing: one core-NATS subscription per ingress instance receives every reply, and a
//! map from request id to a oneshot sender hands each to the caller waiting for it. A reply
//! nobody waits for (late, duplicate, or for a caller that went away) is dropped and counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use protocol::Reply;
use tokio::sync::oneshot;

use crate::metrics::Metrics;

#[derive(Clone)]
pub struct ReplyRouter {
    subject: String,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Reply>>>>,
    metrics: Metrics,
}

/// A registered caller. Dropping it (caller gone, deadline hit) unregisters the request id.
pub struct Waiter {
    id: String,
    rx: oneshot::Receiver<Reply>,
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Reply>>>>,
}

impl Waiter {
    /// Resolves with the reply; `None` if the router went away.
    pub async fn reply(&mut self) -> Option<Reply> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        lock(&self.waiting).remove(&self.id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ReplyRouter {
    pub fn new(subject: String, metrics: Metrics) -> Self {
        Self {
            subject,
            waiting: Arc::default(),
            metrics,
        }
    }

    /// The subject replies for this instance are published on.
    pub fn subject(&self) -> &str {
        &self.subject
    }

    /// Registers a request id before its request is published.
    pub fn register(&self, id: &str) -> Waiter {
        let (tx, rx) = oneshot::channel();
        lock(&self.waiting).insert(id.to_string(), tx);
        Waiter {
            id: id.to_string(),
            rx,
            waiting: self.waiting.clone(),
        }
    }

    /// Hands a reply to its waiter; returns whether someone was waiting.
    pub fn deliver(&self, reply: Reply) -> bool {
        let sender = lock(&self.waiting).remove(&reply.request_id);
        let delivered = sender.is_some_and(|tx| tx.send(reply).is_ok());
        if !delivered {
            self.metrics.unmatched_replies.inc();
        }
        delivered
    }

    /// Callers waiting right now.
    pub fn waiting(&self) -> usize {
        lock(&self.waiting).len()
    }

    /// Routes replies from the subscription until it ends.
    pub async fn route(self, mut subscriber: async_nats::Subscriber) {
        while let Some(msg) = subscriber.next().await {
            match Reply::decode(&msg.payload) {
                Ok(reply) => {
                    if !self.deliver(reply) {
                        tracing::debug!("reply for a request nobody waits for; dropped");
                    }
                }
                Err(e) => {
                    self.metrics.unmatched_replies.inc();
                    tracing::warn!(error = %e, "undecodable reply dropped");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::{Error, ErrorCode};

    #[tokio::test]
    async fn routes_by_id_and_counts_strays() {
        let metrics = Metrics::new();
        let router = ReplyRouter::new("r".into(), metrics.clone());
        let mut a = router.register("a");
        let b = router.register("b");
        assert_eq!(router.waiting(), 2);

        assert!(router.deliver(Reply::error("a", Error::new(ErrorCode::Internal, "x"))));
        assert_eq!(a.reply().await.expect("a reply").request_id, "a");
        // A duplicate of a's reply, and one for an unknown id: dropped and counted.
        assert!(!router.deliver(Reply::error("a", Error::new(ErrorCode::Internal, "x"))));
        assert!(!router.deliver(Reply::error("zzz", Error::new(ErrorCode::Internal, "x"))));
        assert_eq!(metrics.unmatched_replies.get(), 2);

        drop(b);
        drop(a);
        assert_eq!(router.waiting(), 0);
    }
}
