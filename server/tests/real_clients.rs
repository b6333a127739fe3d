//! The real server on loopback, driven by Python's poplib and ssl for what
//! the other clients cannot exercise: SNI, STLS, client certificates,
//! resumption on every core and TLS edge cases. The download matrix
//! (poplib, curl, fetchmail, getmail6, openssl s_client) is client_matrix.rs.

mod common;

use std::process::Command;

use common::{expected_message, have, Demo};

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
