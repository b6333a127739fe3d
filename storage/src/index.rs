//! The maildrop index file: a header, then one [`Record`] per message in uid order.
//!
//! The file only ever grows by whole records appended under the append lock;
//! any other change (an expunge, a repair, a compaction) writes a complete new
//! index beside it and renames it into place, so a reader that opened the old
//! one keeps a consistent view and a crash leaves either version whole.
//!
//! [`parse`] is a pure function over bytes (fuzzed in `fuzz/`): it tells a
//! torn tail (the last write did not finish; safe to cut) from corruption in
//! the middle (an error naming the offset, never silently dropped).

use crate::record::{Record, RecordError, RecordRef, RECORD_SIZE};

/// Size of the index header on disk.
pub const HEADER_SIZE: usize = 64;
/// The index format version this build writes and reads.
pub const VERSION: u16 = 1;
const MAGIC: &[u8; 8] = b"POP3SDIX";

/// Per-maildrop facts that outlive every message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Random at creation; part of every native UIDL, so a maildrop deleted
    /// and created again never repeats a UIDL.
    pub uid_validity: u32,
    /// Lower bound for the next uid. Appends use max(this, last uid + 1);
    /// rewrites store the true next uid here so that expunging the newest
    /// message never lets its uid be reused.
    pub next_uid: u64,
    /// Creation time, Unix seconds.
    pub created: i64,
}

impl Header {
    /// Serializes into exactly [`HEADER_SIZE`] bytes.
    pub fn encode(&self) -> [u8; HEADER_SIZE] {
        let mut b = [0u8; HEADER_SIZE];
        b[0..8].copy_from_slice(MAGIC);
        b[8..10].copy_from_slice(&VERSION.to_le_bytes());
        b[10..12].copy_from_slice(&(HEADER_SIZE as u16).to_le_bytes());
        b[12..14].copy_from_slice(&(RECORD_SIZE as u16).to_le_bytes());
        b[16..20].copy_from_slice(&self.uid_validity.to_le_bytes());
        b[24..32].copy_from_slice(&self.next_uid.to_le_bytes());
        b[32..40].copy_from_slice(&self.created.to_le_bytes());
        let crc = crc32c::crc32c(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }
}

/// Why index bytes cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IndexError {
    #[error("file is shorter than the header")]
    ShortHeader,
    #[error("not a pop3sd index (bad magic)")]
    Magic,
    #[error("unsupported version {0}")]
    Version(u16),
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("unexpected header or record size")]
    Geometry,
    #[error("record at byte {offset}: {reason}")]
    Record { offset: u64, reason: RecordError },
    #[error("record at byte {offset}: uid {uid} does not follow {prev}")]
    UidOrder { offset: u64, uid: u64, prev: u64 },
}

impl IndexError {
    /// Byte offset the error concerns, for error messages naming the spot.
    pub fn offset(&self) -> u64 {
        match self {
            IndexError::Record { offset, .. } | IndexError::UidOrder { offset, .. } => *offset,
            _ => 0,
        }
    }
}

/// What [`parse`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub header: Header,
    /// Every valid record, in order.
    pub records: Vec<Record>,
    /// Length of the file prefix made of the header and those records.
    pub valid_len: u64,
    /// True when bytes after `valid_len` were ignored: a torn tail.
    pub torn_tail: bool,
    /// Length of the whole file, torn tail included.
    pub len: u64,
}

impl Parsed {
    /// The uid the next appended message gets.
    pub fn next_uid(&self) -> u64 {
        let after_last = self.records.last().map_or(1, |r| r.uid + 1);
        self.header.next_uid.max(after_last).max(1)
    }

    /// The next uid once the torn tail is cut: past every uid its record
    /// slots may have held. Those records were written, and a session may
    /// have listed one (a login reads the index without the append lock)
    /// before the crash tore it; a later message given its uid would have
    /// its UIDL too, and a client that leaves mail on the server would take
    /// that new message for one it already has and never download it.
    pub fn next_uid_past_tail(&self) -> u64 {
        let cut = self.len.saturating_sub(self.valid_len);
        let slots = cut.div_ceil(RECORD_SIZE as u64);
        self.next_uid().saturating_add(slots)
    }
}

