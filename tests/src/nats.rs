//! A real nats-server with JetStream on free ports in a temp dir, killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, paths, wait_until};

pub struct NatsServer {
    pub port: u16,
    pub monitor_port: u16,
    pub store: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsServer {
    /// Starts a server and waits until JetStream is up.
    pub async fn start() -> Self {
        let store = tempfile::tempdir().unwrap();
        let mut server = Self {
            port: free_port(),
            monitor_port: free_port(),
            store,
            child: None,
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        // max_payload has no command-line flag: a one-line config file carries it.
        let conf = self.store.path().join("nats.conf");
        std::fs::write(&conf, "max_payload: 8MB\n").unwrap();
        let child = Command::new(paths::nats_server())
            .arg("-c")
            .arg(&conf)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-m",
                &self.monitor_port.to_string(),
            ])
            .arg("-sd")
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.child = Some(child);
        let url = format!(
            "http://127.0.0.1:{}/healthz?js-enabled-only=true",
            self.monitor_port
        );
        wait_until("nats-server to be healthy", Duration::from_secs(20), || {
            let url = url.clone();
            async move {
                reqwest::get(&url)
                    .await
                    .ok()
                    .filter(|r| r.status().is_success())
                    .map(|_| ())
            }
        })
        .await;
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.unwrap()
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}
