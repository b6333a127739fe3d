//! The real server on loopback, driven by the clients people use: Python's
//! poplib, curl, fetchmail and openssl s_client.

mod common;

use std::process::Command;

use common::{assert_success, expected_message, have, Demo};

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

#[test]
fn stls_close_notify_and_old_tls_versions() {
    let demo = Demo::start(&[]);
    demo.python_check("stls");
    demo.python_check("close_notify");
    demo.python_check("tls_versions");
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

#[test]
fn curl_lists_retrieves_and_uidls() {
    if !have("curl") {
        panic!("curl is required (installed by .ci/run)");
    }
    let demo = Demo::start(&[]);
    let port = demo.addr("pop3s").port();
    let user = "bob@example.org";
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
    assert_eq!(sizes.len(), demo.messages_per_user(), "{list}");
    for n in [1, 2] {
        let body = curl(&n.to_string(), &[]);
        let expected = expected_message("example.org", "bob", n - 1);
        assert_eq!(body, expected, "RETR {n} through curl");
        assert_eq!(sizes[n - 1], expected.len());
    }
    let uidl = String::from_utf8(curl("", &["-X", "UIDL"])).unwrap();
    assert_eq!(
        uidl.lines().filter(|l| !l.is_empty()).count(),
        demo.messages_per_user(),
        "{uidl}"
    );
    // UIDLs are 1-70 printable characters.
    for line in uidl.lines().filter(|l| !l.is_empty()) {
        let u = line.split_whitespace().nth(1).unwrap();
        assert!(
            (1..=70).contains(&u.len()) && u.bytes().all(|b| (0x21..=0x7e).contains(&b)),
            "{u}"
        );
    }
}

#[test]
fn fetchmail_downloads_every_message_intact() {
    if !have("fetchmail") {
        panic!("fetchmail is required (installed by .ci/run)");
    }
    let demo = Demo::start(&[]);
    let port = demo.addr("pop3s").port();
    let user = "carol@example.com";
    let out = demo.scratch("fetchmail-out");
    let rc = demo.dir.path().join("fetchmailrc");
    std::fs::write(
        &rc,
        format!(
            "set no bouncemail\nset no syslog\n\
             poll example.com via 127.0.0.1 port {port} protocol pop3 timeout 30\n\
             \tuser \"{user}\" there with password \"{pw}\" is root here\n\
             \tssl sslcertck sslcertfile \"{ca}\" sslproto \"TLS1.2+\" sslcommonname \"example.com\"\n\
             \tkeep fetchall\n\
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
        .args(["-f"])
        .arg(&rc)
        .args(["--nodetach", "--idfile"])
        .arg(demo.dir.path().join("fetchids"))
        .env("HOME", demo.dir.path())
        .output()
        .unwrap();
    // fetchmail exits 0 when mail was fetched.
    assert_success(&o, "fetchmail", &demo);
    let mut got: Vec<Vec<u8>> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| std::fs::read(e.unwrap().path()).unwrap())
        .map(|m| strip_received(&m))
        .collect();
    got.sort();
    let mut expected: Vec<Vec<u8>> = (0..demo.messages_per_user())
        .map(|i| {
            String::from_utf8(expected_message("example.com", "carol", i))
                .unwrap()
                .replace("\r\n", "\n")
                .into_bytes()
        })
        .collect();
    expected.sort();
    assert_eq!(got.len(), expected.len());
    assert!(
        got == expected,
        "fetchmail's copies differ from the stored messages"
    );
}

/// Drops the Received: header fetchmail adds on top (with its continuation lines).
fn strip_received(m: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(m).into_owned();
    let mut lines = text.split_inclusive('\n').peekable();
    let mut out = String::new();
    if lines.peek().is_some_and(|l| l.starts_with("Received:")) {
        lines.next();
        while lines
            .peek()
            .is_some_and(|l| l.starts_with(' ') || l.starts_with('\t'))
        {
            lines.next();
        }
    }
    out.extend(lines);
    out.into_bytes()
}

#[test]
fn certificate_request_only_where_configured() {
    if !have("openssl") {
        panic!("openssl is required (installed by .ci/run)");
    }
    let demo = Demo::start(&[]);
    let handshake = |key: &str| {
        let o = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "printf 'QUIT\\r\\n' | timeout 20 openssl s_client -connect {} -servername example.com -CAfile {} -msg -ign_eof 2>&1",
                demo.addr(key),
                demo.ca()
            ))
            .output()
            .unwrap();
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
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
}
