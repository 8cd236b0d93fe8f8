//! Faults, with real processes and a real nats-server (file storage):
//! - a preprocessor SIGKILLed while it holds requests mid-download: another one answers each of
//!   them once, within the callers' deadlines;
//! - a preprocessor SIGTERMed while it holds requests mid-download that outlast its grace period:
//!   it hands them back (nak) as the grace ends, so another one answers them without waiting out
//!   the ack wait;
//! - nats-server SIGKILLed and started again while requests are queued: the tiers report not
//!   ready while it is gone and ready once it is back, by themselves, and the queued requests
//!   are answered;
//! - an origin that drips its body byte by byte: the download is given up on at its timeout
//!   while good requests keep being answered;
//! - a gpu-worker whose batch runs longer than the consumer's ack wait: its in-progress acks
//!   keep every tensor from being redelivered;
//! - a gpu-worker SIGTERMed while its batch runs longer than its grace period: it hands the
//!   batch's tensors back (nak) as the grace ends, so another worker answers them at once.
//!
//! "Answered once" is checked where a duplicate would show: the ingress counts replies that
//! arrive for nobody (`ingress_unmatched_replies_total`), and JetStream counts deliveries.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use clothesline_tests::origin::{Origin, metric, metric_reaches, metrics_text};
use clothesline_tests::stack::{Stack, StackOptions, Tier};
use clothesline_tests::worker::{Worker, publish_tensor};
use clothesline_tests::{paths, wait_until};
use futures::StreamExt;
use protocol::messages::Outcome;
use protocol::names::*;
use protocol::{Manifest, Reply, RequestMeta};
use tierkit::provision::{Topology, provision};

/// Sends `POST /v1/classify {"url"}` with a deadline of `deadline_ms` on a task of its own.
fn classify(
    stack: &Stack,
    url: String,
    deadline_ms: u64,
) -> tokio::task::JoinHandle<(u16, serde_json::Value)> {
    let (http, endpoint) = (stack.http.clone(), stack.ingress.url("/v1/classify"));
    tokio::spawn(async move {
        let res = http
            .post(endpoint)
            .header("X-Request-Timeout-Ms", deadline_ms.to_string())
            .json(&serde_json::json!({ "url": url }))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json().await.unwrap())
    })
}

/// Waits for every call and checks each is a prediction with a request id of its own.
async fn all_predictions(calls: Vec<tokio::task::JoinHandle<(u16, serde_json::Value)>>) {
    let mut ids = HashSet::new();
    for call in calls {
        let (status, body) = call.await.unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(body["top"].is_array(), "{body}");
        assert!(ids.insert(body["request_id"].as_str().unwrap().to_string()));
    }
}

async fn consumer_info(js: &jetstream::Context, stream: &str, name: &str) -> consumer::Info {
    let c: consumer::Consumer<consumer::pull::Config> =
        js.get_consumer_from_stream(name, stream).await.unwrap();
    c.cached_info().clone()
}

/// Waits until a consumer has nothing pending or unacknowledged.
async fn settled(js: &jetstream::Context, stream: &str, name: &str) -> consumer::Info {
    wait_until(
        &format!("{stream}/{name} to settle"),
        Duration::from_secs(120),
        || async move {
            let c: consumer::Consumer<consumer::pull::Config> =
                js.get_consumer_from_stream(name, stream).await.ok()?;
            let info = c.cached_info().clone();
            (info.num_pending == 0 && info.num_ack_pending == 0).then_some(info)
        },
    )
    .await
}

async fn unmatched_replies(stack: &Stack) -> f64 {
    let text = metrics_text(&stack.http, &stack.ingress.url("/metrics")).await;
    metric(&text, "ingress_unmatched_replies_total").unwrap()
}

