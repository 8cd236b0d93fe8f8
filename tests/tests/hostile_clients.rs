//! Hostile clients and origins through real processes (issue "every cost bounded"):
//! - scan-bomb JPEGs (valid progressive JPEGs of hundreds of scans, built in the test) refused
//!   before decoding, by upload and by URL, and a burst of them beside normal traffic;
//! - credentials in an image URL never in a reply nor in a tier's log;
//! - an origin that does not speak HTTP (TLS to a plain-HTTP port, a malformed status line)
//!   answered `origin_error` at once, without retries;
//! - every error status the API produces is JSON with a stable code and `X-Request-Id`;
//! - slow clients (slowloris, trickled bodies) beside normal requests, and SIGTERM with 200 of
//!   them connected: the ingress exits within its grace. Prints the p50 of normal requests with
//!   and without the slow connections (BENCHMARKS.md), asserts no timing.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use clothesline_preprocessor::imaging::{ImageSpec, preprocess_image};
use clothesline_tests::origin::{Origin, metric, metrics_text};
use clothesline_tests::paths;
use clothesline_tests::scan_bomb::scan_bomb;
use clothesline_tests::stack::{Stack, StackOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `POST /v1/classify` with `content_type` and `body`: status, `X-Request-Id` and JSON body.
async fn classify(
    stack: &Stack,
    content_type: &str,
    body: impl Into<reqwest::Body>,
) -> (u16, Option<String>, serde_json::Value) {
    send(
        stack
            .http
            .post(stack.ingress.url("/v1/classify"))
            .header("content-type", content_type)
            .body(body),
    )
    .await
}

async fn send(req: reqwest::RequestBuilder) -> (u16, Option<String>, serde_json::Value) {
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let id = res
        .headers()
        .get("x-request-id")
        .map(|v| v.to_str().unwrap().to_string());
    let text = res.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "raw": text }));
    (status, id, json)
}

fn url_body(url: &str) -> String {
    serde_json::json!({ "url": url }).to_string()
}

#[tokio::test]
async fn scan_bombs_are_refused_before_decoding() {
    // The fixture is a real JPEG: libjpeg-turbo decodes a small one when the limit allows it.
    let small = scan_bomb(64, 64, 10);
    let spec = ImageSpec::new(224, 224);
    preprocess_image(&small, &spec.clone().with_max_scans(1000)).expect("a valid JPEG");
    // 694 scans: over the scan limit. 64 scans of 6000x6000: over the work bound.
    let bomb = scan_bomb(6000, 6000, 10);
    let fewer_scans = scan_bomb(6000, 6000, 0);
    for (jpeg, names) in [(&bomb, "limit of 100"), (&fewer_scans, "pixel-scans")] {
        // The median of 21 refusals (the first call of a process pays for its page faults).
        let mut took: Vec<Duration> = (0..21)
            .map(|_| {
                let started = Instant::now();
                preprocess_image(jpeg, &spec).unwrap_err();
                started.elapsed()
            })
            .collect();
        took.sort();
        let took = took[10];
        let err = preprocess_image(jpeg, &spec).unwrap_err();
        assert_eq!(
            err.code,
            protocol::ErrorCode::CorruptImage,
            "{}",
            err.message
        );
        assert!(err.message.contains(names), "{}", err.message);
        println!(
            "scan bomb of {} bytes refused in {:.2} ms (median of 21, one thread, debug build): {}",
            jpeg.len(),
            took.as_secs_f64() * 1e3,
            err.message
        );
    }

    let stack = Stack::start(StackOptions::default()).await;
    let origin = Origin::start(bomb.clone()).await;
    let (status, id, json) = classify(&stack, "image/jpeg", bomb.clone()).await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (422, Some("corrupt_image")),
        "{json}"
    );
    assert!(
        json["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 100"),
        "{json}"
    );
    assert!(id.is_some());
    let (status, _, json) = classify(
        &stack,
        "application/json",
        url_body(&origin.url("/image.jpg")),
    )
    .await;
    assert_eq!(
        (status, json["error"]["code"].as_str()),
        (422, Some("corrupt_image")),
        "{json}"
    );

    // A burst of bombs beside normal requests: every bomb refused, every normal request answered.
    let photo = paths::validation_image("pants");
    let started = Instant::now();
    let bombs = (0..24).map(|_| classify(&stack, "image/jpeg", bomb.clone()));
    let normal = (0..6).map(|_| async {
        let sent = Instant::now();
        let answer = classify(&stack, "image/jpeg", photo.clone()).await;
        (answer, sent.elapsed())
    });
    let (bombs, normal) = tokio::join!(
        futures::future::join_all(bombs),
        futures::future::join_all(normal)
    );
    for (status, _, json) in bombs {
        assert_eq!(status, 422, "{json}");
    }
    let mut ms: Vec<f64> = Vec::new();
    for ((status, _, json), took) in normal {
        assert_eq!(status, 200, "{json}");
        ms.push(took.as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    println!(
        "24 scan bombs + 6 normal uploads in {:.0} ms; normal requests took {ms:.0?} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
}

#[tokio::test]
async fn credentials_and_protocol_failures_from_origins() {
    let log = "info,clothesline_preprocessor=debug,clothesline_ingress=debug";
    let stack = Stack::start(StackOptions {
        ingress_args: vec!["--log".into(), log.into()],
        preprocessor_args: vec![
            "--log".into(),
            log.into(),
            "--retry-delay-ms".into(),
            "100".into(),
        ],
        ..StackOptions::default()
    })
    .await;
    let origin = Origin::start(paths::validation_image("hat")).await;
    let plain = origin.addr;
    // An origin whose status line is not HTTP.
    let garbled = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let garbled_addr = garbled.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = garbled.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _read = s.read(&mut buf).await.unwrap_or(0);
                s.write_all(b"HTTP/1.1 2OO OK\r\n\r\n").await.ok();
            });
        }
    });
    let cases = [
        // TLS to a plain-HTTP port, and a malformed status line: origin_error, never retried.
        (
            format!("https://alice:s3cret@{plain}/image.jpg"),
            502,
            "origin_error",
        ),
        (
            format!("http://alice:s3cret@{garbled_addr}/image.jpg"),
            502,
            "origin_error",
        ),
        (
            format!("http://alice:s3cret@{plain}/missing.jpg"),
            502,
            "origin_error",
        ),
        ("http://alice:s3cret@[::1/x".to_string(), 400, "invalid_url"),
    ];
    for (url, want_status, want_code) in &cases {
        let (status, id, json) = classify(&stack, "application/json", url_body(url)).await;
        assert_eq!(
            (status, json["error"]["code"].as_str()),
            (*want_status, Some(*want_code)),
            "{url}: {json}"
        );
        assert!(id.is_some());
        assert!(!json.to_string().contains("s3cret"), "{json}");
        assert!(!json.to_string().contains("alice"), "{json}");
    }
    let text = metrics_text(&stack.http, &stack.preprocessors[0].url("/metrics")).await;
    assert_eq!(
        metric(&text, r#"preprocessor_requests_total{outcome="retry"}"#).unwrap_or(0.0),
        0.0,
        "{text}"
    );
    // The URLs were logged, redacted.
    for tier in [&stack.ingress, &stack.preprocessors[0]] {
        let Some(log) = tier.log_text() else { continue };
        assert!(!log.contains("s3cret"), "{} logged a password", tier.name);
        assert!(!log.contains("alice"), "{} logged a user name", tier.name);
    }
    if let Some(log) = stack.ingress.log_text() {
        assert!(
            log.contains("***@"),
            "the ingress logs the failures, URLs redacted:\n{log}"
        );
    }
}

