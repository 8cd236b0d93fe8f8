//! Printing: a small table per image (top classes with bars, model and version, total time) or
//! one JSON object per line; failures as `error <code>: <message>`. Lines go above the progress
//! bar so they do not tear it.

use indicatif::ProgressBar;
use serde_json::json;

use crate::answer::{Answer, Outcome};

/// Width of a 100% bar, in characters.
const BAR_WIDTH: usize = 24;

pub struct Printer {
    json: bool,
    progress: ProgressBar,
    total: usize,
    failed: Vec<String>,
}

impl Printer {
    pub fn new(json: bool, progress: ProgressBar) -> Self {
        Self {
            json,
            progress,
            total: 0,
            failed: vec![],
        }
    }

    pub fn print(&mut self, input: &str, outcome: &Outcome) {
        self.total += 1;
        let text = match (outcome, self.json) {
            (Outcome::Classified { json, .. }, true) => {
                let mut line = json.clone();
                line["input"] = json!(input);
                line.to_string()
            }
            (Outcome::Classified { answer, .. }, false) => table(input, answer),
            (Outcome::Failed(e), true) => {
                json!({"input": input, "error": {"code": e.code, "message": e.message}}).to_string()
            }
            (Outcome::Failed(e), false) => format!("{input}\n  error {}: {}\n", e.code, e.message),
        };
        if let Outcome::Failed(e) = outcome {
            self.failed.push(e.code.clone());
        }
        self.progress.suspend(|| println!("{text}"));
    }

    /// Says how many failed (on stderr) and returns whether all succeeded.
    pub fn summary(&self) -> bool {
        if !self.failed.is_empty() {
            let mut codes = self.failed.clone();
            codes.sort();
            codes.dedup();
            eprintln!(
                "{} of {} failed ({})",
                self.failed.len(),
                self.total,
                codes.join(", ")
            );
        }
        self.failed.is_empty()
    }
}

fn table(input: &str, a: &Answer) -> String {
    let width = a.top.iter().map(|l| l.label.len()).max().unwrap_or(0);
    let mut out = format!(
        "{input}\n  {} {} · {:.0} ms\n",
        a.model.name, a.model.version, a.timings.total_ms
    );
    for l in &a.top {
        let filled = (l.probability.clamp(0.0, 1.0) * BAR_WIDTH as f64).round() as usize;
        out.push_str(&format!(
            "  {:<width$}  {:>5.1}%  {}\n",
            l.label,
            l.probability * 100.0,
            "█".repeat(filled)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_table_lists_the_top_classes_with_the_model_and_time() {
        let a: Answer = serde_json::from_value(json!({
            "model": {"name": "clothes", "version": "1.0.0"},
            "top": [{"label": "pants", "probability": 0.5}, {"label": "t-shirt", "probability": 0.25}],
            "timings": {"total_ms": 41.6}
        }))
        .unwrap();
        let t = table("pants.jpg", &a);
        assert_eq!(
            t,
            format!(
                "pants.jpg\n  clothes 1.0.0 · 42 ms\n  pants     50.0%  {}\n  t-shirt   25.0%  {}\n",
                "█".repeat(12),
                "█".repeat(6)
            )
        );
    }
}
