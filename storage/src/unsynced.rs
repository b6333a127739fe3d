//! The mark an append leaves, for logins in every process, on index records
//! it has written and not yet fsynced.
//!
//! A login reads the index without the append lock, so it can see an
//! append's records between their `write` and their `fdatasync`. A record
//! taken then could vanish in a power cut after the client listed it, and
//! its uid (so its UIDL) then go to the next message, which a client that
//! leaves mail on the server would take for one it already has and never
//! download. So an append writes the index length its records start at into
//! the maildrop's `session.lock` before writing them, and clears it once
//! their fsync returns; a login reads the mark after reading the index and
//! takes nothing from there on. `session.lock` holds it because every login
//! already has that file open: reading the mark is one `pread`. The mark of
//! an appender that died (killed between the two) is told apart by the
//! append lock being free, and cleared by the login that finds it so.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

/// Bytes of the mark at the start of the file.
const MARK_LEN: usize = 8;

/// The mark's value when no append is between its index write and fsync;
/// a file shorter than [`MARK_LEN`] (as every lock file was before marks
/// existed) says the same.
const CLEAR: u64 = u64::MAX;

fn decode(buf: &[u8]) -> Option<u64> {
    let bytes: [u8; MARK_LEN] = buf.get(..MARK_LEN)?.try_into().ok()?;
    Some(u64::from_le_bytes(bytes)).filter(|&from| from != CLEAR)
}

/// Where an append's unsynced records start, as `file` says now (`None`: no
/// append is marked).
pub(crate) fn read(file: &File) -> io::Result<Option<u64>> {
    let mut buf = [0u8; MARK_LEN];
    let mut done = 0;
    while done < MARK_LEN {
        match file.read_at(&mut buf[done..], done as u64) {
            Ok(0) => return Ok(None),
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(decode(&buf))
}

/// [`read`] without waiting for the disk: `None` where the read would wait
/// or fails (the caller then does it where waiting is allowed).
pub(crate) fn read_cached(file: &File) -> Option<Option<u64>> {
    let mut buf = [0u8; MARK_LEN];
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: the one iovec points at `buf`, MARK_LEN initialized bytes that
    // nothing else borrows during the call; the descriptor is open for the
    // whole call.
    let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
    match usize::try_from(n) {
        Ok(MARK_LEN) => Some(decode(&buf)),
        // A file shorter than a mark holds none, as [`read`] finds.
        Ok(_) => Some(None),
        // EAGAIN (not cached), or an error the second try will report.
        Err(_) => None,
    }
}

fn write(file: &File, value: u64) -> io::Result<()> {
    file.write_all_at(&value.to_le_bytes(), 0)
}

/// Clears the mark in the file at `path`. Only for a caller holding the
/// append lock (shared will do): no append can then be running.
pub(crate) fn clear(path: &Path) -> io::Result<()> {
    write(&std::fs::OpenOptions::new().write(true).open(path)?, CLEAR)
}

/// Marks an append's records as not yet durable until dropped (after their
/// fsync, or on any way out of the append, including its roll-back). Made
/// only under the append lock.
pub(crate) struct Mark {
    file: File,
}

impl Mark {
    /// Marks the index bytes from `from` on in the lock file at `path`.
    pub(crate) fn set(path: &Path, from: u64) -> io::Result<Mark> {
        use std::os::unix::fs::OpenOptionsExt;
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)?;
        write(&file, from)?;
        Ok(Mark { file })
    }
}

impl Drop for Mark {
    fn drop(&mut self) {
        if let Err(e) = write(&self.file, CLEAR) {
            // Logins keep checking the append lock, find it free, and clear
            // the mark themselves.
            tracing::warn!(error = %e, "could not clear an append's mark in session.lock");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_reads_back_until_dropped_and_old_lock_files_hold_none() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("session.lock");
        std::fs::write(&p, b"").unwrap();
        let f = File::open(&p).unwrap();
        assert_eq!(read(&f).unwrap(), None, "an empty lock file");
        assert_eq!(read_cached(&f), Some(None));
        let mark = Mark::set(&p, 4096).unwrap();
        assert_eq!(read(&f).unwrap(), Some(4096));
        assert_eq!(read_cached(&f), Some(Some(4096)));
        drop(mark);
        assert_eq!(read(&f).unwrap(), None);
        assert_eq!(read_cached(&f), Some(None));
        let _mark = Mark::set(&p, 64).unwrap();
        clear(&p).unwrap();
        assert_eq!(read(&f).unwrap(), None);
        // Something shorter than a mark (a stray byte) is no mark.
        std::fs::write(&p, b"x").unwrap();
        assert_eq!(read(&f).unwrap(), None);
        assert_eq!(read_cached(&f), Some(None));
    }
}
