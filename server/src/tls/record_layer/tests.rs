//! The record layer against a real peer: rustls's client, in memory, for
//! every suite; and records forged with the client's own keys for what a
//! well-behaved client never sends.

use std::io::{ErrorKind, Read, Write};

use rustls::crypto::ring::cipher_suite as cs;
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::{AlertDescription, ClientConnection};

use super::fuzzing::{self, configs};
use super::*;

const TLS13_SUITES: [SupportedCipherSuite; 3] = [
    cs::TLS13_AES_128_GCM_SHA256,
    cs::TLS13_AES_256_GCM_SHA384,
    cs::TLS13_CHACHA20_POLY1305_SHA256,
];
const TLS12_SUITES: [SupportedCipherSuite; 3] = [
    cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

fn all_suites() -> impl Iterator<Item = SupportedCipherSuite> {
    TLS13_SUITES.into_iter().chain(TLS12_SUITES)
}

/// Runs a full handshake between rustls's client and the unbuffered server
/// the connection driver uses, up to the server's WriteTraffic.
fn handshake(suite: SupportedCipherSuite) -> (ClientConnection, UnbufferedServerConnection) {
    handshake_with(suite, |_| {})
}

/// `handshake`, with `last_flight` run on the client just before its last
/// flight (its Finished) is written, to add to that flight.
fn handshake_with(
    suite: SupportedCipherSuite,
    last_flight: impl FnMut(&mut ClientConnection),
) -> (ClientConnection, UnbufferedServerConnection) {
    let (sc, cc) = configs(suite);
    fuzzing::handshake_with(sc, cc, last_flight)
}

fn pair(suite: SupportedCipherSuite) -> (ClientConnection, RecordLayer) {
    let (client, server) = handshake(suite);
    assert!(RecordLayer::supports(&server));
    (client, RecordLayer::take_over(server).unwrap())
}

/// Feeds records to the client; returns the plaintext it yields and
/// whether it saw a clean close_notify.
fn client_read(client: &mut ClientConnection, mut wire: &[u8]) -> (Vec<u8>, bool) {
    let mut plain = Vec::new();
    let mut closed = false;
    while !wire.is_empty() {
        client.read_tls(&mut wire).unwrap();
        client.process_new_packets().unwrap();
        loop {
            let mut buf = [0u8; 4096];
            match client.reader().read(&mut buf) {
                Ok(0) => {
                    closed = true;
                    break;
                }
                Ok(n) => plain.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => panic!("client read: {e}"),
            }
        }
    }
    (plain, closed)
}

fn client_write(client: &mut ClientConnection, data: &[u8]) -> Vec<u8> {
    client.writer().write_all(data).unwrap();
    let mut wire = Vec::new();
    while client.wants_write() {
        client.write_tls(&mut wire).unwrap();
    }
    wire
}

/// Opens everything in `wire`; returns the plaintext, asserting that all of
/// it was consumed.
fn server_open(server: &mut RecordLayer, wire: &mut [u8]) -> Vec<u8> {
    let mut got = Vec::new();
    let opened = server.open(wire, |p| got.extend_from_slice(p)).unwrap();
    assert_eq!(opened.consumed, wire.len());
    got
}

fn server_seal(server: &mut RecordLayer, data: &[u8]) -> Vec<u8> {
    let mut wire = Vec::new();
    for chunk in data
        .chunks(MAX_PLAINTEXT)
        .chain(data.is_empty().then_some(&[][..]))
    {
        let mut out = vec![0u8; server.sealed_len(chunk.len())];
        let n = server.seal(chunk, &mut out).unwrap();
        wire.extend_from_slice(&out[..n]);
    }
    wire
}

fn message(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 251) as u8).collect()
}

#[test]
fn every_suite_the_provider_offers_is_implemented() {
    for suite in rustls::crypto::ring::ALL_CIPHER_SUITES {
        assert!(framing(suite.suite()).is_some(), "{:?}", suite.suite());
    }
}