/// Parses the header alone.
pub fn parse_header(bytes: &[u8]) -> Result<Header, IndexError> {
    if bytes.len() < HEADER_SIZE {
        return Err(IndexError::ShortHeader);
    }
    let b = &bytes[..HEADER_SIZE];
    if &b[0..8] != MAGIC {
        return Err(IndexError::Magic);
    }
    let version = u16::from_le_bytes([b[8], b[9]]);
    if version != VERSION {
        return Err(IndexError::Version(version));
    }
    let crc = u32::from_le_bytes([b[60], b[61], b[62], b[63]]);
    if crc32c::crc32c(&b[..60]) != crc {
        return Err(IndexError::HeaderChecksum);
    }
    let header_size = u16::from_le_bytes([b[10], b[11]]) as usize;
    let record_size = u16::from_le_bytes([b[12], b[13]]) as usize;
    if header_size != HEADER_SIZE || record_size != RECORD_SIZE {
        return Err(IndexError::Geometry);
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&b[16..20]);
    let mut n = [0u8; 8];
    n.copy_from_slice(&b[24..32]);
    let mut c = [0u8; 8];
    c.copy_from_slice(&b[32..40]);
    Ok(Header {
        uid_validity: u32::from_le_bytes(v),
        next_uid: u64::from_le_bytes(n),
        created: i64::from_le_bytes(c),
    })
}

/// What [`scan`] found besides the records it handed to its visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScanSummary {
    pub header: Header,
    /// Number of valid records.
    pub records: usize,
    /// Uid of the last valid record (0 if none).
    pub last_uid: u64,
    /// Length of the file prefix made of the header and the valid records.
    pub valid_len: u64,
    /// True when bytes after `valid_len` were ignored: a torn tail.
    pub torn_tail: bool,
}

impl ScanSummary {
    /// The uid the next appended message gets.
    pub fn next_uid(&self) -> u64 {
        self.header.next_uid.max(self.last_uid + 1).max(1)
    }
}

