//! Test support: exporting the tiny untrained model with `model/export.py --tiny`, for this
//! crate's tests and other crates' (it runs Python with torch; `source scripts/deps.sh` first).

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, ensure};

/// The exporter, `model/export.py` in this repository.
pub fn export_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../model/export.py")
}

/// The python with torch: `$TORCH_VENV/bin/python` when set, else `python3` in PATH.
pub fn python() -> PathBuf {
    std::env::var_os("TORCH_VENV")
        .filter(|v| !v.is_empty())
        .map(|venv| PathBuf::from(venv).join("bin/python"))
        .unwrap_or_else(|| PathBuf::from("python3"))
}

/// Writes `out/tiny.pt` and `out/manifest.json` (uint8 NHWC [N,224,224,3] -> logits [N,10]).
pub fn export_tiny_model(out: &Path) -> anyhow::Result<()> {
    let python = python();
    let script = export_script();
    let output = Command::new(&python)
        .arg(&script)
        .arg("--tiny")
        .arg("--out")
        .arg(out)
        .output()
        .with_context(|| {
            format!(
                "cannot run {} to export the tiny test model: install torch with `source scripts/deps.sh`",
                python.display()
            )
        })?;
    ensure!(
        output.status.success(),
        "{} {} --tiny failed ({}); is torch installed? run `source scripts/deps.sh`\n{}",
        python.display(),
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

#[cfg(test)]
pub(crate) use shared::{copy_dir, tiny_model};

#[cfg(test)]
mod shared {
    use std::path::Path;
    use std::sync::{Arc, Mutex, Weak};

    use tempfile::TempDir;

    /// The tiny model, exported once for all the tests that run at the same time, and removed
    /// when the last of them drops it.
    pub(crate) fn tiny_model() -> Arc<TempDir> {
        static SHARED: Mutex<Weak<TempDir>> = Mutex::new(Weak::new());
        let mut shared = SHARED.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(dir) = shared.upgrade() {
            return dir;
        }
        let dir = tempfile::Builder::new()
            .prefix("gpu-worker-tiny-model")
            .tempdir()
            .expect("temp dir");
        if let Err(e) = super::export_tiny_model(dir.path()) {
            panic!("{e:#}");
        }
        let dir = Arc::new(dir);
        *shared = Arc::downgrade(&dir);
        dir
    }

    /// A copy of the files of `from` in a new temp dir.
    pub(crate) fn copy_dir(from: &Path) -> TempDir {
        let to = tempfile::tempdir().expect("temp dir");
        for entry in std::fs::read_dir(from).expect("read dir") {
            let entry = entry.expect("entry");
            std::fs::copy(entry.path(), to.path().join(entry.file_name())).expect("copy");
        }
        to
    }
}
