//! `pop3sd tune-check`: what on this machine would limit the configured
//! load, and the exact command or config line that changes it.
//!
//! The checks are pure functions of a [`SystemView`] and the configuration,
//! so they are tested against made-up machines; [`LiveSystem`] reads the real
//! one (/proc, /sys, getrlimit, a trial io_uring ring). Findings that would
//! stop the configured load from working are blockers, and make the command
//! exit non-zero. docs/tuning.md explains each one.

mod system;

pub use system::{LiveSystem, Rlimit, SystemView};

use serde::Serialize;

use crate::config::{Config, Driver, KtlsMode};

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    /// Fine for the configured load.
    Ok,
    /// Worth knowing; nothing to change for this load.
    Info,
    /// Costs performance or capacity; the server still works.
    Warn,
    /// The configured load cannot work until this changes.
    Blocker,
}

/// One check's result.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// What was checked (a sysctl or limit name).
    pub check: &'static str,
    pub level: Level,
    /// The value read from the machine, as read (for scripts and tests).
    pub observed: String,
    /// What it means for this configuration.
    pub message: String,
    /// The command or config line that changes it, where one would help.
    pub fix: Option<String>,
}

/// The load the checks measure the machine against.
#[derive(Debug, Clone)]
pub struct Target {
    /// Connections open at once (default: `limits.max_connections`).
    pub connections: usize,
    /// Event-loop cores.
    pub cores: usize,
    pub runtime: crate::config::RuntimeConfig,
    /// Plaintext bytes per TLS record (`tls.record_size`).
    pub record_size: usize,
    /// Each POP3 listener's address and the congestion control it asks for
    /// (None: the system's); empty when no configuration was given.
    pub listeners: Vec<(std::net::SocketAddr, Option<String>)>,
}

impl Target {
    /// The load a configuration asks for; `connections` overrides its limit.
    pub fn from_config(cfg: &Config, connections: Option<usize>) -> Target {
        Target {
            connections: connections.unwrap_or(cfg.limits.max_connections),
            cores: crate::runtime::core_count(cfg),
            runtime: cfg.runtime.clone(),
            record_size: cfg.tls.record_size,
            listeners: cfg
                .listeners
                .iter()
                .map(|l| (l.address, l.congestion(&cfg.runtime).map(str::to_string)))
                .collect(),
        }
    }

    /// The load of a server with the default configuration.
    pub fn defaults(connections: Option<usize>) -> Target {
        let runtime = crate::config::RuntimeConfig::default();
        Target {
            connections: connections
                .unwrap_or(crate::config::LimitsConfig::default().max_connections),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            runtime,
            record_size: crate::config::TlsConfig::default().record_size,
            listeners: Vec::new(),
        }
    }

    /// Descriptors needed: a socket per connection, a lock file per
    /// logged-in one, plus listeners, rings, logs and the blocking pool.
    pub fn descriptors_needed(&self) -> u64 {
        2 * self.connections as u64 + 64 + 4 * self.cores as u64
    }

    /// Memory maps the process may hold: a session that has sent mail
    /// keeps its segment's map until QUIT, and the range sessions' maps
    /// are placed in is split into up to two kernel map entries per map
    /// (docs/architecture.md, "Where the maps live"); plus the libraries,
    /// thread stacks and allocator.
    pub fn map_entries_needed(&self) -> u64 {
        2 * self.connections as u64 + 1024
    }

    /// Bytes of one core's io_uring rings: 64-byte SQEs, twice as many
    /// 16-byte CQEs, the SQ index array, rounded up to pages.
    pub fn ring_bytes_per_core(&self) -> u64 {
        let e = u64::from(self.runtime.ring_entries.max(256)).next_power_of_two();
        let raw = e * 64 + 2 * e * 16 + e * 4 + 4096;
        raw.div_ceil(4096) * 4096
    }
}

/// Runs every check.
pub fn check(t: &Target, sys: &dyn SystemView) -> Vec<Finding> {
    let mut f = Vec::new();
    nofile(t, sys, &mut f);
    memlock(t, sys, &mut f);
    io_uring(t, sys, &mut f);
    backlog(t, sys, &mut f);
    map_count(t, sys, &mut f);
    port_range(t, sys, &mut f);
    socket_buffers(t, sys, &mut f);
    congestion(t, sys, &mut f);
    cores(t, sys, &mut f);
    ktls(t, sys, &mut f);
    thp(sys, &mut f);
    governor(sys, &mut f);
    f
}

fn limit_text(v: Option<u64>) -> String {
    v.map_or_else(|| "unlimited".to_string(), |v| v.to_string())
}

