//! The plumbing benchmark's Flask monolith (scripts/monolith: Flask + gunicorn, PIL, the same
//! TorchScript in process): Flask and gunicorn from PyPI into a venv of its own
//! (`~/.cache/clothesline/venv-monolith`, made again when scripts/monolith/requirements.txt
//! changes), torch, numpy, Pillow and requests from the torch venv through a `.pth` file (one
//! copy of torch on the machine); gunicorn with one worker process per core, two threads each.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context;
use tokio::process::{Child, Command};

use super::context::Bench;
use super::{machine, procs};

const REQUIREMENTS: &str = "scripts/monolith/requirements.txt";

pub struct Monolith {
    child: Child,
    pub pid: u32,
    pub port: u16,
}

async fn check(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    let status = cmd.status().await.with_context(|| what.to_string())?;
    anyhow::ensure!(status.success(), "{what}: {status}");
    Ok(())
}

/// A Python's `purelib` folder (its site-packages).
async fn purelib(python: &Path) -> anyhow::Result<String> {
    let out = Command::new(python)
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_paths()['purelib'])",
        ])
        .output()
        .await
        .with_context(|| format!("run {}", python.display()))?;
    anyhow::ensure!(out.status.success(), "{}: no purelib", python.display());
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The monolith's venv, made or made again when its requirements changed.
async fn venv(bench: &Bench) -> anyhow::Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let venv = PathBuf::from(home).join(".cache/clothesline/venv-monolith");
    let wanted = std::fs::read(REQUIREMENTS).with_context(|| format!("read {REQUIREMENTS}"))?;
    let installed = std::fs::read(venv.join("requirements.txt")).ok();
    if !venv.join("bin/gunicorn").is_file() || installed.as_deref() != Some(&wanted[..]) {
        bench.log(format!(
            "installing the monolith's Flask and gunicorn into {}",
            venv.display()
        ));
        let _ = std::fs::remove_dir_all(&venv);
        check(
            Command::new("python3").args(["-m", "venv"]).arg(&venv),
            "python3 -m venv",
        )
        .await?;
        let pip = venv.join("bin/pip");
        check(
            Command::new(&pip).args(["install", "-q", "-r", REQUIREMENTS]),
            "pip install",
        )
        .await?;
        std::fs::write(venv.join("requirements.txt"), &wanted)?;
    }
    // torch, numpy, Pillow and requests: the torch venv's.
    let site = purelib(&clothesline_tests::paths::python()).await?;
    let own = purelib(&venv.join("bin/python")).await?;
    std::fs::write(Path::new(&own).join("torch-venv.pth"), format!("{site}\n"))?;
    Ok(venv)
}

impl Monolith {
    /// Installs if needed and starts it on a free port (output to `logs/monolith.log`, nice -10
    /// when root), serving `manifest`; returns once its `/healthz` answers.
    pub async fn start(bench: &Bench, manifest: &Path) -> anyhow::Result<Self> {
        let venv = venv(bench).await?;
        let port = clothesline_tests::free_port();
        let gunicorn = venv.join("bin/gunicorn");
        let mut cmd = if procs::is_root() {
            let mut c = Command::new("nice");
            c.args(["-n", "-10"]).arg(&gunicorn);
            c
        } else {
            Command::new(&gunicorn)
        };
        let log = std::fs::File::create(bench.logs.join("monolith.log"))?;
        cmd.args([
            "--chdir",
            "scripts/monolith",
            "-w",
            &machine::nproc().to_string(),
        ])
        .args(["--threads", "2", "-b", &format!("127.0.0.1:{port}")])
        .args(["--log-level", "warning", "app:app"])
        .env("MODEL_MANIFEST", manifest)
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true);
        let child = cmd.spawn().context("start gunicorn")?;
        let pid = child.id().context("gunicorn exited")?;
        let mut monolith = Self { child, pid, port };
        monolith.wait_ready(bench).await?;
        Ok(monolith)
    }

    /// Until `/healthz` answers 2xx: an error if the process dies first or after 3 minutes.
    async fn wait_ready(&mut self, bench: &Bench) -> anyhow::Result<()> {
        let url = format!("http://127.0.0.1:{}/healthz", self.port);
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?;
        for _ in 0..900 {
            if http
                .get(&url)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
            {
                return Ok(());
            }
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!(
                    "the monolith exited ({status}); logs in {}",
                    bench.path(&bench.logs)
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        anyhow::bail!("{url} not ready after 180 s")
    }

    /// CPU seconds so far of the monolith's processes (gunicorn's master and its workers).
    pub fn cpu(&self) -> anyhow::Result<f64> {
        let mut total = procs::cpu_seconds(self.pid)?;
        for child in procs::children(self.pid) {
            total += procs::cpu_seconds(child).unwrap_or(0.0);
        }
        Ok(total)
    }

    /// SIGTERM, and its exit waited for.
    pub async fn stop(mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stderr(Stdio::null())
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(60), self.child.wait()).await;
    }
}
