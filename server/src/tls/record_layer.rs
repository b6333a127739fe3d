//! The TLS record layer after the handshake, done by pop3sd instead of
//! rustls.
//!
//! rustls (0.23) seals an outgoing record by copying the plaintext into a
//! freshly allocated buffer, sealing it there and copying the sealed record
//! into the caller's buffer: two copies and an allocation per 16 KiB record,
//! measured at about a quarter of the server's CPU time during RETR of large
//! messages. rustls does the handshake, issues tickets and derives every
//! key; once the handshake is over, it hands the traffic secrets over
//! (`dangerous_into_kernel_connection`, the interface meant for kernel TLS)
//! and this module seals records in place in the connection's output
//! buffer: one copy of the plaintext, one sealing pass, no allocation.
//! It is the user-space counterpart of a kTLS socket, and sans-IO: bytes
//! in, plaintext and records out.
//!
//! What it covers is what a server needs after the handshake: TLS 1.3 and
//! TLS 1.2 with AES-128-GCM, AES-256-GCM and ChaCha20-Poly1305 (every
//! suite the ring provider offers), the peer's KeyUpdate (answered when it
//! asks), our own KeyUpdate before a key reaches its confidentiality limit,
//! alerts both ways, and the record size limits of RFC 8446 section 5.
//! Anything else after the handshake (renegotiation, a protected
//! change_cipher_spec, a handshake message other than KeyUpdate) is refused
//! with a fatal alert, as rustls refuses it, and so are floods of empty
//! records, KeyUpdates and warning alerts beyond rustls's limits.

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use rustls::kernel::KernelConnection;
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::{CipherSuite, ConnectionTrafficSecrets, SupportedCipherSuite};

/// Largest plaintext in one record (RFC 8446 section 5.1).
pub const MAX_PLAINTEXT: usize = 16384;
/// Record header: type, legacy version, length.
const HEADER: usize = 5;
/// AEAD tag of every suite offered.
const TAG: usize = 16;
/// TLS 1.2 AES-GCM's explicit nonce, sent in each record.
const EXPLICIT_NONCE: usize = 8;
/// Largest protected record body accepted: TLS 1.3 allows 2^14 + 256, TLS
/// 1.2 2^14 + 2048 (RFC 8446 section 5.2, RFC 5246 section 6.2.3).
const MAX_BODY_TLS13: usize = MAX_PLAINTEXT + 256;
const MAX_BODY_TLS12: usize = MAX_PLAINTEXT + 2048;

const CONTENT_ALERT: u8 = 21;
const CONTENT_HANDSHAKE: u8 = 22;
const CONTENT_APPLICATION_DATA: u8 = 23;
const CONTENT_CHANGE_CIPHER_SPEC: u8 = 20;
const HANDSHAKE_KEY_UPDATE: u8 = 24;

const ALERT_WARNING: u8 = 1;
const ALERT_FATAL: u8 = 2;
const ALERT_CLOSE_NOTIFY: u8 = 0;
const ALERT_UNEXPECTED_MESSAGE: u8 = 10;
const ALERT_BAD_RECORD_MAC: u8 = 20;
const ALERT_RECORD_OVERFLOW: u8 = 22;
const ALERT_ILLEGAL_PARAMETER: u8 = 47;
const ALERT_DECODE_ERROR: u8 = 50;
const ALERT_INTERNAL_ERROR: u8 = 80;
const ALERT_USER_CANCELED: u8 = 90;

/// Empty application-data records in a row, and KeyUpdates without
/// application data between them, a peer may send before it is cut off;
/// warning alerts it may send in all (rustls's limits: each costs work and
/// carries nothing).
const MAX_EMPTY_RECORDS: u32 = 32;
const MAX_KEY_UPDATES: u32 = 32;
const MAX_WARNINGS: u32 = 4;