fn nofile(t: &Target, sys: &dyn SystemView, f: &mut Vec<Finding>) {
    let need = t.descriptors_needed();
    let l = sys.nofile();
    let observed = format!("soft {} hard {}", limit_text(l.soft), limit_text(l.hard));
    let fix = format!(
        "ulimit -n {need} in the starting shell, or LimitNOFILE={need} in pop3sd.service \
         (raise the hard limit: /etc/security/limits.conf or systemd)"
    );
    let (level, message, fix) = if l.hard.is_some_and(|h| h < need) {
        (
            Level::Blocker,
            format!(
                "{} connections need {need} descriptors; the hard limit allows only {}",
                t.connections,
                limit_text(l.hard)
            ),
            Some(fix),
        )
    } else if l.soft.is_some_and(|s| s < need) {
        (
            Level::Ok,
            format!(
                "soft limit below the {need} needed, but pop3sd raises it to the hard limit at start"
            ),
            None,
        )
    } else {
        (
            Level::Ok,
            format!("enough for {} connections ({need} needed)", t.connections),
            None,
        )
    };
    f.push(Finding {
        check: "RLIMIT_NOFILE",
        level,
        observed,
        message,
        fix,
    });
}

/// Kernel version as (major, minor) from /proc/sys/kernel/osrelease.
fn kernel(sys: &dyn SystemView) -> Option<(u32, u32)> {
    let r = sys.read("/proc/sys/kernel/osrelease")?;
    let mut it = r.split(|c: char| !c.is_ascii_digit());
    Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
}

fn memlock(t: &Target, sys: &dyn SystemView, f: &mut Vec<Finding>) {
    let need = t.ring_bytes_per_core() * t.cores as u64;
    let l = sys.memlock();
    let observed = format!("soft {} hard {}", limit_text(l.soft), limit_text(l.hard));
    // Since 5.12 io_uring memory is charged to the memory cgroup, not to
    // RLIMIT_MEMLOCK; before, every ring had to fit under it.
    let charged = kernel(sys).is_some_and(|k| k < (5, 12));
    let short = l.soft.is_some_and(|s| s < need);
    let (level, message) = match (t.runtime.driver, charged && short) {
        (Driver::IoUring, true) => (
            Level::Blocker,
            format!(
                "this kernel charges io_uring rings to RLIMIT_MEMLOCK: {} rings of {} entries need {} KiB",
                t.cores,
                t.runtime.ring_entries,
                need / 1024
            ),
        ),
        (_, _) if charged => (
            Level::Ok,
            format!("enough for the rings ({} KiB)", need / 1024),
        ),
        _ => (
            Level::Ok,
            format!(
                "kernel 5.12+ charges io_uring rings ({} KiB here) to the memory cgroup, not to this limit",
                need / 1024
            ),
        ),
    };
    let fix = (level == Level::Blocker).then(|| {
        let kib = need.div_ceil(1024);
        format!("ulimit -l {kib}, or LimitMEMLOCK={kib}K in pop3sd.service")
    });
    f.push(Finding {
        check: "RLIMIT_MEMLOCK",
        level,
        observed,
        message,
        fix,
    });
}

fn io_uring(t: &Target, sys: &dyn SystemView, f: &mut Vec<Finding>) {
    let disabled = sys.read("/proc/sys/kernel/io_uring_disabled");
    let seccomp = sys
        .read("/proc/self/status")
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Seccomp:").map(|v| v.trim().to_string()))
        })
        .unwrap_or_else(|| "?".into());
    let observed = format!(
        "kernel.io_uring_disabled={} seccomp={seccomp}",
        disabled.as_deref().unwrap_or("absent")
    );
    if t.runtime.driver == Driver::Legacy {
        f.push(Finding {
            check: "io_uring",
            level: Level::Info,
            observed,
            message: "runtime.driver = \"legacy\": epoll is used, io_uring not needed".into(),
            fix: None,
        });
        return;
    }
    let (level, message, fix) = match sys.io_uring() {
        Ok(_) if t.runtime.sqpoll => (
            Level::Ok,
            format!(
                "a ring of {} entries with SQPOLL can be created",
                t.runtime.ring_entries
            ),
            None,
        ),
        Ok(mode) if mode == t.runtime.task_work => (
            Level::Ok,
            format!(
                "a ring of {} entries with task_work = \"{}\" can be created",
                t.runtime.ring_entries,
                mode.name()
            ),
            None,
        ),
        Ok(mode) => (
            Level::Warn,
            format!(
                "this kernel refuses task_work = \"{}\" (deferred needs Linux 6.1, cooperative 5.19): rings use \"{}\", and completions interrupt busy cores more often",
                t.runtime.task_work.name(),
                mode.name()
            ),
            Some(format!(
                "upgrade the kernel, or set task_work = \"{}\" under [runtime] to silence this",
                mode.name()
            )),
        ),
        Err(e) => {
            let fix = match disabled.as_deref() {
                Some("2") => "sysctl -w kernel.io_uring_disabled=0".to_string(),
                Some("1") if !sys.is_root() => {
                    "sysctl -w kernel.io_uring_disabled=0, or add pop3sd's user to the group in kernel.io_uring_group".to_string()
                }
                _ if seccomp == "2" => {
                    "allow io_uring_setup, io_uring_enter and io_uring_register in the seccomp profile (container runtime)".to_string()
                }
                _ => "set driver = \"legacy\" under [runtime] to serve with epoll".to_string(),
            };
            (Level::Blocker, format!("io_uring unusable: {e}"), Some(fix))
        }
    };
    f.push(Finding {
        check: "io_uring",
        level,
        observed,
        message,
        fix,
    });
}

