//! The model: a TorchScript module, verified against its manifest, that turns a batch of uint8
//! NHWC images into rows of f32 logits.
//!
//! Every method calls into libtorch and blocks: call them from a plain thread (the engine thread,
//! a test, a benchmark), never from a tokio worker thread.

use anyhow::{Context, bail, ensure};
use protocol::manifest::Manifest;
use tch::{CModule, Device, Kind, Tensor};

/// A loaded, checked TorchScript model on one device.
pub struct Model {
    module: CModule,
    device: Device,
    half: bool,
    /// `[H, W, C]` of one image.
    image: [i64; 3],
    classes: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("device", &self.device)
            .field("precision", &self.precision())
            .field("image", &self.image)
            .field("classes", &self.classes)
            .finish_non_exhaustive()
    }
}

impl Model {
    /// Loads the manifest's model on `device`, in fp16 when `half` and the device is CUDA (on CPU
    /// `half` is ignored: see [`Model::precision`]).
    ///
    /// Refuses a model file whose sha256 is not the manifest's, and a model that does not take a
    /// `[1, H, W, 3]` uint8 batch to `[1, classes]` logits.
    pub fn load(manifest: &Manifest, device: Device, half: bool) -> anyhow::Result<Self> {
        Self::load_bytes(manifest, None, device, half)
    }

    /// [`Model::load`] from `bytes` fetched elsewhere (a version in the model bucket) when given,
    /// checked against the manifest's sha256 all the same; from the manifest's file otherwise.
    pub fn load_bytes(
        manifest: &Manifest,
        bytes: Option<&[u8]>,
        device: Device,
        half: bool,
    ) -> anyhow::Result<Self> {
        let path = manifest.model_path();
        // The bytes that were checked are the bytes that are loaded.
        let bytes = match bytes {
            Some(b) => manifest.verify_model_bytes(b.to_vec())?,
            None => manifest.verify_model_file()?,
        };
        let mut module =
            CModule::load_data_on_device(&mut bytes.as_slice(), device).with_context(|| {
                format!(
                    "cannot load TorchScript model {} on {device:?}",
                    path.display()
                )
            })?;
        module.f_set_eval()?;
        let input = &manifest.input;
        let model = Self {
            module,
            device,
            half: half && device.is_cuda(),
            image: [
                i64::from(input.height),
                i64::from(input.width),
                i64::from(input.channels),
            ],
            classes: manifest.classes.len(),
        };
        let zeros = vec![0u8; manifest.input_len()];
        let out = model.forward(&zeros, 1).with_context(|| {
            format!(
                "model {} does not run on a zero uint8 batch of shape [1, {}, {}, {}]",
                path.display(),
                input.height,
                input.width,
                input.channels
            )
        })?;
        match out.size().as_slice() {
            [1, n] if *n == model.classes as i64 => Ok(model),
            [1, n] => bail!(
                "model {}: model output has {n} classes, manifest lists {}",
                path.display(),
                model.classes
            ),
            other => bail!(
                "model {}: output shape is {other:?} for a batch of one, expected [1, {}]",
                path.display(),
                model.classes
            ),
        }
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// Whether the model runs in fp16 (CUDA only).
    pub fn half(&self) -> bool {
        self.half
    }

    /// `fp16` or `fp32`.
    pub fn precision(&self) -> &'static str {
        if self.half { "fp16" } else { "fp32" }
    }

    /// Bytes of one image: `H * W * C`.
    pub fn image_len(&self) -> usize {
        self.image.iter().product::<i64>() as usize
    }

