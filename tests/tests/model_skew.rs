//! No training/serving skew: the Rust preprocessor's tensors equal the Python training
//! pipeline's within 2 levels per pixel (dataset JPEGs, other formats, and large JPEGs that both
//! sides decode DCT-scaled, upright, EXIF-rotated and grayscale), and the pipeline's accuracy on the validation split
//! equals the offline (Python, TorchScript) accuracy within 0.5 points.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use clothesline_preprocessor::imaging::{ImageSpec, preprocess_image};
use clothesline_tests::paths;
use clothesline_tests::stack::{Stack, StackOptions};
use protocol::Manifest;

/// The first `n` images of every class folder under `split`.
fn images_per_class(split: &Path, n: usize) -> Vec<PathBuf> {
    let mut classes: Vec<_> = std::fs::read_dir(split)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    classes.sort();
    classes
        .iter()
        .flat_map(|class| {
            let mut files: Vec<_> = std::fs::read_dir(class)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            files.sort();
            files.into_iter().take(n)
        })
        .collect()
}

/// Runs a Python script of `model/` with the torch venv; panics with its output on failure.
fn python(args: &[&str]) -> String {
    let out = Command::new(paths::python())
        .current_dir(paths::repo_root())
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "python {args:?} failed:\n{text}");
    text
}

#[test]
fn rust_and_python_preprocessing_agree_within_two_levels() {
    let manifest = Manifest::load(paths::manifest()).unwrap();
    let spec = ImageSpec::from_manifest(&manifest);
    let dir = tempfile::tempdir().unwrap();

    let mut images = images_per_class(&paths::dataset().join("validation"), 10);
    // Beyond the dataset's JPEGs: a PNG with alpha, a grayscale PNG, a GIF, a WebP and a BMP.
    let base = image::open(&images[0]).unwrap();
    let mut rgba = base.to_rgba8();
    rgba.pixels_mut()
        .enumerate()
        .for_each(|(i, p)| p.0[3] = (i % 256) as u8);
    for (name, img) in [
        ("alpha.png", image::DynamicImage::ImageRgba8(rgba)),
        ("gray.png", image::DynamicImage::ImageLuma8(base.to_luma8())),
        ("frame.gif", base.clone()),
        ("lossless.webp", base.clone()),
        ("plain.bmp", base.clone()),
    ] {
        let path = dir.path().join(name);
        img.save(&path).unwrap();
        images.push(path);
    }

    // Large JPEGs, decoded DCT-scaled (Pillow's `draft` on the Python side): a colour one, the
    // same with EXIF orientation 6, and a grayscale one.
    let large = large_jpegs(&images[0], dir.path());
    images.extend(large.iter().cloned());

    let mut worst = compare(&images, &spec, dir.path(), "py");
    // An output that is not square: the draft is asked for in the stored orientation, so with
    // orientation 6 the scale differs from the upright image's (1/2 instead of 1/4).
    let wide = ImageSpec::new(450, 150);
    let wide_worst = compare(&large, &wide, dir.path(), "py-wide");
    if wide_worst.0 > worst.0 {
        worst = wide_worst;
    }
    println!(
        "{} images (and {} at {}x{}), largest difference {} levels ({})",
        images.len(),
        large.len(),
        wide.width,
        wide.height,
        worst.0,
        worst.1.display()
    );
    assert!(
        worst.0 <= 2,
        "{} differs by {} levels per pixel",
        worst.1.display(),
        worst.0
    );
}

