//! Command line: `run` (the load test), `serve-noop` (a target that answers at once), `report`
//! (a benchmark's markdown section from its results folder) and `section` (writes one section of
//! BENCHMARKS.md).

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::schedule::{Mode, Plan, Stop, parse_duration};

#[derive(Debug, Parser)]
#[command(
    name = "clothesline-loadtest",
    version,
    about = "Load generator for clothesline: HTTP and NATS targets, open and closed loop"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Send load to a target and report throughput, statuses, latency and accuracy.
    Run(Box<RunArgs>),
    /// Answer `{}` with 200 at once on every path: a target that costs nothing, to measure the
    /// load generator itself. Prints its URL on the first line of stdout.
    ServeNoop(NoopArgs),
    /// Write the markdown section of a benchmark script from its results folder (on stdout, or
    /// to --out).
    #[command(subcommand)]
    Report(ReportCommand),
    /// Replace the section between `<!-- BEGIN NAME -->` and `<!-- END NAME -->` of DOC with the
    /// markdown in FILE (`-`: stdin), keeping the rest of DOC byte for byte.
    Section(SectionArgs),
}

#[derive(Debug, Subcommand)]
pub enum ReportCommand {
    /// `scripts/bench.sh`: the pipeline section, and its chart as SVG.
    Pipeline {
        #[command(flatten)]
        common: ReportArgs,
        /// Where to write the chart; the markdown links to this path.
        #[arg(long, default_value = "benchmarks/pipeline.svg")]
        chart: PathBuf,
    },
    /// `scripts/bench_ingress.sh`: added latency, overload, cancellation.
    Ingress(ReportArgs),
    /// `scripts/bench_plumbing.sh`: the null model's CPU per answer, hops, the monolith.
    Plumbing(ReportArgs),
    /// `scripts/bench_tracing.sh`: throughput and CPU per answer with tracing off and on.
    Tracing(ReportArgs),
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// The folder the benchmark script left its results in.
    pub results: PathBuf,
    /// Write the markdown here instead of stdout.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct SectionArgs {
    /// The section's name (lowercase letters, digits, '-').
    pub name: String,
    /// The new markdown (`-`: stdin).
    pub file: PathBuf,
    /// The document.
    #[arg(default_value = "BENCHMARKS.md")]
    pub doc: PathBuf,
    /// Add the section at the end when DOC has none of that name (else that is an error).
    #[arg(long)]
    pub append: bool,
}

/// What is called.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    /// `POST <ingress>/predict {"url"}`: the flat map of class scores.
    Predict,
    /// `POST <ingress>/v1/classify` with `{"url"}`, or the image bytes with `--upload`.
    Classify,
    /// Core-NATS request-reply on `--subject` (`{"url"}` JSON, or the bytes with `--upload`).
    Nats,
}

impl TargetKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Predict => "predict",
            Self::Classify => "classify",
            Self::Nats => "nats",
        }
    }
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// What to call.
    #[arg(long, value_enum, default_value = "predict")]
    pub target: TargetKind,
    /// Base URL of the ingress (predict and classify targets).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub ingress: String,
    /// NATS server (nats target).
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// NATS user (nats target), e.g. `public` on a server with the per-role users.
    #[arg(long, requires = "nats_password")]
    pub nats_user: Option<String>,
    /// Its password.
    #[arg(long, requires = "nats_user")]
    pub nats_password: Option<String>,
    /// Service subject of the ingress (nats target).
    #[arg(long, default_value = "clothesline.classify")]
    pub subject: String,
    /// Folder of images: `<class>/<file>` (accuracy is reported) or files at its top.
    #[arg(long)]
    pub images: PathBuf,
    /// Send the image bytes instead of a URL (classify and nats targets).
    #[arg(long)]
    pub upload: bool,
    /// Address of the built-in image server (URLs point at it; the preprocessor must reach it).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub image_addr: SocketAddr,
    /// Open loop: requests per second, sent on schedule whatever the answers do.
    #[arg(long, conflicts_with = "concurrency")]
    pub rate: Option<f64>,
    /// Closed loop: requests in flight at all times (the default, with 1).
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// How long to send after the warm-up (e.g. 30s, 500ms, 2m); default 10s.
    #[arg(long, value_parser = parse_duration, conflicts_with = "requests")]
    pub duration: Option<Duration>,
    /// How many requests to send after the warm-up (instead of --duration).
    #[arg(long)]
    pub requests: Option<u64>,
    /// Time at the start whose requests are sent but not counted.
    #[arg(long, value_parser = parse_duration, default_value = "0s")]
    pub warmup: Duration,
    /// Open loop: wake at multiples of this and send every request due by then, so that one
    /// wake-up (which costs more CPU than the request it sends) carries several requests. A request
    /// goes out at most one tick late and its latency still counts from its own intended time.
    /// Default: none up to 200 req/s (each request at its time, to tokio's 1 ms timer), 5 ms above.
    #[arg(long, value_parser = parse_duration)]
    pub tick: Option<Duration>,
    /// Give up on a request after this long (counted as `timeout`).
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub timeout: Duration,
    /// Ask the ingress for this deadline (`X-Request-Timeout-Ms` over HTTP,
    /// `Clothesline-Timeout-Ms` over NATS) instead of its default.
    #[arg(long, value_parser = parse_duration)]
    pub deadline: Option<Duration>,
    /// Write the report as JSON to this file too.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Free-form label stored in the JSON report (e.g. the benchmark step).
    #[arg(long)]
    pub label: Option<String>,
    /// Runtime threads (1: everything on one thread, the leanest).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// No progress bar even on a terminal.
    #[arg(long)]
    pub no_progress: bool,
    /// Keep the `timings` of each successful `/v1/classify` answer and report their medians
    /// with the client's time (`timings_p50_ms`): where a request's time goes.
    #[arg(long)]
    pub timings: bool,
}

