//! Least privilege on NATS, the other side: with the per-role users of `nats/auth.conf`, each
//! role can do its job, by hand and with the real tiers (one prediction end to end over HTTP,
//! the clothesline.classify service and the bulk path). `permissions.rs` shows the refusals.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer::PullConsumer};
use bytes::Bytes;
use clothesline_tests::nats::NatsServer;
use clothesline_tests::roles::*;
use clothesline_tests::stack::{Stack, StackOptions};
use futures::StreamExt;
use protocol::names::*;

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
    js_publish(&ingress.js(), INGRESS_REQUESTS_SUBJECT, h, b"{}").await;
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
