//! Least privilege on NATS: a real nats-server with the per-role users of `nats/auth.conf`, the
//! streams provisioned as `provision`, and real clients of every role. Each role is refused
//! outside its job (the server answers `-ERR 'Permissions Violation ...'`, which async-nats hands
//! to the event callback; a refused JetStream API request gets no answer, and the streams are
//! checked to be untouched), and each role can do its job: by hand, and with the real tiers, one
//! prediction end to end over HTTP, the clothesline.classify service and the bulk path.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::jetstream::{self, consumer::PullConsumer};
use async_nats::{Client, Event, HeaderMap};
use bytes::Bytes;
use clothesline_tests::nats::NatsServer;
use clothesline_tests::stack::{Stack, StackOptions};
use futures::StreamExt;
use protocol::names::*;
use protocol::provision::{Topology, provision};
use tokio::sync::mpsc;

/// How long a refusal or an answer may take; they come at once, this is only a bound.
const WAIT: Duration = Duration::from_secs(10);

/// A client of one role, with the server errors its connection received.
struct Role {
    user: &'static str,
    client: Client,
    errors: mpsc::UnboundedReceiver<String>,
}

impl Role {
    async fn connect(nats: &NatsServer, user: &'static str) -> Self {
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

    fn js(&self) -> jetstream::Context {
        jetstream::new(self.client.clone())
    }

    /// Waits for the server's permissions violation for `what` ("Publish" or "Subscription")
    /// to `subject`.
    async fn violation(&mut self, what: &str, subject: &str) {
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
    async fn publish_refused(&mut self, subject: &str) {
        let inbox = self.client.new_inbox();
        self.client
            .publish_with_reply(subject.to_string(), inbox, Bytes::from_static(b"{}"))
            .await
            .unwrap();
        self.client.flush().await.unwrap();
        self.violation("Publish", subject).await;
    }

    /// Subscribes to `subject` and expects a refusal.
    async fn subscribe_refused(&mut self, subject: &str) {
        let _sub = self.client.subscribe(subject.to_string()).await.unwrap();
        self.client.flush().await.unwrap();
        self.violation("Subscription", subject).await;
    }
}

fn request_headers(id: &str, reply_to: &str, content_type: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(HEADER_REQUEST_ID, id);
    h.insert(HEADER_NATS_MSG_ID, id);
    h.insert(HEADER_REPLY_TO, reply_to);
    h.insert(HEADER_CONTENT_TYPE, content_type);
    h
}

/// Publishes into a stream and waits for the PubAck.
async fn js_publish(js: &jetstream::Context, subject: &str, headers: HeaderMap, body: &[u8]) {
    js.publish_with_headers(subject.to_string(), headers, Bytes::copy_from_slice(body))
        .await
        .unwrap()
        .await
        .unwrap();
}

async fn next(sub: &mut async_nats::Subscriber) -> async_nats::Message {
    tokio::time::timeout(WAIT, sub.next())
        .await
        .expect("a message in time")
        .expect("subscription open")
}

/// A server with users, both streams provisioned by `provision`, and the admin's client.
async fn provisioned() -> (NatsServer, Client) {
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
async fn queue_state(admin: &Client, stream: &str, consumer: &str) -> (u64, u64, usize) {
    let js = jetstream::new(admin.clone());
    let messages = js
        .get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages;
    let mut c: PullConsumer = js.get_consumer_from_stream(consumer, stream).await.unwrap();
    let info = c.info().await.unwrap();
    (messages, info.num_pending, info.num_ack_pending)
}

/// Two requests queued (by `bulk`) and one tensor (by `preprocessor`), nobody pulling.
async fn with_queued_work(nats: &NatsServer) {
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

async fn assert_untouched(admin: &Client) {
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

fn next_subject(stream: &str, consumer: &str) -> String {
    format!("$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_are_refused_outside_their_job() {
    let (nats, admin) = provisioned().await;
    with_queued_work(&nats).await;
    let pull_requests = next_subject(REQUESTS_STREAM, PREPROCESSOR_CONSUMER);
    let pull_tensors = next_subject(TENSORS_STREAM, GPU_WORKER_CONSUMER);

    // The ingress queues requests; it never reads a queue, nor reads the stream's subjects.
    let mut ingress = Role::connect(&nats, "ingress").await;
    ingress.publish_refused(&pull_requests).await;
    ingress.publish_refused(&pull_tensors).await;
    ingress
        .publish_refused(&format!(
            "$JS.API.CONSUMER.INFO.{REQUESTS_STREAM}.{PREPROCESSOR_CONSUMER}"
        ))
        .await;
    ingress.publish_refused(TENSORS_SUBJECT).await;
    ingress.subscribe_refused(REQUESTS_SUBJECT).await;
    ingress.subscribe_refused(TENSORS_SUBJECT).await;
    // Other roles' inboxes and the bulk users' replies are not its to read.
    ingress.subscribe_refused("_INBOX.>").await;
    ingress.subscribe_refused("_INBOX_preprocessor.>").await;
    ingress
        .subscribe_refused("clothesline.replies.bulk.>")
        .await;
    // Through the JetStream API: the refused request is never answered.
    let mut js = ingress.js();
    js.set_timeout(Duration::from_secs(1));
    assert!(
        js.get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
            PREPROCESSOR_CONSUMER,
            REQUESTS_STREAM
        )
        .await
        .is_err()
    );
    ingress
        .violation(
            "Publish",
            &format!("$JS.API.CONSUMER.INFO.{REQUESTS_STREAM}.{PREPROCESSOR_CONSUMER}"),
        )
        .await;

    // The preprocessor pulls requests only: not tensors, and it queues no requests.
    let mut pre = Role::connect(&nats, "preprocessor").await;
    pre.publish_refused(&pull_tensors).await;
    pre.publish_refused(&format!(
        "$JS.ACK.{TENSORS_STREAM}.{GPU_WORKER_CONSUMER}.1.1.1.1.0"
    ))
    .await;
    pre.publish_refused(REQUESTS_SUBJECT).await;
    pre.publish_refused(CANCEL_SUBJECT).await;
    pre.subscribe_refused("clothesline.replies.>").await;
    pre.subscribe_refused(TENSORS_SUBJECT).await;
    pre.subscribe_refused("_INBOX_ingress.>").await;

    // The gpu-worker pulls tensors only, and publishes neither requests nor tensors.
    let mut gpu = Role::connect(&nats, "gpu-worker").await;
    gpu.publish_refused(&pull_requests).await;
    gpu.publish_refused(&format!(
        "$JS.ACK.{REQUESTS_STREAM}.{PREPROCESSOR_CONSUMER}.1.1.1.1.0"
    ))
    .await;
    gpu.publish_refused(REQUESTS_SUBJECT).await;
    gpu.publish_refused(TENSORS_SUBJECT).await;
    gpu.subscribe_refused("clothesline.replies.>").await;

    // Bulk users queue requests and read their own replies, nothing else.
    let mut bulk = Role::connect(&nats, "bulk").await;
    bulk.publish_refused(&pull_requests).await;
    bulk.publish_refused(TENSORS_SUBJECT).await;
    bulk.publish_refused(SERVICE_SUBJECT).await;
    bulk.subscribe_refused("clothesline.replies.ingress-1")
        .await;
    bulk.subscribe_refused("clothesline.replies.>").await;

    // Nothing was taken from or added to either queue.
    assert_untouched(&admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nobody_deletes_or_purges_and_only_provision_creates() {
    let (nats, admin) = provisioned().await;
    with_queued_work(&nats).await;
    let streams = [
        (REQUESTS_STREAM, PREPROCESSOR_CONSUMER),
        (TENSORS_STREAM, GPU_WORKER_CONSUMER),
    ];
    for user in [
        "ingress",
        "preprocessor",
        "gpu-worker",
        "public",
        "bulk",
        "provision",
    ] {
        let mut role = Role::connect(&nats, user).await;
        for (stream, consumer) in streams {
            for subject in [
                format!("$JS.API.STREAM.PURGE.{stream}"),
                format!("$JS.API.STREAM.DELETE.{stream}"),
                format!("$JS.API.STREAM.MSG.DELETE.{stream}"),
                format!("$JS.API.CONSUMER.DELETE.{stream}.{consumer}"),
                format!("$JS.API.CONSUMER.CREATE.{stream}.other"),
                format!("$JS.API.CONSUMER.DURABLE.CREATE.{stream}.other"),
            ] {
                role.publish_refused(&subject).await;
            }
            if user != "provision" {
                for subject in [
                    format!("$JS.API.STREAM.CREATE.{stream}"),
                    format!("$JS.API.STREAM.UPDATE.{stream}"),
                    format!("$JS.API.CONSUMER.CREATE.{stream}.{consumer}"),
                ] {
                    role.publish_refused(&subject).await;
                }
            }
        }
        role.publish_refused("$JS.API.STREAM.CREATE.OTHER").await;
        role.publish_refused("$JS.API.STREAM.LIST").await;
        // And through the JetStream API: refused, so never answered.
        let mut js = role.js();
        js.set_timeout(Duration::from_secs(1));
        assert!(js.delete_stream(REQUESTS_STREAM).await.is_err(), "{user}");
        role.violation(
            "Publish",
            &format!("$JS.API.STREAM.DELETE.{REQUESTS_STREAM}"),
        )
        .await;
    }
    assert_untouched(&admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_may_only_call_the_service() {
    let (nats, admin) = provisioned().await;
    with_queued_work(&nats).await;

    // The ingress's role serves clothesline.classify through the NATS services API, as the
    // ingress does ($SRV discovery included), and answers with allow_responses.
    let ingress = Role::connect(&nats, "ingress").await;
    use async_nats::service::ServiceExt;
    let service = ingress
        .client
        .service_builder()
        .start(SERVICE_NAME, "0.0.0")
        .await
        .unwrap();
    let mut endpoint = service
        .endpoint_builder()
        .name("classify")
        .add(SERVICE_SUBJECT)
        .await
        .unwrap();
    tokio::spawn(async move {
        while let Some(request) = endpoint.next().await {
            request.respond(Ok("answered".into())).await.unwrap();
        }
    });
    ingress.client.flush().await.unwrap();

    let mut public = Role::connect(&nats, "public").await;
    let answer = tokio::time::timeout(
        WAIT,
        public
            .client
            .request(SERVICE_SUBJECT, r#"{"url":"http://x/a.jpg"}"#.into()),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(&answer.payload[..], b"answered");

    // Nothing else: no queueing, no reading of replies, queues or the stream API, no discovery.
    public.publish_refused(REQUESTS_SUBJECT).await;
    public.publish_refused(TENSORS_SUBJECT).await;
    public.publish_refused(CANCEL_SUBJECT).await;
    public
        .publish_refused("clothesline.replies.ingress-1")
        .await;
    public.subscribe_refused("clothesline.replies.>").await;
    public.subscribe_refused("clothesline.replies.bulk.>").await;
    public.subscribe_refused(REQUESTS_SUBJECT).await;
    public.subscribe_refused(CANCEL_SUBJECT).await;
    public.subscribe_refused(SERVICE_SUBJECT).await;
    public.subscribe_refused("_INBOX_ingress.>").await;
    public
        .publish_refused(&format!("$JS.API.STREAM.INFO.{REQUESTS_STREAM}"))
        .await;
    public
        .publish_refused(&format!("$JS.API.STREAM.MSG.GET.{REQUESTS_STREAM}"))
        .await;
    public
        .publish_refused(&next_subject(REQUESTS_STREAM, PREPROCESSOR_CONSUMER))
        .await;
    public.publish_refused("$SRV.INFO").await;
    let mut js = public.js();
    js.set_timeout(Duration::from_secs(1));
    assert!(js.get_stream(REQUESTS_STREAM).await.is_err());

    assert_untouched(&admin).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_role_can_do_its_job() {
    let (nats, admin) = provisioned().await;
    let ingress = Role::connect(&nats, "ingress").await;
    let pre = Role::connect(&nats, "preprocessor").await;
    let gpu = Role::connect(&nats, "gpu-worker").await;
    let bulk = Role::connect(&nats, "bulk").await;

    // Subscriptions first, registered on the server (flush) before anything is published.
    let mut ingress_replies = ingress
        .client
        .subscribe(reply_subject("ingress-1"))
        .await
        .unwrap();
    let mut bulk_replies = bulk
        .client
        .subscribe("clothesline.replies.bulk.>")
        .await
        .unwrap();
    let mut pre_cancels = pre.client.subscribe(CANCEL_SUBJECT).await.unwrap();
    let mut gpu_cancels = gpu.client.subscribe(CANCEL_SUBJECT).await.unwrap();
    for role in [&ingress, &pre, &gpu, &bulk] {
        role.client.flush().await.unwrap();
    }

    // ingress: readiness reads the streams' info, then it queues a request; bulk queues one too.
    for stream in [REQUESTS_STREAM, TENSORS_STREAM] {
        ingress.js().get_stream(stream).await.unwrap();
    }
    let h = request_headers("r-ingress", &reply_subject("ingress-1"), CONTENT_TYPE_JSON);
    js_publish(&ingress.js(), REQUESTS_SUBJECT, h, b"{}").await;
    let h = request_headers(
        "r-bulk",
        "clothesline.replies.bulk.job-7",
        CONTENT_TYPE_JSON,
    );
    js_publish(&bulk.js(), REQUESTS_SUBJECT, h, b"{}").await;

    // preprocessor: finds its consumer, pulls both, publishes a tensor for the first and an
    // error reply for the second, acks both (double ack: confirmed by the server).
    let consumer: PullConsumer = pre
        .js()
        .get_consumer_from_stream(PREPROCESSOR_CONSUMER, REQUESTS_STREAM)
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(2).messages().await.unwrap();
    let mut pulled = 0;
    while let Some(msg) = batch.next().await {
        let msg = msg.unwrap();
        let headers = msg.headers.clone().unwrap();
        let id = headers.get(HEADER_REQUEST_ID).unwrap().as_str().to_string();
        let reply_to = headers.get(HEADER_REPLY_TO).unwrap().as_str().to_string();
        if id == "r-ingress" {
            let h = request_headers(&id, &reply_to, CONTENT_TYPE_MSGPACK);
            js_publish(&pre.js(), TENSORS_SUBJECT, h, b"tensor").await;
        } else {
            pre.client
                .publish(reply_to, Bytes::from_static(b"error reply"))
                .await
                .unwrap();
        }
        msg.double_ack().await.unwrap();
        pulled += 1;
    }
    assert_eq!(pulled, 2);
    let reply = next(&mut bulk_replies).await;
    assert_eq!(reply.subject.as_str(), "clothesline.replies.bulk.job-7");
    assert_eq!(&reply.payload[..], b"error reply");

    // gpu-worker: pulls the tensor, answers on the ingress's reply subject, acks.
    let consumer: PullConsumer = gpu
        .js()
        .get_consumer_from_stream(GPU_WORKER_CONSUMER, TENSORS_STREAM)
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(1).messages().await.unwrap();
    let msg = batch.next().await.unwrap().unwrap();
    let reply_to = msg.headers.as_ref().unwrap().get(HEADER_REPLY_TO).unwrap();
    gpu.client
        .publish(reply_to.to_string(), Bytes::from_static(b"prediction"))
        .await
        .unwrap();
    msg.double_ack().await.unwrap();
    let reply = next(&mut ingress_replies).await;
    assert_eq!(&reply.payload[..], b"prediction");

    // ingress: a cancellation reaches both worker tiers.
    ingress
        .client
        .publish(CANCEL_SUBJECT, "r-gone".into())
        .await
        .unwrap();
    assert_eq!(&next(&mut pre_cancels).await.payload[..], b"r-gone");
    assert_eq!(&next(&mut gpu_cancels).await.payload[..], b"r-gone");

    // Everything was taken and acknowledged.
    assert_eq!(
        queue_state(&admin, REQUESTS_STREAM, PREPROCESSOR_CONSUMER).await,
        (0, 0, 0)
    );
    assert_eq!(
        queue_state(&admin, TENSORS_STREAM, GPU_WORKER_CONSUMER).await,
        (0, 0, 0)
    );

    // KEDA still finds both consumers in the default account $G on the monitoring port.
    let url = format!(
        "http://127.0.0.1:{}/jsz?acc=$G&consumers=true&config=true",
        nats.monitor_port
    );
    let jsz: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    let account = jsz["account_details"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == "$G")
        .unwrap_or_else(|| panic!("no account $G in {jsz}"));
    for (stream, consumer) in [
        (REQUESTS_STREAM, PREPROCESSOR_CONSUMER),
        (TENSORS_STREAM, GPU_WORKER_CONSUMER),
    ] {
        let s = account["stream_detail"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == stream)
            .unwrap_or_else(|| panic!("no {stream} in {jsz}"));
        assert!(
            s["consumer_detail"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == consumer),
            "no {consumer} in {s}"
        );
    }
}

/// A small JPEG: any picture gets scores.
fn jpeg() -> Vec<u8> {
    let img = image::RgbImage::from_fn(96, 128, |x, y| image::Rgb([x as u8 * 2, y as u8, 90]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Jpeg).unwrap();
    out.into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tiers_answer_end_to_end_as_their_own_users() {
    let stack = Stack::start(StackOptions {
        nats_auth: true,
        ..StackOptions::default()
    })
    .await;
    let image = jpeg();

    // HTTP: ingress -> preprocessor -> gpu-worker -> reply, each tier as its own user.
    let res = stack
        .http
        .post(stack.ingress.url("/v1/classify?top_k=1"))
        .header("content-type", "image/jpeg")
        .body(image.clone())
        .send()
        .await
        .unwrap();
    let status = res.status();
    let http: serde_json::Value = res.json().await.unwrap();
    assert_eq!(status, 200, "{http}");
    let top = http["top"][0]["label"].as_str().unwrap().to_string();

    // The NATS service, called by a `public` client.
    let public = NatsServer::options_as("public")
        .request_timeout(Some(Duration::from_secs(60)))
        .connect(stack.nats.url())
        .await
        .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_CONTENT_TYPE, "image/jpeg");
    let answer = public
        .request_with_headers(SERVICE_SUBJECT, headers, image.clone().into())
        .await
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap();
    assert!(
        answer
            .headers
            .as_ref()
            .and_then(|h| h.get(HEADER_ERROR))
            .is_none(),
        "{body}"
    );
    assert_eq!(
        body["top"][0]["label"].as_str(),
        Some(top.as_str()),
        "{body}"
    );

    // Bulk: straight into the requests stream, the answer on its own reply subject.
    let bulk = NatsServer::options_as("bulk")
        .connect(stack.nats.url())
        .await
        .unwrap();
    let mut replies = bulk.subscribe("clothesline.replies.bulk.>").await.unwrap();
    bulk.flush().await.unwrap();
    let h = request_headers("bulk-1", "clothesline.replies.bulk.job-1", "image/jpeg");
    js_publish(&jetstream::new(bulk.clone()), REQUESTS_SUBJECT, h, &image).await;
    let msg = tokio::time::timeout(Duration::from_secs(60), replies.next())
        .await
        .unwrap()
        .unwrap();
    let reply = protocol::Reply::decode(&msg.payload).unwrap();
    assert_eq!(reply.request_id, "bulk-1");
    let protocol::messages::Outcome::Prediction(p) = reply.outcome else {
        panic!("{reply:?}")
    };
    assert_eq!(p.classes[p.top().unwrap()], top);
}
