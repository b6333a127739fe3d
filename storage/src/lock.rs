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

/// A held flock (exclusive, unless taken with [`FileLock::try_shared`]);
/// released when dropped (the descriptor is closed).
#[derive(Debug)]
pub struct FileLock {
    file: File,
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
    ///
    /// The lock is held on the file at `path` when this returns: a waiter
    /// can be handed the lock of a file that is no longer there (its
    /// maildrop was deleted, renamed away while the holder had it, and
    /// perhaps created anew), and locking that file would guard nothing. So
    /// the file locked is checked to be the one the path names, and the
    /// lock taken again on the new one if not.
    pub fn exclusive(path: &Path) -> Result<Self> {
        Self::exclusive_from(open_lock_file(path)?, path)
    }

    /// [`FileLock::exclusive`] starting from `file`, opened from `path`
    /// earlier (and perhaps since replaced there).
    fn exclusive_from(mut file: File, path: &Path) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        // Each round needs the path's file to be replaced again while this
        // one waits: a few rounds are plenty, and the bound keeps a broken
        // file system from spinning here.
        for _ in 0..16 {
            flock(&file, libc::LOCK_EX).at(path)?;
            let held = file.metadata().at(path)?;
            match std::fs::metadata(path) {
                Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                    return Ok(FileLock { file })
                }
                // Replaced or removed: lock what the path names now (the
                // open fails with the path's error if its directory went).
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).at(path),
            }
            file = open_lock_file(path)?;
        }
        Err(io::Error::other("the lock file keeps being replaced")).at(path)
    }

    /// Takes the exclusive lock if it is free; `Ok(None)` if someone holds it.
    pub fn try_exclusive(path: &Path) -> Result<Option<Self>> {
        Self::try_exclusive_file(open_lock_file(path)?, path)
    }

    /// Takes the lock shared if no one holds it exclusively; `Ok(None)` if
    /// someone does. Holding it shared keeps exclusive holders out while
    /// letting other shared holders in: for checking that no append is
    /// running, and keeping it so for a moment.
    pub fn try_shared(path: &Path) -> Result<Option<Self>> {
        let file = open_lock_file(path)?;
        match flock(&file, libc::LOCK_SH | libc::LOCK_NB) {
            Ok(()) => Ok(Some(FileLock { file })),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e).at(path),
        }
    }

    /// The open lock file, for reading what its holder keeps in it.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// [`FileLock::try_exclusive`] on a lock file already open (read-only
    /// will do: flock needs no write access).
    pub fn try_exclusive_file(file: File, path: &Path) -> Result<Option<Self>> {
        match flock(&file, libc::LOCK_EX | libc::LOCK_NB) {
            Ok(()) => Ok(Some(FileLock { file })),
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

    /// A waiter handed the lock of a file renamed away (a maildrop deleted
    /// and created anew while it waited) ends up holding the new file's.
    #[test]
    fn a_waiter_locks_the_file_the_path_names_now() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("maildrop");
        std::fs::create_dir(&dir).unwrap();
        let p = dir.join("append.lock");
        let holder = FileLock::exclusive(&p).unwrap();
        // The waiter's open comes before the rename, as a delivery's would
        // that then waits for the deletion holding the lock.
        let opened = open_lock_file(&p).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let waiter_path = p.clone();
        let waiter = std::thread::spawn(move || {
            let lock = FileLock::exclusive_from(opened, &waiter_path).unwrap();
            tx.send(()).unwrap();
            // Held until the main thread has looked.
            let _ = done_rx.recv();
            drop(lock);
        });
        std::fs::rename(&dir, root.path().join(".deleted")).unwrap();
        std::fs::create_dir(&dir).unwrap();
        FileLock::create_file(&p).unwrap();
        drop(holder);
        rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap();
        assert!(
            FileLock::try_exclusive(&p).unwrap().is_none(),
            "the waiter holds the lock of the file now at the path"
        );
        done_tx.send(()).unwrap();
        waiter.join().unwrap();
    }
}
