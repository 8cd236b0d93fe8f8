//! Bad inputs through real processes: every malformed request, hostile URL, broken image and
//! misbehaving origin comes back through `/predict` or `/v1/classify` (or a plain NATS client)
//! with its stable error code; afterwards the preprocessor still runs, is ready, and the requests
//! consumer has nothing pending or unacknowledged.
//!
//! Decisions recorded here:
//! - a URL over the ingress body limit (a 10 MB URL) is `413 too_large` from the ingress; a URL
//!   that fits the body but exceeds the preprocessor's 8 KiB URL limit is `400 invalid_url`;
//! - a GIF with 10,000 frames is answered with scores: only its first frame is decoded;
//! - with private addresses blocked (the default) no origin on this machine can be reached, so a
//!   redirect to a private address is tested at the unit level
//!   (`preprocessor/tests/download.rs`, `redirects_to_private_addresses_are_refused`).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::Bytes;
use clothesline_tests::files::FileServer;
use clothesline_tests::paths;
use clothesline_tests::stack::{Stack, StackOptions};
use futures::StreamExt;
use protocol::names::*;

/// `POST path` with `content_type` and `body`: the status and the JSON body.
async fn post(
    stack: &Stack,
    path: &str,
    content_type: Option<&str>,
    body: impl Into<reqwest::Body>,
) -> (u16, serde_json::Value) {
    let mut req = stack.http.post(stack.ingress.url(path)).body(body);
    if let Some(ct) = content_type {
        req = req.header("content-type", ct);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let text = res.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| serde_json::json!({ "raw": text }));
    (status, json)
}

/// `POST path` over a raw connection, for bodies the server refuses before reading them: the
/// body is written while the answer is read, and a failed write (the server answered and closed)
/// is ignored. An HTTP client library would report the failed write instead of the answer.
async fn post_refused_body(stack: &Stack, path: &str, body: Vec<u8>) -> (u16, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let stream = tokio::net::TcpStream::connect(("127.0.0.1", stack.ingress.port))
        .await
        .unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let write = tokio::spawn(async move {
        let _ = writer.write_all(head.as_bytes()).await;
        let _ = writer.write_all(&body).await;
    });
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    // Until the server closes (or resets) the connection; the answer is read first either way.
    while let Ok(n @ 1..) = reader.read(&mut chunk).await {
        answer.extend_from_slice(&chunk[..n]);
    }
    write.abort();
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
    let json = serde_json::from_str(body).unwrap_or_else(|_| serde_json::json!({ "raw": body }));
    (status, json)
}

/// Asserts an error answer: the status and the code.
#[track_caller]
fn assert_error(case: &str, (status, body): &(u16, serde_json::Value), want: (u16, &str)) {
    assert_eq!(
        (*status, body["error"]["code"].as_str()),
        (want.0, Some(want.1)),
        "{case}: {body}"
    );
}

/// The preprocessor answers its health checks, and every request in the requests stream was
/// settled (acked or terminated): nothing pending, nothing waiting for an ack.
async fn assert_preprocessor_healthy_and_queue_settled(stack: &Stack) {
    for path in ["/healthz", "/readyz"] {
        let res = stack
            .http
            .get(stack.preprocessors[0].url(path))
            .send()
            .await
            .unwrap_or_else(|e| panic!("preprocessor {path}: {e} (did it crash?)"));
        assert_eq!(res.status(), 200, "preprocessor {path}");
    }
    let js = jetstream::new(stack.nats.client().await);
    let stream = js.get_stream(REQUESTS_STREAM).await.unwrap();
    // Polled with a bound: the last ack may still be on its way when the last reply arrives.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let info = stream.consumer_info(PREPROCESSOR_CONSUMER).await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "requests left unsettled: {} pending, {} unacked",
            info.num_pending,
            info.num_ack_pending
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A request published straight into the requests stream: its id, headers besides the reply
/// subject and the id, payload, and the error code it must get.
type RawRequest = (
    &'static str,
    Vec<(&'static str, &'static str)>,
    &'static [u8],
    &'static str,
);

/// A PNG whose header declares `w x h` RGB pixels followed by one tiny IDAT: a decompression
/// bomb's header (a real one would inflate to `3 * w * h` bytes).
fn png_bomb(w: u32, h: u32) -> Vec<u8> {
    fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
        out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_be_bytes());
        let start = out.len();
        out.extend_from_slice(kind);
        out.extend_from_slice(data);
        // CRC-32 (IEEE), bit by bit.
        let crc = out[start..].iter().fold(!0u32, |c, &b| {
            (0..8).fold(c ^ u32::from(b), |c, _| {
                (c >> 1) ^ (0xedb8_8320 & (c & 1).wrapping_neg())
            })
        });
        out.extend_from_slice(&(!crc).to_be_bytes());
    }
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", b"\x78\x9c\x03\x00\x00\x00\x00\x01"); // empty zlib stream
    chunk(&mut png, b"IEND", &[]);
    png
}

