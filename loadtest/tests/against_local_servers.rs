//! The load generator as a process against servers on 127.0.0.1: a small classifier stand-in
//! whose answers are known (it names the class written in each image file, so accuracy and error
//! counts are exact), in both loops and both image sources; and its own `serve-noop`. Counts are
//! checked, never timings.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Stdio;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::AsyncBufReadExt;

const BIN: &str = env!("CARGO_BIN_EXE_clothesline-loadtest");

/// Five "images" whose bytes are the label the stand-in answers: one in two pants is called a
/// hat (accuracy 3/4), and the file at the top makes an error answer.
fn images() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, content) in [
        ("hat/1.jpg", "hat"),
        ("hat/2.jpg", "hat"),
        ("pants/1.jpg", "pants"),
        ("pants/2.jpg", "hat"),
        ("broken.jpg", "error"),
    ] {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    dir
}

fn answer(label: &[u8], flat: bool) -> Response {
    let label = String::from_utf8_lossy(label).to_string();
    if label == "error" {
        let body = json!({"error": {"code": "queue_full", "message": "full"}});
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    }
    let other = if label == "hat" { "pants" } else { "hat" };
    if flat {
        Json(json!({ label.clone(): 2.5, other: -1.0 })).into_response()
    } else {
        let timings = json!({"preprocess_ms": 1.5, "inference_ms": 2.0, "total_ms": 4.0});
        Json(json!({"top": [{"label": label, "probability": 0.9}], "timings": timings}))
            .into_response()
    }
}

/// `/predict` downloads the URL (from the load generator's image server) and names its content;
/// `/v1/classify` names the uploaded bytes.
async fn stand_in() -> String {
    let http = reqwest::Client::new();
    let app = axum::Router::new()
        .route(
            "/predict",
            post(move |body: Bytes| async move {
                let url = serde_json::from_slice::<Value>(&body).unwrap()["url"]
                    .as_str()
                    .unwrap()
                    .to_string();
                let image = http.get(url).send().await.unwrap().bytes().await.unwrap();
                answer(&image, true)
            }),
        )
        .route(
            "/v1/classify",
            post(|body: Bytes| async move { answer(&body, false) }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

async fn load_test(ingress: &str, images: &Path, args: &[&str]) -> Value {
    let out = tempfile::NamedTempFile::new().unwrap();
    let status = tokio::process::Command::new(BIN)
        .args([
            "run",
            "--ingress",
            ingress,
            "--timeout",
            "30s",
            "--no-progress",
        ])
        .arg("--images")
        .arg(images)
        .arg("--json")
        .arg(out.path())
        .args(args)
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success(), "{args:?}: {status}");
    serde_json::from_slice(&std::fs::read(out.path()).unwrap()).unwrap()
}

/// 50 requests over 5 images: each sent 10 times.
fn check_counts(r: &Value) {
    assert_eq!(r["completed"], 50, "{r}");
    assert_eq!(r["ok"], 40, "{r}");
    assert_eq!(r["statuses"], json!({"200": 40, "503": 10}), "{r}");
    assert_eq!(r["error_codes"], json!({"queue_full": 10}), "{r}");
    let a = &r["accuracy"];
    assert_eq!(
        (&a["scored"], &a["correct"]),
        (&json!(40), &json!(30)),
        "{r}"
    );
    assert_eq!(
        a["by_class"],
        json!({"hat": [20, 20], "pants": [20, 10]}),
        "{r}"
    );
    assert!(r["latency_ms"]["max"].as_f64().unwrap() >= r["latency_ms"]["p50"].as_f64().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_answers_errors_and_accuracy_in_both_loops() {
    let images = images();
    let ingress = stand_in().await;

    let closed = ["--concurrency", "4", "--requests", "50"];
    let r = load_test(&ingress, images.path(), &closed).await;
    assert_eq!(
        (&r["mode"], &r["target"], &r["source"]),
        (&json!("closed"), &json!("predict"), &json!("url"))
    );
    check_counts(&r);
    assert!(
        r.get("timings_p50_ms").is_none(),
        "only with --timings: {r}"
    );

    let open = [
        "--rate",
        "500",
        "--requests",
        "50",
        "--target",
        "classify",
        "--upload",
        "--timings",
    ];
    let r = load_test(&ingress, images.path(), &open).await;
    assert_eq!(
        (&r["mode"], &r["source"]),
        (&json!("open"), &json!("upload"))
    );
    check_counts(&r);
    // The stand-in's figures, from the 40 successful answers.
    let t = &r["timings_p50_ms"];
    assert_eq!(
        (&t["inference_ms"], &t["total_ms"]),
        (&json!(2.0), &json!(4.0)),
        "{r}"
    );
    assert!(t["client_ms"].as_f64().unwrap() > 0.0, "{r}");
    assert!(t.get("download_ms").is_none(), "{r}");

    // Warm-up requests are sent but not counted.
    let warm = [
        "--rate",
        "200",
        "--requests",
        "50",
        "--warmup",
        "100ms",
        "--target",
        "classify",
        "--upload",
    ];
    let r = load_test(&ingress, images.path(), &warm).await;
    assert_eq!(r["completed"], 50, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_noop_answers_everything() {
    let mut noop = tokio::process::Command::new(BIN)
        .arg("serve-noop")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(noop.stdout.take().unwrap()).lines();
    let url = lines.next_line().await.unwrap().unwrap();
    let images = images();
    let r = load_test(
        &url,
        images.path(),
        &["--concurrency", "3", "--requests", "30"],
    )
    .await;
    assert_eq!(r["statuses"], json!({"200": 30}), "{r}");
    // `{}` names no class: no accuracy, every answer unreadable.
    assert_eq!(r["accuracy"]["scored"], 0, "{r}");
    assert_eq!(r["accuracy"]["unreadable"], 24, "{r}");
    assert!(r["loadgen_cpu"]["wall_s"].as_f64().unwrap() > 0.0, "{r}");
    // An OTLP/HTTP export gets an empty protobuf answer (a valid ExportTraceServiceResponse).
    let export = reqwest::Client::new()
        .post(format!("{url}/v1/traces"))
        .header("content-type", "application/x-protobuf")
        .body(vec![10, 0])
        .send()
        .await
        .unwrap();
    assert_eq!(export.status(), 200);
    assert_eq!(export.headers()["content-type"], "application/x-protobuf");
    assert!(export.bytes().await.unwrap().is_empty());
    noop.kill().await.unwrap();
}
