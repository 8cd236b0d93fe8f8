//! HTTP API tests with `oneshot` and a fake backend (the pipeline boundary is faked here; the
//! integration suite in `tests/` runs the real one).
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use clothesline_ingress::backend::{Backend, Job};
use clothesline_ingress::metrics::Metrics;
use clothesline_ingress::{AppState, app};
use futures::future::BoxFuture;
use http_body_util::BodyExt;
use protocol::{Error, ErrorCode, ModelRef, Prediction, Timings};
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// Answers every job with `answer`, remembering the jobs it saw.
struct Fake {
    answer: Result<Prediction, Error>,
    seen: Mutex<Vec<Job>>,
    /// Held by the test to keep jobs waiting (for the in-flight bound).
    gate: Arc<tokio::sync::Notify>,
    block: bool,
}

impl Backend for Fake {
    fn submit(&self, job: Job) -> BoxFuture<'static, Result<Prediction, Error>> {
        self.seen.lock().unwrap().push(job);
        let answer = self.answer.clone();
        let gate = self.gate.clone();
        let block = self.block;
        Box::pin(async move {
            if block {
                gate.notified().await;
            }
            answer
        })
    }

    fn ready(&self) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Err("fake is never ready".to_string()) })
    }
}

fn prediction() -> Prediction {
    Prediction {
        model: ModelRef {
            name: "m".into(),
            version: "1".into(),
        },
        classes: vec!["dress".into(), "hat".into(), "pants".into()],
        logits: vec![0.5, 2.0, -1.0],
        timings: Timings {
            inference_ms: Some(3.0),
            ..Default::default()
        },
    }
}

fn state(fake: Arc<Fake>, max_inflight: usize) -> AppState {
    AppState {
        backend: fake,
        metrics: Metrics::new(),
        inflight: Arc::new(Semaphore::new(max_inflight)),
        default_timeout: Duration::from_secs(5),
        max_timeout: Duration::from_secs(10),
        max_body_bytes: 1024,
        max_batch_urls: 4,
    }
}

fn fake(answer: Result<Prediction, Error>) -> Arc<Fake> {
    Arc::new(Fake {
        answer,
        seen: Mutex::default(),
        gate: Arc::default(),
        block: false,
    })
}

async fn call(
    s: AppState,
    req: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let res = app(s).oneshot(req).await.unwrap();
    let status = res.status();
    let headers = res.headers().clone();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&body).unwrap_or(serde_json::Value::String(
        String::from_utf8_lossy(&body).into(),
    ));
    (status, headers, json)
}

fn post(uri: &str, content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut b = Request::post(uri);
    if let Some(ct) = content_type {
        b = b.header("content-type", ct);
    }
    b.body(body.into()).unwrap()
}

