//! A benchmark's context ([`Bench`]): its results folder, its log lines, the binaries; the start
//! of its local stacks ([`BenchStack`]); the load generator as a child process
//! (`clothesline-loadtest run`, its JSON report read back), its noop server, and the report and
//! section at the end.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clothesline_tests::stack::StackOptions;
use tierkit::provision::Topology;
use tokio::process::{Child, Command};

use super::Common;
use super::procs;
use super::stack::{BenchStack, Spec};
use crate::running::{Running, Shape};

pub struct Bench {
    tag: &'static str,
    pub common: Common,
    /// The raw results, and their `logs/`.
    pub results: PathBuf,
    pub logs: PathBuf,
    pub bin: PathBuf,
    pub images: PathBuf,
    started: Instant,
}

/// Where the load generator's output goes.
pub enum Out {
    Inherit,
    /// Stdout to this file (stderr inherited).
    Stdout(PathBuf),
    /// Stdout and stderr to this file.
    Both(PathBuf),
    Null,
}

impl Bench {
    /// The results folder (`BENCH_KEEP`, its reports of an earlier run removed; else a new temp
    /// folder `clothesline-TAG.XXXXXX`) and its `logs/`.
    pub fn init(tag: &'static str, common: Common) -> anyhow::Result<Self> {
        let results = match &common.keep {
            Some(dir) => dir.clone(),
            None => tempfile::Builder::new()
                .prefix(&format!("clothesline-{tag}."))
                .tempdir()?
                .keep(),
        };
        std::fs::create_dir_all(&results)
            .with_context(|| format!("create {}", results.display()))?;
        let results = std::path::absolute(&results)?;
        // A kept folder from an earlier run must not mix in its reports.
        for entry in std::fs::read_dir(&results)? {
            let path = entry?.path();
            let ext = path.extension().and_then(|e| e.to_str());
            if path.is_file() && matches!(ext, Some("json" | "txt")) {
                std::fs::remove_file(&path)?;
            }
        }
        let logs = results.join("logs");
        std::fs::create_dir_all(&logs)?;
        let images = match &common.images {
            Some(dir) => dir.clone(),
            None => clothesline_tests::paths::dataset().join("validation"),
        };
        let images = std::fs::canonicalize(&images)
            .with_context(|| format!("the images: {}", images.display()))?;
        let bin = std::path::absolute(&common.bin_dir)?;
        Ok(Self {
            tag,
            common,
            results,
            logs,
            bin,
            images,
            started: Instant::now(),
        })
    }

    /// A timestamped line on stderr.
    pub fn log(&self, message: impl std::fmt::Display) {
        let secs = self.secs();
        eprintln!("\x1b[1;35m[{} +{secs}s]\x1b[0m {message}", self.tag);
    }

    /// Seconds since the start.
    pub fn secs(&self) -> u64 {
        self.started.elapsed().as_secs()
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.results.join(name)
    }

    pub fn loadtest_bin(&self) -> PathBuf {
        self.bin.join("clothesline-loadtest")
    }

    /// `clothesline-loadtest ARGS` (under nice -10 when `boost` and root), waited for; an error
    /// when it fails.
    pub async fn loadtest(&self, args: &[String], out: Out, boost: bool) -> anyhow::Result<()> {
        let status = self.spawn_loadtest(args, out, boost)?.wait().await?;
        anyhow::ensure!(status.success(), "clothesline-loadtest {args:?}: {status}");
        Ok(())
    }

    pub fn spawn_loadtest(&self, args: &[String], out: Out, boost: bool) -> anyhow::Result<Child> {
        let mut cmd = if boost && procs::is_root() {
            let mut c = Command::new("nice");
            c.args(["-n", "-10"]).arg(self.loadtest_bin());
            c
        } else {
            Command::new(self.loadtest_bin())
        };
        cmd.args(args).kill_on_drop(true);
        let file = |p: &Path| std::fs::File::create(p).with_context(|| format!("{}", p.display()));
        match out {
            Out::Inherit => {}
            Out::Stdout(p) => {
                cmd.stdout(file(&p)?);
            }
            Out::Both(p) => {
                let f = file(&p)?;
                cmd.stdout(f.try_clone()?).stderr(f);
            }
            Out::Null => {
                cmd.stdout(Stdio::null()).stderr(Stdio::null());
            }
        }
        cmd.spawn()
            .with_context(|| format!("start {}", self.loadtest_bin().display()))
    }

