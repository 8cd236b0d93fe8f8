//! CUDA memory for `gpu_worker_cuda_memory_bytes`, read through NVML (the driver's management
//! library, loaded at run time: nothing to link, and CPU-only machines simply have none). libtorch
//! keeps its caching allocator's figures to itself, so the driver's view is what we have: the
//! memory this process holds on the device, or, where NVML cannot see the process (a container
//! with its own PID namespace), the memory used on the whole device.

use std::time::Duration;

use nvml_wrapper::Nvml;
use nvml_wrapper::enums::device::UsedGpuMemory;
use prometheus::IntGauge;

/// How often the gauge is refreshed.
const PERIOD: Duration = Duration::from_secs(5);

/// Starts a thread that keeps `gauge` up to date for CUDA device `index`; `false` (and a log
/// line) when NVML is not there.
pub fn start_sampler(index: usize, gauge: IntGauge) -> bool {
    let nvml = match Nvml::init() {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!(error = %e, "NVML unavailable: gpu_worker_cuda_memory_bytes stays 0");
            return false;
        }
    };
    let spawned = std::thread::Builder::new()
        .name("cuda-memory".into())
        .spawn(move || {
            let mut warned = false;
            loop {
                match used_bytes(&nvml, index) {
                    Ok(bytes) => gauge.set(i64::try_from(bytes).unwrap_or(i64::MAX)),
                    Err(e) if !warned => {
                        warned = true;
                        tracing::warn!(error = %e, "cannot read CUDA memory from NVML");
                    }
                    Err(_) => {}
                }
                std::thread::sleep(PERIOD);
            }
        });
    spawned.is_ok()
}

/// This process's memory on the device if NVML lists it, else the device's used memory.
fn used_bytes(nvml: &Nvml, index: usize) -> Result<u64, nvml_wrapper::error::NvmlError> {
    let device = nvml.device_by_index(u32::try_from(index).unwrap_or(u32::MAX))?;
    let processes = device.running_compute_processes().unwrap_or_default();
    let me = std::process::id();
    let mine = processes
        .iter()
        .find(|p| p.pid == me)
        .and_then(|p| match p.used_gpu_memory {
            UsedGpuMemory::Used(bytes) => Some(bytes),
            UsedGpuMemory::Unavailable => None,
        });
    match mine {
        Some(bytes) => Ok(bytes),
        None => Ok(device.memory_info()?.used),
    }
}
