//! Models as a living thing (#17), through real processes: versions published to the NATS object
//! store with the real `clothesline-model` command, the serving policy in KV, a real gpu-worker
//! swapping libtorch models without a restart, the preprocessor preparing each request for the
//! input size of its version. Two tiny TorchScript models are exported for it: v1 takes
//! 224x224, v2 160x160.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clothesline_tests::files::FileServer;
use clothesline_tests::nats::stream_messages;
use clothesline_tests::stack::{Stack, StackOptions};
use clothesline_tests::{paths, wait_until};
use protocol::manifest::sha256_hex;
use protocol::models::{MODELS_BUCKET, bucket_of};
use protocol::names::TENSORS_STREAM;

const WAIT: Duration = Duration::from_secs(120);

/// Two tiny models (v1 at 224x224, v2 at 160x160) and an image served on 127.0.0.1.
struct Fixture {
    dir: tempfile::TempDir,
    v1: PathBuf,
    v2: PathBuf,
    files: FileServer,
}

impl Fixture {
    async fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let v1 = export(dir.path(), "1", 224, 1);
        let v2 = export(dir.path(), "2", 160, 2);
        let images = dir.path().join("images");
        std::fs::create_dir(&images).unwrap();
        std::fs::write(images.join("hat.jpg"), paths::validation_image("hat")).unwrap();
        let files = FileServer::serve(&images).await;
        Self { dir, v1, v2, files }
    }

    fn image(&self) -> String {
        self.files.url("hat.jpg")
    }

    /// A stack serving v1 as its shipped model.
    async fn stack(&self, opts: StackOptions) -> Stack {
        Stack::start(StackOptions {
            manifest: self.v1.clone(),
            ..opts
        })
        .await
    }
}

/// `model/export.py --tiny` into `dir/<version>`; returns the manifest's path.
fn export(dir: &Path, version: &str, size: u32, seed: u32) -> PathBuf {
    let out = dir.join(version);
    let status = Command::new(paths::python())
        .current_dir(paths::repo_root())
        .args(["model/export.py", "--tiny", "--out"])
        .arg(&out)
        .args(["--size", &size.to_string(), "--version", version])
        .args(["--seed", &seed.to_string()])
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "export of tiny model {version} failed");
    out.join("manifest.json")
}

