//! The live progress bar on stderr (only on a terminal): answers counted, rate, errors, accuracy.
//! A ticker reads the shared counters four times a second; requests never touch the bar.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::run::Shared;

pub struct Progress {
    bar: Option<ProgressBar>,
    ticker: Option<tokio::task::JoinHandle<()>>,
}

impl Progress {
    /// A bar of `total` counted answers (a spinner when unknown), or nothing when `!show`.
    pub fn start(
        show: bool,
        total: Option<u64>,
        shared: Arc<Shared>,
        classes: Vec<String>,
    ) -> Self {
        if !show {
            return Self {
                bar: None,
                ticker: None,
            };
        }
        let template = match total {
            Some(_) => "{elapsed_precise} [{bar:25}] {pos}/{len} {msg}",
            None => "{elapsed_precise} {spinner} {pos} answers {msg}",
        };
        let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(4));
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        let ticker = tokio::spawn({
            let bar = bar.clone();
            async move {
                let mut every = tokio::time::interval(Duration::from_millis(250));
                loop {
                    every.tick().await;
                    let (pos, msg) = {
                        let r = shared.recorder();
                        let (scored, correct) = r.accuracy_counts();
                        let mut msg = format!(
                            "| in flight {} | errors {}",
                            shared.sent.load(Ordering::Relaxed)
                                - shared.done.load(Ordering::Relaxed),
                            r.completed - r.ok
                        );
                        if !classes.is_empty() && scored > 0 {
                            msg +=
                                &format!(" | acc {:.1}%", correct as f64 / scored as f64 * 100.0);
                        }
                        (r.completed, msg)
                    };
                    bar.set_position(pos);
                    bar.set_message(msg);
                }
            }
        });
        Self {
            bar: Some(bar),
            ticker: Some(ticker),
        }
    }

    pub fn finish(self) {
        if let Some(t) = self.ticker {
            t.abort();
        }
        if let Some(b) = self.bar {
            b.finish_and_clear();
        }
    }
}
