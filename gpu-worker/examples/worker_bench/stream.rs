//! The worker bench's NATS side: its own nats-server with JetStream (from PATH or /usr/sbin) on a
//! free local port, the shipped topology with room for a round, and the tensors stream pre-filled
//! with N tensor messages that name a reply subject, as the preprocessor sends them.

use std::future::IntoFuture;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use async_nats::jetstream::{self, stream::StorageType};
use protocol::meta::now_ms;
use protocol::names::{CONTENT_TYPE_MSGPACK, TENSORS_SUBJECT};
use protocol::{Manifest, RequestMeta, TensorMessage, Timings};
use tierkit::provision::Topology;

/// A nats-server with JetStream in a temp dir, killed on drop.
pub struct NatsServer {
    child: Child,
    port: u16,
    pub version: String,
    _store: tempfile::TempDir,
}

/// `nats-server`: `NATS_SERVER_BIN`, else PATH, else Debian's /usr/sbin.
fn nats_server_bin() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return Ok(p.into());
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.exists())
        .context("nats-server not found on PATH or in /usr/sbin: `source scripts/deps.sh`")
}

impl NatsServer {
    /// Starts the server and returns once it logs that it is ready.
    pub fn start() -> anyhow::Result<Self> {
        let bin = nats_server_bin()?;
        let version = Command::new(&bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        let store = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child = Command::new(&bin)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut lines = BufReader::new(child.stderr.take().context("stderr")?).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Server is ready") => break,
                Some(_) => {}
                None => bail!("nats-server exited before it was ready"),
            }
        }
        // Keep reading its log so the pipe never fills up.
        std::thread::spawn(move || lines.for_each(drop));
        Ok(Self {
            child,
            port,
            version,
            _store: store,
        })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The shipped topology, with room in the tensors stream for `n` tensors of `len` bytes.
pub fn topology(n: usize, len: usize, memory: bool) -> Topology {
    let mut t = Topology::builtin();
    t.tensors.max_messages = t.tensors.max_messages.max(n as i64);
    t.tensors.max_bytes = t.tensors.max_bytes.max((n * (len + 4096)) as i64);
    if memory {
        t.tensors.storage = StorageType::Memory;
    }
    t
}

/// Publishes `n` tensors (pixels from a fixed pseudo-random sequence, 16 different images in
/// turn) that ask for replies on `reply_to`, with no deadline. Returns how long it took.
pub async fn publish(
    js: &jetstream::Context,
    manifest: &Manifest,
    n: usize,
    reply_to: &str,
) -> anyhow::Result<Duration> {
    let len = manifest.input_len();
    let images: Vec<Vec<u8>> = (0..16u64)
        .map(|k| {
            let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ (k + 1);
            (0..len)
                .map(|_| {
                    // xorshift64
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x >> 32) as u8
                })
                .collect()
        })
        .collect();
    let started = Instant::now();
    let mut acks = Vec::with_capacity(256);
    for i in 0..n {
        let meta = RequestMeta::new(protocol::meta::new_request_id()).with_reply_to(reply_to);
        let tensor = TensorMessage::new(
            manifest.model_ref(),
            &manifest.input,
            images[i % images.len()].clone(),
            now_ms(),
            Timings::default(),
        );
        acks.push(
            js.publish_with_headers(
                TENSORS_SUBJECT,
                meta.to_headers(CONTENT_TYPE_MSGPACK),
                tensor.encode().into(),
            )
            .await?,
        );
        if acks.len() == 256 || i + 1 == n {
            let acked = futures::future::join_all(acks.drain(..).map(IntoFuture::into_future));
            for ack in acked.await {
                ack.context("the tensors stream refused a tensor")?;
            }
        }
    }
    Ok(started.elapsed())
}
