//! The performance knobs of docs/tuning.md, set far from their defaults,
//! still serve every message byte for byte: small TLS records and buffers,
//! a shared accept socket, several accepts in flight, SQPOLL, each io_uring
//! task-work mode, pinned CPUs, and either record layer with every cipher
//! suite. A configured TCP congestion control reaches the accepted
//! connections (read back with `ss`), and one the kernel lacks stops
//! start-up with a clear message.

mod common;

use common::{expected_message, Served};

/// Downloads every message of both users of example.com over several
/// connections and compares the bytes with what the demo stored.
fn download_all(s: &Served, rounds: usize) {
    for n in 0..2 {
        let (user, pass) = s.user(0, n);
        let local = user.split('@').next().unwrap().to_string();
        let out = s.dir.path().join(format!("out-{n}"));
        std::fs::create_dir_all(&out).unwrap();
        s.python(&format!(
            r#"
import poplib
ctx = ssl.create_default_context(cafile=INFO["ca"])
h, p = addr("pop3s")
class SniPop3(poplib.POP3_SSL):
    """poplib dials 127.0.0.1 but must send the tenant's name as SNI."""
    def _create_socket(self, timeout):
        raw = socket.create_connection((self.host, self.port), timeout)
        return ctx.wrap_socket(raw, server_hostname="example.com")
for r in range({rounds}):
    c = SniPop3(h, p, context=ctx, timeout=10)
    c.user("{user}")
    c.pass_("{pass}")
    count, _ = c.stat()
    sizes = dict((int(a), int(b)) for a, b in (l.split() for l in c.list()[1]))
    for i in range(1, count + 1):
        resp, lines, octets = c.retr(i)
        body = b"\r\n".join(lines) + b"\r\n"
        assert len(body) == sizes[i], (i, len(body), sizes[i])
        open(os.path.join(r"{out}", "%d.eml" % i), "wb").write(body)
    c.quit()
print("ok")
"#,
            out = out.display()
        ));
        for i in 0..3 {
            let got = std::fs::read(out.join(format!("{}.eml", i + 1))).unwrap();
            assert_eq!(
                got,
                expected_message("example.com", &local, i),
                "{user} message {}",
                i + 1
            );
        }
    }
}

#[test]
fn far_from_default_knobs_serve_exact_mail() {
    let s = Served::start(|c| {
        c.tls.record_size = 512;
        c.runtime.write_buffer_records = 1;
        c.runtime.read_buffer_size = 512;
        c.runtime.buffer_pool_size = 0;
        c.runtime.release_idle_buffers = false;
        c.runtime.reuse_port = false;
        c.runtime.accept_batch = 4;
        c.runtime.ring_entries = 256;
        c.runtime.cpus = Some("0".into());
        c.runtime.cores = 0;
    });
    download_all(&s, 3);
    let log = s.log();
    assert!(
        log.contains("all cores accept from one socket per listener"),
        "{log}"
    );
    assert!(log.contains("kTLS:"), "kTLS detection is logged: {log}");
    assert!(
        log.contains("cores=1"),
        "cpus = \"0\" means one core: {log}"
    );
}

/// Every cipher suite a client can pick, TLS 1.3 and 1.2, through curl
/// (OpenSSL), with pop3sd's record layer and with rustls's: each message
/// (in 1 KiB records, so that each takes several) arrives byte for byte.
#[test]
fn every_cipher_suite_serves_exact_mail_with_either_record_layer() {
    use pop3sd::config::RecordLayerMode;
    assert!(
        common::have("curl"),
        "curl is required (installed by .ci/run)"
    );
    let suites = [
        ("1.3", "TLS_AES_128_GCM_SHA256"),
        ("1.3", "TLS_AES_256_GCM_SHA384"),
        ("1.3", "TLS_CHACHA20_POLY1305_SHA256"),
        ("1.2", "ECDHE-ECDSA-AES128-GCM-SHA256"),
        ("1.2", "ECDHE-ECDSA-AES256-GCM-SHA384"),
        ("1.2", "ECDHE-ECDSA-CHACHA20-POLY1305"),
    ];
    for mode in [RecordLayerMode::Pop3sd, RecordLayerMode::Rustls] {
        let s = Served::start(|c| {
            c.tls.record_layer = mode;
            c.tls.record_size = 1024;
        });
        let port: u16 = s.info.pop3s.rsplit(':').next().unwrap().parse().unwrap();
        let (user, pass) = s.user(0, 1);
        let local = user.split('@').next().unwrap().to_string();
        let curl = |version: &str, suite: &str, n: usize| {
            let mut cmd = std::process::Command::new("curl");
            cmd.args(["-sS", "-v", "--max-time", "20", "--cacert"])
                .arg(&s.info.ca_file)
                .arg("--connect-to")
                .arg(format!("example.com:{port}:127.0.0.1:{port}"))
                .args(["-u", &format!("{user}:{pass}")]);
            if version == "1.3" {
                cmd.args(["--tlsv1.3", "--tls13-ciphers", suite]);
            } else {
                cmd.args(["--tlsv1.2", "--tls-max", "1.2", "--ciphers", suite]);
            }
            cmd.arg(format!("pop3s://example.com:{port}/{n}"))
                .output()
                .unwrap()
        };
        for (version, suite) in suites {
            for i in 0..3 {
                let o = curl(version, suite, i + 1);
                let err = String::from_utf8_lossy(&o.stderr);
                assert!(o.status.success(), "{mode:?} {suite}: {err}\n{}", s.log());
                assert!(err.contains(suite), "{mode:?}: {suite} negotiated: {err}");
                assert!(
                    o.stdout == expected_message("example.com", &local, i),
                    "{mode:?} {suite}: message {} differs",
                    i + 1
                );
            }
        }
    }
}

