//! One client connection: the thin glue between a socket, rustls's
//! unbuffered API and the sans-IO engine.
//!
//! rustls does the handshake; once it is over, the connection's traffic
//! keys move to pop3sd's record layer (`tls::record_layer`), unless
//! `tls.record_layer = "rustls"`.
//!
//! Data path for RETR: the engine hands out slices of the memory-mapped
//! segment; each slice (at most one TLS record's worth) is copied once into
//! the connection's output buffer and sealed there in place, and io_uring
//! writes the buffer. No other copy of the message is made on the way.
//!
//! Idle connections hold no I/O buffer: they wait with a readiness poll and
//! take buffers from the core's pool only when bytes move.

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use monoio::buf::{IoBuf, IoBufMut};
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use pop3sd_storage::{Address, Domain, Session};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};

use super::buffers::RECORD_OVERHEAD;
use super::limits::{ConnGuard, UserGuard};
use super::local_sync::{Pass, Phase, Stage};
use super::{Core, Generation};
use crate::auth::{Check, Refusal};
use crate::config::{ClientCerts, ListenerConfig, ListenerKind, RecordLayerMode};
use crate::engine::{
    Action, AuthOutcome, AuthRequest, Engine, ExternalIdentity, Mailbox, MailboxError, Mechanism,
    SessionContext, TlsInfo,
};
use crate::proxy;
use crate::tls::record_layer::{RecordError, RecordLayer};
use crate::tls::resolver::take_captured_sni;

/// Largest TLS record on the wire (RFC 8446 section 5.2 plus header).
const MAX_WIRE_RECORD: usize = 16384 + 2048 + 5;

