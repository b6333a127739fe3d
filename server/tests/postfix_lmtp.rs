//! Postfix (Debian's), started by the test on loopback with its own config
//! directory, accepts mail over SMTP for two tenants and delivers it by LMTP
//! into pop3sd; a POP3S client then retrieves exactly those bytes.

mod common;

use std::path::Path;
use std::process::Command;

use common::{have, Served};

struct Postfix(std::path::PathBuf);

impl Drop for Postfix {
    fn drop(&mut self) {
        let _ = Command::new("postfix")
            .arg("-c")
            .arg(&self.0)
            .arg("stop")
            .output();
    }
}

fn start_postfix(dir: &Path, smtp_port: u16, lmtp: &str) -> Postfix {
    std::fs::create_dir_all(dir.join("queue")).unwrap();
    std::fs::create_dir_all(dir.join("data")).unwrap();
    std::fs::write(
        dir.join("main.cf"),
        format!(
            "compatibility_level = 3.6\n\
             queue_directory = {d}/queue\n\
             data_directory = {d}/data\n\
             maillog_file = /dev/stdout\n\
             mail_owner = postfix\n\
             setgid_group = postdrop\n\
             myhostname = mx.test.invalid\n\
             inet_interfaces = 127.0.0.1\n\
             inet_protocols = ipv4\n\
             mydestination =\n\
             local_recipient_maps =\n\
             alias_maps =\n\
             mynetworks = 127.0.0.0/8\n\
             smtpd_recipient_restrictions = permit_mynetworks, reject\n\
             virtual_mailbox_domains = example.com, example.org\n\
             virtual_transport = lmtp:inet:{lmtp}\n\
             smtputf8_enable = no\n\
             biff = no\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let services = [
        format!("127.0.0.1:{smtp_port} inet n - n - - smtpd"),
        "pickup unix n - n 60 1 pickup".into(),
        "cleanup unix n - n - 0 cleanup".into(),
        "qmgr unix n - n 300 1 qmgr".into(),
        "rewrite unix - - n - - trivial-rewrite".into(),
        "bounce unix - - n - 0 bounce".into(),
        "defer unix - - n - 0 bounce".into(),
        "trace unix - - n - 0 bounce".into(),
        "verify unix - - n - 1 verify".into(),
        "flush unix n - n 1000? 0 flush".into(),
        "proxymap unix - - n - - proxymap".into(),
        "smtp unix - - n - - smtp".into(),
        "showq unix n - n - - showq".into(),
        "error unix - - n - - error".into(),
        "retry unix - - n - - error".into(),
        "discard unix - - n - - discard".into(),
        "lmtp unix - - n - - lmtp".into(),
        "anvil unix - - n - 1 anvil".into(),
        "scache unix - - n - 1 scache".into(),
        "postlog unix-dgram n - n - 1 postlogd".into(),
    ];
    std::fs::write(dir.join("master.cf"), services.join("\n") + "\n").unwrap();
    let _ = Command::new("postfix")
        .arg("-c")
        .arg(dir)
        .arg("set-permissions")
        .output();
    let o = Command::new("postfix")
        .arg("-c")
        .arg(dir)
        .arg("start")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "postfix did not start: {}{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        ""
    );
    Postfix(dir.to_path_buf())
}

#[test]
fn smtp_to_postfix_to_lmtp_to_pop3s_keeps_every_byte() {
    assert!(
        have("postfix"),
        "postfix is required (installed by .ci/run)"
    );
    assert!(
        pop3sd::privileges::is_root(),
        "Postfix's master runs as root"
    );
    let s = Served::start(|_| {});
    let lmtp = s.info.lmtp.clone().expect("demo has an LMTP listener");
    let smtp_port = common::free_port();
    let pf_dir = s.dir.path().join("postfix");
    // Postfix's daemons run as user postfix and must reach their queue.
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(s.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let _pf = start_postfix(&pf_dir, smtp_port, &lmtp);
    let (alice, apw) = s.user(0, 0);
    let (bob, bpw) = s.user(1, 1);
    let out = s.python(&format!(
        r#"
import smtplib, poplib
msgs = {{
    "{alice}": b"From: sender@sender.test\r\nTo: {alice}\r\nSubject: first tenant\r\nMessage-ID: <t1@sender.test>\r\nDate: Sat, 28 Nov 2026 00:00:00 +0000\r\n\r\nHello.\r\n.a line with a leading dot\r\n..two\r\n8-bit: \xc3\xa9\r\n",
    "{bob}": b"From: sender@sender.test\r\nTo: {bob}\r\nSubject: second tenant\r\nMessage-ID: <t2@sender.test>\r\nDate: Sat, 28 Nov 2026 00:00:00 +0000\r\n\r\nOther tenant.\r\n",
}}
c = smtplib.SMTP("127.0.0.1", {smtp_port}, timeout=20)
for rcpt, body in msgs.items():
    refused = c.sendmail("sender@sender.test", [rcpt], body)
    assert not refused, refused
c.quit()
pw = {{"{alice}": "{apw}", "{bob}": "{bpw}"}}
deadline = time.time() + 60
for rcpt, body in msgs.items():
    while True:
        s_, f = tls(sni=rcpt.split("@")[1])
        f.readline()
        cmd(s_, f, "USER " + rcpt); cmd(s_, f, "PASS " + pw[rcpt])
        n = int(cmd(s_, f, "STAT").split()[1])
        if n > 3:
            break
        cmd(s_, f, "QUIT")
        assert time.time() < deadline, "mail did not arrive"
        time.sleep(0.5)
    s_.sendall(b"RETR %d\r\n" % n)
    assert f.readline().startswith(b"+OK")
    got = b""
    while True:
        line = f.readline()
        if line == b".\r\n":
            break
        got += line[1:] if line.startswith(b".") else line
    assert got.endswith(body), (got, body)
    added = got[: len(got) - len(body)]
    assert added.startswith(b"Return-Path: <sender@sender.test>\r\n"), added
    for l in added.split(b"\r\n"):
        assert l == b"" or l[:1] in b" \t" or b":" in l, ("only header lines may be added", l)
    print("ok", rcpt)
"#
    ));
    assert_eq!(out.matches("ok ").count(), 2, "{out}");
}
