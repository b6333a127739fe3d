//! Production operation, against the real `pop3sd serve`: limits, timeouts,
//! backpressure, SIGTERM drain, SIGHUP reload, privilege drop, IPv6.

mod common;

use std::time::Duration;

use common::Served;

#[test]
fn per_address_and_total_connection_limits() {
    let s = Served::start(|c| {
        c.limits.max_connections_per_ip = 2;
        c.limits.max_connections = 3;
    });
    s.python(
        r#"
held = [tls(source="127.0.0.2") for _ in range(2)]
for s_, f in held:
    assert f.readline().startswith(b"+OK"), "within the limit"
s3, f3 = tls(source="127.0.0.2")
line = f3.readline()
assert line.startswith(b"-ERR [SYS/TEMP] Too many connections from your address"), line
assert f3.read() == b"", "closed after the answer"
# Another address is still welcome, up to the total.
s4, f4 = tls(source="127.0.0.3")
assert f4.readline().startswith(b"+OK")
s5, f5 = tls(source="127.0.0.4")
line = f5.readline()
assert line.startswith(b"-ERR [SYS/TEMP] Too many connections to this server"), line
# A flood past a limit does not flood the log (checked below).
for _ in range(10):
    s7, f7 = tls(source="127.0.0.2")
    assert f7.readline().startswith(b"-ERR [SYS/TEMP]")
    s7.close()
# Closing frees the slots.
for s_, f in held:
    cmd(s_, f, "QUIT")
    s_.close()
# A slot is free once the server has dropped its connection, which a busy
# machine can take a moment to get to.
deadline = time.time() + 10
while True:
    s6, f6 = tls(source="127.0.0.2")
    line = f6.readline()
    if line.startswith(b"+OK") or time.time() > deadline:
        break
    s6.close()
    time.sleep(0.05)
assert line.startswith(b"+OK"), line
"#,
    );
    let log = s.log();
    let logged = log
        .lines()
        .filter(|l| l.contains(" INFO ") && l.contains("connection refused by limit"))
        .count();
    // Twelve refusals; at most one line a minute per core at info level.
    assert!((1..=2).contains(&logged), "{logged} lines:\n{log}");
}

#[test]
fn per_user_session_limit() {
    let s = Served::start(|c| c.limits.max_sessions_per_user = 1);
    let (user, pw) = s.user(0, 0);
    s.python(&format!(
        r#"
a, fa = tls(); fa.readline()
assert cmd(a, fa, "USER {user}").startswith(b"+OK")
assert cmd(a, fa, "PASS {pw}").startswith(b"+OK")
b, fb = tls(); fb.readline()
cmd(b, fb, "USER {user}")
line = cmd(b, fb, "PASS {pw}")
assert line.startswith(b"-ERR [IN-USE] Too many sessions for this user"), line
cmd(a, fa, "QUIT")
# The slot comes back once the server has dropped that connection.
deadline = time.time() + 10
while True:
    assert cmd(b, fb, "USER {user}").startswith(b"+OK")
    line = cmd(b, fb, "PASS {pw}")
    if not line.startswith(b"-ERR [IN-USE]") or time.time() > deadline:
        break
    time.sleep(0.05)
assert line.startswith(b"+OK"), ("the slot came back", line)
"#
    ));
}

#[test]
fn handshake_and_authorization_timeouts() {
    let s = Served::start(|c| {
        c.limits.handshake_timeout_secs = 1;
        c.limits.auth_timeout_secs = 1;
    });
    s.python(
        r#"
# A client that never sends a ClientHello is dropped after the handshake timeout.
raw = socket.create_connection(addr("pop3s"), 10)
t = time.time()
assert raw.recv(100) == b""
assert 0.5 < time.time() - t < 5, time.time() - t
# One that stays silent after the greeting gets the inactivity answer.
s_, f = tls()
assert f.readline().startswith(b"+OK")
t = time.time()
assert f.readline() == b"-ERR Disconnected for inactivity.\r\n"
assert 0.5 < time.time() - t < 5
"#,
    );
}

#[test]
fn idle_timeout_closes_without_committing() {
    let s = Served::start(|c| c.limits.idle_timeout_secs = 2);
    let (user, pw) = s.user(0, 1);
    s.python(&format!(
        r#"
s_, f = tls(); f.readline()
cmd(s_, f, "USER {user}"); cmd(s_, f, "PASS {pw}")
n = int(cmd(s_, f, "STAT").split()[1])
assert cmd(s_, f, "DELE 1").startswith(b"+OK")
assert f.readline() == b"-ERR Disconnected for inactivity.\r\n"
s2, f2 = tls(); f2.readline()
cmd(s2, f2, "USER {user}"); cmd(s2, f2, "PASS {pw}")
assert int(cmd(s2, f2, "STAT").split()[1]) == n, "an idle-timed-out session deleted mail"
"#
    ));
    assert!(
        s.log().contains("RFC 1939"),
        "a short idle timeout is warned about"
    );
}

