//! Benchmark (not a test): decode and resize images from memory to the model's input size on one
//! thread, with this crate (libjpeg-turbo + fast_image_resize) and with Python's PIL
//! (`model/preprocess.py`'s `load_image` on bytes in memory) in the same run, and write the
//! `preprocessor` section of BENCHMARKS.md.
//!
//! ```sh
//! source scripts/deps.sh
//! cargo run --release -p clothesline-preprocessor --example preprocess_bench -- [--rounds 5] [--no-write]
//! ```
//!
//! Two sets: the validation split's JPEGs (about 400x533, no DCT scaling), and a few of them
//! upscaled to 2000x1500 and re-encoded (DCT-scaled by 1/4 on both sides). Both sides run
//! single-threaded, in alternating passes; "per core" figures are images per second of the
//! thread's own CPU time in the median pass (`/proc/thread-self/schedstat`, Python's
//! `time.thread_time`), so other work on a shared machine does not count; the best wall-clock
//! pass is shown next to them.

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use clothesline_preprocessor::imaging::resize::resize_raw;
use clothesline_preprocessor::imaging::{ImageSpec, decode_rgb8, preprocess_image_timed};

/// How many validation images are upscaled for the DCT-scaling set.
const LARGE_IMAGES: usize = 20;
const LARGE_SIZE: (u32, u32) = (2000, 1500);

/// A Python worker: reads `{"width", "height", "sets": [{"name", "paths"}]}` on its first line,
/// loads the files and runs `load_image` on each once (warm-up), prints `ready`; then for each
/// set name it reads, runs one timed pass and prints `<wall seconds> <cpu seconds>`.
const PYTHON: &str = r#"
import json, os, sys, time
sys.path.insert(0, os.getcwd())
from model.preprocess import load_image
job = json.loads(sys.stdin.readline())
w, h = job["width"], job["height"]
sets = {s["name"]: [open(p, "rb").read() for p in s["paths"]] for s in job["sets"]}
for data in sets.values():
    for b in data:
        load_image(b, h, w)
print("ready", flush=True)
for line in sys.stdin:
    data = sets[line.strip()]
    wall, cpu = time.perf_counter(), time.thread_time()
    for b in data:
        load_image(b, h, w)
    print(time.perf_counter() - wall, time.thread_time() - cpu, flush=True)
"#;

struct Args {
    rounds: usize,
    write: bool,
    dataset: PathBuf,
    python: PathBuf,
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

fn parse_args() -> anyhow::Result<Args> {
    let root = repo_root();
    let mut args = Args {
        rounds: 5,
        write: true,
        dataset: std::env::var_os("CLOTHESLINE_DATASET")
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("../shared/datasets/clothing-dataset-small")),
        python: std::env::var_os("TORCH_VENV")
            .map(|v| PathBuf::from(v).join("bin/python"))
            .unwrap_or_else(|| "python3".into()),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--rounds" => args.rounds = value()?.parse()?,
            "--no-write" => args.write = false,
            "--dataset" => args.dataset = value()?.into(),
            "--python" => args.python = value()?.into(),
            _ => anyhow::bail!(
                "usage: preprocess_bench [--rounds N] [--no-write] [--dataset DIR] [--python PATH]"
            ),
        }
    }
    args.rounds = args.rounds.max(1);
    Ok(args)
}

/// CPU time this thread has run, from the scheduler's accounting (nanoseconds).
fn thread_cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let ns = stat.split_whitespace().next().unwrap_or("").parse()?;
    Ok(Duration::from_nanos(ns))
}

/// One set's timings: per-pass wall and CPU seconds, and for Rust the mean decode and resize.
#[derive(Default)]
struct Timing {
    wall: Vec<f64>,
    cpu: Vec<f64>,
    decode: Duration,
    resize: Duration,
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

impl Timing {
    /// Images per second of CPU time, from the median pass.
    fn per_core(&self, images: usize) -> f64 {
        images as f64 / median(&self.cpu)
    }

