//! Cancellation, with real processes and a real nats-server: work whose caller went away is
//! skipped by the tier that holds it, acked, and never answered.
//!
//! - An HTTP client that disconnects while the preprocessor downloads its image: the ingress
//!   publishes the id on `clothesline.cancel`, the preprocessor finishes the download, sees the
//!   id and skips decoding; no tensor reaches the tensors stream.
//! - Ids cancelled before their messages arrive: the preprocessor skips the request and the
//!   gpu-worker skips the tensor, while the requests behind them are answered.
//!
//! Each step waits for a condition (a metric reaching a value, a reply), never for a time.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::jetstream;
use clothesline_tests::nats::stream_messages;
use clothesline_tests::origin::{Origin, metric, metric_reaches, metrics_text};
use clothesline_tests::paths;
use clothesline_tests::stack::{Stack, StackOptions};
use clothesline_tests::worker::publish_tensor;
use futures::StreamExt;
use protocol::messages::Outcome;
use protocol::names::*;
use protocol::{Manifest, Reply, RequestMeta};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_disconnects_during_the_download_costs_no_decode_and_no_inference() {
    let stack = Stack::start(StackOptions::default()).await;
    let origin = Origin::start(paths::validation_image("pants")).await;
    let js = jetstream::new(stack.nats.client().await);
    let pre_metrics = stack.preprocessors[0].url("/metrics");
    let worker_metrics = stack.worker.url("/metrics");

    let call = {
        let (http, url) = (stack.http.clone(), stack.ingress.url("/v1/classify"));
        let image = origin.url("/gated/shirt.jpg");
        tokio::spawn(async move {
            http.post(url)
                .json(&serde_json::json!({ "url": image }))
                .send()
                .await
        })
    };
    // The preprocessor is downloading; the client goes away.
    assert_eq!(origin.arrival().await, "/gated/shirt.jpg");
    call.abort();
    assert!(call.await.unwrap_err().is_cancelled());
    metric_reaches(
        &stack.http,
        &pre_metrics,
        "preprocessor_cancellations_received_total",
        1.0,
    )
    .await;

    origin.release();
    metric_reaches(
        &stack.http,
        &pre_metrics,
        "preprocessor_requests_total{outcome=\"cancelled\"}",
        1.0,
    )
    .await;
    let text = metrics_text(&stack.http, &pre_metrics).await;
    assert_eq!(
        metric(&text, "preprocessor_decode_seconds_count"),
        Some(0.0),
        "nothing was decoded"
    );
    assert_eq!(
        metric(&text, "preprocessor_requests_total{outcome=\"ok\"}"),
        Some(0.0)
    );
    assert_eq!(stream_messages(&js, TENSORS_STREAM).await, 0, "no tensor");
    let text = metrics_text(&stack.http, &worker_metrics).await;
    assert_eq!(metric(&text, "gpu_worker_items_total"), Some(0.0));
    let requests = js
        .get_consumer_from_stream::<jetstream::consumer::pull::Config, _, _>(
            PREPROCESSOR_CONSUMER,
            REQUESTS_STREAM,
        )
        .await
        .unwrap()
        .cached_info()
        .clone();
    assert_eq!(
        (requests.num_pending, requests.num_ack_pending),
        (0, 0),
        "the cancelled request was acked"
    );

    // The tiers go on serving.
    let (status, body) = stack.predict(&origin.url("/image.jpg")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_cancelled_before_their_messages_arrive_are_skipped_by_both_workers() {
    let stack = Stack::start(StackOptions::default()).await;
    let origin = Origin::start(paths::validation_image("pants")).await;
    let client = stack.nats.client().await;
    let js = jetstream::new(client.clone());
    let http = &stack.http;
    let (pre_metrics, worker_metrics) = (
        stack.preprocessors[0].url("/metrics"),
        stack.worker.url("/metrics"),
    );
    let replies_subject = "clothesline.replies.bulk.cancellation-test";
    let mut replies = client.subscribe(replies_subject).await.unwrap();

    // Both workers know of the cancelled ids before the messages exist.
    for id in ["request-cancelled", "tensor-cancelled"] {
        client.publish(CANCEL_SUBJECT, id.into()).await.unwrap();
    }
    client.flush().await.unwrap();
    let received = "preprocessor_cancellations_received_total";
    metric_reaches(http, &pre_metrics, received, 2.0).await;
    let received = "gpu_worker_cancellations_received_total";
    metric_reaches(http, &worker_metrics, received, 2.0).await;

    let meta = |id: &str| {
        let mut m = RequestMeta::new(protocol::meta::new_request_id())
            .with_reply_to(replies_subject)
            .with_timeout(Duration::from_secs(60));
        m.request_id = id.into();
        m
    };
    let body = serde_json::to_vec(&serde_json::json!({ "url": origin.url("/image.jpg") })).unwrap();
    for id in ["request-cancelled", "request-kept"] {
        js.publish_with_headers(
            REQUESTS_SUBJECT,
            meta(id).to_headers(CONTENT_TYPE_JSON),
            body.clone().into(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    }
    let len = Manifest::load(paths::manifest()).unwrap().input_len();
    for id in ["tensor-cancelled", "tensor-kept"] {
        publish_tensor(&js, &meta(id), vec![128; len]).await;
    }

    let mut answered = Vec::new();
    while answered.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(120), replies.next())
            .await
            .expect("the kept requests are answered")
            .unwrap();
        let reply = Reply::decode(&msg.payload).unwrap();
        assert!(matches!(reply.outcome, Outcome::Prediction(_)), "{reply:?}");
        answered.push(reply.request_id);
    }
    answered.sort();
    assert_eq!(answered, ["request-kept", "tensor-kept"]);

    let cancelled = "preprocessor_requests_total{outcome=\"cancelled\"}";
    metric_reaches(http, &pre_metrics, cancelled, 1.0).await;
    metric_reaches(http, &worker_metrics, "gpu_worker_cancelled_total", 1.0).await;
    let text = metrics_text(http, &worker_metrics).await;
    assert_eq!(metric(&text, "gpu_worker_items_total"), Some(2.0));
    let text = metrics_text(http, &pre_metrics).await;
    assert_eq!(metric(&text, cancelled), Some(1.0));
    assert_eq!(
        metric(&text, "preprocessor_requests_total{outcome=\"ok\"}"),
        Some(1.0)
    );
}