#[test]
fn a_client_that_does_not_read_is_dropped_with_bounded_memory() {
    // 1 MiB messages; the client asks for 300 of them and reads nothing.
    let s = Served::start_with(2, 1 << 20, |c| c.limits.write_timeout_secs = 2);
    let (user, pw) = s.user(0, 0);
    let rss = |pid: u32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1).map(|v| v.parse().unwrap()))
            .unwrap()
    };
    let before = rss(s.pid());
    // The client stays (reading nothing) until the server has dropped it:
    // one that left first would be a reset, not a write timeout.
    let mut client = s
        .python_command(&format!(
            r#"
s_, f = tls()
s_.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
f.readline()
cmd(s_, f, "USER {user}"); cmd(s_, f, "PASS {pw}")
s_.sendall(b"RETR 1\r\n" * 300)
time.sleep(60)
"#
        ))
        .spawn()
        .unwrap();
    let dropped = s.wait_log(Duration::from_secs(30), |l| l.contains("write timed out"));
    let _ = client.kill();
    let _ = client.wait();
    assert!(dropped, "the stalled client was not dropped:\n{}", s.log());
    let after = rss(s.pid());
    assert!(
        after < before + 32 * 1024,
        "server RSS grew from {before} KiB to {after} KiB"
    );
}

#[test]
fn handshakes_in_flight_are_bounded_per_core() {
    let s = Served::start(|c| {
        c.runtime.cores = 1;
        c.limits.max_handshakes_per_core = 1;
        c.limits.handshake_timeout_secs = 5;
    });
    s.python(
        r#"
import threading
held = socket.create_connection(addr("pop3s"), 10)
held.sendall(b"\x16\x03\x01\x02\x00")   # a ClientHello begun: holds the only handshake place
done = {}
def second():
    s_, f = tls()
    done["at"] = time.time()
    f.readline()
t0 = time.time()
th = threading.Thread(target=second); th.start()
time.sleep(1.0)
assert "at" not in done, "a second handshake ran while the core's only place was taken"
held.close()
th.join(5)
assert "at" in done and done["at"] - t0 >= 1.0
"#,
    );
}

/// Connections over a limit are told so over TLS from places of their own:
/// however many one source opens and leaves half-way through a handshake,
/// a client within the limits gets a handshake place at once, and the
/// refused past those places are closed untold.
#[test]
fn refused_connections_take_no_handshake_places() {
    let s = Served::start(|c| {
        c.runtime.cores = 1;
        c.limits.max_connections_per_ip = 1;
        c.limits.max_handshakes_per_core = 2;
        c.limits.handshake_timeout_secs = 10;
    });
    s.python(
        r#"
held, fh = tls(source="127.0.0.2")
assert fh.readline().startswith(b"+OK"), "the one connection 127.0.0.2 may have"
stalled = []
for _ in range(40):
    x = socket.create_connection(addr("pop3s"), 10, source_address=("127.0.0.2", 0))
    x.sendall(b"\x16\x03\x01\x02\x00")   # a ClientHello begun, never finished
    stalled.append(x)
time.sleep(0.5)
t = time.time()
a, fa = tls(source="127.0.0.3", timeout=8)
assert fa.readline().startswith(b"+OK")
assert time.time() - t < 3, ("waited for places the refused held", time.time() - t)
closed = 0
for x in stalled:
    x.settimeout(0.05)
    try:
        closed += x.recv(1) == b""
    except ConnectionResetError:   # closed with our bytes unread
        closed += 1
    except socket.timeout:
        pass
assert closed >= 8, ("refused connections past their places were kept", closed)
"#,
    );
}

/// Starts a Python client whose script writes `$MARK` once its sessions
/// are set up, and waits (bounded) for it; a client that fails or never
/// gets there fails the test with its output and the server's log.
fn start_until_ready(s: &Served, script: &str, mark: &std::path::Path) -> std::process::Child {
    let mut client = spawn_marked(s, script, mark);
    wait_for_mark(s, &mut client, mark);
    client
}