    fn best_wall(&self, images: usize) -> f64 {
        images as f64 / self.wall.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// Mean decode and resize time per image, in ms.
    fn split_ms(&self, images: usize) -> (f64, f64) {
        let n = (images * self.wall.len()) as f64;
        (
            self.decode.as_secs_f64() * 1e3 / n,
            self.resize.as_secs_f64() * 1e3 / n,
        )
    }
}

/// One timed Rust pass over `images`.
fn rust_pass(images: &[Vec<u8>], spec: &ImageSpec, t: &mut Timing) -> anyhow::Result<()> {
    let (wall, cpu) = (Instant::now(), thread_cpu_time()?);
    for bytes in images {
        let p = preprocess_image_timed(bytes, spec)?;
        t.decode += p.decode;
        t.resize += p.resize;
    }
    t.cpu.push((thread_cpu_time()? - cpu).as_secs_f64());
    t.wall.push(wall.elapsed().as_secs_f64());
    Ok(())
}

/// The Python worker, warmed up.
struct Python {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Python {
    fn start(args: &Args, spec: &ImageSpec, sets: &[(&str, &[PathBuf])]) -> anyhow::Result<Self> {
        let mut child = Command::new(&args.python)
            .current_dir(repo_root())
            .args(["-c", PYTHON])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", args.python.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            anyhow::bail!("no pipes to python");
        };
        let mut py = Self {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let job = serde_json::json!({
            "width": spec.width,
            "height": spec.height,
            "sets": sets.iter().map(|(name, paths)| serde_json::json!({
                "name": name,
                "paths": paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        });
        writeln!(py.stdin, "{job}")?;
        anyhow::ensure!(py.line()? == "ready", "python did not start");
        Ok(py)
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        anyhow::ensure!(
            self.stdout.read_line(&mut line)? > 0,
            "python stopped (see its error above)"
        );
        Ok(line.trim().to_string())
    }

    /// One timed pass over a set.
    fn pass(&mut self, set: &str, t: &mut Timing) -> anyhow::Result<()> {
        writeln!(self.stdin, "{set}")?;
        let line = self.line()?;
        let mut it = line.split_whitespace().map(str::parse::<f64>);
        match (it.next(), it.next()) {
            (Some(Ok(wall)), Some(Ok(cpu))) => {
                t.wall.push(wall);
                t.cpu.push(cpu);
                Ok(())
            }
            _ => anyhow::bail!("unexpected answer from python: {line:?}"),
        }
    }
}

impl Drop for Python {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn validation_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for class in std::fs::read_dir(dir)? {
        for file in std::fs::read_dir(class?.path())? {
            let path = file?.path();
            let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
            if matches!(ext.to_ascii_lowercase().as_str(), "jpg" | "jpeg") {
                files.push(path);
            }
        }
    }
    files.sort();
    Ok(files)
}

/// `n` of the files, evenly spread, upscaled to [`LARGE_SIZE`] and saved as JPEG (quality 90,
/// 4:2:0) in `dir`.
fn large_jpegs(files: &[PathBuf], n: usize, dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let (width, height) = LARGE_SIZE;
    let step = (files.len() / n.max(1)).max(1);
    let original = ImageSpec::new(1, 1).with_max_pixels(u64::MAX);
    files
        .iter()
        .step_by(step)
        .take(n)
        .enumerate()
        .map(|(i, f)| {
            let (img, _) = decode_rgb8(&std::fs::read(f)?, &original)?;
            let pixels = resize_raw(img.as_raw(), img.width(), img.height(), width, height)?;
            let image = turbojpeg::Image {
                pixels: pixels.as_slice(),
                width: width as usize,
                pitch: width as usize * 3,
                height: height as usize,
                format: turbojpeg::PixelFormat::RGB,
            };
            let jpeg = turbojpeg::compress(image, 90, turbojpeg::Subsamp::Sub2x2)?;
            let path = dir.join(format!("large-{i:02}.jpg"));
            std::fs::write(&path, &jpeg[..])?;
            Ok(path)
        })
        .collect()
}

fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn cpu_model() -> String {
    command_output("lscpu", &[])
        .lines()
        .find_map(|l| l.strip_prefix("Model name:").map(|m| m.trim().to_string()))
        .unwrap_or_else(|| "unknown CPU".into())
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let spec = ImageSpec::new(224, 224);
    let validation = validation_files(&args.dataset.join("validation"))?;
    anyhow::ensure!(
        !validation.is_empty(),
        "no JPEGs under {}",
        args.dataset.display()
    );
    let tmp = std::env::temp_dir().join(format!("preprocess-bench-{}", std::process::id()));
    let large = large_jpegs(&validation, LARGE_IMAGES, &tmp)?;
    let read = |files: &[PathBuf]| -> anyhow::Result<Vec<Vec<u8>>> {
        files.iter().map(|f| Ok(std::fs::read(f)?)).collect()
    };
    let sets = [
        ("validation", validation.as_slice(), read(&validation)?),
        ("large", large.as_slice(), read(&large)?),
    ];
    let load_before = load_average();
    println!(
        "{} validation JPEGs, {} at {}x{}; {} rounds; load average {load_before}",
        validation.len(),
        large.len(),
        LARGE_SIZE.0,
        LARGE_SIZE.1,
        args.rounds
    );

    // Rust and Python passes alternate, so both see the same load on a shared machine.
    let py_sets: Vec<(&str, &[PathBuf])> = sets.iter().map(|(n, p, _)| (*n, *p)).collect();
    let mut python = Python::start(&args, &spec, &py_sets)?;
    let mut rust: Vec<Timing> = sets.iter().map(|_| Timing::default()).collect();
    let mut pil: Vec<Timing> = sets.iter().map(|_| Timing::default()).collect();
    for (i, (name, _, bytes)) in sets.iter().enumerate() {
        rust_pass(bytes, &spec, &mut Timing::default())?; // warm-up
        for _ in 0..args.rounds {
            rust_pass(bytes, &spec, &mut rust[i])?;
            python.pass(name, &mut pil[i])?;
        }
        let n = bytes.len();
        let (decode, resize) = rust[i].split_ms(n);
        println!(
            "{name:<10} rust {:>5.0}/s per core (best pass {:.0}/s; decode {decode:.3} ms + resize {resize:.3} ms), PIL {:>4.0}/s per core (best pass {:.0}/s): {:.2}x",
            rust[i].per_core(n),
            rust[i].best_wall(n),
            pil[i].per_core(n),
            pil[i].best_wall(n),
            rust[i].per_core(n) / pil[i].per_core(n)
        );
    }
    drop(python);
    let load_after = load_average();
    let _ = std::fs::remove_dir_all(&tmp);

    let mut md = format!(
        "## preprocessor: decode + resize to 224x224, one thread\n\n\
         `cargo run --release -p clothesline-preprocessor --example preprocess_bench` on {}, \
         {} cores (`nproc`), {}; load average {load_before} before, {load_after} after.\n\n\
         Encoded images in memory to the 224x224 uint8 tensor, single-threaded; {} passes of each \
         side after a warm-up, Rust and PIL passes alternating. *Per core* is images per second \
         of the thread's own CPU time in the median pass, so other work on the shared machine \
         does not count; *best pass* is wall clock. Both sides decode JPEG with libjpeg-turbo \
         (the same pixels; Rust has it write four-byte RGBX pixels, which its SIMD colour \
         conversion does fastest); the Rust resize is `fast_image_resize` (AVX2 here), PIL's is \
         its C convolution. Target: at least 3x PIL on the validation JPEGs.\n\n\
         | images | Rust, per core | Rust decode + resize | PIL (`model/preprocess.py`), per core | Rust / PIL |\n\
         |---|---|---|---|---|\n",
        cpu_model(),
        command_output("nproc", &[]),
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        args.rounds
    );
    let labels = [
        format!(
            "{} validation JPEGs (about 400x533, no DCT scaling)",
            validation.len()
        ),
        format!(
            "{} of them upscaled to {}x{} (DCT-scaled 1/4 while decoding)",
            large.len(),
            LARGE_SIZE.0,
            LARGE_SIZE.1
        ),
    ];
    for (((_, _, bytes), (r, p)), label) in sets.iter().zip(rust.iter().zip(&pil)).zip(&labels) {
        let n = bytes.len();
        let (decode, resize) = r.split_ms(n);
        md.push_str(&format!(
            "| {label} | **{:.0}/s** (best pass {:.0}/s) | {decode:.3} + {resize:.3} ms | {:.0}/s (best pass {:.0}/s) | **{:.2}x** |\n",
            r.per_core(n),
            r.best_wall(n),
            p.per_core(n),
            p.best_wall(n),
            r.per_core(n) / p.per_core(n)
        ));
    }
    let n = sets[0].2.len();
    let ratio = rust[0].per_core(n) / pil[0].per_core(n);
    md.push_str(&format!(
        "\nValidation JPEGs at {ratio:.2}x PIL per core: target (3x) **{}**.\n",
        if ratio >= 3.0 { "met" } else { "not met" }
    ));
    println!("\n{md}");
    if args.write {
        // `clothesline-loadtest section`, built by cargo if need be.
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut child = Command::new(cargo)
            .current_dir(repo_root())
            .args([
                "run",
                "--release",
                "--locked",
                "-q",
                "-p",
                "clothesline-loadtest",
                "--",
            ])
            .args(["section", "preprocessor", "-"])
            .stdin(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .ok_or_else(|| anyhow::anyhow!("no stdin"))?
            .write_all(md.as_bytes())?;
        anyhow::ensure!(
            child.wait()?.success(),
            "clothesline-loadtest section failed"
        );
    }
    Ok(())
}
