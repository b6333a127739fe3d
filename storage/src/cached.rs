//! Opening and reading files only as far as the kernel's caches allow.
//!
//! A core's event loop serves thousands of connections; if it waited for
//! the disk at one login, all of them would wait. Logins therefore open
//! their maildrop on the blocking pool, but handing the work to another
//! thread and back is dear when the files are in memory, as they nearly
//! always are: opening on the core took 8 % off a session's CPU on two
//! cores (docs/benchmarks.md, "Logins open on the core"). These calls let a login try on the
//! core first: each does what it can without waiting (path lookup from the
//! dentry cache, `openat2` with `RESOLVE_CACHED`; a read from the page
//! cache, `preadv2` with `RWF_NOWAIT`) and returns `None` where it would
//! have to wait, or where this kernel cannot tell (before Linux 5.12). The
//! caller then does the same work where waiting is allowed, which also
//! reports any real error.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Opens `path` read-only if every component of it is in the kernel's
/// caches; `None` if opening would wait for the disk, fails, or this
/// kernel has no `RESOLVE_CACHED`. Its access time is left alone where
/// allowed, as [`crate::noatime`] does.
pub(crate) fn open(path: &Path) -> Option<File> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let flags = libc::O_RDONLY | libc::O_CLOEXEC;
    match openat2_cached(&c, flags | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => openat2_cached(&c, flags).ok(),
        other => other.ok(),
    }
}

fn openat2_cached(path: &CString, flags: libc::c_int) -> std::io::Result<File> {
    // SAFETY: `open_how` is three integers (libc marks it non-exhaustive,
    // so it cannot be written as a literal): all zeros is a valid value.
    let mut how: libc::open_how = unsafe { std::mem::zeroed() };
    how.flags = flags as u64;
    how.resolve = libc::RESOLVE_CACHED;
    // SAFETY: openat2 reads the NUL-terminated path and the `open_how` of
    // the size given, both alive for the call; it returns a new descriptor
    // or -1, and touches no other memory of ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            libc::AT_FDCWD,
            path.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    match i32::try_from(fd) {
        // SAFETY: `fd` was just returned by openat2 and is owned by no one
        // else.
        Ok(fd) if fd >= 0 => Ok(unsafe { File::from_raw_fd(fd) }),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Reads the first `len` bytes of `file` if they are all in the page
/// cache; `None` if reading would wait for the disk, fails, or the file is
/// shorter.
pub(crate) fn read(file: &File, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    read_into(file, &mut buf)?;
    Some(buf)
}

/// [`read`] into `buf`: its first `buf.len()` bytes.
pub(crate) fn read_into(file: &File, buf: &mut [u8]) -> Option<()> {
    let len = buf.len();
    let mut done = 0;
    while done < len {
        let rest = &mut buf[done..];
        let iov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        let offset = libc::off_t::try_from(done).ok()?;
        // SAFETY: the one iovec points at `rest`, initialized bytes of `buf`
        // that nothing else borrows during the call, `rest.len()` long; the
        // descriptor is open for the whole call.
        let n = unsafe { libc::preadv2(file.as_raw_fd(), &iov, 1, offset, libc::RWF_NOWAIT) };
        match usize::try_from(n) {
            Ok(n) if n > 0 => done += n,
            // 0: the file ended early; -1: EAGAIN (not cached), or an error
            // the caller's second try will report.
            _ => return None,
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cached_files_open_and_read_and_missing_ones_do_not() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"in the page cache").unwrap();
        // Just written: its path and pages are cached (on a kernel with
        // RESOLVE_CACHED, 5.12 and later; these machines run 6.x).
        let f = open(&p).expect("a cached path opens");
        assert_eq!(read(&f, 17).as_deref(), Some(&b"in the page cache"[..]));
        assert_eq!(read(&f, 5).as_deref(), Some(&b"in th"[..]));
        // Asking for more than the file holds is not a read.
        assert_eq!(read(&f, 18), None);
        assert!(open(&dir.path().join("missing")).is_none());
        assert!(open(Path::new("nul\0inside")).is_none());
    }
}
