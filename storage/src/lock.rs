//! Advisory file locks (flock) that hold across processes.
//!
//! flock locks belong to an open file description, so two opens of the same
//! file conflict even inside one process: the server's cores and the CLI all
//! see each other's locks. The in-process half of the lock table lives in
//! [`crate::maildrop`] (an atomic flag per maildrop) so the common "already
//! open on another core" case costs no system call.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::error::{IoContext, Result};

/// A held exclusive flock; released when dropped (the descriptor is closed).
#[derive(Debug)]
pub struct FileLock {
    _file: File,
}

fn open_lock_file(path: &Path) -> Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .at(path)
}

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock takes a valid open descriptor (owned by `file`, alive
        // for the call) and an integer operation; it touches no memory of ours.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

impl FileLock {
    /// Creates the lock file without locking it, so that the first lock
    /// taken later only opens an existing file.
    pub fn create_file(path: &Path) -> Result<()> {
        open_lock_file(path).map(drop)
    }

    /// Waits for the exclusive lock. Only for short critical sections (an
    /// append batch, an index rewrite), never for a whole POP3 session.
    pub fn exclusive(path: &Path) -> Result<Self> {
        let file = open_lock_file(path)?;
        flock(&file, libc::LOCK_EX).at(path)?;
        Ok(FileLock { _file: file })
    }

    /// Takes the exclusive lock if it is free; `Ok(None)` if someone holds it.
    pub fn try_exclusive(path: &Path) -> Result<Option<Self>> {
        Self::try_exclusive_file(open_lock_file(path)?, path)
    }

    /// [`FileLock::try_exclusive`] on a lock file already open (read-only
    /// will do: flock needs no write access).
    pub fn try_exclusive_file(file: File, path: &Path) -> Result<Option<Self>> {
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(Some(FileLock { _file: file })),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e).at(path),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_open_in_same_process_conflicts() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l");
        let a = FileLock::try_exclusive(&p).unwrap();
        assert!(a.is_some());
        assert!(FileLock::try_exclusive(&p).unwrap().is_none());
        drop(a);
        assert!(FileLock::try_exclusive(&p).unwrap().is_some());
    }
}
