//! Idempotent requests, with real processes, a real nats-server and its key-value bucket: a
//! request id the caller chose names one piece of work.
//!
//! - Repeated after it finished (HTTP, the batch route, the NATS service): the same answer, and
//!   the gpu-worker's inference count does not grow; a reused id with another body is 409
//!   `id_conflict`. A batch under a 128-character id keeps its items' derived ids.
//! - Repeated while the first is in flight, on the same ingress, over NATS and on a second
//!   ingress: every caller waits for the one inference and gets its answer.
//!
//! NATS runs with the per-role users, so the ingress does all this with its own permissions.
//! Each step waits for a condition (an origin's arrival, a metric), never for a time.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use async_nats::HeaderMap;
use clothesline_tests::origin::{Origin, metric, metrics_text};
use clothesline_tests::paths;
use clothesline_tests::stack::{Stack, StackOptions, Tier};
use clothesline_tests::wait_until;
use protocol::names::*;
use serde_json::{Value, json};

const ITEMS: &str = "gpu_worker_items_total";

/// A stack with the per-role users of `nats/auth.conf`: the ingress uses the results bucket with
/// no more than its own permissions; NATS callers are `public`.
async fn start() -> Stack {
    Stack::start(StackOptions {
        nats_auth: true,
        ..StackOptions::default()
    })
    .await
}

fn idempotent(outcome: &str) -> String {
    format!("ingress_idempotent_requests_total{{outcome=\"{outcome}\"}}")
}

async fn sample(stack: &Stack, tier: &Tier, name: &str) -> f64 {
    metric(
        &metrics_text(&stack.http, &tier.url("/metrics")).await,
        name,
    )
    .unwrap_or(0.0)
}

/// `POST path` with `X-Request-Id: id` and a JSON body: status, `X-Request-Id`, JSON body.
async fn post(
    ingress: &Tier,
    http: &reqwest::Client,
    path: &str,
    id: &str,
    body: Value,
) -> (u16, String, Value) {
    let res = http
        .post(ingress.url(path))
        .header("x-request-id", id)
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let echoed = res.headers()["x-request-id"].to_str().unwrap().to_string();
    (status, echoed, res.json().await.unwrap())
}