/// Runs `clothesline-model args` against the stack's NATS (as `provision` with per-role users);
/// returns whether it succeeded and what it printed.
async fn model_cli(stack: &Stack, args: &[&str], auth: bool) -> (bool, String) {
    let mut cmd = Command::new(paths::bin("clothesline-model"));
    cmd.env("NATS_URL", stack.nats.url()).args(args);
    if auth {
        cmd.envs(clothesline_tests::nats::NatsServer::tier_env("provision"));
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

async fn model_ok(stack: &Stack, args: &[&str], auth: bool) -> String {
    let (ok, text) = model_cli(stack, args, auth).await;
    assert!(ok, "clothesline-model {args:?} failed:\n{text}");
    println!("$ clothesline-model {}\n{text}", args.join(" "));
    text
}

/// One `/predict` answer: status, the version that served it, the error code.
#[derive(Debug, Clone)]
struct Answer {
    status: u16,
    version: Option<String>,
    code: Option<String>,
}

async fn predict(stack: &Stack, body: serde_json::Value, id: &str, pin: Option<&str>) -> Answer {
    let mut req = stack
        .http
        .post(stack.ingress.url("/predict"))
        .header("x-request-id", id)
        .json(&body);
    if let Some(v) = pin {
        req = req.header("x-model-version", v);
    }
    let res = req.send().await.unwrap();
    let status = res.status().as_u16();
    let version = res
        .headers()
        .get("x-model-version")
        .map(|v| v.to_str().unwrap().to_string());
    let json: serde_json::Value = res.json().await.unwrap();
    let code = json["error"]["code"].as_str().map(str::to_string);
    Answer {
        status,
        version,
        code,
    }
}

async fn predict_url(stack: &Stack, url: &str, id: &str) -> Answer {
    predict(stack, serde_json::json!({ "url": url }), id, None).await
}

/// The value of a metric line of the gpu-worker (`name{labels} value`), 0 when absent.
async fn worker_metric(stack: &Stack, line_start: &str) -> f64 {
    let text = stack
        .http
        .get(stack.worker.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Waits until the worker's metric line reaches `value`.
async fn wait_metric(stack: &Stack, line_start: &str, value: f64) {
    wait_until(&format!("{line_start} to be {value}"), WAIT, || async {
        (worker_metric(stack, line_start).await >= value).then_some(())
    })
    .await;
}

/// A request id whose canary bucket is below (`canary`) or at least 20.
fn id_in(canary: bool) -> String {
    // Never the same id twice in this process: a caller's id makes a request idempotent, so a
    // reused id would get its first answer (or a 409 with another body), not a fresh routing.
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    loop {
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let id = format!("probe-{n}");
        if (bucket_of(&id) < 20) == canary {
            return id;
        }
    }
}

/// Waits until a fresh request whose id is in (or out of) the canary share is served by `version`.
async fn wait_routed(stack: &Stack, url: &str, canary: bool, version: &str) {
    wait_until(&format!("requests to be routed to {version}"), WAIT, || {
        let id = id_in(canary);
        async move {
            let a = predict_url(stack, url, &id).await;
            assert_eq!(a.status, 200, "{a:?}");
            (a.version.as_deref() == Some(version)).then_some(())
        }
    })
    .await;
}

/// One request of the open-loop load.
#[derive(Debug, Clone)]
struct Sent {
    sent: Instant,
    done: Instant,
    answer: Answer,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_under_open_loop_load_switches_to_v2_with_no_error_and_no_restart() {
    let fx = Fixture::new().await;
    let stack = fx
        .stack(StackOptions {
            worker_args: vec!["--model-linger-ms".into(), "2000".into()],
            ..StackOptions::default()
        })
        .await;
    let v1 = fx.v1.display().to_string();
    let v2 = fx.v2.display().to_string();
    model_ok(&stack, &["publish", &v1], false).await;
    let out = model_ok(&stack, &["promote", "1"], false).await;
    assert!(out.contains("policy now: current 1"), "{out}");

    // Open loop: one request every 40 ms, whatever the answers do.
    let sent: Arc<Mutex<Vec<Sent>>> = Arc::default();
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (sent, stop, url) = (sent.clone(), stop.clone(), fx.image());
        let http = stack.http.clone();
        let endpoint = stack.ingress.url("/predict");
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(40));
            let mut requests = tokio::task::JoinSet::new();
            let mut i = 0;
            while !stop.is_cancelled() {
                tick.tick().await;
                i += 1;
                let (http, endpoint, url, sent) =
                    (http.clone(), endpoint.clone(), url.clone(), sent.clone());
                requests.spawn(async move {
                    let started = Instant::now();
                    let res = http
                        .post(&endpoint)
                        .header("x-request-id", format!("load-{i}"))
                        .json(&serde_json::json!({ "url": url }))
                        .send()
                        .await
                        .unwrap();
                    let status = res.status().as_u16();
                    let version = res
                        .headers()
                        .get("x-model-version")
                        .map(|v| v.to_str().unwrap().to_string());
                    let body: serde_json::Value = res.json().await.unwrap();
                    let answer = Answer {
                        status,
                        version,
                        code: body["error"]["code"].as_str().map(str::to_string),
                    };
                    sent.lock().unwrap().push(Sent {
                        sent: started,
                        done: Instant::now(),
                        answer,
                    });
                });
            }
            while let Some(r) = requests.join_next().await {
                r.unwrap();
            }
        })
    };
    let answered = |version: &'static str, at_least: usize| {
        let sent = sent.clone();
        async move {
            let n = sent
                .lock()
                .unwrap()
                .iter()
                .filter(|s| s.answer.version.as_deref() == Some(version))
                .count();
            (n >= at_least).then_some(())
        }
    };
    wait_until("20 answers from v1", WAIT, || answered("1", 20)).await;
    model_ok(&stack, &["publish", &v2], false).await;
    let out = model_ok(&stack, &["promote", "2"], false).await;
    assert!(out.contains("policy now: current 2, previous 1"), "{out}");
    wait_until("40 answers from v2", WAIT, || answered("2", 40)).await;
    stop.cancel();
    load.await.unwrap();

    let sent = sent.lock().unwrap().clone();
    let bad: Vec<_> = sent.iter().filter(|s| s.answer.status != 200).collect();
    assert!(
        bad.is_empty(),
        "{} of {} not 200: {bad:?}",
        bad.len(),
        sent.len()
    );
    let first_v2 = sent
        .iter()
        .filter(|s| s.answer.version.as_deref() == Some("2"))
        .map(|s| s.done)
        .min()
        .unwrap();
    let late_v1: Vec<_> = sent
        .iter()
        .filter(|s| s.sent > first_v2 && s.answer.version.as_deref() != Some("2"))
        .collect();
    assert!(
        late_v1.is_empty(),
        "answers not from v2 after the switch: {late_v1:?}"
    );
    let v1_count = sent
        .iter()
        .filter(|s| s.answer.version.as_deref() == Some("1"))
        .count();
    println!(
        "{} requests, all 200: {v1_count} from v1, then {} from v2",
        sent.len(),
        sent.len() - v1_count
    );
    // The same worker process swapped (a restarted one would count 0), then freed v1.
    assert_eq!(
        worker_metric(&stack, "gpu_worker_model_swaps_total").await,
        1.0
    );
    wait_metric(&stack, "gpu_worker_models_loaded", 1.0).await;
    wait_until("v1 to be freed", WAIT, || async {
        (worker_metric(&stack, "gpu_worker_models_loaded").await == 1.0).then_some(())
    })
    .await;
    let log = stack.worker.log_text().unwrap_or_default();
    assert!(log.contains("model version retired"), "{log}");
    drop(fx.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_share_pins_and_rollback_with_per_role_users() {
    let fx = Fixture::new().await;
    let stack = fx
        .stack(StackOptions {
            nats_auth: true,
            ..StackOptions::default()
        })
        .await;
    let url = fx.image();
    for m in [&fx.v1, &fx.v2] {
        model_ok(&stack, &["publish", &m.display().to_string()], true).await;
    }
    let list = model_ok(&stack, &["list"], true).await;
    assert!(
        list.contains("1\ttiny-test") && list.contains("2\ttiny-test"),
        "{list}"
    );
    model_ok(&stack, &["promote", "1"], true).await;
    let out = model_ok(&stack, &["canary", "2", "--weight", "20"], true).await;
    assert!(
        out.contains("policy now: current 1, canary 2 at 20%"),
        "{out}"
    );
    wait_routed(&stack, &url, true, "2").await;

    // 300 requests: each id gets the version its canary bucket says, ~20% v2.
    let mut v2 = 0;
    for chunk in 0..15 {
        let answers = futures::future::join_all((0..20).map(|i| {
            let id = format!("canary-{chunk}-{i}");
            let stack = &stack;
            let url = url.clone();
            async move { (predict_url(stack, &url, &id).await, id) }
        }))
        .await;
        for (a, id) in answers {
            assert_eq!(a.status, 200, "{id}: {a:?}");
            let expected = if bucket_of(&id) < 20 { "2" } else { "1" };
            assert_eq!(a.version.as_deref(), Some(expected), "{id}");
            v2 += usize::from(expected == "2");
        }
    }
    // Binomial(300, 0.2): mean 60, sd 6.9; 4 sd either side.
    assert!((33..=87).contains(&v2), "{v2} of 300 served by the canary");
    println!("canary at 20%: {v2} of 300 requests served by v2");

    // Pins: the header and the JSON field, against the canary's choice.
    for _ in 0..10 {
        let id = id_in(false);
        let a = predict(&stack, serde_json::json!({ "url": url }), &id, Some("2")).await;
        assert_eq!((a.status, a.version.as_deref()), (200, Some("2")), "{id}");
        let id = id_in(true);
        let body = serde_json::json!({ "url": url, "model_version": "1" });
        let a = predict(&stack, body, &id, None).await;
        assert_eq!((a.status, a.version.as_deref()), (200, Some("1")), "{id}");
    }
    let a = predict(
        &stack,
        serde_json::json!({ "url": url }),
        "unknown",
        Some("9.9"),
    )
    .await;
    assert_eq!(
        (a.status, a.code.as_deref()),
        (404, Some("unknown_model_version"))
    );
    let a = predict(
        &stack,
        serde_json::json!({ "url": url }),
        "bad",
        Some("a b"),
    )
    .await;
    assert_eq!((a.status, a.code.as_deref()), (400, Some("bad_request")));

    let out = model_ok(&stack, &["rollback"], true).await;
    assert!(out.contains("policy now: current 1"), "{out}");
    assert!(!out.contains("policy now: current 1, canary"), "{out}");
    wait_routed(&stack, &url, true, "1").await;
    for i in 0..100 {
        let a = predict_url(&stack, &url, &format!("after-rollback-{i}")).await;
        assert_eq!((a.status, a.version.as_deref()), (200, Some("1")), "{i}");
    }
    drop(fx.dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_and_unloadable_versions_are_refused_while_v1_keeps_serving() {
    let fx = Fixture::new().await;
    let stack = fx.stack(StackOptions::default()).await;
    let url = fx.image();
    model_ok(&stack, &["publish", &fx.v1.display().to_string()], false).await;
    model_ok(&stack, &["promote", "1"], false).await;

    // A manifest whose sha256 is not its file's: refused by publish.
    let dir = fx.dir.path().join("bad");
    std::fs::create_dir(&dir).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&fx.v2).unwrap()).unwrap();
    std::fs::copy(fx.v2.with_file_name("tiny.pt"), dir.join("tiny.pt")).unwrap();
    manifest["version"] = "3".into();
    manifest["sha256"] = "0".repeat(64).into();
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    let (ok, out) = model_cli(
        &stack,
        &["publish", &dir.join("manifest.json").display().to_string()],
        false,
    )
    .await;
    assert!(!ok && out.contains("refusing"), "{out}");
    // A malformed manifest (no classes): refused too.
    let mut no_classes = manifest.clone();
    no_classes["classes"] = serde_json::json!([]);
    std::fs::write(dir.join("empty.json"), no_classes.to_string()).unwrap();
    let (ok, out) = model_cli(
        &stack,
        &["publish", &dir.join("empty.json").display().to_string()],
        false,
    )
    .await;
    assert!(!ok && out.contains("no classes"), "{out}");

    // The same corrupt version put into the bucket behind the command's back: the worker checks
    // the sha256 itself and refuses it.
    let js = async_nats::jetstream::new(stack.nats.client().await);
    let bucket = js.get_object_store(MODELS_BUCKET).await.unwrap();
    let model = std::fs::read(dir.join("tiny.pt")).unwrap();
    manifest["file"] = "model.pt".into();
    bucket
        .put("3/model.pt", &mut model.as_slice())
        .await
        .unwrap();
    let json = manifest.to_string().into_bytes();
    bucket
        .put("3/manifest.json", &mut json.as_slice())
        .await
        .unwrap();
    model_ok(&stack, &["promote", "3"], false).await;
    wait_metric(
        &stack,
        r#"gpu_worker_model_refused_total{version="3"}"#,
        1.0,
    )
    .await;

    // A file that is not TorchScript, with its true sha256: published, refused at load.
    let junk = b"not a torchscript model".to_vec();
    manifest["version"] = "4".into();
    manifest["file"] = "junk.pt".into();
    manifest["sha256"] = sha256_hex(&junk).into();
    std::fs::write(dir.join("junk.pt"), &junk).unwrap();
    std::fs::write(dir.join("junk.json"), manifest.to_string()).unwrap();
    model_ok(
        &stack,
        &["publish", &dir.join("junk.json").display().to_string()],
        false,
    )
    .await;
    model_ok(&stack, &["promote", "4"], false).await;
    wait_metric(
        &stack,
        r#"gpu_worker_model_refused_total{version="4"}"#,
        1.0,
    )
    .await;
    let log = stack.worker.log_text().unwrap_or_default();
    assert!(log.contains("model version refused"), "{log}");

    // v1 keeps serving every request.
    for i in 0..20 {
        let a = predict_url(&stack, &url, &format!("still-v1-{i}")).await;
        assert_eq!(
            (a.status, a.version.as_deref()),
            (200, Some("1")),
            "{i}: {a:?}"
        );
    }
    // A request pinned to the version no worker serves: handed back, then answered with its
    // deadline's error, and gone from the queue.
    let started = Instant::now();
    let res = stack
        .http
        .post(stack.ingress.url("/predict"))
        .header("x-model-version", "4")
        .header("x-request-timeout-ms", "1500")
        .json(&serde_json::json!({ "url": url }))
        .send()
        .await
        .unwrap();
    let status = res.status().as_u16();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(status, 504, "{body}");
    assert_eq!(body["error"]["code"], "deadline_exceeded");
    println!(
        "pinned to an unserved version: 504 after {:?}",
        started.elapsed()
    );
    wait_metric(&stack, r#"gpu_worker_not_served_total{version="4"}"#, 1.0).await;
    wait_until("the tensors stream to be empty", WAIT, || async {
        (stream_messages(&js, TENSORS_STREAM).await == 0).then_some(())
    })
    .await;
    assert_eq!(
        worker_metric(&stack, "gpu_worker_model_swaps_total").await,
        0.0
    );
}

/// The gpu-worker's resident memory, in MiB, from `/proc`.
fn rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024.0
}

/// p-th percentile (0-100) of `v`, in ms.
fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p / 100.0).round() as usize]
}

