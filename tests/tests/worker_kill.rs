//! A gpu-worker killed with SIGKILL while it holds unacknowledged tensors loses none of them: the
//! consumer redelivers them after its ack wait and another worker answers each exactly once.
//!
//! Real nats-server, real `clothesline-gpu-worker` processes, the shipped model on CPU. Tensors
//! are published straight onto the tensors stream with reply subjects (no ingress, no
//! preprocessor). Worker A is started with a batch far larger than what is published and a long
//! batch delay that it always waits out (`--dispatch-when-idle false`), so it pulls everything
//! and holds it without running it; once the consumer shows every tensor delivered and
//! unacknowledged, A is killed. The topology's ack wait is cut to 5 s
//! (30 s as shipped) so the redelivery comes soon, yet stays well above the time worker B holds
//! a tensor before acking it, so B is never handed a tensor it still works on. Worker B, at its
//! defaults, then answers every request. "Exactly once" is checked after B has stopped and the
//! server has read B's connection to its end: a marker published afterwards on the reply subject
//! must be the next message.
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use async_nats::jetstream::{self, consumer};
use clothesline_tests::nats::{NatsServer, stream_messages};
use clothesline_tests::worker::{WORKER_NAME, Worker, publish_tensor};
use clothesline_tests::{paths, wait_until};
use futures::StreamExt;
use protocol::messages::Outcome;
use protocol::names::*;
use protocol::{Manifest, Reply, RequestMeta};
use tierkit::provision::{Topology, provision};

const TENSORS: usize = 8;
const ACK_WAIT: Duration = Duration::from_secs(5);
const REPLIES: &str = "clothesline.replies.worker-kill-test";

async fn consumer_info(js: &jetstream::Context) -> Option<consumer::Info> {
    let c: consumer::Consumer<consumer::pull::Config> = js
        .get_consumer_from_stream(GPU_WORKER_CONSUMER, TENSORS_STREAM)
        .await
        .ok()?;
    Some(c.cached_info().clone())
}

/// Names of the client connections the server has open (its monitoring endpoint).
async fn connection_names(nats: &NatsServer) -> Option<Vec<String>> {
    let url = format!("http://127.0.0.1:{}/connz", nats.monitor_port);
    let connz: serde_json::Value = reqwest::get(url).await.ok()?.json().await.ok()?;
    Some(
        connz["connections"]
            .as_array()?
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_while_holding_unacked_tensors_loses_none() {
    let nats = NatsServer::start().await;
    let client = nats.client().await;
    let js = jetstream::new(client.clone());
    let mut topology = Topology::builtin().with_memory_storage();
    topology.gpu_worker.ack_wait = ACK_WAIT;
    provision(&js, &topology).await.unwrap();
    let (js_ref, nats_ref) = (&js, &nats);
    let mut replies = client.subscribe(REPLIES).await.unwrap();
    client.flush().await.unwrap();

    let manifest = Manifest::load(paths::manifest()).unwrap();
    let mut requests = HashSet::new();
    for i in 0..TENSORS {
        let meta = RequestMeta::new(protocol::meta::new_request_id())
            .with_reply_to(REPLIES)
            .with_timeout(Duration::from_secs(600));
        let pixels = (0..manifest.input_len())
            .map(|p| (p * 7 + i * 31) as u8)
            .collect();
        publish_tensor(&js, &meta, pixels).await;
        requests.insert(meta.request_id);
    }

    // Worker A pulls all of them and waits for a fuller batch that never comes.
    let mut a = Worker::spawn(
        &nats.url(),
        &[
            "--max-batch",
            "1024",
            "--max-batch-delay-ms",
            "10000",
            "--dispatch-when-idle",
            "false",
            "--warmup-batches",
            "0",
        ],
    );
    wait_until(
        "worker A to hold every tensor unacknowledged",
        Duration::from_secs(180),
        || async move {
            consumer_info(js_ref)
                .await
                .filter(|i| i.num_ack_pending == TENSORS && i.num_pending == 0)
        },
    )
    .await;
    a.0.kill().unwrap();
    assert!(!a.0.wait().unwrap().success(), "SIGKILL ends worker A");
    let info = consumer_info(&js).await.unwrap();
    assert_eq!(
        (info.num_ack_pending, info.ack_floor.stream_sequence),
        (TENSORS, 0),
        "worker A died holding every tensor, none acknowledged"
    );

    // Worker B, at its defaults, gets them again after the ack wait and answers each.
    let mut b = Worker::spawn(&nats.url(), &[]);
    let mut answered = HashSet::new();
    while answered.len() < TENSORS {
        let msg = tokio::time::timeout(Duration::from_secs(300), replies.next())
            .await
            .expect("every request answered within 5 minutes")
            .unwrap();
        let reply = Reply::decode(&msg.payload).unwrap();
        assert!(
            requests.contains(&reply.request_id),
            "a reply to an unknown request: {reply:?}"
        );
        assert!(
            matches!(reply.outcome, Outcome::Prediction(_)),
            "not a prediction: {reply:?}"
        );
        assert!(
            answered.insert(reply.request_id.clone()),
            "request {} answered twice",
            reply.request_id
        );
    }

    // Everything acknowledged, each tensor delivered twice (A, then B).
    let info = wait_until(
        "the consumer to have nothing pending or unacknowledged",
        Duration::from_secs(60),
        || async move {
            consumer_info(js_ref)
                .await
                .filter(|i| i.num_ack_pending == 0 && i.num_pending == 0)
        },
    )
    .await;
    assert!(
        info.delivered.consumer_sequence >= 2 * TENSORS as u64,
        "each tensor was redelivered: {:?}",
        info.delivered
    );
    assert_eq!(
        stream_messages(&js, TENSORS_STREAM).await,
        0,
        "the work queue is empty"
    );

    // No second reply: stop B (SIGTERM, it drains and flushes), wait until the server has read
    // its connection to the end, then a marker on the reply subject must come next.
    let stopped = Command::new("kill")
        .args(["-TERM", &b.0.id().to_string()])
        .status()
        .unwrap();
    assert!(stopped.success());
    let status = wait_until("worker B to exit", Duration::from_secs(120), || {
        let status = b.0.try_wait().unwrap();
        async move { status }
    })
    .await;
    assert!(status.success(), "worker B stops cleanly: {status}");
    wait_until(
        "the server to close the workers' connections",
        Duration::from_secs(60),
        || async move {
            connection_names(nats_ref)
                .await
                .filter(|names| !names.iter().any(|n| n == WORKER_NAME))
        },
    )
    .await;
    client.publish(REPLIES, "marker".into()).await.unwrap();
    let next = tokio::time::timeout(Duration::from_secs(60), replies.next())
        .await
        .expect("the marker comes back")
        .unwrap();
    assert_eq!(
        &next.payload[..],
        b"marker",
        "a second reply: {}",
        String::from_utf8_lossy(&next.payload)
    );
}
