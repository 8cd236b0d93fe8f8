//! `clothesline`: the command-line client. `clothesline classify <file|url>...` sends each image
//! (a file's bytes, or a URL for the preprocessor to download) to the HTTP API or to the NATS
//! service, and prints a table per image or JSON lines. Exits 1 when any image failed, after
//! printing each failure's error code.

mod answer;
mod cli;
mod input;
mod output;
mod transport;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(cli::run(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}
