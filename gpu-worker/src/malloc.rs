//! glibc malloc settings for the model's working memory.
//!
//! libtorch allocates each operation's output with `malloc` and frees it soon after. Those
//! buffers are megabytes (a batch of 4 through EfficientNet-Lite0 has activations of 6 MB), so
//! glibc serves them with `mmap` and hands them back with `munmap`, or trims its heap after
//! them: every batch then faults in and zeroes its memory afresh (about 8,000 page faults a
//! batch of 4 here, a quarter of the engine threads' time in the kernel). Raising the mmap
//! threshold to 32 MB (glibc's largest) and the trim threshold to 1 GiB keeps freed memory in
//! the allocator for the next batch: 13-20% more images/s at batch 4 on the 2-core machine
//! (BENCHMARKS.md, gpu-worker-engines). The price is that the process keeps its peak
//! working memory.
//!
//! The same settings are `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=1073741824`;
//! `mallopt` overrides them.

/// The mmap threshold: glibc's maximum on 64-bit systems.
const MMAP_THRESHOLD: i32 = 32 << 20;
/// Free memory at the top of the heap above this is given back to the system.
const TRIM_THRESHOLD: i32 = 1 << 30;

/// Applies the settings; call first thing in `main`, before any thread starts. Returns whether
/// they were applied (only with glibc).
#[allow(unsafe_code)]
pub fn keep_freed_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallopt only changes allocator parameters; it takes the arena lock itself and
        // has no pointer arguments.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1
                && libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
        }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn glibc_takes_the_settings() {
        assert_eq!(
            super::keep_freed_memory(),
            cfg!(all(target_os = "linux", target_env = "gnu"))
        );
    }
}