/// Why the record layer gave up on a connection. Each carries the alert it
/// sends to the peer, where one is due.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("a record failed authentication (bad_record_mac)")]
    BadRecordMac,
    #[error("a record of {0} bytes is over the limit (record_overflow)")]
    Overflow(usize),
    #[error("{0} after the handshake (unexpected_message)")]
    Unexpected(&'static str),
    #[error("malformed {0} (decode_error)")]
    Decode(&'static str),
    #[error("{0} (illegal_parameter)")]
    IllegalParameter(&'static str),
    #[error("too many {0} (unexpected_message)")]
    Flood(&'static str),
    #[error("the peer sent fatal alert {0}")]
    PeerAlert(u8),
    #[error("the TLS 1.2 key reached its confidentiality limit")]
    KeyExhausted,
    #[error("key update failed: {0}")]
    KeyUpdate(rustls::Error),
    #[error("handing the connection over from rustls failed: {0}")]
    Handover(rustls::Error),
    #[error("cipher suite {0:?} is not one this record layer implements")]
    Unsupported(CipherSuite),
    /// The output buffer must have this many free bytes; nothing was written.
    #[error("output buffer needs {0} bytes")]
    NeedSpace(usize),
}

impl RecordError {
    /// The alert (level, description) this error sends the peer, if any:
    /// a fatal one, or close_notify when a TLS 1.2 key is used up (as
    /// rustls does).
    pub fn alert(&self) -> Option<(u8, u8)> {
        let fatal = |d| Some((ALERT_FATAL, d));
        match self {
            RecordError::BadRecordMac => fatal(ALERT_BAD_RECORD_MAC),
            RecordError::Overflow(_) => fatal(ALERT_RECORD_OVERFLOW),
            RecordError::Unexpected(_) | RecordError::Flood(_) => fatal(ALERT_UNEXPECTED_MESSAGE),
            RecordError::Decode(_) => fatal(ALERT_DECODE_ERROR),
            RecordError::IllegalParameter(_) => fatal(ALERT_ILLEGAL_PARAMETER),
            RecordError::KeyUpdate(_) => fatal(ALERT_INTERNAL_ERROR),
            RecordError::KeyExhausted => Some((ALERT_WARNING, ALERT_CLOSE_NOTIFY)),
            RecordError::PeerAlert(_)
            | RecordError::Handover(_)
            | RecordError::Unsupported(_)
            | RecordError::NeedSpace(_) => None,
        }
    }
}

/// How nonces and additional data are built, which differs by version and
/// AEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// TLS 1.3: nonce = iv XOR sequence, AAD = the record header, the real
    /// content type inside the sealed part.
    Tls13,
    /// TLS 1.2 AES-GCM: 4-byte salt + 8-byte explicit nonce sent in the
    /// record, AAD = sequence, type, version, plaintext length.
    Tls12Gcm,
    /// TLS 1.2 ChaCha20-Poly1305 (RFC 7905): nonce = iv XOR sequence, TLS
    /// 1.2 AAD.
    Tls12Chacha,
}

impl Framing {
    /// Bytes a sealed record adds to its plaintext.
    fn overhead(self) -> usize {
        match self {
            Framing::Tls13 => HEADER + 1 + TAG,
            Framing::Tls12Gcm => HEADER + EXPLICIT_NONCE + TAG,
            Framing::Tls12Chacha => HEADER + TAG,
        }
    }
}

/// One direction's key and sequence number.
struct DirectionKey {
    key: LessSafeKey,
    iv: [u8; aead::NONCE_LEN],
    seq: u64,
}

impl DirectionKey {
    fn new(seq: u64, secrets: ConnectionTrafficSecrets) -> Result<Self, RecordError> {
        let (alg, key, iv) = match &secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                (&aead::CHACHA20_POLY1305, key, iv)
            }
            _ => {
                return Err(RecordError::Handover(rustls::Error::General(
                    "traffic secrets of an unknown AEAD".into(),
                )))
            }
        };
        let key = UnboundKey::new(alg, key.as_ref()).map_err(|_| {
            RecordError::Handover(rustls::Error::General(
                "traffic key of the wrong length".into(),
            ))
        })?;
        let iv: [u8; aead::NONCE_LEN] = iv.as_ref().try_into().map_err(|_| {
            RecordError::Handover(rustls::Error::General(
                "traffic iv of the wrong length".into(),
            ))
        })?;
        Ok(DirectionKey {
            key: LessSafeKey::new(key),
            iv,
            seq,
        })
    }

    /// iv XOR the sequence number, right-aligned (RFC 8446 section 5.3; the
    /// same construction rustls uses for TLS 1.2 GCM's explicit part).
    fn nonce_bytes(&self) -> [u8; aead::NONCE_LEN] {
        let mut n = self.iv;
        for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
            *b ^= s;
        }
        n
    }

    /// Moves to the next record; a connection never gets near 2^64 records,
    /// but wrapping would reuse a nonce, so it is an error.
    fn advance(&mut self) -> Result<(), RecordError> {
        self.seq = self.seq.checked_add(1).ok_or(RecordError::KeyExhausted)?;
        Ok(())
    }

    /// Seals one record of `content` type into `out` and returns its length.
    fn seal(
        &mut self,
        framing: Framing,
        content: u8,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, RecordError> {
        let total = plaintext.len() + framing.overhead();
        if out.len() < total {
            return Err(RecordError::NeedSpace(total));
        }
        let out = &mut out[..total];
        let body_len = (total - HEADER) as u16;
        let outer = if framing == Framing::Tls13 {
            CONTENT_APPLICATION_DATA
        } else {
            content
        };
        out[..HEADER].copy_from_slice(&[outer, 3, 3, (body_len >> 8) as u8, body_len as u8]);
        let (header, body) = out.split_at_mut(HEADER);
        let nonce = self.nonce_bytes();
        let tag = match framing {
            Framing::Tls13 => {
                let n = plaintext.len();
                copy_in_pieces(&mut body[..n], plaintext);
                body[n] = content;
                self.key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(&*header),
                        &mut body[..n + 1],
                    )
                    .map_err(|_| RecordError::Overflow(n))?
            }
            Framing::Tls12Gcm => {
                let n = plaintext.len();
                body[..EXPLICIT_NONCE].copy_from_slice(&nonce[4..]);
                let sealed = &mut body[EXPLICIT_NONCE..EXPLICIT_NONCE + n];
                copy_in_pieces(sealed, plaintext);
                self.key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(tls12_aad(self.seq, content, n)),
                        sealed,
                    )
                    .map_err(|_| RecordError::Overflow(n))?
            }
            Framing::Tls12Chacha => {
                let n = plaintext.len();
                copy_in_pieces(&mut body[..n], plaintext);
                self.key
                    .seal_in_place_separate_tag(
                        Nonce::assume_unique_for_key(nonce),
                        Aad::from(tls12_aad(self.seq, content, n)),
                        &mut body[..n],
                    )
                    .map_err(|_| RecordError::Overflow(n))?
            }
        };
        let tag_at = body.len() - TAG;
        body[tag_at..].copy_from_slice(tag.as_ref());
        self.advance()?;
        Ok(total)
    }
}