/// Tabs and runs of spaces (as /proc prints them) as single spaces.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Whether the kernel offers kernel TLS (the "tls" upper-layer protocol).
pub fn ktls_offered(sys: &dyn SystemView) -> bool {
    sys.read("/proc/sys/net/ipv4/tcp_available_ulp")
        .is_some_and(|u| u.split_whitespace().any(|x| x == "tls"))
}

fn read_u64(sys: &dyn SystemView, path: &str) -> Option<u64> {
    sys.read(path)?.split_whitespace().next()?.parse().ok()
}

fn backlog(t: &Target, sys: &dyn SystemView, f: &mut Vec<Finding>) {
    let want = t.runtime.backlog.max(1) as u64;
    for (check, path) in [
        ("net.core.somaxconn", "/proc/sys/net/core/somaxconn"),
        (
            "net.ipv4.tcp_max_syn_backlog",
            "/proc/sys/net/ipv4/tcp_max_syn_backlog",
        ),
    ] {
        let Some(v) = read_u64(sys, path) else {
            continue;
        };
        let (level, message, fix) = if v < want {
            (
                Level::Warn,
                format!(
                    "below runtime.backlog ({want}): the kernel silently caps the queue, and bursts of new connections are dropped"
                ),
                Some(format!("sysctl -w {check}={want}")),
            )
        } else {
            (
                Level::Ok,
                format!("at least runtime.backlog ({want})"),
                None,
            )
        };
        f.push(Finding {
            check,
            level,
            observed: v.to_string(),
            message,
            fix,
        });
    }
}

fn map_count(t: &Target, sys: &dyn SystemView, f: &mut Vec<Finding>) {
    let Some(v) = read_u64(sys, "/proc/sys/vm/max_map_count") else {
        return;
    };
    let need = t.map_entries_needed();
    let (level, message, fix) = if v < need {
        (
            Level::Warn,
            format!(
                "{} connections that have all retrieved mail may hold up to {need} memory maps; past {v}, RETR and TOP fail with [SYS/TEMP]",
                t.connections
            ),
            Some(format!(
                "sysctl -w vm.max_map_count={need} (and in /etc/sysctl.d/ to keep it)"
            )),
        )
    } else {
        (
            Level::Ok,
            format!("room for the memory maps of {} connections", t.connections),
            None,
        )
    };
    f.push(Finding {
        check: "vm.max_map_count",
        level,
        observed: v.to_string(),
        message,
        fix,
    });
}

fn port_range(t: &Target, sys: &dyn SystemView, f: &mut Vec<Finding>) {
    let Some(r) = sys.read("/proc/sys/net/ipv4/ip_local_port_range") else {
        return;
    };
    let nums: Vec<u64> = r
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    let [lo, hi] = nums[..] else { return };
    let ports = hi.saturating_sub(lo) + 1;
    let (level, message, fix) = if (ports as usize) < t.connections {
        (
            Level::Warn,
            format!(
                "a load generator on this machine can hold only {ports} connections per server address ({} configured); the server itself is not limited",
                t.connections
            ),
            Some("sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\" (or spread pop3-loadgen over several 127.0.0.x addresses)".into()),
        )
    } else {
        (
            Level::Ok,
            format!("{ports} ephemeral ports for load generation"),
            None,
        )
    };
    f.push(Finding {
        check: "net.ipv4.ip_local_port_range",
        level,
        observed: one_line(&r),
        message,
        fix,
    });
}

