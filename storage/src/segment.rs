//! Segment files: append-only runs of messages in POP3 wire form.
//!
//! A segment starts with a 32-byte header (magic `POP3SDSG`, version, its own
//! id, CRC32C) and then holds message wire forms back to back at the offsets
//! the index records. pop3sd never truncates or rewrites a segment in place:
//! sessions read them through memory maps, and a map of a file that shrinks
//! would fault. Space is reclaimed by compaction, which copies live messages
//! to a new segment and unlinks the old one (maps of it stay valid).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::durable::sync_dir;
use crate::error::{Error, IoContext, Result};
use crate::map_arena::SegmentMap;

/// Size of the segment header.
pub const HEADER_SIZE: u64 = 32;
/// Segment format version.
pub const VERSION: u16 = 1;
const MAGIC: &[u8; 8] = b"POP3SDSG";

/// File name of segment `id` inside a maildrop directory.
pub fn file_name(id: u32) -> String {
    format!("seg-{id:08x}")
}

/// Path of segment `id` inside `dir`.
pub fn path(dir: &Path, id: u32) -> PathBuf {
    dir.join(file_name(id))
}

/// The id in a segment file name, if `name` is one.
pub fn parse_name(name: &str) -> Option<u32> {
    let hex = name.strip_prefix("seg-")?;
    if hex.len() != 8 {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

/// Ids of all segment files in `dir`, ascending.
pub fn list(dir: &Path) -> Result<Vec<u32>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let entry = entry.at(dir)?;
        if let Some(id) = entry.file_name().to_str().and_then(parse_name) {
            ids.push(id);
        }
    }
    ids.sort_unstable();
    Ok(ids)
}

fn encode_header(id: u32) -> [u8; HEADER_SIZE as usize] {
    let mut b = [0u8; HEADER_SIZE as usize];
    b[0..8].copy_from_slice(MAGIC);
    b[8..10].copy_from_slice(&VERSION.to_le_bytes());
    b[10..12].copy_from_slice(&(HEADER_SIZE as u16).to_le_bytes());
    b[12..16].copy_from_slice(&id.to_le_bytes());
    let crc = crc32c::crc32c(&b[..28]);
    b[28..32].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Why segment bytes are not a usable segment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    #[error("shorter than the segment header")]
    Short,
    #[error("not a pop3sd segment (bad magic)")]
    Magic,
    #[error("unsupported version {0}")]
    Version(u16),
    #[error("header checksum mismatch")]
    Checksum,
    #[error("header names segment {found}, file name says {expected}")]
    WrongId { found: u32, expected: u32 },
}

/// Checks a segment header (pure; fuzzed).
pub fn check_header(bytes: &[u8], expected_id: u32) -> Result<(), SegmentError> {
    if bytes.len() < HEADER_SIZE as usize {
        return Err(SegmentError::Short);
    }
    if &bytes[0..8] != MAGIC {
        return Err(SegmentError::Magic);
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != VERSION {
        return Err(SegmentError::Version(version));
    }
    let crc = u32::from_le_bytes([bytes[28], bytes[29], bytes[30], bytes[31]]);
    if crc32c::crc32c(&bytes[..28]) != crc {
        return Err(SegmentError::Checksum);
    }
    let found = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if found != expected_id {
        return Err(SegmentError::WrongId {
            found,
            expected: expected_id,
        });
    }
    Ok(())
}

/// Creates segment `id` with its header, durably (file and directory entry).
pub fn create(dir: &Path, id: u32) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let p = path(dir, id);
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&p)
        .at(&p)?;
    f.write_all(&encode_header(id)).at(&p)?;
    f.sync_all().at(&p)?;
    sync_dir(dir)?;
    Ok(f)
}

/// Opens segment `id` for appending at its current end.
///
/// A segment no longer than its header with a header that does not check
/// was being created when the process died (killed between creating the file
/// and writing its header, or power lost before the header reached the
/// disk). No record can point into it, since every message lies past the
/// header, so it is created afresh instead of blocking every later delivery.
/// A longer segment with a bad header is corruption and is reported.
pub fn open_for_append(dir: &Path, id: u32) -> Result<(File, u64)> {
    use std::os::unix::fs::FileExt;
    let p = path(dir, id);
    let f = crate::noatime::open_with(OpenOptions::new().read(true).write(true), &p).at(&p)?;
    let len = f.metadata().at(&p)?.len();
    let mut head = [0u8; HEADER_SIZE as usize];
    let got = if len >= HEADER_SIZE {
        f.read_exact_at(&mut head, 0).at(&p)?;
        check_header(&head, id)
    } else {
        Err(SegmentError::Short)
    };
    match got {
        Ok(()) => Ok((f, len)),
        Err(reason) if len <= HEADER_SIZE => {
            tracing::warn!(
                file = %p.display(),
                len,
                %reason,
                "segment creation was interrupted; creating it again"
            );
            drop(f);
            std::fs::remove_file(&p).at(&p)?;
            Ok((create(dir, id)?, HEADER_SIZE))
        }
        Err(reason) => Err(Error::Corrupt {
            path: p,
            offset: 0,
            reason: reason.to_string(),
        }),
    }
}