    /// Number of classes (logits per image).
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Runs `n` images, laid out one after the other in `data` (uint8 NHWC), and returns one row
    /// of f32 logits per image, in order.
    pub fn run_batch(&self, data: &[u8], n: usize) -> anyhow::Result<Vec<Vec<f32>>> {
        let out = self.forward(data, n)?;
        let size = out.size();
        ensure!(
            size == [n as i64, self.classes as i64],
            "model output shape is {size:?} for a batch of {n}, expected [{n}, {}]",
            self.classes
        );
        let out = out
            .f_to_kind(Kind::Float)?
            .f_to_device(Device::Cpu)?
            .f_contiguous()?;
        let mut flat = vec![0f32; n * self.classes];
        out.f_copy_data(&mut flat, n * self.classes)?;
        Ok(flat.chunks(self.classes).map(<[f32]>::to_vec).collect())
    }

    /// The raw output of a forward pass on `n` images.
    fn forward(&self, data: &[u8], n: usize) -> anyhow::Result<Tensor> {
        ensure!(n > 0, "empty batch");
        ensure!(
            data.len() == n * self.image_len(),
            "batch of {n} images needs {} bytes, got {}",
            n * self.image_len(),
            data.len()
        );
        let [h, w, c] = self.image;
        // One copy into a host tensor, one to the device (none on CPU).
        let x = Tensor::f_from_data_size(data, &[n as i64, h, w, c], Kind::Uint8)?
            .f_to_device(self.device)?;
        let out = tch::no_grad(|| {
            if self.half {
                // The graph casts the uint8 input to f32 itself, so the weights cannot simply be
                // converted: autocast runs the heavy ops (conv, matmul) in fp16.
                tch::autocast(true, || self.module.forward_ts(&[x]))
            } else {
                self.module.forward_ts(&[x])
            }
        })?;
        Ok(out)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{copy_dir, tiny_model};

    fn sample(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn loads_the_tiny_model_and_batches_give_the_same_rows() {
        let dir = tiny_model();
        let manifest = Manifest::load(dir.path().join("manifest.json")).expect("manifest");
        let model = Model::load(&manifest, Device::Cpu, true).expect("model loads");
        assert_eq!((model.precision(), model.classes()), ("fp32", 10));

        let len = model.image_len();
        let image = sample(len, 7);
        let alone = model.run_batch(&image, 1).expect("batch of 1");
        assert_eq!((alone.len(), alone[0].len()), (1, 10));

        let mut three = sample(len, 1);
        three.extend_from_slice(&image);
        three.extend(sample(len, 200));
        let rows = model.run_batch(&three, 3).expect("batch of 3");
        assert_eq!(rows.len(), 3);
        for (a, b) in alone[0].iter().zip(&rows[1]) {
            assert!((a - b).abs() < 1e-4, "{:?} vs {:?}", alone[0], rows[1]);
        }
        assert_ne!(rows[0], rows[1], "different images, different logits");

        let err = model.run_batch(&image[1..], 1).unwrap_err();
        assert!(err.to_string().contains("needs"), "{err}");
    }

    #[test]
    fn refuses_a_model_whose_sha256_differs() {
        let dir = copy_dir(tiny_model().path());
        let path = dir.path().join("manifest.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        json["sha256"] = serde_json::Value::String("0".repeat(64));
        std::fs::write(&path, json.to_string()).expect("write");
        let manifest = Manifest::load(&path).expect("manifest");
        let err = Model::load(&manifest, Device::Cpu, false).unwrap_err();
        assert!(
            err.to_string().contains("refusing to serve"),
            "unexpected error: {err:#}"
        );
    }

    #[test]
    fn refuses_a_manifest_whose_class_count_differs() {
        let dir = copy_dir(tiny_model().path());
        let path = dir.path().join("manifest.json");
        let mut json: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).expect("read")).expect("json");
        json["classes"]
            .as_array_mut()
            .expect("classes")
            .push("socks".into());
        std::fs::write(&path, json.to_string()).expect("write");
        let manifest = Manifest::load(&path).expect("manifest");
        let err = Model::load(&manifest, Device::Cpu, false).unwrap_err();
        assert!(
            err.to_string()
                .contains("model output has 10 classes, manifest lists 11"),
            "unexpected error: {err:#}"
        );
    }
}
