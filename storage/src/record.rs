//! One fixed-size, checksummed index record per message.
//!
//! Fixed size means the n-th record is at a computable offset and a torn write
//! can only damage the tail; the CRC32C over each record tells a complete
//! record from a partial or corrupted one. Layout (little-endian), see
//! docs/storage-format.md:
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `P3MR` |
//! | 4 | 1 | flags (bit 0: deleted) |
//! | 5 | 1 | UIDL length (1..=70) |
//! | 6 | 2 | reserved, zero |
//! | 8 | 8 | uid |
//! | 16 | 4 | segment id |
//! | 20 | 4 | reserved, zero |
//! | 24 | 8 | offset of the wire form in the segment |
//! | 32 | 8 | wire length (terminator included) |
//! | 40 | 8 | RFC 1939 size |
//! | 48 | 8 | body offset within the wire form |
//! | 56 | 8 | arrival time, Unix seconds |
//! | 64 | 70 | UIDL, zero padded |
//! | 134 | 6 | reserved, zero |
//! | 140 | 4 | CRC32C of bytes 0..140 |

/// Size of one record on disk.
pub const RECORD_SIZE: usize = 144;
/// Longest UIDL RFC 1939 allows.
pub const MAX_UIDL: usize = 70;

const MAGIC: &[u8; 4] = b"P3MR";
const FLAG_DELETED: u8 = 1;

/// A message's entry in the index: where its wire form is and what POP3 says about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub uid: u64,
    pub segment: u32,
    pub offset: u64,
    pub wire_len: u64,
    pub size: u64,
    pub body_offset: u64,
    pub arrival: i64,
    pub deleted: bool,
    pub uidl: Uidl,
}

/// A UIDL: 1 to 70 octets in 0x21..=0x7e, stored inline so records need no heap.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Uidl {
    len: u8,
    bytes: [u8; MAX_UIDL],
}

impl std::fmt::Debug for Uidl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Uidl({})", String::from_utf8_lossy(self.as_bytes()))
    }
}

impl Uidl {
    /// Validates a UIDL against RFC 1939 section 7 (1-70 chars in 0x21-0x7E).
    pub fn new(s: &[u8]) -> Option<Self> {
        if s.is_empty() || s.len() > MAX_UIDL || !s.iter().all(|b| (0x21..=0x7e).contains(b)) {
            return None;
        }
        let mut bytes = [0u8; MAX_UIDL];
        bytes[..s.len()].copy_from_slice(s);
        Some(Uidl {
            len: s.len() as u8,
            bytes,
        })
    }

