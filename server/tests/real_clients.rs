//! The real server on loopback, driven by Python's poplib and ssl for what
//! the other clients cannot exercise: SNI, STLS, client certificates,
//! resumption on every core and TLS edge cases. The download matrix
//! (poplib, curl, fetchmail, getmail6, openssl s_client) is client_matrix.rs.

mod common;

use std::process::Command;

use common::{expected_message, have, Demo, Served};

#[test]
fn poplib_full_session_with_exact_bytes() {
    let demo = Demo::start(&[]);
    let out = demo.python_check("session");
    for i in 0..demo.messages_per_user() {
        let got = std::fs::read(out.join(format!("{}.eml", i + 1))).unwrap();
        assert_eq!(
            got,
            expected_message("example.com", "alice", i),
            "message {}",
            i + 1
        );
    }
}

#[test]
fn tenants_are_isolated_and_sni_picks_certificates() {
    let demo = Demo::start(&[]);
    demo.python_check("isolation");
    demo.python_check("sni");
}

/// RFC 2449 lifted RFC 1939's 40 characters per argument: a user whose
/// address is longer logs in with USER and PASS (as Outlook or a poplib
/// script would), and AUTH tolerates the stray spaces some clients send.
#[test]
fn long_login_names_and_stray_spaces_log_in() {
    let served = Served::start(|_| {});
    let long = "firstname.middlename.lastname.sales@example.com";
    assert!(long.len() > 40);
    let mut add = Command::new(common::bin())
        .args(["user", "add", "-c"])
        .arg(&served.config_path)
        .arg(long)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .expect("pop3sd user add");
    use std::io::Write;
    add.stdin
        .take()
        .expect("stdin")
        .write_all(b"long-name-secret\n")
        .expect("password");
    assert!(add.wait().expect("user add").success());
    served.reload_ok();
    let (alice, alice_pw) = served.user(0, 0);
    served.python(&format!(
        r#"
import base64
s, f = tls()
assert f.readline().startswith(b"+OK")
r = cmd(s, f, "USER {long}"); assert r.startswith(b"+OK"), r
r = cmd(s, f, "PASS long-name-secret"); assert r.startswith(b"+OK"), r
r = cmd(s, f, "STAT"); assert r == b"+OK 0 0\r\n", r
r = cmd(s, f, "QUIT"); assert r.startswith(b"+OK"), r
s.close()
s, f = tls()
assert f.readline().startswith(b"+OK")
r = cmd(s, f, "AUTH  PLAIN "); assert r == b"+ \r\n", r
token = base64.b64encode(b"\0{alice}\0{alice_pw}").decode()
r = cmd(s, f, token); assert r.startswith(b"+OK"), r
r = cmd(s, f, "QUIT"); assert r.startswith(b"+OK"), r
"#
    ));
}

#[test]
fn stls_close_notify_and_old_tls_versions() {
    let demo = Demo::start(&[]);
    demo.python_check("stls");
    demo.python_check("close_notify");
    demo.python_check("tls_versions");
}

#[test]
fn commands_in_the_same_packet_as_the_tls_finished_are_answered() {
    let demo = Demo::start(&[]);
    demo.python_check("commands_with_finished");
}

#[test]
fn client_certificate_logs_in_with_sasl_external() {
    let demo = Demo::start(&[]);
    demo.python_check("external");
    assert!(demo.log().contains("mech=\"EXTERNAL\""), "{}", demo.log());
}

#[test]
fn every_resumption_succeeds_on_every_core() {
    let demo = Demo::start(&["--cores", "2"]);
    demo.python_check("resume");
    // The login lines carry the session id (core number in its top bits)
    // and whether the handshake was resumed.
    let log = demo.log();
    let mut cores_resumed = std::collections::HashSet::new();
    for line in log
        .lines()
        .filter(|l| l.contains(" login ") && l.contains("resumed=true"))
    {
        if let Some(id) = line
            .split("session=")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
        {
            if let Ok(id) = id.parse::<u64>() {
                cores_resumed.insert(id >> 48);
            }
        }
    }
    let cores = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(2);
    assert_eq!(
        cores_resumed.len(),
        cores,
        "resumed logins seen on cores {cores_resumed:?}\n{log}"
    );
}

