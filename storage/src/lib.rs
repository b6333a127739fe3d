//! pop3sd's mailbox store.
//!
//! Mail is kept in the form POP3 sends it, so that serving RETR is one slice
//! of a memory-mapped file; every change is crash-safe (fsync before an
//! acknowledgement, rename for anything that is not an append). The crate
//! knows nothing of sockets, TLS or POP3 sessions beyond what a session must
//! see: a locked, fixed snapshot of one maildrop.
//!
//! See docs/storage-format.md for the on-disk format.

mod cached;
pub mod durable;
pub mod error;
pub mod fetch;
pub mod index;
pub mod lock;
pub mod maildir;
pub mod maildrop;
pub mod map_arena;
pub mod name;
mod noatime;
pub mod record;
pub mod segment;
pub mod snapshot;
pub mod store;
mod unsynced;
pub mod wire;

pub use error::{Error, Result};
pub use maildrop::{
    CompactReport, Maildrop, MaildropStats, PreparedMessage, Receipt, Session, StoreOptions,
    STOPPABLE_ABOVE, WIND_DOWN_WAIT,
};
pub use name::{Address, Domain, LocalPart, NameError};
pub use record::Uidl;
pub use snapshot::{MessageMeta, Snapshot};
pub use store::Store;