/// The handshake deadline of a connection refused by a connection limit
/// (it is told so over TLS, then closed).
const REFUSED_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long a write may still take once the drain deadline has passed.
const CLOSING_WRITE_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// Why a connection ended early.
#[derive(Debug, thiserror::Error)]
pub enum ConnError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("tls: {0}")]
    Record(#[from] RecordError),
    #[error("tls handshake timed out")]
    HandshakeTimeout,
    #[error("write timed out")]
    WriteTimeout,
    #[error("message could not be read during RETR: {0}")]
    Mailbox(#[from] MailboxError),
    #[error("tls buffer: {0}")]
    Buffer(String),
    #[error("PROXY protocol: {0}")]
    Proxy(#[from] proxy::ProxyError),
    #[error("connection closed by the peer before the PROXY header")]
    ProxyEof,
    #[error("server shutting down before the handshake began")]
    ShuttingDown,
    #[error("refused by a limit, closed untold: too many refused connections in their handshake")]
    RefusedUntold,
}

/// Facts about the TLS session, for logs.
#[derive(Debug, Default, Clone)]
struct TlsFacts {
    version: &'static str,
    cipher: String,
    resumed: bool,
    sni: Option<String>,
}

/// Output bytes waiting to be written: an initialized pool buffer and how
/// much of it is filled.
struct OutBuf {
    buf: Option<Vec<u8>>,
    filled: usize,
    /// The size a buffer from the pool has (`runtime.write_buffer_records`).
    size: usize,
}

/// A client certificate as the handshake left it.
struct ClientCert {
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    /// The configuration generation `identity` was found under.
    generation: u64,
    /// Whom a tenant's CA vouched for it as, then.
    identity: Option<Address>,
}

pub(crate) struct Conn {
    core: Rc<Core>,
    /// The configuration generation this connection was accepted under.
    gen: Arc<Generation>,
    stream: TcpStream,
    /// The TCP peer (a load balancer, with PROXY).
    peer: SocketAddr,
    /// The client as far as limits, throttling and logs are concerned.
    client: SocketAddr,
    id: u64,
    listener: Rc<ListenerConfig>,
    /// When the login succeeded (for the session duration metric).
    login_at: Option<Instant>,
    /// Slots held in the shared connection counters.
    _conn_slot: Option<ConnGuard>,
    user_slot: Option<UserGuard>,
    /// A place among this core's handshakes in flight.
    handshake_pass: Option<Pass>,
    /// rustls, from the start of the handshake until the record layer
    /// takes over (or to the end, with `tls.record_layer = "rustls"`).
    tls: Option<UnbufferedServerConnection>,
    /// pop3sd's record layer, after the handshake.
    records: Option<RecordLayer>,
    /// Received bytes not yet processed (TLS records, or plaintext before STLS).
    inbuf: Option<Vec<u8>>,
    out: OutBuf,
    engine: Option<Engine<Session>>,
    handshake_deadline: Option<Instant>,
    /// A TLS handshake started and the client's Finished has not been
    /// processed yet (the session may already have greeted: 0.5-RTT).
    handshake_open: bool,
    /// STLS was accepted; the engine gets `tls_started` once TLS is up.
    upgrading: bool,
    /// Set when a limit refuses the connection: the client gets this
    /// `-ERR` (after the TLS handshake, on an implicit-TLS listener).
    refusal: Option<&'static str>,
    /// On a listener that requires client certificates: the tenant whose
    /// CA vouched for the client's. Logins of every kind are for its users
    /// only, so that one tenant's certificate does not open another
    /// tenant's password logins to whoever holds it.
    cert_tenant: Option<Domain>,
    /// The client's certificate, if it sent one: kept so that a login
    /// after a reload checks it against the client CAs then in force.
    client_cert: Option<Box<ClientCert>>,
    need_read: bool,
    /// The socket was just seen readable: the next read skips its poll.
    readable: bool,
    peer_closed: bool,
    close_sent: bool,
    finished: bool,
    facts: TlsFacts,
}

fn encode_err(e: &EncodeError) -> Option<usize> {
    match e {
        EncodeError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

fn encrypt_err(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(s) => Some(s.required_size),
        _ => None,
    }
}

impl OutBuf {
    fn space(&self) -> usize {
        self.buf.as_ref().map_or(self.size, |b| b.len()) - self.filled
    }

    /// Runs `f` on the free part of the buffer (taking one from the pool if
    /// needed); on "insufficient size" the buffer grows and `f` runs again.
    fn append<E: std::fmt::Debug>(
        &mut self,
        core: &Core,
        mut f: impl FnMut(&mut [u8]) -> Result<usize, E>,
        need: impl Fn(&E) -> Option<usize>,
    ) -> Result<(), ConnError> {
        let buf = self.buf.get_or_insert_with(|| core.buffers.take_out());
        loop {
            match f(&mut buf[self.filled..]) {
                Ok(n) => {
                    self.filled += n;
                    return Ok(());
                }
                Err(e) => match need(&e) {
                    Some(required) => {
                        let want = self.filled + required;
                        if want > 16 * self.size.max(MAX_WIRE_RECORD) {
                            return Err(ConnError::Buffer(format!("{e:?}")));
                        }
                        buf.resize(want, 0);
                    }
                    None => return Err(ConnError::Buffer(format!("{e:?}"))),
                },
            }
        }
    }
}

impl OutBuf {
    /// Seals the engine's pending output, a record's worth at a time, while
    /// a whole record still fits and at most `most` records; returns
    /// whether anything was sealed.
    fn seal_output(
        &mut self,
        core: &Core,
        engine: &mut Engine<Session>,
        now: Instant,
        most: usize,
        mut seal: impl FnMut(&mut OutBuf, &[u8]) -> Result<(), ConnError>,
    ) -> Result<bool, ConnError> {
        let record = core.record_size;
        let mut sealed = 0;
        while sealed < most && self.space() > record + RECORD_OVERHEAD {
            let Some(chunk) = engine.next_output()? else {
                break;
            };
            let n = chunk.len().min(record);
            seal(self, &chunk[..n])?;
            engine.advance_output(n, now);
            sealed += 1;
        }
        Ok(sealed > 0)
    }

    /// `append` for the record layer: its errors other than "needs more
    /// room" end the connection as what they are (a key exhausted, say).
    fn append_record(
        &mut self,
        core: &Core,
        mut f: impl FnMut(&mut [u8]) -> Result<usize, RecordError>,
    ) -> Result<(), ConnError> {
        let mut failed = None;
        let appended = self.append(
            core,
            |b| match f(b) {
                Ok(n) => Ok(n),
                Err(RecordError::NeedSpace(n)) => Err(Some(n)),
                Err(e) => {
                    failed = Some(e);
                    Err(None)
                }
            },
            |need| *need,
        );
        match failed {
            Some(e) => Err(e.into()),
            None => appended,
        }
    }
}

impl Conn {
    pub(crate) fn new(
        core: Rc<Core>,
        stream: TcpStream,
        peer: SocketAddr,
        listener: Rc<ListenerConfig>,
    ) -> Self {
        let id = core.next_session_id();
        let gen = core.shared.generation();
        let out_size = core.buffers.out_size();
        Conn {
            core,
            gen,
            stream,
            peer,
            client: peer,
            id,
            listener,
            login_at: None,
            _conn_slot: None,
            user_slot: None,
            handshake_pass: None,
            tls: None,
            records: None,
            inbuf: None,
            out: OutBuf {
                buf: None,
                filled: 0,
                size: out_size,
            },
            engine: None,
            handshake_deadline: None,
            handshake_open: false,
            upgrading: false,
            refusal: None,
            cert_tenant: None,
            client_cert: None,
            need_read: false,
            readable: false,
            peer_closed: false,
            close_sent: false,
            finished: false,
            facts: TlsFacts::default(),
        }
    }

    /// Session id used in every log line of this connection.
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    /// Begins a TLS handshake once the client has sent something (its
    /// ClientHello) and this core has room for one more: a socket that
    /// stays silent holds none of the core's handshake places.
    async fn start_tls(&mut self) -> Result<(), ConnError> {
        let mut timeout = self.gen.handshake_timeout;
        let refused = self.refusal.is_some();
        if refused {
            // Refused by a connection limit, and told so over TLS: a real
            // client handshakes at once, and the refused hold no slot, so
            // they may not linger, nor take a place among the core's
            // handshakes; only a few at a time are told at all.
            timeout = timeout.min(REFUSED_HANDSHAKE_TIMEOUT);
            match self.core.refused_handshakes.try_enter() {
                Some(pass) => self.handshake_pass = Some(pass),
                None => return Err(ConnError::RefusedUntold),
            }
        }
        let deadline = Instant::now() + timeout;
        self.handshake_deadline = Some(deadline);
        let at = monoio::time::Instant::from_std(deadline);
        let pending = self.inbuf.as_ref().is_some_and(|b| !b.is_empty());
        if !pending {
            monoio::select! {
                r = monoio::time::timeout_at(at, self.stream.readable(false)) => match r {
                    Ok(r) => r?,
                    Err(_) => return Err(ConnError::HandshakeTimeout),
                },
                _ = self.core.phase.reached(Stage::Closing) => return Err(ConnError::ShuttingDown),
            }
            self.readable = true;
        }
        if !refused {
            let enter = self.core.handshakes.enter();
            match monoio::time::timeout_at(at, enter).await {
                Ok(pass) => self.handshake_pass = Some(pass),
                Err(_) => return Err(ConnError::HandshakeTimeout),
            }
        }
        let config = self.gen.tls.for_listener(self.listener.client_certificates);
        self.tls = Some(UnbufferedServerConnection::new(config)?);
        self.handshake_open = true;
        Ok(())
    }

    /// Context for a new engine, or for one continuing after STLS.
    fn context(&self, sni: Option<&str>, external: Option<ExternalIdentity>) -> SessionContext {
        let dir = &self.gen.directory;
        let tenant = sni
            .and_then(|s| Domain::parse(s).ok())
            .and_then(|d| dir.tenant(&d).cloned());
        let apop = match &tenant {
            Some(t) => t.policy.apop,
            None => self.tls.is_none() && dir.tenants().iter().any(|t| t.policy.apop),
        };
        SessionContext {
            tls: self.tls.is_some(),
            stls_offered: self.listener.kind == ListenerKind::Pop3,
            cleartext_login: dir.any_cleartext(),
            tls_required: if self.tls.is_some() {
                None
            } else {
                dir.tls_required()
            },
            default_domain: tenant
                .as_ref()
                .filter(|t| t.policy.allow_bare_user)
                .map(|t| t.domain.clone()),
            external,
            apop_banner: apop.then(|| apop_banner(self.id, &self.gen.config.hostname)),
            policy_hint: dir.policy_hint(tenant.as_deref()),
            limits: self.gen.limits,
        }
    }

    /// The client's Finished was processed: the handshake's deadline and
    /// its place among the core's handshakes are released, and it counts.
    fn handshake_complete(&mut self) {
        self.handshake_open = false;
        self.handshake_deadline = None;
        self.handshake_pass.take();
        self.core.metrics.handshake(self.facts.resumed);
        tracing::debug!(
            session = self.id,
            client = %self.client,
            tls = self.facts.version,
            cipher = %self.facts.cipher,
            resumed = self.facts.resumed,
            sni = self.facts.sni.as_deref().unwrap_or(""),
            "tls handshake done"
        );
    }

    /// rustls may send application data: record what the handshake
    /// negotiated and start (or continue, after STLS) the POP3 session. On
    /// an implicit-TLS listener without client certificates this comes
    /// right after the server's Finished (`tls.half_rtt_greeting`), so the
    /// greeting leaves in the server's first flight, a round trip before
    /// the client's Finished; the handshake itself completes later
    /// ([`Conn::handshake_complete`]).
    fn start_session(&mut self) {
        let Some(tls) = &self.tls else { return };
        self.facts.version = match tls.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "TLS",
        };
        self.facts.cipher = tls
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default();
        self.facts.resumed = tls.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let chain = tls.peer_certificates();
        let identity = chain.and_then(|chain| self.gen.tls.identities.identify(chain));
        self.client_cert = chain.map(|chain| {
            Box::new(ClientCert {
                chain: chain.to_vec(),
                generation: self.gen.number,
                identity: identity.clone(),
            })
        });
        let sni = self.facts.sni.clone();
        // A certificate speaks for its own tenant only. Under another
        // tenant's name (SNI) it logs no one in; on a listener that
        // requires one, such a connection, or one whose certificate no
        // tenant's CA vouches for (the handshake checked only that some CA
        // signed it), is refused.
        let dir = &self.gen.directory;
        let tenant_of = |d: &Domain| dir.tenant(d).map(|t| t.domain.clone());
        // (Without a certificate, as on most connections, none of this runs.)
        let cert_tenant = identity
            .as_ref()
            .and_then(|a| tenant_of(&a.domain))
            .filter(|t| {
                let sni_tenant = sni
                    .as_deref()
                    .and_then(|s| Domain::parse(s).ok())
                    .and_then(|d| tenant_of(&d));
                sni_tenant.is_none_or(|s| s == *t)
            });
        if self.listener.client_certificates == ClientCerts::Required {
            match &cert_tenant {
                Some(t) => self.cert_tenant = Some(t.clone()),
                None if self.refusal.is_none() => {
                    tracing::info!(session = self.id, client = %self.client.ip(), identity = ?identity.as_ref().map(|a| a.to_string()), sni = sni.as_deref().unwrap_or(""), "client certificate not accepted for this tenant");
                    self.refusal = Some("[AUTH] This client certificate is not accepted here.");
                }
                None => {}
            }
        }
        let external = identity
            .filter(|_| cert_tenant.is_some())
            .map(|address| ExternalIdentity { address });
        if let Some(e) = &external {
            tracing::debug!(session = self.id, client_cert = %e.address, "client certificate");
        }
        let ctx = self.context(sni.as_deref(), external);
        let now = Instant::now();
        match &mut self.engine {
            Some(engine) if self.upgrading => {
                self.upgrading = false;
                engine.tls_started(
                    TlsInfo {
                        default_domain: ctx.default_domain,
                        external: ctx.external,
                        policy_hint: Some(ctx.policy_hint),
                    },
                    now,
                );
            }
            Some(_) => {}
            None => {
                self.engine = Some(match self.refusal.take() {
                    Some(msg) => Engine::refuse(ctx, msg, now),
                    None => Engine::new(ctx, now),
                })
            }
        }
    }

    /// Flushes a TLS alert rustls queued after a fatal error.
    fn queue_alert(&mut self) {
        let Some(tls) = self.tls.as_mut() else { return };
        for _ in 0..4 {
            let UnbufferedStatus { state, .. } = tls.process_tls_records(&mut []);
            match state {
                Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                    let _ = self.out.append(&self.core, |b| enc.encode(b), encode_err);
                }
                Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
                _ => break,
            }
        }
    }

    /// One round of TLS processing: feed received records, produce records.
    fn tls_step(&mut self) -> Result<(), ConnError> {
        let core = self.core.clone();
        let Some(tls) = self.tls.as_mut() else {
            return Ok(());
        };
        let handshaking = tls.is_handshaking();
        if handshaking {
            take_captured_sni();
        }
        // Once the handshake is over and rustls has nothing left to send
        // (it reports WriteTraffic), the record layer takes over: right
        // after rustls has sealed one more record, because a KeyUpdate
        // rustls owes the client (asked for in the client's last flight)
        // waits inside rustls until its next record and would be lost. Not
        // after the client's close_notify: what follows it is ignored.
        let own_records = !handshaking
            && !self.peer_closed
            && self.gen.config.tls.record_layer == RecordLayerMode::Pop3sd
            && RecordLayer::supports(tls);
        let mut hand_over = false;
        let mut empty = Vec::new();
        let inbuf = self.inbuf.as_mut().unwrap_or(&mut empty);
        let UnbufferedStatus { discard, state } = tls.process_tls_records(inbuf);
        let mut session_may_start = false;
        let mut early = Vec::new();
        let now = Instant::now();
        match state {
            Err(e) => {
                let looks_proxy =
                    inbuf.starts_with(b"PROXY ") || inbuf.starts_with(b"\r\n\r\n\0\r\nQUIT\n");
                if looks_proxy {
                    let why = if self.listener.proxy_protocol {
                        "PROXY header from an address not in proxy.trusted_networks; refused"
                    } else {
                        "PROXY header on a listener without proxy_protocol; refused"
                    };
                    if self.core.warn_stray_proxy(now) {
                        tracing::warn!(session = self.id, peer = %self.peer, "{why} (logged once a minute per core)");
                    } else {
                        tracing::debug!(session = self.id, peer = %self.peer, "{why}");
                    }
                }
                drop_front(inbuf, discard);
                self.queue_alert();
                return Err(e.into());
            }
            Ok(ConnectionState::ReadTraffic(mut rt)) => {
                // A client may send its first commands in the same flight as
                // its Finished; rustls then reports traffic before the
                // handshake was seen to end here. Keep those bytes for the
                // engine that `start_session` is about to create.
                let before_engine = self.engine.is_none() || self.upgrading;
                while let Some(rec) = rt.next_record() {
                    let rec = rec?;
                    if before_engine {
                        early.extend_from_slice(rec.payload);
                    } else if let Some(engine) = self.engine.as_mut() {
                        engine.receive(rec.payload, now);
                    }
                }
                session_may_start |= before_engine;
            }
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                self.out.append(&core, |b| enc.encode(b), encode_err)?;
            }
            Ok(ConnectionState::TransmitTlsData(t)) => t.done(),
            Ok(ConnectionState::BlockedHandshake) => self.need_read = true,
            Ok(ConnectionState::WriteTraffic(_)) if self.engine.is_none() || self.upgrading => {
                session_may_start = true;
            }
            Ok(ConnectionState::WriteTraffic(mut wt)) => {
                if let Some(engine) = self.engine.as_mut() {
                    let most = if own_records { 1 } else { usize::MAX };
                    let produced = self.out.seal_output(&core, engine, now, most, |out, c| {
                        out.append(&core, |b| wt.encrypt(c, b), encrypt_err)
                    })?;
                    hand_over = own_records && produced;
                    if hand_over {
                        // The record layer seals the rest.
                    } else if !self.close_sent
                        && ((engine.is_closed() && !engine.has_output())
                            || (self.peer_closed && !produced))
                    {
                        // QUIT answered, or the client's close_notify
                        // answered with ours once its commands are.
                        self.out
                            .append(&core, |b| wt.queue_close_notify(b), encrypt_err)?;
                        self.close_sent = true;
                        self.finished = true;
                    } else if !produced {
                        self.need_read = true;
                    }
                }
            }
            Ok(ConnectionState::PeerClosed) => self.peer_closed = true,
            Ok(ConnectionState::Closed) => self.finished = true,
            Ok(_) => self.need_read = true,
        }
        if let Some(buf) = self.inbuf.as_mut() {
            drop_front(buf, discard);
        }
        if handshaking {
            if let Some(sni) = take_captured_sni() {
                self.facts.sni = Some(sni);
            }
        }
        let still_handshaking = self.tls.as_ref().is_some_and(|t| t.is_handshaking());
        if session_may_start {
            if still_handshaking && self.upgrading {
                // After STLS the server has nothing to say first: the
                // session continues once the handshake is complete.
                self.need_read = true;
            } else {
                self.start_session();
                if let Some(engine) = self.engine.as_mut().filter(|_| !early.is_empty()) {
                    engine.receive(&early, now);
                }
            }
        }
        if self.handshake_open && !still_handshaking && self.engine.is_some() && !self.upgrading {
            self.handshake_complete();
        }
        let rest = self.inbuf.as_deref().unwrap_or(&[]);
        if hand_over && unopened_tail(rest) {
            if let Some(tls) = self.tls.take() {
                self.records = Some(RecordLayer::take_over(tls)?);
            }
        }
        Ok(())
    }

    /// One round after the handshake with pop3sd's record layer: open the
    /// records received, let the engine answer, seal the answer. A record
    /// layer error sends the peer the alert it calls for.
    fn record_step(&mut self) -> Result<(), ConnError> {
        match self.record_round() {
            Err(ConnError::Record(e)) => {
                let core = self.core.clone();
                if let Some(records) = self.records.as_mut() {
                    let _ = self
                        .out
                        .append_record(&core, |b| records.error_alert(&e, b));
                }
                Err(ConnError::Record(e))
            }
            other => other,
        }
    }

    fn record_round(&mut self) -> Result<(), ConnError> {
        let core = self.core.clone();
        let now = Instant::now();
        let Some(records) = self.records.as_mut() else {
            return Ok(());
        };
        let mut received = false;
        if let Some(inbuf) = self.inbuf.as_mut().filter(|b| !b.is_empty()) {
            let engine = &mut self.engine;
            let opened = records.open(inbuf, |plain| {
                if let Some(engine) = engine.as_mut() {
                    engine.receive(plain, now);
                }
            });
            let opened = opened?;
            drop_front(inbuf, opened.consumed);
            received = opened.consumed > 0;
        }
        if records.peer_closed() {
            self.peer_closed = true;
        }
        if records.wants_write() {
            self.out
                .append_record(&core, |b| records.write_pending(b))?;
        }
        let Some(engine) = self.engine.as_mut() else {
            self.finished = true;
            return Ok(());
        };
        let produced = self
            .out
            .seal_output(&core, engine, now, usize::MAX, |out, c| {
                out.append_record(&core, |b| records.seal(c, b))
            })?;
        if engine.is_closed() && !engine.has_output() && !self.close_sent {
            self.out.append_record(&core, |b| records.close_notify(b))?;
            self.close_sent = true;
            self.finished = true;
        } else if !produced && !received {
            // What was received may have asked for an action (a login, a
            // commit); its answer is sealed in the next round.
            self.need_read = true;
        }
        Ok(())
    }

    /// One round without TLS (plain listener before STLS).
    fn plain_step(&mut self) {
        let now = Instant::now();
        let core = self.core.clone();
        let Some(engine) = self.engine.as_mut() else {
            self.finished = true;
            return;
        };
        if let Some(buf) = self.inbuf.as_mut() {
            if !buf.is_empty() {
                engine.receive(buf, now);
                buf.clear();
            }
        }
        let mut produced = false;
        while self.out.space() > core.record_size {
            let chunk = match engine.next_output() {
                Ok(Some(c)) => c,
                Ok(None) => break,
                Err(e) => {
                    tracing::error!(session = self.id, error = %e, "message unreadable mid-RETR; closing");
                    self.finished = true;
                    return;
                }
            };
            let n = chunk.len().min(core.record_size);
            let _ = self.out.append(
                &core,
                |b: &mut [u8]| -> Result<usize, usize> {
                    if b.len() < n {
                        return Err(n);
                    }
                    b[..n].copy_from_slice(&chunk[..n]);
                    Ok(n)
                },
                |need| Some(*need),
            );
            engine.advance_output(n, now);
            produced = true;
        }
        if engine.is_closed() && !engine.has_output() {
            self.finished = true;
        } else if !produced {
            self.need_read = true;
        }
    }

    async fn flush(&mut self) -> Result<(), ConnError> {
        if self.out.filled == 0 {
            return Ok(());
        }
        let Some(buf) = self.out.buf.take() else {
            return Ok(());
        };
        let filled = self.out.filled;
        self.out.filled = 0;
        // The write and its deadlines live in an allocation of their own:
        // in the connection's task they would enlarge every connection,
        // idle ones included, by the largest of them.
        let write = Box::pin(write_bounded(
            &mut self.stream,
            buf.slice(0..filled),
            &self.core.phase,
            self.gen.write_timeout,
        ));
        let (res, slice) = write.await?;
        let buf = slice.into_inner();
        res?;
        let idle = self.engine.as_ref().is_none_or(|e| !e.has_output());
        if idle && self.core.release_idle_buffers {
            self.core.buffers.put_out(buf);
        } else {
            self.out.buf = Some(buf);
        }
        Ok(())
    }

    fn read_deadline(&self) -> Option<Instant> {
        match (
            self.handshake_deadline,
            self.engine.as_ref().and_then(|e| e.next_deadline()),
        ) {
            (Some(h), Some(e)) => Some(h.min(e)),
            (h, e) => h.or(e),
        }
    }

    /// Waits for the client (holding no buffer while idle), then reads.
    async fn read(&mut self) -> Result<(), ConnError> {
        self.need_read = false;
        if self.peer_closed {
            self.answer_close_notify()?;
            self.finished = true;
            return Ok(());
        }
        let pending = self.inbuf.as_ref().is_some_and(|b| !b.is_empty());
        if !pending && self.core.release_idle_buffers {
            if let Some(b) = self.inbuf.take() {
                self.core.buffers.put_in(b);
            }
        }
        // Wait for bytes, the connection's deadline, or the core closing.
        let far = Instant::now() + std::time::Duration::from_secs(86_400);
        let deadline = monoio::time::Instant::from_std(self.read_deadline().unwrap_or(far));
        let ready = if std::mem::take(&mut self.readable) {
            Some(Ok(()))
        } else {
            monoio::select! {
                r = monoio::time::timeout_at(deadline, self.stream.readable(false)) => r.ok(),
                _ = self.core.phase.reached(Stage::Closing) => {
                    self.shut_down();
                    return Ok(());
                }
            }
        };
        let now = Instant::now();
        match ready {
            None => {
                if self.handshake_deadline.is_some_and(|h| now >= h) {
                    return Err(ConnError::HandshakeTimeout);
                }
                if let Some(engine) = self.engine.as_mut() {
                    engine.handle_timeout(now);
                }
                return Ok(());
            }
            Some(r) => r?,
        }
        let mut buf = self
            .inbuf
            .take()
            .unwrap_or_else(|| self.core.buffers.take_in());
        // Room for the rest of a TLS record whose header is already here.
        let want = record_remaining(&buf).clamp(2048, MAX_WIRE_RECORD);
        if buf.capacity() - buf.len() < want {
            buf.reserve(want);
        }
        let len = buf.len();
        let (res, slice) = self.stream.read(buf.slice_mut(len..)).await;
        let buf = slice.into_inner();
        self.inbuf = Some(buf);
        match res {
            Ok(0) => {
                self.peer_closed = true;
                self.finished = true;
            }
            Ok(_) => {}
            Err(e) => return Err(e.into()),
        }
        Ok(())
    }

    /// The client sent close_notify and everything it asked for before it
    /// is answered: close our side too (RFC 8446 section 6.1, RFC 5246
    /// section 7.2.1). While rustls still has the connection, `tls_step`
    /// answers it instead.
    fn answer_close_notify(&mut self) -> Result<(), ConnError> {
        if self.close_sent {
            return Ok(());
        }
        let core = self.core.clone();
        if let Some(records) = self.records.as_mut() {
            self.out.append_record(&core, |b| records.close_notify(b))?;
            self.close_sent = true;
        }
        Ok(())
    }

    /// The drain deadline passed: end the session without committing. The
    /// client is told why where it can still be told (not in the middle of
    /// a handshake, not twice); otherwise the connection just ends.
    fn shut_down(&mut self) {
        let handshaking = self.upgrading || self.tls.as_ref().is_some_and(|t| t.is_handshaking());
        match self.engine.as_mut() {
            Some(engine) if !engine.is_closed() && !handshaking => {
                engine.abort("[SYS/TEMP] Server shutting down; please reconnect.")
            }
            _ => self.finished = true,
        }
    }

    /// Reads the PROXY header a trusted load balancer sends first, and takes
    /// the client address from it.
    async fn read_proxy_header(&mut self) -> Result<(), ConnError> {
        let deadline = Instant::now() + self.gen.handshake_timeout;
        loop {
            let buf = self.inbuf.as_deref().unwrap_or(&[]);
            match proxy::parse(buf)? {
                proxy::Parse::Complete(h) => {
                    if let Some(b) = self.inbuf.as_mut() {
                        drop_front(b, h.len);
                    }
                    if let Some(src) = h.source {
                        self.client = src;
                    }
                    return Ok(());
                }
                proxy::Parse::Incomplete => {
                    self.handshake_deadline = Some(deadline);
                    self.read().await?;
                    self.handshake_deadline = None;
                    if self.finished {
                        return Err(ConnError::ProxyEof);
                    }
                }
            }
        }
    }

    async fn authenticate(&mut self, req: AuthRequest) -> AuthOutcome<Session> {
        let shared = self.core.shared.clone();
        let now = Instant::now();
        // A login goes by the configuration in force now, not the one the
        // connection opened under: a password changed, a user removed or a
        // client CA withdrawn by a reload must not still let in a
        // connection opened before it (one may wait minutes to log in).
        // Only the login's decision: the connection's own transport
        // settings stay those it began with.
        let gen = shared.generation();
        let dir = &gen.directory;
        // Whom the client's certificate speaks for under that configuration
        // (checked again only where a reload came since the handshake).
        let vouched = self.client_cert.as_ref().and_then(|c| {
            if c.generation == gen.number {
                c.identity.clone()
            } else {
                gen.tls.identities.identify(&c.chain)
            }
        });
        let tenant_of = |a: &Address| dir.tenant(&a.domain).map(|t| t.domain.clone());
        // On a listener that requires a certificate, logins of every kind
        // are for its tenant only, and only while a CA still vouches for it.
        let outside_cert_tenant = self.cert_tenant.as_ref().is_some_and(|bound| {
            tenant_of(&req.address).as_ref() != Some(bound)
                || vouched.as_ref().and_then(tenant_of).as_ref() != Some(bound)
        });
        let certificate_withdrawn = req.mechanism == Mechanism::External
            && vouched.map(|a| dir.canonical(&a)) != Some(dir.canonical(&req.address));
        let check = if outside_cert_tenant || certificate_withdrawn {
            // Answered as any failed login is, password unchecked.
            Check::Refused(Refusal::Failed)
        } else {
            let cache = self.core.auth_cache.borrow();
            shared.auth.check(dir, &req, &cache, now)
        };
        let verdict = match check {
            Check::Verified(v) => Ok(v),
            Check::Refused(r) => Err(r),
            Check::Hash(job) => {
                let Some(hashed) = shared.pool.try_run_deferrable(move || job.run()) else {
                    tracing::info!(session = self.id, client = %self.client.ip(), user = %req.address, "password checks backlogged; login refused for now");
                    return AuthOutcome::TempFail;
                };
                match hashed.await {
                    Ok(result) => {
                        let mut cache = self.core.auth_cache.borrow_mut();
                        shared.auth.finish_hash(result, &mut cache, Instant::now())
                    }
                    Err(_) => return AuthOutcome::TempFail,
                }
            }
        };
        let verified = match verdict {
            Ok(v) => v,
            Err(Refusal::Failed) => {
                let counted_as = gen.directory.canonical(&req.address);
                let delay = shared
                    .auth
                    .failure(&counted_as, self.client.ip(), Instant::now());
                self.core.metrics.login(
                    &self.tenant_label(&req.address.domain),
                    false,
                    now.elapsed(),
                );
                tracing::info!(
                    session = self.id,
                    client = %self.client.ip(),
                    user = %req.address,
                    mech = req.mechanism.name(),
                    delay_ms = delay.as_millis() as u64,
                    "login failed"
                );
                monoio::time::sleep(delay).await;
                return AuthOutcome::Failed;
            }
            Err(Refusal::CleartextRefused) => return AuthOutcome::CleartextRefused,
            Err(Refusal::LoginDelay) => return AuthOutcome::LoginDelay,
        };
        // The per-user slot and the LOGIN-DELAY record are only kept if
        // the maildrop opens: a refused attempt must not lock the user out
        // (of sessions, or of logging in again) while this connection lives.
        let max = gen.config.limits.max_sessions_per_user;
        let slot = match shared.counters.user(&verified.address, max) {
            Ok(slot) => slot,
            Err(_) => {
                tracing::info!(session = self.id, user = %verified.address, max, "too many sessions for this user");
                return AuthOutcome::TooManySessions;
            }
        };
        let Ok(admission) = shared.auth.admit(&verified, Instant::now()) else {
            return AuthOutcome::LoginDelay;
        };
        let store = shared.store.clone();
        let address = verified.address.clone();
        // A login's maildrop is nearly always in the kernel's caches: it is
        // opened here if that needs no wait for the disk (handing the work
        // to the blocking pool and back is dear), and on the pool otherwise
        // (see pop3sd_storage's `cached`).
        let opened = match store.open_session_cached(&address) {
            Some(r) => Ok(r),
            None => shared.pool.run(move || store.open_session(&address)).await,
        };
        if !matches!(opened, Ok(Ok(_))) {
            // `slot` is dropped at the end of this call, unkept.
            shared.auth.revoke(admission);
        }
        match opened {
            Ok(Ok(session)) => {
                self.user_slot = Some(slot);
                self.core.metrics.login(
                    &self.tenant_label(&verified.address.domain),
                    true,
                    now.elapsed(),
                );
                self.login_at = Some(Instant::now());
                tracing::info!(
                    session = self.id,
                    client = %self.client.ip(),
                    user = %verified.address,
                    mech = req.mechanism.name(),
                    tls = self.facts.version,
                    resumed = self.facts.resumed,
                    messages = session.count(),
                    "login"
                );
                AuthOutcome::Success {
                    mailbox: session,
                    policy: verified.policy,
                    unix_time: pop3sd_storage::durable::unix_now(),
                }
            }
            Ok(Err(pop3sd_storage::Error::InUse(_))) => {
                // The password was right: the user's own other session (or
                // a second client polling) holds the maildrop. Logged, so
                // that "cannot log in" has a trace.
                tracing::info!(session = self.id, client = %self.client.ip(), user = %verified.address, mech = req.mechanism.name(), "login refused: maildrop in use by another session");
                AuthOutcome::InUse
            }
            Ok(Err(e)) => {
                tracing::error!(session = self.id, user = %verified.address, error = %e, "cannot open maildrop");
                if e.is_temporary() {
                    AuthOutcome::TempFail
                } else {
                    AuthOutcome::PermFail
                }
            }
            Err(_) => AuthOutcome::TempFail,
        }
    }

    async fn commit(
        &mut self,
        mut session: Session,
        expunge: Vec<usize>,
    ) -> Result<usize, MailboxError> {
        let pool = self.core.shared.pool.clone();
        let n = expunge.len();
        let done = pool
            .run(move || {
                let r = pop3sd_storage::Session::expunge(&mut session, &expunge);
                (r, session)
            })
            .await;
        let (result, session) = match done {
            Ok(x) => x,
            Err(_) => return Err(MailboxError("expunge worker failed".into())),
        };
        match result {
            Ok(()) => {
                // Reclaim space after answering, still holding the maildrop;
                // a login that comes meanwhile (this client again, at once)
                // waits for it on the pool, and a long compaction stops for
                // that login. Winding down and queueing the job both happen
                // before the answer goes out, so the job is always queued
                // ahead of any login waiting on it (the queue is FIFO).
                session.wind_down();
                pool.detach(move || {
                    if session.compaction_worthwhile().unwrap_or(false) {
                        let name = session.maildrop().name().to_string();
                        match session.compact() {
                            Ok(r) if r.interrupted => tracing::info!(
                                maildrop = %name,
                                "compaction stopped for a login; a later one reclaims the space"
                            ),
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(maildrop = %name, error = %e, "compaction failed")
                            }
                        }
                    }
                });
                Ok(n)
            }
            Err(e) => {
                tracing::error!(session = self.id, error = %e, "expunge failed");
                Err(MailboxError(e.to_string()))
            }
        }
    }

    async fn run_actions(&mut self) -> Result<(), ConnError> {
        loop {
            let Some(action) = self.engine.as_mut().and_then(|e| e.poll_action()) else {
                return Ok(());
            };
            match action {
                Action::Authenticate(req) => {
                    // What is already answered goes out before a slow
                    // password check.
                    self.flush().await?;
                    let outcome = self.authenticate(req).await;
                    if let Some(e) = self.engine.as_mut() {
                        e.auth_complete(outcome, Instant::now());
                    }
                }
                Action::Commit { mailbox, expunge } => {
                    self.flush().await?;
                    let r = self.commit(mailbox, expunge).await;
                    if let Some(e) = self.engine.as_mut() {
                        e.commit_complete(r);
                    }
                }
                Action::StartTls => {
                    // "+OK Begin TLS" goes out in plaintext first, after
                    // whatever the commands pipelined before STLS produced
                    // (which may take more than one buffer's worth).
                    loop {
                        self.plain_step();
                        self.flush().await?;
                        if self.finished || !self.engine.as_ref().is_some_and(|e| e.has_output()) {
                            break;
                        }
                    }
                    if let Some(b) = self.inbuf.as_mut() {
                        b.clear();
                    }
                    self.upgrading = true;
                    self.start_tls().await?;
                }
                Action::Close => {}
                Action::Fetch(job) => {
                    // What is already sealed goes out before a wait for the
                    // disk.
                    self.flush().await?;
                    self.core
                        .metrics
                        .message_fetches
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let fetched = self.core.shared.pool.run(move || job.run()).await;
                    if let Some(e) = self.engine.as_mut() {
                        if let (Ok(fetched), Some(session)) = (fetched, e.mailbox_mut()) {
                            session.snapshot().install(fetched);
                        }
                        e.fetch_complete(Instant::now());
                    }
                    // Back to the connection's loop, which seals the answer
                    // (and those of commands pipelined after it) before any
                    // further action: a second fetch then finds them
                    // sealed, and writes them before it waits.
                    return Ok(());
                }
            }
        }
    }

    /// Runs the connection to its end.
    pub(crate) async fn run(&mut self) -> Result<(), ConnError> {
        let _ = self.stream.set_nodelay(true);
        if self.listener.proxy_protocol && self.gen.trusted_proxies.contains(self.peer.ip()) {
            self.read_proxy_header().await?;
        }
        let limits = &self.gen.config.limits;
        let counters = self.core.shared.counters.clone();
        match counters.connect(
            self.client.ip(),
            limits.max_connections,
            limits.max_connections_per_ip,
        ) {
            Ok(slot) => self._conn_slot = Some(slot),
            Err(hit) => {
                if self.core.log_refused_by_limit(Instant::now()) {
                    tracing::info!(session = self.id, client = %self.client.ip(), limit = ?hit, "connection refused by limit (further ones this minute are logged at debug level; pop3sd_refused_by_limit_total counts them all)");
                } else {
                    tracing::debug!(session = self.id, client = %self.client.ip(), limit = ?hit, "connection refused by limit");
                }
                self.core
                    .metrics
                    .refused_by_limit
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.refusal = Some(hit.message());
            }
        }
        match self.listener.kind {
            ListenerKind::Pop3s => self.start_tls().await?,
            ListenerKind::Pop3 => {
                let ctx = self.context(None, None);
                let now = Instant::now();
                self.engine = Some(match self.refusal.take() {
                    Some(msg) => Engine::refuse(ctx, msg, now),
                    None => Engine::new(ctx, now),
                });
            }
        }
        loop {
            if self.records.is_some() {
                if let Err(e) = self.record_step() {
                    // Send the alert queued, then give up.
                    let _ = self.flush().await;
                    return Err(e);
                }
            } else if self.tls.is_some() {
                if let Err(e) = self.tls_step() {
                    // Send the alert rustls queued, then give up.
                    let _ = self.flush().await;
                    return Err(e);
                }
            } else {
                self.plain_step();
            }
            self.run_actions().await?;
            // Write only when this round has nothing more to add: before
            // waiting for the client, at the end, or once the buffer cannot
            // take another record. A TLS 1.3 ticket and the greeting, or a
            // pipelined batch's answers, then leave in one write.
            let full = self.out.space() <= self.core.record_size + RECORD_OVERHEAD;
            if self.need_read || self.finished || full {
                self.flush().await?;
            }
            if self.finished {
                return Ok(());
            }
            if self.need_read {
                self.read().await?;
                if self.finished {
                    // A close_notify answering the client's, if any: the
                    // client may have gone already, which is no error.
                    let _ = self.flush().await;
                    return Ok(());
                }
            }
        }
    }

    /// The tenant a login name asked for, as a metrics label: only
    /// configured tenants get their own label, so clients cannot make labels up.
    fn tenant_label(&self, domain: &pop3sd_storage::Domain) -> String {
        self.gen
            .directory
            .tenant(domain)
            .map_or_else(|| "(unknown)".to_string(), |t| t.domain.to_string())
    }

    /// Writes the logout line (Dovecot's pop3_logout_format figures) and
    /// counts the session in the metrics.
    pub(crate) fn log_end(&self, result: &Result<(), ConnError>) {
        if result.is_err() {
            self.core
                .metrics
                .connection_errors
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        // A greeting sent with the server's first flight does not make a
        // session of a handshake the client never finished.
        let engine = match &self.engine {
            Some(engine) if !self.handshake_open || self.upgrading => engine,
            _ => {
                if let Err(e) = result {
                    tracing::debug!(session = self.id, client = %self.client, error = %e, "connection ended before the session started");
                }
                return;
            }
        };
        let s = engine.stats();
        let Some((user, _)) = engine.login() else {
            self.core
                .metrics
                .anonymous_end(u64::from(s.commands), s.bytes_out);
            return;
        };
        self.core.metrics.session_end(
            &self.tenant_label(&user.domain),
            u64::from(s.commands),
            s.bytes_out,
            s.retr_bytes + s.top_bytes,
            self.login_at
                .map_or(std::time::Duration::ZERO, |t| t.elapsed()),
        );
        tracing::info!(
            session = self.id,
            client = %self.client.ip(),
            user = %user,
            top = s.top,
            top_bytes = s.top_bytes,
            retr = s.retr,
            retr_bytes = s.retr_bytes,
            del = s.dele,
            expunged = s.expunged,
            messages = s.messages,
            size = s.size,
            bytes_in = s.bytes_in,
            bytes_out = s.bytes_out,
            state = engine.state_name(),
            error = result.as_ref().err().map(|e| e.to_string()).unwrap_or_default(),
            "logout"
        );
    }
}