#[test]
fn sigterm_drains_then_closes_without_committing() {
    let mut s = Served::start(|c| c.limits.drain_timeout_secs = 2);
    let (alice, apw) = s.user(0, 0);
    let (bob, bpw) = s.user(0, 1);
    let mark = s.dir.path().join("ready");
    let script = format!(
        r#"
a, fa = tls(); fa.readline(); cmd(a, fa, "USER {alice}"); cmd(a, fa, "PASS {apw}")
b, fb = tls(); fb.readline(); cmd(b, fb, "USER {bob}"); cmd(b, fb, "PASS {bpw}")
na = int(cmd(a, fa, "STAT").split()[1]); nb = int(cmd(b, fb, "STAT").split()[1])
assert cmd(a, fa, "DELE 1").startswith(b"+OK") and cmd(b, fb, "DELE 1").startswith(b"+OK")
print(na, nb, flush=True)
sys.stdout.flush()
open(os.environ["MARK"], "w").write("ready")
# The test sends SIGTERM now, and says when the listeners are closed.
go = os.environ["MARK"] + ".go"
deadline = time.time() + 10
while not os.path.exists(go) and time.time() < deadline:
    time.sleep(0.01)
assert os.path.exists(go), "the test did not see the drain start"
# Draining: no new connections, but sessions go on and QUIT commits.
try:
    socket.create_connection(addr("pop3s"), 2).recv(10)
    raise AssertionError("accepted a new connection while draining")
except (ConnectionRefusedError, ConnectionResetError, socket.timeout):
    pass
assert cmd(a, fa, "NOOP").startswith(b"+OK")
assert cmd(a, fa, "QUIT").startswith(b"+OK"), "QUIT during the drain commits"
# Bob does not QUIT: at the deadline he is told and disconnected.
line = fb.readline()
assert line.startswith(b"-ERR [SYS/TEMP] Server shutting down"), line
"#
    );
    let client = start_until_ready(&s, &script, &mark);
    s.signal(libc::SIGTERM);
    // Draining has begun once a new connection is refused.
    let pop3s: std::net::SocketAddr = s.info.pop3s.parse().unwrap();
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(pop3s).is_ok() && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(mark.with_extension("go"), "go").unwrap();
    client_succeeded(&s, client);
    let status = s.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|st| st.success()),
        "server did not exit cleanly: {status:?}\n{}",
        s.log()
    );
    // Alice's DELE was committed by her QUIT; Bob's was not.
    let store =
        pop3sd_storage::Store::open(s.config.resolve(&s.config.storage_root), Default::default())
            .unwrap();
    let count = |who: &str| {
        store
            .maildrop(&pop3sd_storage::Address::parse(who).unwrap())
            .unwrap()
            .stats()
            .unwrap()
            .messages
    };
    assert_eq!(count(&alice), 2);
    assert_eq!(count(&bob), 3);
}

#[test]
fn sighup_replaces_the_certificate_and_refuses_a_broken_config() {
    let s = Served::start(|_| {});
    let (user, pw) = s.user(0, 0);
    let fingerprint = |s: &Served| {
        s.python(
            r#"
import hashlib
s_, f = tls(); f.readline()
print(hashlib.sha256(s_.getpeercert(True)).hexdigest())
"#,
        )
        .trim()
        .to_string()
    };
    let first = fingerprint(&s);
    // A new certificate for example.com, signed by the same demo CA, with openssl.
    let tls_dir = s.dir.path().join("root/tls");
    let sh = format!(
        "cd {d} && openssl ecparam -name prime256v1 -genkey -noout -out new.key && \
         openssl req -new -key new.key -subj /CN=example.com -addext subjectAltName=DNS:example.com,DNS:pop.example.com,DNS:localhost,IP:127.0.0.1 -out new.csr && \
         printf 'subjectAltName=DNS:example.com,DNS:pop.example.com,DNS:localhost,IP:127.0.0.1\\n' > ext && \
         openssl x509 -req -in new.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext -out new.pem && \
         chmod 600 new.key && mv new.pem example.com.pem && mv new.key example.com.key",
        d = tls_dir.display()
    );
    let o = std::process::Command::new("sh")
        .arg("-c")
        .arg(&sh)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // A session opened before the reload carries on after it.
    let session = std::process::Command::new("python3")
        .arg("-c")
        .arg(format!(
            r#"
import socket, ssl, time
ctx = ssl.create_default_context(cafile=r"{ca}")
h, p = "{addr}".rsplit(":", 1)
s = ctx.wrap_socket(socket.create_connection((h, int(p)), 10), server_hostname="example.com")
f = s.makefile("rb"); f.readline()
s.sendall(b"USER {user}\r\n"); f.readline(); s.sendall(b"PASS {pw}\r\n"); assert f.readline().startswith(b"+OK")
time.sleep(2)
s.sendall(b"STAT\r\n"); assert f.readline().startswith(b"+OK")
s.sendall(b"QUIT\r\n"); assert f.readline().startswith(b"+OK")
"#,
            ca = s.info.ca_file.display(),
            addr = s.info.pop3s
        ))
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    s.reload_ok();
    let second = fingerprint(&s);
    assert_ne!(
        first, second,
        "a new connection must see the new certificate"
    );
    let st = session.wait_with_output().unwrap();
    assert!(
        st.status.success(),
        "the session opened before the reload broke"
    );

    // A broken configuration is refused and the running one stays.
    let mut broken = std::fs::read_to_string(&s.config_path).unwrap();
    broken.push_str("\nthis is not toml = = =\n");
    std::fs::write(&s.config_path, broken).unwrap();
    s.signal(libc::SIGHUP);
    assert!(
        s.wait_log(Duration::from_secs(5), |l| l.contains("reload refused")),
        "{}",
        s.log()
    );
    assert_eq!(
        fingerprint(&s),
        second,
        "still serving with the configuration in force"
    );
}

