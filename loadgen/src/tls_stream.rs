//! A rustls client connection over a monoio TCP stream.
//!
//! The load generator is a client, so rustls's buffered API is the simple
//! and right tool here: records in, plaintext out through `reader()`, the
//! other way through `writer()`. Plaintext is kept in one buffer that the
//! POP3 layer scans for line ends.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use monoio::buf::IoBufMut;
use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::TcpStream;
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, HandshakeKind};

thread_local! {
    /// Set by [`CountingStore`] when the handshake being built found a
    /// session to resume; read right after `ClientConnection::new`.
    static OFFERED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A client session store that notes whether a resumption was offered, so
/// the report can say how many *attempts* resumed (a client with no ticket
/// left makes a full handshake without the server being at fault).
#[derive(Debug)]
pub struct CountingStore(rustls::client::ClientSessionMemoryCache);

impl CountingStore {
    pub fn new(size: usize) -> Arc<Self> {
        Arc::new(CountingStore(
            rustls::client::ClientSessionMemoryCache::new(size),
        ))
    }
}

impl rustls::client::ClientSessionStore for CountingStore {
    fn set_kx_hint(&self, server_name: ServerName<'static>, group: rustls::NamedGroup) {
        self.0.set_kx_hint(server_name, group)
    }
    fn kx_hint(&self, server_name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.0.kx_hint(server_name)
    }
    fn set_tls12_session(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.0.set_tls12_session(server_name, value)
    }
    fn tls12_session(
        &self,
        server_name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        let v = self.0.tls12_session(server_name);
        if v.is_some() {
            OFFERED.with(|o| o.set(true));
        }
        v
    }
    fn remove_tls12_session(&self, server_name: &ServerName<'static>) {
        self.0.remove_tls12_session(server_name)
    }
    fn insert_tls13_ticket(
        &self,
        server_name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        self.0.insert_tls13_ticket(server_name, value)
    }
    fn take_tls13_ticket(
        &self,
        server_name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        let v = self.0.take_tls13_ticket(server_name);
        if v.is_some() {
            OFFERED.with(|o| o.set(true));
        }
        v
    }
}

/// The TLS parameters a handshake settled on.
#[derive(Debug, Clone, Default)]
pub struct Negotiated {
    pub version: String,
    pub cipher_suite: String,
    /// The key exchange group (empty for a TLS 1.2 resumption, which has none).
    pub key_exchange: String,
}

/// A TLS client stream.
pub struct TlsStream {
    tcp: TcpStream,
    conn: ClientConnection,
    offered_resumption: bool,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// Decrypted bytes not yet consumed; `pos` is the start of unread data.
    plain: Vec<u8>,
    pos: usize,
    eof: bool,
}

/// TLS protocol failures (an alert, a bad record, a failed verification)
/// travel as this kind of I/O error, which [`crate::pop3::OpError`] counts
/// as `tls`.
fn tls_err(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Why [`TlsStream::connect`] failed: at the TCP connect, or after it (in
/// the handshake), so that a server shedding handshakes is not reported
/// as unreachable.
#[derive(Debug)]
pub struct ConnectFailure {
    /// The TCP connection itself failed.
    pub tcp: bool,
    pub error: io::Error,
}

impl TlsStream {
    /// Connects and completes the handshake.
    pub async fn connect(
        addr: SocketAddr,
        sni: &str,
        config: Arc<ClientConfig>,
    ) -> Result<TlsStream, ConnectFailure> {
        let tcp = match TcpStream::connect(addr).await {
            Ok(t) => t,
            Err(error) => return Err(ConnectFailure { tcp: true, error }),
        };
        Self::handshake(tcp, sni, config)
            .await
            .map_err(|error| ConnectFailure { tcp: false, error })
    }

    async fn handshake(
        tcp: TcpStream,
        sni: &str,
        config: Arc<ClientConfig>,
    ) -> io::Result<TlsStream> {
        tcp.set_nodelay(true)?;
        let name = ServerName::try_from(sni.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        OFFERED.with(|o| o.set(false));
        let conn = ClientConnection::new(config, name).map_err(tls_err)?;
        let offered_resumption = OFFERED.with(|o| o.replace(false));
        let mut s = TlsStream {
            tcp,
            conn,
            offered_resumption,
            rbuf: Vec::with_capacity(32 * 1024),
            wbuf: Vec::with_capacity(4096),
            plain: Vec::with_capacity(4096),
            pos: 0,
            eof: false,
        };
        while s.conn.is_handshaking() {
            s.flush().await?;
            if s.conn.is_handshaking() && s.conn.wants_read() && s.read_some().await? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "eof during handshake",
                ));
            }
        }
        s.flush().await?;
        Ok(s)
    }

    /// Whether the client offered a session to resume.
    pub fn offered_resumption(&self) -> bool {
        self.offered_resumption
    }

    /// Whether the handshake resumed a previous session.
    pub fn resumed(&self) -> bool {
        self.conn.handshake_kind() == Some(HandshakeKind::Resumed)
    }

    /// What the handshake settled on, so that a report says which TLS was
    /// measured (two servers compared with different suites or groups are
    /// not measured alike).
    pub fn describe(&self) -> Negotiated {
        Negotiated {
            version: self
                .conn
                .protocol_version()
                .map(|v| format!("{v:?}"))
                .unwrap_or_default(),
            cipher_suite: self
                .conn
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            key_exchange: self
                .conn
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
                .unwrap_or_default(),
        }
    }

    async fn flush(&mut self) -> io::Result<()> {
        while self.conn.wants_write() {
            self.conn.write_tls(&mut self.wbuf)?;
        }
        if !self.wbuf.is_empty() {
            let buf = std::mem::take(&mut self.wbuf);
            let (r, mut buf) = self.tcp.write_all(buf).await;
            buf.clear();
            self.wbuf = buf;
            r?;
        }
        Ok(())
    }

    /// Reads from the socket once and decrypts what arrived.
    async fn read_some(&mut self) -> io::Result<usize> {
        let mut buf = std::mem::take(&mut self.rbuf);
        buf.clear();
        let cap = buf.capacity();
        let (r, slice) = self.tcp.read(buf.slice_mut(0..cap)).await;
        let buf = slice.into_inner();
        let n = r?;
        if n == 0 {
            self.eof = true;
            self.rbuf = buf;
            return Ok(0);
        }
        let mut rd = &buf[..n];
        while !rd.is_empty() {
            self.conn.read_tls(&mut rd)?;
            let state = self.conn.process_new_packets().map_err(tls_err)?;
            if state.plaintext_bytes_to_read() > 0 {
                self.take_plaintext()?;
            }
        }
        self.rbuf = buf;
        Ok(n)
    }

    fn take_plaintext(&mut self) -> io::Result<()> {
        if self.pos > 0 && self.pos == self.plain.len() {
            self.plain.clear();
            self.pos = 0;
        }
        let mut chunk = [0u8; 16384];
        loop {
            match self.conn.reader().read(&mut chunk) {
                Ok(0) => return Ok(()),
                Ok(n) => self.plain.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
    }

    /// Sends bytes (encrypted).
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        self.conn.writer().write_all(data)?;
        self.flush().await
    }

    /// Unread plaintext.
    pub fn buffered(&self) -> &[u8] {
        &self.plain[self.pos..]
    }

    /// Marks `n` bytes of [`TlsStream::buffered`] as consumed.
    pub fn consume(&mut self, n: usize) {
        self.pos += n;
        if self.pos == self.plain.len() {
            self.plain.clear();
            self.pos = 0;
        } else if self.pos > 64 * 1024 {
            self.plain.drain(..self.pos);
            self.pos = 0;
        }
    }

    /// Waits for more plaintext; false at end of stream.
    pub async fn fill(&mut self) -> io::Result<bool> {
        let before = self.plain.len() - self.pos;
        while self.plain.len() - self.pos == before {
            if self.eof {
                return Ok(false);
            }
            self.read_some().await?;
            self.take_plaintext()?;
        }
        Ok(true)
    }
}