/// Maps segment `id` read-only and checks its header.
pub fn map(dir: &Path, id: u32) -> Result<Mmap> {
    let p = path(dir, id);
    let f = crate::noatime::open(&p).at(&p)?;
    // SAFETY: pop3sd never truncates or writes into the existing part of a
    // segment file (appends only extend it past the mapped length; compaction
    // writes a new file and unlinks this one, which leaves the mapping valid).
    // The map is read-only. An outside process truncating the file would break
    // this contract; the storage root is documented as pop3sd's alone.
    let m = unsafe { Mmap::map(&f) }.at(&p)?;
    check_header(&m, id).map_err(|e| Error::Corrupt {
        path: p.clone(),
        offset: 0,
        reason: e.to_string(),
    })?;
    Ok(m)
}

/// Maps segment `id` for a POP3 session: in the arena of session maps
/// ([`crate::map_arena`]), whose unmapping is batched. The header is read
/// with `pread` rather than through the map, so that a session faults in
/// only the pages of the messages it sends.
pub fn map_for_session(dir: &Path, id: u32) -> Result<SegmentMap> {
    use std::os::unix::fs::FileExt;
    let p = path(dir, id);
    let f = crate::noatime::open(&p).at(&p)?;
    let len = session_len(&f, &p)?;
    let mut header = [0u8; HEADER_SIZE as usize];
    f.read_exact_at(&mut header, 0).at(&p)?;
    map_checked(&f, &p, id, len, &header)
}

/// [`map_for_session`] without waiting for the disk (see
/// [`crate::cached`]): `None` where the path or the header is not in the
/// kernel's caches, or this kernel cannot tell; the caller then maps it
/// where waiting is allowed. A bad header is reported as by
/// `map_for_session`.
pub fn map_for_session_cached(dir: &Path, id: u32) -> Option<Result<SegmentMap>> {
    let p = path(dir, id);
    let f = crate::cached::open(&p)?;
    let len = match session_len(&f, &p) {
        Ok(len) => len,
        Err(e) => return Some(Err(e)),
    };
    let mut header = [0u8; HEADER_SIZE as usize];
    crate::cached::read_into(&f, &mut header)?;
    Some(map_checked(&f, &p, id, len, &header))
}

/// The length of an open segment, which must hold a header at least.
fn session_len(f: &File, p: &Path) -> Result<u64> {
    let len = f.metadata().at(p)?.len();
    if len < HEADER_SIZE {
        return Err(Error::Corrupt {
            path: p.to_path_buf(),
            offset: 0,
            reason: SegmentError::Short.to_string(),
        });
    }
    Ok(len)
}

/// Checks the header read from an open segment, then maps its `len` bytes.
fn map_checked(
    f: &File,
    p: &Path,
    id: u32,
    len: u64,
    header: &[u8; HEADER_SIZE as usize],
) -> Result<SegmentMap> {
    let corrupt = |reason: String| Error::Corrupt {
        path: p.to_path_buf(),
        offset: 0,
        reason,
    };
    check_header(header, id).map_err(|e| corrupt(e.to_string()))?;
    let len =
        usize::try_from(len).map_err(|_| corrupt("larger than this machine can map".into()))?;
    // SAFETY: as in `map`: pop3sd never truncates or writes into the
    // existing part of a segment, and `len` is its length just read.
    unsafe { SegmentMap::map(f, len) }.at(p)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    #[test]
    fn names() {
        assert_eq!(file_name(0x1a), "seg-0000001a");
        assert_eq!(parse_name("seg-0000001a"), Some(0x1a));
        assert_eq!(parse_name("seg-1a"), None);
        assert_eq!(parse_name("index"), None);
    }

    #[test]
    fn header_round_trip_and_checks() {
        let h = encode_header(5);
        assert_eq!(check_header(&h, 5), Ok(()));
        assert_eq!(
            check_header(&h, 6),
            Err(SegmentError::WrongId {
                found: 5,
                expected: 6
            })
        );
        let mut bad = h;
        bad[13] ^= 1;
        assert_eq!(check_header(&bad, 5), Err(SegmentError::Checksum));
        assert_eq!(check_header(&h[..10], 5), Err(SegmentError::Short));
    }

    #[test]
    fn an_interrupted_creation_is_redone_and_a_bad_header_with_data_is_refused() {
        let d = tempfile::tempdir().unwrap();
        // Killed before the header was written, or halfway through it.
        for partial in [&b""[..], &encode_header(3)[..10], &[0u8; 32][..]] {
            std::fs::write(path(d.path(), 3), partial).unwrap();
            let (f, end) = open_for_append(d.path(), 3).unwrap();
            assert_eq!(end, HEADER_SIZE);
            f.write_all_at(b"x\r\n.\r\n", end).unwrap();
            assert_eq!(
                &map(d.path(), 3).unwrap()[HEADER_SIZE as usize..],
                b"x\r\n.\r\n"
            );
            std::fs::remove_file(path(d.path(), 3)).unwrap();
        }
        // A bad header in front of messages is not silently replaced.
        let mut bytes = vec![0u8; 32];
        bytes.extend_from_slice(b"x\r\n.\r\n");
        std::fs::write(path(d.path(), 4), &bytes).unwrap();
        assert!(matches!(
            open_for_append(d.path(), 4),
            Err(Error::Corrupt { .. })
        ));
        assert_eq!(std::fs::read(path(d.path(), 4)).unwrap(), bytes);
    }

    #[test]
    fn create_then_map() {
        let d = tempfile::tempdir().unwrap();
        let mut f = create(d.path(), 1).unwrap();
        f.write_all(b"abc\r\n.\r\n").unwrap();
        let m = map(d.path(), 1).unwrap();
        assert_eq!(&m[HEADER_SIZE as usize..], b"abc\r\n.\r\n");
        assert_eq!(list(d.path()).unwrap(), vec![1]);
        assert!(create(d.path(), 1).is_err());
    }
}
