//! `pop3sd serve` and `pop3sd check-config` from a written configuration:
//! drivers, RSA certificates, configuration errors.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::have;
use pop3sd::config::{Config, Driver};
use pop3sd::demo;

fn prepare(dir: &Path) -> (Config, demo::DemoInfo) {
    demo::prepare(&common::demo_options(dir.join("root"), 2, 2)).unwrap()
}

fn write_config(cfg: &Config, path: &Path) {
    std::fs::write(path, cfg.to_toml()).unwrap();
}

/// Starts `pop3sd serve`, waits for "serving" in its log; returns the child and log path.
fn serve(config: &Path, env: &[(&str, &str)]) -> (std::process::Child, std::path::PathBuf) {
    let log = config.with_extension("log");
    let mut cmd = Command::new(common::bin());
    cmd.arg("serve")
        .arg("--config")
        .arg(config)
        .stdout(Stdio::null());
    cmd.stderr(std::fs::File::create(&log).unwrap());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    (child, log)
}

fn wait_for(log: &Path, needle: &str) -> bool {
    for _ in 0..200 {
        if std::fs::read_to_string(log)
            .unwrap_or_default()
            .contains(needle)
        {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

fn pop3s_login(
    addr: &str,
    sni: &str,
    cafile: &Path,
    user: &str,
    password: &str,
) -> std::process::Output {
    pop3s_logins(addr, sni, cafile, user, password, 1)
}

/// `sessions` logins one after the other (USER, PASS, STAT, QUIT, each
/// answered +OK); prints the last one's TLS version and certificate subject.
fn pop3s_logins(
    addr: &str,
    sni: &str,
    cafile: &Path,
    user: &str,
    password: &str,
    sessions: usize,
) -> std::process::Output {
    let script = format!(
        r#"
import socket, ssl, sys
host, port = "{addr}".rsplit(":", 1)
ctx = ssl.create_default_context(cafile=r"{ca}")
for i in range({sessions}):
    raw = socket.create_connection((host, int(port)), 10)
    s = ctx.wrap_socket(raw, server_hostname="{sni}")
    f = s.makefile("rb")
    assert f.readline().startswith(b"+OK")
    for line in [b"USER {user}\r\n", b"PASS {password}\r\n", b"STAT\r\n", b"QUIT\r\n"]:
        s.sendall(line)
        r = f.readline()
        assert r.startswith(b"+OK"), (i, r)
    if i == {sessions} - 1:
        print(s.version(), s.getpeercert()["subject"])
    s.close()
"#,
        ca = cafile.display()
    );
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .output()
        .unwrap()
}

#[test]
fn missing_io_uring_stops_start_up_with_a_clear_message() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, _) = prepare(d.path());
    let path = d.path().join("pop3sd.toml");
    write_config(&cfg, &path);
    // monoio's probe reports io_uring as unusable under this variable, as it
    // would on a kernel without it or under seccomp.
    let o = Command::new(common::bin())
        .args(["serve", "--config"])
        .arg(&path)
        .env("MONOIO_FORCE_LEGACY_DRIVER", "1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("io_uring is not available"), "{err}");
    assert!(
        err.contains("driver = \"legacy\""),
        "the message says how to opt in to epoll: {err}"
    );
}

#[test]
fn legacy_driver_only_when_configured_and_logged() {
    let d = tempfile::tempdir().unwrap();
    let (mut cfg, info) = prepare(d.path());
    cfg.runtime.driver = Driver::Legacy;
    let path = d.path().join("pop3sd.toml");
    write_config(&cfg, &path);
    let (mut child, log) = serve(&path, &[]);
    assert!(
        wait_for(&log, "serving"),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("epoll, not io_uring"), "{text}");
    let u = &info.tenants[0].users[0];
    let o = pop3s_login(
        &info.pop3s,
        "example.com",
        &info.ca_file,
        &u.user,
        &u.password,
    );
    let _ = child.kill();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn rsa_certificates_work_beside_ecdsa() {
    assert!(
        have("openssl"),
        "openssl is required (installed by .ci/run)"
    );
    let d = tempfile::tempdir().unwrap();
    let (mut cfg, info) = prepare(d.path());
    let key = d.path().join("rsa.key");
    let cert = d.path().join("rsa.pem");
    let o = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=example.org",
        ])
        .args(["-addext", "subjectAltName=DNS:example.org"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    cfg.tenants[1].certificate = cert.clone();
    cfg.tenants[1].private_key = key;
    let path = d.path().join("pop3sd.toml");
    write_config(&cfg, &path);
    let (mut child, log) = serve(&path, &[]);
    assert!(
        wait_for(&log, "serving"),
        "{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    let org = &info.tenants[1].users[0];
    let rsa = pop3s_login(&info.pop3s, "example.org", &cert, &org.user, &org.password);
    let com = &info.tenants[0].users[0];
    let ecdsa = pop3s_login(
        &info.pop3s,
        "example.com",
        &info.ca_file,
        &com.user,
        &com.password,
    );
    let _ = child.kill();
    assert!(
        rsa.status.success(),
        "RSA tenant: {}",
        String::from_utf8_lossy(&rsa.stderr)
    );
    assert!(
        ecdsa.status.success(),
        "ECDSA tenant: {}",
        String::from_utf8_lossy(&ecdsa.stderr)
    );
}

#[test]
fn check_config_names_every_problem() {
    let d = tempfile::tempdir().unwrap();
    let (mut cfg, _) = prepare(d.path());
    let path = d.path().join("pop3sd.toml");
    write_config(&cfg, &path);
    let ok = Command::new(common::bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("OK"));

    // A passwd-file with a bad line, a key that does not match its certificate,
    // and a missing client CA.
    let passwd = cfg.resolve(&cfg.tenants[0].passwd_file);
    let mut text = std::fs::read_to_string(&passwd).unwrap();
    text.push_str("../evil:{PLAIN}x\n");
    std::fs::write(&passwd, text).unwrap();
    cfg.tenants[1].private_key = cfg.tenants[0].private_key.clone();
    cfg.tenants[0].client_ca = Some(d.path().join("nope.pem"));
    // A certificate anyone on the machine could replace.
    let cert = cfg.resolve(&cfg.tenants[1].certificate);
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cert, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    cfg.tenants[0].aliases.push("example.net".into());
    // A user to switch to that this machine does not have.
    cfg.user = Some("pop3sd-no-such-user".into());
    write_config(&cfg, &path);
    // And the configuration file itself.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    let bad = Command::new(common::bin())
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("tenant[0] (example.com).passwd_file"), "{err}");
    assert!(
        err.contains(":3: "),
        "line number of the bad passwd line: {err}"
    );
    assert!(
        err.contains("tenant[1] (example.org).certificate") && err.contains("do not match"),
        "{err}"
    );
    assert!(err.contains("tenant[0] (example.com).client_ca"), "{err}");
    assert!(
        err.contains("tenant[1] (example.org).certificate") && err.contains("writable by everyone"),
        "{err}"
    );
    assert!(
        err.contains("does not cover example.net"),
        "the certificate must name every alias: {err}"
    );
    assert!(
        err.contains("config file") && err.contains("pop3sd.toml is writable by everyone"),
        "{err}"
    );
    assert!(
        err.contains("user") && err.contains("pop3sd-no-such-user"),
        "{err}"
    );
    // Serving refuses the same file, naming the same problems.
    assert!(common::serve_refused(&path).contains("do not match"));
}

/// A log sink that stops reading (a stuck journald, a full pipe) must not
/// stop the server: log lines queue in memory and are all written once the
/// sink reads again. Without the background writer, the core that logs the
/// ~160th login blocks on the full pipe and every later client times out.
#[test]
fn a_stalled_log_sink_neither_stops_serving_nor_loses_lines() {
    use std::io::{BufRead, BufReader};
    const SESSIONS: usize = 600;
    let dir = tempfile::tempdir().unwrap();
    let (cfg, info) = prepare(dir.path());
    let config = dir.path().join("root").join("pop3sd.toml");
    write_config(&cfg, &config);
    let mut child = Command::new(common::bin())
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env_remove("POP3SD_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(log.read_line(&mut line).unwrap() > 0, "server exited");
        if line.contains(" serving ") {
            break;
        }
    }
    // From here nobody reads the pipe (64 KiB) until every session is done;
    // 600 sessions log about 250 KB.
    let user = &info.tenants[0].users[0];
    let out = pop3s_logins(
        &info.pop3s,
        "example.com",
        &info.ca_file,
        &user.user,
        &user.password,
        SESSIONS,
    );
    let ok = out.status.success();
    // Read the log again: every login line must arrive.
    let reader = std::thread::spawn(move || {
        let mut logins = 0;
        let mut line = String::new();
        while logins < SESSIONS {
            line.clear();
            match log.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.contains(" login ") => logins += 1,
                Ok(_) => {}
            }
        }
        logins
    });
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !reader.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    let logins = reader.join().unwrap();
    assert!(
        ok,
        "clients failed while the log sink was stalled:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(logins, SESSIONS, "login lines lost");
}

/// The signal mask of `pid` for `field` ("SigCgt": caught) and its thread
/// count, from /proc.
fn caught_and_threads(pid: u32) -> Option<(u64, u32)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    let caught = u64::from_str_radix(field("SigCgt:")?, 16).ok()?;
    let threads = field("Threads:")?.parse().ok()?;
    Some((caught, threads))
}

/// A SIGHUP while the server is still loading its configuration (as
/// `systemctl start` then `reload` can send) is taken, not fatal: the
/// server comes up and reloads once it serves. Before, SIGHUP's default
/// action killed it, which systemd counts as a clean exit.
#[test]
fn a_sighup_during_start_up_reloads_once_serving() {
    let d = tempfile::tempdir().unwrap();
    let (cfg, info) = prepare(d.path());
    // Many users, so that loading takes a while.
    let passwd = cfg.resolve(&cfg.tenants[1].passwd_file);
    let mut text = std::fs::read_to_string(&passwd).unwrap();
    for i in 0..200_000 {
        text.push_str(&format!("filler{i}:{{PLAIN}}x\n"));
    }
    std::fs::write(&passwd, text).unwrap();
    let path = d.path().join("pop3sd.toml");
    write_config(&cfg, &path);
    let (mut child, log) = serve(&path, &[]);
    const SIGHUP_BIT: u64 = 1 << (libc::SIGHUP - 1);
    let start = std::time::Instant::now();
    let threads = loop {
        match caught_and_threads(child.id()) {
            Some((caught, threads)) if caught & SIGHUP_BIT != 0 => break threads,
            _ if start.elapsed() > Duration::from_secs(10) => {
                let _ = child.kill();
                panic!("SIGHUP never caught");
            }
            _ => std::thread::sleep(Duration::from_micros(200)),
        }
    };
    // Only the main thread and the log writer: the configuration is still
    // loading (the blocking pool and the cores start after it).
    assert!(
        threads <= 2,
        "signals taken only after start-up: {threads} threads"
    );
    // SAFETY: kill has no memory effects; the pid is our child's.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGHUP) }, 0);
    let logged = wait_for(&log, "configuration reloaded");
    let alive = child.try_wait().unwrap().is_none();
    let u = &info.tenants[0].users[0];
    let o = pop3s_login(
        &info.pop3s,
        "example.com",
        &info.ca_file,
        &u.user,
        &u.password,
    );
    let _ = child.kill();
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(alive && logged, "{text}");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// Run as root for a server that switches to another user, `check-config`
/// names the files that user could not read again on reload (the server
/// itself reads them as root at start-up, so nothing else would tell
/// until the first reload), with the command that fixes each.
#[test]
fn check_config_names_files_the_server_user_could_not_reread() {
    use std::os::unix::fs::PermissionsExt;
    if !pop3sd::privileges::is_root() {
        eprintln!("not root: nothing to check");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (mut cfg, _) = prepare(d.path());
    cfg.user = Some("nobody".into());
    let path = d.path().join("pop3sd.toml");
    write_config(&cfg, &path);
    let check = || {
        let o = Command::new(common::bin())
            .arg("check-config")
            .arg(&path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    // The temporary directory is root's alone (0700).
    let err = check();
    assert!(
        err.contains("cannot be entered by nobody") && err.contains("chmod g+x"),
        "{err}"
    );
    for dir in [d.path().to_path_buf(), d.path().join("root")] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    }
    let passwd = cfg.resolve(&cfg.tenants[0].passwd_file);
    let parent = passwd.parent().unwrap();
    std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o711)).unwrap();
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o600)).unwrap();
    let err = check();
    assert!(
        err.contains(&format!(
            "tenant[0] (example.com).passwd_file: {} is not readable by nobody",
            passwd.display()
        )) && err.contains("chmod g+r"),
        "{err}"
    );
    // An ACL that lets the user read it is taken as it is (the mode bits
    // alone cannot tell); check-config only warns, and passes.
    let acl = Command::new("setfacl")
        .args(["-m", "u:nobody:r"])
        .arg(&passwd)
        .status()
        .expect("setfacl is required (installed by .ci/run)");
    assert!(acl.success());
    let err = check();
    assert!(
        !err.contains("tenant[0] (example.com).passwd_file"),
        "{err}"
    );
    assert!(
        err.contains("tenant[1] (example.org).passwd_file"),
        "the other, without an ACL, still: {err}"
    );
}