/// TLS 1.2's additional data: sequence, type, version, plaintext length.
fn tls12_aad(seq: u64, typ: u8, len: usize) -> [u8; 13] {
    let mut a = [0u8; 13];
    a[..8].copy_from_slice(&seq.to_be_bytes());
    a[8] = typ;
    a[9] = 3;
    a[10] = 3;
    a[11..].copy_from_slice(&(len as u16).to_be_bytes());
    a
}

/// Copies `src` into `dst` in 2 KiB pieces. glibc copies larger blocks with
/// `rep movsb`, which on the AMD EPYC virtual machines we measured runs at
/// 3–12 GB/s depending on the buffers' relative alignment, against 30–40
/// GB/s for its vector loop, which it uses below about 2 KiB; the pieces
/// cost a few calls per record elsewhere.
fn copy_in_pieces(dst: &mut [u8], src: &[u8]) {
    const PIECE: usize = 2048;
    for (d, s) in dst.chunks_mut(PIECE).zip(src.chunks(PIECE)) {
        d.copy_from_slice(s);
    }
}

/// What `open` did with the bytes it was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// Bytes of whole records processed; drop them from the front of the
    /// input. A partial record at the end stays for the next call.
    pub consumed: usize,
}

/// The record layer of one connection after its handshake.
pub struct RecordLayer {
    kernel: KernelConnection<ServerConnectionData>,
    framing: Framing,
    tx: DirectionKey,
    rx: DirectionKey,
    /// Records one key may seal (the suite's confidentiality limit).
    limit: u64,
    /// The peer asked for a KeyUpdate; ours goes out before more data.
    key_update_due: bool,
    peer_closed: bool,
    /// A post-handshake message split over records, so far (TLS 1.3
    /// allows it; only a KeyUpdate, 5 bytes, is accepted).
    handshake_part: Vec<u8>,
    /// Flood counters (see `MAX_EMPTY_RECORDS` and friends).
    empty_records: u32,
    key_updates: u32,
    warnings: u32,
}

impl std::fmt::Debug for RecordLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordLayer")
            .field("framing", &self.framing)
            .field("tx_seq", &self.tx.seq)
            .field("rx_seq", &self.rx.seq)
            .finish_non_exhaustive()
    }
}

