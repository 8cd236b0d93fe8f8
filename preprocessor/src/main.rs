//! `clothesline-preprocessor`: parse the configuration, set up logging, run until SIGTERM/Ctrl-C.

use clap::Parser;
use clothesline_preprocessor::{Config, run};
use protocol::runtime::shutdown_signal;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let config = Config::parse();
    config.log.init();
    match run(config, shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "preprocessor failed");
            eprintln!("clothesline-preprocessor: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