#[test]
fn every_suite_carries_data_both_ways_and_closes_cleanly() {
    for suite in all_suites() {
        let (mut client, mut server) = pair(suite);
        for len in [
            0,
            1,
            100,
            MAX_PLAINTEXT - 1,
            MAX_PLAINTEXT,
            3 * MAX_PLAINTEXT + 5,
        ] {
            let data = message(len);
            let wire = server_seal(&mut server, &data);
            let (got, closed) = client_read(&mut client, &wire);
            assert_eq!(got, data, "{:?}, {len} bytes to the client", suite.suite());
            assert!(!closed);
        }
        for len in [1, 6, 40_000] {
            let data = message(len);
            let mut wire = client_write(&mut client, &data);
            assert_eq!(
                server_open(&mut server, &mut wire),
                data,
                "{:?}",
                suite.suite()
            );
        }
        let mut out = vec![0u8; 64];
        let n = server.close_notify(&mut out).unwrap();
        let (got, closed) = client_read(&mut client, &out[..n]);
        assert!(got.is_empty() && closed, "{:?}: clean close", suite.suite());

        client.send_close_notify();
        let mut wire = client_write(&mut client, b"");
        assert!(server_open(&mut server, &mut wire).is_empty());
        assert!(server.peer_closed());
    }
}

#[test]
fn records_arriving_a_byte_at_a_time_are_opened_once_whole() {
    let (mut client, mut server) = pair(cs::TLS13_AES_128_GCM_SHA256);
    let data = message(20_000);
    let wire = client_write(&mut client, &data);
    let mut buf = Vec::new();
    let mut got = Vec::new();
    let mut boundaries = Vec::new();
    for (i, b) in wire.iter().enumerate() {
        buf.push(*b);
        let opened = server.open(&mut buf, |p| got.extend_from_slice(p)).unwrap();
        if opened.consumed > 0 {
            assert_eq!(opened.consumed, buf.len(), "a whole record at a time");
            boundaries.push(i + 1);
            buf.clear();
        }
    }
    assert_eq!(got, data);
    assert_eq!(boundaries.len(), 2, "20,000 bytes are two records");
    assert_eq!(*boundaries.last().unwrap(), wire.len());
}

#[test]
fn a_key_update_the_client_asks_for_is_answered_before_more_data() {
    for suite in TLS13_SUITES {
        let (mut client, mut server) = pair(suite);
        for round in 0..3 {
            client.refresh_traffic_keys().unwrap();
            let mut wire = client_write(&mut client, b"NOOP\r\n");
            assert_eq!(server_open(&mut server, &mut wire), b"NOOP\r\n");
            assert!(server.wants_write(), "round {round}");
            // Our KeyUpdate (old key) then the answer (new key): the
            // client reads the answer only if both are right.
            let wire = server_seal(&mut server, b"+OK\r\n");
            assert!(!server.wants_write());
            assert_eq!(client_read(&mut client, &wire).0, b"+OK\r\n");
            let mut wire = client_write(&mut client, b"STAT\r\n");
            assert_eq!(server_open(&mut server, &mut wire), b"STAT\r\n");
        }
    }
}

#[test]
fn a_due_key_update_can_be_sent_on_its_own() {
    let (mut client, mut server) = pair(cs::TLS13_AES_256_GCM_SHA384);
    client.refresh_traffic_keys().unwrap();
    let mut wire = client_write(&mut client, b"");
    assert!(server_open(&mut server, &mut wire).is_empty());
    let mut out = vec![0u8; 64];
    let n = server.write_pending(&mut out).unwrap();
    assert!(n > 0 && !server.wants_write());
    assert_eq!(
        server.write_pending(&mut out).unwrap(),
        0,
        "nothing more due"
    );
    let mut wire = out[..n].to_vec();
    wire.extend(server_seal(&mut server, b"+OK\r\n"));
    assert_eq!(client_read(&mut client, &wire).0, b"+OK\r\n");
}

