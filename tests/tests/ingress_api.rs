//! The ingress against a real nats-server: the NATS service API (request-reply, listed by the
//! services API), deadlines that end in 504, and a full requests stream that ends in 503.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};
use std::time::Duration;

use clothesline_tests::files::FileServer;
use clothesline_tests::nats::NatsServer;
use clothesline_tests::stack::{Stack, StackOptions};
use clothesline_tests::{free_port, paths, wait_until};
use protocol::names::*;
use tierkit::provision::{Topology, provision};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_service_answers_like_http_and_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let shoes = std::fs::read_dir(paths::dataset().join("validation/shoes"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&shoes, dir.path().join("shoes.jpg")).unwrap();
    let files = FileServer::serve(dir.path()).await;
    let stack = Stack::start(StackOptions::default()).await;
    let client = stack.nats.client().await;

    // Listed by the NATS services API, as `nats micro info clothesline` would show it.
    let info = client
        .request(format!("$SRV.INFO.{SERVICE_NAME}"), "".into())
        .await
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.payload).unwrap();
    assert_eq!(info["name"], SERVICE_NAME);
    assert_eq!(info["endpoints"][0]["subject"], SERVICE_SUBJECT);

    // A URL request answered with the same JSON as /v1/classify.
    let body = serde_json::json!({ "url": files.url("shoes.jpg") }).to_string();
    let reply = client
        .request(SERVICE_SUBJECT, body.clone().into())
        .await
        .unwrap();
    let json: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert!(json["top"][0]["label"].is_string(), "{json}");
    let http: serde_json::Value = stack
        .http
        .post(stack.ingress.url("/v1/classify"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["scores"], http["scores"]);

    // Image bytes with a content type, and a malformed request with its error code in a header.
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(HEADER_CONTENT_TYPE, "image/jpeg");
    let reply = client
        .request_with_headers(
            SERVICE_SUBJECT,
            headers,
            std::fs::read(&shoes).unwrap().into(),
        )
        .await
        .unwrap();
    let bytes_json: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(bytes_json["top"][0]["label"], json["top"][0]["label"]);
    let reply = client
        .request(SERVICE_SUBJECT, "{not json".into())
        .await
        .unwrap();
    assert_eq!(
        reply
            .headers
            .as_ref()
            .unwrap()
            .get(HEADER_ERROR)
            .unwrap()
            .as_str(),
        "bad_request"
    );
    let err: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(err["error"]["code"], "bad_request");
    let header = |name: &str| {
        let value = reply.headers.as_ref().unwrap().get(name);
        value.map(|v| v.to_string())
    };
    assert_eq!(header("Nats-Service-Error-Code").as_deref(), Some("400"));
    assert!(header("Nats-Service-Error").is_some());

    // The services API counts the three answers, and the error as an error (it counted no
    // errors when they were sent as successes with error headers).
    let stats = client
        .request(format!("$SRV.STATS.{SERVICE_NAME}"), "".into())
        .await
        .unwrap();
    let stats: serde_json::Value = serde_json::from_slice(&stats.payload).unwrap();
    let classify = &stats["endpoints"][0];
    assert_eq!(classify["subject"], SERVICE_SUBJECT, "{stats}");
    assert_eq!(classify["num_requests"], 3, "{stats}");
    assert_eq!(classify["num_errors"], 1, "{stats}");
    assert!(
        classify["last_error"].as_str().unwrap().starts_with("400:"),
        "{stats}"
    );
}

/// An ingress alone (no preprocessor drains the requests stream) on a stream that holds one
/// message: the first request waits out its deadline (504), the next finds the queue full (503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadlines_end_in_504_and_a_full_queue_in_503() {
    let nats = NatsServer::start().await;
    let mut topology = Topology::builtin();
    topology.requests.max_messages = 1;
    provision(&async_nats::jetstream::new(nats.client().await), &topology)
        .await
        .unwrap();
    let port = free_port();
    let mut child = Command::new(paths::bin("clothesline-ingress"))
        .args([
            "--http-addr",
            &format!("127.0.0.1:{port}"),
            "--nats-url",
            &nats.url(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");
    wait_until("ingress ready", Duration::from_secs(60), || {
        let (http, url) = (http.clone(), format!("{base}/readyz"));
        async move {
            http.get(url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        }
    })
    .await;

    let ask = |timeout_ms: &str| {
        http.post(format!("{base}/predict"))
            .header("x-request-timeout-ms", timeout_ms.to_string())
            .body(r#"{"url":"http://127.0.0.1:9/a.jpg"}"#)
            .send()
    };
    let first = ask("300").await.unwrap();
    assert_eq!(first.status(), 504);
    let body: serde_json::Value = first.json().await.unwrap();
    assert_eq!(body["error"]["code"], "deadline_exceeded");

    let second = ask("300").await.unwrap();
    assert_eq!(second.status(), 503);
    assert_eq!(second.headers()["retry-after"], "1");
    let body: serde_json::Value = second.json().await.unwrap();
    assert_eq!(body["error"]["code"], "queue_full", "{body}");

    let metrics = http
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"ingress_rejected_total{reason="queue_full"} 1"#),
        "{metrics}"
    );
    let _ = child.kill();
    let _ = child.wait();
}
