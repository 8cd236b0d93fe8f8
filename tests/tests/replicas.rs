//! Many replicas of every tier on one nats-server, as on Kubernetes: 2 ingresses, 2
//! preprocessors and 2 gpu-workers. Concurrent callers on both ingresses, with their own ids or
//! none, each get the answer to the image they sent (ids and reply subjects never cross: every
//! answer matches the model run in-process on that image, under that caller's id), and the work
//! spreads over the replicas (each one's metrics show it handled some).
#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::PathBuf;

use clothesline_gpu_worker::model::Model;
use clothesline_preprocessor::imaging::{ImageSpec, preprocess_image};
use clothesline_tests::files::FileServer;
use clothesline_tests::origin::{metric, metrics_text};
use clothesline_tests::paths;
use clothesline_tests::stack::{Stack, StackOptions, Tier};
use protocol::Manifest;
use serde_json::Value;

/// Rounds of concurrent requests at most before every replica must have handled some.
const MAX_WAVES: usize = 6;

/// One image of each class of the validation split: its path under the split and its expected
/// probabilities (softmax of the model's logits, run in-process), in class order.
fn images_and_expected(manifest: &Manifest) -> Vec<(String, Vec<f32>)> {
    let model = Model::load(manifest, tch::Device::Cpu, false).unwrap();
    let spec = ImageSpec::from_manifest(manifest);
    let split = paths::dataset().join("validation");
    manifest
        .classes
        .iter()
        .map(|class| {
            let mut files: Vec<PathBuf> = std::fs::read_dir(split.join(class))
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            let bytes = std::fs::read(&files[0]).unwrap();
            let logits = &model
                .run_batch(&preprocess_image(&bytes, &spec).unwrap(), 1)
                .unwrap()[0];
            let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let exps: Vec<f32> = logits.iter().map(|l| (l - max).exp()).collect();
            let sum: f32 = exps.iter().sum();
            let name = files[0].file_name().unwrap().to_string_lossy().into_owned();
            (
                format!("{class}/{name}"),
                exps.iter().map(|e| e / sum).collect(),
            )
        })
        .collect()
}

async fn sample(stack: &Stack, tier: &Tier, name: &str) -> f64 {
    metric(
        &metrics_text(&stack.http, &tier.url("/metrics")).await,
        name,
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_of_each_tier_answer_every_caller_its_own_image_and_share_the_work() {
    let manifest = Manifest::load(paths::manifest()).unwrap();
    let images = images_and_expected(&manifest);
    // The answers can only be told apart if the images' are distinct.
    for (i, (_, a)) in images.iter().enumerate() {
        for (_, b) in &images[i + 1..] {
            assert!(a.iter().zip(b).any(|(x, y)| (x - y).abs() > 1e-3));
        }
    }
    let files = FileServer::serve(&paths::dataset().join("validation")).await;
    let mut stack = Stack::start(StackOptions::default()).await;
    stack.add_preprocessor().await;
    let second_ingress = stack.add_ingress(1).await;
    let second_worker = stack.add_worker(1).await;
    let ingresses = [&stack.ingress, &second_ingress];

    let mut ids = HashSet::new();
    for wave in 0..MAX_WAVES {
        // Every image on both ingresses at once, half with the caller's own id.
        let calls: Vec<_> = (0..2 * images.len())
            .map(|n| {
                let (image, expected) = images[n % images.len()].clone();
                let ingress = ingresses[n % 2];
                let mut request = stack
                    .http
                    .post(ingress.url("/v1/classify?top_k=1"))
                    .json(&serde_json::json!({ "url": files.url(&image) }));
                let own_id = (n / 2 % 2 == 0).then(|| format!("replicas-{wave}-{n}"));
                if let Some(id) = &own_id {
                    request = request.header("x-request-id", id);
                }
                tokio::spawn(async move {
                    let res = request.send().await.unwrap();
                    let status = res.status().as_u16();
                    let header = res.headers()["x-request-id"].to_str().unwrap().to_string();
                    let body: Value = res.json().await.unwrap();
                    (image, expected, own_id, status, header, body)
                })
            })
            .collect();
        for call in calls {
            let (image, expected, own_id, status, header, body) = call.await.unwrap();
            assert_eq!(status, 200, "{image}: {body}");
            assert_eq!(body["request_id"], header.as_str(), "{image}");
            if let Some(id) = own_id {
                assert_eq!(header, id, "{image}");
            }
            assert!(
                ids.insert(header.clone()),
                "{image}: id {header} answered twice"
            );
            for (class, want) in manifest.classes.iter().zip(&expected) {
                let got = body["scores"][class].as_f64().unwrap() as f32;
                assert!(
                    (got - want).abs() <= 1e-4,
                    "{image} ({header}) {class}: got {got}, its image gives {want}: {body}"
                );
            }
        }
        let mut handled = vec![];
        for ingress in ingresses {
            let sample_name = "ingress_requests_total{route=\"/v1/classify\",status=\"200\"}";
            handled.push((
                ingress.name.clone(),
                sample(&stack, ingress, sample_name).await,
            ));
        }
        for pre in &stack.preprocessors {
            let name = "preprocessor_requests_total{outcome=\"ok\"}";
            handled.push((pre.name.clone(), sample(&stack, pre, name).await));
        }
        for worker in [&stack.worker, &second_worker] {
            let name = "gpu_worker_items_total";
            handled.push((worker.name.clone(), sample(&stack, worker, name).await));
        }
        if handled.iter().all(|(_, n)| *n > 0.0) {
            println!(
                "{} answers in {} rounds; handled per replica: {handled:?}",
                ids.len(),
                wave + 1
            );
            return;
        }
        assert!(
            wave + 1 < MAX_WAVES,
            "after {MAX_WAVES} rounds some replica handled nothing: {handled:?}"
        );
    }
}
