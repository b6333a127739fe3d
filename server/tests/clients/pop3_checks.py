#!/usr/bin/env python3
"""Real-client checks against a running `pop3sd demo --json`, using Python's
poplib and ssl modules. Each subcommand asserts what it checks and exits
non-zero (with a traceback) on the first mismatch.

Usage: pop3_checks.py INFO_JSON SUBCOMMAND [OUT_DIR]
"""
import json
import warnings
import os
import poplib
import socket
import ssl
import sys
import time

warnings.filterwarnings("ignore", category=DeprecationWarning)


def load(path):
    with open(path) as f:
        return json.load(f)


def hostport(s):
    h, p = s.rsplit(":", 1)
    return h, int(p)


def ctx(info, **kw):
    c = ssl.create_default_context(cafile=info["ca_file"])
    for k, v in kw.items():
        setattr(c, k, v)
    return c


def password(info, user):
    for t in info["tenants"]:
        for u in t["users"]:
            if u["user"] == user:
                return u["password"]
    raise KeyError(user)


class POP3S(poplib.POP3_SSL):
    """POP3_SSL that connects to the demo's loopback port but sends SNI."""

    def __init__(self, info, sni, port_key="pop3s", context=None, session=None):
        self._sni, self._session = sni, session
        host, port = hostport(info[port_key])
        self._ctx = context or ctx(info)
        poplib.POP3.__init__(self, host, port, timeout=10)

    def _create_socket(self, timeout):
        raw = socket.create_connection((self.host, self.port), timeout)
        return self._ctx.wrap_socket(raw, server_hostname=self._sni, session=self._session)


def session(info, out):
    """Full session: CAPA, login, STAT, LIST, UIDL, RETR all (saved), TOP, DELE, QUIT."""
    user = "alice@example.com"
    p = POP3S(info, "example.com")
    assert p.getwelcome().startswith(b"+OK"), p.getwelcome()
    caps = p.capa()
    for c in ["TOP", "UIDL", "RESP-CODES", "PIPELINING", "USER", "SASL", "IMPLEMENTATION"]:
        assert c in caps, (c, caps)
    assert "STLS" not in caps, caps
    p.user(user)
    p.pass_(password(info, user))
    count, size = p.stat()
    assert count == info["messages_per_user"], (count, info)
    resp, listing, _ = p.list()
    sizes = [int(l.split()[1]) for l in listing]
    assert sum(sizes) == size, (sizes, size)
    resp, uidls, _ = p.uidl()
    assert len({u.split()[1] for u in uidls}) == count
    assert p.list(2).split() == [b"+OK", b"2", str(sizes[1]).encode()], p.list(2)
    for n in range(1, count + 1):
        resp, lines, octets = p.retr(n)
        data = b"\r\n".join(lines) + b"\r\n"
        assert len(data) == sizes[n - 1], (n, len(data), sizes[n - 1])
        with open(os.path.join(out, f"{n}.eml"), "wb") as f:
            f.write(data)
    resp, lines, _ = p.top(1, 0)
    assert lines[-1] == b"", "TOP n 0 must end after the blank line"
    assert all(b": " in l for l in lines[:-1]), lines
    assert p.dele(1).startswith(b"+OK")
    try:
        p.retr(1)
        raise AssertionError("RETR of a deleted message succeeded")
    except poplib.error_proto as e:
        assert b"-ERR" in e.args[0]
    assert p.quit().startswith(b"+OK")
    p = POP3S(info, "example.com")
    p.user(user)
    p.pass_(password(info, user))
    assert p.stat()[0] == count - 1, p.stat()
    # A dropped connection deletes nothing.
    p.dele(1)
    p.sock.close()
    # The dropped session ends when the server reads the close, which can
    # come after this client's next PASS on a busy machine: [IN-USE] then
    # says to try again, as a real client would.
    deadline = time.time() + 5
    while True:
        p = POP3S(info, "example.com")
        p.user(user)
        try:
            p.pass_(password(info, user))
            break
        except poplib.error_proto as e:
            if b"[IN-USE]" not in e.args[0] or time.time() > deadline:
                raise
            p.close()
            time.sleep(0.05)
    assert p.stat()[0] == count - 1, "DELE without QUIT must not delete"
    p.quit()
    print("OK session")


