//! The greeting in the server's first TLS 1.3 flight (0.5-RTT,
//! `tls.half_rtt_greeting`): a client gets it before it has sent its own
//! Finished, the handshake's deadline still applies until that Finished
//! arrives, and with the setting off the server waits for it as before.
//! The client here is rustls's, driven by hand so that the test decides
//! when (and whether) the client's Finished is sent.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Served;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, RootCertStore};

fn client(s: &Served) -> (TcpStream, ClientConnection) {
    let mut roots = RootCertStore::empty();
    let pem = std::fs::read(&s.info.ca_file).unwrap();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let conn = ClientConnection::new(
        Arc::new(config),
        ServerName::try_from("example.com").unwrap(),
    )
    .unwrap();
    let sock = TcpStream::connect(s.info.pop3s.as_str()).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    (sock, conn)
}

/// Sends what the client has queued (the ClientHello, or its Finished).
fn send(sock: &mut TcpStream, conn: &mut ClientConnection) {
    while conn.wants_write() {
        conn.write_tls(sock).unwrap();
    }
}

/// Reads from the server for up to `wait`, never sending anything, and
/// returns the plaintext received and whether the server closed.
fn receive(sock: &mut TcpStream, conn: &mut ClientConnection, wait: Duration) -> (Vec<u8>, bool) {
    let until = Instant::now() + wait;
    let mut plain = Vec::new();
    let mut buf = [0u8; 16384];
    while Instant::now() < until {
        match sock.read(&mut buf) {
            Ok(0) => return (plain, true),
            Ok(n) => {
                let mut rd = &buf[..n];
                while !rd.is_empty() {
                    conn.read_tls(&mut rd).unwrap();
                }
                conn.process_new_packets().unwrap();
                let mut chunk = [0u8; 4096];
                while let Ok(k) = conn.reader().read(&mut chunk) {
                    if k == 0 {
                        break;
                    }
                    plain.extend_from_slice(&chunk[..k]);
                }
                if plain.ends_with(b"\r\n") {
                    return (plain, false);
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return (plain, true),
            Err(e) => panic!("read: {e}"),
        }
    }
    (plain, false)
}

#[test]
fn the_greeting_comes_before_the_clients_finished() {
    let s = Served::start(|_| {});
    let (mut sock, mut conn) = client(&s);
    send(&mut sock, &mut conn);
    // Only the ClientHello has left; the client's Finished is held back.
    let (greeting, closed) = receive(&mut sock, &mut conn, Duration::from_secs(5));
    assert!(!closed);
    assert!(greeting.starts_with(b"+OK"), "{greeting:?}");
    assert!(
        conn.wants_write(),
        "the client's Finished has not been sent yet"
    );
    // The session then goes on as usual: Finished, USER, QUIT.
    let (user, _) = s.user(0, 0);
    conn.writer()
        .write_all(format!("USER {user}\r\n").as_bytes())
        .unwrap();
    send(&mut sock, &mut conn);
    let (answer, _) = receive(&mut sock, &mut conn, Duration::from_secs(5));
    assert!(answer.starts_with(b"+OK"), "{answer:?}");
    conn.writer().write_all(b"QUIT\r\n").unwrap();
    send(&mut sock, &mut conn);
    let (bye, _) = receive(&mut sock, &mut conn, Duration::from_secs(5));
    assert!(bye.starts_with(b"+OK"), "{bye:?}");
}

#[test]
fn without_the_clients_finished_the_handshake_deadline_still_ends_it() {
    let s = Served::start(|c| c.limits.handshake_timeout_secs = 1);
    let (mut sock, mut conn) = client(&s);
    send(&mut sock, &mut conn);
    let (greeting, _) = receive(&mut sock, &mut conn, Duration::from_secs(5));
    assert!(greeting.starts_with(b"+OK"), "{greeting:?}");
    let started = Instant::now();
    let (_, closed) = receive(&mut sock, &mut conn, Duration::from_secs(10));
    assert!(
        closed,
        "the server must close a handshake that never completes"
    );
    // The idle limit before login is a minute: only the handshake's
    // deadline (1 s here) closes it this soon.
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed after {:?}",
        started.elapsed()
    );
}

#[test]
fn with_the_setting_off_the_server_waits_for_the_clients_finished() {
    let s = Served::start(|c| c.tls.half_rtt_greeting = false);
    let (mut sock, mut conn) = client(&s);
    send(&mut sock, &mut conn);
    let (early, closed) = receive(&mut sock, &mut conn, Duration::from_millis(800));
    assert!(!closed);
    assert!(early.is_empty(), "{early:?}");
    // The Finished releases the greeting.
    send(&mut sock, &mut conn);
    let (greeting, _) = receive(&mut sock, &mut conn, Duration::from_secs(5));
    assert!(greeting.starts_with(b"+OK"), "{greeting:?}");
}
