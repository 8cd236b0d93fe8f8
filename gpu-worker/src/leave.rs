//! Leaving the process while libtorch may still run an abandoned batch.
//!
//! When the shutdown grace period ends with a batch still running, its tensors are handed back
//! (nak) and the worker exits at once. A normal exit (`exit(3)`) runs the C++ static
//! destructors of libtorch and its thread pools while the engine thread is still inside an
//! operation of that library: the process then died of SIGSEGV after its work was safely handed
//! back (seen in 3 runs of `faults.rs` and once in `scale_in.rs`), which an orchestrator reports
//! as a crash. `_exit(2)` ends the process without running them; nothing of ours is lost by
//! that: the tensors are handed back, NATS is flushed, the spans are exported, and stderr and
//! the logs are written unbuffered.

use std::io::Write;

/// The run's error when the grace period ended with batches still running.
#[derive(Debug, thiserror::Error)]
#[error(
    "shutdown grace period over with {running} batch(es) running; their tensors were handed back"
)]
pub struct AbandonedBatches {
    pub running: usize,
}

/// Ends the process with `code` now, without running static destructors (see the module).
#[allow(unsafe_code)]
pub fn without_destructors(code: i32) -> ! {
    let _ = std::io::stdout().flush();
    let _ = std::io::stderr().flush();
    // SAFETY: `_exit` takes no pointers and never returns; skipping destructors and atexit
    // handlers is its purpose here, and every resource the process holds is released by the
    // kernel.
    unsafe { libc::_exit(code) }
}
