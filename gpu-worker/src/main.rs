//! `clothesline-gpu-worker`: parse the configuration, set up logging, run until SIGTERM/Ctrl-C.

use clap::Parser;
use clothesline_gpu_worker::{Config, run};
use protocol::runtime::shutdown_signal;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    config.log.init();
    match run(config, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "gpu-worker failed");
            eprintln!("clothesline-gpu-worker: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
