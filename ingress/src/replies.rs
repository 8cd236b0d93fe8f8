//! Reply routing: each request gets a reply subject of its own,
//! `clothesline.replies.<instance>.<token>` with an unguessable token
//! ([`protocol::reply_to::IngressReplies`]); one core-NATS subscription per ingress instance
//! (`clothesline.replies.<instance>.>`) receives every reply, and a map from token to a oneshot
//! sender hands each to the caller waiting for it, if the reply is for that caller's request id.
//! A reply nobody waits for (late, duplicate, for a caller that went away, or one whose subject
//! names no token of a waiting caller, e.g. a spoofed answer) is dropped and counted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use protocol::Reply;
use protocol::reply_to::IngressReplies;
use tokio::sync::oneshot;

use crate::metrics::Metrics;

/// The waiting callers, by token: the request id each waits for and where to hand its reply.
type Waiting = Arc<Mutex<HashMap<String, (String, oneshot::Sender<Reply>)>>>;

#[derive(Clone)]
pub struct ReplyRouter {
    subjects: IngressReplies,
    waiting: Waiting,
    metrics: Metrics,
}

/// A registered caller. Dropping it (caller gone, deadline hit) unregisters its token.
pub struct Waiter {
    token: String,
    /// The subject its reply must come on: put it in the request's `Clothesline-Reply-To`.
    pub reply_to: String,
    rx: oneshot::Receiver<Reply>,
    waiting: Waiting,
}

impl Waiter {
    /// The request's secret token (the last token of its reply subject).
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Resolves with the reply; `None` if the router went away.
    pub async fn reply(&mut self) -> Option<Reply> {
        (&mut self.rx).await.ok()
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        lock(&self.waiting).remove(&self.token);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl ReplyRouter {
    pub fn new(subjects: IngressReplies, metrics: Metrics) -> Self {
        Self {
            subjects,
            waiting: Arc::default(),
            metrics,
        }
    }

    /// The subscription subject that receives this instance's replies.
    pub fn subscription(&self) -> String {
        self.subjects.wildcard()
    }

    /// Subscribes to this instance's replies and routes them on a task until the subscription
    /// ends; the subscription is registered with the server (flushed) before this returns.
    pub async fn start(
        &self,
        client: &async_nats::Client,
    ) -> anyhow::Result<tokio::task::JoinHandle<()>> {
        let subscriber = client.subscribe(self.subscription()).await?;
        client.flush().await?;
        Ok(tokio::spawn(self.clone().route(subscriber)))
    }

    /// Registers request `id` before its request is published; the waiter holds its reply
    /// subject.
    pub fn register(&self, id: &str) -> Waiter {
        let (tx, rx) = oneshot::channel();
        let (reply_to, token) = self.subjects.new_reply_to();
        lock(&self.waiting).insert(token.clone(), (id.to_string(), tx));
        Waiter {
            token,
            reply_to,
            rx,
            waiting: self.waiting.clone(),
        }
    }

    /// Hands a reply that came on `subject` to its waiter; returns whether someone was waiting
    /// there for this request id. A reply for another id leaves the waiter waiting.
    pub fn deliver(&self, subject: &str, reply: Reply) -> bool {
        let sender = self.subjects.token_of(subject).and_then(|token| {
            let mut waiting = lock(&self.waiting);
            match waiting.get(token) {
                Some((id, _)) if *id == reply.request_id => waiting.remove(token),
                _ => None,
            }
        });
        let delivered = sender.is_some_and(|(_, tx)| tx.send(reply).is_ok());
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
                    let id = reply.request_id.clone();
                    if !self.deliver(msg.subject.as_str(), reply) {
                        tracing::debug!(request_id = %id, subject = %msg.subject,
                            "reply for no waiting caller (late, duplicate or foreign); dropped");
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

    fn error(id: &str) -> Reply {
        Reply::error(id, Error::new(ErrorCode::Internal, "x"))
    }

    #[tokio::test]
    async fn routes_by_token_and_id_and_counts_strays() {
        let metrics = Metrics::new();
        let router = ReplyRouter::new(IngressReplies::new("i").unwrap(), metrics.clone());
        let mut a = router.register("a");
        let b = router.register("b");
        assert_eq!(router.waiting(), 2);
        assert_ne!(a.reply_to, b.reply_to);

        // Another request's answer on a's subject, and a's answer on the instance's bare
        // subject: neither reaches a.
        assert!(!router.deliver(&a.reply_to, error("b")));
        assert!(!router.deliver("clothesline.replies.i", error("a")));
        assert!(!router.deliver("clothesline.replies.i.a", error("a")));
        assert!(router.deliver(&a.reply_to, error("a")));
        assert_eq!(a.reply().await.expect("a reply").request_id, "a");
        // A duplicate of a's reply: dropped and counted.
        assert!(!router.deliver(&a.reply_to, error("a")));
        assert_eq!(metrics.unmatched_replies.get(), 4);

        drop(b);
        drop(a);
        assert_eq!(router.waiting(), 0);
    }

    #[tokio::test]
    async fn two_callers_with_the_same_id_each_get_their_own_answer() {
        let router = ReplyRouter::new(IngressReplies::new("i").unwrap(), Metrics::new());
        let mut first = router.register("same");
        let mut second = router.register("same");
        assert!(router.deliver(&second.reply_to, error("same")));
        assert!(second.reply().await.is_some());
        assert_eq!(router.waiting(), 1);
        assert!(router.deliver(&first.reply_to, error("same")));
        assert!(first.reply().await.is_some());
    }
}
