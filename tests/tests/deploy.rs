//! The deployment files agree with the code. `deploy/check.py` renders every kustomize overlay and
//! validates it, compose.yml and the eksctl config against strict schemas, lints the Dockerfiles and
//! checks the names that must agree, given a contract taken from the code here (the topology
//! `clothesline-provision` creates, each binary's `--help`). And KEDA's view of the queues: a real
//! nats-server's `/jsz`, read the way the `nats-jetstream` scaler reads it, has the pending count
//! for the stream and consumer each ScaledObject names.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Command, Output};

use async_nats::HeaderMap;
use async_nats::jetstream;
use clothesline_tests::nats::NatsServer;
use clothesline_tests::paths;
use futures::StreamExt;
use protocol::names::{
    GPU_WORKER_CONSUMER, HEADER_NATS_MSG_ID, PREPROCESSOR_CONSUMER, REQUESTS_STREAM,
    REQUESTS_SUBJECT, TENSORS_STREAM, TENSORS_SUBJECT,
};
use protocol::provision::{Topology, provision};
use serde_json::{Value, json};

/// Runs `deploy/check.py` with the Python that `scripts/deps.sh` sets up.
fn check_py(args: &[&str]) -> Output {
    let root = paths::repo_root();
    Command::new(paths::python())
        .arg(root.join("deploy/check.py"))
        .args(args)
        .current_dir(&root)
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", paths::python().display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// What the code says: the streams and consumers it provisions, and the options of every binary.
fn contract() -> Value {
    let t = Topology::builtin();
    let consumer = |tier: &str,
                    s: &async_nats::jetstream::stream::Config,
                    c: &jetstream::consumer::pull::Config| {
        json!({
            "tier": tier,
            "stream": s.name,
            "subject": s.subjects[0],
            "consumer": c.durable_name.clone().unwrap(),
        })
    };
    let mut help = serde_json::Map::new();
    for bin in [
        "clothesline-ingress",
        "clothesline-preprocessor",
        "clothesline-gpu-worker",
        "clothesline-provision",
    ] {
        let out = Command::new(paths::bin(bin))
            .arg("--help")
            .output()
            .unwrap();
        assert!(out.status.success(), "{bin} --help");
        help.insert(bin.into(), text(&out.stdout).into());
    }
    json!({
        "consumers": [
            consumer("preprocessor", &t.requests, &t.preprocessor),
            consumer("gpu-worker", &t.tensors, &t.gpu_worker),
        ],
        "help": help,
    })
}

#[test]
fn deployment_files_pass_the_offline_checks() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("contract.json");
    std::fs::write(&path, serde_json::to_vec_pretty(&contract()).unwrap()).unwrap();
    let out = check_py(&["all", "--contract", path.to_str().unwrap()]);
    let report = format!("{}{}", text(&out.stdout), text(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "deploy/check.py failed:\n{report}");
    assert!(report.contains(" 0 failed"), "{report}");
    assert!(
        !report.contains("skip"),
        "nothing may be skipped with a contract:\n{report}"
    );
}

/// The lag KEDA's nats-jetstream scaler computes from `/jsz?acc=<account>&consumers=true&config=true`:
/// the account, then the stream, then the consumer by name; `num_pending + num_ack_pending`.
fn keda_lag(jsz: &Value, account: &str, stream: &str, consumer: &str) -> Option<u64> {
    let accounts = jsz["account_details"].as_array()?;
    let account = accounts.iter().find(|a| a["name"] == account)?;
    let stream = account["stream_detail"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == stream)?;
    let consumer = stream["consumer_detail"]
        .as_array()?
        .iter()
        .find(|c| c["name"] == consumer)?;
    Some(consumer["num_pending"].as_u64()? + consumer["num_ack_pending"].as_u64()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jsz_has_the_pending_count_of_every_scaled_objects_consumer() {
    let out = check_py(&["scaledobjects"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let triggers: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap();
    let covered: BTreeSet<(String, String)> = triggers
        .iter()
        .map(|t| (t["overlay"].to_string(), t["consumer"].to_string()))
        .collect();
    assert_eq!(
        covered.len(),
        4,
        "both tiers in both overlays: {triggers:?}"
    );

    let nats = NatsServer::start().await;
    let js = jetstream::new(nats.client().await);
    provision(&js, &Topology::builtin().with_memory_storage())
        .await
        .unwrap();

    // Work queued and nobody draining it; on the tensors stream, two messages are also delivered
    // and not yet acknowledged: KEDA counts those too (a worker still holds them).
    let queued = BTreeMap::from([(REQUESTS_STREAM, 7u64), (TENSORS_STREAM, 5u64)]);
    for (subject, stream) in [
        (REQUESTS_SUBJECT, REQUESTS_STREAM),
        (TENSORS_SUBJECT, TENSORS_STREAM),
    ] {
        for i in 0..queued[stream] {
            let mut headers = HeaderMap::new();
            headers.insert(HEADER_NATS_MSG_ID, format!("{stream}-{i}").as_str());
            js.publish_with_headers(subject, headers, "{}".into())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    let consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(GPU_WORKER_CONSUMER, TENSORS_STREAM)
        .await
        .unwrap();
    let mut batch = consumer.fetch().max_messages(2).messages().await.unwrap();
    let mut held = Vec::new();
    while let Some(message) = batch.next().await {
        held.push(message.unwrap());
    }
    assert_eq!(held.len(), 2);

    let http = reqwest::Client::new();
    for trigger in &triggers {
        let account = trigger["account"].as_str().unwrap();
        let stream = trigger["stream"].as_str().unwrap();
        let name = trigger["consumer"].as_str().unwrap();
        // Exactly the URL KEDA builds (no escaping of the account).
        let url = format!(
            "http://127.0.0.1:{}/jsz?acc={account}&consumers=true&config=true",
            nats.monitor_port
        );
        let jsz: Value = http.get(&url).send().await.unwrap().json().await.unwrap();
        let lag = keda_lag(&jsz, account, stream, name).unwrap_or_else(|| {
            panic!("{trigger}: account {account}, stream {stream}, consumer {name} not in {url}")
        });
        assert_eq!(lag, queued[stream], "{trigger}");
        let activation: u64 = trigger["activationLagThreshold"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            lag > activation,
            "{trigger}: {lag} queued would not activate the scaler"
        );
    }
    assert!(
        [PREPROCESSOR_CONSUMER, GPU_WORKER_CONSUMER]
            .iter()
            .all(|c| triggers.iter().any(|t| t["consumer"] == *c))
    );
    drop(held);
}