def isolation(info, out):
    """Same local part in two tenants: each password opens only its own maildrop."""
    a, b = "alice@example.com", "alice@example.org"
    for user, other in [(a, b), (b, a)]:
        p = POP3S(info, user.split("@")[1])
        p.user(user)
        try:
            p.pass_(password(info, other))
            raise AssertionError(f"{user} accepted the password of {other}")
        except poplib.error_proto as e:
            assert e.args[0].startswith(b"-ERR [AUTH]"), e.args
        p.quit()
    for name in ["../example.org/alice", "alice@../example.org", "/etc/passwd", "%2e%2e@example.com"]:
        p = POP3S(info, "example.com")
        try:
            p.user(name)
            p.pass_(password(info, a))
            raise AssertionError(f"{name} logged in")
        except poplib.error_proto as e:
            assert b"-ERR" in e.args[0]
        p.close()
    # A bare user name resolves in the SNI tenant only.
    p = POP3S(info, "example.org")
    p.user("alice")
    p.pass_(password(info, b))
    uidls_org = p.uidl()[1]
    p.quit()
    p = POP3S(info, "example.com")
    p.user("alice")
    p.pass_(password(info, a))
    uidls_com = p.uidl()[1]
    p.quit()
    assert set(uidls_org).isdisjoint(set(uidls_com)), "two tenants shared UIDLs"
    print("OK isolation")


def sni(info, out):
    """Each SNI name gets its tenant's certificate, verified against the CA."""
    host, port = hostport(info["pop3s"])
    for t in info["tenants"]:
        c = ctx(info)
        with socket.create_connection((host, port), 10) as raw:
            with c.wrap_socket(raw, server_hostname=t["domain"]) as s:
                subject = dict(x[0] for x in s.getpeercert()["subject"])
                assert subject["commonName"] == t["domain"], (subject, t["domain"])
    print("OK sni")


def external(info, out):
    """A client certificate logs in with AUTH EXTERNAL; CAPA offers it only then."""
    c = ctx(info)
    c.load_cert_chain(info["client_cert"], info["client_key"])
    p = POP3S(info, "example.com", port_key="external", context=c)
    caps = p.capa()
    assert "EXTERNAL" in caps.get("SASL", []), caps
    assert p._shortcmd("AUTH EXTERNAL =").startswith(b"+OK")
    assert p.stat()[0] >= 0
    p.quit()
    # Without a certificate the same listener still works with passwords.
    p = POP3S(info, "example.com", port_key="external")
    caps = p.capa()
    assert "EXTERNAL" not in caps.get("SASL", []), caps
    try:
        p._shortcmd("AUTH EXTERNAL =")
        raise AssertionError("EXTERNAL without a certificate succeeded")
    except poplib.error_proto:
        pass
    p.user("bob@example.com")
    p.pass_(password(info, "bob@example.com"))
    p.quit()
    print("OK external")


def close_notify(info, out):
    """After QUIT the server answers, sends close_notify and closes."""
    host, port = hostport(info["pop3s"])
    c = ctx(info)
    raw = socket.create_connection((host, port), 10)
    s = c.wrap_socket(raw, server_hostname="example.com", suppress_ragged_eofs=False)
    f = s.makefile("rb")
    assert f.readline().startswith(b"+OK")
    s.sendall(b"QUIT\r\n")
    assert f.readline().startswith(b"+OK")
    # A clean TLS close (close_notify) reads as b""; a bare TCP close would raise SSLEOFError.
    assert f.read() == b""
    s.close()
    # A client that closes first (close_notify before QUIT) gets the
    # server's close_notify back: unwrap() sends ours and waits for it.
    # Right after the greeting rustls still has the connection; after the
    # first answer pop3sd's record layer has it.
    for version in [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2]:
        for command in [None, b"NOOP\r\n"]:
            c = ctx(info, minimum_version=version, maximum_version=version)
            raw = socket.create_connection((host, port), 10)
            s = c.wrap_socket(raw, server_hostname="example.com", suppress_ragged_eofs=False)
            f = s.makefile("rb")
            assert f.readline().startswith(b"+OK")
            if command:
                s.sendall(command)
                assert f.readline().startswith(b"-ERR")  # NOOP before login
            f.close()
            plain = s.unwrap()
            assert plain.recv(10) == b"", "the server closes after its close_notify"
            plain.close()
    print("OK close_notify")


def resume(info, out):
    """Every resumption attempt with a valid session succeeds (TLS 1.3 and 1.2)."""
    host, port = hostport(info["pop3s"])
    n = int(os.environ.get("RESUME_CONNECTIONS", "16"))
    for version in [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2]:
        c = ctx(info, minimum_version=version, maximum_version=version)
        raw = socket.create_connection((host, port), 10)
        s = c.wrap_socket(raw, server_hostname="example.com")
        f = s.makefile("rb")
        f.readline()  # the greeting; TLS 1.3 tickets arrive before it
        s.sendall(b"QUIT\r\n")
        f.readline()
        sess = s.session
        s.close()
        resumed = 0
        for _ in range(n):
            raw = socket.create_connection((host, port), 10)
            s = c.wrap_socket(raw, server_hostname="example.com", session=sess)
            f = s.makefile("rb")
            f.readline()
            s.sendall(b"USER alice@example.com\r\n")
            f.readline()
            s.sendall(("PASS %s\r\n" % password(info, "alice@example.com")).encode())
            assert f.readline().startswith(b"+OK"), "login on a resumed session"
            s.sendall(b"QUIT\r\n")
            f.readline()
            resumed += bool(s.session_reused)
            if version == ssl.TLSVersion.TLSv1_3:
                sess = s.session  # a fresh ticket each time, as clients do
            s.close()
        assert resumed == n, f"{version}: {resumed} of {n} resumed"
    print("OK resume")


