//! PROXY protocol v1 and v2 through a real HAProxy (Debian's), started by
//! the test on loopback in front of a pop3sd listener.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{have, Served};

struct Haproxy(std::process::Child);

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn client_addresses_come_from_trusted_proxy_headers_only() {
    assert!(
        have("haproxy"),
        "haproxy is required (installed by .ci/run)"
    );
    let backend = common::free_port();
    let (v2, v1) = (common::free_port(), common::free_port());
    let s = Served::start(|c| {
        c.proxy.trusted_networks = vec!["127.0.0.1/32".into()];
        c.limits.max_connections_per_ip = 1;
        c.listeners.push(pop3sd::config::ListenerConfig {
            address: format!("127.0.0.1:{backend}").parse().unwrap(),
            kind: pop3sd::config::ListenerKind::Pop3s,
            client_certificates: pop3sd::config::ClientCerts::None,
            proxy_protocol: true,
            tcp_congestion: None,
        });
    });
    let cfg = s.dir.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  maxconn 200\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n\
             frontend v2\n  bind 127.0.0.1:{v2}\n  default_backend pop_v2\n\
             backend pop_v2\n  server s 127.0.0.1:{backend} send-proxy-v2\n\
             frontend v1\n  bind 127.0.0.1:{v1}\n  default_backend pop_v1\n\
             backend pop_v1\n  server s 127.0.0.1:{backend} send-proxy\n"
        ),
    )
    .unwrap();
    let _h = Haproxy(
        Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Ready once both front ports accept (a probe that closes at once
    // costs the backend nothing but a connection without a session).
    for port in [v1, v2] {
        let up = (0..200).any(|_| {
            let ok = std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
            if !ok {
                std::thread::sleep(Duration::from_millis(50));
            }
            ok
        });
        assert!(up, "haproxy does not listen on {port}");
    }
    let (user, pw) = s.user(0, 0);
    let (user2, pw2) = s.user(1, 0);
    s.python(&format!(
        r#"
def via(port, source):
    ctx = ssl.create_default_context(cafile=INFO["ca"])
    raw = socket.create_connection(("127.0.0.1", port), 10, source_address=(source, 0))
    s_ = ctx.wrap_socket(raw, server_hostname="example.com")
    return s_, s_.makefile("rb")
for port, source, u, p in [({v2}, "127.0.0.5", "{user}", "{pw}"), ({v1}, "127.0.0.6", "{user2}", "{pw2}")]:
    s_, f = via(port, source)
    assert f.readline().startswith(b"+OK")
    cmd(s_, f, "USER " + u)
    assert cmd(s_, f, "PASS " + p).startswith(b"+OK")
    assert cmd(s_, f, "QUIT").startswith(b"+OK")
# Limits count the real client: two clients behind the one proxy address
# both get in, a second connection of the same client does not.
a, fa = via({v2}, "127.0.0.7"); assert fa.readline().startswith(b"+OK")
b, fb = via({v2}, "127.0.0.8"); assert fb.readline().startswith(b"+OK")
c, fc = via({v2}, "127.0.0.7")
line = fc.readline()
assert line.startswith(b"-ERR [SYS/TEMP] Too many connections from your address"), line
"#
    ));
    let log = s.log();
    assert!(
        log.lines()
            .any(|l| l.contains(" login ") && l.contains("client=127.0.0.5")),
        "{log}"
    );
    assert!(
        log.lines()
            .any(|l| l.contains(" login ") && l.contains("client=127.0.0.6")),
        "{log}"
    );

    // A PROXY header from an untrusted address is refused, and a trusted
    // peer that sends none is refused too.
    s.python(&format!(
        r#"
raw = socket.create_connection(("127.0.0.1", {backend}), 10, source_address=("127.0.0.9", 0))
raw.sendall(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 995\r\n")
raw.settimeout(5)
data = b""
try:
    while True:
        chunk = raw.recv(4096)
        if not chunk:
            break
        data += chunk
except (ConnectionResetError, socket.timeout):
    pass
assert b"+OK" not in data, data
ctx = ssl.create_default_context(cafile=INFO["ca"])
raw = socket.create_connection(("127.0.0.1", {backend}), 10)
try:
    ctx.wrap_socket(raw, server_hostname="example.com").recv(10)
    raise AssertionError("a trusted peer without a PROXY header was served")
except (ssl.SSLError, ConnectionResetError, OSError):
    pass
"#
    ));
    assert!(
        s.wait_log(Duration::from_secs(3), |l| l.contains(
            "PROXY header from an address not in proxy.trusted_networks"
        )),
        "{}",
        s.log()
    );
    assert!(
        !s.log().contains("203.0.113.9"),
        "a forged address must never be used"
    );
}