impl RunArgs {
    /// The schedule these arguments ask for, checked.
    pub fn plan(&self) -> anyhow::Result<Plan> {
        let mode = match (self.rate, self.concurrency) {
            (Some(rate), _) => {
                anyhow::ensure!(
                    rate.is_finite() && rate > 0.0,
                    "--rate must be a positive number"
                );
                Mode::Open { rate }
            }
            (None, c) => {
                let concurrency = c.unwrap_or(1);
                anyhow::ensure!(concurrency > 0, "--concurrency must be at least 1");
                Mode::Closed { concurrency }
            }
        };
        let stop = match (self.requests, self.duration) {
            (Some(n), _) => Stop::Requests(n),
            (None, d) => Stop::Duration(d.unwrap_or(Duration::from_secs(10))),
        };
        anyhow::ensure!(
            !(self.upload && self.target == TargetKind::Predict),
            "/predict takes a URL only: use --target classify or nats with --upload"
        );
        Ok(Plan {
            mode,
            stop,
            warmup: self.warmup,
            tick: match (self.tick, mode) {
                (Some(tick), _) => tick,
                (None, Mode::Open { rate }) => crate::schedule::auto_tick(rate),
                (None, Mode::Closed { .. }) => Duration::ZERO,
            },
        })
    }

    pub fn show_progress(&self) -> bool {
        !self.no_progress && std::io::stderr().is_terminal()
    }

    /// Where requests go, for the report.
    pub fn endpoint(&self) -> String {
        let base = self.ingress.trim_end_matches('/');
        match self.target {
            TargetKind::Predict => format!("{base}/predict"),
            TargetKind::Classify => format!("{base}/v1/classify"),
            TargetKind::Nats => format!("{} {}", self.nats_url, self.subject),
        }
    }
}

#[derive(Debug, Args)]
pub struct NoopArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub addr: SocketAddr,
    /// Runtime threads.
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> RunArgs {
        let mut all = vec!["clothesline-loadtest", "run", "--images", "/x"];
        all.extend_from_slice(args);
        match Cli::try_parse_from(all)
            .unwrap_or_else(|e| panic!("{e}"))
            .command
        {
            Command::Run(a) => *a,
            _ => panic!("not run"),
        }
    }

    #[test]
    fn defaults_to_closed_loop_of_one_for_ten_seconds() {
        let plan = parse(&[]).plan().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.mode, Mode::Closed { concurrency: 1 });
        assert_eq!(plan.stop, Stop::Duration(Duration::from_secs(10)));
        assert_eq!(plan.warmup, Duration::ZERO);
    }

    #[test]
    fn open_loop_with_requests_and_warmup() {
        let plan = parse(&["--rate", "40", "--requests", "100", "--warmup", "2s"])
            .plan()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plan.mode, Mode::Open { rate: 40.0 });
        assert_eq!(plan.stop, Stop::Requests(100));
        assert_eq!(plan.warmup, Duration::from_secs(2));
        assert_eq!(plan.tick, Duration::ZERO);
        let fast = parse(&["--rate", "1000"])
            .plan()
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(fast.tick, Duration::from_millis(5));
        let chosen = parse(&["--rate", "1000", "--tick", "1ms"]).plan();
        assert_eq!(chosen.map(|p| p.tick).ok(), Some(Duration::from_millis(1)));
    }

    #[test]
    fn refuses_what_makes_no_sense() {
        assert!(parse(&["--rate", "0"]).plan().is_err());
        assert!(
            parse(&["--upload"]).plan().is_err(),
            "predict takes URLs only"
        );
        assert!(
            Cli::try_parse_from([
                "x",
                "run",
                "--images",
                "/x",
                "--rate",
                "1",
                "--concurrency",
                "2"
            ])
            .is_err()
        );
    }

    #[test]
    fn endpoints() {
        assert_eq!(
            parse(&["--ingress", "http://h:1/"]).endpoint(),
            "http://h:1/predict"
        );
        assert_eq!(
            parse(&["--target", "classify"]).endpoint(),
            "http://127.0.0.1:8080/v1/classify"
        );
    }
}