impl RecordLayer {
    /// Whether this record layer implements the suite the connection
    /// negotiated; if not, the connection stays with rustls.
    pub fn supports(conn: &UnbufferedServerConnection) -> bool {
        conn.negotiated_cipher_suite()
            .is_some_and(|s| framing(s.suite()).is_some())
    }

    /// Takes a connection over from rustls. It must have finished its
    /// handshake with nothing left to send (rustls then reports
    /// `WriteTraffic`), and its config must allow secret extraction.
    pub fn take_over(conn: UnbufferedServerConnection) -> Result<Self, RecordError> {
        let suite = conn
            .negotiated_cipher_suite()
            .ok_or(RecordError::Handover(rustls::Error::HandshakeNotComplete))?;
        let framing = framing(suite.suite()).ok_or(RecordError::Unsupported(suite.suite()))?;
        let limit = match suite {
            SupportedCipherSuite::Tls13(s) => s.common.confidentiality_limit,
            SupportedCipherSuite::Tls12(s) => s.common.confidentiality_limit,
        };
        let (secrets, kernel) = conn
            .dangerous_into_kernel_connection()
            .map_err(RecordError::Handover)?;
        Ok(RecordLayer {
            kernel,
            framing,
            tx: DirectionKey::new(secrets.tx.0, secrets.tx.1)?,
            rx: DirectionKey::new(secrets.rx.0, secrets.rx.1)?,
            limit,
            key_update_due: false,
            peer_closed: false,
            handshake_part: Vec::new(),
            empty_records: 0,
            key_updates: 0,
            warnings: 0,
        })
    }

    /// Bytes a sealed record adds to its plaintext.
    pub fn overhead(&self) -> usize {
        self.framing.overhead()
    }

    /// The peer sent close_notify: nothing more will come.
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// A KeyUpdate of ours is waiting to be written (`write_pending`).
    pub fn wants_write(&self) -> bool {
        self.key_update_due
    }

    /// Opens every whole record at the front of `input`, in place, handing
    /// each record's application data to `deliver`. Stops after the peer's
    /// close_notify; anything after it is ignored.
    pub fn open(
        &mut self,
        input: &mut [u8],
        mut deliver: impl FnMut(&[u8]),
    ) -> Result<Opened, RecordError> {
        let mut at = 0;
        while !self.peer_closed {
            let rest = &mut input[at..];
            if rest.len() < HEADER {
                break;
            }
            let typ = rest[0];
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            let max = match self.framing {
                Framing::Tls13 => MAX_BODY_TLS13,
                _ => MAX_BODY_TLS12,
            };
            if len > max {
                return Err(RecordError::Overflow(len));
            }
            if rest.len() < HEADER + len {
                break;
            }
            let (header, body) = rest[..HEADER + len].split_at_mut(HEADER);
            let (content, plain) = self.open_record(typ, header, body)?;
            at += HEADER + len;
            if content != CONTENT_HANDSHAKE && !self.handshake_part.is_empty() {
                // RFC 8446 section 5.1: no other record inside a message.
                return Err(RecordError::Unexpected(
                    "a record inside a split handshake message",
                ));
            }
            match content {
                CONTENT_APPLICATION_DATA if plain.is_empty() => {
                    self.empty_records += 1;
                    if self.empty_records > MAX_EMPTY_RECORDS {
                        return Err(RecordError::Flood("empty records"));
                    }
                }
                CONTENT_APPLICATION_DATA => {
                    self.empty_records = 0;
                    self.key_updates = 0;
                    deliver(plain)
                }
                CONTENT_ALERT => self.peer_alert(plain)?,
                CONTENT_HANDSHAKE => self.post_handshake(plain)?,
                CONTENT_CHANGE_CIPHER_SPEC => {
                    return Err(RecordError::Unexpected("change_cipher_spec"))
                }
                _ => return Err(RecordError::Unexpected("unknown content type")),
            }
        }
        Ok(Opened { consumed: at })
    }

