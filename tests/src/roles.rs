//! NATS clients of the per-role users of `nats/auth.conf` (a server from
//! [`NatsServer::start_with_auth`]), for the least-privilege tests: each [`Role`] collects the
//! server errors of its connection, so a test can wait for the `Permissions Violation` a refused
//! publish or subscription gets; plus helpers to provision the streams as `provision`, queue work
//! as `bulk` and `preprocessor`, and check that the queues were left untouched.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use async_nats::{Client, Event, HeaderMap};
use bytes::Bytes;
use futures::StreamExt;
use protocol::names::*;
use tierkit::provision::{Topology, provision};
use tokio::sync::mpsc;

use crate::nats::NatsServer;

/// How long a refusal or an answer may take; they come at once, this is only a bound.
pub const WAIT: Duration = Duration::from_secs(10);

/// A client of one role, with the server errors its connection received.
pub struct Role {
    pub user: &'static str,
    pub client: Client,
    pub errors: mpsc::UnboundedReceiver<String>,
}

impl Role {
    pub async fn connect(nats: &NatsServer, user: &'static str) -> Self {
        let (tx, errors) = mpsc::unbounded_channel();
        let client = NatsServer::options_as(user)
            .event_callback(move |event| {
                let tx = tx.clone();
                async move {
                    if let Event::ServerError(e) = event {
                        let _ = tx.send(e.to_string());
                    }
                }
            })
            .connect(nats.url())
            .await
            .unwrap();
        Self {
            user,
            client,
            errors,
        }
    }

    pub fn js(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }

    /// Waits for the server's permissions violation for `what` ("Publish" or "Subscription")
    /// to `subject`.
    pub async fn violation(&mut self, what: &str, subject: &str) {
        let want = format!("Permissions Violation for {what} to \"{subject}\"");
        let seen = tokio::time::timeout(WAIT, async {
            while let Some(error) = self.errors.recv().await {
                if error.contains(&want) {
                    return true;
                }
            }
            false
        })
        .await;
        assert!(
            seen == Ok(true),
            "{}: expected `{want}` from the server",
            self.user
        );
    }

    /// Publishes to `subject` (with a reply inbox, as a request would) and expects a refusal.
    pub async fn publish_refused(&mut self, subject: &str) {
        let inbox = self.client.new_inbox();
        self.client
            .publish_with_reply(subject.to_string(), inbox, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        self.violation("Publish", subject).await;
    }

    /// Subscribes to `subject` and expects a refusal.
    pub async fn subscribe_refused(&mut self, subject: &str) {
        let _sub = self.client.subscribe(subject.to_string()).await.unwrap();
        self.client.flush().await.unwrap();
        self.violation("Subscription", subject).await;
    }
}

pub fn request_headers(id: &str, reply_to: &str, content_type: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HEADER_REQUEST_ID, id);
    h.insert(HEADER_NATS_MSG_ID, id);
    h.insert(HEADER_REPLY_TO, reply_to);
    h.insert(HEADER_CONTENT_TYPE, content_type);
    h
}

/// Publishes into a stream and waits for the PubAck.
pub async fn js_publish(js: &jetstream::Context, subject: &str, headers: HeaderMap, body: &[u8]) {
    js.publish_with_headers(subject.to_string(), headers, Bytes::copy_from_slice(body))
        .await
        .unwrap()
        .await
        .unwrap();
}

pub async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message in time")
        .expect("subscription open")
}

/// A server with users, both streams provisioned by `provision`, and the admin's client.
pub async fn provisioned() -> (NatsServer, Client) {
    let nats = NatsServer::start_with_auth().await;
    let admin = nats.client().await;
    let topology = Topology::builtin().with_memory_storage();
    // Twice: the second run takes the update path, which `provision` may take too.
    for _ in 0..2 {
        provision(&jetstream::new(admin.clone()), &topology)
            .await
            .unwrap();
    }
    (nats, admin)
}

/// Messages in a stream, and pending and unacknowledged ones of its consumer, as `provision` sees
/// them (it may read stream and consumer info).
pub async fn queue_state(admin: &Client, stream: &str, consumer: &str) -> (u64, u64, usize) {
    let js = jetstream::new(admin.clone());
    let messages = crate::nats::stream_messages(&js, stream).await;
    let mut c: PullConsumer = js.get_consumer_from_stream(consumer, stream).await.unwrap();
    let info = c.info().await.unwrap();
    (messages, info.num_pending, info.num_ack_pending)
}

/// Two requests queued (by `bulk`) and one tensor (by `preprocessor`), nobody pulling.
pub async fn with_queued_work(nats: &NatsServer) {
    let bulk = Role::connect(nats, "bulk").await;
    for id in ["r1", "r2"] {
        let h = request_headers(id, "clothesline.replies.bulk.x", CONTENT_TYPE_JSON);
        js_publish(
            &bulk.js(),
            REQUESTS_SUBJECT,
            h,
            br#"{"url":"http://x/a.jpg"}"#,
        )
        .await;
    }
    let pre = Role::connect(nats, "preprocessor").await;
    let h = request_headers("t1", "clothesline.replies.bulk.x", CONTENT_TYPE_MSGPACK);
    js_publish(&pre.js(), TENSORS_SUBJECT, h, b"tensor").await;
}

pub async fn assert_untouched(admin: &Client) {
    assert_eq!(
        queue_state(admin, REQUESTS_STREAM, PREPROCESSOR_CONSUMER).await,
        (2, 2, 0),
        "requests: stored, pending, unacknowledged"
    );
    assert_eq!(
        queue_state(admin, TENSORS_STREAM, GPU_WORKER_CONSUMER).await,
        (1, 1, 0),
        "tensors: stored, pending, unacknowledged"
    );
}

pub fn next_subject(stream: &str, consumer: &str) -> String {
    format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")
}