#[test]
fn drops_to_the_configured_user_after_binding() {
    if !pop3sd::privileges::is_root() {
        eprintln!("not root: the privilege drop cannot be exercised here");
        return;
    }
    let s = Served::start(|c| {
        c.user = Some("nobody".into());
        c.group = Some("nogroup".into());
        c.allow_root = false;
        // The storage root must belong to the user the server becomes.
        let root = c.resolve(&c.storage_root);
        let o = std::process::Command::new("chown")
            .args(["-R", "nobody:nogroup"])
            .arg(&root)
            .output()
            .unwrap();
        assert!(o.status.success());
        let parents = root.parent().unwrap();
        let _ = std::process::Command::new("chmod")
            .arg("711")
            .arg(parents)
            .output();
        let _ = std::process::Command::new("chmod")
            .arg("711")
            .arg(parents.parent().unwrap())
            .output();
    });
    let status = std::fs::read_to_string(format!("/proc/{}/status", s.pid())).unwrap();
    let uid_line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    assert!(
        uid_line.split_whitespace().skip(1).all(|u| u == "65534"),
        "{uid_line}"
    );
    assert!(s.log().contains("dropped privileges after binding"));
    // Serving still works as nobody (storage access included).
    let (user, pw) = s.user(0, 0);
    s.python(&format!(
        r#"
s_, f = tls(); f.readline()
cmd(s_, f, "USER {user}")
assert cmd(s_, f, "PASS {pw}").startswith(b"+OK")
assert cmd(s_, f, "RETR 1").startswith(b"+OK")
"#
    ));
}

#[test]
fn refuses_to_serve_as_root_unless_told() {
    if !pop3sd::privileges::is_root() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let (mut cfg, _) =
        pop3sd::demo::prepare(&common::demo_options(d.path().join("root"), 1, 1)).unwrap();
    cfg.allow_root = false;
    let path = d.path().join("c.toml");
    std::fs::write(&path, cfg.to_toml()).unwrap();
    assert!(common::serve_refused(&path).contains("refusing to serve as root"));
    // World-readable mail is refused too.
    cfg.allow_root = true;
    std::fs::write(&path, cfg.to_toml()).unwrap();
    let root = cfg.resolve(&cfg.storage_root);
    std::process::Command::new("chmod")
        .arg("755")
        .arg(&root)
        .output()
        .unwrap();
    let err = common::serve_refused(&path);
    assert!(err.contains("accessible by other users"), "{err}");
}

#[test]
fn ipv6_listener() {
    let ok = std::net::TcpListener::bind("[::1]:0").is_ok();
    if !ok {
        eprintln!("no IPv6 loopback here");
        return;
    }
    let port = std::net::TcpListener::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let s = Served::start(|c| {
        c.listeners.push(pop3sd::config::ListenerConfig {
            address: format!("[::1]:{port}").parse().unwrap(),
            kind: pop3sd::config::ListenerKind::Pop3s,
            client_certificates: pop3sd::config::ClientCerts::None,
            proxy_protocol: false,
            tcp_congestion: None,
        })
    });
    let (user, pw) = s.user(1, 0);
    s.python(&format!(
        r#"
ctx = ssl.create_default_context(cafile=INFO["ca"])
s_ = ctx.wrap_socket(socket.create_connection(("::1", {port}), 10), server_hostname="example.org")
f = s_.makefile("rb")
assert f.readline().startswith(b"+OK")
cmd(s_, f, "USER {user}")
assert cmd(s_, f, "PASS {pw}").startswith(b"+OK")
"#
    ));
    assert!(s.log().contains("client=::1"), "{}", s.log());
}

#[test]
fn reload_refuses_runtime_and_listener_socket_changes() {
    let s = Served::start(|_| {});
    let original = std::fs::read_to_string(&s.config_path).unwrap();
    for (what, change) in [
        (
            "the [runtime] section cannot change without a restart",
            Box::new(|c: &mut pop3sd::config::Config| {
                c.runtime.tcp_congestion = Some("reno".into())
            }) as Box<dyn Fn(&mut pop3sd::config::Config)>,
        ),
        (
            "listeners cannot change without a restart",
            Box::new(|c: &mut pop3sd::config::Config| {
                c.listeners[0].tcp_congestion = Some("reno".into())
            }),
        ),
        (
            "limits.auth_cache_ttl_secs: cannot change without a restart",
            Box::new(|c: &mut pop3sd::config::Config| c.limits.auth_cache_ttl_secs += 1),
        ),
        (
            "limits.max_handshakes_per_core: cannot change without a restart",
            Box::new(|c: &mut pop3sd::config::Config| c.limits.max_handshakes_per_core += 1),
        ),
    ] {
        let mut c = s.config.clone();
        change(&mut c);
        std::fs::write(&s.config_path, c.to_toml()).unwrap();
        s.signal(libc::SIGHUP);
        assert!(
            s.wait_log(Duration::from_secs(5), |l| l.contains(what)),
            "{what}: {}",
            s.log()
        );
        std::fs::write(&s.config_path, &original).unwrap();
    }
    // The unchanged file reloads, and the server still serves.
    s.reload_ok();
    let (user, pw) = s.user(0, 0);
    s.python(&format!(
        r#"
s, f = tls()
assert f.readline().startswith(b"+OK")
assert cmd(s, f, "USER {user}").startswith(b"+OK")
assert cmd(s, f, "PASS {pw}").startswith(b"+OK")
assert cmd(s, f, "QUIT").startswith(b"+OK")
"#
    ));
}

