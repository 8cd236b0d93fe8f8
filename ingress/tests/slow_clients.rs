//! The HTTP server's limits on real TCP connections on 127.0.0.1 (the pipeline behind the API is
//! faked: it answers at once): slowloris and idle connections closed at the header timeout, a
//! trickled body cut at the request's deadline with its in-flight permit given back, the
//! connection cap, shutdown with slow clients connected, and JSON on the answers hyper writes
//! itself (400, 431).
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clothesline_ingress::backend::{Backend, Job};
use clothesline_ingress::metrics::Metrics;
use clothesline_ingress::server::{self, Limits};
use clothesline_ingress::{AppState, app};
use futures::future::BoxFuture;
use protocol::{Error, ModelRef, Prediction, Timings};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// Answers every job at once.
struct Instant;

impl Backend for Instant {
    fn submit(&self, _job: Job) -> BoxFuture<'static, Result<Prediction, Error>> {
        Box::pin(async {
            Ok(Prediction {
                model: ModelRef {
                    name: "m".into(),
                    version: "1".into(),
                },
                classes: vec!["hat".into(), "pants".into()],
                logits: vec![1.0, 0.0],
                timings: Timings::default(),
            })
        })
    }

    fn ready(&self) -> BoxFuture<'static, Result<(), String>> {
        Box::pin(async { Ok(()) })
    }
}

struct Server {
    addr: SocketAddr,
    metrics: Metrics,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

async fn start(limits: Limits, max_inflight: usize, timeout: Duration) -> Server {
    let metrics = Metrics::new();
    let state = AppState {
        backend: Arc::new(Instant),
        metrics: metrics.clone(),
        inflight: Arc::new(Semaphore::new(max_inflight)),
        default_timeout: timeout,
        max_timeout: timeout,
        max_body_bytes: 1 << 20,
        max_batch_urls: 4,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(server::serve(
        listener,
        app(state),
        limits,
        metrics.clone(),
        stop.clone(),
    ));
    Server {
        addr,
        metrics,
        stop,
        task,
    }
}

fn limits(header_timeout_ms: u64) -> Limits {
    Limits {
        header_timeout: Duration::from_millis(header_timeout_ms),
        max_connections: 1000,
        slow_client_grace: Duration::from_millis(300),
        shutdown_grace: Duration::from_secs(2),
    }
}

impl Server {
    fn closed(&self, reason: &str) -> u64 {
        self.metrics
            .connections_closed
            .with_label_values(&[reason])
            .get()
    }

    /// Polls until `what` holds, for at most 10 s.
    async fn wait_for(&self, what: &str, check: impl Fn(&Self) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !check(self) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting: {what}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A connection that has sent `bytes` and nothing more.
    async fn slow(&self, bytes: &[u8]) -> TcpStream {
        let mut s = TcpStream::connect(self.addr).await.unwrap();
        s.write_all(bytes).await.unwrap();
        s
    }
}

/// Everything the server sends until it closes: `(status, head, body)`; status 0 when it closes
/// without answering. Panics after 10 s.
async fn answer(stream: &mut TcpStream) -> (u16, String, String) {
    let mut out = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 8192];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    });
    read.await.expect("the server closes the connection");
    let text = String::from_utf8_lossy(&out).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    (status, head.to_ascii_lowercase(), body.to_string())
}

const CLASSIFY: &[u8] =
    b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: 1\r\nConnection: close\r\n\r\nx";