/// A 1x1 GIF with `frames` frames (a white one, then alternating black and white).
fn many_frames_gif(frames: usize) -> Vec<u8> {
    let mut gif = b"GIF89a".to_vec();
    gif.extend_from_slice(&[1, 0, 1, 0, 0x80, 0, 0]); // 1x1, global table of 2 colours
    gif.extend_from_slice(&[255, 255, 255, 0, 0, 0]); // white, black
    gif.extend_from_slice(b"\x21\xff\x0bNETSCAPE2.0\x03\x01\x00\x00\x00"); // loop forever
    for i in 0..frames {
        gif.extend_from_slice(&[0x21, 0xf9, 4, 0, 1, 0, 0, 0]); // 10 ms per frame
        gif.extend_from_slice(&[0x2c, 0, 0, 0, 0, 1, 0, 1, 0, 0]); // 1x1 at 0,0
        // LZW, minimum code size 2: clear (4), the pixel's index, end (5).
        let data = if i % 2 == 0 { 0x44 } else { 0x4c };
        gif.extend_from_slice(&[2, 2, data, 0x01, 0]);
    }
    gif.push(0x3b);
    gif
}

/// An origin that misbehaves: `/hang` never answers, `/endless` sends a body that never ends,
/// `/html` answers a web page where an image was expected, `/busy` answers 503 (counted in
/// `busy`), `/gone` answers 410.
async fn misbehaving_origin(busy: Arc<AtomicUsize>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    async fn endless() -> Response {
        let chunk = Bytes::from(vec![0u8; 64 * 1024]);
        let body = futures::stream::repeat_with(move || Ok::<_, Infallible>(chunk.clone()));
        Body::from_stream(body).into_response()
    }
    let app = axum::Router::new()
        .route("/hang", get(std::future::pending::<()>))
        .route("/endless", get(endless))
        .route(
            "/html",
            get(|| async { axum::response::Html("<html><body>a picture</body></html>") }),
        )
        .route(
            "/busy",
            get(move || async move {
                busy.fetch_add(1, Ordering::SeqCst);
                axum::http::StatusCode::SERVICE_UNAVAILABLE
            }),
        )
        .route("/gone", get(|| async { axum::http::StatusCode::GONE }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, task)
}

/// A server that resets every connection as soon as it is accepted (counted in `accepted`).
async fn resetting_origin(accepted: Arc<AtomicUsize>) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            // Linger 0: closing sends RST instead of FIN.
            let _ = stream.set_zero_linger();
            drop(stream);
        }
    });
    (addr, task)
}

/// A TIFF header: a real image format the preprocessor does not serve.
fn tiff() -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes()); // first IFD
    tiff.extend_from_slice(&[0; 6]); // no entries, no next IFD
    tiff
}

