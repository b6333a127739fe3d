//! The hostile-input catalogue, against the real server: for each attack,
//! the server answers clearly or closes, a logged-in session of another
//! user carries on throughout, and the server's memory stays bounded
//! (measured, not assumed).

mod common;

use std::time::Duration;

use common::Served;

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

#[test]
fn the_catalogue() {
    let s = Served::start(|c| {
        c.limits.handshake_timeout_secs = 2;
        c.limits.auth_timeout_secs = 2;
        c.limits.max_connections_per_ip = 20;
        c.limits.failure_delay_ms = 100;
        c.limits.max_failure_delay_ms = 3000;
        c.limits.failure_log_threshold = 5;
    });
    let (alice, apw) = s.user(0, 0);
    let (bob, bpw) = s.user(0, 1);
    let (carol, cpw) = s.user(1, 0);
    let before = rss_kib(s.pid());
    let out = s.python(&format!(
        r##"
import base64, threading
report = []
def item(name):
    report.append(name)
    print("-", name, flush=True)

def closed_or_err(f):
    line = f.readline()
    return line == b"" or line.startswith(b"-ERR")

# A witness: another user's session, open through every attack.
w, fw = tls(); fw.readline()
cmd(w, fw, "USER {bob}"); assert cmd(w, fw, "PASS {bpw}").startswith(b"+OK")

item("garbage instead of a ClientHello")
raw = socket.create_connection(addr("pop3s"), 5)
raw.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(2000))
raw.settimeout(5)
data = raw.recv(100)
assert not data.startswith(b"+OK"), data   # an alert or a close, never POP3
raw.close()

item("a client offering only TLS 1.0")
c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT); c.load_verify_locations(INFO["ca"])
try:
    c.set_ciphers("DEFAULT@SECLEVEL=0"); c.minimum_version = c.maximum_version = ssl.TLSVersion.TLSv1
    c.wrap_socket(socket.create_connection(addr("pop3s"), 5), server_hostname="example.com")
    raise AssertionError("TLS 1.0 accepted")
except ssl.SSLError:
    pass
except ValueError:
    pass

item("an unknown SNI name gets the default certificate")
c = ssl.create_default_context(cafile=INFO["ca"]); c.check_hostname = False
s1 = c.wrap_socket(socket.create_connection(addr("pop3s"), 5), server_hostname="unknown.invalid")
cn = dict(x[0] for x in s1.getpeercert()["subject"])["commonName"]
assert cn == "example.com", cn
s1.close()

item("slowloris during the handshake (1 byte a second)")
raw = socket.create_connection(addr("pop3s"), 10)
t = time.time()
hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + os.urandom(32)
closed = False
for b in hello:
    try:
        raw.sendall(bytes([b]))
    except OSError:
        closed = True
        break
    raw.settimeout(1)
    try:
        if raw.recv(1) == b"":
            closed = True
            break
    except socket.timeout:
        pass
    if time.time() - t > 6:
        break
assert closed, "a trickling handshake was not cut off"
assert time.time() - t < 6

item("slowloris in AUTHORIZATION")
s2, f2 = tls(); f2.readline()
t = time.time()
for b in b"USER alice@exam":
    try:
        s2.sendall(bytes([b]))
    except OSError:
        break
    time.sleep(0.5)
    if time.time() - t > 5:
        break
assert f2.readline() == b"-ERR Disconnected for inactivity.\r\n"

item("a 1 MiB line")
s3, f3 = tls(); f3.readline()
s3.sendall(b"X" * (1 << 20) + b"\r\nNOOP\r\n")
assert f3.readline() == b"-ERR Line too long.\r\n"
assert f3.readline().startswith(b"-ERR")   # NOOP before login
cmd(s3, f3, "QUIT")

item("100,000 pipelined commands sent without reading the replies")
s4, f4 = tls(); f4.readline()
cmd(s4, f4, "USER {carol}"); assert cmd(s4, f4, "PASS {cpw}").startswith(b"+OK")
sent = threading.Thread(target=lambda: s4.sendall(b"NOOP\r\n" * 100000))
sent.start()
time.sleep(2)     # the server must not buffer all of it meanwhile
rss_mid = int([l for l in open("/proc/{pid}/status") if l.startswith("VmRSS:")][0].split()[1])
ok = 0
for _ in range(100000):
    if f4.readline() == b"+OK\r\n":
        ok += 1
sent.join()
assert ok == 100000, ok
cmd(s4, f4, "QUIT")
print("rss while flooded:", rss_mid)

item("non-UTF-8 and NUL bytes in every argument")
s5, f5 = tls(); f5.readline()
for line in [b"USER \xff\xfe\x00", b"PASS \x00\x80", b"AUTH \xff", b"AUTH PLAIN \x00\x00", b"APOP \xc3 \x00", b"LIST \x00", b"\x00\x00\x00", b"CAPA \xff"]:
    s5.sendall(line + b"\r\n")
    r = f5.readline()
    assert r.startswith(b"-ERR") or r.startswith(b"+"), r
    if r.startswith(b"+ "):
        s5.sendall(b"*\r\n"); f5.readline()
s5.close(); f5.close()

item("path traversal and odd names as users")
for name in ["../example.org/alice", "..%2f..%2fetc", "%2e%2e@example.com", "/etc/passwd", "a" * 300 + "@example.com",
             "alice@example.com/../example.org", "\u212a\u0131@example.com", "alice\u0000@example.com", "alice@EXAMPLE.COM."]:
    s6, f6 = tls(); f6.readline()
    s6.sendall(b"USER " + name.encode("utf-8", "surrogateescape") + b"\r\n")
    r = f6.readline()
    if r.startswith(b"+OK"):
        r = cmd(s6, f6, "PASS {apw}")
        # Only the genuine spelling of alice (case and FQDN dot) may log in.
        assert r.startswith(b"-ERR") or name == "alice@EXAMPLE.COM.", (name, r)
        if r.startswith(b"+OK"):
            # Ends the session here: a dropped one holds alice's maildrop
            # until the server reads the close, and alice logs in next.
            assert cmd(s6, f6, "QUIT").startswith(b"+OK")
    s6.close(); f6.close()

item("AUTH PLAIN with bad base64, oversized data, a foreign authorization identity")
s7, f7 = tls(); f7.readline()
assert cmd(s7, f7, "AUTH PLAIN !!!!").startswith(b"-ERR [AUTH]")
assert cmd(s7, f7, "AUTH PLAIN") == b"+ \r\n"
assert cmd(s7, f7, "A" * 5000).startswith(b"-ERR")
s7b, f7b = tls(); f7b.readline()
foreign = base64.b64encode(b"{bob}\x00{alice}\x00{apw}").decode()
assert cmd(s7b, f7b, "AUTH PLAIN " + foreign).startswith(b"-ERR [AUTH]")

item("RETR of a message deleted in the same session; numbers 0, -1, 2^64, text")
s8, f8 = tls(); f8.readline()
cmd(s8, f8, "USER {alice}"); assert cmd(s8, f8, "PASS {apw}").startswith(b"+OK")
assert cmd(s8, f8, "DELE 1").startswith(b"+OK")
assert cmd(s8, f8, "RETR 1").startswith(b"-ERR")
for n in ["0", "-1", "18446744073709551616", "one", "1.5", ""]:
    assert cmd(s8, f8, "RETR " + n).startswith(b"-ERR"), n
assert cmd(s8, f8, "RSET").startswith(b"+OK")
cmd(s8, f8, "QUIT")

item("more connections from one address than allowed")
held = []
refused = False
for i in range(25):
    si, fi = tls(source="127.0.0.9")
    line = fi.readline()
    held.append((si, fi))
    if line.startswith(b"-ERR [SYS/TEMP] Too many connections from your address"):
        refused = True
        break
assert refused
for si, fi in held:
    si.close(); fi.close()

item("password guessing against one user")
times = []
for i in range(6):
    sg, fg = tls(source="127.0.0.7"); fg.readline()
    cmd(sg, fg, "USER {alice}")
    t = time.time(); r = cmd(sg, fg, "PASS guess%d" % i); times.append(time.time() - t)
    assert r.startswith(b"-ERR [AUTH]")
    sg.close(); fg.close()
assert times[-1] > times[0] * 2 and times[-1] > 0.5, times
# Another user, from elsewhere, is not slowed.
so, fo = tls(source="127.0.0.8"); fo.readline()
cmd(so, fo, "USER {carol}")
# (2 s: far below the guessing delay, and above a busy machine's stalls.)
t = time.time(); assert cmd(so, fo, "PASS {cpw}").startswith(b"+OK"); assert time.time() - t < 2
# And the guessed-at user still gets in with the right password at once.
sa, fa = tls(source="127.0.0.6"); fa.readline()
cmd(sa, fa, "USER {alice}")
t = time.time(); assert cmd(sa, fa, "PASS {apw}").startswith(b"+OK"); assert time.time() - t < 2

# The witness carried on through all of it.
assert cmd(w, fw, "STAT").startswith(b"+OK")
assert cmd(w, fw, "QUIT").startswith(b"+OK")
print("items:", len(report))
"##,
        pid = s.pid()
    ));
    assert!(out.contains("items: 13"), "{out}");
    assert!(
        s.wait_log(Duration::from_secs(3), |l| l
            .contains("possible password guessing")),
        "guessing was not logged:\n{}",
        s.log()
    );
    let after = rss_kib(s.pid());
    assert!(
        after < before + 64 * 1024,
        "server RSS grew from {before} KiB to {after} KiB over the catalogue"
    );
    let mid: u64 = out
        .lines()
        .find_map(|l| l.strip_prefix("rss while flooded: "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(
        mid < before + 64 * 1024,
        "RSS {mid} KiB while 100,000 commands were pending (from {before} KiB)"
    );
}
