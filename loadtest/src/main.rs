//! `clothesline-loadtest run ...` sends load and reports; `clothesline-loadtest serve-noop`
//! answers `{}` at once, a target that costs nothing, to measure the load generator itself.

use clap::Parser;
use clothesline_loadtest::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = match &cli.command {
        Command::Run(a) => a.threads,
        Command::ServeNoop(a) => a.threads,
    };
    let runtime = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Run(args) => clothesline_loadtest::load_test(*args).await.map(|_| ()),
            Command::ServeNoop(args) => clothesline_loadtest::noop::serve(args.addr).await,
        }
    })
}
