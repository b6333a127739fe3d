//! Shared by the integration tests: start the real `pop3sd` binary (its
//! `demo --json` mode) on loopback, and run real clients against it.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// A running demo server; killed when dropped.
pub struct Demo {
    child: Child,
    pub dir: tempfile::TempDir,
    pub info: serde_json::Value,
    pub info_file: PathBuf,
    pub log_file: PathBuf,
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_pop3sd")
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

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_file).unwrap_or_default()
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
            if f(&self.log()) {
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
