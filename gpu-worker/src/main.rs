//! `clothesline-gpu-worker`: parse the configuration, set up logging, run until SIGTERM/Ctrl-C.

use std::time::{Duration, Instant};

use clap::Parser;
use clothesline_gpu_worker::leave::{self, AbandonedBatches};
use clothesline_gpu_worker::{Config, run};
use tierkit::runtime::shutdown_signal;
use tierkit::telemetry::{FLUSH_WITHIN, Telemetry};

/// How long the runtime's blocking pool may take to end once the worker has stopped.
const BLOCKING_POOL_WITHIN: Duration = Duration::from_secs(1);

fn main() -> std::process::ExitCode {
    // Before any thread starts.
    let malloc_tuned = clothesline_gpu_worker::malloc::keep_freed_memory();
    let config = Config::parse();
    let telemetry = Telemetry::init(&config.log, "clothesline-gpu-worker");
    tracing::info!(malloc_tuned, "malloc keeps freed memory for the next batch");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("clothesline-gpu-worker: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run(config, shutdown_signal()));
    // libtorch may still run an abandoned batch: then no static destructors under it.
    let mut leave_at_once = false;
    if let Err(e) = &result {
        tracing::error!(error = format!("{e:#}"), "gpu-worker failed");
        eprintln!("clothesline-gpu-worker: {e:#}");
        leave_at_once = e.downcast_ref::<AbandonedBatches>().is_some();
    }
    runtime.block_on(telemetry.shutdown(FLUSH_WITHIN));
    // Tasks still running are dropped; the blocking pool is not waited for beyond a moment: an
    // engine thread of a retired model version, joined there, may still be inside a batch.
    let stopping = Instant::now();
    runtime.shutdown_timeout(BLOCKING_POOL_WITHIN);
    if stopping.elapsed() >= BLOCKING_POOL_WITHIN {
        tracing::warn!("left work on the blocking pool (an engine thread still in a batch?)");
        leave_at_once = true;
    }
    let code: u8 = if result.is_ok() { 0 } else { 1 };
    if leave_at_once {
        leave::without_destructors(i32::from(code));
    }
    std::process::ExitCode::from(code)
}