#[test]
fn a_refused_login_keeps_neither_a_session_slot_nor_the_login_delay() {
    let s = Served::start(|c| {
        c.limits.max_sessions_per_user = 2;
        c.tenants[0].login_delay = 2;
    });
    let (x, xpw) = s.user(0, 0);
    let (y, ypw) = s.user(0, 1);
    s.python(&format!(
        r#"
def login(s_, f, u, pw):
    cmd(s_, f, "USER " + u)
    return cmd(s_, f, "PASS " + pw)
a, fa = tls(); fa.readline()
assert login(a, fa, "{x}", "{xpw}").startswith(b"+OK")
b, fb = tls(); fb.readline()
line = login(b, fb, "{x}", "{xpw}")
assert line.startswith(b"-ERR [LOGIN-DELAY]"), line
time.sleep(2.3)
# Past the delay the login is admitted, but a's session holds the maildrop.
line = login(b, fb, "{x}", "{xpw}")
assert line.startswith(b"-ERR [IN-USE] Maildrop is locked"), line
c, fc = tls(); fc.readline()
line = login(c, fc, "{x}", "{xpw}")
assert line.startswith(b"-ERR [IN-USE] Maildrop is locked"), ("b kept a session slot", line)
# b may still log in as someone else.
assert login(b, fb, "{y}", "{ypw}").startswith(b"+OK")
assert cmd(a, fa, "QUIT").startswith(b"+OK")
time.sleep(0.2)
# The refused attempts were not logins: the delay runs from a's.
line = login(c, fc, "{x}", "{xpw}")
assert line.startswith(b"+OK"), line
"#
    ));
}

/// Clients that stall must not hold the server: silent sockets take none of
/// a core's handshake places, and at shutdown a client stalled in its STLS
/// handshake or not reading a RETR is dropped soon after the drain deadline.
#[test]
fn stalled_clients_hold_neither_handshake_places_nor_the_shutdown() {
    let mut s = Served::start_with(1, 6 << 20, |c| {
        c.limits.drain_timeout_secs = 2;
        c.limits.max_handshakes_per_core = 2;
        c.runtime.cores = 1;
    });
    let (user, pw) = s.user(0, 0);
    let mark = s.dir.path().join("ready");
    let script = format!(
        r#"
silent = [socket.create_connection(addr("pop3s"), 10) for _ in range(6)]
time.sleep(0.3)
t = time.time()
a, fa = tls(timeout=5)
assert fa.readline().startswith(b"+OK"), "silent sockets took the handshake places"
assert time.time() - t < 3, time.time() - t
# Stalled in the STLS handshake: asked for TLS, never sends a ClientHello.
p = socket.create_connection(addr("pop3"), 10)
pf = p.makefile("rb")
assert pf.readline().startswith(b"+OK")
p.sendall(b"STLS\r\n")
assert pf.readline().startswith(b"+OK")
# Not reading a 6 MiB RETR.
cmd(a, fa, "USER {user}")
assert cmd(a, fa, "PASS {pw}").startswith(b"+OK")
a.sendall(b"RETR 1\r\n")
time.sleep(0.5)
open(os.environ["MARK"], "w").write("ready")
time.sleep(60)
"#
    );
    let mut client = start_until_ready(&s, &script, &mark);
    let signalled = std::time::Instant::now();
    s.signal(libc::SIGTERM);
    // Drain (2 s), then at most the closing grace for the stalled writer.
    let status = s.wait_exit(Duration::from_secs(12));
    let _ = client.kill();
    let _ = client.wait();
    assert!(
        status.is_some_and(|st| st.success()),
        "server still running {:?} after SIGTERM: {status:?}\n{}",
        signalled.elapsed(),
        s.log()
    );
}

