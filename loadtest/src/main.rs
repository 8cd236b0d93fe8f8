//! `clothesline-loadtest run ...` sends load and reports; `clothesline-loadtest serve-noop`
//! answers `{}` at once, a target that costs nothing, to measure the load generator itself;
//! `report` and `section` turn benchmark results into BENCHMARKS.md sections (no runtime needed).

use clap::Parser;
use clothesline_loadtest::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let threads = match cli.command {
        Command::Run(ref a) => a.threads,
        Command::ServeNoop(ref a) => a.threads,
        Command::Report(command) => return clothesline_loadtest::report::command::report(command),
        Command::Section(args) => return clothesline_loadtest::report::command::section(&args),
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
            Command::Report(_) | Command::Section(_) => Ok(()),
        }
    })
}