/// Removes `n` processed bytes from the front of `buf`.
fn drop_front(buf: &mut Vec<u8>, n: usize) {
    if n == 0 {
        return;
    }
    if n >= buf.len() {
        buf.clear();
    } else {
        buf.copy_within(n.., 0);
        buf.truncate(buf.len() - n);
    }
}

/// Bytes still missing from the TLS record whose header starts `buf`.
fn record_remaining(buf: &[u8]) -> usize {
    if buf.len() < 5 {
        return 0;
    }
    let len = u16::from_be_bytes([buf[3], buf[4]]) as usize + 5;
    len.saturating_sub(buf.len())
}

/// Writes all of `data` within `timeout`; once the core's drain deadline
/// has passed (now or during the write), within a short grace instead, so
/// that a client that does not read cannot keep the process alive.
async fn write_bounded(
    stream: &mut TcpStream,
    data: monoio::buf::Slice<Vec<u8>>,
    phase: &Phase,
    timeout: std::time::Duration,
) -> Result<(std::io::Result<usize>, monoio::buf::Slice<Vec<u8>>), ConnError> {
    let now = Instant::now();
    let deadline = now + timeout;
    let grace = |t: Instant| deadline.min(t + CLOSING_WRITE_GRACE);
    let closing = phase.get() == Stage::Closing;
    let first = if closing { grace(now) } else { deadline };
    let mut write = std::pin::pin!(stream.write_all(data));
    let done = monoio::select! {
        r = monoio::time::timeout_at(monoio::time::Instant::from_std(first), write.as_mut()) => Some(r),
        _ = phase.reached(Stage::Closing), if !closing => None,
    };
    let done = match done {
        Some(r) => r,
        None => {
            let at = monoio::time::Instant::from_std(grace(Instant::now()));
            monoio::time::timeout_at(at, write.as_mut()).await
        }
    };
    done.map_err(|_| ConnError::WriteTimeout)
}