/// A session made where no certificate was asked for must not resume on a
/// listener that requires one (nor on one that merely asks): tickets and
/// cached sessions are scoped by client-certificate mode.
#[test]
fn resumption_does_not_cross_client_certificate_modes() {
    let (s, port, optional) = Served::with_certificate_listeners();
    s.python(&format!(
        r#"
REQUIRED = ("127.0.0.1", {port})
OPTIONAL = ("{oh}", {op})
def session_from(c, where):
    s_ = c.wrap_socket(socket.create_connection(where, 10), server_hostname="example.com")
    f = s_.makefile("rb")
    assert f.readline().startswith(b"+OK")  # TLS 1.3 tickets arrive before it
    cmd(s_, f, "QUIT")
    sess = s_.session
    s_.close()
    return sess
def attempt(c, where, sess):
    """(resumed, greeting) for a connection offering `sess`; greeting None if refused."""
    try:
        s_ = c.wrap_socket(socket.create_connection(where, 10), server_hostname="example.com", session=sess)
        line = s_.makefile("rb").readline()
    except (ssl.SSLError, ConnectionError, OSError) as e:
        return False, None
    reused = s_.session_reused
    s_.close()
    return reused, (line or None)
for v in [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2]:
    c = ssl.create_default_context(cafile=INFO["ca"])
    c.minimum_version = c.maximum_version = v
    sess = session_from(c, addr("pop3s"))
    # The control: the same listener kind resumes it.
    assert attempt(c, addr("pop3s"), sess)[0], (v, "no resumption at all")
    sess = session_from(c, addr("pop3s"))
    reused, greeting = attempt(c, REQUIRED, sess)
    assert not reused and greeting is None, (v, "resumed past a required certificate", reused, greeting)
    sess = session_from(c, addr("pop3s"))
    reused, greeting = attempt(c, OPTIONAL, sess)
    assert not reused and greeting and greeting.startswith(b"+OK"), (v, reused, greeting)
print("ok")
"#,
        oh = optional.ip(),
        op = optional.port()
    ));
}

/// A client certificate speaks for its own tenant only: where certificates
/// are required it binds the connection to that tenant (no password login
/// into another, no use under another tenant's name), and under another
/// tenant's name it enables no EXTERNAL.
#[test]
fn a_client_certificate_binds_the_connection_to_its_tenant() {
    let (s, port, optional) = Served::with_certificate_listeners();
    let (same_user, same_pw) = s.user(0, 1);
    let (other_user, other_pw) = s.user(1, 0);
    assert!(same_user.ends_with("@example.com") && other_user.ends_with("@example.org"));
    s.python(&format!(
        r#"
REQUIRED = ("127.0.0.1", {port})
OPTIONAL = ("{oh}", {op})
def with_cert(where, sni):
    c = ssl.create_default_context(cafile=INFO["ca"])
    c.load_cert_chain(r"{cert}", r"{key}")
    s_ = c.wrap_socket(socket.create_connection(where, 10), server_hostname=sni)
    f = s_.makefile("rb")
    return s_, f, f.readline()
# Under its own tenant's name: password logins for that tenant only.
a, fa, g = with_cert(REQUIRED, "example.com")
assert g.startswith(b"+OK"), g
assert cmd(a, fa, "USER {other_user}").startswith(b"+OK")
r = cmd(a, fa, "PASS {other_pw}"); assert r.startswith(b"-ERR [AUTH]"), ("another tenant's login", r)
assert cmd(a, fa, "USER {same_user}").startswith(b"+OK")
r = cmd(a, fa, "PASS {same_pw}"); assert r.startswith(b"+OK"), r
cmd(a, fa, "QUIT")
# Under another tenant's name: refused after the handshake.
b, fb, g = with_cert(REQUIRED, "example.org")
assert g.startswith(b"-ERR [AUTH]"), g
assert fb.read() == b""
# Where certificates are optional, EXTERNAL only under its own tenant's name.
for sni, offered in [("example.com", True), ("example.org", False)]:
    o, fo, g = with_cert(OPTIONAL, sni)
    assert g.startswith(b"+OK"), g
    o.sendall(b"CAPA\r\n")
    capa = b""
    while not capa.endswith(b"\r\n.\r\n"):
        capa += fo.readline()
    sasl = [l for l in capa.split(b"\r\n") if l.startswith(b"SASL")]
    assert (b"EXTERNAL" in b"".join(sasl)) == offered, (sni, capa)
    cmd(o, fo, "QUIT")
print("ok")
"#,
        oh = optional.ip(),
        op = optional.port(),
        cert = s.info.client_cert.display(),
        key = s.info.client_key.display(),
    ));
    assert!(s
        .log()
        .contains("client certificate not accepted for this tenant"));
}

