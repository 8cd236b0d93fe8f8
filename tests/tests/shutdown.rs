//! Every process exits within its grace period on SIGTERM, whatever NATS does (issue #14): a
//! gpu-worker was seen running 30-60 s after SIGTERM when nats-server went away at the same
//! moment (as in `docker compose down`). Under load, every tier and nats-server get SIGTERM
//! together; then nats-server is SIGKILLed before the tiers get theirs. Each tier must exit by
//! itself within its grace period and the few seconds of its last steps.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use clothesline_tests::paths;
use clothesline_tests::stack::{Stack, StackOptions, Tier};
use clothesline_tests::wait_until;
use tokio::task::JoinSet;

/// Every tier's grace period.
const GRACE_MS: u64 = 4_000;
/// Beyond the grace: the trace flush (at most 2 s, none here) and leaving the process.
const LEAVE: Duration = Duration::from_secs(4);
/// Callers sending one upload after another until the stack stops.
const CALLERS: usize = 6;

fn options() -> StackOptions {
    let grace = || vec!["--shutdown-grace-ms".to_string(), GRACE_MS.to_string()];
    StackOptions {
        ingress_args: grace(),
        preprocessor_args: grace(),
        worker_args: [grace(), vec!["--engines".into(), "1".into()]].concat(),
        ..StackOptions::default()
    }
}

/// Uploads from [`CALLERS`] callers, each one after another, until `stop` or a failed connection;
/// returns once `warm_up` requests were answered, so every tier has work when it is stopped.
async fn load(stack: &Stack, stop: &Arc<AtomicBool>, warm_up: usize) -> JoinSet<()> {
    let answered = Arc::new(AtomicUsize::new(0));
    let jpeg = paths::validation_image("pants");
    let mut callers = JoinSet::new();
    for _ in 0..CALLERS {
        let (http, url) = (stack.http.clone(), stack.ingress.url("/v1/classify"));
        let (jpeg, answered, stop) = (jpeg.clone(), answered.clone(), stop.clone());
        callers.spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let sent = http
                    .post(&url)
                    .header("content-type", "image/jpeg")
                    .body(jpeg.clone())
                    .send()
                    .await;
                match sent {
                    Ok(res) => {
                        res.bytes().await.ok();
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => break,
                }
            }
        });
    }
    wait_until("the load to flow", Duration::from_secs(120), || {
        let answered = answered.clone();
        async move { (answered.load(Ordering::Relaxed) >= warm_up).then_some(()) }
    })
    .await;
    callers
}

/// The stack's tiers, for signalling all of them at once.
fn tiers(stack: &mut Stack) -> Vec<&mut Tier> {
    let mut tiers: Vec<&mut Tier> = vec![&mut stack.ingress, &mut stack.worker];
    tiers.extend(stack.preprocessors.iter_mut());
    tiers
}

/// SIGTERMs every tier at once, then checks each exits by itself within its grace (and
/// [`LEAVE`]), counted from the signal.
async fn sigterm_tiers_and_wait(stack: &mut Stack) {
    let mut tiers = tiers(stack);
    for tier in &tiers {
        tier.sigterm();
    }
    let signalled = std::time::Instant::now();
    let within = Duration::from_millis(GRACE_MS) + LEAVE;
    for tier in &mut tiers {
        let status = tier
            .exited(within.saturating_sub(signalled.elapsed()))
            .await;
        eprintln!("{} exited: {status}", tier.name);
        assert!(
            status.code().is_some(),
            "{} ended by a signal: {status}",
            tier.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tier_exits_within_its_grace_when_nats_stops_at_the_same_moment() {
    let mut stack = Stack::start(options()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = load(&stack, &stop, 12).await;
    stack.nats.sigterm();
    sigterm_tiers_and_wait(&mut stack).await;
    stop.store(true, Ordering::Relaxed);
    callers.abort_all();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_tier_exits_within_its_grace_after_nats_was_killed() {
    let mut stack = Stack::start(options()).await;
    let stop = Arc::new(AtomicBool::new(false));
    let mut callers = load(&stack, &stop, 12).await;
    stack.nats.kill();
    sigterm_tiers_and_wait(&mut stack).await;
    stop.store(true, Ordering::Relaxed);
    callers.abort_all();
}
