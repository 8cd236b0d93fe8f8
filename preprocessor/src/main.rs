//! `clothesline-preprocessor`: parse the configuration, set up logging, run until SIGTERM/Ctrl-C.

use clap::Parser;
use clothesline_preprocessor::{Config, run};
use tierkit::runtime::shutdown_signal;
use tierkit::telemetry::{FLUSH_WITHIN, Telemetry};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    let telemetry = Telemetry::init(&config.log, "clothesline-preprocessor");
    let result = run(config, shutdown_signal()).await;
    telemetry.shutdown(FLUSH_WITHIN).await;
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "preprocessor failed");
            eprintln!("clothesline-preprocessor: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
