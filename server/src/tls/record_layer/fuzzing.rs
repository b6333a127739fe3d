//! Drives a record layer with records a fuzzer chooses. They are sealed
//! with the client's real keys, so the fuzzer reaches what comes after
//! decryption: content types, alerts, KeyUpdates split or trailed, padding,
//! records cut at any byte. Also the in-memory handshake the unit tests
//! use. Public (and hidden) only for fuzz/ and its corpus replay test.

use std::sync::{Arc, OnceLock};

use rustls::client::{ClientConnection, UnbufferedClientConnection};
use rustls::crypto::ring::cipher_suite as cs;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedCipherSuite};

use super::{DirectionKey, RecordLayer, MAX_PLAINTEXT};

/// Every suite the record layer implements, TLS 1.3 first.
pub const SUITES: [SupportedCipherSuite; 6] = [
    cs::TLS13_AES_128_GCM_SHA256,
    cs::TLS13_AES_256_GCM_SHA384,
    cs::TLS13_CHACHA20_POLY1305_SHA256,
    cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// A server config allowing secret extraction and a client config offering
/// only `suite`, both trusting one fresh ECDSA P-256 certificate.
pub fn configs(suite: SupportedCipherSuite) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let ck = rcgen::generate_simple_self_signed(vec!["mail.example.com".into()])
        .expect("test certificate");
    let cert = ck.cert.der().clone();
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let version = match suite {
        SupportedCipherSuite::Tls13(_) => &rustls::version::TLS13,
        SupportedCipherSuite::Tls12(_) => &rustls::version::TLS12,
    };
    let provider = rustls::crypto::ring::default_provider();
    let mut sc = ServerConfig::builder_with_provider(Arc::new(provider.clone()))
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.clone()], key)
        .expect("server config");
    sc.enable_secret_extraction = true;
    let mut roots = RootCertStore::empty();
    roots.add(cert).expect("root");
    let only = CryptoProvider {
        cipher_suites: vec![suite],
        ..provider
    };
    let mut cc = ClientConfig::builder_with_provider(Arc::new(only))
        .with_protocol_versions(&[version])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    cc.enable_secret_extraction = true;
    (Arc::new(sc), Arc::new(cc))
}

/// Lets the server take in what the client sent and write its answer,
/// until it waits for the client; true once it may send traffic.
fn server_flight(
    server: &mut UnbufferedServerConnection,
    to_server: &mut Vec<u8>,
    to_client: &mut Vec<u8>,
) -> bool {
    loop {
        let UnbufferedStatus { discard, state } = server.process_tls_records(to_server);
        let mut stop = false;
        let mut done = false;
        match state.expect("server handshake") {
            ConnectionState::EncodeTlsData(mut e) => {
                let mut buf = vec![0; 32768];
                let n = e.encode(&mut buf).expect("encode");
                to_client.extend_from_slice(&buf[..n]);
            }
            ConnectionState::TransmitTlsData(t) => t.done(),
            ConnectionState::BlockedHandshake => stop = true,
            ConnectionState::WriteTraffic(_) => {
                done = true;
                stop = true;
            }
            other => panic!("unexpected server state during the handshake: {other:?}"),
        }
        to_server.drain(..discard);
        if stop {
            return done;
        }
    }
}

/// Runs a full handshake in memory between rustls's client and the
/// unbuffered server the connection driver uses, up to the server's
/// WriteTraffic. `last_flight` runs on the client just before its last
/// flight (its Finished) is written, to add to that flight.
pub fn handshake_with(
    sc: Arc<ServerConfig>,
    cc: Arc<ClientConfig>,
    mut last_flight: impl FnMut(&mut ClientConnection),
) -> (ClientConnection, UnbufferedServerConnection) {
    let name = "mail.example.com".try_into().expect("name");
    let mut client = ClientConnection::new(cc, name).expect("client");
    let mut server = UnbufferedServerConnection::new(sc).expect("server");
    let mut to_server = Vec::new();
    let mut hooked = false;
    for _ in 0..10 {
        if !hooked && !client.is_handshaking() {
            last_flight(&mut client);
            hooked = true;
        }
        while client.wants_write() {
            client.write_tls(&mut to_server).expect("client write");
        }
        let mut to_client = Vec::new();
        let done = server_flight(&mut server, &mut to_server, &mut to_client);
        let mut rd = to_client.as_slice();
        while !rd.is_empty() {
            client.read_tls(&mut rd).expect("client read");
            client.process_new_packets().expect("client handshake");
        }
        if done {
            assert!(!client.is_handshaking() && to_server.is_empty());
            return (client, server);
        }
    }
    panic!("handshake did not finish");
}