    /// Authenticates and decrypts one record in place; returns its content
    /// type and plaintext.
    fn open_record<'b>(
        &mut self,
        typ: u8,
        header: &[u8],
        body: &'b mut [u8],
    ) -> Result<(u8, &'b [u8]), RecordError> {
        let rx = &mut self.rx;
        let (content, plain) = match self.framing {
            Framing::Tls13 => {
                if typ != CONTENT_APPLICATION_DATA {
                    return Err(RecordError::Unexpected("an unprotected record"));
                }
                let nonce = Nonce::assume_unique_for_key(rx.nonce_bytes());
                let inner = rx
                    .key
                    .open_in_place(nonce, Aad::from(header), body)
                    .map_err(|_| RecordError::BadRecordMac)?;
                // TLSInnerPlaintext: content, type, zero padding; at most
                // 2^14 + 1 bytes in all (RFC 8446 section 5.4).
                if inner.len() > MAX_PLAINTEXT + 1 {
                    return Err(RecordError::Overflow(inner.len()));
                }
                let Some(end) = inner.iter().rposition(|&b| b != 0) else {
                    return Err(RecordError::Unexpected("a record without content type"));
                };
                if end > MAX_PLAINTEXT {
                    return Err(RecordError::Overflow(end));
                }
                let content = inner[end];
                (content, &inner[..end])
            }
            Framing::Tls12Gcm | Framing::Tls12Chacha => {
                let (nonce, sealed) = if self.framing == Framing::Tls12Gcm {
                    if body.len() < EXPLICIT_NONCE + TAG {
                        return Err(RecordError::Decode("record shorter than its nonce and tag"));
                    }
                    let (explicit, sealed) = body.split_at_mut(EXPLICIT_NONCE);
                    let mut n = rx.iv;
                    n[4..].copy_from_slice(explicit);
                    (n, sealed)
                } else {
                    (rx.nonce_bytes(), body)
                };
                if sealed.len() < TAG {
                    return Err(RecordError::Decode("record shorter than its tag"));
                }
                let aad = tls12_aad(rx.seq, typ, sealed.len() - TAG);
                let plain = rx
                    .key
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), sealed)
                    .map_err(|_| RecordError::BadRecordMac)?;
                if plain.len() > MAX_PLAINTEXT {
                    return Err(RecordError::Overflow(plain.len()));
                }
                (typ, &*plain)
            }
        };
        rx.advance()?;
        Ok((content, plain))
    }

    fn peer_alert(&mut self, alert: &[u8]) -> Result<(), RecordError> {
        let tls13 = self.framing == Framing::Tls13;
        let (level, description) = match alert {
            [] if tls13 => return Err(RecordError::Unexpected("an empty alert record")),
            [level, description] => (*level, *description),
            _ => return Err(RecordError::Decode("alert")),
        };
        if level != ALERT_WARNING && level != ALERT_FATAL {
            return Err(RecordError::IllegalParameter("an alert of unknown level"));
        }
        match description {
            ALERT_CLOSE_NOTIFY => self.peer_closed = true,
            // TLS 1.3 ignores the level (RFC 8446 section 6): user_canceled
            // is followed by close_notify. In TLS 1.2 warnings carry on.
            ALERT_USER_CANCELED if tls13 || level == ALERT_WARNING => self.warning()?,
            _ if !tls13 && level == ALERT_WARNING => self.warning()?,
            d => return Err(RecordError::PeerAlert(d)),
        }
        Ok(())
    }

    fn warning(&mut self) -> Result<(), RecordError> {
        self.warnings += 1;
        if self.warnings > MAX_WARNINGS {
            return Err(RecordError::Flood("warning alerts"));
        }
        Ok(())
    }

    /// Handshake bytes after the handshake: only a TLS 1.3 KeyUpdate is
    /// acceptable from a client. It may be split over records, and must be
    /// the last thing in its record (a key change may not fall inside a
    /// record, RFC 8446 section 5.1).
    fn post_handshake(&mut self, bytes: &[u8]) -> Result<(), RecordError> {
        if self.framing != Framing::Tls13 {
            return Err(RecordError::Unexpected("renegotiation"));
        }
        if bytes.is_empty() {
            return Err(RecordError::Unexpected("an empty handshake record"));
        }
        for (i, b) in bytes.iter().enumerate() {
            self.handshake_part.push(*b);
            match self.handshake_part.as_slice() {
                [t, ..] if *t != HANDSHAKE_KEY_UPDATE => {
                    return Err(RecordError::Unexpected("a handshake message"))
                }
                [_, a, b, c] if [*a, *b, *c] != [0, 0, 1] => {
                    return Err(RecordError::Decode("KeyUpdate"))
                }
                [_, _, _, _, request] => {
                    let request = match request {
                        0 => false,
                        1 => true,
                        _ => return Err(RecordError::IllegalParameter("KeyUpdate request")),
                    };
                    if i + 1 != bytes.len() {
                        return Err(RecordError::Unexpected(
                            "data after a KeyUpdate in its record",
                        ));
                    }
                    self.handshake_part.clear();
                    self.key_update(request)?;
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The peer changed its sending key; it may ask us to change ours.
    fn key_update(&mut self, request: bool) -> Result<(), RecordError> {
        self.key_updates += 1;
        if self.key_updates > MAX_KEY_UPDATES {
            return Err(RecordError::Flood("KeyUpdates without data"));
        }
        let (seq, secrets) = self
            .kernel
            .update_rx_secret()
            .map_err(RecordError::KeyUpdate)?;
        self.rx = DirectionKey::new(seq, secrets)?;
        self.key_update_due |= request;
        Ok(())
    }

    /// Seals one record of `content` type into `out` and returns its length.
    fn seal_record(
        &mut self,
        content: u8,
        plaintext: &[u8],
        out: &mut [u8],
    ) -> Result<usize, RecordError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(RecordError::Overflow(plaintext.len()));
        }
        self.tx.seal(self.framing, content, plaintext, out)
    }

    /// Room `seal` needs for `plaintext_len` bytes, counting a KeyUpdate
    /// that may have to go first.
    pub fn sealed_len(&self, plaintext_len: usize) -> usize {
        plaintext_len + self.overhead() + self.overhead() + 5
    }

    /// Writes a KeyUpdate the peer asked for, or one the confidentiality
    /// limit calls for, then rotates the sending key. Returns bytes written
    /// (0 when nothing was due).
    pub fn write_pending(&mut self, out: &mut [u8]) -> Result<usize, RecordError> {
        let at_limit = self.tx.seq >= self.limit;
        if !self.key_update_due && !at_limit {
            return Ok(0);
        }
        if self.framing != Framing::Tls13 {
            return Err(RecordError::KeyExhausted);
        }
        // update_not_requested: the peer's own limit is its business.
        let n = self.seal_record(CONTENT_HANDSHAKE, &[HANDSHAKE_KEY_UPDATE, 0, 0, 1, 0], out)?;
        let (seq, secrets) = self
            .kernel
            .update_tx_secret()
            .map_err(RecordError::KeyUpdate)?;
        self.tx = DirectionKey::new(seq, secrets)?;
        self.key_update_due = false;
        Ok(n)
    }

    /// Seals `plaintext` (at most 16 KiB) as one application-data record
    /// into `out`, preceded by a KeyUpdate if one is due. Returns bytes
    /// written; on `NeedSpace` nothing was written.
    pub fn seal(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize, RecordError> {
        if plaintext.len() > MAX_PLAINTEXT {
            return Err(RecordError::Overflow(plaintext.len()));
        }
        let need = self.sealed_len(plaintext.len());
        if out.len() < need {
            return Err(RecordError::NeedSpace(need));
        }
        let first = self.write_pending(out)?;
        let n = self.seal_record(CONTENT_APPLICATION_DATA, plaintext, &mut out[first..])?;
        Ok(first + n)
    }

    /// Seals our close_notify.
    pub fn close_notify(&mut self, out: &mut [u8]) -> Result<usize, RecordError> {
        self.seal_record(CONTENT_ALERT, &[ALERT_WARNING, ALERT_CLOSE_NOTIFY], out)
    }

    /// Seals the alert an error calls for (0 bytes when it calls for
    /// none).
    pub fn error_alert(
        &mut self,
        error: &RecordError,
        out: &mut [u8],
    ) -> Result<usize, RecordError> {
        match error.alert() {
            Some((level, d)) => self.seal_record(CONTENT_ALERT, &[level, d], out),
            None => Ok(0),
        }
    }
}

/// The record framing of each suite the ring provider offers.
fn framing(suite: CipherSuite) -> Option<Framing> {
    match suite {
        CipherSuite::TLS13_AES_128_GCM_SHA256
        | CipherSuite::TLS13_AES_256_GCM_SHA384
        | CipherSuite::TLS13_CHACHA20_POLY1305_SHA256 => Some(Framing::Tls13),
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => Some(Framing::Tls12Gcm),
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        | CipherSuite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(Framing::Tls12Chacha),
        _ => None,
    }
}

#[doc(hidden)]
pub mod fuzzing;
#[cfg(test)]
mod tests;