#[test]
fn the_confidentiality_limit_rotates_tls13_keys_and_ends_tls12() {
    for suite in TLS13_SUITES {
        let (mut client, mut server) = pair(suite);
        server.limit = server.tx.seq + 2;
        let mut wire = Vec::new();
        for i in 0..7u8 {
            wire.extend(server_seal(&mut server, &[b'a' + i; 300]));
        }
        let (got, _) = client_read(&mut client, &wire);
        assert_eq!(got.len(), 7 * 300, "{:?}", suite.suite());
        // Every second record needed a new key: seq restarts at 0 each time.
        assert!(server.tx.seq <= 2);
    }
    for suite in TLS12_SUITES {
        let (_client, mut server) = pair(suite);
        server.limit = server.tx.seq + 2;
        let mut out = vec![0u8; 1024];
        server.seal(b"one", &mut out).unwrap();
        server.seal(b"two", &mut out).unwrap();
        assert!(matches!(
            server.seal(b"three", &mut out),
            Err(RecordError::KeyExhausted)
        ));
    }
}

#[test]
fn a_tampered_record_is_refused_and_the_client_told_why() {
    for suite in all_suites() {
        let (mut client, mut server) = pair(suite);
        let mut wire = client_write(&mut client, b"RETR 1\r\n");
        let last = wire.len() - 1;
        wire[last] ^= 1;
        let err = server.open(&mut wire, |_| panic!("no data")).unwrap_err();
        assert!(matches!(err, RecordError::BadRecordMac), "{err}");
        let mut out = vec![0u8; 64];
        let n = server.error_alert(&err, &mut out).unwrap();
        let mut slice = &out[..n];
        client.read_tls(&mut slice).unwrap();
        let seen = client.process_new_packets().unwrap_err();
        assert_eq!(
            seen,
            rustls::Error::AlertReceived(AlertDescription::BadRecordMac),
            "{:?}",
            suite.suite()
        );
    }
}

#[test]
fn an_oversized_record_is_refused_from_its_header() {
    for suite in [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ] {
        let (_client, mut server) = pair(suite);
        let too_long = match suite {
            SupportedCipherSuite::Tls13(_) => MAX_BODY_TLS13 + 1,
            SupportedCipherSuite::Tls12(_) => MAX_BODY_TLS12 + 1,
        } as u16;
        let mut wire = vec![CONTENT_APPLICATION_DATA, 3, 3];
        wire.extend(too_long.to_be_bytes());
        let err = server.open(&mut wire, |_| {}).unwrap_err();
        assert!(matches!(err, RecordError::Overflow(_)), "{err}");
        assert_eq!(err.alert(), Some((ALERT_FATAL, ALERT_RECORD_OVERFLOW)));
    }
}

/// A server record layer and a key sealing records as the client would,
/// for records rustls's client never sends.
fn forger(suite: SupportedCipherSuite) -> (DirectionKey, Framing, RecordLayer) {
    let (client, server) = handshake(suite);
    let secrets = client.dangerous_extract_secrets().unwrap();
    let key = DirectionKey::new(secrets.tx.0, secrets.tx.1).unwrap();
    let server = RecordLayer::take_over(server).unwrap();
    (key, server.framing, server)
}

fn forge(key: &mut DirectionKey, framing: Framing, content: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; body.len() + 64];
    let n = key.seal(framing, content, body, &mut out).unwrap();
    out.truncate(n);
    out
}

fn open_err(server: &mut RecordLayer, mut wire: Vec<u8>) -> RecordError {
    server.open(&mut wire, |_| {}).unwrap_err()
}

