//! The endpoints of a running stack as `KEY=value` lines, one a line, no quoting (values hold
//! no newline), for shell to read without `eval`:
//!
//! ```sh
//! while IFS='=' read -r key value; do printf -v "$key" '%s' "$value"; done <"$ENDPOINTS"
//! ```
//!
//! The first tier of each kind has `<KIND>_PORT`, `<KIND>_PID`; every replica is in the
//! space-separated `<KIND>_PORTS` and `<KIND>_PIDS` (kinds: INGRESS, PREPROCESSOR, GPU_WORKER).

use std::fmt::Write as _;
use std::path::Path;

use clothesline_tests::stack::Tier;

use crate::running::Running;

/// Extra lines besides the stack's own.
pub struct Extra<'a> {
    pub log_dir: &'a Path,
    /// The URL of the folder served (`up --serve`).
    pub served: Option<String>,
}

fn kind_lines(out: &mut String, kind: &str, tiers: &[&Tier]) {
    let join = |f: &dyn Fn(&Tier) -> String| tiers.iter().map(|t| f(t)).collect::<Vec<_>>();
    let ports = join(&|t| t.port.to_string());
    let pids = join(&|t| t.pid().to_string());
    let _ = writeln!(out, "{kind}_PORT={}", ports[0]);
    let _ = writeln!(out, "{kind}_PID={}", pids[0]);
    let _ = writeln!(out, "{kind}_PORTS={}", ports.join(" "));
    let _ = writeln!(out, "{kind}_PIDS={}", pids.join(" "));
}

/// The file's text.
pub fn render(stack: &Running, extra: &Extra) -> String {
    let mut out = String::new();
    let pids: Vec<String> = stack.nats.pids().iter().map(u32::to_string).collect();
    let monitor = stack.nats.monitor_url();
    let monitor_port = monitor.rsplit(':').next().unwrap_or_default();
    let _ = writeln!(out, "STACK_PID={}", std::process::id());
    let _ = writeln!(out, "NATS_URL={}", stack.nats.url());
    let _ = writeln!(out, "NATS_MONITOR_URL={monitor}");
    let _ = writeln!(out, "NATS_MONITOR_PORT={monitor_port}");
    let _ = writeln!(
        out,
        "NATS_PID={}",
        pids.first().cloned().unwrap_or_default()
    );
    let _ = writeln!(out, "NATS_PIDS={}", pids.join(" "));
    let _ = writeln!(out, "NATS_STORE={}", stack.nats.stores().join(" "));
    let ingresses: Vec<&Tier> = stack.ingresses().collect();
    let _ = writeln!(out, "INGRESS_URL={}", ingresses[0].url(""));
    kind_lines(&mut out, "INGRESS", &ingresses);
    let pre: Vec<&Tier> = stack.tiers.preprocessors.iter().collect();
    kind_lines(&mut out, "PREPROCESSOR", &pre);
    kind_lines(&mut out, "GPU_WORKER", &stack.workers().collect::<Vec<_>>());
    let _ = writeln!(out, "LOG_DIR={}", extra.log_dir.display());
    if let Some(url) = &extra.served {
        let _ = writeln!(out, "SERVED_URL={url}");
    }
    out
}

/// Writes the file at once (a temp file renamed over it): a reader never sees half of it.
pub fn write(path: &Path, text: &str) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, path)
}
