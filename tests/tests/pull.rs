//! The pull source both worker tiers read their consumer through (`tierkit::pull`), against a
//! real nats-server: it holds no more messages than its capacity (no pull open while every
//! credit is held), its readiness follows whether a pull can be opened, and draining hands back
//! (nak) both what the tier held and what was still queued for it, and returns by the grace's
//! end even when the server is gone.
#![allow(clippy::unwrap_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::consumer::{self, PullConsumer};
use async_nats::jetstream::{self, stream};
use clothesline_tests::nats::NatsServer;
use clothesline_tests::wait_until;
use futures::StreamExt;
use tierkit::pull::PullSource;
use tierkit::runtime::{Grace, LAST_STEPS};
use tokio_util::sync::CancellationToken;

const STREAM: &str = "PULL_TEST";
const CONSUMER: &str = "worker";
const GRACE: Duration = Duration::from_secs(2);

/// A stream with `count` messages and a durable pull consumer on it.
async fn consumer_with(server: &NatsServer, count: usize) -> (jetstream::Context, PullConsumer) {
    let js = jetstream::new(server.client().await);
    let stream = js
        .create_stream(stream::Config {
            name: STREAM.into(),
            subjects: vec!["pull.test".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    for i in 0..count {
        js.publish("pull.test", format!("m{i}").into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let consumer = stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(CONSUMER.into()),
            ack_wait: Duration::from_secs(60),
            ..Default::default()
        })
        .await
        .unwrap();
    (js, consumer)
}

/// (messages not yet delivered, delivered but not acked, pulls waiting on the server)
async fn counts(js: &jetstream::Context) -> (u64, usize, usize) {
    let mut c: PullConsumer = js.get_consumer_from_stream(CONSUMER, STREAM).await.unwrap();
    let info = c.info().await.unwrap();
    (info.num_pending, info.num_ack_pending, info.num_waiting)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_opens_no_pull_while_the_tier_holds_all_its_credits() {
    let server = NatsServer::start().await;
    let (js, consumer) = consumer_with(&server, 5).await;
    let token = CancellationToken::new();
    let grace = Grace::on_cancel(&token, GRACE);
    let mut source = PullSource::start(consumer, 2, &token, &grace, "test messages");

    let first = source.next().await.unwrap();
    let second = source.next().await.unwrap();
    // Once the pull that brought them has expired, none is opened: both credits are held, so
    // the other three stay on the server, for other workers.
    wait_until(
        "no pull open, two delivered",
        Duration::from_secs(10),
        || {
            let js = js.clone();
            async move { (counts(&js).await == (3, 2, 0)).then_some(()) }
        },
    )
    .await;

    // A credit given back (the tier is done with one) opens a pull for one more.
    first.msg.ack().await.unwrap();
    drop(first);
    let third = source.next().await.unwrap();
    assert_eq!(third.msg.payload.as_ref(), b"m2");
    wait_until(
        "three delivered, one acked",
        Duration::from_secs(10),
        || {
            let js = js.clone();
            async move {
                let (pending, unacked, _) = counts(&js).await;
                (pending == 2 && unacked == 2).then_some(())
            }
        },
    )
    .await;
    drop((second, third));
    token.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_hands_back_what_the_tier_held_and_what_was_queued_for_it() {
    let server = NatsServer::start().await;
    let (js, consumer) = consumer_with(&server, 3).await;
    let token = CancellationToken::new();
    let grace = Grace::on_cancel(&token, GRACE);
    let mut source = PullSource::start(consumer, 3, &token, &grace, "test messages");
    let held = source.next().await.unwrap();
    // The other two were delivered too: they wait in the source's channel, unseen by the tier.
    wait_until("all three delivered", Duration::from_secs(10), || {
        let js = js.clone();
        async move { (counts(&js).await.1 == 3).then_some(()) }
    })
    .await;

    token.cancel();
    source.drain(vec![held.msg]).await;
    // Handed back (nak, no delay): another worker gets all three again at once, long before
    // the ack wait (60 s) would have sent them again.
    let mut again = js
        .get_consumer_from_stream::<consumer::pull::Config, _, _>(CONSUMER, STREAM)
        .await
        .unwrap()
        .fetch()
        .max_messages(3)
        .expires(Duration::from_secs(10))
        .messages()
        .await
        .unwrap();
    let mut redelivered = Vec::new();
    while let Some(m) = again.next().await {
        let m = m.unwrap();
        assert!(m.info().unwrap().delivered >= 2, "a redelivery");
        redelivered.push(String::from_utf8(m.payload.to_vec()).unwrap());
    }
    redelivered.sort();
    assert_eq!(redelivered, ["m0", "m1", "m2"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_whether_a_pull_can_be_opened() {
    let server = NatsServer::start().await;
    let (js, consumer) = consumer_with(&server, 0).await;
    let token = CancellationToken::new();
    let grace = Grace::on_cancel(&token, GRACE);
    let source = PullSource::start(consumer, 1, &token, &grace, "test messages");
    let pulling = source.pulling();
    wait_until("pulling", Duration::from_secs(10), || {
        let p = pulling.load(Ordering::Relaxed);
        async move { p.then_some(()) }
    })
    .await;
    // The consumer gone (deleted by an operator): pulls fail, and readiness says so.
    js.get_stream(STREAM)
        .await
        .unwrap()
        .delete_consumer(CONSUMER)
        .await
        .unwrap();
    wait_until("not pulling", Duration::from_secs(20), || {
        let p = pulling.load(Ordering::Relaxed);
        async move { (!p).then_some(()) }
    })
    .await;
    token.cancel();
    source.drain(Vec::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_returns_by_the_grace_s_end_when_the_server_is_gone() {
    let mut server = NatsServer::start().await;
    let (_js, consumer) = consumer_with(&server, 2).await;
    let token = CancellationToken::new();
    let grace = Grace::on_cancel(&token, GRACE);
    let mut source = PullSource::start(consumer, 1, &token, &grace, "test messages");
    let held = source.next().await.unwrap();
    server.kill();
    token.cancel();
    // A liveness bound, not a speed figure: without the grace's bound, the hand-back waits on a
    // server that never answers.
    let bound = GRACE + LAST_STEPS + Duration::from_secs(10);
    tokio::time::timeout(bound, source.drain(vec![held.msg]))
        .await
        .expect("drain returns once the grace is over, whatever NATS does");
}
