//! The real-client matrix: mail is delivered over LMTP (Python's
//! `smtplib.LMTP`, a real LMTP client), then downloaded by each client
//! people use — Python's poplib, `curl pop3s://`, fetchmail and getmail6
//! (keep and delete modes) and scripted `openssl s_client` dialogues — and
//! the bytes each ends up with are compared with what was delivered.
//! After a delete-mode run the maildrop must be empty; after a keep-mode
//! run it must be unchanged.

mod common;

use std::path::Path;
use std::process::Command;

use common::{assert_success, have, Demo};

const SENDER: &str = "sender@sender.test";

/// Messages that exercise the edges a client can get wrong: lines that
/// start with dots (stuffed on the wire), a line that is just a dot, 8-bit
/// text, an empty body, a body line starting "From ", and a large message
/// (over a TLS record and several socket buffers).
fn messages() -> Vec<Vec<u8>> {
    let mut large = b"Subject: large\r\nMIME-Version: 1.0\r\n\r\n".to_vec();
    for i in 0..6_000 {
        large.extend_from_slice(format!("{i:05} {}\r\n", "x".repeat(70)).as_bytes());
        if i % 500 == 0 {
            large.extend_from_slice(b".\r\n..\r\n");
        }
    }
    vec![
        b"From: a@sender.test\r\nTo: u@example.com\r\nSubject: plain\r\n\r\nHello.\r\n".to_vec(),
        b"Subject: dots\r\n\r\n.\r\n..\r\n.leading\r\nmiddle . dot\r\n...\r\n".to_vec(),
        "Subject: 8-bit\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\nété €\r\n"
            .as_bytes()
            .to_vec(),
        b"Subject: empty body\r\n\r\n".to_vec(),
        b"Subject: mbox quirk\r\n\r\nFrom the start of a line.\r\n>From quoted.\r\n".to_vec(),
        large,
    ]
}

/// Delivers the messages to `rcpt` over LMTP and returns the bytes a
/// client must retrieve: each with the Return-Path line LMTP adds.
fn deliver(demo: &Demo, rcpt: &str) -> Vec<Vec<u8>> {
    let dir = demo.scratch(&format!("outgoing-{rcpt}"));
    let msgs = messages();
    let mut files = Vec::new();
    for (i, m) in msgs.iter().enumerate() {
        let p = dir.join(format!("{i}.eml"));
        std::fs::write(&p, m).unwrap();
        files.push(p);
    }
    let lmtp = demo.addr("lmtp");
    let script = r#"
import smtplib, sys
host, port, sender, rcpt = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
c = smtplib.LMTP(host, port, timeout=20)
c.ehlo("client.test")
for path in sys.argv[5:]:
    refused = c.sendmail(sender, [rcpt], open(path, "rb").read())
    assert not refused, refused
c.quit()
"#;
    let o = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(lmtp.ip().to_string())
        .arg(lmtp.port().to_string())
        .arg(SENDER)
        .arg(rcpt)
        .args(&files)
        .output()
        .unwrap();
    assert_success(&o, "LMTP delivery", demo);
    msgs.into_iter()
        .map(|m| {
            let mut v = format!("Return-Path: <{SENDER}>\r\n").into_bytes();
            v.extend_from_slice(&m);
            v
        })
        .collect()
}

/// Python prelude: `connect(user)` logs in with poplib over TLS to the
/// demo's loopback port, sending the user's domain as SNI.
fn poplib_prelude(demo: &Demo) -> String {
    let a = demo.addr("pop3s");
    format!(
        r#"
import poplib, socket, ssl, sys, os
CTX = ssl.create_default_context(cafile=r"{ca}")
class P(poplib.POP3_SSL):
    def _create_socket(self, timeout):
        return CTX.wrap_socket(socket.create_connection(("{ip}", {port}), timeout), server_hostname=self.host)
def connect(user, pw):
    p = P(user.split("@")[1], {port}, context=CTX, timeout=20)
    p.user(user)
    p.pass_(pw)
    return p
"#,
        ca = demo.ca(),
        ip = a.ip(),
        port = a.port()
    )
}

