//! `clothesline-ingress`: parses the command line and runs the ingress until SIGTERM or Ctrl-C.

use clap::Parser;
use clothesline_ingress::{Config, run};
use protocol::runtime::shutdown_signal;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    config.log.init();
    run(config, shutdown_signal()).await
}
