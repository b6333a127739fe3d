//! The floor measurement end to end: the real `tcp-floor` server and the
//! real load generator, on loopback, with the load generator's own CPU
//! accounting and JSON report.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// A `tcp-floor` server, killed when dropped.
struct Floor {
    child: Child,
    addr: String,
}

impl Drop for Floor {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn floor(script: &str) -> Floor {
    let mut child = Command::new(env!("CARGO_BIN_EXE_tcp-floor"))
        .args(["--script", script, "--threads", "2"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start tcp-floor");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("tcp-floor's ready line");
    let v: serde_json::Value = serde_json::from_str(&line).expect("JSON ready line");
    assert_eq!(v["threads"], 2, "{line}");
    assert_eq!(v["script"], script, "{line}");
    let addr = v["addr"].as_str().expect("addr").to_string();
    Floor { child, addr }
}

fn loadgen(args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let o = Command::new(env!("CARGO_BIN_EXE_pop3-loadgen"))
        .args(args)
        .args(["--quiet", "--json", "-"])
        .output()
        .expect("run pop3-loadgen");
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o, v)
}

#[test]
fn a_floor_run_counts_every_exchange_and_the_servers_cpu() {
    let script = "234:770,64:182,30:51368,28:64";
    let f = floor(script);
    let pid = f.child.id().to_string();
    let (o, v) = loadgen(&[
        "-s",
        "tcp-floor",
        "--floor-script",
        script,
        "--target",
        &f.addr,
        "-c",
        "4",
        "--threads",
        "2",
        "--count",
        "400",
        "-d",
        "30",
        "--server-pid",
        &pid,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(v["scenario"], "tcp-floor");
    assert_eq!(v["ops"], 400);
    assert_eq!(v["error_total"], 0);
    // What the client received is exactly the server's side of the script.
    assert_eq!(v["bytes_in"], 400 * (770 + 182 + 51368 + 64));
    assert_eq!(v["tls_version"], "none (plain TCP)");
    assert!(
        v["server_cpu_us_per_op"].as_f64().is_some_and(|c| c > 0.0),
        "{v}"
    );
}

#[test]
fn a_server_playing_another_script_is_counted_as_errors() {
    // The server answers the last turn with one byte fewer than the client
    // expects: every exchange fails, and says how.
    let f = floor("10:20,5:9");
    let (o, v) = loadgen(&[
        "-s",
        "tcp-floor",
        "--floor-script",
        "10:20,5:10",
        "--target",
        &f.addr,
        "-c",
        "2",
        "--count",
        "20",
        "-d",
        "30",
    ]);
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(v["ops"], 0);
    assert_eq!(v["errors"]["eof"], 20, "{v}");
}

#[test]
fn the_floor_and_its_script_go_together() {
    let (o, _) = loadgen(&["-s", "tcp-floor", "--target", "127.0.0.1:9"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--floor-script"));
    let (o, _) = loadgen(&[
        "-s",
        "handshake",
        "--floor-script",
        "1:1",
        "--target",
        "127.0.0.1:9",
        "--user-pattern",
        "u{n}",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--floor-script"));
    let (o, _) = loadgen(&[
        "-s",
        "tcp-floor",
        "--floor-script",
        "0:5",
        "--target",
        "127.0.0.1:9",
    ]);
    // clap refuses it as a usage error, before any run.
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("the client must send at least one byte"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}