def tls_versions(info, out):
    """TLS 1.0 and 1.1 are refused by the server."""
    host, port = hostport(info["pop3s"])
    for version in [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1]:
        c = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        c.load_verify_locations(info["ca_file"])
        try:
            c.set_ciphers("DEFAULT@SECLEVEL=0")
            c.minimum_version = version
            c.maximum_version = version
        except (ValueError, ssl.SSLError) as e:
            print(f"skip {version}: client cannot offer it ({e})")
            continue
        raw = socket.create_connection((host, port), 10)
        try:
            c.wrap_socket(raw, server_hostname="example.com")
            raise AssertionError(f"{version} handshake succeeded")
        except ssl.SSLError as e:
            text = str(e)
            if "NO_PROTOCOLS_AVAILABLE" in text or "no protocols available" in text:
                print(f"skip {version}: client library refuses it locally")
                continue
            # The refusal must come from the server, as a TLS alert
            # (rustls answers protocol_version or handshake_failure).
            assert "ALERT" in text.upper(), text
        finally:
            raw.close()
    print("OK tls_versions")


def stls(info, out):
    """Plain listener: STLS offered, no password before TLS, login after."""
    host, port = hostport(info["pop3"])
    p = poplib.POP3(host, port, timeout=10)
    caps = p.capa()
    assert "STLS" in caps and "USER" not in caps and "SASL" not in caps, caps
    try:
        p.user("alice@example.com")
        raise AssertionError("USER accepted before TLS")
    except poplib.error_proto as e:
        assert e.args[0].startswith(b"-ERR [AUTH]"), e.args
    c = ctx(info)
    c.check_hostname = False  # poplib sends SNI = the host we dialled (127.0.0.1)
    p.stls(context=c)
    caps = p.capa()
    assert "STLS" not in caps and "USER" in caps, caps
    p.user("carol@example.org")
    p.pass_(password(info, "carol@example.org"))
    assert p.stat()[0] == info["messages_per_user"]
    p.quit()
    print("OK stls")


def _pump_handshake(sock, obj, inc, outg):
    """Drives a MemoryBIO handshake to completion, holding back the client's
    last flight (its Finished) so that the caller can send data with it."""
    while True:
        try:
            obj.do_handshake()
            return
        except ssl.SSLWantReadError:
            if outg.pending:
                sock.sendall(outg.read())
            data = sock.recv(65536)
            assert data, "server closed during the handshake"
            inc.write(data)


def _read_lines(sock, obj, inc, want):
    """Reads decrypted lines until `want` of them arrived or the peer closed."""
    buf = b""
    while buf.count(b"\r\n") < want:
        try:
            chunk = obj.read(65536)
            if not chunk:
                break
            buf += chunk
            continue
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLZeroReturnError:
            break
        data = sock.recv(65536)
        if not data:
            break
        inc.write(data)
    return buf.split(b"\r\n")[:want]


def commands_with_finished(info, out):
    """Commands sent in the same packet as the client's TLS Finished are
    answered (they arrive before the server has seen the handshake end)."""
    user, pw = "alice@example.com", password(info, "alice@example.com")
    script = f"USER {user}\r\nPASS {pw}\r\nSTAT\r\nQUIT\r\n".encode()
    for attempt in range(10):
        for listener in ("pop3s", "pop3"):
            sock = socket.create_connection(hostport(info[listener]), timeout=10)
            if listener == "pop3":
                f = sock.makefile("rb")
                assert f.readline().startswith(b"+OK")
                sock.sendall(b"STLS\r\n")
                assert f.readline().startswith(b"+OK")
            c = ctx(info, minimum_version=ssl.TLSVersion.TLSv1_3)
            inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
            obj = c.wrap_bio(inc, outg, server_hostname="example.com")
            _pump_handshake(sock, obj, inc, outg)
            obj.write(script)
            # The Finished and the commands leave in one write.
            sock.sendall(outg.read())
            want = 5 if listener == "pop3s" else 4
            lines = _read_lines(sock, obj, inc, want)
            if listener == "pop3s":
                assert lines[0].startswith(b"+OK"), lines
                lines = lines[1:]
            assert len(lines) == 4, (attempt, listener, lines)
            assert all(l.startswith(b"+OK") for l in lines), (attempt, listener, lines)
            n = info["messages_per_user"]
            assert lines[2].startswith(b"+OK %d " % n), lines
            sock.close()
    print("OK commands_with_finished")


if __name__ == "__main__":
    info = load(sys.argv[1])
    out = sys.argv[3] if len(sys.argv) > 3 else "."
    globals()[sys.argv[2]](info, out)
