//! The storage crate's one error type.

use std::io;
use std::path::PathBuf;

use crate::name::NameError;

/// Everything that can go wrong in the store. Variants carry the file they
/// concern, so the server can log a line an operator can act on, and map the
/// kind to a POP3 response code (`InUse` becomes `[IN-USE]`, I/O becomes
/// `[SYS/TEMP]`, corruption `[SYS/PERM]`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid name: {0}")]
    Name(#[from] NameError),
    #[error("maildrop {0} is locked by another session")]
    InUse(String),
    #[error("maildrop {0} does not exist")]
    NoMaildrop(String),
    #[error("tenant {0} does not exist")]
    NoTenant(String),
    #[error("maildrop {0} already exists")]
    Exists(String),
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: corrupt at byte {offset}: {reason}", path.display())]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("{}: format version {found} is not supported (this build reads version {supported})", path.display())]
    Version {
        path: PathBuf,
        found: u16,
        supported: u16,
    },
    #[error("message with uid {0} is not in the maildrop")]
    NoSuchMessage(u64),
    #[error("import from {}: {reason}", path.display())]
    Import { path: PathBuf, reason: String },
}

/// Shorthand used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Attaches a path to an I/O error; the most common conversion in this crate.
pub(crate) trait IoContext<T> {
    fn at(self, path: &std::path::Path) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn at(self, path: &std::path::Path) -> Result<T> {
        self.map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })
    }
}

impl Error {
    /// True when retrying later may succeed (disk full, lock held, I/O hiccup);
    /// false when the data or the request itself is at fault.
    pub fn is_temporary(&self) -> bool {
        matches!(self, Error::Io { .. } | Error::InUse(_))
    }
}