fn python(demo: &Demo, what: &str, body: &str, args: &[&str]) -> String {
    let o = Command::new("python3")
        .arg("-c")
        .arg(format!("{}{body}", poplib_prelude(demo)))
        .args(args)
        .output()
        .unwrap();
    assert_success(&o, what, demo);
    String::from_utf8(o.stdout).unwrap()
}

/// STAT through poplib: (messages, octets).
fn stat(demo: &Demo, user: &str) -> (usize, usize) {
    let out = python(
        demo,
        "poplib STAT",
        "p = connect(sys.argv[1], sys.argv[2])\nprint(*p.stat())\np.quit()\n",
        &[user, &demo.password(user)],
    );
    let mut it = out.split_whitespace().map(|x| x.parse().unwrap());
    (it.next().unwrap(), it.next().unwrap())
}

fn total(msgs: &[Vec<u8>]) -> usize {
    msgs.iter().map(Vec::len).sum()
}

/// What a client that writes local files with LF line ends stores.
fn lf(m: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(m.len());
    let mut i = 0;
    while i < m.len() {
        if m[i] == b'\r' && m.get(i + 1) == Some(&b'\n') {
            i += 1;
            continue;
        }
        out.push(m[i]);
        i += 1;
    }
    out
}

fn sorted(mut v: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    v.sort();
    v
}

fn files_in(dir: &Path) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_file() {
            out.push(std::fs::read(p).unwrap());
        }
    }
    out
}

/// Removes the named header fields a client adds on top of the message
/// (with their continuation lines), leaving the rest byte for byte.
fn strip_added(m: &[u8], names: &[&str]) -> Vec<u8> {
    // Works on bytes so that 8-bit bodies stay exact.
    let mut lines = m.split_inclusive(|&b| b == b'\n').peekable();
    let mut consumed = 0;
    while let Some(l) = lines.peek() {
        if !names.iter().any(|n| l.starts_with(n.as_bytes())) {
            break;
        }
        consumed += l.len();
        lines.next();
        while let Some(c) = lines
            .peek()
            .filter(|l| l.starts_with(b" ") || l.starts_with(b"\t"))
        {
            consumed += c.len();
            lines.next();
        }
    }
    m[consumed..].to_vec()
}

fn start() -> Demo {
    Demo::start(&["--users", "3", "--messages", "0"])
}

#[test]
fn poplib_keep_then_delete() {
    let demo = start();
    let user = "alice@example.com";
    let expected = deliver(&demo, user);
    let out = demo.scratch("poplib");
    let script = r#"
user, pw, out, delete = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
p = connect(user, pw)
n, _ = p.stat()
for i in range(1, n + 1):
    resp, lines, octets = p.retr(i)
    # poplib removes the stuffing dots; the LIST size must match.
    data = b"".join(l + b"\r\n" for l in lines)
    assert int(p.list(i).split()[2]) == len(data), (i, p.list(i), len(data))
    open(os.path.join(out, "%d.eml" % i), "wb").write(data)
    if delete:
        p.dele(i)
p.quit()
"#;
    let pw = demo.password(user);
    let out_s = out.display().to_string();
    python(&demo, "poplib keep", script, &[user, &pw, &out_s, "0"]);
    assert!(
        read_numbered(&out, expected.len()) == expected,
        "poplib's copies differ from what LMTP delivered"
    );
    assert_eq!(stat(&demo, user), (expected.len(), total(&expected)));
    python(&demo, "poplib delete", script, &[user, &pw, &out_s, "1"]);
    assert!(read_numbered(&out, expected.len()) == expected);
    assert_eq!(stat(&demo, user), (0, 0));
}

fn read_numbered(dir: &Path, n: usize) -> Vec<Vec<u8>> {
    (1..=n)
        .map(|i| std::fs::read(dir.join(format!("{i}.eml"))).unwrap())
        .collect()
}

