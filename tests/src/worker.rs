//! A lone `clothesline-gpu-worker` process on the shipped model on CPU, for tests that set up
//! NATS themselves; SIGKILLed on drop.

use std::process::{Child, Command, Stdio};

use crate::{free_port, paths};

pub const WORKER_NAME: &str = "clothesline-gpu-worker";

pub struct Worker(pub Child);

impl Worker {
    /// Starts a worker against `nats_url` with extra `args`; its logs go to stderr when
    /// `CLOTHESLINE_TEST_LOG` is set (as its `RUST_LOG`).
    pub fn spawn(nats_url: &str, args: &[&str]) -> Self {
        let manifest = paths::manifest();
        let log = std::env::var("CLOTHESLINE_TEST_LOG").ok();
        let child = Command::new(paths::bin(WORKER_NAME))
            .current_dir(paths::repo_root())
            .env("NATS_URL", nats_url)
            .env("RUST_LOG", log.as_deref().unwrap_or("warn"))
            .arg("--manifest")
            .arg(&manifest)
            .args(["--device", "cpu", "--http-addr"])
            .arg(format!("127.0.0.1:{}", free_port()))
            .args(args)
            .stdout(Stdio::null())
            .stderr(if log.is_some() {
                Stdio::inherit()
            } else {
                Stdio::null()
            })
            .spawn()
            .expect("start clothesline-gpu-worker");
        Self(child)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
