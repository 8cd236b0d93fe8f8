//! The examples `scripts/bench.sh` runs beside the pipeline: gpu-worker's `model_bench` (the
//! in-process model ceiling) and preprocessor's `preprocess_bench` (the preprocessing ceiling),
//! built with `cargo build --workspace` in the profile of the binaries and run from their
//! folder, their output in the results (`model_bench.txt`, `model_bench_after.txt`,
//! `preprocess_bench.txt`).

use std::path::{Path, PathBuf};
use std::process::Stdio;

use super::context::Bench;

/// The folder of the examples built in the profile of the binaries: `dev` when they are a
/// `debug` folder (a dry run), else `release`.
fn profile(bin: &Path) -> &'static str {
    if bin.file_name().is_some_and(|n| n == "debug") {
        "dev"
    } else {
        "release"
    }
}

/// Builds an example (`cargo build --workspace`: the features of the workspace build) and
/// runs it with `args`, stdout to `out`, stderr to `err` (inherited when `None`).
async fn example(
    bench: &Bench,
    name: &str,
    args: &[&str],
    out: &Path,
    err: Option<&Path>,
) -> anyhow::Result<bool> {
    let profile = profile(&bench.bin);
    let built = tokio::process::Command::new("cargo")
        .args([
            "build",
            "--locked",
            "-q",
            "--workspace",
            "--profile",
            profile,
        ])
        .args(["--example", name])
        .stdout(Stdio::null())
        .status()
        .await?;
    anyhow::ensure!(built.success(), "cargo build --example {name}: {built}");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| "target".into(), PathBuf::from);
    let folder = if profile == "dev" { "debug" } else { profile };
    let mut cmd = tokio::process::Command::new(target.join(folder).join("examples").join(name));
    cmd.args(args).stdout(std::fs::File::create(out)?);
    if let Some(err) = err {
        cmd.stderr(std::fs::File::create(err)?);
    }
    Ok(cmd.status().await?.success())
}

/// The model's images/s in process at the batch sizes the CPU worker uses (max 4) and one
/// above; plain flags if the example no longer takes these.
pub async fn model_bench(bench: &Bench, name: &str, device: &str) -> anyhow::Result<()> {
    let (out, err) = (bench.file(name), bench.file(&format!("{name}.err")));
    let flags = [
        "--device",
        device,
        "--batch-sizes",
        "1,2,4,8",
        "--runs",
        "10",
    ];
    if !example(bench, "model_bench", &flags, &out, Some(&err)).await? {
        let ok = example(bench, "model_bench", &flags[..2], &out, None).await?;
        anyhow::ensure!(ok, "model_bench failed");
    }
    eprint!("{}", std::fs::read_to_string(&out)?);
    Ok(())
}

pub async fn preprocess_bench(bench: &Bench) -> anyhow::Result<()> {
    let out = bench.file("preprocess_bench.txt");
    if !Path::new("preprocessor/examples/preprocess_bench.rs").exists() {
        let msg = "skipped: preprocessor/examples/preprocess_bench.rs does not exist yet\n";
        std::fs::write(&out, msg)?;
    } else {
        let err = bench.logs.join("preprocess_bench.err");
        // --no-write: its own section of BENCHMARKS.md is its own run's to write.
        let flags = ["--rounds", "3", "--no-write"];
        let ok = example(bench, "preprocess_bench", &flags, &out, Some(&err)).await?
            || example(bench, "preprocess_bench", &[], &out, Some(&err)).await?;
        if !ok {
            let msg = format!("preprocess_bench failed; see {}\n", err.display());
            std::fs::write(&out, msg)?;
        }
    }
    eprint!("{}", std::fs::read_to_string(&out)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_run_in_the_profile_of_the_binaries() {
        assert_eq!(profile(Path::new("/w/target/debug")), "dev");
        assert_eq!(profile(Path::new("target/release")), "release");
    }
}