fn socket_buffers(t: &Target, sys: &dyn SystemView, f: &mut Vec<Finding>) {
    // RETR writes a whole output buffer (records of tls.record_size) at once.
    let write = crate::runtime::buffers::BufferSizes::new(
        t.runtime.write_buffer_records,
        t.record_size,
        t.runtime.read_buffer_size,
        t.runtime.buffer_pool_size,
    )
    .out as u64;
    for (check, path) in [
        ("net.ipv4.tcp_wmem", "/proc/sys/net/ipv4/tcp_wmem"),
        ("net.ipv4.tcp_rmem", "/proc/sys/net/ipv4/tcp_rmem"),
    ] {
        let Some(v) = sys.read(path) else { continue };
        let nums: Vec<u64> = v
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        let [_, default, max] = nums[..] else {
            continue;
        };
        let (level, message, fix) = if check.ends_with("wmem") && default < write {
            (
                Level::Info,
                format!(
                    "default send buffer ({default}) is smaller than one RETR write ({write}); autotuning grows it, up to {max}"
                ),
                Some(format!(
                    "sysctl -w net.ipv4.tcp_wmem=\"4096 {write} {}\"",
                    max.max(4 << 20)
                )),
            )
        } else {
            (
                Level::Ok,
                format!(
                    "default {default}, max {max}; worst case for {} busy connections: {} MiB",
                    t.connections,
                    (default * t.connections as u64) >> 20
                ),
                None,
            )
        };
        f.push(Finding {
            check,
            level,
            observed: one_line(&v),
            message,
            fix,
        });
    }
}

/// BBR paces each connection; without the fq qdisc (always so on loopback,
/// whose qdisc is noqueue) the kernel does it with a timer per burst, which
/// made RETR over loopback cost 26–49 % more server CPU per MiB than with
/// cubic (docs/benchmarks.md, "TCP congestion control").
fn congestion(t: &Target, sys: &dyn SystemView, f: &mut Vec<Finding>) {
    let Some(default) = sys.read(crate::runtime::congestion::DEFAULT) else {
        return;
    };
    let default = default.trim().to_string();
    let loaded = sys
        .read("/proc/sys/net/ipv4/tcp_available_congestion_control")
        .unwrap_or_default();
    let loaded: Vec<&str> = loaded.split_whitespace().collect();
    let mut listeners: Vec<(Option<std::net::SocketAddr>, Option<&str>)> = t
        .listeners
        .iter()
        .map(|(a, c)| (Some(*a), c.as_deref()))
        .collect();
    if listeners.is_empty() {
        listeners.push((None, t.runtime.tcp_congestion.as_deref()));
    }
    for (addr, configured) in listeners {
        let cc = configured.unwrap_or(&default);
        let whose = match addr {
            Some(a) => format!("listener {a}: "),
            None => String::new(),
        };
        let origin = if configured.is_some() {
            "configured"
        } else {
            "the system's default"
        };
        let loopback = addr.is_some_and(|a| a.ip().is_loopback());
        let (level, message, fix) = if configured.is_some() && !loaded.contains(&cc) {
            (
                Level::Warn,
                format!("{whose}\"{cc}\" is configured but not loaded (loaded: {}); start-up loads the module tcp_{cc} if it exists and pop3sd starts with CAP_NET_ADMIN, and fails otherwise", loaded.join(" ")),
                Some(format!("modprobe tcp_{cc}")),
            )
        } else if cc == "bbr" && loopback {
            (
                Level::Warn,
                format!("{whose}bbr ({origin}) on a loopback listener: loopback has no fq qdisc, so the kernel paces every connection with a timer per burst; cubic instead cut the server CPU per MiB of RETR by 20–33 % over loopback (docs/benchmarks.md)"),
                Some("tcp_congestion = \"cubic\" under this [[listener]]".into()),
            )
        } else if cc == "bbr" {
            (
                Level::Info,
                format!("{whose}bbr ({origin}): cheap pacing needs the fq qdisc on the outgoing interface (tc qdisc show); without it the kernel paces with a timer per burst, which costs CPU per byte sent"),
                Some("tc qdisc replace dev <interface> root fq; or tcp_congestion = \"cubic\" for a listener that serves only a LAN or a local proxy".into()),
            )
        } else {
            (Level::Ok, format!("{whose}{cc} ({origin})"), None)
        };
        f.push(Finding {
            check: "tcp congestion control",
            level,
            observed: cc.to_string(),
            message,
            fix,
        });
    }
}