/// Starts a Python client that writes marks beside `mark` (its `MARK`
/// environment variable) for the test to wait on, its output kept for
/// [`client_succeeded`].
fn spawn_marked(s: &Served, script: &str, mark: &std::path::Path) -> std::process::Child {
    s.python_command(script)
        .env("MARK", mark)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits for the client to end and fails the test, with its output and the
/// server's log, unless it succeeded.
fn client_succeeded(s: &Served, client: std::process::Child) {
    let o = client.wait_with_output().unwrap();
    assert!(
        o.status.success(),
        "client side failed:\n{}\n{}\n--- server log\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        s.log()
    );
}

/// Waits (bounded) for the client to write `mark`; fails the test with the
/// client's output and the server's log if it exits or does not get there.
fn wait_for_mark(s: &Served, client: &mut std::process::Child, mark: &std::path::Path) {
    use std::io::Read;
    let start = std::time::Instant::now();
    while !mark.exists() && start.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(_)) = client.try_wait() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    if !mark.exists() {
        let _ = client.kill();
        let _ = client.wait();
        let (mut out, mut err) = (String::new(), String::new());
        if let Some(mut p) = client.stdout.take() {
            let _ = p.read_to_string(&mut out);
        }
        if let Some(mut p) = client.stderr.take() {
            let _ = p.read_to_string(&mut err);
        }
        panic!(
            "the client did not reach {}:\n{out}\n{err}\n--- server log\n{}",
            mark.display(),
            s.log()
        );
    }
}

/// An MTA keeps LMTP connections open and reuses them: a user added by a
/// reload must be deliverable on one opened before it, and a shutdown must
/// tell an idle one (421) rather than leave it to be cut at the deadline.
#[test]
fn lmtp_connections_follow_reloads_and_hear_of_a_shutdown() {
    use std::io::Write;
    let mut s = Served::start(|c| {
        c.limits.drain_timeout_secs = 5;
        c.lmtp.recipient_delimiter = "+".into();
    });
    let lmtp = s.info.lmtp.clone().expect("the demo serves LMTP");
    let (alice, _) = s.user(0, 0);
    let domain = alice.split('@').nth(1).unwrap().to_string();
    let alice_ext = alice.replacen('@', "+lists@", 1);
    let newbie = format!("newbie@{domain}");
    let mark = s.dir.path().join("lmtp");
    let script = format!(
        r#"
h, p = "{lmtp}".rsplit(":", 1)
c = socket.create_connection((h, int(p)), 10); f = c.makefile("rb")
def rd():
    line = f.readline()
    while line[3:4] == b"-":
        line = f.readline()
    return line
def send(x):
    c.sendall(x.encode() + b"\r\n")
    return rd()
def deliver(to):
    assert send("MAIL FROM:<a@b.test>").startswith(b"250")
    r = send("RCPT TO:<" + to + ">")
    if not r.startswith(b"250"):
        send("RSET")
        return r
    assert send("DATA").startswith(b"354")
    return send("Subject: t\r\n\r\nhi\r\n.")
def step(n):
    open(os.environ["MARK"] + n, "w").write("x")
    deadline = time.time() + 20
    while not os.path.exists(os.environ["MARK"] + n + ".go") and time.time() < deadline:
        time.sleep(0.01)
assert rd().startswith(b"220")
assert send("LHLO t").startswith(b"250")
assert deliver("{alice}").startswith(b"250")
r = deliver("{alice_ext}"); assert r.startswith(b"250"), ("an address extension", r)
r = deliver("{newbie}"); assert r.startswith(b"550"), r
step("1")
r = deliver("{newbie}"); assert r.startswith(b"250"), ("same connection, after the reload", r)
step("2")
line = f.readline(); assert line.startswith(b"421 4.3.2"), line
assert f.read() == b"", "closed after the 421"
"#
    );
    let mut client = spawn_marked(&s, &script, &mark);
    let step = |n: &str| mark.with_file_name(format!("lmtp{n}"));
    wait_for_mark(&s, &mut client, &step("1"));
    let mut add = std::process::Command::new(common::bin())
        .args(["user", "add", "-c"])
        .arg(&s.config_path)
        .arg(&newbie)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    add.stdin.take().unwrap().write_all(b"pw\n").unwrap();
    assert!(add.wait().unwrap().success());
    s.reload_ok();
    std::fs::write(step("1.go"), "go").unwrap();
    wait_for_mark(&s, &mut client, &step("2"));
    s.signal(libc::SIGTERM);
    std::fs::write(step("2.go"), "go").unwrap();
    client_succeeded(&s, client);
    let status = s.wait_exit(Duration::from_secs(10));
    assert!(
        status.is_some_and(|st| st.success()),
        "{status:?}\n{}",
        s.log()
    );
    assert!(s.log().contains(&format!("delivered recipient={alice}")));
    assert!(
        !s.log().contains("+lists@"),
        "delivered under the user's own name"
    );
}

