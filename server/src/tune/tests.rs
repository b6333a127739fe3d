use std::collections::HashMap;

use super::*;
use crate::config::{RuntimeConfig, TaskWork};

/// A made-up machine.
struct Fake {
    files: HashMap<&'static str, String>,
    nofile: Rlimit,
    memlock: Rlimit,
    cpus: usize,
    uring: Result<TaskWork, String>,
}

impl Fake {
    /// A well-tuned machine.
    fn good() -> Fake {
        let files = [
            ("/proc/sys/kernel/osrelease", "6.1.0-13-amd64"),
            ("/proc/sys/kernel/io_uring_disabled", "0"),
            ("/proc/self/status", "Name:\tx\nSeccomp:\t0\n"),
            ("/proc/sys/net/core/somaxconn", "4096"),
            ("/proc/sys/net/ipv4/tcp_max_syn_backlog", "4096"),
            ("/proc/sys/vm/max_map_count", "262144"),
            ("/proc/sys/net/ipv4/ip_local_port_range", "1024\t65535"),
            ("/proc/sys/net/ipv4/tcp_wmem", "4096\t131072\t4194304"),
            ("/proc/sys/net/ipv4/tcp_rmem", "4096\t131072\t6291456"),
            ("/proc/sys/net/ipv4/tcp_available_ulp", "espintcp mptcp tls"),
            ("/proc/sys/net/ipv4/tcp_congestion_control", "cubic"),
            (
                "/proc/sys/net/ipv4/tcp_available_congestion_control",
                "reno cubic bbr",
            ),
            (
                "/sys/kernel/mm/transparent_hugepage/enabled",
                "always [madvise] never",
            ),
            (
                "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
                "performance",
            ),
        ]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
        Fake {
            files,
            nofile: Rlimit {
                soft: Some(1024),
                hard: Some(1 << 20),
            },
            memlock: Rlimit {
                soft: Some(8 << 20),
                hard: Some(8 << 20),
            },
            cpus: 8,
            uring: Ok(TaskWork::Defer),
        }
    }
}

impl SystemView for Fake {
    fn read(&self, path: &str) -> Option<String> {
        self.files.get(path).cloned()
    }
    fn nofile(&self) -> Rlimit {
        self.nofile
    }
    fn memlock(&self) -> Rlimit {
        self.memlock
    }
    fn cpus(&self) -> usize {
        self.cpus
    }
    fn io_uring(&self) -> Result<TaskWork, String> {
        self.uring.clone()
    }
    fn is_root(&self) -> bool {
        false
    }
}

fn target(connections: usize, cores: usize) -> Target {
    Target {
        connections,
        cores,
        runtime: RuntimeConfig::default(),
        record_size: 16384,
        listeners: Vec::new(),
    }
}

fn find<'a>(f: &'a [Finding], check: &str) -> &'a Finding {
    f.iter()
        .find(|x| x.check == check)
        .unwrap_or_else(|| panic!("no finding {check}: {f:?}"))
}

#[test]
fn a_good_machine_has_no_warnings() {
    let f = check(&target(10_000, 4), &Fake::good());
    let bad: Vec<_> = f.iter().filter(|x| x.level >= Level::Warn).collect();
    assert!(bad.is_empty(), "{bad:?}");
    // Every check ran.
    assert_eq!(f.len(), 14, "{f:?}");
    assert!(find(&f, "kTLS").message.contains("offers the tls ULP"));
}

#[test]
fn a_low_hard_nofile_limit_blocks_with_the_exact_numbers() {
    let mut m = Fake::good();
    m.nofile = Rlimit {
        soft: Some(1024),
        hard: Some(4096),
    };
    let t = target(10_000, 2);
    let f = check(&t, &m);
    let n = find(&f, "RLIMIT_NOFILE");
    assert_eq!(n.level, Level::Blocker);
    assert_eq!(n.observed, "soft 1024 hard 4096");
    let need = t.descriptors_needed();
    assert_eq!(need, 20_072);
    assert!(n
        .fix
        .as_deref()
        .unwrap()
        .contains(&format!("LimitNOFILE={need}")));
    // A soft limit below the need alone is fine: pop3sd raises it.
    m.nofile.hard = None;
    assert_eq!(find(&check(&t, &m), "RLIMIT_NOFILE").level, Level::Ok);
}

