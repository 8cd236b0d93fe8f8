//! `clothesline-gpu-worker`: parse the configuration, set up logging, run until SIGTERM/Ctrl-C.

use clap::Parser;
use clothesline_gpu_worker::leave::{self, AbandonedBatches};
use clothesline_gpu_worker::{Config, run};
use tierkit::runtime::shutdown_signal;
use tierkit::telemetry::{FLUSH_WITHIN, Telemetry};

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
    runtime.block_on(telemetry.shutdown(FLUSH_WITHIN));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gpu-worker failed");
            eprintln!("clothesline-gpu-worker: {e:#}");
            if e.downcast_ref::<AbandonedBatches>().is_some() {
                // libtorch may still run the abandoned batch: no static destructors under it.
                leave::without_destructors(1);
            }
            std::process::ExitCode::FAILURE
        }
    }
}