/// A request to the NATS service with `Clothesline-Request-Id: id`: its headers and JSON body.
async fn service(client: &async_nats::Client, id: &str, url: &str) -> (HeaderMap, Value) {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_REQUEST_ID, id);
    headers.insert(HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON);
    let body = serde_json::to_vec(&json!({ "url": url })).unwrap();
    let msg = tokio::time::timeout(
        Duration::from_secs(60),
        client.request_with_headers(SERVICE_SUBJECT, headers, body.into()),
    )
    .await
    .unwrap()
    .unwrap();
    (
        msg.headers.unwrap_or_default(),
        serde_json::from_slice(&msg.payload).unwrap(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_id_gets_the_kept_answer_without_a_second_inference() {
    let stack = start().await;
    let origin = Origin::start(paths::validation_image("pants")).await;
    let (http, ingress, worker) = (&stack.http, &stack.ingress, &stack.worker);
    let image = origin.url("/image.jpg");

    // HTTP: the first runs the model, the retry gets the kept answer.
    let (status, echoed, first) = post(
        ingress,
        http,
        "/v1/classify",
        "retry-1",
        json!({ "url": image }),
    )
    .await;
    assert_eq!((status, echoed.as_str()), (200, "retry-1"), "{first}");
    assert_eq!(sample(&stack, worker, ITEMS).await, 1.0);
    let (status, _, again) = post(
        ingress,
        http,
        "/v1/classify",
        "retry-1",
        json!({ "url": image }),
    )
    .await;
    assert_eq!(status, 200, "{again}");
    assert_eq!(again["request_id"], "retry-1");
    assert_eq!(again["scores"], first["scores"]);
    assert_eq!(again["top"], first["top"]);
    // The same work through /predict: the same model output, as raw scores.
    let (status, _, scores) = post(
        ingress,
        http,
        "/predict",
        "retry-1",
        json!({ "url": image }),
    )
    .await;
    assert_eq!(status, 200, "{scores}");
    assert_eq!(
        scores.as_object().unwrap().len(),
        first["scores"].as_object().unwrap().len()
    );
    assert_eq!(
        sample(&stack, worker, ITEMS).await,
        1.0,
        "a retried id ran the model again"
    );

    // Another body under the same id: 409 id_conflict, as every error, JSON with the id.
    let other = origin.url("/image.jpg?other");
    let (status, echoed, error) = post(
        ingress,
        http,
        "/v1/classify",
        "retry-1",
        json!({ "url": other }),
    )
    .await;
    assert_eq!((status, echoed.as_str()), (409, "retry-1"), "{error}");
    assert_eq!(error["error"]["code"], "id_conflict");

    // A batch under a 128-character id: every item keeps its derived id; the retry is kept too.
    let long = "b".repeat(128);
    let urls = json!({ "urls": [image, origin.url("/image.jpg?second")] });
    let (status, echoed, batch) =
        post(ingress, http, "/v1/classify/batch", &long, urls.clone()).await;
    assert_eq!((status, echoed.as_str()), (200, long.as_str()), "{batch}");
    assert_eq!(batch["request_id"], long.as_str());
    for (i, item) in batch["results"].as_array().unwrap().iter().enumerate() {
        assert!(item.get("error").is_none(), "{item}");
        assert_eq!(item["request_id"], format!("{long}-{i}"));
    }
    assert_eq!(sample(&stack, worker, ITEMS).await, 3.0);
    let (status, _, again) = post(ingress, http, "/v1/classify/batch", &long, urls).await;
    assert_eq!(status, 200, "{again}");
    for (item, before) in again["results"]
        .as_array()
        .unwrap()
        .iter()
        .zip(batch["results"].as_array().unwrap())
    {
        assert_eq!(item["scores"], before["scores"]);
    }
    assert_eq!(
        sample(&stack, worker, ITEMS).await,
        3.0,
        "a retried batch ran the model again"
    );

    // The NATS service: the same, with the error in its headers.
    let client = stack.nats.client_as("public").await;
    let (headers, first) = service(&client, "nats-retry-1", &image).await;
    assert!(headers.get(HEADER_ERROR).is_none(), "{first}");
    assert_eq!(sample(&stack, worker, ITEMS).await, 4.0);
    let (headers, again) = service(&client, "nats-retry-1", &image).await;
    assert!(headers.get(HEADER_ERROR).is_none(), "{again}");
    assert_eq!(again["scores"], first["scores"]);
    let (headers, error) = service(&client, "nats-retry-1", &other).await;
    assert_eq!(headers.get(HEADER_ERROR).unwrap().as_str(), "id_conflict");
    assert_eq!(
        headers.get("Nats-Service-Error-Code").unwrap().as_str(),
        "409"
    );
    assert_eq!(error["error"]["code"], "id_conflict");
    assert_eq!(
        sample(&stack, worker, ITEMS).await,
        4.0,
        "a retried id ran the model again"
    );

    // A transient failure is not kept: a request past its deadline (its download held) releases
    // its id, and the retry runs anew.
    let held = origin.url("/gated/late.jpg");
    let late = {
        let (http, url) = (stack.http.clone(), ingress.url("/v1/classify"));
        let body = json!({ "url": held });
        tokio::spawn(async move {
            let res = http
                .post(url)
                .header("x-request-id", "late-1")
                .header("x-request-timeout-ms", "1000")
                .json(&body)
                .send()
                .await
                .unwrap();
            (res.status().as_u16(), res.json::<Value>().await.unwrap())
        })
    };
    assert_eq!(origin.arrival().await, "/gated/late.jpg");
    let (status, error) = late.await.unwrap();
    assert_eq!(status, 504, "{error}");
    assert_eq!(error["error"]["code"], "deadline_exceeded");
    origin.release();
    let (status, _, retried) = post(
        ingress,
        http,
        "/v1/classify",
        "late-1",
        json!({ "url": held }),
    )
    .await;
    assert_eq!(status, 200, "{retried}");

    // What the ingress counted: 6 ran (one HTTP, two batch items, one NATS, the late one twice),
    // 5 were kept answers, 2 conflicts.
    assert_eq!(sample(&stack, ingress, &idempotent("new")).await, 6.0);
    assert_eq!(sample(&stack, ingress, &idempotent("cached")).await, 5.0);
    assert_eq!(sample(&stack, ingress, &idempotent("conflict")).await, 2.0);
}

/// Requests attached to another's in flight, summed over `ingresses`.
async fn waiting(stack: &Stack, ingresses: &[&Tier]) -> f64 {
    let mut sum = 0.0;
    for ingress in ingresses {
        sum += sample(stack, ingress, "ingress_idempotent_waiting").await;
    }
    sum
}

async fn wait_for_waiting(stack: &Stack, ingresses: &[&Tier], n: f64) {
    wait_until(
        &format!("{n} requests attached"),
        Duration::from_secs(30),
        move || async move { (waiting(stack, ingresses).await >= n).then_some(()) },
    )
    .await
}

/// `POST /v1/classify {"url": image}` with `X-Request-Id: id` on a task: status, JSON body.
fn classify_with_id(
    stack: &Stack,
    ingress: &Tier,
    image: &str,
    id: &'static str,
) -> tokio::task::JoinHandle<(u16, Value)> {
    let (http, url) = (stack.http.clone(), ingress.url("/v1/classify"));
    let body = json!({ "url": image });
    tokio::spawn(async move {
        let res = http
            .post(url)
            .header("x-request-id", id)
            .json(&body)
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.json::<Value>().await.unwrap())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_id_in_flight_on_two_ingresses_and_nats_costs_one_inference() {
    let stack = start().await;
    let second = stack.add_ingress(1).await;
    let origin = Origin::start(paths::validation_image("shirt")).await;
    let image = origin.url("/gated/shirt.jpg");
    let client = stack.nats.client_as("public").await;
    let ingresses = [&stack.ingress, &second];

    // The first holds the id while the preprocessor downloads the (gated) image.
    let first = classify_with_id(&stack, &stack.ingress, &image, "same-1");
    assert_eq!(origin.arrival().await, "/gated/shirt.jpg");
    // The same id on the same ingress, over NATS, and on the other ingress: each attaches.
    let same_ingress = classify_with_id(&stack, &stack.ingress, &image, "same-1");
    wait_for_waiting(&stack, &ingresses, 1.0).await;
    let over_nats = {
        let (client, image) = (client.clone(), image.clone());
        tokio::spawn(async move { service(&client, "same-1", &image).await })
    };
    wait_for_waiting(&stack, &ingresses, 2.0).await;
    let other_ingress = classify_with_id(&stack, &second, &image, "same-1");
    wait_for_waiting(&stack, &ingresses, 3.0).await;

    origin.release();
    let (status, first) = first.await.unwrap();
    assert_eq!(status, 200, "{first}");
    for (what, (status, answer)) in [
        ("same ingress", same_ingress.await.unwrap()),
        ("other ingress", other_ingress.await.unwrap()),
    ] {
        assert_eq!(status, 200, "{what}: {answer}");
        assert_eq!(answer["scores"], first["scores"], "{what}");
        assert_eq!(answer["request_id"], "same-1", "{what}");
    }
    let (headers, answer) = over_nats.await.unwrap();
    assert!(headers.get(HEADER_ERROR).is_none(), "{answer}");
    assert_eq!(answer["scores"], first["scores"]);

    assert_eq!(
        sample(&stack, &stack.worker, ITEMS).await,
        1.0,
        "one id, one inference"
    );
    let mut counted = [0.0; 2];
    for ingress in ingresses {
        counted[0] += sample(&stack, ingress, &idempotent("new")).await;
        counted[1] += sample(&stack, ingress, &idempotent("attached")).await;
    }
    assert_eq!(counted, [1.0, 3.0], "new and attached requests");
    assert_eq!(waiting(&stack, &ingresses).await, 0.0);
}

/// The ingress holding an id is SIGKILLed: a retry on another ingress waits for the claim's
/// deadline, takes the claim over and runs the request itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_whose_ingress_died_is_taken_over_after_its_deadline() {
    let mut stack = start().await;
    let second = stack.add_ingress(1).await;
    let origin = Origin::start(paths::validation_image("shoes")).await;
    let image = origin.url("/gated/shoes.jpg");

    let orphan = {
        let (http, url) = (stack.http.clone(), stack.ingress.url("/v1/classify"));
        let body = json!({ "url": image });
        tokio::spawn(async move {
            http.post(url)
                .header("x-request-id", "orphan-1")
                .header("x-request-timeout-ms", "3000")
                .json(&body)
                .send()
                .await
        })
    };
    assert_eq!(origin.arrival().await, "/gated/shoes.jpg");
    stack.ingress.kill();
    assert!(
        orphan.await.unwrap().is_err(),
        "the killed ingress answered"
    );

    // The retry attaches to the dead claim, takes it over at its deadline and runs anew.
    let retry = classify_with_id(&stack, &second, &image, "orphan-1");
    wait_for_waiting(&stack, &[&second], 1.0).await;
    assert_eq!(origin.arrival().await, "/gated/shoes.jpg");
    origin.release();
    let (status, answer) = retry.await.unwrap();
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["request_id"], "orphan-1");
    assert_eq!(sample(&stack, &second, &idempotent("new")).await, 1.0);
    assert_eq!(sample(&stack, &second, &idempotent("attached")).await, 0.0);
}