#[test]
fn curl_lists_retrieves_uidls_and_deletes() {
    assert!(have("curl"), "curl is required (installed by .ci/run)");
    let demo = start();
    let user = "bob@example.org";
    let expected = deliver(&demo, user);
    let port = demo.addr("pop3s").port();
    let curl = |path: &str, extra: &[&str]| {
        let o = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert", demo.ca()])
            .arg("--connect-to")
            .arg(format!("example.org:{port}:127.0.0.1:{port}"))
            .arg("-u")
            .arg(format!("{user}:{}", demo.password(user)))
            .args(extra)
            .arg(format!("pop3s://example.org:{port}/{path}"))
            .output()
            .unwrap();
        assert_success(&o, &format!("curl {path} {extra:?}"), &demo);
        o.stdout
    };
    let list = String::from_utf8(curl("", &[])).unwrap();
    let sizes: Vec<usize> = list
        .lines()
        .map(|l| l.split_whitespace().nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(
        sizes,
        expected.iter().map(Vec::len).collect::<Vec<_>>(),
        "{list}"
    );
    for (n, m) in expected.iter().enumerate() {
        let body = curl(&(n + 1).to_string(), &[]);
        assert!(body == *m, "RETR {} through curl differs", n + 1);
    }
    let uidl = String::from_utf8(curl("", &["-X", "UIDL"])).unwrap();
    let uidls: Vec<&str> = uidl
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split_whitespace().nth(1).unwrap())
        .collect();
    assert_eq!(uidls.len(), expected.len(), "{uidl}");
    // UIDLs are 1-70 printable characters (RFC 1939 section 7), unique.
    for u in &uidls {
        assert!(
            (1..=70).contains(&u.len()) && u.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "{u}"
        );
    }
    assert_eq!(
        uidls.iter().collect::<std::collections::HashSet<_>>().len(),
        uidls.len()
    );
    // DELE through curl: a custom command with no transfer, then QUIT
    // commits it.
    curl("1", &["-X", "DELE", "-I"]);
    assert_eq!(
        stat(&demo, user),
        (expected.len() - 1, total(&expected) - expected[0].len())
    );
}

fn fetchmail(demo: &Demo, user: &str, out: &Path, mode: &str) {
    let port = demo.addr("pop3s").port();
    let domain = user.split('@').nth(1).unwrap();
    let rc = demo.dir.path().join(format!("fetchmailrc-{mode}"));
    std::fs::write(
        &rc,
        format!(
            "set no bouncemail\nset no syslog\n\
             poll {domain} via 127.0.0.1 port {port} protocol pop3 uidl timeout 30\n\
             \tuser \"{user}\" there with password \"{pw}\" is root here\n\
             \tssl sslcertck sslcertfile \"{ca}\" sslproto \"TLS1.2+\" sslcommonname \"{domain}\"\n\
             \t{mode} fetchall\n\
             \tmda \"/bin/sh -c 'cat > {out}/msg.$$'\"\n",
            pw = demo.password(user),
            ca = demo.ca(),
            out = out.display()
        ),
    )
    .unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let o = Command::new("fetchmail")
        .arg("-f")
        .arg(&rc)
        .args(["--nodetach", "--idfile"])
        .arg(demo.dir.path().join("fetchids"))
        .env("HOME", demo.dir.path())
        .output()
        .unwrap();
    // fetchmail exits 0 when mail was fetched.
    assert_success(&o, &format!("fetchmail ({mode})"), demo);
    let text =
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr);
    assert!(!text.contains("not the expected length"), "{text}");
}

