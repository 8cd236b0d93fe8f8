//! Nobody on the bus can hand a caller another request's answer (issue #22). A caller waits, over
//! HTTP or through `clothesline.classify`; meanwhile another client queues a different image
//! with the victim's request id and reply subjects aimed at the victim's ingress: the instance's
//! own subject (readable on the monitoring port), one built from the victim's request id, and one
//! with a token of the right shape. On `clothesline.requests` the preprocessor terminates them
//! (only the ingress's lane may be answered outside `clothesline.replies.bulk.`). Without users
//! the attacker can also publish on the ingress's lane, `clothesline.requests.ingress`: those
//! are worked and answered, and the ingress drops every answer (counted as unmatched). The victim
//! gets its own answer. With the per-role users the attacker is `bulk` (the server refuses it
//! the ingress's lane) and the victim `public` over NATS; without them, any client.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::HeaderMap;
use bytes::Bytes;
use clothesline_tests::origin::{Origin, metric, metric_reaches, metrics_text};
use clothesline_tests::paths;
use clothesline_tests::stack::{Stack, StackOptions};
use protocol::names::*;
use protocol::reply_to::new_token;

const INSTANCE: &str = "spoof-target";
const UNMATCHED: &str = "ingress_unmatched_replies_total";
const INVALID: &str = "preprocessor_invalid_reply_subjects_total";

/// What the attacker aims at: reply subjects of the victim's ingress it can know or guess.
fn spoofed_reply_subjects(victim_id: &str) -> [String; 3] {
    let root = reply_subject(INSTANCE);
    [
        root.clone(),
        format!("{root}.{victim_id}"),
        format!("{root}.{}", new_token()),
    ]
}

async fn start(auth: bool) -> Stack {
    Stack::start(StackOptions {
        nats_auth: auth,
        ingress_args: vec!["--instance-id".into(), INSTANCE.into()],
        ..StackOptions::default()
    })
    .await
}

async fn client_as(stack: &Stack, auth: bool, user: &str) -> async_nats::Client {
    if auth {
        stack.nats.client_as(user).await
    } else {
        stack.nats.client().await
    }
}

/// Queues a hat with the victim's request id for each spoofed reply subject (no Nats-Msg-Id:
/// the attacker wants its copies stored) on `clothesline.requests`, and without users on the
/// ingress's lane too; then waits until the preprocessor has terminated the first and the
/// ingress has dropped the answers to the others that reached it (the bare instance subject has
/// no subscriber at all).
async fn spoof(stack: &Stack, attacker: &async_nats::Client, victim_id: &str, auth: bool) {
    let ingress_metrics = stack.ingress.url("/metrics");
    let pre_metrics = stack.preprocessors[0].url("/metrics");
    let count = |url: String, name: &'static str| async move {
        metric(&metrics_text(&stack.http, &url).await, name).unwrap()
    };
    let unmatched = count(ingress_metrics.clone(), UNMATCHED).await;
    let invalid = count(pre_metrics.clone(), INVALID).await;
    let js = async_nats::jetstream::new(attacker.clone());
    let hat = Bytes::from(paths::validation_image("hat"));
    let lanes: &[&str] = if auth {
        &[REQUESTS_SUBJECT]
    } else {
        &[REQUESTS_SUBJECT, INGRESS_REQUESTS_SUBJECT]
    };
    for lane in lanes {
        for reply_to in spoofed_reply_subjects(victim_id) {
            let mut h = HeaderMap::new();
            h.insert(HEADER_REQUEST_ID, victim_id);
            h.insert(HEADER_REPLY_TO, reply_to.as_str());
            h.insert(HEADER_CONTENT_TYPE, "image/jpeg");
            js.publish_with_headers(*lane, h, hat.clone())
                .await
                .unwrap()
                .await
                .unwrap();
        }
    }
    metric_reaches(&stack.http, &pre_metrics, INVALID, invalid + 3.0).await;
    if !auth {
        metric_reaches(&stack.http, &ingress_metrics, UNMATCHED, unmatched + 2.0).await;
    }
}

fn assert_own_answer(body: &serde_json::Value, victim_id: &str) {
    assert_eq!(body["request_id"], victim_id, "{body}");
    assert_eq!(body["top"][0]["label"], "pants", "{body}");
}

/// The victim over HTTP: its request waits on a gated download while the spoofs are answered.
async fn http_victim_gets_its_own_answer(stack: &Stack, attacker: &async_nats::Client, auth: bool) {
    let origin = Origin::start(paths::validation_image("pants")).await;
    let victim = stack
        .http
        .post(stack.ingress.url("/v1/classify"))
        .header("x-request-id", "victim-1")
        .json(&serde_json::json!({ "url": origin.url("/gated/pants.jpg") }))
        .send();
    let victim = tokio::spawn(victim);
    origin.arrival().await;
    spoof(stack, attacker, "victim-1", auth).await;
    origin.release();
    let res = victim.await.unwrap().unwrap();
    assert_eq!(res.status(), 200);
    assert_own_answer(&res.json().await.unwrap(), "victim-1");
}

/// The victim through the NATS service, the same way.
async fn nats_victim_gets_its_own_answer(
    stack: &Stack,
    victim: async_nats::Client,
    attacker: &async_nats::Client,
    auth: bool,
) {
    let origin = Origin::start(paths::validation_image("pants")).await;
    let mut h = HeaderMap::new();
    h.insert(HEADER_REQUEST_ID, "victim-2");
    h.insert(HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON);
    let body = serde_json::json!({ "url": origin.url("/gated/pants.jpg") }).to_string();
    let request = async_nats::Request::new()
        .headers(h)
        .payload(body.into())
        .timeout(Some(Duration::from_secs(60)));
    let asked = tokio::spawn(async move { victim.send_request(SERVICE_SUBJECT, request).await });
    origin.arrival().await;
    spoof(stack, attacker, "victim-2", auth).await;
    origin.release();
    let answer = asked.await.unwrap().unwrap();
    let error = answer.headers.as_ref().and_then(|h| h.get(HEADER_ERROR));
    assert!(error.is_none(), "{error:?}");
    assert_own_answer(
        &serde_json::from_slice(&answer.payload).unwrap(),
        "victim-2",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_answers_never_reach_a_caller_without_users() {
    let stack = start(false).await;
    let attacker = client_as(&stack, false, "bulk").await;
    http_victim_gets_its_own_answer(&stack, &attacker, false).await;
    let victim = client_as(&stack, false, "public").await;
    nats_victim_gets_its_own_answer(&stack, victim, &attacker, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_answers_never_reach_a_caller_with_per_role_users() {
    let stack = start(true).await;
    let attacker = client_as(&stack, true, "bulk").await;
    http_victim_gets_its_own_answer(&stack, &attacker, true).await;
    let victim = client_as(&stack, true, "public").await;
    nats_victim_gets_its_own_answer(&stack, victim, &attacker, true).await;
}