/// Raw bytes to the ingress, then everything it answers until it closes: `(status, head, body)`.
async fn raw(stack: &Stack, request: &[u8]) -> (u16, String, serde_json::Value) {
    let mut s = TcpStream::connect(("127.0.0.1", stack.ingress.port))
        .await
        .unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut out))
        .await
        .unwrap()
        .ok();
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (
        status,
        head.to_ascii_lowercase(),
        serde_json::from_str(body).unwrap_or_default(),
    )
}

#[tokio::test]
async fn every_error_status_is_json_with_a_code_and_a_request_id() {
    let stack = Stack::start(StackOptions {
        ingress_args: vec![
            "--max-inflight".into(),
            "1".into(),
            "--max-body-bytes".into(),
            "100000".into(),
        ],
        ..StackOptions::default()
    })
    .await;
    let origin = Origin::start(paths::validation_image("hat")).await;
    let http = &stack.http;
    let ingress = |p: &str| stack.ingress.url(p);
    let json_url = |u: String| url_body(&u);
    let mut seen = Vec::new();
    let mut check = |what: &str,
                     (status, id, json): (u16, Option<String>, serde_json::Value),
                     want: (u16, &str)| {
        assert_eq!(
            (status, json["error"]["code"].as_str()),
            (want.0, Some(want.1)),
            "{what}: {json}"
        );
        assert!(
            json["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{what}"
        );
        assert!(
            id.is_some_and(|id| !id.is_empty()),
            "{what}: no X-Request-Id"
        );
        seen.push(status);
    };
    check(
        "bad JSON",
        send(http.post(ingress("/predict")).body("{")).await,
        (400, "bad_request"),
    );
    check(
        "top_k=-1",
        send(
            http.post(ingress("/v1/classify?top_k=-1"))
                .header("content-type", "image/jpeg")
                .body("x"),
        )
        .await,
        (400, "bad_request"),
    );
    check(
        "top_k=abc",
        send(
            http.post(ingress("/v1/classify?top_k=abc"))
                .header("content-type", "image/jpeg")
                .body("x"),
        )
        .await,
        (400, "bad_request"),
    );
    check(
        "unknown path",
        send(http.get(ingress("/v2/nothing"))).await,
        (404, "not_found"),
    );
    check(
        "wrong method",
        send(http.get(ingress("/v1/classify"))).await,
        (405, "method_not_allowed"),
    );
    check(
        "text body",
        send(
            http.post(ingress("/v1/classify"))
                .header("content-type", "text/plain")
                .body("x"),
        )
        .await,
        (415, "unsupported_media_type"),
    );
    check(
        "not an image",
        send(
            http.post(ingress("/v1/classify"))
                .header("content-type", "image/jpeg")
                .body("hello"),
        )
        .await,
        (422, "not_an_image"),
    );
    check(
        "origin 404",
        send(
            http.post(ingress("/predict"))
                .body(json_url(origin.url("/missing"))),
        )
        .await,
        (502, "origin_error"),
    );
    check(
        "deadline",
        send(
            http.post(ingress("/predict"))
                .header("x-request-timeout-ms", "300")
                .body(json_url(origin.url("/hang"))),
        )
        .await,
        (504, "deadline_exceeded"),
    );
    // 429: the only in-flight permit is held by a request its origin keeps waiting.
    let held = {
        let req = http
            .post(ingress("/predict"))
            .body(json_url(origin.url("/gated/a.jpg")));
        tokio::spawn(async move { req.send().await.map(|r| r.status().as_u16()) })
    };
    origin.arrival().await;
    check(
        "overloaded",
        send(
            http.post(ingress("/predict"))
                .body(json_url(origin.url("/image.jpg"))),
        )
        .await,
        (429, "overloaded"),
    );
    origin.release();
    assert_eq!(held.await.unwrap().unwrap(), 200);
    // 431 and 400 are written by the HTTP server itself, before any handler.
    let mut many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..150 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    // A body over the limit: refused once 100,001 bytes are read (the test sends no more, so the
    // ingress closes with nothing unread and the answer is not lost to a reset).
    let mut big = b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 200000\r\nConnection: close\r\n\r\n".to_vec();
    big.extend(std::iter::repeat_n(0u8, 100_001));
    for (request, want) in [
        (big, (413, "too_large")),
        (many, (431, "headers_too_large")),
        (b"BAD REQUEST LINE\r\n\r\n".to_vec(), (400, "bad_request")),
    ] {
        let (status, head, json) = raw(&stack, &request).await;
        let id = head
            .lines()
            .find_map(|l| l.strip_prefix("x-request-id: "))
            .map(str::to_string);
        check("raw", (status, id, json), want);
    }
    seen.sort_unstable();
    seen.dedup();
    assert_eq!(seen, [400, 404, 405, 413, 415, 422, 429, 431, 502, 504]);
}

/// A connection that sent part of a request head and nothing more.
async fn slowloris(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    s
}

/// The median of `n` sequential uploads of `photo`, in ms (each must answer 200).
async fn p50(stack: &Stack, photo: &[u8], n: usize) -> f64 {
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let sent = Instant::now();
        let (status, _, json) = classify(stack, "image/jpeg", photo.to_vec()).await;
        assert_eq!(status, 200, "{json}");
        ms.push(sent.elapsed().as_secs_f64() * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    ms[n / 2]
}

#[tokio::test]
async fn slow_clients_beside_normal_requests_and_sigterm_within_the_grace() {
    let mut stack = Stack::start(StackOptions {
        ingress_args: [
            "--header-timeout-ms",
            "60000",
            "--slow-client-grace-ms",
            "500",
            "--shutdown-grace-ms",
            "3000",
        ]
        .map(String::from)
        .to_vec(),
        ..StackOptions::default()
    })
    .await;
    let photo = paths::validation_image("pants");
    p50(&stack, &photo, 5).await; // warm-up
    let without = p50(&stack, &photo, 30).await;
    let mut slow = Vec::new();
    for _ in 0..200 {
        slow.push(slowloris(stack.ingress.port).await);
    }
    let with = p50(&stack, &photo, 30).await;
    println!(
        "p50 of 30 uploads: {without:.1} ms without, {with:.1} ms with 200 slowloris connections open"
    );
    // A trickled body is in a handler when SIGTERM comes.
    let mut trickler = TcpStream::connect(("127.0.0.1", stack.ingress.port))
        .await
        .unwrap();
    trickler
        .write_all(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\nContent-Length: 1000\r\n\r\nab")
        .await
        .unwrap();
    let metrics = stack.ingress.url("/metrics");
    clothesline_tests::origin::metric_reaches(&stack.http, &metrics, "ingress_inflight", 1.0).await;
    let started = Instant::now();
    // Panics if the ingress has not exited within 10 s of SIGTERM.
    let exit = stack.ingress.terminate(Duration::from_secs(10)).await;
    assert!(exit.success(), "the ingress exited with {exit} on SIGTERM");
    println!(
        "ingress exited {:.0} ms after SIGTERM with 201 slow clients connected",
        started.elapsed().as_secs_f64() * 1e3
    );
    let mut answer = Vec::new();
    trickler.read_to_end(&mut answer).await.ok();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 503"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
}