#[test]
fn certificate_request_only_where_configured() {
    if !have("openssl") {
        panic!("openssl is required (installed by .ci/run)");
    }
    let demo = Demo::start(&[]);
    let handshake_as = |key: &str, sni: &str, extra: &str| {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf 'QUIT\\r\\n' | timeout 20 openssl s_client -connect {} -servername {sni} {extra} -CAfile {} -msg -ign_eof 2>&1",
                demo.addr(key),
                demo.ca()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let handshake = |key: &str| handshake_as(key, "example.com", "");
    let plain = handshake("pop3s");
    assert!(plain.contains("+OK pop3sd ready"), "{plain}");
    assert!(
        !plain.contains("CertificateRequest"),
        "CertificateRequest sent without client-certificate configuration:\n{plain}"
    );
    let ext = handshake("external");
    assert!(
        ext.contains("CertificateRequest"),
        "no CertificateRequest on the client-certificate listener:\n{ext}"
    );
    // It names the client CAs of the tenant the client asked for only:
    // example.com has one, example.org none.
    assert!(
        ext.contains("Acceptable client certificate CA names"),
        "{ext}"
    );
    for version in ["-tls1_3", "-tls1_2"] {
        let other = handshake_as("external", "example.org", version);
        assert!(other.contains("CertificateRequest"), "{other}");
        assert!(
            other.contains("No client certificate CA names sent"),
            "another tenant's CA named ({version}):\n{other}"
        );
    }
}

/// STLS after pipelined commands whose answers fill more than the output
/// buffer: every answer, then "+OK Begin TLS", reaches the client, and the
/// TLS session that follows works. (Before, only the first buffer's worth
/// went out and the client waited for the +OK until the handshake timed
/// out.)
#[test]
fn stls_after_a_long_pipelined_batch_still_begins_tls() {
    // The smallest output buffer, so that the answers outgrow it.
    let s = Served::start(|c| c.runtime.write_buffer_records = 1);
    let (user, pw) = s.user(0, 0);
    s.python(&format!(
        r#"
p = socket.create_connection(addr("pop3"), 10)
f = p.makefile("rb")
assert f.readline().startswith(b"+OK")
p.sendall(b"CAPA\r\n" * 20000 + b"STLS\r\n")
capas = 0
while True:
    line = f.readline()
    assert line, ("closed after", capas, "CAPA answers")
    if line == b".\r\n":
        capas += 1
    elif line.startswith(b"+OK Begin TLS"):
        break
assert capas == 20000, capas
ctx = ssl.create_default_context(cafile=INFO["ca"])
t = ctx.wrap_socket(p, server_hostname="example.com")
ft = t.makefile("rb")
assert cmd(t, ft, "USER {user}").startswith(b"+OK")
assert cmd(t, ft, "PASS {pw}").startswith(b"+OK")
assert cmd(t, ft, "QUIT").startswith(b"+OK")
"#
    ));
}