/// Each way of handing completions to a core serves the same bytes, and
/// the log says which one is used (the configured one where this kernel
/// accepts it, else the fallback: a kernel before 6.1 has no deferred mode).
#[test]
fn every_task_work_mode_serves_exact_mail() {
    use pop3sd::config::{RuntimeConfig, TaskWork};
    for mode in [TaskWork::Defer, TaskWork::Cooperative, TaskWork::Interrupt] {
        let s = Served::start(|c| c.runtime.task_work = mode);
        download_all(&s, 2);
        let used = pop3sd::runtime::ring_setup::effective_task_work(&RuntimeConfig {
            task_work: mode,
            ..RuntimeConfig::default()
        });
        let log = s.log();
        assert!(
            log.contains(&format!("task_work=\"{}\"", used.name())),
            "{mode:?}: {log}"
        );
    }
}

#[test]
fn sqpoll_rings_serve_exact_mail() {
    let s = Served::start(|c| {
        c.runtime.sqpoll = true;
        c.runtime.sqpoll_idle_ms = 50;
        c.runtime.pin_cores = true;
    });
    download_all(&s, 2);
    assert!(s.log().contains("runtime.sqpoll"), "{}", s.log());
}

#[test]
fn out_of_range_knobs_are_named_by_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) =
        pop3sd::demo::prepare(&common::demo_options(dir.path().join("root"), 1, 0)).unwrap();
    config.tls.record_size = 100_000;
    config.runtime.accept_batch = 0;
    config.runtime.cpus = Some("3-1".into());
    let problems: Vec<String> = config.check().iter().map(|p| p.to_string()).collect();
    let text = problems.join("\n");
    assert!(
        text.contains("tls.record_size: 100000 is outside 512..=16384"),
        "{text}"
    );
    assert!(
        text.contains("runtime.accept_batch: 0 is outside 1..=64"),
        "{text}"
    );
    assert!(
        text.contains("runtime.cpus: \"3-1\" is not a valid CPU range"),
        "{text}"
    );
}

/// The congestion control of the server's side of the established
/// connection from `client` (`ss` prints it first in its info line).
fn server_side_congestion(server_port: u16, client: &std::net::TcpStream) -> String {
    assert!(common::have("ss"), "ss (iproute2) is needed for this test");
    let client_port = client.local_addr().unwrap().port();
    let filter = format!("( sport = :{server_port} and dport = :{client_port} )");
    for _ in 0..50 {
        let out = std::process::Command::new("ss")
            .args(["-tniH", "state", "established", &filter])
            .output()
            .expect("run ss");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        // The line after the addresses holds the TCP info, algorithm first.
        if let Some(info) = text.lines().nth(1) {
            return info.split_whitespace().next().unwrap_or("").to_string();
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("ss shows no connection from port {client_port} to {server_port}");
}

#[test]
fn listeners_get_the_configured_tcp_congestion_control() {
    let default = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control")
        .unwrap()
        .trim()
        .to_string();
    // Reno is always built in; cubic where reno is the default.
    let other = if default == "reno" { "cubic" } else { "reno" };
    // One socket per core, and one socket all cores share.
    for reuse_port in [true, false] {
        let s = Served::start(|c| {
            c.runtime.reuse_port = reuse_port;
            c.runtime.tcp_congestion = Some(other.to_string());
            let plain = c
                .listeners
                .iter_mut()
                .find(|l| l.kind == pop3sd::config::ListenerKind::Pop3)
                .unwrap();
            plain.tcp_congestion = Some(default.clone());
        });
        download_all(&s, 1);
        for (kind, want) in [("pop3s", other), ("pop3", default.as_str())] {
            let addr: std::net::SocketAddr = match kind {
                "pop3s" => s.info.pop3s.parse().unwrap(),
                _ => s.info.pop3.as_deref().unwrap().parse().unwrap(),
            };
            let c = std::net::TcpStream::connect(addr).unwrap();
            assert_eq!(
                server_side_congestion(addr.port(), &c),
                want,
                "{kind}, reuse_port {reuse_port}"
            );
            assert!(
                s.log().contains(&format!(
                    "listener={addr} tcp_congestion={want} source=\"configured\""
                )),
                "{kind}: {}",
                s.log()
            );
        }
    }
}

#[test]
fn an_unknown_tcp_congestion_control_stops_start_up_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let (mut config, _) =
        pop3sd::demo::prepare(&common::demo_options(dir.path().join("root"), 1, 0)).unwrap();
    // A name the kernel cannot have is a configuration error...
    config.runtime.tcp_congestion = Some("no such".into());
    let text: Vec<String> = config.check().iter().map(|p| p.to_string()).collect();
    assert!(
        text.join("\n").contains("runtime.tcp_congestion"),
        "{text:?}"
    );
    // ...and a well-formed one the kernel lacks stops start-up, naming the
    // algorithms it has.
    config.runtime.tcp_congestion = Some("nosuchcc".into());
    let path = dir.path().join("root").join("pop3sd.toml");
    std::fs::write(&path, config.to_toml()).unwrap();
    let err = common::serve_refused(&path);
    assert!(
        err.contains("\"nosuchcc\" is not available in this kernel (loaded: ")
            && err.contains("reno"),
        "{err}"
    );
}
