//! Links libtorch's CUDA library for real and records where libtorch lives.
//!
//! torch-sys links `-ltorch_cuda` among others, but the linker's default `--as-needed` drops it
//! because no symbol of ours refers to it directly; libtorch then silently runs CPU-only. So the
//! binaries, tests, examples and benches of this crate link it with `--no-as-needed` (only when the
//! library exists: a CPU-only libtorch has none). An rpath to the lib dir lets the binary run
//! without `LD_LIBRARY_PATH`. Such a binary still runs on a machine without a GPU.
//!
//! The lib dir comes from `LIBTORCH_LIB` or `TORCH_LIB`, else `$LIBTORCH/lib`, else from asking
//! the `python3` in PATH where torch is (the same python torch-sys uses with
//! `LIBTORCH_USE_PYTORCH=1`; `source scripts/deps.sh` sets all of this up).

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    for var in [
        "LIBTORCH_LIB",
        "TORCH_LIB",
        "LIBTORCH",
        "LIBTORCH_USE_PYTORCH",
        "VIRTUAL_ENV",
        "TORCH_VENV",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let Some(lib) = torch_lib_dir() else {
        println!(
            "cargo:warning=clothesline-gpu-worker: libtorch's lib dir not found (set TORCH_LIB or `source scripts/deps.sh`); no rpath, CUDA not force-linked"
        );
        return;
    };
    let lib = lib.display();
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib}");
    if Path::new(&format!("{lib}/libtorch_cuda.so")).exists() {
        // For every linked target of this package (binaries, unit and integration tests,
        // examples, benches; never dependents). Not `rustc-link-arg-tests`/`-benches`: cargo
        // rejects those when the package has no such target, and they skip the lib's unit tests.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-L{lib},-ltorch_cuda,--as-needed");
    } else {
        println!(
            "cargo:warning=clothesline-gpu-worker: {lib} has no libtorch_cuda.so: a CPU-only libtorch, the worker will run on CPU only"
        );
    }
}

fn torch_lib_dir() -> Option<PathBuf> {
    let from_env = |var: &str| {
        std::env::var_os(var)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(dir) = from_env("LIBTORCH_LIB").or_else(|| from_env("TORCH_LIB")) {
        return Some(dir);
    }
    if let Some(dir) = from_env("LIBTORCH") {
        return Some(dir.join("lib"));
    }
    let out = Command::new("python3")
        .args([
            "-c",
            "import torch, os; print(os.path.dirname(torch.__file__) + '/lib')",
        ])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8(out.stdout).ok()?.trim());
    dir.is_dir().then_some(dir)
}