#[test]
fn memlock_matters_only_before_5_12() {
    let mut m = Fake::good();
    m.memlock = Rlimit {
        soft: Some(64 * 1024),
        hard: Some(64 * 1024),
    };
    let t = target(100, 16);
    assert_eq!(find(&check(&t, &m), "RLIMIT_MEMLOCK").level, Level::Ok);
    m.files
        .insert("/proc/sys/kernel/osrelease", "5.10.0-26-amd64".into());
    let f = check(&t, &m);
    let x = find(&f, "RLIMIT_MEMLOCK");
    assert_eq!(x.level, Level::Blocker, "{x:?}");
    assert!(x.fix.as_deref().unwrap().starts_with("ulimit -l "));
}

#[test]
fn io_uring_refused_blocks_with_the_matching_fix() {
    let mut m = Fake::good();
    m.uring = Err("Operation not permitted".into());
    m.files
        .insert("/proc/sys/kernel/io_uring_disabled", "2".into());
    let f = check(&target(100, 2), &m);
    let x = find(&f, "io_uring");
    assert_eq!(x.level, Level::Blocker);
    assert_eq!(
        x.fix.as_deref(),
        Some("sysctl -w kernel.io_uring_disabled=0")
    );
    m.files
        .insert("/proc/sys/kernel/io_uring_disabled", "0".into());
    m.files.insert("/proc/self/status", "Seccomp:\t2\n".into());
    let x = check(&target(100, 2), &m);
    assert!(find(&x, "io_uring")
        .fix
        .as_deref()
        .unwrap()
        .contains("seccomp"));
    // An old kernel that refuses deferred task work still serves, with a
    // warning that names the mode in use.
    m.files.insert("/proc/self/status", "Seccomp:\t0\n".into());
    m.uring = Ok(TaskWork::Cooperative);
    let x = check(&target(100, 2), &m);
    let w = find(&x, "io_uring");
    assert_eq!(w.level, Level::Warn);
    assert!(w.message.contains("\"cooperative\""), "{}", w.message);
    m.uring = Ok(TaskWork::Defer);
    assert_eq!(
        find(&check(&target(100, 2), &m), "io_uring").level,
        Level::Ok
    );
    // With the legacy driver io_uring is not needed.
    let mut t = target(100, 2);
    t.runtime.driver = Driver::Legacy;
    assert_eq!(find(&check(&t, &m), "io_uring").level, Level::Info);
}

#[test]
fn small_backlogs_ports_and_other_settings_warn() {
    let mut m = Fake::good();
    m.files.insert("/proc/sys/net/core/somaxconn", "128".into());
    m.files.insert("/proc/sys/vm/max_map_count", "65530".into());
    m.files.insert(
        "/proc/sys/net/ipv4/ip_local_port_range",
        "32768 60999".into(),
    );
    m.files.insert(
        "/sys/kernel/mm/transparent_hugepage/enabled",
        "[always] madvise never".into(),
    );
    m.files.insert(
        "/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor",
        "powersave".into(),
    );
    m.files
        .insert("/proc/sys/net/ipv4/tcp_wmem", "4096 16384 4194304".into());
    let mut t = target(50_000, 8);
    t.runtime.sqpoll = true;
    let f = check(&t, &m);
    let s = find(&f, "net.core.somaxconn");
    assert_eq!((s.level, s.observed.as_str()), (Level::Warn, "128"));
    assert_eq!(s.fix.as_deref(), Some("sysctl -w net.core.somaxconn=1024"));
    assert_eq!(find(&f, "net.ipv4.ip_local_port_range").level, Level::Warn);
    // 50,000 connections may hold 100,000 maps and more: the default
    // 65,530 is too few.
    let maps = find(&f, "vm.max_map_count");
    assert_eq!((maps.level, maps.observed.as_str()), (Level::Warn, "65530"));
    assert_eq!(
        maps.fix.as_deref(),
        Some("sysctl -w vm.max_map_count=101024 (and in /etc/sysctl.d/ to keep it)")
    );
    assert_eq!(find(&f, "transparent_hugepage").level, Level::Warn);
    assert_eq!(find(&f, "cpu governor").level, Level::Warn);
    assert_eq!(
        find(&f, "cores").level,
        Level::Warn,
        "SQPOLL on 8 of 8 CPUs"
    );
    assert_eq!(find(&f, "net.ipv4.tcp_wmem").level, Level::Info);
    // None of these stops the server.
    assert!(f.iter().all(|x| x.level != Level::Blocker), "{f:?}");
    let text = render(&t, &f);
    assert!(text.contains("0 blocker(s), 6 warning(s)"), "{text}");
}

