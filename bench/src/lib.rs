//! Helpers shared by the criterion benchmarks: an in-memory TLS pair
//! (rustls client and server, no sockets) and test certificates.

use std::sync::Arc;

use rustls::client::ClientConnection;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::server::{ServerConnection, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// A CA-signed ECDSA P-256 server certificate for `pop.example.test`.
pub struct TestPki {
    pub server_chain: Vec<CertificateDer<'static>>,
    pub server_key: PrivateKeyDer<'static>,
    pub roots: RootCertStore,
}

impl TestPki {
    pub fn new() -> Self {
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["pop.example.test".to_string()])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("cert");
        let mut roots = RootCertStore::empty();
        roots.add(ca.der().clone()).expect("root");
        TestPki {
            server_chain: vec![cert.der().clone()],
            server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            roots,
        }
    }

    pub fn server_config(&self, tls13: bool) -> Arc<ServerConfig> {
        let versions: &[&rustls::SupportedProtocolVersion] = if tls13 {
            &[&rustls::version::TLS13]
        } else {
            &[&rustls::version::TLS12]
        };
        let mut config = ServerConfig::builder_with_provider(pop3sd::tls::provider())
            .with_protocol_versions(versions)
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), self.server_key.clone_key())
            .expect("server config");
        // As pop3sd sets it: its record layer takes the keys after the handshake.
        config.enable_secret_extraction = true;
        Arc::new(config)
    }

    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.client_with_provider(pop3sd::tls::provider())
    }

    /// A client offering one cipher suite only, to measure that suite.
    pub fn client_config_with_suite(
        &self,
        suite: rustls::SupportedCipherSuite,
    ) -> Arc<ClientConfig> {
        let mut p = (*pop3sd::tls::provider()).clone();
        p.cipher_suites.retain(|s| s.suite() == suite.suite());
        self.client_with_provider(Arc::new(p))
    }

    fn client_with_provider(&self, p: Arc<rustls::crypto::CryptoProvider>) -> Arc<ClientConfig> {
        let mut c = ClientConfig::builder_with_provider(p)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(self.roots.clone())
            .with_no_client_auth();
        c.resumption = rustls::client::Resumption::disabled();
        Arc::new(c)
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

fn client(cfg: &Arc<ClientConfig>) -> ClientConnection {
    ClientConnection::new(
        cfg.clone(),
        ServerName::try_from("pop.example.test").expect("name"),
    )
    .expect("client")
}

/// Runs a full handshake between a buffered client and an unbuffered
/// server, in memory; returns both, ready for application data.
pub fn unbuffered_pair(
    server: &Arc<ServerConfig>,
    client_cfg: &Arc<ClientConfig>,
) -> (ClientConnection, UnbufferedServerConnection) {
    let mut c = client(client_cfg);
    let mut s = UnbufferedServerConnection::new(server.clone()).expect("server");
    let mut to_server: Vec<u8> = Vec::new();
    let mut to_client: Vec<u8> = Vec::new();
    for _ in 0..64 {
        while c.wants_write() {
            c.write_tls(&mut to_server).expect("client write");
        }
        let mut server_done = false;
        loop {
            let UnbufferedStatus { discard, state } = s.process_tls_records(&mut to_server);
            let mut wait = false;
            match state.expect("server state") {
                ConnectionState::EncodeTlsData(mut e) => {
                    let mut buf = vec![0u8; 16 * 1024];
                    let n = e.encode(&mut buf).expect("encode");
                    to_client.extend_from_slice(&buf[..n]);
                }
                ConnectionState::TransmitTlsData(t) => t.done(),
                ConnectionState::ReadTraffic(mut r) => while r.next_record().is_some() {},
                ConnectionState::WriteTraffic(_) => {
                    server_done = true;
                    wait = true;
                }
                _ => wait = true,
            }
            to_server.drain(..discard);
            if wait {
                break;
            }
        }
        while !to_client.is_empty() {
            let n = c.read_tls(&mut to_client.as_slice()).expect("client read");
            to_client.drain(..n);
            c.process_new_packets().expect("client process");
        }
        if server_done && !s.is_handshaking() && !c.is_handshaking() && !c.wants_write() {
            return (c, s);
        }
    }
    panic!("handshake did not finish");
}

/// A full handshake between a buffered client and a buffered server.
pub fn buffered_pair(
    server: &Arc<ServerConfig>,
    client_cfg: &Arc<ClientConfig>,
) -> (ClientConnection, ServerConnection) {
    let mut c = client(client_cfg);
    let mut s = ServerConnection::new(server.clone()).expect("server");
    let mut buf = Vec::new();
    while c.is_handshaking() || s.is_handshaking() {
        buf.clear();
        while c.wants_write() {
            c.write_tls(&mut buf).expect("client write");
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            s.read_tls(&mut rd).expect("server read");
        }
        s.process_new_packets().expect("server process");
        buf.clear();
        while s.wants_write() {
            s.write_tls(&mut buf).expect("server write");
        }
        let mut rd = buf.as_slice();
        while !rd.is_empty() {
            c.read_tls(&mut rd).expect("client read");
        }
        c.process_new_packets().expect("client process");
    }
    (c, s)
}
