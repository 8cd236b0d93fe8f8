//! clothesline-loadtest: a lean load generator for clothesline. Targets the HTTP ingress
//! (`/predict`, `/v1/classify` with a URL or the uploaded bytes) and the NATS service subject; runs
//! open loop (a fixed arrival rate, latency counted from each request's intended send time, so
//! queueing shows and coordinated omission does not hide it) or closed loop (a fixed
//! concurrency); serves its images itself on 127.0.0.1; reports throughput, status and error-code
//! counts, HDR latency percentiles, accuracy when the images are laid out `<class>/<file>`, and
//! its own CPU use.

pub mod answer;
pub mod cli;
pub mod cpu;
pub mod images;
pub mod noop;
pub mod progress;
pub mod report;
pub mod run;
pub mod schedule;
pub mod stats;
pub mod target;

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;

/// Runs one load test as `args` says: prints the report and writes it as JSON if asked.
pub async fn load_test(args: cli::RunArgs) -> anyhow::Result<report::Report> {
    let plan = args.plan()?;
    let set = images::ImageSet::load(&args.images)?;
    anyhow::ensure!(
        !set.images.is_empty(),
        "no images (jpg, jpeg, png, webp, gif, bmp) in {}",
        args.images.display()
    );
    // The image server only runs when the target downloads the images by URL.
    let server = if args.upload {
        None
    } else {
        Some(images::ImageServer::start(&set, args.image_addr).await?)
    };
    let target = target::Target::new(&args, &set, server.as_ref()).await?;
    let shared = Arc::new(run::Shared::new(set.classes.len(), args.timings));
    let bar = progress::Progress::start(
        args.show_progress(),
        plan.measured_total(),
        shared.clone(),
        set.classes.clone(),
    );
    let cpu_before = cpu::CpuTimes::read_self();
    let wall = Instant::now();
    let window = run::run(Arc::new(target), &set, plan, shared.clone()).await;
    let cpu = cpu::Usage::between(cpu_before, cpu::CpuTimes::read_self(), wall.elapsed());
    bar.finish();
    drop(server);

    let recorder = shared.recorder();
    let mut report = report::Report::new(&args, &plan, &set, &recorder, window, cpu);
    report.answered_all = shared.done.load(std::sync::atomic::Ordering::Relaxed);
    print!("{}", report.render_text());
    if let Some(path) = &args.json {
        let json = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, json + "\n").with_context(|| format!("write {}", path.display()))?;
    }
    Ok(report)
}
