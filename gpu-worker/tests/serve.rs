//! `run` against a real nats-server (from PATH) with the tiny model on CPU: predictions, error
//! replies (bad tensor, undecodable, expired), metrics, readiness, and a clean shutdown that
//! leaves nothing unacknowledged. Needs nats-server and Python with torch (`source scripts/deps.sh`).
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use async_nats::jetstream;
use clothesline_gpu_worker::{Config, Model, run, testing::export_tiny_model};
use futures::StreamExt;
use protocol::messages::Outcome;
use protocol::meta::now_ms;
use protocol::names::*;
use protocol::{ErrorCode, Manifest, ModelRef, Reply, RequestMeta, TensorMessage, Timings};
use tierkit::provision::{Topology, provision};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const REPLIES: &str = "clothesline.replies.gpu-worker-test";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// nats-server with JetStream on a free port, killed on drop.
struct NatsServer {
    child: Child,
    port: u16,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts the server and returns once it logged that it is ready.
    fn start() -> Self {
        let store = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start nats-server (install it: `source scripts/deps.sh`): {e}")
            });
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Server is ready") => break,
                Some(_) => {}
                None => panic!("nats-server exited before it was ready"),
            }
        }
        // Keep reading its log so the pipe never fills up.
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            child,
            port,
            _store: store,
        }
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap();
    (status, response)
}

