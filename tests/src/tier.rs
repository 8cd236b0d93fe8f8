//! One tier as a real process: its HTTP port (API or health/metrics), its log (a temp file whose
//! end is printed when a test fails with the tier still held, a file in a kept folder, or the
//! test's stderr), SIGKILLed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::wait_until;

/// Lines of a tier's log printed when a test fails.
const LOG_TAIL_LINES: usize = 40;

/// Where a tier's stderr goes.
enum Log {
    /// A temp file, removed with the tier.
    Temp(tempfile::NamedTempFile),
    /// `<folder>/<name>.log`, appended to (a tier started again writes on), kept.
    Kept(PathBuf),
}

impl Log {
    fn path(&self) -> &Path {
        match self {
            Self::Temp(f) => f.path(),
            Self::Kept(p) => p,
        }
    }
}

/// What starts a tier's process.
pub struct Launch<'a> {
    /// The tier's name (`ingress`, `preprocessor-0`, ...): its log file's name too.
    pub name: String,
    pub bin: PathBuf,
    pub port: u16,
    pub nats_url: &'a str,
    pub env: Vec<(String, String)>,
    pub args: Vec<String>,
    /// Its `RUST_LOG`.
    pub level: &'a str,
    /// A folder for its log (`<name>.log`); `None`: a temp file, or the test's stderr when
    /// `CLOTHESLINE_TEST_LOG` is set.
    pub log_dir: Option<&'a Path>,
    /// Its working directory.
    pub cwd: &'a Path,
}

impl Launch<'_> {
    fn log(&self) -> Option<Log> {
        if let Some(dir) = self.log_dir {
            return Some(Log::Kept(dir.join(format!("{}.log", self.name))));
        }
        if std::env::var_os("CLOTHESLINE_TEST_LOG").is_some() {
            return None;
        }
        tempfile::NamedTempFile::new().ok().map(Log::Temp)
    }

    /// Starts the process (it panics with the binary's name if it cannot).
    pub fn spawn(self) -> Tier {
        let log = self.log();
        let file = log.as_ref().and_then(|l| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(l.path())
                .ok()
        });
        let stderr = match file {
            Some(file) => Stdio::from(file),
            None if log.is_none() => Stdio::inherit(),
            None => Stdio::null(),
        };
        let child = Command::new(&self.bin)
            .current_dir(self.cwd)
            .env("NATS_URL", self.nats_url)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", self.level)
            .env("NO_COLOR", "1")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", self.bin.display()));
        Tier {
            name: self.name,
            port: self.port,
            child,
            log,
        }
    }
}

/// A tier's process and the port of its HTTP endpoint (API or health/metrics).
pub struct Tier {
    pub name: String,
    pub port: u16,
    child: Child,
    log: Option<Log>,
}

impl Tier {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// What it logged so far; `None` when its log goes to the test's stderr.
    pub fn log_text(&self) -> Option<String> {
        let log = self.log.as_ref()?;
        std::fs::read_to_string(log.path()).ok()
    }

    /// Its process id (e.g. to read its memory from `/proc`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has exited (and how), without waiting.
    pub fn has_exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, as Kubernetes sends on scale-in or a rollout; then waits for the process to exit,
    /// at most `within` (it panics past that), and returns how it exited.
    pub async fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        self.sigterm();
        self.exited(within).await
    }

    /// Sends SIGTERM and returns at once (to stop several processes at the same moment).
    pub fn sigterm(&self) {
        sigterm(&self.child);
    }

    /// Waits for the process to exit, at most `within` (it panics past that), and returns how it
    /// exited.
    pub async fn exited(&mut self, within: Duration) -> std::process::ExitStatus {
        let what = format!("{} to exit after SIGTERM", self.name);
        let child = &mut self.child;
        wait_until(&what, within, || {
            let exited = child.try_wait().unwrap();
            async move { exited }
        })
        .await
    }

    /// After [`Self::sigterm`]: waits for the exit at most `within`, SIGKILLs it past that.
    /// Whether it exited by itself.
    pub async fn stopped(&mut self, within: Duration) -> bool {
        crate::nats::exit_within(&mut self.child, within).await
    }
}

/// Sends SIGTERM to `child`.
pub fn sigterm(child: &Child) {
    let pid = child.id().to_string();
    let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(sent.success(), "kill -TERM {pid}");
}

impl Drop for Tier {
    fn drop(&mut self) {
        self.kill();
        if !std::thread::panicking() {
            return;
        }
        let Some(log) = &self.log else { return };
        let text = std::fs::read_to_string(log.path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = &lines[lines.len().saturating_sub(LOG_TAIL_LINES)..];
        eprintln!(
            "--- {} log, last {} of {} lines ---\n{}\n--- end of {} log ---",
            self.name,
            tail.len(),
            lines.len(),
            tail.join("\n"),
            self.name
        );
    }
}

/// Waits until `tier` answers its `/readyz` (at most 3 minutes); it panics past that, or as soon
/// as the process exits.
pub async fn wait_ready(http: &reqwest::Client, tier: &mut Tier) {
    let url = tier.url("/readyz");
    let what = format!("{} to be ready", tier.name);
    wait_until(&what, Duration::from_secs(180), || {
        if let Some(status) = tier.has_exited() {
            panic!("{} exited ({status}) before it was ready", tier.name);
        }
        let (http, url) = (http.clone(), url.clone());
        async move {
            http.get(&url)
                .send()
                .await
                .ok()
                .filter(|r| r.status().is_success())
                .map(|_| ())
        }
    })
    .await;
}
