//! Where things are: the repository root, the built binaries, the model, the dataset, tools.

use std::path::{Path, PathBuf};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Folder of the workspace's binaries: `CLOTHESLINE_BIN_DIR`, else the profile folder that holds
/// this test executable (`target/<profile>/deps/..`).
pub fn bin_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("CLOTHESLINE_BIN_DIR") {
        return dir.into();
    }
    let exe = std::env::current_exe().unwrap();
    exe.parent().and_then(Path::parent).unwrap().to_path_buf()
}

/// A workspace binary; panics with the build command if it is missing.
pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} not found: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// The model manifest the suite serves: `CLOTHESLINE_MANIFEST`, else the shipped one.
pub fn manifest() -> PathBuf {
    std::env::var_os("CLOTHESLINE_MANIFEST")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("model/manifest.json"))
}

/// The clothes dataset: `CLOTHESLINE_DATASET`, else `../shared/datasets/clothing-dataset-small`.
pub fn dataset() -> PathBuf {
    std::env::var_os("CLOTHESLINE_DATASET")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join("../shared/datasets/clothing-dataset-small"))
}

/// The Python with torch that `scripts/deps.sh` installs (first `python3` on PATH otherwise).
pub fn python() -> PathBuf {
    if let Some(venv) = std::env::var_os("TORCH_VENV") {
        return PathBuf::from(venv).join("bin/python");
    }
    PathBuf::from("python3")
}

/// nats-server: `NATS_SERVER_BIN`, PATH, or Debian's /usr/sbin.
pub fn nats_server() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        return p.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.exists())
        .expect("nats-server not found: run scripts/deps.sh (installs Debian's nats-server)")
}

/// The first image (by name) of a class folder of the validation split.
pub fn validation_image(class: &str) -> Vec<u8> {
    let dir = dataset().join("validation").join(class);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e} (is ../shared there?)", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    std::fs::read(&files[0]).unwrap()
}

/// The binaries whose options the README documents and the deployments set.
pub const BINARIES: [&str; 4] = [
    "clothesline-ingress",
    "clothesline-preprocessor",
    "clothesline-gpu-worker",
    "clothesline-provision",
];

/// What `bin --help` prints (it must succeed).
pub fn help(bin: &str) -> String {
    let out = std::process::Command::new(self::bin(bin))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success(), "{bin} --help");
    String::from_utf8(out.stdout).unwrap()
}