#[tokio::test]
async fn predict_answers_the_classic_flat_map_whatever_the_content_type() {
    let f = fake(Ok(prediction()));
    // curl -d sends application/x-www-form-urlencoded: still JSON to the classic gateway.
    let req = post(
        "/predict",
        Some("application/x-www-form-urlencoded"),
        r#"{"url":"http://127.0.0.1/a.jpg"}"#,
    );
    let (status, headers, json) = call(state(f.clone(), 4), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        json,
        serde_json::json!({"dress": 0.5, "hat": 2.0, "pants": -1.0})
    );
    let seen = f.seen.lock().unwrap();
    assert_eq!(seen[0].content_type, "application/json");
    assert_eq!(&seen[0].payload[..], br#"{"url":"http://127.0.0.1/a.jpg"}"#);
    assert_eq!(
        headers["x-request-id"].to_str().unwrap(),
        seen[0].meta.request_id
    );
}

#[tokio::test]
async fn malformed_requests_get_400_with_a_code() {
    for body in ["{", r#"{"uri":"x"}"#, r#"{"url":7}"#, ""] {
        let (status, _, json) = call(
            state(fake(Ok(prediction())), 4),
            post("/predict", None, body),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(json["error"]["code"], "bad_request", "{body}");
        assert!(json["error"]["message"].as_str().unwrap().len() > 5);
    }
}

#[tokio::test]
async fn pipeline_errors_map_to_their_status() {
    for (code, status) in [
        (ErrorCode::OriginError, 502),
        (ErrorCode::DeadlineExceeded, 504),
        (ErrorCode::CorruptImage, 422),
        (ErrorCode::QueueFull, 503),
    ] {
        let f = fake(Err(Error::new(code, "it failed")));
        let (got, headers, json) = call(
            state(f, 4),
            post("/predict", None, r#"{"url":"http://h/x"}"#),
        )
        .await;
        assert_eq!(got.as_u16(), status);
        assert_eq!(json["error"]["code"], code.as_str());
        assert_eq!(
            headers.contains_key("retry-after"),
            code == ErrorCode::QueueFull
        );
    }
}

#[tokio::test]
async fn classify_accepts_raw_images_and_reports_top_k() {
    let f = fake(Ok(prediction()));
    let req = post("/v1/classify?top_k=2", Some("image/png"), vec![1u8, 2, 3]);
    let (status, _, json) = call(state(f.clone(), 4), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["top"].as_array().unwrap().len(), 2);
    assert_eq!(json["top"][0]["label"], "hat");
    let total: f64 = json["scores"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_f64().unwrap())
        .sum();
    assert!((total - 1.0).abs() < 1e-5);
    assert_eq!(json["model"]["name"], "m");
    assert_eq!(json["timings"]["inference_ms"], 3.0);
    assert!(json["timings"]["total_ms"].as_f64().unwrap() >= 0.0);
    assert_eq!(f.seen.lock().unwrap()[0].content_type, "image/png");
}

#[tokio::test]
async fn classify_accepts_multipart_uploads() {
    let f = fake(Ok(prediction()));
    let body = "--XX\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.jpg\"\r\nContent-Type: image/jpeg\r\n\r\nJPEGBYTES\r\n--XX--\r\n";
    let req = post(
        "/v1/classify",
        Some("multipart/form-data; boundary=XX"),
        body,
    );
    let (status, _, _) = call(state(f.clone(), 4), req).await;
    assert_eq!(status, StatusCode::OK);
    let seen = f.seen.lock().unwrap();
    assert_eq!(
        (seen[0].content_type.as_str(), &seen[0].payload[..]),
        ("image/jpeg", &b"JPEGBYTES"[..])
    );
}

#[tokio::test]
async fn classify_refuses_other_media_types_and_big_bodies() {
    let (status, _, json) = call(
        state(fake(Ok(prediction())), 4),
        post("/v1/classify", Some("text/plain"), "hi"),
    )
    .await;
    assert_eq!(
        (status.as_u16(), json["error"]["code"].as_str()),
        (415, Some("unsupported_media_type"))
    );
    let big = vec![0u8; 4096];
    let (status, _, json) = call(
        state(fake(Ok(prediction())), 4),
        post("/v1/classify", Some("image/jpeg"), big),
    )
    .await;
    assert_eq!(
        (status.as_u16(), json["error"]["code"].as_str()),
        (413, Some("too_large"))
    );
    let (status, _, json) = call(
        state(fake(Ok(prediction())), 4),
        post("/v1/classify", Some("image/jpeg"), ""),
    )
    .await;
    assert_eq!(
        (status.as_u16(), json["error"]["code"].as_str()),
        (422, Some("not_an_image"))
    );
}

#[tokio::test]
async fn caller_deadline_is_capped_and_validated() {
    let f = fake(Ok(prediction()));
    let mut req = post("/predict", None, r#"{"url":"http://h/x"}"#);
    req.headers_mut()
        .insert("x-request-timeout-ms", "999999".parse().unwrap());
    call(state(f.clone(), 4), req).await;
    assert_eq!(f.seen.lock().unwrap()[0].timeout, Duration::from_secs(10));
    let mut req = post("/predict", None, r#"{"url":"http://h/x"}"#);
    req.headers_mut()
        .insert("x-request-timeout-ms", "soon".parse().unwrap());
    let (status, _, _) = call(state(f, 4), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn beyond_the_inflight_bound_answers_429_at_once() {
    let f = Arc::new(Fake {
        answer: Ok(prediction()),
        seen: Mutex::default(),
        gate: Arc::default(),
        block: true,
    });
    let s = state(f.clone(), 1);
    let first =
        tokio::spawn(app(s.clone()).oneshot(post("/predict", None, r#"{"url":"http://h/x"}"#)));
    // Wait until the first request holds the only permit.
    while s.inflight.available_permits() > 0 {
        tokio::task::yield_now().await;
    }
    let (status, headers, json) =
        call(s.clone(), post("/predict", None, r#"{"url":"http://h/y"}"#)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json["error"]["code"], "overloaded");
    assert!(headers.contains_key("retry-after"));
    f.gate.notify_one();
    assert_eq!(first.await.unwrap().unwrap().status(), StatusCode::OK);
}

#[tokio::test]
async fn readyz_reports_the_backend_and_metrics_count_requests() {
    let s = state(fake(Ok(prediction())), 4);
    let (status, _, body) = call(
        s.clone(),
        Request::get("/readyz").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(body.as_str().unwrap().contains("fake is never ready"));
    call(s.clone(), post("/predict", None, r#"{"url":"http://h/x"}"#)).await;
    let (_, _, text) = call(s, Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert!(
        text.as_str()
            .unwrap()
            .contains(r#"ingress_requests_total{route="/predict",status="200"} 1"#)
    );
}

#[tokio::test]
async fn batch_answers_every_url_in_order_with_its_own_outcome() {
    let f = fake(Ok(prediction()));
    let body = r#"{"urls":["http://h/a.jpg","http://h/b.jpg","http://h/c.jpg"]}"#;
    let (status, _, json) = call(
        state(f.clone(), 8),
        post("/v1/classify/batch?top_k=1", Some("application/json"), body),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{json}");
    let results = json["results"].as_array().unwrap();
    assert_eq!(results.len(), 3);
    for (i, r) in results.iter().enumerate() {
        assert_eq!(r["url"], format!("http://h/{}.jpg", ["a", "b", "c"][i]));
        assert_eq!(r["top"][0]["label"], "hat");
        assert!(
            r["request_id"]
                .as_str()
                .unwrap()
                .ends_with(&format!("-{i}"))
        );
    }
    assert_eq!(f.seen.lock().unwrap().len(), 3);

    let failing = fake(Err(Error::new(ErrorCode::OriginError, "404")));
    let (status, _, json) = call(
        state(failing, 8),
        post("/v1/classify/batch", Some("application/json"), body),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["results"][2]["error"]["code"], "origin_error");
}

#[tokio::test]
async fn batch_refuses_bad_bodies_and_more_urls_than_allowed() {
    for body in [
        r#"{"urls":[]}"#,
        r#"{"urls":["a","b","c","d","e"]}"#,
        r#"{"urls":[1]}"#,
        r#"{"url":"x"}"#,
        "nope",
    ] {
        let (status, _, json) = call(
            state(fake(Ok(prediction())), 16),
            post("/v1/classify/batch", None, body),
        )
        .await;
        assert_eq!(
            (status.as_u16(), json["error"]["code"].as_str()),
            (400, Some("bad_request")),
            "{body}"
        );
    }
    // 3 URLs need 3 permits besides the call's own: with 3 in all, the call is refused at once.
    let body = r#"{"urls":["http://h/a","http://h/b","http://h/c"]}"#;
    let (status, _, json) = call(
        state(fake(Ok(prediction())), 3),
        post("/v1/classify/batch", None, body),
    )
    .await;
    assert_eq!(
        (status.as_u16(), json["error"]["code"].as_str()),
        (429, Some("overloaded"))
    );
}

#[tokio::test]
async fn openapi_document_describes_every_route() {
    let (status, _, json) = call(
        state(fake(Ok(prediction())), 4),
        Request::get("/openapi.json").body(Body::empty()).unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["openapi"], "3.1.0");
    for path in [
        "/predict",
        "/v1/classify",
        "/v1/classify/batch",
        "/healthz",
        "/readyz",
        "/metrics",
        "/openapi.json",
    ] {
        assert!(
            json["paths"].get(path).is_some(),
            "{path} missing from openapi.json"
        );
    }
    let codes: Vec<&str> = json["components"]["schemas"]["ErrorBody"]["properties"]["code"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    let all: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(codes, all, "openapi.json lists every error code");
}

#[tokio::test]
async fn unknown_paths_wrong_methods_and_bad_queries_answer_json_with_a_request_id() {
    let cases = [
        (
            Request::get("/nope").body(Body::empty()).unwrap(),
            404,
            "not_found",
        ),
        (
            Request::get("/v1/classify").body(Body::empty()).unwrap(),
            405,
            "method_not_allowed",
        ),
        (
            Request::delete("/predict").body(Body::empty()).unwrap(),
            405,
            "method_not_allowed",
        ),
        (
            post("/v1/classify?top_k=-1", Some("image/png"), "x"),
            400,
            "bad_request",
        ),
        (
            post("/v1/classify?top_k=abc", Some("image/png"), "x"),
            400,
            "bad_request",
        ),
        (
            post(
                "/v1/classify/batch?top_k=-1",
                Some("application/json"),
                "{}",
            ),
            400,
            "bad_request",
        ),
    ];
    for (req, want_status, want_code) in cases {
        let what = format!("{} {}", req.method(), req.uri());
        let (status, headers, json) = call(state(fake(Ok(prediction())), 4), req).await;
        assert_eq!(status.as_u16(), want_status, "{what}");
        assert_eq!(json["error"]["code"], want_code, "{what}: {json}");
        assert!(
            json["error"]["message"].as_str().unwrap().len() > 5,
            "{what}"
        );
        assert!(headers.contains_key("x-request-id"), "{what}");
    }
}

#[tokio::test]
async fn refusals_carry_the_callers_request_id_or_a_new_one() {
    // 400 on a bad header, before any work is admitted.
    let req = Request::post("/predict")
        .header("x-request-id", "mine-1")
        .header("x-request-timeout-ms", "soon")
        .body(Body::from(r#"{"url":"http://h/x"}"#))
        .unwrap();
    let (status, headers, _) = call(state(fake(Ok(prediction())), 4), req).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(headers["x-request-id"], "mine-1");
    // 429 with no permit left.
    let req = Request::post("/predict")
        .header("x-request-id", "mine-2")
        .body(Body::from(r#"{"url":"http://h/x"}"#))
        .unwrap();
    let (status, headers, json) = call(state(fake(Ok(prediction())), 0), req).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json["error"]["code"], "overloaded");
    assert_eq!(headers["x-request-id"], "mine-2");
    // An invalid id is replaced, also on refusals.
    let req = Request::post("/predict")
        .header("x-request-id", "not valid!")
        .body(Body::from(r#"{"url":"http://h/x"}"#))
        .unwrap();
    let (_, headers, _) = call(state(fake(Ok(prediction())), 0), req).await;
    let id = headers["x-request-id"].to_str().unwrap();
    assert!(!id.is_empty() && id != "not valid!", "{id}");
}

#[tokio::test]
async fn batch_results_echo_urls_without_credentials() {
    let f = fake(Err(Error::new(
        ErrorCode::OriginError,
        "origin answered 404",
    )));
    let req = post(
        "/v1/classify/batch",
        Some("application/json"),
        r#"{"urls":["http://alice:s3cret@h/x.jpg"]}"#,
    );
    let (status, _, json) = call(state(f.clone(), 4), req).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json["results"][0]["url"], "http://***@h/x.jpg");
    assert!(!json.to_string().contains("s3cret"), "{json}");
    // The work itself keeps the URL as given.
    let seen = f.seen.lock().unwrap();
    assert!(String::from_utf8_lossy(&seen[0].payload).contains("alice:s3cret@"));
}