/// LMTP connections are bounded (each may hold a whole message in memory):
/// past `lmtp.max_connections` the MTA hears 421 and tries later; and the
/// limit, set up at start-up, is not changed by a reload.
#[test]
fn lmtp_connections_are_bounded() {
    let s = Served::start(|c| c.lmtp.max_connections = 2);
    let lmtp = s.info.lmtp.clone().expect("the demo serves LMTP");
    s.python(&format!(
        r#"
h, p = "{lmtp}".rsplit(":", 1)
def connect():
    c = socket.create_connection((h, int(p)), 10)
    return c, c.makefile("rb")
held = [connect() for _ in range(2)]
for c, f in held:
    assert f.readline().startswith(b"220")
c3, f3 = connect()
line = f3.readline(); assert line.startswith(b"421 4.3.2"), line
assert f3.read() == b""
held[0][0].sendall(b"QUIT\r\n"); assert held[0][1].readline().startswith(b"221")
held[0][0].close()
deadline = time.time() + 10
while True:
    c4, f4 = connect()
    line = f4.readline()
    if line.startswith(b"220") or time.time() > deadline:
        break
    time.sleep(0.05)
assert line.startswith(b"220"), ("a freed place is taken again", line)
"#
    ));
    assert!(s.log().contains("lmtp.max_connections reached"));
    let mut cfg = std::fs::read_to_string(&s.config_path).unwrap();
    cfg = cfg.replace("max_connections = 2\n", "max_connections = 3\n");
    assert!(cfg.contains("max_connections = 3\n"), "{cfg}");
    std::fs::write(&s.config_path, cfg).unwrap();
    s.signal(libc::SIGHUP);
    assert!(
        s.wait_log(Duration::from_secs(5), |l| l
            .contains("[lmtp] section cannot change")),
        "{}",
        s.log()
    );
}

/// LMTP connections together hold at most `lmtp.max_memory`: a message
/// that would go past it while another connection holds a large one is
/// refused for now (`452 4.3.1`, the MTA retries), the large one goes
/// through, and so does the refused one when tried again.
#[test]
fn lmtp_memory_is_bounded_across_connections() {
    let s = Served::start(|c| c.lmtp.max_memory = 256 * 1024);
    let lmtp = s.info.lmtp.clone().expect("the demo serves LMTP");
    let metrics = s.info.metrics.clone().expect("the demo serves metrics");
    let (alice, _) = s.user(0, 0);
    s.python(&format!(
        r#"
import urllib.request
def held():
    text = urllib.request.urlopen("http://{metrics}/metrics", timeout=5).read().decode()
    return int(next(l.split()[1] for l in text.splitlines() if l.startswith("pop3sd_lmtp_memory_bytes ")))
h, p = "{lmtp}".rsplit(":", 1)
class Lmtp:
    def __init__(self):
        self.c = socket.create_connection((h, int(p)), 10)
        self.f = self.c.makefile("rb")
        assert self.rd().startswith(b"220")
        assert self.send(b"LHLO t").startswith(b"250")
    def rd(self):
        line = self.f.readline()
        while line[3:4] == b"-":
            line = self.f.readline()
        return line
    def send(self, x):
        self.c.sendall(x + b"\r\n")
        return self.rd()
    def begin(self):
        assert self.send(b"MAIL FROM:<a@b.test>").startswith(b"250")
        assert self.send(b"RCPT TO:<{alice}>").startswith(b"250")
        assert self.send(b"DATA").startswith(b"354")
big = Lmtp()
big.begin()
# Alone, a connection goes past the budget: 512 KiB, held until its end.
big.c.sendall(b"Subject: big\r\n\r\n" + (b"y" * 78 + b"\r\n") * 6700)
# An idle connection holds no message: it stands in no one's way.
small = Lmtp()
deadline = time.time() + 10
while held() < 512 * 1024 and time.time() < deadline:
    time.sleep(0.02)
assert held() >= 512 * 1024, ("the big one is held", held())
small.begin()
r = small.send(b"Subject: small\r\n\r\nhi\r\n.")
assert r.startswith(b"452 4.3.1"), ("shed while the big one is held", r)
r = big.send(b".")
assert r.startswith(b"250"), ("the big one is delivered", r)
small.begin()
r = small.send(b"Subject: small\r\n\r\nagain\r\n.")
assert r.startswith(b"250"), ("tried again, delivered", r)
assert held() == 0, held()
"#
    ));
    assert!(s.log().contains("lmtp.max_memory reached"), "{}", s.log());
}

