//! The model manifest (`model/manifest.json`): what every tier knows about the model it serves.
//! The preprocessor reads the input size and resize method, the gpu-worker checks the model file
//! against its sha256 and input, the ingress reports name and version.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Which model a tensor was made for, or a prediction was made by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
}

/// The manifest every command uses by default, relative to the repository root.
pub const DEFAULT_MANIFEST: &str = "model/manifest.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputSpec {
    pub height: u32,
    pub width: u32,
    pub channels: u32,
    /// Only `NHWC` is served.
    pub layout: String,
    /// Only `uint8` is served.
    pub dtype: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Preprocessing {
    /// `bilinear`: PIL-compatible antialiased bilinear convolution.
    pub resize: String,
    /// `stretch`: resize to exactly height x width, ignoring the aspect ratio.
    pub geometry: String,
    pub exif_orientation: bool,
    #[serde(default = "rgb")]
    pub color: String,
}

fn rgb() -> String {
    "rgb".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// The model file, relative to the manifest's folder.
    pub file: String,
    pub sha256: String,
    pub input: InputSpec,
    pub preprocessing: Preprocessing,
    /// Class names in the order of the model's outputs.
    pub classes: Vec<String>,
    #[serde(default)]
    pub validation_accuracy: Option<f64>,
    /// Every other field (framework, normalization, dataset, ...), kept as is.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
    /// Where the manifest was read from (not serialized).
    #[serde(skip)]
    pub dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("cannot read manifest {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifest {path} is not valid: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("manifest {path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "model file {path} has sha256 {actual}, but its manifest says {expected}: refusing to serve a model that is not the one described"
    )]
    Checksum {
        path: PathBuf,
        expected: String,
        actual: String,
    },
}

impl Manifest {
    /// Reads and validates a manifest (not the model file: see [`Manifest::verify_model_file`]).
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ManifestError> {
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|source| ManifestError::Read {
            path: path.into(),
            source,
        })?;
        let mut m = Self::parse(&text, path)?;
        m.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        Ok(m)
    }

    /// Parses and validates a manifest that is not in a file (a version in the model bucket).
    pub fn from_json(bytes: &[u8]) -> Result<Self, ManifestError> {
        Self::parse(bytes, Path::new("(stored manifest)"))
    }

    fn parse(bytes: &[u8], path: &Path) -> Result<Self, ManifestError> {
        let m: Manifest = serde_json::from_slice(bytes).map_err(|source| ManifestError::Parse {
            path: path.into(),
            source,
        })?;
        m.validate().map_err(|reason| ManifestError::Invalid {
            path: path.into(),
            reason,
        })?;
        Ok(m)
    }

    fn validate(&self) -> Result<(), String> {
        let v = &self.version;
        if !crate::models::valid_version(v) {
            return Err(format!(
                "version {v:?} must be 1-64 letters, digits, '.', '_' or '-'"
            ));
        }
        if self.classes.iter().any(|c| c.trim().is_empty()) {
            return Err("a class name is empty".into());
        }
        let i = &self.input;
        if i.layout != "NHWC" || i.dtype != "uint8" || i.channels != 3 {
            return Err(format!(
                "input must be NHWC uint8 with 3 channels, got {} {} with {} channels",
                i.layout, i.dtype, i.channels
            ));
        }
        if i.height == 0 || i.width == 0 || i.height > 4096 || i.width > 4096 {
            return Err(format!(
                "input size {}x{} is out of range",
                i.height, i.width
            ));
        }
        if self.preprocessing.resize != "bilinear" || self.preprocessing.geometry != "stretch" {
            return Err(format!(
                "preprocessing {}/{} is not supported (bilinear/stretch is)",
                self.preprocessing.resize, self.preprocessing.geometry
            ));
        }
        if self.classes.is_empty() {
            return Err("no classes".into());
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("sha256 {:?} is not 64 hex digits", self.sha256));
        }
        Ok(())
    }

    pub fn model_ref(&self) -> ModelRef {
        ModelRef {
            name: self.name.clone(),
            version: self.version.clone(),
        }
    }

    /// The model file's path.
    pub fn model_path(&self) -> PathBuf {
        self.dir.join(&self.file)
    }

    /// Bytes of one input tensor.
    pub fn input_len(&self) -> usize {
        (self.input.height * self.input.width * self.input.channels) as usize
    }

    /// Checks the model file's sha256 against the manifest; returns the file's bytes.
    pub fn verify_model_file(&self) -> Result<Vec<u8>, ManifestError> {
        let path = self.model_path();
        let bytes = std::fs::read(&path).map_err(|source| ManifestError::Read {
            path: path.clone(),
            source,
        })?;
        self.verify_model_bytes(bytes)
    }

    /// Checks model bytes (read from a file or fetched) against the manifest's sha256.
    pub fn verify_model_bytes(&self, bytes: Vec<u8>) -> Result<Vec<u8>, ManifestError> {
        let path = self.model_path();
        let actual = sha256_hex(&bytes);
        if !actual.eq_ignore_ascii_case(&self.sha256) {
            return Err(ManifestError::Checksum {
                path,
                expected: self.sha256.clone(),
                actual,
            });
        }
        Ok(bytes)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, model: &[u8], sha: &str, layout: &str) -> PathBuf {
        std::fs::write(dir.join("m.pt"), model).unwrap();
        let manifest = serde_json::json!({
            "name": "t", "version": "1", "file": "m.pt", "sha256": sha,
            "input": {"height": 8, "width": 8, "channels": 3, "layout": layout, "dtype": "uint8"},
            "preprocessing": {"resize": "bilinear", "geometry": "stretch", "exif_orientation": true},
            "classes": ["a", "b"], "framework": "torchscript"
        });
        let p = dir.join("manifest.json");
        std::fs::write(&p, manifest.to_string()).unwrap();
        p
    }

    #[test]
    fn loads_and_verifies_checksum() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), b"model", &sha256_hex(b"model"), "NHWC");
        let m = Manifest::load(&p).unwrap();
        assert_eq!(m.input_len(), 192);
        assert_eq!(m.extra["framework"], "torchscript");
        assert_eq!(m.verify_model_file().unwrap(), b"model");
    }

    #[test]
    fn refuses_wrong_checksum_and_layout() {
        let dir = tempfile::tempdir().unwrap();
        let p = write(dir.path(), b"model", &sha256_hex(b"other"), "NHWC");
        let err = Manifest::load(&p).unwrap().verify_model_file().unwrap_err();
        assert!(matches!(err, ManifestError::Checksum { .. }), "{err}");
        assert!(err.to_string().contains("refusing"));
        let p = write(dir.path(), b"model", &sha256_hex(b"model"), "NCHW");
        assert!(matches!(
            Manifest::load(&p).unwrap_err(),
            ManifestError::Invalid { .. }
        ));
    }
}