#[test]
fn fetchmail_keep_then_delete() {
    assert!(
        have("fetchmail"),
        "fetchmail is required (installed by .ci/run)"
    );
    let demo = start();
    let user = "carol@example.com";
    let expected = deliver(&demo, user);
    // fetchmail hands the MDA LF line ends and puts its Received: on top.
    let want = sorted(expected.iter().map(|m| lf(m)).collect());
    for mode in ["keep", "no keep"] {
        let out = demo.scratch(&format!("fetchmail-{}", mode.replace(' ', "-")));
        fetchmail(&demo, user, &out, mode);
        let got = sorted(
            files_in(&out)
                .iter()
                .map(|m| strip_added(m, &["Received:"]))
                .collect(),
        );
        assert!(
            got == want,
            "fetchmail ({mode}): copies differ from what LMTP delivered"
        );
        let left = if mode == "keep" {
            (expected.len(), total(&expected))
        } else {
            (0, 0)
        };
        assert_eq!(stat(&demo, user), left, "after fetchmail {mode}");
    }
}

#[test]
fn getmail6_keep_then_delete() {
    assert!(
        have("getmail"),
        "getmail6 is required (installed by .ci/run)"
    );
    let demo = start();
    // getmail connects by address and sends no SNI: the default tenant.
    let user = "carol@example.com";
    let expected = deliver(&demo, user);
    let want = sorted(expected.iter().map(|m| lf(m)).collect());
    let port = demo.addr("pop3s").port();
    for delete in [false, true] {
        let name = if delete { "delete" } else { "keep" };
        // An external MDA that writes each message to its own file: getmail's
        // own Maildir writer refuses to run as root, which CI is. It lingers
        // 0.2 s before exiting: getmail 6 learns of its child's exit from a
        // SIGCHLD handler that notifies a condition variable, and a child
        // that exits before getmail starts waiting on it is a wake-up lost,
        // which getmail reports as "waiting child pid N timed out" after its
        // socket timeout (3 minutes; seen once in this test, for a 104-byte
        // message whose `cat` was done at once).
        let maildir = demo.scratch(&format!("getmail-{name}/mail"));
        let gdir = demo.scratch(&format!("getmail-{name}/state"));
        let rc = gdir.join("getmailrc");
        std::fs::write(
            &rc,
            format!(
                "[retriever]\ntype = SimplePOP3SSLRetriever\nserver = 127.0.0.1\nport = {port}\n\
                 username = {user}\npassword = {pw}\nca_certs = {ca}\nssl_cert_hostname = example.com\n\n\
                 [destination]\ntype = MDA_external\npath = /bin/sh\n\
                 arguments = (\"-c\", \"cat > $(mktemp -p {md}); sleep 0.2\")\nallow_root_commands = true\n\n\
                 [options]\nread_all = true\ndelete = {delete}\ndelivered_to = false\nreceived = false\nverbose = 0\n",
                pw = demo.password(user),
                ca = demo.ca(),
                md = maildir.display(),
            ),
        )
        .unwrap();
        let o = Command::new("getmail")
            .arg("--rcfile")
            .arg(&rc)
            .arg("--getmaildir")
            .arg(&gdir)
            .output()
            .unwrap();
        assert_success(&o, &format!("getmail ({name})"), &demo);
        let got = sorted(files_in(&maildir));
        assert!(
            got == want,
            "getmail6 ({name}): copies differ from what LMTP delivered"
        );
        let left = if delete {
            (0, 0)
        } else {
            (expected.len(), total(&expected))
        };
        assert_eq!(stat(&demo, user), left, "after getmail {name}");
    }
}

/// `openssl s_client` to the demo's POP3S port as example.com, verifying
/// the certificate, with every stream piped.
/// Everything a child's pipe gives, gathered by a thread as it comes.
fn collect(
    pipe: Option<impl std::io::Read + Send + 'static>,
) -> std::sync::Arc<std::sync::Mutex<Vec<u8>>> {
    let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (mut pipe, sink) = (pipe.expect("piped"), buf.clone());
    std::thread::spawn(move || {
        let mut chunk = [0u8; 4096];
        while let Ok(n @ 1..) = pipe.read(&mut chunk) {
            sink.lock().unwrap().extend_from_slice(&chunk[..n]);
        }
    });
    buf
}