#[tokio::test]
async fn slowloris_and_idle_connections_are_closed_at_the_header_timeout() {
    let server = start(limits(400), 8, Duration::from_secs(30)).await;
    let mut slow = Vec::new();
    for _ in 0..20 {
        slow.push(
            server
                .slow(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\nX-A: ")
                .await,
        );
    }
    slow.push(server.slow(b"").await); // connected, never says anything
    // Kept alive after one answer, then idle.
    let mut kept = server
        .slow(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let mut first = [0u8; 256];
    assert!(kept.read(&mut first).await.unwrap() > 0);
    // Meanwhile a normal request is served.
    let (status, _, _) = answer(&mut server.slow(CLASSIFY).await).await;
    assert_eq!(status, 200);
    for s in &mut slow {
        let (status, _, _) = answer(s).await;
        assert_eq!(status, 0, "closed without an answer");
    }
    answer(&mut kept).await;
    server
        .wait_for("22 header timeouts counted", |s| {
            s.closed("header_timeout") == 22
        })
        .await;
    server.stop.cancel();
    server.task.await.unwrap();
}

/// Writes `head` then one byte of the body every 100 ms until the server stops reading.
async fn trickle(server: &Server, request_id: &str) -> TcpStream {
    let head = format!(
        "POST /v1/classify HTTP/1.1\r\nHost: x\r\nX-Request-Id: {request_id}\r\nContent-Type: image/png\r\nContent-Length: 100000\r\nConnection: close\r\n\r\n"
    );
    let stream = server.slow(head.as_bytes()).await;
    let std = stream.into_std().unwrap();
    let writer = std.try_clone().unwrap();
    tokio::spawn(async move {
        let mut writer = TcpStream::from_std(writer).unwrap();
        while writer.write_all(b"x").await.is_ok() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    TcpStream::from_std(std).unwrap()
}

#[tokio::test]
async fn a_trickled_body_gives_its_permit_back_at_the_deadline() {
    let server = start(limits(10_000), 3, Duration::from_millis(1500)).await;
    let mut tricklers = [
        trickle(&server, "trickle-1").await,
        trickle(&server, "trickle-2").await,
    ];
    server
        .wait_for("both tricklers in flight", |s| {
            s.metrics.inflight.get() == 2
        })
        .await;
    let (status, _, _) = answer(&mut server.slow(CLASSIFY).await).await;
    assert_eq!(status, 200, "a normal request is served beside them");
    for (i, t) in tricklers.iter_mut().enumerate() {
        let (status, head, body) = answer(t).await;
        assert_eq!(status, 504, "{head}");
        assert!(
            head.contains(&format!("x-request-id: trickle-{}", i + 1)),
            "{head}"
        );
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"]["code"], "deadline_exceeded");
    }
    server
        .wait_for("permits back", |s| s.metrics.inflight.get() == 0)
        .await;
    assert_eq!(server.closed("body_timeout"), 2);
    server.stop.cancel();
    server.task.await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_slow_clients_after_the_grace() {
    let server = start(limits(60_000), 8, Duration::from_secs(60)).await;
    let mut slow = Vec::new();
    for _ in 0..10 {
        slow.push(
            server
                .slow(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
                .await,
        );
    }
    let mut trickler = trickle(&server, "trickle-3").await;
    server
        .wait_for("11 connections open", |s| {
            s.metrics.connections_open.get() == 11
        })
        .await;
    server
        .wait_for("the trickler in flight", |s| s.metrics.inflight.get() == 1)
        .await;
    server.stop.cancel();
    // Bounded: the shutdown grace is 2 s; the test gives it 10.
    tokio::time::timeout(Duration::from_secs(10), server.task)
        .await
        .expect("shutdown ends within its grace")
        .unwrap();
    let (status, _, body) = answer(&mut trickler).await;
    assert_eq!(status, 503, "{body}");
    for s in &mut slow {
        answer(s).await;
    }
    assert_eq!(
        server
            .metrics
            .connections_closed
            .with_label_values(&["shutdown"])
            .get(),
        11
    );
}

#[tokio::test]
async fn connections_over_the_cap_get_503_json() {
    let server = start(
        Limits {
            max_connections: 2,
            ..limits(10_000)
        },
        8,
        Duration::from_secs(5),
    )
    .await;
    let _a = server.slow(b"").await;
    let _b = server.slow(b"").await;
    server
        .wait_for("2 connections open", |s| {
            s.metrics.connections_open.get() == 2
        })
        .await;
    let (status, head, body) = answer(&mut server.slow(CLASSIFY).await).await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("x-request-id: "), "{head}");
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(json["error"]["code"], "unavailable");
    assert_eq!(server.closed("over_capacity"), 1);
}

#[tokio::test]
async fn answers_hyper_writes_itself_are_json_with_a_request_id() {
    let server = start(limits(10_000), 8, Duration::from_secs(5)).await;
    let mut many = b"GET /healthz HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..150 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    for (request, want_status, want_code) in [
        (many, 431, "headers_too_large"),
        (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), 400, "bad_request"),
    ] {
        let mut stream = TcpStream::connect(server.addr).await.unwrap();
        stream.write_all(&request).await.ok();
        let (status, head, body) = answer(&mut stream).await;
        assert_eq!(status, want_status, "{head}");
        assert!(head.contains("x-request-id: "), "{head}");
        assert!(head.contains("content-type: application/json"), "{head}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["error"]["code"], want_code);
    }
}