/// Preprocesses `images` with Rust and with `model/preprocess.py` (output in `dir/out`) at the
/// spec's size; returns the largest difference and the image it is in.
fn compare(images: &[PathBuf], spec: &ImageSpec, dir: &Path, out: &str) -> (u8, PathBuf) {
    let out = dir.join(out);
    let mut args = vec![
        "model/preprocess.py".to_string(),
        "--out".into(),
        out.display().to_string(),
        "--height".into(),
        spec.height.to_string(),
        "--width".into(),
        spec.width.to_string(),
    ];
    args.extend(images.iter().map(|p| p.display().to_string()));
    python(&args.iter().map(String::as_str).collect::<Vec<_>>());

    let mut worst = (0u8, PathBuf::new());
    for path in images {
        let rust = preprocess_image(&std::fs::read(path).unwrap(), spec).unwrap();
        let name = format!("{}.rgb", path.file_name().unwrap().to_string_lossy());
        let py = std::fs::read(out.join(&name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(rust.len(), py.len(), "{}", path.display());
        let max = rust
            .iter()
            .zip(&py)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        if max > worst.0 {
            worst = (max, path.clone());
        }
    }
    worst
}

/// JPEGs far larger than the model's input, made of tiles of `source` (natural detail at full
/// resolution): 2000x1500 colour, the same with EXIF orientation 6, 1600x1200 grayscale.
fn large_jpegs(source: &Path, dir: &Path) -> Vec<PathBuf> {
    let tile = image::open(source).unwrap().to_rgb8();
    let tiled = image::RgbImage::from_fn(2000, 1500, |x, y| {
        *tile.get_pixel(x % tile.width(), y % tile.height())
    });
    let jpeg = |img: image::DynamicImage| {
        let mut out = Vec::new();
        img.write_with_encoder(image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut out, 90,
        ))
        .unwrap();
        out
    };
    let color = jpeg(image::DynamicImage::ImageRgb8(tiled.clone()));
    let luma = image::DynamicImage::ImageRgb8(tiled).to_luma8();
    let gray = image::imageops::crop_imm(&luma, 0, 0, 1600, 1200).to_image();
    let gray = jpeg(image::DynamicImage::ImageLuma8(gray));
    let files = [
        ("large.jpg", color.clone()),
        ("large-orientation-6.jpg", with_exif_orientation(&color, 6)),
        ("large-gray.jpg", gray),
    ];
    files
        .into_iter()
        .map(|(name, bytes)| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect()
}

/// `jpeg` with an EXIF APP1 segment carrying `orientation`, inserted right after SOI.
fn with_exif_orientation(jpeg: &[u8], orientation: u16) -> Vec<u8> {
    let mut tiff = b"II*\0".to_vec();
    tiff.extend_from_slice(&8u32.to_le_bytes()); // IFD0 offset
    tiff.extend_from_slice(&1u16.to_le_bytes()); // one entry
    tiff.extend_from_slice(&0x0112u16.to_le_bytes()); // Orientation
    tiff.extend_from_slice(&3u16.to_le_bytes()); // SHORT
    tiff.extend_from_slice(&1u32.to_le_bytes()); // count
    tiff.extend_from_slice(&orientation.to_le_bytes());
    tiff.extend_from_slice(&[0, 0, 0, 0, 0, 0]); // value padding, no next IFD
    let mut segment = b"Exif\0\0".to_vec();
    segment.extend_from_slice(&tiff);
    let mut out = jpeg[..2].to_vec();
    out.extend_from_slice(&[0xff, 0xe1]);
    out.extend_from_slice(&u16::try_from(segment.len() + 2).unwrap().to_be_bytes());
    out.extend_from_slice(&segment);
    out.extend_from_slice(&jpeg[2..]);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipeline_accuracy_matches_offline_accuracy_on_validation() {
    let validation = paths::dataset().join("validation");
    let manifest = paths::manifest().display().to_string();
    let dir = tempfile::tempdir().unwrap();
    let offline_json = dir.path().join("offline.json");
    let pipeline_json = dir.path().join("pipeline.json");
    let v = validation.display().to_string();

    python(&[
        "model/evaluate.py",
        &v,
        "--offline",
        "--manifest",
        &manifest,
        "--json",
        &offline_json.display().to_string(),
    ]);

    let stack = Stack::start(StackOptions::default()).await;
    let base = format!("http://127.0.0.1:{}", stack.ingress.port);
    let pipeline_out = pipeline_json.display().to_string();
    let eval = tokio::task::spawn_blocking(move || {
        python(&[
            "model/evaluate.py",
            &v,
            "--pipeline",
            &base,
            "--manifest",
            &manifest,
            "--concurrency",
            "8",
            "--json",
            &pipeline_out,
        ])
    })
    .await
    .unwrap();
    println!("{eval}");

    let read = |p: &Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    };
    let (offline, pipeline) = (read(&offline_json), read(&pipeline_json));
    assert_eq!(
        pipeline["errors"], 0,
        "every validation image is answered: {}",
        pipeline["error_details"]
    );
    assert_eq!(pipeline["images"], offline["images"]);
    let (a, b) = (
        offline["accuracy"].as_f64().unwrap(),
        pipeline["accuracy"].as_f64().unwrap(),
    );
    println!("offline accuracy {a:.4}, pipeline accuracy {b:.4}");
    assert!((a - b).abs() <= 0.005, "offline {a:.4} vs pipeline {b:.4}");
}
