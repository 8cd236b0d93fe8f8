//! The command line and the classify loop: inputs go out a few at a time, answers are printed in
//! the order given, with a progress bar on a terminal when there are several.

use std::time::Duration;

use clap::{Parser, Subcommand};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};

use crate::answer::Outcome;
use crate::input::Input;
use crate::output::Printer;
use crate::transport::Transport;

#[derive(Debug, Parser)]
#[command(
    name = "clothesline",
    version,
    about = "Client of the clothesline image classifier"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Classify image files or http(s) URLs; prints a table per image (or JSON lines with
    /// --json) and exits 1 if any failed.
    Classify(ClassifyArgs),
}

#[derive(Debug, clap::Args)]
pub struct ClassifyArgs {
    /// Image files to upload, or http(s) URLs for the service to download.
    #[arg(required = true, value_name = "FILE|URL")]
    pub inputs: Vec<String>,
    /// Go through the NATS service (`clothesline.classify`) instead of the HTTP API.
    #[arg(long)]
    pub nats: bool,
    /// Most likely classes to show per image.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=100))]
    pub top_k: u16,
    /// One JSON object per line and image: the API's answer plus `input`, or `input` and `error`.
    #[arg(long)]
    pub json: bool,
    /// Base URL of the ingress's HTTP API.
    #[arg(
        long = "url",
        env = "CLOTHESLINE_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    pub http_url: String,
    /// Images in flight at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,
    /// Give up on an image after this many seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout_secs: u64,
    #[command(flatten)]
    pub nats_args: tierkit::runtime::NatsArgs,
}

/// Runs the command; `Ok(false)` when some image failed.
pub async fn run(cli: Cli) -> anyhow::Result<bool> {
    let Command::Classify(args) = cli.command;
    let timeout = Duration::from_secs(args.timeout_secs);
    let transport = if args.nats {
        Transport::nats(&args.nats_args, timeout).await?
    } else {
        Transport::http(&args.http_url, timeout, args.top_k)?
    };
    let progress = progress_bar(args.inputs.len());
    let mut printer = Printer::new(args.json, progress.clone());
    let top_k = usize::from(args.top_k);
    let mut answers = futures::stream::iter(args.inputs.iter())
        .map(|arg| {
            let transport = &transport;
            async move {
                let outcome = match Input::read(arg).await {
                    Ok(input) => Outcome::from_result(transport.classify(&input).await, top_k),
                    Err(e) => Outcome::Failed(e),
                };
                (arg, outcome)
            }
        })
        .buffered(usize::from(args.concurrency));
    while let Some((arg, outcome)) = answers.next().await {
        printer.print(arg, &outcome);
        progress.inc(1);
    }
    progress.finish_and_clear();
    Ok(printer.summary())
}

/// A bar on stderr for several inputs; hidden for one, and whenever stderr is not a terminal.
fn progress_bar(len: usize) -> ProgressBar {
    if len < 2 {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len as u64);
    if let Ok(style) = ProgressStyle::with_template("{bar:30} {pos}/{len} images  {elapsed}") {
        bar.set_style(style);
    }
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn the_api_url_and_nats_url_are_separate_options() {
        let cli = Cli::try_parse_from([
            "clothesline",
            "classify",
            "--url",
            "http://h:1",
            "--nats-url",
            "nats://n:2",
            "a.jpg",
        ])
        .map_err(|e| e.to_string());
        let Ok(Cli {
            command: Command::Classify(args),
        }) = cli
        else {
            panic!("{cli:?}");
        };
        assert_eq!(args.http_url, "http://h:1");
        assert_eq!(args.nats_args.url, "nats://n:2");
    }
}
