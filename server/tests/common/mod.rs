//! Shared by the integration tests: start the real `pop3sd` binary (its
//! `demo --json` mode) on loopback, and run real clients against it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The log file once it has stopped growing for four of the server's batch
/// delays (pop3sd::log_writer: lines logged shortly after a write go out up
/// to 50 ms later), at most 5 s: what a test just caused is in it.
pub fn settled_log(path: &Path) -> String {
    let quiet = pop3sd::log_writer::BATCH_DELAY * 4;
    let end = Instant::now() + Duration::from_secs(5);
    let mut last = std::fs::read_to_string(path).unwrap_or_default();
    loop {
        std::thread::sleep(quiet);
        let now = std::fs::read_to_string(path).unwrap_or_default();
        if now.len() == last.len() || Instant::now() > end {
            return now;
        }
        last = now;
    }
}

/// A running demo server; killed when dropped.
pub struct Demo {
    child: Child,
    pub dir: tempfile::TempDir,
    pub info: serde_json::Value,
    pub info_file: PathBuf,
    pub log_file: PathBuf,
}

/// Demo data for a test: `users` per tenant with `messages` each, `{PLAIN}`
/// passwords, ephemeral ports, one core. Callers change what they need with
/// struct update syntax.
pub fn demo_options(root: PathBuf, users: usize, messages: usize) -> pop3sd::demo::DemoOptions {
    pop3sd::demo::DemoOptions {
        dir: Some(root),
        port: 0,
        pop3_port: 0,
        external_port: 0,
        users,
        messages,
        scheme: pop3sd::demo::DemoScheme::Plain,
        cores: 1,
        message_size: 0,
        maildir: None,
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pop3sd")
}

/// Runs `pop3sd serve --config path`, which must refuse to start; what it
/// printed on stderr.
pub fn serve_refused(path: &Path) -> String {
    let o = Command::new(bin())
        .args(["serve", "--config"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "pop3sd serve started with {}",
        path.display()
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

impl Demo {
    /// Starts `pop3sd demo --json` with extra arguments and waits until it serves.
    pub fn start(extra: &[&str]) -> Demo {
        let dir = tempfile::tempdir().expect("tempdir");
        let log_file = dir.path().join("server.log");
        let log = std::fs::File::create(&log_file).expect("log file");
        let mut child = Command::new(bin())
            .arg("demo")
            .arg("--json")
            .arg("--dir")
            .arg(dir.path().join("root"))
            .args(extra)
            .env_remove("POP3SD_LOG")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("start pop3sd");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = match rx.recv_timeout(Duration::from_secs(120)) {
            Ok(l) if !l.trim().is_empty() => l,
            other => {
                let _ = child.kill();
                panic!(
                    "demo did not become ready ({other:?}); log:\n{}",
                    std::fs::read_to_string(&log_file).unwrap_or_default()
                );
            }
        };
        let info: serde_json::Value = serde_json::from_str(&line).expect("demo JSON");
        let info_file = dir.path().join("info.json");
        std::fs::write(&info_file, &line).expect("write info");
        Demo {
            child,
            dir,
            info,
            info_file,
            log_file,
        }
    }

    /// An address from the JSON ("pop3s", "pop3", "external").
    pub fn addr(&self, key: &str) -> SocketAddr {
        self.info[key]
            .as_str()
            .expect(key)
            .parse()
            .expect("socket address")
    }

    pub fn ca(&self) -> &str {
        self.info["ca_file"].as_str().expect("ca_file")
    }

    pub fn password(&self, user: &str) -> String {
        for t in self.info["tenants"].as_array().expect("tenants") {
            for u in t["users"].as_array().expect("users") {
                if u["user"] == user {
                    return u["password"].as_str().expect("password").to_string();
                }
            }
        }
        panic!("no demo user {user}")
    }

    pub fn messages_per_user(&self) -> usize {
        self.info["messages_per_user"]
            .as_u64()
            .expect("messages_per_user") as usize
    }

    /// The server's log so far, once it has settled (see [`settled_log`]).
    pub fn log(&self) -> String {
        settled_log(&self.log_file)
    }

    /// A fresh directory under the test's temp dir.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::create_dir_all(&p).expect("scratch dir");
        p
    }

    /// Runs one subcommand of tests/clients/pop3_checks.py (Python's poplib
    /// and ssl) and fails the test with its output if it fails.
    pub fn python_check(&self, check: &str) -> PathBuf {
        let out = self.scratch(check);
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/pop3_checks.py");
        let o = Command::new("python3")
            .arg(script)
            .arg(&self.info_file)
            .arg(check)
            .arg(&out)
            .output()
            .expect("python3");
        assert_success(&o, &format!("pop3_checks.py {check}"), self);
        out
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits (bounded) until `f` holds for the log.
    pub fn wait_log(&self, timeout: Duration, f: impl Fn(&str) -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if f(&std::fs::read_to_string(&self.log_file).unwrap_or_default()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Fails with the command's output and the server log.
pub fn assert_success(o: &Output, what: &str, demo: &Demo) {
    if !o.status.success() {
        panic!(
            "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}\n--- server log\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            demo.log()
        );
    }
}

/// A loopback port that was free a moment ago (for peers such as Postfix,
/// HAProxy and Dovecot that need a fixed port in their configuration),
/// below the ephemeral range so that no test's outgoing connection takes it
/// before the peer binds it.
pub fn free_port() -> u16 {
    pop3sd::demo::free_port().expect("a free port")
}

/// True when a command exists on PATH.
pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Demo message `i` (0-based) of a user, with CRLF line endings: the bytes a
/// POP3 client must end up with.
pub fn expected_message(domain: &str, local: &str, i: usize) -> Vec<u8> {
    pop3sd_storage::wire::canonical_crlf(&pop3sd::demo::demo_message(domain, local, i))
}

/// A `pop3sd serve` process on a configuration built from the demo data
/// and then adjusted by the test; killed when dropped.
pub struct Served {
    pub child: Child,
    pub dir: tempfile::TempDir,
    pub info: pop3sd::demo::DemoInfo,
    pub config: pop3sd::config::Config,
    pub config_path: PathBuf,
    pub log_file: PathBuf,
}

impl Served {
    /// The demo served with a listener that requires client certificates
    /// beside its own that asks for them: the server, the required listener's
    /// port and the asking listener's address.
    pub fn with_certificate_listeners() -> (Served, u16, SocketAddr) {
        let port = free_port();
        let s = Served::start(|c| {
            c.listeners.push(pop3sd::config::ListenerConfig {
                address: format!("127.0.0.1:{port}").parse().unwrap(),
                kind: pop3sd::config::ListenerKind::Pop3s,
                client_certificates: pop3sd::config::ClientCerts::Required,
                proxy_protocol: false,
                tcp_congestion: None,
            })
        });
        let optional = s
            .config
            .listeners
            .iter()
            .find(|l| l.client_certificates == pop3sd::config::ClientCerts::Optional)
            .expect("the demo's EXTERNAL listener")
            .address;
        (s, port, optional)
    }

    /// Prepares demo data (2 users per tenant, 3 messages each), lets the
    /// test change the configuration, and serves it.
    pub fn start(adjust: impl Fn(&mut pop3sd::config::Config)) -> Served {
        Self::start_with(2, 0, adjust)
    }

    /// [`Served::start`] with `users` per tenant and messages of about
    /// `message_size` bytes (0: the demo's mixed sizes). The demo picks
    /// free ports and this server binds them a moment later; a port taken
    /// in between (by another test's client connection, say) fails the
    /// bind, and the whole set-up is tried again with new ports.
    pub fn start_with(
        users: usize,
        message_size: usize,
        adjust: impl Fn(&mut pop3sd::config::Config),
    ) -> Served {
        let mut tries = 3;
        loop {
            tries -= 1;
            let s = Self::try_start(users, message_size, &adjust);
            if s.log_now().contains(" serving ") {
                return s;
            }
            let log = s.log();
            if tries == 0 || !log.contains("cannot bind") {
                panic!("server did not start:\n{log}");
            }
            eprintln!("a picked port was taken before the server bound it; again:\n{log}");
        }
    }

    /// One try of [`Served::start_with`]: returned once the server serves,
    /// has exited, or 20 s have passed.
    fn try_start(
        users: usize,
        message_size: usize,
        adjust: &impl Fn(&mut pop3sd::config::Config),
    ) -> Served {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut config, info) = pop3sd::demo::prepare(&pop3sd::demo::DemoOptions {
            cores: 2,
            message_size,
            ..demo_options(dir.path().join("root"), users, 3)
        })
        .expect("demo data");
        adjust(&mut config);
        let config_path = dir.path().join("root").join("pop3sd.toml");
        std::fs::write(&config_path, config.to_toml()).expect("write config");
        let log_file = dir.path().join("server.log");
        let child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(&config_path)
            .env_remove("POP3SD_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_file).expect("log"))
            .spawn()
            .expect("start pop3sd serve");
        let mut s = Served {
            child,
            dir,
            info,
            config,
            config_path,
            log_file,
        };
        let end = Instant::now() + Duration::from_secs(20);
        while !s.log_now().contains(" serving ")
            && matches!(s.child.try_wait(), Ok(None))
            && Instant::now() < end
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        s
    }

    /// Serves an existing configuration (the demo's layout: `tls/ca.pem`
    /// beside it). Test users are not known here: use [`Served::start`] for those.
    pub fn start_from(config_path: &Path, _keep: &tempfile::TempDir) -> Served {
        let config = pop3sd::config::Config::parse_file(config_path).expect("config");
        let root = config_path.parent().expect("config dir").to_path_buf();
        let find = |kind| {
            config
                .listeners
                .iter()
                .find(|l| {
                    l.kind == kind && l.client_certificates == pop3sd::config::ClientCerts::None
                })
                .map(|l| l.address.to_string())
        };
        let info = pop3sd::demo::DemoInfo {
            pop3s: find(pop3sd::config::ListenerKind::Pop3s).expect("a pop3s listener"),
            pop3: find(pop3sd::config::ListenerKind::Pop3),
            lmtp: config.lmtp.address.map(|a| a.to_string()),
            metrics: config.metrics.address.map(|a| a.to_string()),
            external: String::new(),
            ca_file: root.join("tls/ca.pem"),
            root: root.clone(),
            config: config_path.to_path_buf(),
            client_cert: PathBuf::new(),
            client_key: PathBuf::new(),
            client_cert_user: String::new(),
            password_scheme: String::new(),
            messages_per_user: 0,
            tenants: Vec::new(),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let log_file = dir.path().join("server.log");
        let child = Command::new(bin())
            .args(["serve", "--config"])
            .arg(config_path)
            .env_remove("POP3SD_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log_file).expect("log"))
            .spawn()
            .expect("start pop3sd serve");
        let s = Served {
            child,
            dir,
            info,
            config,
            config_path: config_path.to_path_buf(),
            log_file,
        };
        assert!(
            s.wait_log(Duration::from_secs(20), |l| l.contains(" serving ")),
            "server did not start:\n{}",
            s.log()
        );
        s
    }

    /// The server's log so far, once it has settled (see [`settled_log`]).
    pub fn log(&self) -> String {
        settled_log(&self.log_file)
    }

    /// The log as it is this instant (see [`Served::log`] for one that
    /// has what a test just caused).
    fn log_now(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    pub fn wait_log(&self, timeout: Duration, f: impl Fn(&str) -> bool) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if f(&std::fs::read_to_string(&self.log_file).unwrap_or_default()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP and waits (bounded) for the reload to be logged.
    pub fn reload_ok(&self) {
        self.signal(libc::SIGHUP);
        assert!(
            self.wait_log(Duration::from_secs(5), |l| l
                .contains("configuration reloaded")),
            "{}",
            self.log()
        );
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill with a valid pid of our own child and a signal number.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits (bounded) for the process to exit; its status if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(st)) = self.child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    pub fn user(&self, tenant: usize, n: usize) -> (String, String) {
        let u = &self.info.tenants[tenant].users[n];
        (u.user.clone(), u.password.clone())
    }

    /// Runs a Python snippet with `INFO` (pop3s, pop3, ca_file) and helpers
    /// `tls(addr, sni, source=None)` and `lines(f, n)` predefined; fails the
    /// test with its output and the server log unless it exits 0.
    pub fn python(&self, body: &str) -> String {
        let o = self.python_command(body).output().expect("python3");
        if !o.status.success() {
            panic!(
                "python check failed ({}):\n--- stdout\n{}\n--- stderr\n{}\n--- server log\n{}",
                o.status,
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr),
                self.log()
            );
        }
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// The command `python` runs (for tests that act while it runs).
    pub fn python_command(&self, body: &str) -> Command {
        let prelude = format!(
            r#"
import socket, ssl, sys, time, os
INFO = {{"pop3s": "{pop3s}", "pop3": "{pop3}", "ca": r"{ca}"}}
def addr(key):
    h, p = INFO[key].rsplit(":", 1)
    return h, int(p)
def tls(key="pop3s", sni="example.com", source=None, timeout=10):
    ctx = ssl.create_default_context(cafile=INFO["ca"])
    raw = socket.create_connection(addr(key), timeout, source_address=(source, 0) if source else None)
    s = ctx.wrap_socket(raw, server_hostname=sni)
    return s, s.makefile("rb")
def cmd(s, f, line):
    s.sendall(line.encode() + b"\r\n")
    return f.readline()
"#,
            pop3s = self.info.pop3s,
            pop3 = self.info.pop3.clone().unwrap_or_default(),
            ca = self.info.ca_file.display()
        );
        let mut c = Command::new("python3");
        c.arg("-c").arg(format!("{prelude}\n{body}"));
        c
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
