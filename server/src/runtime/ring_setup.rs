//! How each core's io_uring ring is set up, and which of those settings the
//! running kernel accepts.
//!
//! By default the kernel interrupts a thread busy in user space (an
//! inter-processor interrupt) whenever one of its ring's operations
//! completes, so that the completion is handled at once. A thread-per-core
//! server does not want that: it collects completions itself each time it
//! runs out of work, and every interrupt costs a kernel round trip in the
//! middle of, say, an X25519 multiplication. Deferred task work (Linux 6.1)
//! handles completions only when the core waits for events; cooperative
//! task work (5.19) at its next system call. Older kernels refuse the flags
//! with `EINVAL`, and the server then falls back to the next mode down.

use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::{RuntimeConfig, TaskWork};

/// The set-up flags for one ring in `mode` (none of the task-work flags
/// with SQPOLL, where the kernel's poller thread handles completions and
/// refuses them).
pub fn builder(cfg: &RuntimeConfig, mode: TaskWork) -> io_uring::Builder {
    let mut b = io_uring::IoUring::builder();
    if cfg.sqpoll {
        b.setup_sqpoll(cfg.sqpoll_idle_ms);
        return b;
    }
    match mode {
        TaskWork::Defer => {
            // Deferred task work requires that one thread alone submits to
            // the ring, which is how monoio uses it: each core's thread
            // creates its ring and is the only one to touch it.
            b.setup_single_issuer().setup_defer_taskrun();
        }
        TaskWork::Cooperative => {
            b.setup_coop_taskrun();
        }
        TaskWork::Interrupt => {}
    }
    b
}

/// The task-work mode this kernel accepts: the configured one, or the first
/// mode below it that a probe ring can be created with. Warns once per
/// process when it has to fall back. When every probe fails for another
/// reason than an unknown flag, the configured mode is returned and
/// building the real ring reports that error.
pub fn effective_task_work(cfg: &RuntimeConfig) -> TaskWork {
    if cfg.sqpoll {
        return cfg.task_work;
    }
    let used = first_accepted(cfg.task_work, |m| {
        builder(cfg, m).build(PROBE_ENTRIES).map(|_| ())
    });
    if used != cfg.task_work && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "the kernel refuses io_uring task_work = {:?} (deferred needs Linux 6.1, cooperative 5.19); using {:?}",
            cfg.task_work.name(),
            used.name()
        );
    }
    used
}

/// Walks down from `configured` until `probe` accepts a mode. Only `EINVAL`
/// (a flag this kernel does not know) moves on; any other error returns
/// `configured`, so that the real ring reports it.
fn first_accepted(
    configured: TaskWork,
    probe: impl Fn(TaskWork) -> std::io::Result<()>,
) -> TaskWork {
    let mut mode = Some(configured);
    while let Some(m) = mode {
        match probe(m) {
            Ok(()) => return m,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => mode = m.fallback(),
            Err(_) => return configured,
        }
    }
    configured
}

/// A probe ring only needs to exist; the kernel checks flags, not sizes.
const PROBE_ENTRIES: u32 = 4;

static WARNED: AtomicBool = AtomicBool::new(false);

#[cfg(test)]
mod tests {
    use super::*;

    /// Every mode this kernel reports as accepted really builds a ring that
    /// monoio can run on, and an operation completes on it: a deferred ring
    /// that never delivered completions would hang here rather than pass.
    #[test]
    fn the_accepted_mode_runs_io_to_completion() {
        for configured in [TaskWork::Defer, TaskWork::Cooperative, TaskWork::Interrupt] {
            let cfg = RuntimeConfig {
                task_work: configured,
                ..RuntimeConfig::default()
            };
            let mode = effective_task_work(&cfg);
            // Falling back never goes up the list.
            assert!(mode as u8 >= configured as u8, "{configured:?} -> {mode:?}");
            let mut rt = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .uring_builder(builder(&cfg, mode))
                .enable_timer()
                .build()
                .expect("a ring in the accepted mode");
            let echoed = rt.block_on(async {
                let listener = monoio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap();
                let server = monoio::spawn(async move {
                    let (mut s, _) = listener.accept().await.unwrap();
                    let (r, buf) =
                        monoio::io::AsyncReadRentExt::read_exact(&mut s, vec![0; 4]).await;
                    r.unwrap();
                    let (r, _) = monoio::io::AsyncWriteRentExt::write_all(&mut s, buf).await;
                    r.unwrap();
                });
                let mut c = monoio::net::TcpStream::connect(addr).await.unwrap();
                let (r, _) =
                    monoio::io::AsyncWriteRentExt::write_all(&mut c, b"ping".to_vec()).await;
                r.unwrap();
                let (r, buf) = monoio::io::AsyncReadRentExt::read_exact(&mut c, vec![0; 4]).await;
                r.unwrap();
                server.await;
                monoio::time::sleep(std::time::Duration::from_millis(1)).await;
                buf
            });
            assert_eq!(echoed, b"ping");
        }
    }

    /// An older kernel: each mode it lacks is refused with EINVAL.
    #[test]
    fn a_refused_mode_falls_back_down_the_list() {
        let einval = || std::io::Error::from_raw_os_error(libc::EINVAL);
        // Linux 5.19: no deferred task work.
        let k519 = |m: TaskWork| {
            if m == TaskWork::Defer {
                Err(einval())
            } else {
                Ok(())
            }
        };
        assert_eq!(first_accepted(TaskWork::Defer, k519), TaskWork::Cooperative);
        assert_eq!(
            first_accepted(TaskWork::Interrupt, k519),
            TaskWork::Interrupt
        );
        // Linux 5.15: neither.
        let k515 = |m: TaskWork| {
            if m == TaskWork::Interrupt {
                Ok(())
            } else {
                Err(einval())
            }
        };
        assert_eq!(first_accepted(TaskWork::Defer, k515), TaskWork::Interrupt);
        // Not a flag problem (io_uring disabled): no fallback, the real ring
        // will report the error.
        let denied = |_: TaskWork| Err(std::io::Error::from_raw_os_error(libc::EPERM));
        assert_eq!(first_accepted(TaskWork::Defer, denied), TaskWork::Defer);
    }

    #[test]
    fn sqpoll_takes_no_task_work_flags() {
        let cfg = RuntimeConfig {
            sqpoll: true,
            ..RuntimeConfig::default()
        };
        assert_eq!(effective_task_work(&cfg), TaskWork::Defer);
        // The kernel refuses the task-work flags together with SQPOLL, so a
        // ring builds only if the builder left them out.
        let ring = builder(&cfg, TaskWork::Defer).build(PROBE_ENTRIES).unwrap();
        assert!(ring.params().is_setup_sqpoll());
    }
}
