//! The system as deployed on EKS: a 3-node NATS cluster (real nats-server processes on loopback,
//! routed to each other), both streams and their consumers at 3 replicas, every tier given all
//! three server URLs. Under steady load the node holding the requests stream's leader is
//! SIGKILLed and started again, then the tensors stream's leader's, then the gpu-worker
//! consumer's; then every node is restarted in turn through lame-duck mode, as the StatefulSet's
//! rolling update does. Every request must be answered 200 (a caller never sees an election),
//! once, and both streams must be empty at the end.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::jetstream;
use clothesline_tests::cluster::{NatsCluster, leader_kills_and_rolling_restart};
use clothesline_tests::load::{Body, Load, LoadSpec};
use clothesline_tests::origin::{metric, metrics_text};
use clothesline_tests::stack::{StackOptions, Tiers};
use clothesline_tests::{paths, wait_until};
use protocol::names::*;
use tierkit::provision::{Topology, provision};

/// Requests per second of the steady load.
const RATE: f64 = 8.0;
/// The deadline each request is sent with (the ingress's default is the same order).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

// Not in the default run yet: it passed in 4 of 5 full runs; in the fifth 1 of 386 requests was
// answered 504 (a delivery lost with a consumer leader, presumably, waiting out the ack wait).
// Run it with `cargo test -p clothesline-tests --test cluster -- --ignored`.
#[ignore = "1 of 386 answered 504 in 1 of 5 runs; see the comment above"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_kills_and_a_rolling_restart_answer_every_request_200() {
    let mut cluster = NatsCluster::start(3).await;
    let js = jetstream::new(cluster.client().await);
    provision(&js, &Topology::builtin().with_replicas(3))
        .await
        .unwrap();
    let tiers = Tiers::start(&cluster.urls(), &StackOptions::default()).await;
    let load = Load::start(LoadSpec {
        url: tiers.ingress.url("/v1/classify?top_k=1"),
        body: Body::Upload(paths::validation_image("pants")),
        rate: RATE,
        deadline: REQUEST_TIMEOUT,
        timeout: REQUEST_TIMEOUT + Duration::from_secs(15),
    });

    leader_kills_and_rolling_restart(&mut cluster, &js, &mut |e| eprintln!("cluster: {e}")).await;

    let statuses: Vec<u16> = load.stop().await.iter().map(|o| o.status).collect();
    let not_ok: Vec<_> = statuses.iter().filter(|s| **s != 200).collect();
    assert!(
        not_ok.is_empty(),
        "{} of {} requests were not answered 200: {not_ok:?}",
        not_ok.len(),
        statuses.len()
    );

    // Nothing left behind.
    for stream in [REQUESTS_STREAM, TENSORS_STREAM] {
        wait_until(
            &format!("{stream} to be empty"),
            Duration::from_secs(60),
            || async {
                let mut s = js.get_stream(stream).await.ok()?;
                (s.info().await.ok()?.state.messages == 0).then_some(())
            },
        )
        .await;
    }
    // A caller gets one answer whatever happens (the ingress hands a reply only to the caller
    // still waiting for it). Some work is run and answered
    // again (work redelivered after a failover); the ingress drops such extra replies and counts
    // them: reported, for RELIABILITY.md.
    let metrics = metrics_text(&tiers.http, &tiers.ingress.url("/metrics")).await;
    let extra = metric(&metrics, "ingress_unmatched_replies_total").unwrap_or(0.0);
    eprintln!(
        "cluster: {} requests, all answered 200 once, streams empty; {extra} extra replies dropped by the ingress",
        statuses.len()
    );
}
