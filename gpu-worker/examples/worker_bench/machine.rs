//! What the figures ran on: cores, CPU model, GPU (from `nvidia-smi` when CUDA runs), load
//! average, date, for the BENCHMARKS.md section.

use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
}

/// `lscpu`'s model name.
pub fn cpu_model() -> String {
    output("lscpu", &[])
        .and_then(|text| {
            text.lines()
                .find_map(|l| l.strip_prefix("Model name:").map(|m| m.trim().to_string()))
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

/// Cores this process may use (`nproc`).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|| "?".into())
}

/// GPU name, memory, driver (one line per GPU), when `nvidia-smi` answers.
pub fn gpus() -> Option<String> {
    output(
        "nvidia-smi",
        &[
            "--query-gpu=name,memory.total,driver_version",
            "--format=csv,noheader",
        ],
    )
}

/// UTC date and time.
pub fn date() -> String {
    output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]).unwrap_or_else(|| "?".into())
}

/// One markdown line describing the machine.
pub fn describe(cuda: bool) -> String {
    let mut line = format!("{} cores (`nproc`), {}", cores(), cpu_model());
    if cuda {
        match gpus() {
            Some(g) => line.push_str(&format!(", GPU: {}", g.replace('\n', "; "))),
            None => line.push_str(", GPU: (nvidia-smi did not answer)"),
        }
    }
    line
}