/// Whether what rustls left unprocessed can go to pop3sd's record layer:
/// nothing, or the beginning of a record not yet opened. rustls reports
/// traffic only once no whole record is left, but the part of a handshake
/// message split across records (a KeyUpdate, RFC 8446 section 5.1) it has
/// already decrypted in place stays in the buffer as plaintext, and the
/// record layer would take it for a record. rustls then keeps the
/// connection for another round, until the message is complete.
fn unopened_tail(buf: &[u8]) -> bool {
    let header = buf.iter().take(3).enumerate().all(|(i, &b)| match i {
        0 => (20..=23).contains(&b),
        1 => b == 3,
        _ => b <= 4,
    });
    buf.is_empty() || (header && (buf.len() < 5 || record_remaining(buf) > 0))
}

/// An APOP timestamp no greeting ever repeats (RFC 1939 section 7): a
/// digest captured from one session must not log in again, even after a
/// restart has reset session numbers and reused the process id. 128 random
/// bits carry that; the pid and session number only help to read logs.
fn apop_banner(session: u64, hostname: &str) -> String {
    let mut nonce = [0u8; 16];
    // The system's generator does not fail on Linux; if it ever did, the
    // clock's nanoseconds still differ from one greeting to the next.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        nonce = t.to_le_bytes();
    }
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    format!("<{}.{session}.{hex}@{hostname}>", std::process::id())
}