/// The figures of BENCHMARKS.md, "Model rollout": the shipped model (v 1.0.0) under an open-loop
/// load, then the same file published as 1.0.1 and promoted (a full load, warm-up and swap of a
/// model of the real size): requests/s and p99 before and during the swap, errors, and the
/// worker's memory with one and two versions loaded. Timed phases: a benchmark, not a test.
/// `cargo test -p clothesline-tests --test model_rollout -- --ignored --nocapture rollout_benchmark`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run by hand, figures in BENCHMARKS.md"]
async fn rollout_benchmark() {
    let rate: u64 = std::env::var("ROLLOUT_RATE")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(10);
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    std::fs::write(images.join("hat.jpg"), paths::validation_image("hat")).unwrap();
    let files = FileServer::serve(&images).await;
    let url = files.url("hat.jpg");
    // The shipped model again, as version 1.0.1.
    let v2 = dir.path().join("v2");
    std::fs::create_dir(&v2).unwrap();
    let shipped = paths::manifest();
    std::fs::copy(shipped.with_file_name("clothes.pt"), v2.join("clothes.pt")).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&shipped).unwrap()).unwrap();
    manifest["version"] = "1.0.1".into();
    std::fs::write(v2.join("manifest.json"), manifest.to_string()).unwrap();

    let stack = Stack::start(StackOptions {
        worker_args: vec!["--model-linger-ms".into(), "5000".into()],
        ..StackOptions::default()
    })
    .await;
    model_ok(&stack, &["publish", &shipped.display().to_string()], false).await;
    model_ok(&stack, &["promote", "1.0.0"], false).await;
    model_ok(
        &stack,
        &["publish", &v2.join("manifest.json").display().to_string()],
        false,
    )
    .await;
    let pid = stack.worker.pid();

    let started = Instant::now();
    // (sent at s, latency s, status, model version) per request.
    type Sent = Vec<(f64, f64, u16, Option<String>)>;
    let sent: Arc<Mutex<Sent>> = Arc::default();
    let phase = Duration::from_secs(20);
    let load = {
        let (sent, http, endpoint, url) = (
            sent.clone(),
            stack.http.clone(),
            stack.ingress.url("/predict"),
            url.clone(),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(1000 / rate));
            let mut requests = tokio::task::JoinSet::new();
            while started.elapsed() < phase * 3 {
                tick.tick().await;
                let (sent, http, endpoint, url) =
                    (sent.clone(), http.clone(), endpoint.clone(), url.clone());
                requests.spawn(async move {
                    let at = started.elapsed().as_secs_f64();
                    let res = http
                        .post(&endpoint)
                        .json(&serde_json::json!({ "url": url }))
                        .send()
                        .await
                        .unwrap();
                    let status = res.status().as_u16();
                    let version = res
                        .headers()
                        .get("x-model-version")
                        .map(|v| v.to_str().unwrap().to_string());
                    let latency = started.elapsed().as_secs_f64() - at;
                    sent.lock()
                        .unwrap()
                        .push((at, latency * 1e3, status, version));
                });
            }
            while let Some(r) = requests.join_next().await {
                r.unwrap();
            }
        })
    };
    // Phase 1: v1 only; its memory.
    while started.elapsed() < phase {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rss_one = rss_mib(pid);
    // Phase 2: promote; the memory peak while both are loaded.
    let promoted_at = started.elapsed().as_secs_f64();
    model_ok(&stack, &["promote", "1.0.1"], false).await;
    let mut rss_two: f64 = 0.0;
    while started.elapsed() < phase * 2 {
        rss_two = rss_two.max(rss_mib(pid));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    load.await.unwrap();
    let rss_after = rss_mib(pid);
    let sent = sent.lock().unwrap().clone();
    let first_v2 = sent
        .iter()
        .filter(|s| s.3.as_deref() == Some("1.0.1"))
        .map(|s| s.0)
        .fold(f64::INFINITY, f64::min);
    let window = |from: f64, to: f64| {
        let inside: Vec<_> = sent.iter().filter(|s| s.0 >= from && s.0 < to).collect();
        let mut lat: Vec<f64> = inside.iter().map(|s| s.1).collect();
        let errors = inside.iter().filter(|s| s.2 != 200).count();
        let answered_per_s = inside.len() as f64 / (to - from);
        (
            inside.len(),
            errors,
            answered_per_s,
            percentile(&mut lat, 50.0),
            percentile(&mut lat, 99.0),
        )
    };
    let before = window(5.0, promoted_at);
    // The swap: from the promotion to 2 s after the first answer from v2.
    let during = window(promoted_at, first_v2 + 2.0);
    let after = window(first_v2 + 2.0, phase.as_secs_f64() * 3.0);
    let errors = sent.iter().filter(|s| s.2 != 200).count();
    println!(
        "open loop {rate}/s; swap: promote at {promoted_at:.1} s, first v2 answer {:.1} s later",
        first_v2 - promoted_at
    );
    for (name, (n, e, rps, p50, p99)) in [
        ("before", before),
        ("during swap", during),
        ("after", after),
    ] {
        println!(
            "{name}: {n} requests, {e} errors, {rps:.1} req/s, p50 {p50:.0} ms, p99 {p99:.0} ms"
        );
    }
    println!(
        "{} requests, {errors} not 200; worker RSS: {rss_one:.0} MiB with one version, peak {rss_two:.0} MiB while swapping (+{:.0} MiB), {rss_after:.0} MiB after the old one was freed",
        sent.len(),
        rss_two - rss_one
    );
    assert_eq!(errors, 0);
}