fn write_files(dir: &Path) {
    let jpeg = paths::validation_image("pants");
    std::fs::write(dir.join("pants.jpg"), &jpeg).unwrap();
    std::fs::write(dir.join("empty.jpg"), b"").unwrap();
    std::fs::write(dir.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    std::fs::write(dir.join("bomb.png"), png_bomb(100_000, 100_000)).unwrap();
    std::fs::write(dir.join("frames.gif"), many_frames_gif(10_000)).unwrap();
    std::fs::write(dir.join("scan.tiff"), tiff()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_images_and_origins_get_their_codes() {
    let dir = tempfile::tempdir().unwrap();
    write_files(dir.path());
    let files = FileServer::serve(dir.path()).await;
    let busy = Arc::new(AtomicUsize::new(0));
    let (origin, _origin_task) = misbehaving_origin(busy.clone()).await;
    let resets = Arc::new(AtomicUsize::new(0));
    let (resetting, _resetting_task) = resetting_origin(resets.clone()).await;
    // A port nothing listens on: connections are refused.
    let refusing = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let stack = Stack::start(StackOptions {
        // A hanging origin fails fast, and its retries follow quickly.
        preprocessor_args: ["--download-timeout-ms", "500", "--retry-delay-ms", "100"]
            .map(String::from)
            .to_vec(),
        ..StackOptions::default()
    })
    .await;
    let json = Some("application/json");
    let predict = |url: String| {
        let body = serde_json::json!({ "url": url }).to_string();
        post(&stack, "/predict", json, body)
    };

    // Malformed requests.
    for (case, body) in [
        ("malformed JSON", r#"{"url": "http://a/b.jpg""#),
        ("not an object", r#"["http://a/b.jpg"]"#),
        ("missing url", r#"{"uri": "http://a/b.jpg"}"#),
        ("numeric url", r#"{"url": 42}"#),
        ("null url", r#"{"url": null}"#),
    ] {
        assert_error(
            case,
            &post(&stack, "/predict", json, body).await,
            (400, "bad_request"),
        );
        let classify = post(&stack, "/v1/classify", json, body).await;
        assert_error(case, &classify, (400, "bad_request"));
    }
    let huge_url = format!("http://example.com/{}", "a".repeat(10 << 20));
    let huge = serde_json::json!({ "url": huge_url })
        .to_string()
        .into_bytes();
    let answer = post_refused_body(&stack, "/predict", huge.clone()).await;
    assert_error("10 MB URL", &answer, (413, "too_large"));
    let answer = post_refused_body(&stack, "/v1/classify", huge).await;
    assert_error("10 MB URL", &answer, (413, "too_large"));
    let long_url = format!("http://example.com/{}", "a".repeat(100_000));
    assert_error("100 kB URL", &predict(long_url).await, (400, "invalid_url"));
    for url in [
        "file:///etc/passwd",
        "ftp://127.0.0.1/a.jpg",
        "gopher://127.0.0.1:70/1",
        "data:image/png;base64,iVBORw0KGgo=",
        "not a url",
        "http://",
    ] {
        assert_error(url, &predict(url.into()).await, (400, "invalid_url"));
    }

    // Wrong content types and empty uploads.
    for ct in [Some("text/plain"), Some("application/xml"), None] {
        let answer = post(&stack, "/v1/classify", ct, "http://a/b.jpg").await;
        assert_error(&format!("{ct:?}"), &answer, (415, "unsupported_media_type"));
    }
    let empty = post(&stack, "/v1/classify", Some("image/jpeg"), "").await;
    assert_error("empty upload", &empty, (422, "not_an_image"));

    // Bad images from an origin.
    for (name, want) in [
        ("empty.jpg", (422, "not_an_image")),
        ("truncated.jpg", (422, "corrupt_image")),
        ("bomb.png", (422, "corrupt_image")),
        ("missing.jpg", (502, "origin_error")),
        ("scan.tiff", (422, "unsupported_format")),
    ] {
        assert_error(name, &predict(files.url(name)).await, want);
    }
    let html = predict(format!("http://{origin}/html")).await;
    assert_error("HTML page", &html, (422, "not_an_image"));
    let bomb = predict(files.url("bomb.png")).await;
    let message = bomb.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("100000x100000"), "{message}");

    // 10,000 frames: the first one is decoded and classified.
    let (status, body) = predict(files.url("frames.gif")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body.as_object().unwrap().len(), 10, "{body}");

    // Misbehaving origins: an endless body is cut at the byte cap; a hanging origin times out
    // (retried up to the delivery limit, then answered) well before the request's deadline.
    let endless = predict(format!("http://{origin}/endless")).await;
    assert_error("endless body", &endless, (413, "too_large"));
    let hang = predict(format!("http://{origin}/hang")).await;
    assert_error("hanging origin", &hang, (504, "download_timeout"));

    // Transient failures are retried up to the consumer's delivery limit, then answered; a
    // permanent one is answered at once.
    let js = jetstream::new(stack.nats.client().await);
    let max_deliver = js
        .get_stream(REQUESTS_STREAM)
        .await
        .unwrap()
        .consumer_info(PREPROCESSOR_CONSUMER)
        .await
        .unwrap()
        .config
        .max_deliver;
    let tries = usize::try_from(max_deliver).unwrap();
    assert!(
        tries > 1,
        "the consumer redelivers: max_deliver {max_deliver}"
    );
    let answer = predict(format!("http://{origin}/busy")).await;
    assert_error("origin answering 503", &answer, (502, "origin_error"));
    assert_eq!(
        busy.load(Ordering::SeqCst),
        tries,
        "a 503 is tried once a delivery"
    );
    let answer = predict(format!("http://{origin}/gone")).await;
    assert_error("origin answering 410", &answer, (502, "origin_error"));
    let answer = predict(format!("http://{resetting}/a.jpg")).await;
    assert_error("connection reset", &answer, (502, "origin_unreachable"));
    assert_eq!(
        resets.load(Ordering::SeqCst),
        tries,
        "a reset is tried once a delivery"
    );
    let answer = predict(format!("http://{refusing}/a.jpg")).await;
    assert_error("connection refused", &answer, (502, "origin_unreachable"));

    // The same checks where the ingress cannot catch them: a plain NATS client publishing bad
    // requests straight into the stream gets the error in its reply.
    let client = stack.nats.client().await;
    let mut replies = client
        .subscribe("clothesline.replies.bulk.bad-inputs")
        .await
        .unwrap();
    let js = jetstream::new(client.clone());
    let json = (HEADER_CONTENT_TYPE, CONTENT_TYPE_JSON);
    let jpeg = (HEADER_CONTENT_TYPE, "image/jpeg");
    let text = (HEADER_CONTENT_TYPE, "text/plain");
    let file_url = b"{\"url\": \"file:///etc/passwd\"}";
    let cases: [RawRequest; 7] = [
        ("n-json", vec![json], b"{\"url\": ", "bad_request"),
        ("n-missing", vec![json], b"{}", "bad_request"),
        ("n-number", vec![json], b"{\"url\": 7}", "bad_request"),
        ("n-file", vec![json], file_url, "invalid_url"),
        ("n-text", vec![text], b"http://a", "unsupported_media_type"),
        ("n-empty", vec![jpeg], b"", "not_an_image"),
        (
            "n-deadline",
            vec![jpeg, (HEADER_DEADLINE, "soon")],
            b"\xff\xd8",
            "bad_request",
        ),
    ];
    for (id, extra, payload, _) in &cases {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(HEADER_REPLY_TO, "clothesline.replies.bulk.bad-inputs");
        headers.insert(HEADER_REQUEST_ID, *id);
        for (name, value) in extra {
            headers.insert(*name, *value);
        }
        let payload = Bytes::copy_from_slice(payload);
        js.publish_with_headers(REQUESTS_SUBJECT, headers, payload)
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let mut got = HashMap::new();
    while got.len() < cases.len() {
        let msg = tokio::time::timeout(Duration::from_secs(60), replies.next())
            .await
            .expect("every bad NATS request is answered")
            .unwrap();
        let code = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(HEADER_ERROR))
            .map(|v| v.to_string());
        let reply = protocol::Reply::decode(&msg.payload).unwrap();
        got.insert(reply.request_id, code);
    }
    for (id, _, _, want) in &cases {
        assert_eq!(got[*id].as_deref(), Some(*want), "{id}");
    }

    // None of it hurt: a good image is still classified, nothing is left unsettled.
    let (status, body) = predict(files.url("pants.jpg")).await;
    assert_eq!(status, 200, "{body}");
    assert_preprocessor_healthy_and_queue_settled(&stack).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_local_addresses_are_blocked_by_default() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("pants.jpg"),
        paths::validation_image("pants"),
    )
    .unwrap();
    let files = FileServer::serve(dir.path()).await;
    let port = files.addr.port();
    let stack = Stack::start(StackOptions {
        allow_private: false,
        // Public-looking names that resolve to this machine and to a private network.
        preprocessor_args: vec![
            "--resolve".into(),
            "images.example.com=127.0.0.1,cdn.example.net=10.20.30.40".into(),
        ],
        ..StackOptions::default()
    })
    .await;

    for url in [
        format!("http://127.0.0.1:{port}/pants.jpg"),
        format!("http://localhost:{port}/pants.jpg"),
        format!("http://[::1]:{port}/pants.jpg"),
        format!("http://[::ffff:127.0.0.1]:{port}/pants.jpg"),
        format!("http://2130706433:{port}/pants.jpg"), // 127.0.0.1 as one number
        format!("http://0.0.0.0:{port}/pants.jpg"),
        "http://10.0.0.1/pants.jpg".into(),
        "http://192.168.1.1/pants.jpg".into(),
        "http://169.254.169.254/latest/meta-data/".into(),
        "http://[fe80::1]/x.jpg".into(),
        format!("http://images.example.com:{port}/pants.jpg"),
        "http://cdn.example.net/x.jpg".into(),
    ] {
        let body = serde_json::json!({ "url": url }).to_string();
        let answer = post(&stack, "/predict", Some("application/json"), body.clone()).await;
        assert_error(&url, &answer, (400, "blocked_address"));
        let answer = post(&stack, "/v1/classify", Some("application/json"), body).await;
        assert_error(&url, &answer, (400, "blocked_address"));
    }
    // Uploads do not download anything: they still work.
    let upload = post(
        &stack,
        "/v1/classify",
        Some("image/jpeg"),
        paths::validation_image("pants"),
    )
    .await;
    assert_eq!(upload.0, 200, "{}", upload.1);
    assert_preprocessor_healthy_and_queue_settled(&stack).await;
}