#[test]
fn post_handshake_messages_other_than_key_update_are_refused() {
    for suite in TLS13_SUITES {
        let (mut key, framing, mut server) = forger(suite);
        // A NewSessionTicket from a client.
        let wire = forge(&mut key, framing, CONTENT_HANDSHAKE, &[4, 0, 0, 0]);
        let err = open_err(&mut server, wire);
        assert!(matches!(err, RecordError::Unexpected(_)), "{err}");

        let (mut key, framing, mut server) = forger(suite);
        let body = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, 2];
        let wire = forge(&mut key, framing, CONTENT_HANDSHAKE, &body);
        let err = open_err(&mut server, wire);
        assert!(matches!(err, RecordError::IllegalParameter(_)), "{err}");

        // A KeyUpdate of the wrong length, or followed by more in its record.
        let (mut key, framing, mut server) = forger(suite);
        let body = [HANDSHAKE_KEY_UPDATE, 0, 0, 2, 0, 0];
        let wire = forge(&mut key, framing, CONTENT_HANDSHAKE, &body);
        assert!(matches!(
            open_err(&mut server, wire),
            RecordError::Decode(_)
        ));
        let (mut key, framing, mut server) = forger(suite);
        let mut body = vec![HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0];
        body.extend_from_within(..);
        let wire = forge(&mut key, framing, CONTENT_HANDSHAKE, &body);
        assert!(matches!(
            open_err(&mut server, wire),
            RecordError::Unexpected(_)
        ));

        let (mut key, framing, mut server) = forger(suite);
        let wire = forge(&mut key, framing, CONTENT_CHANGE_CIPHER_SPEC, &[1]);
        assert!(matches!(
            open_err(&mut server, wire),
            RecordError::Unexpected(_)
        ));

        // Only padding: no content type at all.
        let (mut key, framing, mut server) = forger(suite);
        let wire = forge(&mut key, framing, 0, &[0, 0, 0]);
        assert!(matches!(
            open_err(&mut server, wire),
            RecordError::Unexpected(_)
        ));

        // An unprotected record after the handshake.
        let (_key, _framing, mut server) = forger(suite);
        let wire = vec![CONTENT_ALERT, 3, 3, 0, 2, ALERT_WARNING, ALERT_CLOSE_NOTIFY];
        assert!(matches!(
            open_err(&mut server, wire),
            RecordError::Unexpected(_)
        ));
    }
    for suite in TLS12_SUITES {
        let (mut key, framing, mut server) = forger(suite);
        // A renegotiating ClientHello (its body does not matter).
        let wire = forge(&mut key, framing, CONTENT_HANDSHAKE, &[1, 0, 0, 2, 3, 3]);
        let err = open_err(&mut server, wire);
        assert!(
            matches!(err, RecordError::Unexpected("renegotiation")),
            "{err}"
        );
    }
}

#[test]
fn alerts_from_the_peer_end_or_continue_the_connection_as_they_should() {
    for suite in all_suites() {
        let tls12 = matches!(suite, SupportedCipherSuite::Tls12(_));
        let (mut key, framing, mut server) = forger(suite);
        // user_canceled continues; data after it still arrives.
        let mut wire = forge(
            &mut key,
            framing,
            CONTENT_ALERT,
            &[ALERT_WARNING, ALERT_USER_CANCELED],
        );
        wire.extend(forge(
            &mut key,
            framing,
            CONTENT_APPLICATION_DATA,
            b"QUIT\r\n",
        ));
        assert_eq!(server_open(&mut server, &mut wire), b"QUIT\r\n");
        // A TLS 1.2 warning (no_renegotiation) continues; in TLS 1.3 it is fatal.
        let wire = forge(&mut key, framing, CONTENT_ALERT, &[ALERT_WARNING, 100]);
        let mut w = wire.clone();
        let r = server.open(&mut w, |_| {});
        assert_eq!(r.is_ok(), tls12, "{:?}", suite.suite());
        if !tls12 {
            assert!(matches!(r, Err(RecordError::PeerAlert(100))));
        }

        let (mut key, framing, mut server) = forger(suite);
        let wire = forge(&mut key, framing, CONTENT_ALERT, &[ALERT_FATAL, 40]);
        assert!(matches!(
            open_err(&mut server, wire),
            RecordError::PeerAlert(40)
        ));

        let (mut key, framing, mut server) = forger(suite);
        let wire = forge(&mut key, framing, CONTENT_ALERT, &[ALERT_WARNING]);
        assert!(matches!(
            open_err(&mut server, wire),
            RecordError::Decode(_)
        ));

        // After close_notify nothing more is read.
        let (mut key, framing, mut server) = forger(suite);
        let mut wire = forge(&mut key, framing, CONTENT_APPLICATION_DATA, b"LIST\r\n");
        let close = forge(
            &mut key,
            framing,
            CONTENT_ALERT,
            &[ALERT_WARNING, ALERT_CLOSE_NOTIFY],
        );
        wire.extend(&close);
        let before_tail = wire.len();
        wire.extend(forge(
            &mut key,
            framing,
            CONTENT_APPLICATION_DATA,
            b"DELE 1\r\n",
        ));
        let mut got = Vec::new();
        let opened = server
            .open(&mut wire, |p| got.extend_from_slice(p))
            .unwrap();
        assert_eq!(got, b"LIST\r\n");
        assert_eq!(opened.consumed, before_tail);
        assert!(server.peer_closed());
    }
}