/// A login goes by the configuration in force when it is made: a password
/// changed and reloaded does not still let in, with the old password, a
/// connection opened before the reload (one may wait minutes in
/// AUTHORIZATION), and the new password works on it.
#[test]
fn a_reload_reaches_logins_on_connections_opened_before_it() {
    use std::io::Write;
    // The reload also changes the record layer, which only new connections
    // may take up: the open one must carry on with rustls's.
    let s = Served::start(|c| c.tls.record_layer = pop3sd::config::RecordLayerMode::Rustls);
    let (user, old_pw) = s.user(0, 0);
    let mark = s.dir.path().join("opened");
    let script = format!(
        r#"
s, f = tls()
assert f.readline().startswith(b"+OK")
open(os.environ["MARK"], "w").write("x")
deadline = time.time() + 20
while not os.path.exists(os.environ["MARK"] + ".go") and time.time() < deadline:
    time.sleep(0.01)
assert cmd(s, f, "USER {user}").startswith(b"+OK")
r = cmd(s, f, "PASS {old_pw}"); assert r.startswith(b"-ERR"), ("the old password, after the reload", r)
assert cmd(s, f, "USER {user}").startswith(b"+OK")
r = cmd(s, f, "PASS new-secret-42"); assert r.startswith(b"+OK"), ("the new password", r)
assert cmd(s, f, "STAT").startswith(b"+OK")
assert cmd(s, f, "QUIT").startswith(b"+OK")
"#
    );
    let client = start_until_ready(&s, &script, &mark);
    let mut passwd = std::process::Command::new(common::bin())
        .args(["user", "passwd", "-c"])
        .arg(&s.config_path)
        .arg(&user)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    passwd
        .stdin
        .take()
        .unwrap()
        .write_all(b"new-secret-42\n")
        .unwrap();
    assert!(passwd.wait().unwrap().success());
    let mut cfg = std::fs::read_to_string(&s.config_path).unwrap();
    cfg = cfg.replace("record_layer = \"rustls\"", "record_layer = \"pop3sd\"");
    assert!(cfg.contains("record_layer = \"pop3sd\""), "{cfg}");
    std::fs::write(&s.config_path, cfg).unwrap();
    s.reload_ok();
    std::fs::write(mark.with_extension("go"), "go").unwrap();
    client_succeeded(&s, client);
}

/// A reload reaches client certificates on connections opened before it:
/// with the CAs unchanged, SASL EXTERNAL and (where certificates are
/// required) password logins still work on them; with the certificate's CA
/// withdrawn, neither does.
#[test]
fn a_client_ca_withdrawn_by_a_reload_logs_no_one_in_on_open_connections() {
    let (s, port, optional) = Served::with_certificate_listeners();
    let (user, pw) = s.user(0, 1);
    let mark = s.dir.path().join("step");
    let script = format!(
        r#"
OPTIONAL = ("{oh}", {op})
REQUIRED = ("127.0.0.1", {port})
def with_cert(where):
    c = ssl.create_default_context(cafile=INFO["ca"])
    c.load_cert_chain(r"{cert}", r"{key}")
    s_ = c.wrap_socket(socket.create_connection(where, 10), server_hostname="example.com")
    f = s_.makefile("rb")
    assert f.readline().startswith(b"+OK")
    return s_, f
def step(n):
    open(os.environ["MARK"] + n, "w").write("x")
    deadline = time.time() + 20
    while not os.path.exists(os.environ["MARK"] + n + ".go") and time.time() < deadline:
        time.sleep(0.01)
def password(s_, f):
    assert cmd(s_, f, "USER {user}").startswith(b"+OK")
    return cmd(s_, f, "PASS {pw}")
a, fa = with_cert(OPTIONAL)
b, fb = with_cert(REQUIRED)
step("1")  # a reload that changes no CA
r = cmd(a, fa, "AUTH EXTERNAL ="); assert r.startswith(b"+OK"), ("EXTERNAL after a reload", r)
r = password(b, fb); assert r.startswith(b"+OK"), ("required listener, after a reload", r)
cmd(a, fa, "QUIT"); cmd(b, fb, "QUIT")
c, fc = with_cert(OPTIONAL)
d, fd = with_cert(REQUIRED)
step("2")  # the certificate's CA withdrawn
r = cmd(c, fc, "AUTH EXTERNAL ="); assert r.startswith(b"-ERR"), ("EXTERNAL, its CA withdrawn", r)
r = password(d, fd); assert r.startswith(b"-ERR"), ("required listener, its CA withdrawn", r)
cmd(c, fc, "QUIT"); cmd(d, fd, "QUIT")
"#,
        oh = optional.ip(),
        op = optional.port(),
        cert = s.info.client_cert.display(),
        key = s.info.client_key.display(),
    );
    let mut client = spawn_marked(&s, &script, &mark);
    let step = |n: &str| mark.with_file_name(format!("step{n}"));
    let go = |n: &str| std::fs::write(mark.with_file_name(format!("step{n}.go")), "go").unwrap();
    wait_for_mark(&s, &mut client, &step("1"));
    s.reload_ok();
    go("1");
    wait_for_mark(&s, &mut client, &step("2"));
    // example.com's client CA moves to example.org, which cannot vouch for
    // the certificate's example.com address.
    let mut c = s.config.clone();
    c.tenants[1].client_ca = c.tenants[0].client_ca.take();
    std::fs::write(&s.config_path, c.to_toml()).unwrap();
    s.reload_ok();
    go("2");
    client_succeeded(&s, client);
}
