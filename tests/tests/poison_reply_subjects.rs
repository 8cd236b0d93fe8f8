//! Poison reply subjects (issue #22): each is published straight onto both streams, with work
//! that would otherwise be answered (an image, a valid tensor). The first tier that reads it
//! (preprocessor, gpu-worker) terminates it unanswered and counts it; nothing is ever published to
//! it (a client subscribed to everything sees no such subject and no answer to those requests),
//! no tier's connection is closed (the server's closed connections), nothing is redelivered,
//! and requests beside them are answered.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use clothesline_tests::origin::metric_reaches;
use clothesline_tests::paths;
use clothesline_tests::roles::next;
use clothesline_tests::stack::{Stack, StackOptions};
use clothesline_tests::wait_until;
use clothesline_tests::worker::publish_tensor;
use futures::{FutureExt, StreamExt};
use protocol::messages::Outcome;
use protocol::names::*;
use protocol::{Reply, RequestMeta};

/// The reply subjects found to hurt or to be published to before validation existed.
fn poison_subjects() -> Vec<String> {
    let long = format!("clothesline.replies.bulk.{}", "x".repeat(5000));
    assert_eq!(long.len(), 5025);
    vec![
        long,
        "probe.>".into(),
        "probe.w.*".into(),
        "$SYS.REQ.SERVER.PING".into(),
        "clothesline.replies.bulk.poison..empty".into(),
        "clothesline.replies.bulk.poison space".into(),
    ]
}

const SIDE: &str = "clothesline.replies.bulk.side";

async fn queue_request(
    js: &async_nats::jetstream::Context,
    id: &str,
    reply_to: &str,
    jpeg: &Bytes,
) {
    let mut h = HeaderMap::new();
    h.insert(HEADER_REQUEST_ID, id);
    h.insert(HEADER_NATS_MSG_ID, id);
    h.insert(HEADER_REPLY_TO, reply_to);
    h.insert(HEADER_CONTENT_TYPE, "image/jpeg");
    js.publish_with_headers(REQUESTS_SUBJECT, h, jpeg.clone())
        .await
        .unwrap()
        .await
        .unwrap();
}

/// Waits for the predictions of the side requests `ids`, in whatever order they come.
async fn side_answers(replies: &mut async_nats::Subscriber, ids: &[&str]) {
    let mut got = Vec::new();
    for _ in ids {
        let msg = next(replies).await;
        let reply = Reply::decode(&msg.payload).unwrap();
        assert!(matches!(reply.outcome, Outcome::Prediction(_)), "{reply:?}");
        got.push(reply.request_id);
    }
    got.sort();
    assert_eq!(got, ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_reply_subjects_are_terminated_counted_and_never_published_to() {
    let stack = Stack::start(StackOptions::default()).await;
    let client = stack.nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let mut spy = client.subscribe(">").await.unwrap();
    let mut side = client.subscribe(format!("{SIDE}.>")).await.unwrap();
    client.flush().await.unwrap();
    let jpeg = Bytes::from(paths::validation_image("pants"));

    queue_request(&js, "side-1", &format!("{SIDE}.1"), &jpeg).await;
    let poison = poison_subjects();
    let manifest = protocol::Manifest::load(paths::manifest()).unwrap();
    let pixels = (manifest.input.width * manifest.input.height * 3) as usize;
    for (i, subject) in poison.iter().enumerate() {
        queue_request(&js, &format!("poison-r{i}"), subject, &jpeg).await;
        let meta = RequestMeta {
            request_id: format!("poison-t{i}"),
            reply_to: Some(subject.clone()),
            deadline: None,
            traceparent: None,
            model_version: None,
        };
        publish_tensor(&js, &meta, vec![0; pixels]).await;
    }
    queue_request(&js, "side-2", &format!("{SIDE}.2"), &jpeg).await;
    let http = stack
        .http
        .post(stack.ingress.url("/v1/classify"))
        .header("content-type", "image/jpeg")
        .body(jpeg.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(http.status(), 200);
    side_answers(&mut side, &["side-1", "side-2"]).await;

    // Terminated and counted, once each, by the first tier that read them.
    let n = poison.len() as f64;
    let pre = stack.preprocessors[0].url("/metrics");
    metric_reaches(
        &stack.http,
        &pre,
        "preprocessor_invalid_reply_subjects_total",
        n,
    )
    .await;
    let gpu = stack.worker.url("/metrics");
    metric_reaches(
        &stack.http,
        &gpu,
        "gpu_worker_invalid_reply_subjects_total",
        n,
    )
    .await;
    let admin = stack.nats.client().await;
    for (stream, consumer) in [
        (REQUESTS_STREAM, PREPROCESSOR_CONSUMER),
        (TENSORS_STREAM, GPU_WORKER_CONSUMER),
    ] {
        let js = async_nats::jetstream::new(admin.clone());
        let c: async_nats::jetstream::consumer::PullConsumer =
            js.get_consumer_from_stream(consumer, stream).await.unwrap();
        let what = format!("{stream} to be empty and settled");
        let info = wait_until(&what, Duration::from_secs(30), || {
            let mut c = c.clone();
            async move {
                let info = c.info().await.ok()?.clone();
                (info.num_pending == 0 && info.num_ack_pending == 0).then_some(info)
            }
        })
        .await;
        assert_eq!(info.num_redelivered, 0, "{stream}: nothing redelivered");
        let stored = clothesline_tests::nats::stream_messages(&js, stream).await;
        assert_eq!(stored, 0, "{stream}");
    }

    // No tier lost its connection.
    let closed = stack.nats.closed_connections().await;
    let tiers: Vec<_> = closed
        .iter()
        .filter(|(name, _)| name.starts_with("clothesline-"))
        .collect();
    assert!(tiers.is_empty(), "tier connections closed: {tiers:?}");

    // Nothing was published to a poison subject, and no answer to a poison request went anywhere.
    client.flush().await.unwrap();
    let mut seen = 0;
    while let Some(Some(msg)) = spy.next().now_or_never() {
        seen += 1;
        let subject = msg.subject.as_str();
        assert!(
            !subject.starts_with("probe.")
                && !subject.starts_with("$SYS.")
                && !subject.contains("poison")
                && subject.len() <= protocol::reply_to::MAX_LEN,
            "published to {subject:.80}"
        );
        if let Ok(reply) = Reply::decode(&msg.payload) {
            assert!(
                !reply.request_id.starts_with("poison-"),
                "{subject:.80} got {reply:?}"
            );
        }
    }
    assert!(seen > 0, "the spy saw the traffic beside the poison");
}