    /// A load test's JSON report (`NAME.json` of the results).
    pub fn report(&self, name: &str) -> anyhow::Result<serde_json::Value> {
        let path = self.file(&format!("{name}.json"));
        let text =
            std::fs::read_to_string(&path).with_context(|| format!("read {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parse {}", path.display()))
    }

    /// The load generator's noop server on a free port of 127.0.0.1 (output to `logs/NAME.log`),
    /// once it accepts connections; killed on drop.
    pub async fn noop_server(&self, name: &str) -> anyhow::Result<(Child, u16)> {
        let port = clothesline_tests::free_port();
        let log = std::fs::File::create(self.logs.join(format!("{name}.log")))?;
        let child = Command::new(self.loadtest_bin())
            .args(["serve-noop", "--addr", &format!("127.0.0.1:{port}")])
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("start clothesline-loadtest serve-noop")?;
        for _ in 0..200 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok((child, port));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        anyhow::bail!("the noop server on port {port} did not start (logs/{name}.log)")
    }

    /// `clothesline-loadtest report NAME RESULTS --out RESULTS/section.md [EXTRA]`, then
    /// `clothesline-loadtest section NAME RESULTS/section.md` (BENCHMARKS.md).
    pub async fn section(&self, name: &str, extra: &[String]) -> anyhow::Result<()> {
        let md = self.file("section.md");
        let mut report = vec!["report".into(), name.into(), self.path(&self.results)];
        report.extend(extra.iter().cloned());
        report.extend(["--out".into(), self.path(&md)]);
        self.loadtest(&report, Out::Inherit, false).await?;
        let section = ["section".into(), name.into(), self.path(&md)];
        self.loadtest(&section, Out::Inherit, false).await
    }

    pub fn path(&self, p: &Path) -> String {
        p.display().to_string()
    }

    /// Starts a stack: nats-server, provisioning, the tiers (preprocessor allowed to fetch from
    /// 127.0.0.1) on free ports, logs in `logs/`; `spec` adds to the common options.
    pub async fn stack(&self, spec: &Spec) -> anyhow::Result<BenchStack> {
        let c = &self.common;
        let topology = match &c.definitions {
            Some(dir) => Topology::from_dir(dir)?,
            None => Topology::builtin(),
        };
        let manifest = spec.manifest.clone().or_else(|| c.manifest.clone());
        let opts = StackOptions {
            manifest: manifest.unwrap_or_else(clothesline_tests::paths::manifest),
            allow_private: true,
            ingress_args: spec.ingress_args.clone(),
            preprocessor_args: spec.preprocessor_args.clone(),
            worker_args: spec.worker_args.clone(),
            env: spec.env.clone(),
            bin_dir: std::path::absolute(spec.bin_dir.as_ref().unwrap_or(&self.bin))?,
            log_dir: Some(self.logs.clone()),
            log_level: c.log_level.clone(),
            device: c.device.clone(),
            topology,
            ..StackOptions::default()
        };
        let worker = opts.bin_dir.join("clothesline-gpu-worker");
        anyhow::ensure!(worker.exists(), "{} not found", worker.display());
        let shape = Shape {
            cluster: false,
            ingresses: 1,
            workers: 1,
        };
        // A task of its own, so that a tier that does not start (the harness panics) is an
        // error here, the logs named, with what was started already stopped.
        let running = match tokio::spawn(Running::start(opts, shape)).await {
            Ok(started) => started?,
            Err(e) => anyhow::bail!(
                "the stack did not start ({e}); logs in {}",
                self.path(&self.logs)
            ),
        };
        let stack = BenchStack::new(running)?;
        self.log("stack ready");
        Ok(stack)
    }
}

/// `["a", "b"]` as owned arguments.
pub fn strs(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A number of a JSON report (0 when absent or null).
pub fn num(report: &serde_json::Value, key: &str) -> f64 {
    report
        .get(key)
        .and_then(serde_json::Value::as_f64)
        .unwrap_or(0.0)
}