async fn readiness_becomes(http: &reqwest::Client, tier: &Tier, ready: bool) {
    let url = tier.url("/readyz");
    let what = format!("{} to report ready={ready}", tier.name);
    wait_until(&what, Duration::from_secs(120), || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let status = http.get(&url).send().await.ok()?.status();
            (status.is_success() == ready).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preprocessor_killed_mid_download_loses_no_request() {
    const REQUESTS: usize = 4;
    let mut stack = Stack::start(StackOptions::default()).await;
    let origin = Origin::start(paths::validation_image("shorts")).await;
    let js = jetstream::new(stack.nats.client().await);
    // A short ack wait, so the dead preprocessor's requests come back soon.
    let mut topology = Topology::builtin();
    topology.preprocessor.ack_wait = Duration::from_secs(3);
    provision(&js, &topology).await.unwrap();

    let calls: Vec<_> = (0..REQUESTS)
        .map(|i| classify(&stack, origin.url(&format!("/gated/{i}.jpg")), 60_000))
        .collect();
    for _ in 0..REQUESTS {
        origin.arrival().await;
    }
    let info = consumer_info(&js, REQUESTS_STREAM, PREPROCESSOR_CONSUMER).await;
    assert_eq!(info.num_ack_pending, REQUESTS, "all held by preprocessor-0");
    stack.preprocessors[0].kill();

    origin.release();
    stack.add_preprocessor().await;
    all_predictions(calls).await;

    let info = settled(&js, REQUESTS_STREAM, PREPROCESSOR_CONSUMER).await;
    assert!(
        info.delivered.consumer_sequence >= 2 * REQUESTS as u64,
        "each request was delivered again: {:?}",
        info.delivered
    );
    assert_eq!(unmatched_replies(&stack).await, 0.0, "no reply twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preprocessor_whose_grace_ends_mid_download_hands_its_requests_back() {
    const REQUESTS: usize = 4;
    let mut stack = Stack::start(StackOptions {
        preprocessor_args: vec!["--shutdown-grace-ms".into(), "1000".into()],
        ..StackOptions::default()
    })
    .await;
    let origin = Origin::start(paths::validation_image("shorts")).await;
    let js = jetstream::new(stack.nats.client().await);
    // An ack wait far beyond the callers' deadlines: a request the stopping preprocessor left
    // to it would come back too late for its caller, and for this test.
    let mut topology = Topology::builtin();
    topology.preprocessor.ack_wait = Duration::from_secs(600);
    provision(&js, &topology).await.unwrap();

    let calls: Vec<_> = (0..REQUESTS)
        .map(|i| classify(&stack, origin.url(&format!("/gated/{i}.jpg")), 60_000))
        .collect();
    for _ in 0..REQUESTS {
        origin.arrival().await;
    }
    let info = consumer_info(&js, REQUESTS_STREAM, PREPROCESSOR_CONSUMER).await;
    assert_eq!(info.num_ack_pending, REQUESTS, "all held by preprocessor-0");
    // Its downloads hang past its 1 s grace.
    let exit = stack.preprocessors[0]
        .terminate(Duration::from_secs(10))
        .await;
    assert!(exit.success(), "preprocessor-0 exited {exit}");

    stack.add_preprocessor().await;
    for i in 0..REQUESTS {
        let again = tokio::time::timeout(Duration::from_secs(45), origin.arrival()).await;
        assert!(
            again.is_ok(),
            "only {i} of {REQUESTS} requests came back before the ack wait"
        );
    }
    origin.release();
    all_predictions(calls).await;

    let info = settled(&js, REQUESTS_STREAM, PREPROCESSOR_CONSUMER).await;
    assert_eq!(
        info.delivered.consumer_sequence,
        2 * REQUESTS as u64,
        "each request delivered twice: {:?}",
        info.delivered
    );
    assert_eq!(unmatched_replies(&stack).await, 0.0, "no reply twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_requests_survive_a_nats_restart_and_every_tier_reconnects() {
    const REQUESTS: usize = 3;
    // One request at a time: the first holds the preprocessor, the others wait in the stream.
    let mut stack = Stack::start(StackOptions {
        preprocessor_args: vec!["--concurrency".into(), "1".into()],
        ..StackOptions::default()
    })
    .await;
    let origin = Origin::start(paths::validation_image("shorts")).await;
    let calls: Vec<_> = (0..REQUESTS)
        .map(|i| classify(&stack, origin.url(&format!("/gated/{i}.jpg")), 90_000))
        .collect();
    origin.arrival().await;
    {
        let js = jetstream::new(stack.nats.client().await);
        let js = &js;
        wait_until(
            "every request to be stored in the stream",
            Duration::from_secs(30),
            || async move {
                let i = consumer_info(js, REQUESTS_STREAM, PREPROCESSOR_CONSUMER).await;
                (i.num_pending as usize + i.num_ack_pending == REQUESTS).then_some(())
            },
        )
        .await;
    }

    stack.nats.kill();
    let http = stack.http.clone();
    for tier in [&stack.ingress, &stack.preprocessors[0], &stack.worker] {
        readiness_becomes(&http, tier, false).await;
    }
    stack.nats.start_again().await;
    for tier in [&stack.ingress, &stack.preprocessors[0], &stack.worker] {
        readiness_becomes(&http, tier, true).await;
    }

    origin.release();
    all_predictions(calls).await;
    let js = jetstream::new(stack.nats.client().await);
    settled(&js, REQUESTS_STREAM, PREPROCESSOR_CONSUMER).await;
    settled(&js, TENSORS_STREAM, GPU_WORKER_CONSUMER).await;
    assert_eq!(unmatched_replies(&stack).await, 0.0, "no reply twice");
    // New work flows as before.
    let (status, body) = stack.predict(&origin.url("/image.jpg")).await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dripping_origin_is_cut_off_at_its_timeout_while_good_requests_flow() {
    let stack = Stack::start(StackOptions {
        preprocessor_args: ["--download-timeout-ms", "1000", "--retry-delay-ms", "100"]
            .map(String::from)
            .to_vec(),
        ..StackOptions::default()
    })
    .await;
    let origin = Origin::start(paths::validation_image("shorts")).await;
    let slow: Vec<_> = ["/drip", "/hang", "/drip"]
        .iter()
        .map(|path| classify(&stack, origin.url(path), 60_000))
        .collect();
    let good: Vec<_> = (0..4)
        .map(|_| classify(&stack, origin.url("/image.jpg"), 60_000))
        .collect();
    all_predictions(good).await;
    for call in slow {
        let (status, body) = call.await.unwrap();
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (504, Some("download_timeout")),
            "{body}"
        );
    }
    let js = jetstream::new(stack.nats.client().await);
    settled(&js, REQUESTS_STREAM, PREPROCESSOR_CONSUMER).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_progress_acks_keep_a_long_batch_from_being_redelivered() {
    const TENSORS: usize = 64;
    const REPLIES: &str = "clothesline.replies.slow-worker-test";
    let nats = clothesline_tests::nats::NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    // One batch of 64 images on one CPU thread takes seconds: far beyond this ack wait.
    let mut topology = Topology::builtin().with_memory_storage();
    topology.gpu_worker.ack_wait = Duration::from_secs(1);
    provision(&js, &topology).await.unwrap();
    let mut replies = client.subscribe(REPLIES).await.unwrap();
    client.flush().await.unwrap();

    let len = Manifest::load(paths::manifest()).unwrap().input_len();
    for i in 0..TENSORS {
        let meta = RequestMeta::new(protocol::meta::new_request_id())
            .with_reply_to(REPLIES)
            .with_timeout(Duration::from_secs(600));
        publish_tensor(&js, &meta, vec![(i * 3) as u8; len]).await;
    }
    let _worker = Worker::spawn(
        &nats.url(),
        &[
            "--max-batch",
            "64",
            "--max-batch-delay-ms",
            "10000",
            "--engines",
            "1",
            "--intra-op-threads",
            "1",
            "--warmup-batches",
            "0",
        ],
    );

    let mut answered = HashSet::new();
    let mut batch_sizes = HashSet::new();
    while answered.len() < TENSORS {
        let msg = tokio::time::timeout(Duration::from_secs(300), replies.next())
            .await
            .expect("every tensor answered")
            .unwrap();
        let reply = Reply::decode(&msg.payload).unwrap();
        let Outcome::Prediction(p) = reply.outcome else {
            panic!("not a prediction: {reply:?}");
        };
        batch_sizes.insert(p.timings.batch_size);
        assert!(answered.insert(reply.request_id), "answered twice");
    }
    assert_eq!(
        batch_sizes,
        HashSet::from([Some(TENSORS as u32)]),
        "one batch"
    );
    let info = settled(&js, TENSORS_STREAM, GPU_WORKER_CONSUMER).await;
    assert_eq!(
        info.delivered.consumer_sequence, TENSORS as u64,
        "no tensor was delivered twice"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_worker_whose_grace_ends_mid_batch_hands_its_tensors_back() {
    const TENSORS: usize = 64;
    const REPLIES: &str = "clothesline.replies.grace-test";
    let nats = clothesline_tests::nats::NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    // An ack wait far beyond this test: a tensor the stopping worker left to it would not come
    // back in time.
    let mut topology = Topology::builtin().with_memory_storage();
    topology.gpu_worker.ack_wait = Duration::from_secs(600);
    provision(&js, &topology).await.unwrap();
    let mut replies = client.subscribe(REPLIES).await.unwrap();
    client.flush().await.unwrap();

    let len = Manifest::load(paths::manifest()).unwrap().input_len();
    for i in 0..TENSORS {
        let meta = RequestMeta::new(protocol::meta::new_request_id())
            .with_reply_to(REPLIES)
            .with_timeout(Duration::from_secs(600));
        publish_tensor(&js, &meta, vec![(i * 5) as u8; len]).await;
    }
    // One batch of 64 on one CPU thread runs for seconds, far beyond a 100 ms grace.
    let args = |grace: &'static str| {
        [
            "--max-batch",
            "64",
            "--max-batch-delay-ms",
            "10000",
            "--engines",
            "1",
            "--intra-op-threads",
            "1",
            "--warmup-batches",
            "0",
            "--shutdown-grace-ms",
            grace,
        ]
    };
    let mut first = Worker::spawn(&nats.url(), &args("100"));
    let js_ref = &js;
    wait_until(
        "the first worker to hold every tensor",
        Duration::from_secs(120),
        || async move {
            let info = consumer_info(js_ref, TENSORS_STREAM, GPU_WORKER_CONSUMER).await;
            (info.num_ack_pending == TENSORS).then_some(())
        },
    )
    .await;
    // Delivered is not yet received (64 tensors take a while to reach a loaded worker): the
    // signal goes once the batch runs.
    let http = reqwest::Client::new();
    let batches = "gpu_worker_batch_size_count";
    metric_reaches(&http, &first.metrics_url(), batches, 1.0).await;
    clothesline_tests::stack::sigterm(&first.0);
    let child = &mut first.0;
    // It exits 1 ("grace period over with 1 batch(es) running"), with `_exit`: a normal exit ran
    // libtorch's static destructors under the abandoned batch and sometimes died of SIGSEGV.
    let status = wait_until("the first worker to exit", Duration::from_secs(10), || {
        let exited = child.try_wait().unwrap();
        async move { exited }
    })
    .await;
    assert_eq!(
        status.code(),
        Some(1),
        "the worker whose grace ended mid-batch: {status:?}"
    );

    let _second = Worker::spawn(&nats.url(), &args("10000"));
    let mut answered = HashSet::new();
    while answered.len() < TENSORS {
        let msg = tokio::time::timeout(Duration::from_secs(120), replies.next())
            .await
            .expect("every tensor answered before the ack wait")
            .unwrap();
        let reply = Reply::decode(&msg.payload).unwrap();
        assert!(
            matches!(reply.outcome, Outcome::Prediction(_)),
            "not a prediction: {reply:?}"
        );
        assert!(answered.insert(reply.request_id), "answered twice");
    }
    let info = settled(&js, TENSORS_STREAM, GPU_WORKER_CONSUMER).await;
    assert_eq!(
        info.delivered.consumer_sequence,
        2 * TENSORS as u64,
        "each tensor handed back once and delivered again: {:?}",
        info.delivered
    );
}
