//! A real nats-server with JetStream on free ports in a temp dir, killed on drop. Without users
//! ([`NatsServer::start`]) or with the per-role users of `nats/auth.conf`
//! ([`NatsServer::start_with_auth`]).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{free_port, paths, wait_until};

/// The roles of `nats/auth.conf`: user name, and the variable its password is read from.
pub const ROLES: [(&str, &str); 6] = [
    ("ingress", "NATS_PASSWORD_INGRESS"),
    ("preprocessor", "NATS_PASSWORD_PREPROCESSOR"),
    ("gpu-worker", "NATS_PASSWORD_GPU_WORKER"),
    ("provision", "NATS_PASSWORD_PROVISION"),
    ("public", "NATS_PASSWORD_PUBLIC"),
    ("bulk", "NATS_PASSWORD_BULK"),
];

/// What a server starts with besides the defaults: config files included after
/// `max_payload: 8MB` (copied beside the generated config, since nats-server resolves includes
/// relative to it), variables set in its environment (e.g. the `$VAR`s those files read), and
/// the ports asked for (free ones otherwise).
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    pub includes: Vec<PathBuf>,
    pub env: Vec<(String, String)>,
    pub port: Option<u16>,
    pub monitor_port: Option<u16>,
    /// The includes define the users of `nats/auth.conf`: [`NatsServer::client`] connects as
    /// `provision`.
    pub auth: bool,
    /// A file its log is appended to (none kept otherwise).
    pub log: Option<PathBuf>,
}

impl ServerConfig {
    /// `nats/auth.conf` with a test password per role ([`NatsServer::password`]).
    pub fn auth() -> Self {
        Self {
            includes: vec![paths::repo_root().join("nats/auth.conf")],
            env: ROLES
                .iter()
                .map(|(user, var)| (var.to_string(), NatsServer::password(user)))
                .collect(),
            auth: true,
            ..Self::default()
        }
    }
}

pub struct NatsServer {
    pub port: u16,
    pub monitor_port: u16,
    pub store: tempfile::TempDir,
    child: Option<Child>,
    config: ServerConfig,
}

impl NatsServer {
    /// Starts a server and waits until JetStream is up.
    pub async fn start() -> Self {
        Self::start_with(ServerConfig::default()).await
    }

    /// Starts a server with the per-role users of `nats/auth.conf` (passwords from
    /// [`NatsServer::password`]); [`NatsServer::client`] then connects as `provision`.
    pub async fn start_with_auth() -> Self {
        Self::start_with(ServerConfig::auth()).await
    }

    /// Starts a server with extra config files and environment, and waits until JetStream is up.
    pub async fn start_with(config: ServerConfig) -> Self {
        let mut server = Self::new(config);
        server.spawn().await;
        server
    }

    fn new(config: ServerConfig) -> Self {
        Self {
            port: config.port.unwrap_or_else(free_port),
            monitor_port: config.monitor_port.unwrap_or_else(free_port),
            store: tempfile::tempdir().unwrap(),
            child: None,
            config,
        }
    }

    /// Its process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The test password of a role of `nats/auth.conf`.
    pub fn password(user: &str) -> String {
        format!("test-password-{user}")
    }

    /// The inbox prefix a role of `nats/auth.conf` may subscribe to (`NATS_INBOX_PREFIX`).
    pub fn inbox_prefix(user: &str) -> String {
        match user {
            "public" => "_INBOX".into(),
            _ => format!("_INBOX_{user}"),
        }
    }

    /// The environment a tier needs to connect as `user`: `NATS_USER`, `NATS_PASSWORD`,
    /// `NATS_INBOX_PREFIX`.
    pub fn tier_env(user: &str) -> Vec<(String, String)> {
        vec![
            ("NATS_USER".into(), user.into()),
            ("NATS_PASSWORD".into(), Self::password(user)),
            ("NATS_INBOX_PREFIX".into(), Self::inbox_prefix(user)),
        ]
    }

    /// Connect options for `user` (its password and inbox prefix), to add to before connecting.
    pub fn options_as(user: &str) -> async_nats::ConnectOptions {
        async_nats::ConnectOptions::with_user_and_password(user.into(), Self::password(user))
            .custom_inbox_prefix(Self::inbox_prefix(user))
    }

    /// A client connected as `user` of `nats/auth.conf` (a server from [`Self::start_with_auth`]).
    pub async fn client_as(&self, user: &str) -> async_nats::Client {
        Self::options_as(user).connect(self.url()).await.unwrap()
    }

    async fn spawn(&mut self) {
        // max_payload has no command-line flag: a one-line config file carries it.
        let conf = self.store.path().join("nats.conf");
        let mut text = String::from("max_payload: 8MB\n");
        for (i, include) in self.config.includes.iter().enumerate() {
            let name = format!("include-{i}.conf");
            std::fs::copy(include, self.store.path().join(&name))
                .unwrap_or_else(|e| panic!("copy {}: {e}", include.display()));
            text.push_str(&format!("include ./{name}\n"));
        }
        std::fs::write(&conf, text).unwrap();
        let child = Command::new(paths::nats_server())
            .envs(self.config.env.iter().map(|(k, v)| (k, v)))
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
            .stderr(self.log_target())
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

    fn log_target(&self) -> Stdio {
        let file = self.config.log.as_ref().and_then(|path| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .ok()
        });
        file.map_or_else(Stdio::null, Stdio::from)
    }

    /// A client; on a server with users ([`Self::start_with_auth`]) it connects as `provision`,
    /// the role that may create the streams.
    pub async fn client(&self) -> async_nats::Client {
        if self.config.auth {
            return self.client_as("provision").await;
        }
        async_nats::connect(self.url()).await.unwrap()
    }

    /// The connections the server closed or saw close, from its monitoring port
    /// (`/connz?state=closed`): each one's name and reason (e.g. "Maximum Control Line
    /// Exceeded", "Client Closed").
    pub async fn closed_connections(&self) -> Vec<(String, String)> {
        let url = format!(
            "http://127.0.0.1:{}/connz?state=closed&limit=1024",
            self.monitor_port
        );
        let connz: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
        let field = |c: &serde_json::Value, name: &str| c[name].as_str().unwrap_or("").to_string();
        connz["connections"]
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|c| (field(c, "name"), field(c, "reason")))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Kills the server (SIGKILL) and starts it again on the same port and store.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    /// Starts the server again after [`Self::kill`], on the same port and store.
    pub async fn start_again(&mut self) {
        assert!(self.child.is_none(), "the server is running");
        self.spawn().await;
    }

    /// Sends the server SIGTERM, as `docker compose down` or a pod's deletion does, and returns
    /// at once; it shuts down and closes every connection (reaped on drop).
    pub fn sigterm(&self) {
        if let Some(c) = &self.child {
            crate::tier::sigterm(c);
        }
    }

    /// SIGTERM, then waits for the exit at most `within` (SIGKILL past that); returns whether it
    /// exited by itself.
    pub async fn stop(&mut self, within: Duration) -> bool {
        let Some(mut child) = self.child.take() else {
            return true;
        };
        crate::tier::sigterm(&child);
        exit_within(&mut child, within).await
    }

    /// Kills the server (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
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

/// Waits for `child` to exit, at most `within`; SIGKILLs it past that. Whether it exited by
/// itself.
pub async fn exit_within(child: &mut Child, within: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        if child.try_wait().ok().flatten().is_some() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

/// Messages stored in `stream` now.
pub async fn stream_messages(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    js.get_stream(stream)
        .await
        .unwrap()
        .info()
        .await
        .unwrap()
        .state
        .messages
}