/// Checks a whole index, handing each valid record to `visit` in place.
///
/// A run of invalid or incomplete records at the very end is a torn tail
/// (reported, not an error). An invalid record followed by any valid one is
/// corruption in the middle, and so is a uid out of order: both are errors,
/// because cutting there would silently lose acknowledged mail. `visit` may
/// therefore have seen records of an index that ends up refused.
pub fn scan(bytes: &[u8], mut visit: impl FnMut(RecordRef<'_>)) -> Result<ScanSummary, IndexError> {
    let header = parse_header(bytes)?;
    let body = &bytes[HEADER_SIZE..];
    let mut first_bad: Option<(u64, RecordError)> = None;
    let mut prev_uid = 0u64;
    let mut count = 0usize;
    for (i, chunk) in body.chunks_exact(RECORD_SIZE).enumerate() {
        let offset = (HEADER_SIZE + i * RECORD_SIZE) as u64;
        match RecordRef::check(chunk) {
            Ok(r) => {
                if let Some((bad_at, reason)) = first_bad.take() {
                    return Err(IndexError::Record {
                        offset: bad_at,
                        reason,
                    });
                }
                let uid = r.uid();
                if uid <= prev_uid {
                    return Err(IndexError::UidOrder {
                        offset,
                        uid,
                        prev: prev_uid,
                    });
                }
                prev_uid = uid;
                count += 1;
                visit(r);
            }
            Err(e) => {
                if first_bad.is_none() {
                    first_bad = Some((offset, e));
                }
            }
        }
    }
    let valid_len = (HEADER_SIZE + count * RECORD_SIZE) as u64;
    Ok(ScanSummary {
        header,
        records: count,
        last_uid: prev_uid,
        valid_len,
        torn_tail: valid_len != bytes.len() as u64,
    })
}

/// Parses a whole index into owned records (for rewrites); see [`scan`].
pub fn parse(bytes: &[u8]) -> Result<Parsed, IndexError> {
    let mut records = Vec::with_capacity(bytes.len().saturating_sub(HEADER_SIZE) / RECORD_SIZE);
    let s = scan(bytes, |r| records.push(r.to_record()))?;
    Ok(Parsed {
        header: s.header,
        records,
        valid_len: s.valid_len,
        torn_tail: s.torn_tail,
        len: bytes.len() as u64,
    })
}

/// Serializes a complete index (used for every rewrite).
pub fn encode(header: &Header, records: &[Record]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER_SIZE + records.len() * RECORD_SIZE);
    out.extend_from_slice(&header.encode());
    for r in records {
        out.extend_from_slice(&r.encode());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::Uidl;

    fn rec(uid: u64) -> Record {
        Record {
            uid,
            segment: 1,
            offset: 32 + uid * 10,
            wire_len: 10,
            size: 7,
            body_offset: 0,
            arrival: 0,
            deleted: false,
            uidl: Uidl::native(1, uid),
        }
    }

    fn header() -> Header {
        Header {
            uid_validity: 1,
            next_uid: 1,
            created: 0,
        }
    }

    #[test]
    fn round_trip() {
        let recs: Vec<_> = (1..=5).map(rec).collect();
        let bytes = encode(&header(), &recs);
        let p = parse(&bytes).unwrap();
        assert_eq!(p.records, recs);
        assert!(!p.torn_tail);
        assert_eq!(p.next_uid(), 6);
    }

    #[test]
    fn torn_tail_is_cut_at_every_length() {
        let recs: Vec<_> = (1..=3).map(rec).collect();
        let full = encode(&header(), &recs);
        for cut in HEADER_SIZE..full.len() {
            let p = parse(&full[..cut]).unwrap();
            let whole = (cut - HEADER_SIZE) / RECORD_SIZE;
            assert_eq!(p.records.len(), whole);
            assert_eq!(p.torn_tail, (cut - HEADER_SIZE) % RECORD_SIZE != 0);
        }
        // A garbled last record is a torn tail too.
        let mut b = full.clone();
        let last = b.len() - 10;
        b[last] ^= 0xff;
        let p = parse(&b).unwrap();
        assert_eq!(p.records.len(), 2);
        assert!(p.torn_tail);
    }

    #[test]
    fn a_cut_tail_uses_up_the_uids_it_may_have_held() {
        let recs: Vec<_> = (1..=5).map(rec).collect();
        let full = encode(&header(), &recs);
        // Two whole records garbled (a batch torn by power loss): uids 4
        // and 5 may have been listed, so the next uid is 6, not 4.
        let mut b = full.clone();
        for at in [full.len() - RECORD_SIZE - 3, full.len() - 3] {
            b[at] ^= 0xff;
        }
        let p = parse(&b).unwrap();
        assert_eq!(p.records.len(), 3);
        assert_eq!(p.next_uid(), 4);
        assert_eq!(p.next_uid_past_tail(), 6);
        // Part of a record: its slot counts.
        let p = parse(&full[..full.len() - 1]).unwrap();
        assert_eq!(p.next_uid_past_tail(), 6);
        // Nothing cut: the plain next uid.
        let p = parse(&full).unwrap();
        assert_eq!(p.next_uid_past_tail(), p.next_uid());
    }

    #[test]
    fn middle_corruption_is_an_error() {
        let recs: Vec<_> = (1..=3).map(rec).collect();
        let mut b = encode(&header(), &recs);
        b[HEADER_SIZE + 20] ^= 1;
        let e = parse(&b).unwrap_err();
        assert_eq!(e.offset(), HEADER_SIZE as u64);
    }

    #[test]
    fn uid_order_is_checked() {
        let recs = vec![rec(2), rec(2)];
        assert!(matches!(
            parse(&encode(&header(), &recs)),
            Err(IndexError::UidOrder { .. })
        ));
    }

    #[test]
    fn next_uid_never_goes_back() {
        let mut h = header();
        h.next_uid = 10;
        let p = parse(&encode(&h, &[rec(3)])).unwrap();
        assert_eq!(p.next_uid(), 10);
    }

    #[test]
    fn header_checks() {
        assert_eq!(parse(b"short"), Err(IndexError::ShortHeader));
        let mut b = header().encode();
        b[0] = b'X';
        assert_eq!(parse(&b), Err(IndexError::Magic));
        let mut b = header().encode();
        b[8] = 9;
        assert_eq!(parse(&b), Err(IndexError::Version(9)));
        let mut b = header().encode();
        b[20] = 9;
        assert_eq!(parse(&b), Err(IndexError::HeaderChecksum));
    }
}
