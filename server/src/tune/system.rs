//! What `tune-check` reads from the machine, behind a trait so that the
//! checks themselves are pure and unit-tested against made-up machines.

use std::path::Path;

use crate::config::TaskWork;

/// A resource limit: soft and hard values (`None` = unlimited).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rlimit {
    pub soft: Option<u64>,
    pub hard: Option<u64>,
}

/// The machine as the checks see it.
pub trait SystemView {
    /// A file under /proc or /sys, trimmed; `None` when absent or unreadable.
    fn read(&self, path: &str) -> Option<String>;
    /// getrlimit(2) for RLIMIT_NOFILE.
    fn nofile(&self) -> Rlimit;
    /// getrlimit(2) for RLIMIT_MEMLOCK.
    fn memlock(&self) -> Rlimit;
    /// CPUs this process may run on.
    fn cpus(&self) -> usize;
    /// Whether an io_uring ring with the configured settings can be
    /// created here, and with which task-work mode (the error text
    /// otherwise).
    fn io_uring(&self) -> Result<TaskWork, String>;
    /// Whether this process runs as root.
    fn is_root(&self) -> bool;
}

/// The running machine.
pub struct LiveSystem<'a> {
    /// Ring settings to try (`[runtime]` of the configuration).
    pub runtime: &'a crate::config::RuntimeConfig,
}

fn rlimit(resource: libc::__rlimit_resource_t) -> Rlimit {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    if unsafe { libc::getrlimit(resource, &mut r) } != 0 {
        return Rlimit {
            soft: None,
            hard: None,
        };
    }
    let v = |x: libc::rlim_t| (x != libc::RLIM_INFINITY).then_some(x);
    Rlimit {
        soft: v(r.rlim_cur),
        hard: v(r.rlim_max),
    }
}

impl SystemView for LiveSystem<'_> {
    fn read(&self, path: &str) -> Option<String> {
        std::fs::read_to_string(Path::new(path))
            .ok()
            .map(|s| s.trim().to_string())
    }

    fn nofile(&self) -> Rlimit {
        rlimit(libc::RLIMIT_NOFILE)
    }

    fn memlock(&self) -> Rlimit {
        rlimit(libc::RLIMIT_MEMLOCK)
    }

    fn cpus(&self) -> usize {
        std::thread::available_parallelism().map_or(1, |n| n.get())
    }

    fn io_uring(&self) -> Result<TaskWork, String> {
        crate::runtime::check_io_uring(self.runtime).map_err(|e| e.to_string())
    }

    fn is_root(&self) -> bool {
        crate::privileges::is_root()
    }
}