    /// The UIDL pop3sd gives a message it stored itself: the maildrop's
    /// validity (fixed when the maildrop is created) and the never-reused uid.
    /// The `.` keeps it apart from Dovecot's default `%08Xu%08Xv`, which
    /// imported messages keep.
    pub fn native(uid_validity: u32, uid: u64) -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut bytes = [0u8; MAX_UIDL];
        for i in 0..8 {
            bytes[i] = HEX[((uid_validity >> (28 - 4 * i)) & 0xf) as usize];
        }
        bytes[8] = b'.';
        let digits = (64 - uid.leading_zeros()).div_ceil(4).max(1) as usize;
        for i in 0..digits {
            bytes[9 + i] = HEX[((uid >> (4 * (digits - 1 - i))) & 0xf) as usize];
        }
        Uidl {
            len: (9 + digits) as u8,
            bytes,
        }
    }

    /// The UIDL's octets.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Why bytes are not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("bad magic")]
    Magic,
    #[error("checksum mismatch")]
    Checksum,
    #[error("invalid field: {0}")]
    Field(&'static str),
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

impl Record {
    /// The segment this message is in, and the offset just past its last
    /// byte there.
    pub fn end(&self) -> (u32, u64) {
        (self.segment, self.offset.saturating_add(self.wire_len))
    }

    /// Serializes into exactly [`RECORD_SIZE`] bytes.
    pub fn encode(&self) -> [u8; RECORD_SIZE] {
        let mut b = [0u8; RECORD_SIZE];
        b[0..4].copy_from_slice(MAGIC);
        b[4] = if self.deleted { FLAG_DELETED } else { 0 };
        b[5] = self.uidl.len;
        b[8..16].copy_from_slice(&self.uid.to_le_bytes());
        b[16..20].copy_from_slice(&self.segment.to_le_bytes());
        b[24..32].copy_from_slice(&self.offset.to_le_bytes());
        b[32..40].copy_from_slice(&self.wire_len.to_le_bytes());
        b[40..48].copy_from_slice(&self.size.to_le_bytes());
        b[48..56].copy_from_slice(&self.body_offset.to_le_bytes());
        b[56..64].copy_from_slice(&self.arrival.to_le_bytes());
        b[64..64 + MAX_UIDL].copy_from_slice(&self.uidl.bytes);
        let crc = crc32c::crc32c(&b[..140]);
        b[140..144].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Parses and checks one record. `b` must be exactly [`RECORD_SIZE`] long.
    pub fn decode(b: &[u8]) -> Result<Record, RecordError> {
        RecordRef::check(b).map(|r| r.to_record())
    }
}

/// Recognizes one maildrop's native UIDLs (see [`Uidl::native`]) cheaply:
/// the validity prefix is fixed per maildrop, so only the uid's hex digits
/// are read for each record.
#[derive(Debug, Clone, Copy)]
pub struct NativeUidl {
    prefix: [u8; 9],
}

impl NativeUidl {
    /// The recognizer for a maildrop whose index header has `uid_validity`.
    pub fn new(uid_validity: u32) -> Self {
        let mut prefix = [0u8; 9];
        prefix.copy_from_slice(&Uidl::native(uid_validity, 0).as_bytes()[..9]);
        NativeUidl { prefix }
    }

    /// True when `bytes` is this maildrop's native UIDL for `uid`.
    pub fn matches(&self, bytes: &[u8], uid: u64) -> bool {
        let Some(digits) = bytes.strip_prefix(&self.prefix[..]) else {
            return false;
        };
        // Native UIDLs print the uid in lowercase hex without leading zeros.
        let want = (64 - uid.leading_zeros()).div_ceil(4).max(1) as usize;
        if digits.len() != want {
            return false;
        }
        let mut value = 0u64;
        for &c in digits {
            let nibble = match c {
                b'0'..=b'9' => c - b'0',
                b'a'..=b'f' => c - b'a' + 10,
                _ => return false,
            };
            value = (value << 4) | u64::from(nibble);
        }
        value == uid
    }
}

/// A checked record read in place (no copy of its UIDL): what snapshot
/// opening uses, so that 10,000 records cost little more than their CRCs.
#[derive(Clone, Copy)]
pub struct RecordRef<'a> {
    b: &'a [u8],
}

impl<'a> RecordRef<'a> {
    /// Checks magic, checksum and field sanity of one record.
    pub fn check(b: &'a [u8]) -> Result<Self, RecordError> {
        if b.len() != RECORD_SIZE {
            return Err(RecordError::Field("length"));
        }
        if &b[0..4] != MAGIC {
            return Err(RecordError::Magic);
        }
        if crc32c::crc32c(&b[..140]) != u32_at(b, 140) {
            return Err(RecordError::Checksum);
        }
        if b[4] & !FLAG_DELETED != 0 {
            return Err(RecordError::Field("flags"));
        }
        let uidl_len = b[5] as usize;
        if !(1..=MAX_UIDL).contains(&uidl_len) {
            return Err(RecordError::Field("uidl length"));
        }
        // 0x21..=0x7e, as one unsigned comparison per byte.
        if !b[64..64 + uidl_len]
            .iter()
            .all(|c| c.wrapping_sub(0x21) <= 0x7e - 0x21)
        {
            return Err(RecordError::Field("uidl"));
        }
        let r = RecordRef { b };
        let wire_len = r.wire_len();
        if wire_len < 3 {
            return Err(RecordError::Field("wire length"));
        }
        if r.body_offset() > wire_len - 3 {
            return Err(RecordError::Field("body offset"));
        }
        if r.size() > wire_len {
            return Err(RecordError::Field("size"));
        }
        // Every message lies after its segment's header, so a record pointing
        // into a header is damaged; `segment::open_for_append` relies on this
        // when it recreates a segment no longer than its header.
        if r.offset() < crate::segment::HEADER_SIZE || r.offset().checked_add(wire_len).is_none() {
            return Err(RecordError::Field("offset"));
        }
        // 0 is never a uid, and u64::MAX would leave no uid for the next
        // message (the next uid is always the last one plus one).
        if r.uid() == 0 || r.uid() == u64::MAX {
            return Err(RecordError::Field("uid"));
        }
        Ok(r)
    }

    pub fn uid(&self) -> u64 {
        u64_at(self.b, 8)
    }
    pub fn segment(&self) -> u32 {
        u32_at(self.b, 16)
    }
    pub fn offset(&self) -> u64 {
        u64_at(self.b, 24)
    }
    pub fn wire_len(&self) -> u64 {
        u64_at(self.b, 32)
    }
    pub fn size(&self) -> u64 {
        u64_at(self.b, 40)
    }
    pub fn body_offset(&self) -> u64 {
        u64_at(self.b, 48)
    }
    pub fn arrival(&self) -> i64 {
        u64_at(self.b, 56) as i64
    }
    pub fn deleted(&self) -> bool {
        self.b[4] & FLAG_DELETED != 0
    }
    /// The UIDL octets, in place.
    pub fn uidl_bytes(&self) -> &'a [u8] {
        &self.b[64..64 + self.b[5] as usize]
    }

    /// An owned copy, for rewrites.
    pub fn to_record(&self) -> Record {
        let mut bytes = [0u8; MAX_UIDL];
        let u = self.uidl_bytes();
        bytes[..u.len()].copy_from_slice(u);
        Record {
            uid: self.uid(),
            segment: self.segment(),
            offset: self.offset(),
            wire_len: self.wire_len(),
            size: self.size(),
            body_offset: self.body_offset(),
            arrival: self.arrival(),
            deleted: self.deleted(),
            uidl: Uidl {
                len: u.len() as u8,
                bytes,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            uid: 7,
            segment: 1,
            offset: 32,
            wire_len: 100,
            size: 95,
            body_offset: 40,
            arrival: 1_700_000_000,
            deleted: false,
            uidl: Uidl::native(0xdeadbeef, 7),
        }
    }

    #[test]
    fn round_trip() {
        let r = sample();
        let b = r.encode();
        assert_eq!(Record::decode(&b).unwrap(), r);
        let mut d = r.clone();
        d.deleted = true;
        assert_eq!(Record::decode(&d.encode()).unwrap(), d);
    }

    #[test]
    fn a_message_inside_the_segment_header_is_refused() {
        let mut r = sample();
        r.offset = 31;
        assert_eq!(
            Record::decode(&r.encode()),
            Err(RecordError::Field("offset"))
        );
    }

    #[test]
    fn a_uid_that_leaves_no_next_uid_is_refused() {
        let mut r = sample();
        r.uid = u64::MAX;
        assert_eq!(Record::decode(&r.encode()), Err(RecordError::Field("uid")));
        r.uid = u64::MAX - 1;
        assert!(Record::decode(&r.encode()).is_ok());
    }

    #[test]
    fn any_flipped_bit_is_caught() {
        let b = sample().encode();
        for i in 0..RECORD_SIZE * 8 {
            let mut c = b;
            c[i / 8] ^= 1 << (i % 8);
            assert!(Record::decode(&c).is_err(), "bit {i} flip accepted");
        }
    }

    #[test]
    fn uidl_rules() {
        assert!(Uidl::new(b"").is_none());
        assert!(Uidl::new(&[b'a'; 71]).is_none());
        assert!(Uidl::new(b"a b").is_none());
        assert!(Uidl::new(&[b'a'; 70]).is_some());
        assert_eq!(Uidl::native(1, 255).as_bytes(), b"00000001.ff");
        for (v, uid) in [(1, 255), (0xdeadbeef, 0), (0, u64::MAX), (7, 16), (7, 15)] {
            let n = Uidl::native(v, uid);
            assert!(NativeUidl::new(v).matches(n.as_bytes(), uid));
            assert!(!NativeUidl::new(v ^ 1).matches(n.as_bytes(), uid));
            assert!(!NativeUidl::new(v).matches(n.as_bytes(), uid ^ 1));
            assert!(!NativeUidl::new(v).matches(&n.as_bytes()[1..], uid));
            let mut longer = n.as_bytes().to_vec();
            longer.push(b'0');
            assert!(!NativeUidl::new(v).matches(&longer, uid));
        }
        assert!(!NativeUidl::new(1).matches(b"0000000100000001", 1));
        assert!(!NativeUidl::new(1).matches(b"00000001.A", 10));
        assert_eq!(Uidl::native(0xdeadbeef, 0).as_bytes(), b"deadbeef.0");
        assert_eq!(
            Uidl::native(0, u64::MAX).as_bytes(),
            b"00000000.ffffffffffffffff"
        );
        for uid in [1u64, 15, 16, 4095, 4096, 1 << 40] {
            assert_eq!(
                Uidl::native(7, uid).as_bytes(),
                format!("{:08x}.{:x}", 7, uid).as_bytes()
            );
        }
    }
}
