//! The server's async runtime. Its threads carry every request to a sandbox and back, so each asks the scheduler
//! for short slices ([`agentbox_core::sched`]): beside a sandbox that keeps every CPU busy, fewer of a request's
//! wake-ups wait for the kernel's next tick. Sandboxed processes keep the kernel's defaults.

use agentbox_core::sched::{CONTROL_SLICE, request_short_slices};

/// A multi-threaded tokio runtime with every timer and I/O driver, whose threads (workers and blocking ones)
/// ask for short slices. Call [`prefer_short_slices`] on the thread that blocks on it as well.
///
/// # Errors
/// The runtime's own error when its threads or drivers can't be started.
pub fn build() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().on_thread_start(prefer_short_slices).build()
}

/// Asks for short slices on the calling thread; a host that refuses keeps the default, with a debug line.
pub fn prefer_short_slices() {
    if let Err(e) = request_short_slices(CONTROL_SLICE) {
        tracing::debug!(error = %e, "the scheduler refused short slices; this thread keeps the default");
    }
}
