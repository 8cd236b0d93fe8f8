//! End to end through real processes: HTTP -> ingress -> JetStream -> preprocessor -> JetStream
//! -> gpu-worker (libtorch, CPU) -> reply, against a real nats-server and images served on
//! 127.0.0.1.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use clothesline_gpu_worker::model::Model;
use clothesline_preprocessor::imaging::{ImageSpec, preprocess_image};
use clothesline_tests::files::FileServer;
use clothesline_tests::paths;
use clothesline_tests::stack::{Stack, StackOptions};
use protocol::Manifest;

/// A JPEG from the validation split and the same picture re-encoded as PNG, in a temp folder.
fn sample_images() -> (tempfile::TempDir, Vec<(String, Vec<u8>)>) {
    let dir = tempfile::tempdir().unwrap();
    let pants = first_image(&paths::dataset().join("validation/pants"));
    let jpeg = std::fs::read(&pants).unwrap();
    let png_path = dir.path().join("hat.png");
    let hat = first_image(&paths::dataset().join("validation/hat"));
    image::open(&hat).unwrap().save(&png_path).unwrap();
    std::fs::write(dir.path().join("pants.jpg"), &jpeg).unwrap();
    let png = std::fs::read(&png_path).unwrap();
    (
        dir,
        vec![("pants.jpg".into(), jpeg), ("hat.png".into(), png)],
    )
}

fn first_image(dir: &Path) -> PathBuf {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e} (is ../shared there?)", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.into_iter().next().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jpeg_and_png_scores_match_the_model_in_process() {
    let (dir, images) = sample_images();
    let files = FileServer::serve(dir.path()).await;
    let stack = Stack::start(StackOptions::default()).await;

    let manifest = Manifest::load(paths::manifest()).unwrap();
    let model = Model::load(&manifest, tch::Device::Cpu, false).unwrap();
    let spec = ImageSpec::from_manifest(&manifest);

    for (name, bytes) in &images {
        let (status, body) = stack.predict(&files.url(name)).await;
        assert_eq!(status, 200, "{name}: {body}");
        let scores = body.as_object().unwrap();
        assert_eq!(
            scores.len(),
            manifest.classes.len(),
            "{name}: one score per class"
        );

        let tensor = preprocess_image(bytes, &spec).unwrap();
        let expected = &model.run_batch(&tensor, 1).unwrap()[0];
        for (class, want) in manifest.classes.iter().zip(expected) {
            let got = scores[class].as_f64().unwrap() as f32;
            assert!(
                (got - want).abs() <= 1e-4,
                "{name} {class}: pipeline {got}, in-process {want}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_come_back_with_their_code_not_as_timeouts() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"this is not an image at all").unwrap();
    std::fs::write(
        dir.path().join("cut.jpg"),
        &std::fs::read(first_image(&paths::dataset().join("validation/shoes"))).unwrap()[..600],
    )
    .unwrap();
    let files = FileServer::serve(dir.path()).await;
    let stack = Stack::start(StackOptions::default()).await;

    let (status, body) = stack.predict(&files.url("missing.jpg")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (502, Some("origin_error")),
        "{body}"
    );
    assert!(
        body["error"]["message"].as_str().unwrap().contains("404"),
        "{body}"
    );

    let (status, body) = stack.predict(&files.url("notes.txt")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("not_an_image")),
        "{body}"
    );

    let (status, body) = stack.predict(&files.url("cut.jpg")).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (422, Some("corrupt_image")),
        "{body}"
    );

    let (status, body) = stack.predict("ftp://127.0.0.1/a.jpg").await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_url")),
        "{body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_and_plain_nats_clients_get_the_same_answer() {
    use futures::StreamExt;
    use protocol::names::*;

    let (_dir, images) = sample_images();
    let (_, jpeg) = &images[0];
    let stack = Stack::start(StackOptions::default()).await;

    // HTTP upload of the raw bytes.
    let res = stack
        .http
        .post(stack.ingress.url("/v1/classify?top_k=1"))
        .header("content-type", "image/jpeg")
        .body(jpeg.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let http: serde_json::Value = res.json().await.unwrap();
    let top = http["top"][0]["label"].as_str().unwrap().to_string();
    assert!(
        http["timings"]["inference_ms"].as_f64().unwrap() > 0.0,
        "{http}"
    );

    // The same bytes published straight into the requests stream by a plain NATS client,
    // with a reply subject of its own in the header.
    let client = stack.nats.client().await;
    let mut replies = client
        .subscribe("clothesline.replies.bulk.my-service.results")
        .await
        .unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(
        HEADER_REPLY_TO,
        "clothesline.replies.bulk.my-service.results",
    );
    headers.insert(HEADER_REQUEST_ID, "bulk-1");
    headers.insert(HEADER_CONTENT_TYPE, "image/jpeg");
    js.publish_with_headers(REQUESTS_SUBJECT, headers, jpeg.clone().into())
        .await
        .unwrap()
        .await
        .unwrap();
    let msg = replies.next().await.unwrap();
    let reply = protocol::Reply::decode(&msg.payload).unwrap();
    assert_eq!(reply.request_id, "bulk-1");
    let protocol::messages::Outcome::Prediction(p) = reply.outcome else {
        panic!("{reply:?}")
    };
    assert_eq!(p.classes[p.top().unwrap()], top);
}

/// `--nats-url a,b` (NATS_URL) is a list of servers, as for a cluster: every tier is given an
/// address where nothing listens before the real server's, connects, and answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiers_take_a_comma_separated_list_of_nats_servers() {
    let dead = format!("nats://127.0.0.1:{}", clothesline_tests::free_port());
    let stack = Stack::start(StackOptions {
        extra_nats_urls: vec![dead],
        ..StackOptions::default()
    })
    .await;
    let res = stack
        .http
        .post(stack.ingress.url("/v1/classify?top_k=1"))
        .header("content-type", "image/jpeg")
        .body(paths::validation_image("pants"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["top"][0]["label"], "pants", "{body}");
}