fn cores(t: &Target, sys: &dyn SystemView, f: &mut Vec<Finding>) {
    let cpus = sys.cpus();
    let mut level = Level::Ok;
    let mut message = format!("{} event-loop core(s) on {cpus} CPU(s)", t.cores);
    let mut fix = None;
    if t.cores > cpus {
        level = Level::Warn;
        message = format!(
            "{} cores configured but only {cpus} CPU(s) available: cores share CPUs and latency suffers",
            t.cores
        );
        fix = Some(format!("cores = {cpus} under [runtime]"));
    } else if t.runtime.sqpoll && 2 * t.cores > cpus {
        level = Level::Warn;
        message = format!(
            "SQPOLL adds a kernel thread per core that spins for sqpoll_idle_ms: {} cores need {} CPUs, {cpus} available",
            t.cores,
            2 * t.cores
        );
        // (`cores = 0` means one per CPU: never a fix here.)
        fix = Some(if cpus >= 2 {
            format!("cores = {} under [runtime], or sqpoll = false", cpus / 2)
        } else {
            "sqpoll = false under [runtime] (one CPU cannot give SQPOLL a CPU of its own)"
                .to_string()
        });
    }
    f.push(Finding {
        check: "cores",
        level,
        observed: cpus.to_string(),
        message,
        fix,
    });
}

fn ktls(t: &Target, sys: &dyn SystemView, f: &mut Vec<Finding>) {
    let ulps = sys
        .read("/proc/sys/net/ipv4/tcp_available_ulp")
        .unwrap_or_default();
    let available = ktls_offered(sys);
    let message = match (available, t.runtime.ktls) {
        (_, KtlsMode::Off) => "runtime.ktls = \"off\"".to_string(),
        (true, _) => "the kernel offers the tls ULP; pop3sd still encrypts in user space (its own record layer, or rustls's: tls.record_layer; its kTLS data path is not implemented), so nothing to change".to_string(),
        (false, _) => "the kernel offers no tls ULP (no kTLS); pop3sd encrypts in user space (its own record layer, or rustls's: tls.record_layer), as it always does".to_string(),
    };
    f.push(Finding {
        check: "kTLS",
        level: Level::Info,
        observed: format!("tcp_available_ulp={ulps}"),
        message,
        fix: None,
    });
}

fn thp(sys: &dyn SystemView, f: &mut Vec<Finding>) {
    let Some(v) = sys.read("/sys/kernel/mm/transparent_hugepage/enabled") else {
        return;
    };
    let mode = v
        .split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_string())
        .unwrap_or_default();
    let (level, message, fix) = if mode == "always" {
        (
            Level::Warn,
            "\"always\" backs small heaps with 2 MiB pages: idle-connection memory and RSS grow; khugepaged adds latency spikes".to_string(),
            Some("echo madvise > /sys/kernel/mm/transparent_hugepage/enabled".to_string()),
        )
    } else {
        (
            Level::Ok,
            format!("\"{mode}\": huge pages only where asked for"),
            None,
        )
    };
    f.push(Finding {
        check: "transparent_hugepage",
        level,
        observed: v,
        message,
        fix,
    });
}

fn governor(sys: &dyn SystemView, f: &mut Vec<Finding>) {
    let g = sys.read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor");
    let (level, observed, message, fix) = match g {
        None => (
            Level::Info,
            "not visible".to_string(),
            "no cpufreq here (typical of virtual machines): the host decides".to_string(),
            None,
        ),
        Some(g) if g == "performance" => (
            Level::Ok,
            g,
            "CPUs run at full clock".into(),
            None,
        ),
        Some(g) => (
            Level::Warn,
            g.clone(),
            format!("\"{g}\" lowers the clock between bursts: handshake latency and CPU per operation rise"),
            Some("cpupower frequency-set -g performance".into()),
        ),
    };
    f.push(Finding {
        check: "cpu governor",
        level,
        observed,
        message,
        fix,
    });
}

/// The findings as the text operators read.
pub fn render(t: &Target, findings: &[Finding]) -> String {
    let mut out = format!(
        "pop3sd tune-check: {} connections on {} core(s)\n",
        t.connections, t.cores
    );
    for x in findings {
        let tag = match x.level {
            Level::Ok => "ok",
            Level::Info => "info",
            Level::Warn => "WARN",
            Level::Blocker => "BLOCKER",
        };
        out.push_str(&format!(
            "{tag:<8} {:<30} {}\n         {:<30} {}\n",
            x.check, x.observed, "", x.message
        ));
        if let Some(fix) = &x.fix {
            out.push_str(&format!("         {:<30} fix: {fix}\n", ""));
        }
    }
    let count = |l| findings.iter().filter(|x| x.level == l).count();
    out.push_str(&format!(
        "{} blocker(s), {} warning(s)\n",
        count(Level::Blocker),
        count(Level::Warn)
    ));
    out
}

#[cfg(test)]
mod tests;
