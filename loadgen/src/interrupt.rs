//! Ctrl-C (or SIGTERM) ends a run early with a report of what it did, as
//! an operator stopping a long run expects; a second one ends the process
//! at once.
//!
//! Only the main thread takes these signals: the worker threads are
//! started with them blocked, so no io_uring wait is ever interrupted.

use std::sync::atomic::{AtomicBool, Ordering};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
    // SAFETY: signal(2) is async-signal-safe; restoring the default
    // disposition makes the next such signal end the process.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
    }
}

fn signal_set() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset only write the set we own.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        set
    }
}

/// Installs the handlers (in the main thread, before any worker starts).
pub fn install() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic and calls signal(2).
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Runs `spawn` with the signals blocked, so that the threads it starts
/// inherit a mask that keeps them out of signal delivery.
pub fn with_signals_blocked<T>(spawn: impl FnOnce() -> T) -> T {
    let set = signal_set();
    let mut old: libc::sigset_t = signal_set();
    // SAFETY: pthread_sigmask reads `set` and writes `old`, both ours.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, &mut old) };
    let r = spawn();
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    r
}

/// True once a stop was asked for.
pub fn requested() -> bool {
    STOP.load(Ordering::Relaxed)
}
