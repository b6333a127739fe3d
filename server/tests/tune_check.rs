//! `pop3sd tune-check` on this machine: what it reports matches what /proc
//! and getrlimit say, and a limit too low for the asked load is a blocker
//! with a non-zero exit.

mod common;

use std::process::Command;

fn tune_check(args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let o = Command::new(common::bin())
        .arg("tune-check")
        .arg("--json")
        .args(args)
        .output()
        .expect("run pop3sd");
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "tune-check printed no JSON ({e}):\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o, v)
}

fn finding<'a>(v: &'a serde_json::Value, check: &str) -> &'a serde_json::Value {
    v.as_array()
        .expect("array")
        .iter()
        .find(|f| f["check"] == check)
        .unwrap_or_else(|| panic!("no {check} in {v:#}"))
}

fn proc(path: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

fn limit(resource: libc::__rlimit_resource_t) -> String {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit only writes the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(resource, &mut r) }, 0);
    let s = |x: libc::rlim_t| {
        if x == libc::RLIM_INFINITY {
            "unlimited".to_string()
        } else {
            x.to_string()
        }
    };
    format!("soft {} hard {}", s(r.rlim_cur), s(r.rlim_max))
}

#[test]
fn findings_match_proc_and_getrlimit() {
    let (o, v) = tune_check(&["--connections", "100"]);
    assert!(
        o.status.success(),
        "100 connections must be possible here: {v:#}"
    );
    assert_eq!(
        finding(&v, "RLIMIT_NOFILE")["observed"],
        limit(libc::RLIMIT_NOFILE)
    );
    assert_eq!(
        finding(&v, "RLIMIT_MEMLOCK")["observed"],
        limit(libc::RLIMIT_MEMLOCK)
    );
    assert_eq!(
        finding(&v, "net.core.somaxconn")["observed"],
        proc("/proc/sys/net/core/somaxconn")
    );
    assert_eq!(
        finding(&v, "net.ipv4.tcp_max_syn_backlog")["observed"],
        proc("/proc/sys/net/ipv4/tcp_max_syn_backlog")
    );
    assert_eq!(
        finding(&v, "net.ipv4.ip_local_port_range")["observed"],
        proc("/proc/sys/net/ipv4/ip_local_port_range")
    );
    assert_eq!(
        finding(&v, "net.ipv4.tcp_wmem")["observed"],
        proc("/proc/sys/net/ipv4/tcp_wmem")
    );
    assert_eq!(
        finding(&v, "net.ipv4.tcp_rmem")["observed"],
        proc("/proc/sys/net/ipv4/tcp_rmem")
    );
    let ulp = proc("/proc/sys/net/ipv4/tcp_available_ulp");
    let k = finding(&v, "kTLS");
    assert_eq!(k["observed"], format!("tcp_available_ulp={ulp}"));
    assert_eq!(
        k["message"]
            .as_str()
            .unwrap()
            .contains("offers the tls ULP"),
        ulp.split(' ').any(|u| u == "tls")
    );
    if let Ok(thp) = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") {
        assert_eq!(finding(&v, "transparent_hugepage")["observed"], thp.trim());
    }
    let cpus = std::thread::available_parallelism().unwrap().get();
    assert_eq!(finding(&v, "cores")["observed"], cpus.to_string());
    // The tests run the server on io_uring, so it must be usable here.
    assert_eq!(finding(&v, "io_uring")["level"], "ok", "{v:#}");
    match std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor") {
        Ok(g) => assert_eq!(finding(&v, "cpu governor")["observed"], g.trim()),
        Err(_) => assert_eq!(finding(&v, "cpu governor")["observed"], "not visible"),
    }
}

#[test]
fn a_deliberately_low_limit_is_a_blocker_with_a_non_zero_exit() {
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -Sn 256 && ulimit -Hn 256 && exec {} tune-check --connections 10000",
            common::bin()
        ))
        .output()
        .expect("bash");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(!o.status.success(), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("BLOCKER")
            && l.contains("RLIMIT_NOFILE")
            && l.contains("hard 256")),
        "{out}"
    );
    assert!(out.contains("LimitNOFILE=20072"), "{out}");
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("1 blocker(s)"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_config_whose_backlog_exceeds_somaxconn_gets_the_sysctl_line() {
    let somaxconn: u64 = proc("/proc/sys/net/core/somaxconn").parse().unwrap();
    let want = (somaxconn + 1).min(65535);
    if want <= somaxconn {
        return; // somaxconn is already at the maximum backlog pop3sd accepts
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("pop3sd.toml");
    std::fs::write(
        &cfg,
        format!("storage_root = \"mail\"\n[runtime]\ncores = 1\nbacklog = {want}\n"),
    )
    .unwrap();
    let (_, v) = tune_check(&["--config", cfg.to_str().unwrap(), "--connections", "10"]);
    let f = finding(&v, "net.core.somaxconn");
    assert_eq!(f["level"], "warn", "{f:#}");
    assert_eq!(f["fix"], format!("sysctl -w net.core.somaxconn={want}"));
    assert_eq!(
        finding(&v, "cores")["message"],
        format!(
            "1 event-loop core(s) on {} CPU(s)",
            std::thread::available_parallelism().unwrap().get()
        )
    );
}