async fn publish(js: &jetstream::Context, meta: &RequestMeta, payload: Vec<u8>) {
    js.publish_with_headers(
        TENSORS_SUBJECT,
        meta.to_headers(CONTENT_TYPE_MSGPACK),
        payload.into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}

fn image(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(seed).wrapping_add(seed))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_predictions_and_errors_and_stops_cleanly() {
    let model_dir = tempfile::tempdir().unwrap();
    export_tiny_model(model_dir.path()).unwrap();
    let manifest_path = model_dir.path().join("manifest.json");
    let manifest = Manifest::load(&manifest_path).unwrap();

    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    provision(&js, &Topology::builtin().with_memory_storage())
        .await
        .unwrap();
    let mut replies = client.subscribe(REPLIES).await.unwrap();
    client.flush().await.unwrap();

    // Published before the worker starts: it finds them in the stream.
    let tensor = |data: Vec<u8>| {
        TensorMessage::new(
            manifest.model_ref(),
            &manifest.input,
            data,
            now_ms(),
            Timings {
                preprocess_ms: Some(1.5),
                ..Timings::default()
            },
        )
    };
    let meta = || {
        RequestMeta::new(protocol::meta::new_request_id())
            .with_reply_to(REPLIES)
            .with_timeout(Duration::from_secs(300))
    };
    let fire_and_forget = RequestMeta::new(protocol::meta::new_request_id());
    publish(
        &js,
        &fire_and_forget,
        tensor(image(manifest.input_len(), 9)).encode(),
    )
    .await;
    let mut good = HashMap::new();
    for seed in 1..=6u8 {
        let m = meta();
        let data = image(manifest.input_len(), seed);
        publish(&js, &m, tensor(data.clone()).encode()).await;
        good.insert(m.request_id, data);
    }
    let wrong_model = meta();
    let mut t = tensor(image(manifest.input_len(), 1));
    t.model = ModelRef {
        name: "other".into(),
        version: "9".into(),
    };
    publish(&js, &wrong_model, t.encode()).await;
    let garbage = meta();
    publish(&js, &garbage, b"\xc1 not msgpack".to_vec()).await;
    let wrong_shape = meta();
    let mut t = tensor(image(112 * 112 * 3, 1));
    t.shape = vec![1, 112, 112, 3];
    publish(&js, &wrong_shape, t.encode()).await;
    let short_data = meta();
    publish(&js, &short_data, tensor(image(100, 1)).encode()).await;
    let mut expired = meta();
    expired.deadline = Some(protocol::meta::Deadline::at_ms(now_ms() - 1_000));
    publish(
        &js,
        &expired,
        tensor(image(manifest.input_len(), 2)).encode(),
    )
    .await;

    let health_port = free_port();
    let mut config = Config::local(nats.url(), &manifest_path);
    config.http_addr = ([127, 0, 0, 1], health_port).into();
    config.intra_op_threads = Some(1);
    config.warmup_batches = 1;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(run(config, async move {
        let _ = stopped.await;
    }));

    let mut answers = HashMap::new();
    while answers.len() < good.len() + 5 {
        let msg = tokio::time::timeout(Duration::from_secs(120), replies.next())
            .await
            .expect("all replies within 2 minutes")
            .unwrap();
        let headers = msg.headers.clone().unwrap();
        assert_eq!(
            headers.get(HEADER_CONTENT_TYPE).unwrap().as_str(),
            CONTENT_TYPE_JSON
        );
        let reply = Reply::decode(&msg.payload).unwrap();
        assert_eq!(
            headers.get(HEADER_REQUEST_ID).unwrap().as_str(),
            reply.request_id
        );
        if let Outcome::Error(e) = &reply.outcome {
            assert_eq!(headers.get(HEADER_ERROR).unwrap().as_str(), e.code.as_str());
        }
        answers.insert(reply.request_id.clone(), reply.outcome);
    }

    let error_code = |id: &str| match &answers[id] {
        Outcome::Error(e) => e.code,
        Outcome::Prediction(p) => panic!("expected an error for {id}, got {p:?}"),
    };
    // A version this worker does not serve is handed back (another worker may serve it), and
    // answered `unavailable` on its last delivery.
    assert_eq!(error_code(&wrong_model.request_id), ErrorCode::Unavailable);
    assert_eq!(error_code(&garbage.request_id), ErrorCode::BadTensor);
    assert_eq!(error_code(&wrong_shape.request_id), ErrorCode::BadTensor);
    assert_eq!(error_code(&short_data.request_id), ErrorCode::BadTensor);
    assert_eq!(error_code(&expired.request_id), ErrorCode::DeadlineExceeded);

    let model = tokio::task::spawn_blocking(move || {
        Model::load(&manifest, tch::Device::Cpu, false).unwrap()
    })
    .await
    .unwrap();
    for (id, data) in good {
        let Outcome::Prediction(p) = &answers[&id] else {
            panic!("expected a prediction for {id}, got {:?}", answers[&id]);
        };
        assert_eq!(p.model.name, "tiny-test");
        assert_eq!(p.classes.len(), 10);
        let t = &p.timings;
        assert_eq!(
            t.preprocess_ms,
            Some(1.5),
            "the preprocessor's timings are kept"
        );
        assert!(t.inference_ms.is_some() && t.tensor_queue_ms.is_some());
        assert!((1..=4).contains(&t.batch_size.unwrap()), "{t:?}");
        let expected = model.run_batch(&data, 1).unwrap().remove(0);
        for (a, b) in expected.iter().zip(&p.logits) {
            assert!((a - b).abs() < 1e-4, "{expected:?} vs {:?}", p.logits);
        }
    }

    let (status, body) = http_get(health_port, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (_, metrics) = http_get(health_port, "/metrics").await;
    for line in [
        "gpu_worker_items_total 7",
        "gpu_worker_expired_total 1",
        r#"gpu_worker_errors_total{code="bad_tensor"} 3"#,
        r#"gpu_worker_not_served_total{version="9"} 5"#,
        r#"gpu_worker_errors_total{code="deadline_exceeded"} 1"#,
        "gpu_worker_batch_size_count",
    ] {
        assert!(metrics.contains(line), "{line} not in\n{metrics}");
    }

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("the worker stops")
        .unwrap()
        .expect("run returns Ok");
    let mut consumer: jetstream::consumer::PullConsumer = js
        .get_consumer_from_stream(GPU_WORKER_CONSUMER, TENSORS_STREAM)
        .await
        .unwrap();
    let info = consumer.info().await.unwrap();
    assert_eq!(
        (info.num_pending, info.num_ack_pending),
        (0, 0),
        "everything was acked"
    );
}

/// Runs a worker with a 10 s batch delay and `dispatch_when_idle`, publishes one tensor once it
/// is ready (nothing else pending) with a deadline shorter than that delay, and returns its reply.
async fn lone_tensor_reply(dispatch_when_idle: bool) -> Outcome {
    let model_dir = tempfile::tempdir().unwrap();
    export_tiny_model(model_dir.path()).unwrap();
    let manifest_path = model_dir.path().join("manifest.json");
    let manifest = Manifest::load(&manifest_path).unwrap();
    let nats = NatsServer::start();
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = jetstream::new(client.clone());
    provision(&js, &Topology::builtin().with_memory_storage())
        .await
        .unwrap();
    let mut replies = client.subscribe(REPLIES).await.unwrap();
    client.flush().await.unwrap();

    let health_port = free_port();
    let mut config = Config::local(nats.url(), &manifest_path);
    config.http_addr = ([127, 0, 0, 1], health_port).into();
    config.intra_op_threads = Some(1);
    config.warmup_batches = 0;
    config.max_batch = Some(8);
    config.max_batch_delay_ms = Some(10_000);
    config.dispatch_when_idle = dispatch_when_idle;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let worker = tokio::spawn(run(config, async move {
        let _ = stopped.await;
    }));
    let mut ready = false;
    for _ in 0..600 {
        let ok = tokio::net::TcpStream::connect(("127.0.0.1", health_port))
            .await
            .is_ok();
        if ok && http_get(health_port, "/readyz").await.0 == 200 {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ready, "the worker became ready");

    // Its deadline passes before the batch delay would: only a batch run at once answers it.
    let meta = RequestMeta::new(protocol::meta::new_request_id())
        .with_reply_to(REPLIES)
        .with_timeout(Duration::from_secs(6));
    let tensor = TensorMessage::new(
        manifest.model_ref(),
        &manifest.input,
        image(manifest.input_len(), 3),
        now_ms(),
        Timings::default(),
    );
    publish(&js, &meta, tensor.encode()).await;
    let msg = tokio::time::timeout(Duration::from_secs(60), replies.next())
        .await
        .expect("a reply within a minute")
        .unwrap();
    let reply = Reply::decode(&msg.payload).unwrap();
    assert_eq!(reply.request_id, meta.request_id);

    stop.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(60), worker)
        .await
        .expect("the worker stops")
        .unwrap()
        .expect("run returns Ok");
    reply.outcome
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_tensor_runs_at_once_instead_of_waiting_for_a_fuller_batch() {
    match lone_tensor_reply(true).await {
        Outcome::Prediction(p) => assert_eq!(p.timings.batch_size, Some(1)),
        Outcome::Error(e) => panic!("the lone tensor waited for a fuller batch: {e:?}"),
    }
    // The control: told to always wait, the worker holds it past its deadline.
    match lone_tensor_reply(false).await {
        Outcome::Error(e) => assert_eq!(e.code, ErrorCode::DeadlineExceeded, "{e:?}"),
        Outcome::Prediction(p) => panic!("ran before the batch delay: {p:?}"),
    }
}
