//! A lone `clothesline-gpu-worker` process on the shipped model on CPU, for tests that set up
//! NATS themselves; SIGKILLed on drop.

use std::process::{Child, Command, Stdio};

use crate::{free_port, paths};

pub const WORKER_NAME: &str = "clothesline-gpu-worker";

/// The process, and the port of its health and metrics server.
pub struct Worker(pub Child, u16);

impl Worker {
    /// Starts a worker against `nats_url` with extra `args`; its logs go to stderr when
    /// `CLOTHESLINE_TEST_LOG` is set (as its `RUST_LOG`).
    pub fn spawn(nats_url: &str, args: &[&str]) -> Self {
        let manifest = paths::manifest();
        let port = free_port();
        let log = std::env::var("CLOTHESLINE_TEST_LOG").ok();
        let child = Command::new(paths::bin(WORKER_NAME))
            .current_dir(paths::repo_root())
            .env("NATS_URL", nats_url)
            .env("RUST_LOG", log.as_deref().unwrap_or("warn"))
            .arg("--manifest")
            .arg(&manifest)
            .args(["--device", "cpu", "--http-addr"])
            .arg(format!("127.0.0.1:{port}"))
            .args(args)
            .stdout(Stdio::null())
            .stderr(if log.is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start clothesline-gpu-worker");
        Self(child, port)
    }

    /// Its Prometheus `/metrics` URL.
    pub fn metrics_url(&self) -> String {
        format!("http://127.0.0.1:{}/metrics", self.1)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Publishes one tensor of the shipped model (`pixels`, 224x224x3) straight onto the tensors
/// stream with `meta`'s headers, and waits for the stream to store it.
pub async fn publish_tensor(
    js: &async_nats::jetstream::Context,
    meta: &protocol::RequestMeta,
    pixels: Vec<u8>,
) {
    let manifest = protocol::Manifest::load(paths::manifest()).unwrap();
    let tensor = protocol::TensorMessage::new(
        manifest.model_ref(),
        &manifest.input,
        pixels,
        protocol::meta::now_ms(),
        protocol::Timings::default(),
    );
    js.publish_with_headers(
        protocol::names::TENSORS_SUBJECT,
        meta.to_headers(protocol::names::CONTENT_TYPE_MSGPACK),
        tensor.encode().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
}
