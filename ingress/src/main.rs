//! `clothesline-ingress`: parses the command line and runs the ingress until SIGTERM or Ctrl-C.

use clap::Parser;
use clothesline_ingress::{Config, run};
use tierkit::runtime::shutdown_signal;
use tierkit::telemetry::{FLUSH_WITHIN, Telemetry};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    let telemetry = Telemetry::init(&config.log, "clothesline-ingress");
    let result = run(config, shutdown_signal()).await;
    telemetry.shutdown(FLUSH_WITHIN).await;
    result
}
