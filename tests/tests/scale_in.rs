//! Scale-in and rollouts lose no answers (issue #22): two gpu-workers (or two preprocessors)
//! under steady load, and one of them gets SIGTERM, as Kubernetes sends on scale-in. Every
//! request is answered 200 within a deadline shorter than the consumers' 30 s ack wait, so a
//! message the stopping tier held without handing it back would show as a 504; the stopping tier
//! exits cleanly within its grace period; the queues end empty.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use clothesline_tests::paths;
use clothesline_tests::roles::queue_state;
use clothesline_tests::stack::{Stack, StackOptions, Tier};
use clothesline_tests::wait_until;
use protocol::names::*;

/// Callers sending one request after another, and the requests each sends.
const CALLERS: usize = 6;
const PER_CALLER: usize = 8;
/// The stopping tier's grace period; it must exit within it (plus the time to leave).
const GRACE_MS: u64 = 10_000;
/// Each request's deadline: well under the 30 s ack wait.
const REQUEST_TIMEOUT_MS: &str = "20000";

/// Runs the load, SIGTERMs `stopping` once a quarter of it is answered, and checks every answer.
async fn sigterm_under_load(stack: &Stack, stopping: &mut Tier) {
    let answered = Arc::new(AtomicUsize::new(0));
    let jpeg = paths::validation_image("pants");
    let callers: Vec<_> = (0..CALLERS)
        .map(|_| {
            let (http, url) = (stack.http.clone(), stack.ingress.url("/v1/classify"));
            let (jpeg, answered) = (jpeg.clone(), answered.clone());
            tokio::spawn(async move {
                let mut statuses = Vec::with_capacity(PER_CALLER);
                for _ in 0..PER_CALLER {
                    let res = http
                        .post(&url)
                        .header("content-type", "image/jpeg")
                        .header("x-request-timeout-ms", REQUEST_TIMEOUT_MS)
                        .body(jpeg.clone())
                        .send()
                        .await
                        .unwrap();
                    let status = res.status().as_u16();
                    statuses.push((status, res.text().await.unwrap()));
                    answered.fetch_add(1, Ordering::Relaxed);
                }
                statuses
            })
        })
        .collect();
    let quarter = CALLERS * PER_CALLER / 4;
    wait_until(
        "a quarter of the load answered",
        Duration::from_secs(120),
        || {
            let answered = answered.clone();
            async move { (answered.load(Ordering::Relaxed) >= quarter).then_some(()) }
        },
    )
    .await;
    let within = Duration::from_millis(GRACE_MS) + Duration::from_secs(5);
    let exit = stopping.terminate(within).await;
    assert!(exit.success(), "{} exited {exit}", stopping.name);

    let mut failed = vec![];
    for caller in callers {
        for (status, body) in caller.await.unwrap() {
            if status != 200 {
                failed.push((status, body));
            }
        }
    }
    assert!(failed.is_empty(), "non-200 answers: {failed:?}");
    let admin = stack.nats.client().await;
    for (stream, consumer) in [
        (REQUESTS_STREAM, PREPROCESSOR_CONSUMER),
        (TENSORS_STREAM, GPU_WORKER_CONSUMER),
    ] {
        let what = format!("{stream} to be empty");
        wait_until(&what, Duration::from_secs(30), || {
            let admin = admin.clone();
            async move { (queue_state(&admin, stream, consumer).await == (0, 0, 0)).then_some(()) }
        })
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gpu_worker_stopped_under_load_loses_no_answer() {
    let grace = GRACE_MS.to_string();
    let mut stack = Stack::start(StackOptions {
        worker_args: vec![
            "--engines".into(),
            "1".into(),
            "--shutdown-grace-ms".into(),
            grace,
        ],
        ..StackOptions::default()
    })
    .await;
    let second = stack.add_worker(1).await;
    let mut first = std::mem::replace(&mut stack.worker, second);
    sigterm_under_load(&stack, &mut first).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preprocessor_stopped_under_load_loses_no_answer() {
    let grace = GRACE_MS.to_string();
    let mut stack = Stack::start(StackOptions {
        preprocessors: 2,
        preprocessor_args: vec!["--shutdown-grace-ms".into(), grace],
        ..StackOptions::default()
    })
    .await;
    let mut first = stack.preprocessors.remove(0);
    sigterm_under_load(&stack, &mut first).await;
}
