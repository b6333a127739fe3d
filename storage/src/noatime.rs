//! Opening pop3sd's own files for reading without touching their access
//! time.
//!
//! Reading or mapping a file updates its atime whenever the atime is older
//! than the mtime (`relatime`, the default mount option), and after every
//! delivery it is: the next login's read of the index, and the first map of
//! the segment, would each dirty the inode, and on ext4 start a journal
//! transaction, on a connection's core. pop3sd reads only its own files, so
//! it opens them with `O_NOATIME`; where the kernel refuses that (`EPERM`:
//! the file belongs to another user and the process may not override it),
//! the file is opened without.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Opens `path` read-only, leaving its access time alone where allowed.
pub(crate) fn open(path: &Path) -> io::Result<File> {
    open_with(OpenOptions::new().read(true), path)
}

/// Opens `path` as `options` say, leaving its access time alone where
/// allowed.
pub(crate) fn open_with(options: &mut OpenOptions, path: &Path) -> io::Result<File> {
    match options.custom_flags(libc::O_NOATIME).open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => options.custom_flags(0).open(path),
        other => other,
    }
}
