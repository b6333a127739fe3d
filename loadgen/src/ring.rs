//! One monoio io_uring runtime per thread, set up as pop3sd sets up its
//! cores', so that the load generator and the floor server pay the kernel
//! what the server under test pays it.

use monoio::time::TimeDriver;
use monoio::{IoUringDriver, Runtime};

/// A runtime on a ring with deferred task work (Linux 6.1+): completions
/// are collected when the thread waits for them instead of interrupting it,
/// which leaves more of a shared machine's CPU to the server under test.
/// Older kernels refuse the flags and get the default ring.
pub fn runtime(entries: u32) -> std::io::Result<Runtime<TimeDriver<IoUringDriver>>> {
    let build = |urb: io_uring::Builder| {
        monoio::RuntimeBuilder::<IoUringDriver>::new()
            .with_entries(entries)
            .uring_builder(urb)
            .enable_timer()
            .build()
    };
    let mut deferred = io_uring::IoUring::builder();
    deferred.setup_single_issuer().setup_defer_taskrun();
    build(deferred).or_else(|_| build(io_uring::IoUring::builder()))
}