fn s_client(demo: &Demo, flags: &[&str]) -> std::process::Child {
    Command::new("openssl")
        .arg("s_client")
        .args(flags)
        .args([
            "-verify_return_error",
            "-connect",
            &demo.addr("pop3s").to_string(),
            "-servername",
            "example.com",
            "-CAfile",
            demo.ca(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

/// A scripted `openssl s_client` dialogue: the commands are piped in at
/// once (PIPELINING), the responses parsed from its output.
#[test]
fn openssl_s_client_scripted_dialogue() {
    assert!(
        have("openssl"),
        "openssl is required (installed by .ci/run)"
    );
    let demo = start();
    let user = "bob@example.com";
    let expected = deliver(&demo, user);
    let dialogue = format!(
        "CAPA\nUSER {user}\nPASS {pw}\nSTAT\nLIST\nUIDL\nRETR 2\nTOP 1 0\nDELE 2\nRETR 2\nRSET\nLIST 2\nQUIT\n",
        pw = demo.password(user)
    );
    let mut child = s_client(&demo, &["-quiet", "-crlf", "-ign_eof"]);
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(dialogue.as_bytes())
            .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert_success(&o, "openssl s_client", &demo);
    let mut lines = o.stdout.split_inclusive(|&b| b == b'\n').peekable();
    let mut next = || {
        lines.next().unwrap_or_else(|| {
            panic!(
                "output ended early:\n{}",
                String::from_utf8_lossy(&o.stdout)
            )
        })
    };
    let status = |l: &[u8]| String::from_utf8_lossy(l).trim_end().to_string();
    let transcript = String::from_utf8_lossy(&o.stdout).into_owned();
    let _guard = PrintOnPanic(format!(
        "s_client transcript:\n{transcript}\n--- stderr\n{}\n--- server log\n{}",
        String::from_utf8_lossy(&o.stderr),
        demo.log()
    ));
    // A multi-line body, with the stuffing dots removed.
    fn body<'a>(next: &mut impl FnMut() -> &'a [u8]) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let l = next();
            if l == b".\r\n" {
                return out;
            }
            out.extend_from_slice(l.strip_prefix(b".").unwrap_or(l));
        }
    }
    let greeting = status(next());
    assert!(greeting.starts_with("+OK"), "{greeting}");
    assert!(status(next()).starts_with("+OK"));
    let capa = String::from_utf8(body(&mut next)).unwrap();
    for tag in [
        "TOP",
        "UIDL",
        "USER",
        "PIPELINING",
        "RESP-CODES",
        "SASL PLAIN",
    ] {
        assert!(capa.lines().any(|l| l == tag), "CAPA lacks {tag}: {capa}");
    }
    assert_eq!(status(next()), "+OK");
    assert_eq!(status(next()), "+OK Logged in.");
    assert_eq!(
        status(next()),
        format!("+OK {} {}", expected.len(), total(&expected))
    );
    assert!(status(next()).starts_with("+OK"));
    let list = String::from_utf8(body(&mut next)).unwrap();
    let want: String = expected
        .iter()
        .enumerate()
        .map(|(i, m)| format!("{} {}\r\n", i + 1, m.len()))
        .collect();
    assert_eq!(list, want);
    assert!(status(next()).starts_with("+OK"));
    assert_eq!(
        body(&mut next)
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count(),
        expected.len()
    );
    assert_eq!(status(next()), format!("+OK {} octets", expected[1].len()));
    assert!(
        body(&mut next) == expected[1],
        "RETR 2 through s_client differs"
    );
    assert!(status(next()).starts_with("+OK"));
    let top = body(&mut next);
    let header_end = expected[0]
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap()
        + 4;
    assert!(
        top == expected[0][..header_end],
        "TOP 1 0 must be the header and the blank line only"
    );
    assert!(status(next()).starts_with("+OK"));
    assert!(status(next()).starts_with("-ERR"));
    assert!(status(next()).starts_with("+OK"));
    assert_eq!(status(next()), format!("+OK 2 {}", expected[1].len()));
    assert!(status(next()).starts_with("+OK"));
    assert_eq!(stat(&demo, user), (expected.len(), total(&expected)));
}

/// OpenSSL asks for TLS 1.3 key updates mid-session (s_client's `K`, and
/// `k` for one it does not ask to be answered): the session goes on, each
/// answer readable under the new keys, and a message arrives intact.
#[test]
fn openssl_key_updates_mid_session_keep_it_going() {
    assert!(
        have("openssl"),
        "openssl is required (installed by .ci/run)"
    );
    let demo = start();
    let user = "alice@example.com";
    let expected = deliver(&demo, user);
    // Not -quiet/-ign_eof: those turn s_client's command letters off.
    let mut child = s_client(&demo, &["-tls1_3", "-crlf"]);
    let lines = [
        format!("USER {user}"),
        format!("PASS {}", demo.password(user)),
        "K".into(),
        "STAT".into(),
        "k".into(),
        "K".into(),
        // Lower case: s_client takes a line starting R or Q as its own
        // command (renegotiate, quit).
        "retr 1".into(),
        "K".into(),
        "quit".into(),
    ];
    // Each line goes in only once the previous one has shown its effect
    // (an answer, or s_client's KEYUPDATE note): s_client looks at the
    // first byte of what it read for a command letter, so two lines in one
    // read would turn a K into text or a command into nothing.
    let (out_buf, err_buf) = (collect(child.stdout.take()), collect(child.stderr.take()));
    let answers = |b: &[u8]| {
        b.split(|&c| c == b'\n')
            .filter(|l| l.starts_with(b"+OK") || l.starts_with(b"-ERR"))
            .count()
    };
    let key_updates = |b: &[u8]| String::from_utf8_lossy(b).matches("KEYUPDATE").count();
    let progress = || {
        (
            answers(&out_buf.lock().unwrap()),
            key_updates(&err_buf.lock().unwrap()),
        )
    };
    let wait_past = |before: (usize, usize)| {
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while progress() == before && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    };
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        // The greeting: the handshake is done and s_client reads its input.
        wait_past((0, 0));
        for l in lines {
            let before = progress();
            // An early exit shows in the output checked below.
            if stdin.write_all(format!("{l}\n").as_bytes()).is_err() {
                break;
            }
            wait_past(before);
        }
        // Open until s_client ends when the server closes after QUIT (or
        // ten seconds have passed: the checks below then say what is
        // missing).
        let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < end {
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        let _ = child.kill();
    }
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&out_buf.lock().unwrap()).into_owned();
    let err = String::from_utf8_lossy(&err_buf.lock().unwrap()).into_owned();
    let _guard = PrintOnPanic(format!(
        "s_client ({}) output:\n{out}\n--- stderr\n{err}\n--- server log\n{}",
        o.status,
        demo.log()
    ));
    assert_eq!(err.matches("KEYUPDATE").count(), 4, "s_client sent four");
    assert!(out.contains("+OK Logged in.\r\n"));
    let stat = format!("+OK {} {}\r\n", expected.len(), total(&expected));
    assert!(out.contains(&stat), "STAT after a key update");
    let head = format!("+OK {} octets\r\n", expected[0].len());
    let start = out.find(&head).expect("RETR 1 answered") + head.len();
    let end = start + out[start..].find("\r\n.\r\n").expect("RETR 1 ends") + 2;
    let body: Vec<u8> = out[start..end]
        .split_inclusive('\n')
        .flat_map(|l| l.strip_prefix('.').unwrap_or(l).bytes())
        .collect();
    assert!(body == expected[0], "RETR 1 after key updates differs");
    assert!(out.contains("+OK Logging out."), "QUIT answered");
    assert!(
        demo.log().contains("logout") && !demo.log().contains("error=\"tls"),
        "the session ended cleanly"
    );
}

/// Prints its text if the test panics while it is alive.
struct PrintOnPanic(String);

impl Drop for PrintOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.0);
        }
    }
}