/// The same handshake with rustls's unbuffered client, whose traffic keys
/// can then be followed through KeyUpdates (`dangerous_into_kernel_connection`).
pub fn handshake_unbuffered(
    sc: Arc<ServerConfig>,
    cc: Arc<ClientConfig>,
) -> (UnbufferedClientConnection, UnbufferedServerConnection) {
    let name = "mail.example.com".try_into().expect("name");
    let mut client = UnbufferedClientConnection::new(cc, name).expect("client");
    let mut server = UnbufferedServerConnection::new(sc).expect("server");
    let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
    let (mut client_done, mut server_done) = (false, false);
    for _ in 0..20 {
        // The client until it waits for the server (or is done).
        loop {
            let UnbufferedStatus { discard, state } = client.process_tls_records(&mut to_client);
            let mut stop = false;
            match state.expect("client handshake") {
                ConnectionState::EncodeTlsData(mut e) => {
                    let mut buf = vec![0; 32768];
                    let n = e.encode(&mut buf).expect("encode");
                    to_server.extend_from_slice(&buf[..n]);
                }
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::BlockedHandshake => stop = true,
                ConnectionState::WriteTraffic(_) => {
                    client_done = true;
                    stop = true;
                }
                ConnectionState::ReadTraffic(mut rt) => {
                    while let Some(r) = rt.next_record() {
                        r.expect("client record");
                    }
                }
                other => panic!("unexpected client state during the handshake: {other:?}"),
            }
            to_client.drain(..discard);
            if stop {
                break;
            }
        }
        // The server likewise.
        server_done |= server_flight(&mut server, &mut to_server, &mut to_client);
        if client_done && server_done && to_server.is_empty() {
            return (client, server);
        }
    }
    panic!("handshake did not finish");
}

/// Runs one fuzz input. The first byte picks the suite; then operations:
/// `0`/`1` a sealed record (content type, length, body), `2` raw bytes
/// (length, bytes), `3` the end of one read, `4` a long sealed record
/// (content type, 16-bit length, fill byte: up to beyond the limits), `5` a
/// KeyUpdate (request byte) after which the client seals with its next key,
/// as a real client does (TLS 1.3). The records are opened read by read;
/// whatever happens must be an error or data, never a panic, and the layer
/// must still seal afterwards. Returns the application data opened.
pub fn run(data: &[u8]) -> Vec<u8> {
    static CONFIGS: OnceLock<Vec<(Arc<ServerConfig>, Arc<ClientConfig>)>> = OnceLock::new();
    let configs = CONFIGS.get_or_init(|| SUITES.iter().map(|s| configs(*s)).collect());
    let Some((&first, mut data)) = data.split_first() else {
        return Vec::new();
    };
    let (sc, cc) = &configs[usize::from(first) % configs.len()];
    let (client, server) = handshake_unbuffered(sc.clone(), cc.clone());
    let (secrets, mut client) = client
        .dangerous_into_kernel_connection()
        .expect("client secrets");
    let mut key = DirectionKey::new(secrets.tx.0, secrets.tx.1).expect("client key");
    let mut layer = RecordLayer::take_over(server).expect("handover");
    let framing = layer.framing;

    let mut wire = Vec::new();
    let mut cuts = Vec::new();
    while let [op, rest @ ..] = data {
        data = rest;
        match op % 6 {
            0 | 1 => {
                let [typ, len, rest @ ..] = data else { break };
                let n = usize::from(*len).min(rest.len());
                let mut out = vec![0u8; n + 64];
                let sealed = key.seal(framing, *typ, &rest[..n], &mut out).expect("seal");
                wire.extend_from_slice(&out[..sealed]);
                data = &rest[n..];
            }
            2 => {
                let [len, rest @ ..] = data else { break };
                let n = usize::from(*len).min(rest.len());
                wire.extend_from_slice(&rest[..n]);
                data = &rest[n..];
            }
            3 => cuts.push(wire.len()),
            4 => {
                let [typ, lo, hi, fill, rest @ ..] = data else {
                    break;
                };
                let n = usize::from(u16::from_le_bytes([*lo, *hi])).min(MAX_PLAINTEXT + 2048);
                let body = vec![*fill; n];
                let mut out = vec![0u8; n + 64];
                let sealed = key.seal(framing, *typ, &body, &mut out).expect("seal");
                wire.extend_from_slice(&out[..sealed]);
                data = rest;
            }
            _ => {
                let [request, rest @ ..] = data else { break };
                let mut out = vec![0u8; 64];
                let msg = [24, 0, 0, 1, request % 3];
                let sealed = key.seal(framing, 22, &msg, &mut out).expect("seal");
                wire.extend_from_slice(&out[..sealed]);
                // TLS 1.2 has no KeyUpdate: the key stays.
                if let Ok((seq, next)) = client.update_tx_secret() {
                    key = DirectionKey::new(seq, next).expect("next client key");
                }
                data = rest;
            }
        }
    }
    cuts.push(wire.len());
    let mut inbuf = Vec::new();
    let mut at = 0;
    let mut out = vec![0u8; 1024];
    let mut plain = Vec::new();
    for cut in cuts {
        inbuf.extend_from_slice(&wire[at..cut]);
        at = cut;
        let opened = layer.open(&mut inbuf, |p| {
            assert!(p.len() <= MAX_PLAINTEXT);
            plain.extend_from_slice(p);
        });
        match opened {
            Ok(o) => {
                assert!(o.consumed <= inbuf.len());
                inbuf.drain(..o.consumed);
            }
            Err(e) => {
                layer.error_alert(&e, &mut out).expect("an alert fits");
                return plain;
            }
        }
    }
    layer.write_pending(&mut out).expect("a due KeyUpdate");
    layer.seal(b"+OK\r\n", &mut out).expect("an answer");
    plain
}