#[test]
fn a_record_short_of_its_tag_is_a_decode_error_not_a_panic() {
    for suite in TLS12_SUITES {
        let (_client, mut server) = pair(suite);
        let wire = vec![CONTENT_APPLICATION_DATA, 3, 3, 0, 3, 1, 2, 3];
        assert!(matches!(
            open_err(&mut server, wire),
            RecordError::Decode(_)
        ));
    }
    let (_client, mut server) = pair(cs::TLS13_AES_128_GCM_SHA256);
    let wire = vec![CONTENT_APPLICATION_DATA, 3, 3, 0, 3, 1, 2, 3];
    assert!(matches!(
        open_err(&mut server, wire),
        RecordError::BadRecordMac
    ));
}

#[test]
fn pieces_copy_exactly() {
    for len in [0, 1, 2047, 2048, 2049, 16384, 16385] {
        let src = message(len);
        let mut dst = vec![0u8; len];
        copy_in_pieces(&mut dst, &src);
        assert_eq!(dst, src);
    }
}

#[test]
fn a_key_update_in_the_clients_last_flight_survives_the_handover() {
    // The client asks for a KeyUpdate together with its Finished: rustls
    // processes it before the handover and keeps its answer until it seals
    // its next record. The driver therefore lets rustls seal one record
    // (the greeting) before taking over, as here.
    for suite in TLS13_SUITES {
        let (mut client, mut server) = handshake_with(suite, |c| c.refresh_traffic_keys().unwrap());
        let mut out = vec![0u8; 4096];
        let UnbufferedStatus { state, .. } = server.process_tls_records(&mut []);
        let ConnectionState::WriteTraffic(mut wt) = state.unwrap() else {
            panic!("not ready to write")
        };
        let mut n = wt.encrypt(b"+OK ready\r\n", &mut out).unwrap();
        let mut records = RecordLayer::take_over(server).unwrap();
        n += records.seal(b"+OK more\r\n", &mut out[n..]).unwrap();
        let (got, _) = client_read(&mut client, &out[..n]);
        assert_eq!(got, b"+OK ready\r\n+OK more\r\n", "{:?}", suite.suite());
        let mut wire = client_write(&mut client, b"STAT\r\n");
        assert_eq!(server_open(&mut records, &mut wire), b"STAT\r\n");
    }
}

#[test]
fn a_key_update_split_over_records_is_accepted() {
    let (mut key, framing, mut server) = forger(cs::TLS13_AES_128_GCM_SHA256);
    let mut wire = forge(
        &mut key,
        framing,
        CONTENT_HANDSHAKE,
        &[HANDSHAKE_KEY_UPDATE, 0],
    );
    wire.extend(forge(&mut key, framing, CONTENT_HANDSHAKE, &[0, 1, 1]));
    assert!(server_open(&mut server, &mut wire).is_empty());
    assert!(server.wants_write(), "the request is honoured");
    // The server now expects the client's next key: the old one fails.
    let wire = forge(&mut key, framing, CONTENT_APPLICATION_DATA, b"NOOP\r\n");
    assert!(matches!(
        open_err(&mut server, wire),
        RecordError::BadRecordMac
    ));

    // Nothing may come between the parts, nor after it in its record.
    let (mut key, framing, mut server) = forger(cs::TLS13_AES_128_GCM_SHA256);
    let mut wire = forge(
        &mut key,
        framing,
        CONTENT_HANDSHAKE,
        &[HANDSHAKE_KEY_UPDATE, 0],
    );
    wire.extend(forge(
        &mut key,
        framing,
        CONTENT_APPLICATION_DATA,
        b"NOOP\r\n",
    ));
    assert!(matches!(
        open_err(&mut server, wire),
        RecordError::Unexpected(_)
    ));
    let (mut key, framing, mut server) = forger(cs::TLS13_AES_128_GCM_SHA256);
    let body = [HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0, b'x'];
    let wire = forge(&mut key, framing, CONTENT_HANDSHAKE, &body);
    assert!(matches!(
        open_err(&mut server, wire),
        RecordError::Unexpected(_)
    ));
    let (mut key, framing, mut server) = forger(cs::TLS13_AES_128_GCM_SHA256);
    let wire = forge(&mut key, framing, CONTENT_HANDSHAKE, &[]);
    assert!(matches!(
        open_err(&mut server, wire),
        RecordError::Unexpected(_)
    ));
}

