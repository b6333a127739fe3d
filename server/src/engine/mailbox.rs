//! The narrow view of storage the engine needs.
//!
//! The engine only reads a fixed snapshot (counts, sizes, UIDLs, wire bytes);
//! the driver applies the expunge at QUIT. Keeping this a trait lets tests
//! and the fuzzer run the engine over [`MemoryMailbox`], and the server run
//! it over a real [`pop3sd_storage::Session`].

use pop3sd_storage::fetch::Extent;
use pop3sd_storage::wire::{self, InputForm, WireSummary};
use pop3sd_storage::Uidl;

/// Why message bytes could not be produced.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct MailboxError(pub String);

/// A session's snapshot of a maildrop; indices are 0-based message numbers.
pub trait Mailbox: Send {
    /// Work that reads a message into memory, for the driver to run where
    /// waiting for the disk is allowed ([`Action::Fetch`]).
    ///
    /// [`Action::Fetch`]: super::Action::Fetch
    type Fetch: Send + std::fmt::Debug + 'static;
    /// Messages in the snapshot.
    fn count(&self) -> usize;
    /// RFC 1939 size of message `i`.
    fn size(&self, i: usize) -> u64;
    /// UIDL of message `i`.
    fn uidl(&self, i: usize) -> Uidl;
    /// Arrival time of message `i` in Unix seconds (for EXPIRE).
    fn arrival(&self, i: usize) -> i64;
    /// Wire form of message `i`, terminator included (what RETR sends).
    fn wire(&self, i: usize) -> Result<&[u8], MailboxError>;
    /// Header plus `lines` body lines of message `i`, without terminator.
    fn top(&self, i: usize, lines: u64) -> Result<&[u8], MailboxError>;
    /// Applies the deletions of a QUIT, atomically. Called by the driver.
    fn expunge(&mut self, indices: &[usize]) -> Result<(), MailboxError>;
    /// What must run off the connection's core before `extent` of message
    /// `i` can be read without waiting for the disk; `None` when it can
    /// be read now. The engine asks before every RETR and TOP, so this
    /// must not wait itself.
    fn fetch_for(&self, i: usize, extent: Extent) -> Option<Self::Fetch>;
}

impl Mailbox for pop3sd_storage::Session {
    type Fetch = pop3sd_storage::fetch::Fetch;
    fn count(&self) -> usize {
        self.snapshot().len()
    }
    fn size(&self, i: usize) -> u64 {
        self.snapshot().message(i).map_or(0, |m| m.size())
    }
    fn uidl(&self, i: usize) -> Uidl {
        self.snapshot()
            .uidl(i)
            .unwrap_or_else(|| Uidl::native(0, i as u64 + 1))
    }
    fn arrival(&self, i: usize) -> i64 {
        self.snapshot().message(i).map_or(0, |m| m.arrival())
    }
    fn wire(&self, i: usize) -> Result<&[u8], MailboxError> {
        self.snapshot()
            .wire(i)
            .map_err(|e| MailboxError(e.to_string()))
    }
    fn top(&self, i: usize, lines: u64) -> Result<&[u8], MailboxError> {
        self.snapshot()
            .top(i, lines)
            .map_err(|e| MailboxError(e.to_string()))
    }
    fn expunge(&mut self, indices: &[usize]) -> Result<(), MailboxError> {
        pop3sd_storage::Session::expunge(self, indices).map_err(|e| MailboxError(e.to_string()))
    }
    fn fetch_for(&self, i: usize, extent: Extent) -> Option<Self::Fetch> {
        self.snapshot().fetch_for(i, extent)
    }
}

/// An in-memory mailbox for tests, benchmarks and the fuzzer.
#[derive(Debug, Clone, Default)]
pub struct MemoryMailbox {
    messages: Vec<(Vec<u8>, WireSummary, Uidl, i64)>,
    /// Indices expunged so far (what a real store would have removed).
    pub expunged: Vec<usize>,
    /// When set, expunge fails with this message (to test QUIT's -ERR).
    pub fail_expunge: Option<String>,
    /// Messages "not in memory": reading them first asks for a fetch, whose
    /// job is the message's index (see [`MemoryMailbox::warm`]).
    pub cold: Vec<usize>,
}

impl MemoryMailbox {
    /// Builds a mailbox from raw messages; UIDLs are "uid-N".
    pub fn from_raw<I, B>(messages: I) -> Self
    where
        I: IntoIterator<Item = B>,
        B: AsRef<[u8]>,
    {
        let messages = messages
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                let (w, s) = wire::encode(m.as_ref(), InputForm::Raw);
                let uidl = Uidl::new(format!("uid-{}", i + 1).as_bytes())
                    .unwrap_or_else(|| Uidl::native(0, i as u64));
                (w, s, uidl, 0)
            })
            .collect();
        MemoryMailbox {
            messages,
            ..Default::default()
        }
    }

    /// Marks message `i` as read into memory (what running its fetch does).
    pub fn warm(&mut self, i: usize) {
        self.cold.retain(|&c| c != i);
    }

    /// Sets the arrival time of message `i`.
    pub fn set_arrival(&mut self, i: usize, unix: i64) {
        if let Some(m) = self.messages.get_mut(i) {
            m.3 = unix;
        }
    }
}

impl Mailbox for MemoryMailbox {
    type Fetch = usize;
    fn count(&self) -> usize {
        self.messages.len()
    }
    fn size(&self, i: usize) -> u64 {
        self.messages.get(i).map_or(0, |m| m.1.size)
    }
    fn uidl(&self, i: usize) -> Uidl {
        self.messages
            .get(i)
            .map_or_else(|| Uidl::native(0, i as u64), |m| m.2)
    }
    fn arrival(&self, i: usize) -> i64 {
        self.messages.get(i).map_or(0, |m| m.3)
    }
    fn wire(&self, i: usize) -> Result<&[u8], MailboxError> {
        self.messages
            .get(i)
            .map(|m| m.0.as_slice())
            .ok_or_else(|| MailboxError(format!("no message {i}")))
    }
    fn top(&self, i: usize, lines: u64) -> Result<&[u8], MailboxError> {
        let m = self
            .messages
            .get(i)
            .ok_or_else(|| MailboxError(format!("no message {i}")))?;
        Ok(&m.0[..wire::top_len(&m.0, m.1.body_offset as usize, lines)])
    }
    fn expunge(&mut self, indices: &[usize]) -> Result<(), MailboxError> {
        if let Some(e) = &self.fail_expunge {
            return Err(MailboxError(e.clone()));
        }
        self.expunged.extend_from_slice(indices);
        Ok(())
    }
    fn fetch_for(&self, i: usize, _extent: Extent) -> Option<usize> {
        self.cold.contains(&i).then_some(i)
    }
}