#[cfg(test)]
mod apop_banner_tests {
    use super::apop_banner;

    #[test]
    fn banners_differ_for_the_same_session_number() {
        let a = apop_banner(7, "mail.example.com");
        let b = apop_banner(7, "mail.example.com");
        assert_ne!(a, b);
        assert!(
            a.starts_with('<') && a.ends_with("@mail.example.com>"),
            "{a}"
        );
        // RFC 1939: the timestamp is a msg-id, printable and without spaces.
        assert!(a.bytes().all(|c| (0x21..0x7f).contains(&c)), "{a}");
    }
}

#[cfg(test)]
mod hand_over_tests {
    use super::unopened_tail;

    #[test]
    fn only_unopened_records_go_to_the_record_layer() {
        assert!(unopened_tail(&[]));
        // The start of an encrypted record, header whole or not.
        assert!(unopened_tail(&[23]));
        assert!(unopened_tail(&[23, 3]));
        assert!(unopened_tail(&[23, 3, 3, 0]));
        let mut partial = vec![23, 3, 3, 0, 40];
        partial.extend_from_slice(&[0xab; 20]);
        assert!(unopened_tail(&partial));
        // A whole record left over: rustls keeps it for another round.
        partial.extend_from_slice(&[0xab; 20]);
        assert!(!unopened_tail(&partial));
        // The decrypted head of a KeyUpdate split across records.
        assert!(!unopened_tail(&[24, 0, 0, 1]));
        assert!(!unopened_tail(&[24]));
        assert!(!unopened_tail(&[4, 0, 0, 200, 0, 0]));
    }
}