#[test]
fn floods_of_empty_records_key_updates_and_warnings_are_cut_off() {
    // Empty records: 32 in a row pass, data resets the count, the 33rd in
    // a row is refused.
    let (mut key, framing, mut server) = forger(cs::TLS13_AES_128_GCM_SHA256);
    let mut wire = Vec::new();
    for _ in 0..MAX_EMPTY_RECORDS {
        wire.extend(forge(&mut key, framing, CONTENT_APPLICATION_DATA, b""));
    }
    wire.extend(forge(
        &mut key,
        framing,
        CONTENT_APPLICATION_DATA,
        b"NOOP\r\n",
    ));
    for _ in 0..MAX_EMPTY_RECORDS {
        wire.extend(forge(&mut key, framing, CONTENT_APPLICATION_DATA, b""));
    }
    assert_eq!(server_open(&mut server, &mut wire), b"NOOP\r\n");
    let wire = forge(&mut key, framing, CONTENT_APPLICATION_DATA, b"");
    assert!(matches!(open_err(&mut server, wire), RecordError::Flood(_)));

    // KeyUpdates without data between them, from a real client.
    let (mut client, mut server) = pair(cs::TLS13_AES_128_GCM_SHA256);
    for _ in 0..MAX_KEY_UPDATES {
        client.refresh_traffic_keys().unwrap();
    }
    let mut wire = client_write(&mut client, b"");
    assert!(server_open(&mut server, &mut wire).is_empty());
    let mut wire = client_write(&mut client, b"NOOP\r\n");
    assert_eq!(server_open(&mut server, &mut wire), b"NOOP\r\n");
    for _ in 0..=MAX_KEY_UPDATES {
        client.refresh_traffic_keys().unwrap();
    }
    let mut wire = client_write(&mut client, b"");
    let err = server.open(&mut wire, |_| {}).unwrap_err();
    assert!(matches!(err, RecordError::Flood(_)), "{err}");

    // Warning alerts: four in all.
    for suite in [
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ] {
        let (mut key, framing, mut server) = forger(suite);
        let mut wire = Vec::new();
        for _ in 0..MAX_WARNINGS {
            let alert = [ALERT_WARNING, ALERT_USER_CANCELED];
            wire.extend(forge(&mut key, framing, CONTENT_ALERT, &alert));
            wire.extend(forge(&mut key, framing, CONTENT_APPLICATION_DATA, b"x"));
        }
        assert_eq!(server_open(&mut server, &mut wire), b"xxxx");
        let alert = [ALERT_WARNING, ALERT_USER_CANCELED];
        let wire = forge(&mut key, framing, CONTENT_ALERT, &alert);
        assert!(matches!(open_err(&mut server, wire), RecordError::Flood(_)));
    }
}

#[test]
fn alert_levels_are_read_as_each_version_defines_them() {
    for suite in all_suites() {
        let tls13 = matches!(suite, SupportedCipherSuite::Tls13(_));
        let (mut key, framing, mut server) = forger(suite);
        let wire = forge(&mut key, framing, CONTENT_ALERT, &[3, ALERT_CLOSE_NOTIFY]);
        let err = open_err(&mut server, wire);
        assert!(matches!(err, RecordError::IllegalParameter(_)), "{err}");

        // A fatal user_canceled: TLS 1.3 ignores the level, TLS 1.2 ends.
        let (mut key, framing, mut server) = forger(suite);
        let mut wire = forge(
            &mut key,
            framing,
            CONTENT_ALERT,
            &[ALERT_FATAL, ALERT_USER_CANCELED],
        );
        let r = server.open(&mut wire, |_| {});
        assert_eq!(r.is_ok(), tls13, "{:?}", suite.suite());

        let (mut key, framing, mut server) = forger(suite);
        let wire = forge(&mut key, framing, CONTENT_ALERT, &[]);
        let err = open_err(&mut server, wire);
        if tls13 {
            assert!(matches!(err, RecordError::Unexpected(_)), "{err}");
        } else {
            assert!(matches!(err, RecordError::Decode(_)), "{err}");
        }
    }
}