#[test]
fn missing_files_are_reported_not_guessed() {
    let mut m = Fake::good();
    m.files.clear();
    let f = check(&target(100, 1), &m);
    assert_eq!(find(&f, "cpu governor").observed, "not visible");
    assert!(f.iter().all(|x| x.check != "net.core.somaxconn"));
    assert!(find(&f, "kTLS").message.contains("no tls ULP"));
}

#[test]
fn bbr_on_loopback_warns_and_a_configured_algorithm_is_checked() {
    let mut m = Fake::good();
    m.files
        .insert("/proc/sys/net/ipv4/tcp_congestion_control", "bbr\n".into());
    let mut t = target(100, 1);
    t.listeners = vec![
        ("127.0.0.1:995".parse().unwrap(), None),
        ("[::1]:995".parse().unwrap(), Some("cubic".into())),
        ("192.0.2.1:995".parse().unwrap(), None),
        ("192.0.2.1:1995".parse().unwrap(), Some("dctcp".into())),
    ];
    let f: Vec<_> = check(&t, &m)
        .into_iter()
        .filter(|x| x.check == "tcp congestion control")
        .collect();
    assert_eq!(f.len(), 4, "{f:?}");
    assert_eq!((f[0].level, f[0].observed.as_str()), (Level::Warn, "bbr"));
    assert!(f[0].message.contains("127.0.0.1:995"), "{:?}", f[0]);
    assert!(f[0].fix.as_deref().unwrap().contains("cubic"), "{:?}", f[0]);
    assert_eq!((f[1].level, f[1].observed.as_str()), (Level::Ok, "cubic"));
    assert!(f[1].message.contains("configured"), "{:?}", f[1]);
    assert_eq!(f[2].level, Level::Info, "{:?}", f[2]);
    assert!(f[2].message.contains("fq"), "{:?}", f[2]);
    assert_eq!(f[3].level, Level::Warn, "{:?}", f[3]);
    assert_eq!(f[3].fix.as_deref(), Some("modprobe tcp_dctcp"));
    // Without a configuration: one finding for the system's default.
    let f = check(&target(100, 1), &m);
    assert_eq!(find(&f, "tcp congestion control").level, Level::Info);
}

#[test]
fn sqpoll_on_one_cpu_is_told_to_turn_it_off() {
    let mut m = Fake::good();
    m.cpus = 1;
    let mut t = target(1_000, 1);
    t.runtime.sqpoll = true;
    let f = check(&t, &m);
    let cores = find(&f, "cores");
    assert_eq!(cores.level, Level::Warn);
    // Not `cores = 0`, which means one per CPU: the same again.
    let fix = cores.fix.as_deref().unwrap_or_default();
    assert!(fix.starts_with("sqpoll = false"), "{fix}");
    // With CPUs to spare, fewer cores are offered first.
    m.cpus = 8;
    let t = Target { cores: 8, ..t };
    let fix = find(&check(&t, &m), "cores")
        .fix
        .clone()
        .unwrap_or_default();
    assert!(fix.starts_with("cores = 4 under [runtime]"), "{fix}");
}