#[test]
fn tls13_inner_plaintext_with_padding_over_the_limit_is_refused() {
    let (mut key, framing, mut server) = forger(cs::TLS13_AES_128_GCM_SHA256);
    // Content, its type, then padding: 2^14 + 2 bytes inside in all.
    let mut inner = vec![b'a'; 100];
    inner.push(CONTENT_APPLICATION_DATA);
    inner.resize(MAX_PLAINTEXT + 1, 0);
    // `forge` appends one more type byte (0 here: padding too).
    let wire = forge(&mut key, framing, 0, &inner);
    let err = open_err(&mut server, wire);
    assert!(matches!(err, RecordError::Overflow(_)), "{err}");
    // Just under the limit, the same shape is fine.
    let (mut key, framing, mut server) = forger(cs::TLS13_AES_128_GCM_SHA256);
    inner.truncate(MAX_PLAINTEXT);
    let mut wire = forge(&mut key, framing, 0, &inner);
    assert_eq!(server_open(&mut server, &mut wire), vec![b'a'; 100]);
}

#[test]
fn a_used_up_tls12_key_says_close_notify() {
    let err = RecordError::KeyExhausted;
    assert_eq!(err.alert(), Some((ALERT_WARNING, ALERT_CLOSE_NOTIFY)));
    let (mut client, mut server) = pair(cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384);
    let mut out = vec![0u8; 64];
    let n = server.error_alert(&err, &mut out).unwrap();
    let (got, closed) = client_read(&mut client, &out[..n]);
    assert!(got.is_empty() && closed);
}

#[test]
fn the_fuzz_harness_runs_what_it_is_given() {
    // One input per suite: a command, a split KeyUpdate (TLS 1.3), a read
    // cut inside a record, raw garbage last.
    for suite in 0..fuzzing::SUITES.len() as u8 {
        let mut input = vec![suite];
        input.extend([0, CONTENT_APPLICATION_DATA, 6]);
        input.extend(b"STAT\r\n");
        input.extend([3, 0, CONTENT_HANDSHAKE, 2, HANDSHAKE_KEY_UPDATE, 0, 3]);
        input.extend([1, CONTENT_HANDSHAKE, 3, 0, 1, 1]);
        input.extend([2, 4, 0x17, 3, 3, 0xff]);
        assert!(fuzzing::run(&input).starts_with(b"STAT\r\n"));
    }
    fuzzing::run(&[]);
    fuzzing::run(&[7, 1]);
}

/// The harness's client follows its own KeyUpdates, so data after them is
/// opened (TLS 1.3); and records beyond the size limit are reachable.
#[test]
fn the_fuzz_harness_reaches_data_after_key_updates_and_oversized_records() {
    for suite in 0..fuzzing::SUITES.len() as u8 {
        let tls13 = matches!(
            fuzzing::SUITES[usize::from(suite)],
            SupportedCipherSuite::Tls13(_)
        );
        let mut input = vec![suite];
        input.extend([5, 0, 3, 5, 1, 3]);
        input.extend([0, CONTENT_APPLICATION_DATA, 6]);
        input.extend(b"NOOP\r\n");
        let plain = fuzzing::run(&input);
        if tls13 {
            assert_eq!(plain, b"NOOP\r\n", "suite {suite}");
        } else {
            assert!(plain.is_empty(), "TLS 1.2 refuses a KeyUpdate");
        }
        // A record of the largest plaintext opens; one byte more does not.
        let max = MAX_PLAINTEXT as u16;
        let mut input = vec![suite, 4, CONTENT_APPLICATION_DATA];
        input.extend(max.to_le_bytes());
        input.push(b'x');
        assert_eq!(fuzzing::run(&input).len(), MAX_PLAINTEXT, "suite {suite}");
        let mut input = vec![suite, 4, CONTENT_APPLICATION_DATA];
        input.extend((max + 1).to_le_bytes());
        input.push(b'x');
        assert!(fuzzing::run(&input).is_empty(), "suite {suite}");
    }
}
