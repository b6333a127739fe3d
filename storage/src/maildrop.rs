//! One user's maildrop: durable appends, locked sessions, atomic expunges, compaction.
//!
//! Files in a maildrop directory:
//! - `index`: header and one record per message ([`crate::index`]);
//! - `seg-XXXXXXXX`: append-only wire-form segments ([`crate::segment`]);
//! - `append.lock`: flock held while the index or segments change (short);
//! - `session.lock`: flock held for a whole POP3 session or a compaction.
//!
//! Appends never take the session lock: mail keeps arriving while a session
//! is open, and the session's snapshot simply does not contain it.
//!
//! Concurrent appends from threads of one process are merged by group
//! commit: the first appender to find no batch in progress becomes the leader,
//! writes every queued message, and issues one fsync for the segment and one
//! for the index on behalf of all of them.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::durable::{replace_file, sync_dir, unix_now};
use crate::error::{Error, IoContext, Result};
use crate::index::{self, Header, Parsed};
use crate::lock::FileLock;
use crate::record::{Record, Uidl, RECORD_SIZE};
use crate::segment;
use crate::snapshot::Snapshot;
use crate::wire::{self, InputForm, WireSummary, TERMINATOR};

pub(crate) const INDEX: &str = "index";
const APPEND_LOCK: &str = "append.lock";
const SESSION_LOCK: &str = "session.lock";

/// Indexes up to this size (about 1,800 messages) are read rather than mapped.
const READ_INDEX_MAX: u64 = 256 * 1024;
/// Longest a login waits for a session that is winding down. The wait is
/// normally the end of one message's copy (a compaction stops for the
/// login); this bounds it where the holder is stuck behind the disk.
pub const WIND_DOWN_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// A compaction that copies more than this stops for a waiting login; one
/// that copies less finishes first (a few milliseconds and one fsync).
pub const STOPPABLE_ABOVE: u64 = 4 << 20;

/// An index's bytes, read or mapped (see [`Maildrop::index_bytes`]).
enum IndexBytes {
    Read(Vec<u8>),
    Mapped(memmap2::Mmap),
}

impl AsRef<[u8]> for IndexBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            IndexBytes::Read(v) => v,
            IndexBytes::Mapped(m) => m,
        }
    }
}

/// Tunables of the store, fixed when it is opened.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// A new segment is started once the active one would grow past this.
    pub segment_max: u64,
    /// Merge concurrent appends to one maildrop into one fsync pair.
    pub group_commit: bool,
    /// Most messages one group commit writes.
    pub max_batch: usize,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            segment_max: 64 << 20,
            group_commit: true,
            max_batch: 256,
        }
    }
}

/// A message converted to wire form, ready to append.
#[derive(Debug, Clone)]
pub struct PreparedMessage {
    wire: Vec<u8>,
    summary: WireSummary,
    arrival: Option<i64>,
    uidl: Option<Uidl>,
}

impl PreparedMessage {
    /// Converts raw message bytes (LF or CRLF, not stuffed).
    pub fn from_raw(raw: &[u8]) -> Self {
        let (wire, summary) = wire::encode(raw, InputForm::Raw);
        Self::from_encoded(wire, summary)
    }

    /// Wraps the output of a [`crate::wire::WireEncoder`] (used by LMTP,
    /// which encodes while it receives).
    pub fn from_encoded(wire: Vec<u8>, summary: WireSummary) -> Self {
        PreparedMessage {
            wire,
            summary,
            arrival: None,
            uidl: None,
        }
    }

    /// Keeps an arrival time from elsewhere (an import), instead of now.
    pub fn with_arrival(mut self, unix_secs: i64) -> Self {
        self.arrival = Some(unix_secs);
        self
    }

    /// Keeps a UIDL from elsewhere (an import), instead of a native one.
    pub fn with_uidl(mut self, uidl: Uidl) -> Self {
        self.uidl = Some(uidl);
        self
    }

    /// The RFC 1939 size the message will have.
    pub fn size(&self) -> u64 {
        self.summary.size
    }

    /// The stored length (wire form).
    pub fn wire_len(&self) -> u64 {
        self.wire.len() as u64
    }

    fn check(&self) -> Result<(), String> {
        if self.summary.wire_len != self.wire.len() as u64 || !self.wire.ends_with(TERMINATOR) {
            return Err("message is not in wire form".into());
        }
        Ok(())
    }
}

/// What a durable append gives back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    pub uid: u64,
    pub uidl: Uidl,
    pub size: u64,
    pub wire_len: u64,
}

/// Message and byte counts of a maildrop, for quotas and `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MaildropStats {
    /// Messages not expunged.
    pub messages: u64,
    /// Sum of their RFC 1939 sizes.
    pub bytes: u64,
    /// Expunged messages whose space compaction has not reclaimed yet.
    pub expunged: u64,
    /// Wire bytes those occupy.
    pub expunged_wire_bytes: u64,
    /// Wire bytes of live messages.
    pub live_wire_bytes: u64,
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CompactReport {
    pub records_dropped: u64,
    pub bytes_copied: u64,
    pub segments_removed: u64,
    /// Stopped for a waiting login before anything changed; the space is
    /// reclaimed by a later compaction.
    pub interrupted: bool,
}

/// What an append needs to know about the index's end.
struct Tail {
    header: Header,
    /// The uid the first appended message gets.
    next_uid: u64,
    /// Where the last message ends: (segment, offset past its last byte).
    last_end: Option<(u32, u64)>,
}

#[derive(Default)]
struct GroupState {
    queue: Vec<(u64, PreparedMessage)>,
    done: HashMap<u64, Result<Receipt>>,
    next_ticket: u64,
    leader: bool,
}

// The states of `Shared::session_state`.
const LOCK_FREE: u8 = 0;
const LOCK_LIVE: u8 = 1;
const LOCK_WINDING_DOWN: u8 = 2;

/// Per-maildrop state shared by every handle in this process.
pub(crate) struct Shared {
    pub(crate) dir: PathBuf,
    pub(crate) name: String,
    options: StoreOptions,
    group: Mutex<GroupState>,
    cv: Condvar,
    /// The in-process half of the session lock table: [`LOCK_FREE`],
    /// [`LOCK_LIVE`] or [`LOCK_WINDING_DOWN`] (held only to finish up: a
    /// session whose QUIT is answered, a compaction; a login then waits
    /// for it instead of being refused `[IN-USE]`). One atomic, so a login
    /// never sees the holder gone and its state still set.
    session_state: AtomicU8,
    /// Set by a login that found the holder winding down (on a core, or
    /// waiting on the pool), cleared when the lock is released or a holder
    /// winds down: a compaction then stops at its next copy, leaving the
    /// maildrop as it was. Set from the core too, so the stop does not
    /// depend on a free pool thread for the login to wait on.
    login_came: AtomicBool,
    /// Signalled whenever the session lock is released; the mutex only
    /// orders a waiter's check against the release.
    released: Mutex<()>,
    released_cv: Condvar,
}

/// `index` without its bytes from `from` on: where an append marked records
/// not yet durable ([`crate::unsynced`]). A mark outside the records (a
/// damaged lock file) cuts nothing.
fn cut_at(index: &[u8], from: u64) -> &[u8] {
    match usize::try_from(from) {
        Ok(from) if from >= index::HEADER_SIZE && from < index.len() => &index[..from],
        _ => index,
    }
}

impl Shared {
    fn winding_down(&self) -> bool {
        self.session_state.load(Ordering::Acquire) == LOCK_WINDING_DOWN
    }

    /// Tells a winding-down holder that a login is here.
    fn login_came(&self) {
        self.login_came.store(true, Ordering::Release);
    }

    pub(crate) fn new(dir: PathBuf, name: String, options: StoreOptions) -> Self {
        Shared {
            dir,
            name,
            options,
            group: Mutex::new(GroupState::default()),
            cv: Condvar::new(),
            session_state: AtomicU8::new(LOCK_FREE),
            login_came: AtomicBool::new(false),
            released: Mutex::new(()),
            released_cv: Condvar::new(),
        }
    }
}

/// A handle to one maildrop; cheap to clone, shareable across threads.
#[derive(Clone)]
pub struct Maildrop {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Maildrop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maildrop")
            .field("name", &self.shared.name)
            .finish()
    }
}

fn lock_group(m: &Mutex<GroupState>) -> MutexGuard<'_, GroupState> {
    // A panic in another appender must not wedge delivery: the state holds
    // only queued work and results, which stay consistent.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Gives every message of a failed batch its own copy of the error.
fn replicate(e: &Error) -> Error {
    match e {
        Error::Io { path, source } => Error::Io {
            path: path.clone(),
            source: std::io::Error::new(source.kind(), source.to_string()),
        },
        Error::Corrupt {
            path,
            offset,
            reason,
        } => Error::Corrupt {
            path: path.clone(),
            offset: *offset,
            reason: reason.clone(),
        },
        other => Error::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(other.to_string()),
        },
    }
}

fn random_u32() -> u32 {
    let mut b = [0u8; 4];
    // SAFETY: getrandom writes at most `b.len()` bytes into the valid buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n == 4 {
        u32::from_le_bytes(b)
    } else {
        // Entropy unavailable: time and pid still make collisions unlikely.
        (unix_now() as u32) ^ std::process::id().rotate_left(16)
    }
}

/// Creates a new maildrop's files in its (existing) directory: the lock
/// files, then the index, whose presence marks the maildrop complete.
/// Returns `false`, changing nothing, when another creator finished first.
///
/// Creators racing for the same new maildrop (two deliveries of a user's
/// first mail on two cores, or two processes) are serialised by the append
/// lock, and the index is checked again under it: otherwise a second
/// creator could replace an index the first had already appended to, and
/// acknowledged mail would be lost. Creating the lock files here, at first
/// delivery, also keeps inode allocation out of the first login: on an ext4
/// file system with many recently deleted files it costs more than the rest
/// of opening a maildrop. Maildrops made before this still get their lock
/// files on first use.
pub(crate) fn create_files(dir: &Path) -> Result<bool> {
    let _creating = FileLock::exclusive(&dir.join(APPEND_LOCK))?;
    if dir.join(INDEX).is_file() {
        return Ok(false);
    }
    FileLock::create_file(&dir.join(SESSION_LOCK))?;
    create_index(dir)?;
    Ok(true)
}

/// Creates a maildrop's index in an existing, empty directory.
fn create_index(dir: &Path) -> Result<()> {
    let header = Header {
        uid_validity: random_u32(),
        next_uid: 1,
        created: unix_now(),
    };
    replace_file(&dir.join(INDEX), &header.encode())
}

impl Maildrop {
    /// Directory holding this maildrop.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// `user@domain`, for messages.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    fn index_path(&self) -> PathBuf {
        self.shared.dir.join(INDEX)
    }

    fn corrupt(&self, e: index::IndexError) -> Error {
        match e {
            index::IndexError::Version(found) => Error::Version {
                path: self.index_path(),
                found,
                supported: index::VERSION,
            },
            other => Error::Corrupt {
                path: self.index_path(),
                offset: other.offset(),
                reason: other.to_string(),
            },
        }
    }

    pub(crate) fn read_index(&self) -> Result<Parsed> {
        let path = self.index_path();
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoMaildrop(self.shared.name.clone()))
            }
            Err(e) => return Err(e).at(&path),
        };
        index::parse(&bytes).map_err(|e| self.corrupt(e))
    }

    /// Rewrites the index without its torn tail, its next uid past every
    /// uid the tail may have held; returns the new header. Caller holds the
    /// append lock.
    fn repair_locked(&self, parsed: &Parsed) -> Result<Header> {
        tracing::warn!(
            maildrop = %self.shared.name,
            file = %self.index_path().display(),
            valid_len = parsed.valid_len,
            "index has a torn tail from an interrupted write; cutting back to the last good record"
        );
        let header = Header {
            next_uid: parsed.next_uid_past_tail(),
            ..parsed.header
        };
        replace_file(&self.index_path(), &index::encode(&header, &parsed.records))?;
        // The mark of the appender that left the tail died with it; every
        // record now in the index is durable.
        self.clear_dead_mark();
        Ok(header)
    }

    /// Fsyncs the index as it is.
    fn sync_index(&self) -> Result<()> {
        #[cfg(test)]
        tests::INDEX_SYNCS.with(|n| n.set(n.get() + 1));
        let path = self.index_path();
        File::open(&path).and_then(|f| f.sync_data()).at(&path)
    }

    /// Clears an append's mark known to be dead: the caller holds the
    /// append lock (shared or exclusive), so no append runs.
    fn clear_dead_mark(&self) {
        let path = self.shared.dir.join(SESSION_LOCK);
        if let Err(e) = crate::unsynced::clear(&path) {
            tracing::warn!(file = %path.display(), error = %e, "could not clear a dead append's mark");
        }
    }

    /// The part of `index` (just read) that a login may take: all of it,
    /// unless an append, in any process, has written records to it and not
    /// yet fsynced them ([`crate::unsynced`]). `mark` is the session lock's
    /// file, read now: after the index, so that a mark set before records
    /// the read saw is seen too.
    fn durable_part<'b>(&self, index: &'b [u8], mark: &File) -> Result<&'b [u8]> {
        // The path only for an error: no allocation on a login's way.
        let read = crate::unsynced::read(mark).map_err(|source| Error::Io {
            path: self.shared.dir.join(SESSION_LOCK),
            source,
        });
        let Some(from) = read? else {
            return Ok(index);
        };
        match FileLock::try_shared(&self.shared.dir.join(APPEND_LOCK))? {
            // An append holds the lock (or an expunge or compaction, which
            // set no mark: the cut then hides durable records from this
            // session only).
            None => Ok(cut_at(index, from)),
            // The appender died between its write and its fsync (killed by
            // the MTA's time limit, say): its records may still be only in
            // the page cache. They become durable here, or are not taken.
            Some(_no_append_now) => match self.sync_index() {
                Ok(()) => {
                    self.clear_dead_mark();
                    Ok(index)
                }
                Err(e) => {
                    tracing::warn!(maildrop = %self.shared.name, error = %e, "could not make a dead append's records durable; leaving them out");
                    Ok(cut_at(index, from))
                }
            },
        }
    }

    /// The index's bytes for one scan: read into memory when small (one
    /// `read` is cheaper than mapping, faulting in and unmapping a few pages,
    /// which every login would pay), mapped when large so that opening a big
    /// maildrop copies nothing.
    fn index_bytes(&self) -> Result<IndexBytes> {
        let path = self.index_path();
        let mut f = match crate::noatime::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoMaildrop(self.shared.name.clone()))
            }
            Err(e) => return Err(e).at(&path),
        };
        let len = f.metadata().at(&path)?.len();
        if len > READ_INDEX_MAX {
            // SAFETY: pop3sd never truncates or rewrites an index in place:
            // it appends whole records or renames a new file over it. The map
            // is read-only and only bytes present at map time are read; a
            // partially appended record is rejected by its checksum.
            return unsafe { memmap2::Mmap::map(&f) }
                .at(&path)
                .map(IndexBytes::Mapped);
        }
        // Exactly the length seen above, in one read: an index is never
        // truncated (a rewrite renames a new file over it, and this handle
        // keeps the old one), so those bytes are there; records a concurrent
        // append adds after them are simply not in this snapshot. A
        // partially appended record within them is a torn tail.
        let mut buf = vec![0u8; len as usize];
        f.read_exact(&mut buf).at(&path)?;
        Ok(IndexBytes::Read(buf))
    }

    fn snapshot_from_index(&self, mark: &File) -> Result<(Snapshot, index::ScanSummary)> {
        let bytes = self.index_bytes()?;
        let durable = self.durable_part(bytes.as_ref(), mark)?;
        Snapshot::from_index(self.shared.dir.clone(), durable).map_err(|e| self.corrupt(e))
    }

    /// Builds a session's snapshot, repairing a torn tail left by a crash.
    /// `mark` is the session lock's file.
    fn open_snapshot(&self, mark: &File) -> Result<Snapshot> {
        let (snapshot, summary) = self.snapshot_from_index(mark)?;
        if !summary.torn_tail {
            return Ok(snapshot);
        }
        // An append that marks its records is cut off above, so this is a
        // crash's partial record, or an append that set no mark (an older
        // pop3sd) writing right now: under the append lock only the first
        // remains possible.
        let _l = FileLock::exclusive(&self.shared.dir.join(APPEND_LOCK))?;
        let parsed = self.read_index()?;
        if parsed.torn_tail {
            self.repair_locked(&parsed)?;
        }
        Ok(self.snapshot_from_index(mark)?.0)
    }

    /// Appends one message durably. Returns once its bytes and index record
    /// are fsynced: only then may a delivery be acknowledged.
    pub fn append(&self, msg: PreparedMessage) -> Result<Receipt> {
        let shared = &self.shared;
        let mut st = lock_group(&shared.group);
        let ticket = st.next_ticket;
        st.next_ticket += 1;
        st.queue.push((ticket, msg));
        loop {
            if let Some(result) = st.done.remove(&ticket) {
                return result;
            }
            if !st.leader {
                st.leader = true;
                let take = if shared.options.group_commit {
                    st.queue.len().min(shared.options.max_batch.max(1))
                } else {
                    1
                };
                let batch: Vec<(u64, PreparedMessage)> = st.queue.drain(..take).collect();
                drop(st);
                let msgs: Vec<&PreparedMessage> = batch.iter().map(|(_, m)| m).collect();
                // A panic here must not leave `leader` set and the batch's
                // waiters asleep for ever (and every later append to this
                // maildrop with them): it fails this batch like an error.
                let results = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    self.write_batch(&msgs)
                }))
                .unwrap_or_else(|_| {
                    tracing::error!(maildrop = %shared.name, "append panicked; its messages were not delivered");
                    msgs.iter()
                        .map(|_| {
                            Err(Error::Io {
                                path: shared.dir.clone(),
                                source: std::io::Error::other("append panicked"),
                            })
                        })
                        .collect()
                });
                st = lock_group(&shared.group);
                for ((t, _), r) in batch.into_iter().zip(results) {
                    st.done.insert(t, r);
                }
                st.leader = false;
                shared.cv.notify_all();
                continue;
            }
            st = shared.cv.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Appends several messages under one lock with one fsync pair (imports,
    /// bulk loads). Each message gets its own result; all acknowledged
    /// messages are durable when this returns.
    pub fn append_batch(&self, msgs: Vec<PreparedMessage>) -> Vec<Result<Receipt>> {
        let mut results = Vec::with_capacity(msgs.len());
        let mut start = 0;
        while start < msgs.len() {
            // Bound one write to about 64 MiB of mail.
            let mut end = start;
            let mut bytes = 0u64;
            while end < msgs.len() && (end == start || bytes + msgs[end].wire_len() <= 64 << 20) {
                bytes += msgs[end].wire_len();
                end += 1;
            }
            let refs: Vec<&PreparedMessage> = msgs[start..end].iter().collect();
            results.extend(self.write_batch(&refs));
            start = end;
        }
        results
    }

    fn write_batch(&self, batch: &[&PreparedMessage]) -> Vec<Result<Receipt>> {
        #[cfg(test)]
        if tests::PANIC_IN_WRITE.with(|p| p.replace(false)) {
            panic!("a panic injected by a test");
        }
        match self.write_batch_locked(batch) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(maildrop = %self.shared.name, error = %e, "append failed");
                batch.iter().map(|_| Err(replicate(&e))).collect()
            }
        }
    }

    /// Reads what an append needs (header and next uid) cheaply: the header
    /// and the last record only, unless the tail looks torn.
    fn tail_for_append(&self) -> Result<Tail> {
        let path = self.index_path();
        let mut f = match crate::noatime::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::NoMaildrop(self.shared.name.clone()))
            }
            Err(e) => return Err(e).at(&path),
        };
        let len = f.metadata().at(&path)?.len();
        let mut hb = [0u8; index::HEADER_SIZE];
        if len >= index::HEADER_SIZE as u64 {
            f.read_exact(&mut hb).at(&path)?;
            let header = index::parse_header(&hb).map_err(|e| self.corrupt(e))?;
            let body = len - index::HEADER_SIZE as u64;
            if body % RECORD_SIZE as u64 == 0 {
                if body == 0 {
                    return Ok(Tail {
                        header,
                        next_uid: header.next_uid.max(1),
                        last_end: None,
                    });
                }
                let mut rb = [0u8; RECORD_SIZE];
                f.read_exact_at(&mut rb, len - RECORD_SIZE as u64)
                    .at(&path)?;
                if let Ok(last) = Record::decode(&rb) {
                    return Ok(Tail {
                        header,
                        next_uid: header.next_uid.max(last.uid + 1),
                        last_end: Some(last.end()),
                    });
                }
            }
        }
        let parsed = self.read_index()?;
        let last_end = parsed.records.last().map(Record::end);
        if parsed.torn_tail {
            let header = self.repair_locked(&parsed)?;
            return Ok(Tail {
                header,
                next_uid: header.next_uid,
                last_end,
            });
        }
        Ok(Tail {
            header: parsed.header,
            next_uid: parsed.next_uid(),
            last_end,
        })
    }

    /// The segment the next `len` bytes go to, created if needed. `last_end`
    /// is where the index's last message ends (segment, offset): a last
    /// segment shorter than that was cut outside pop3sd (a restore copied
    /// over it, a damaged file system), and appending at its end would put
    /// new mail in bytes the index's messages still claim, to be served under
    /// their UIDLs. New mail then goes to a new segment.
    fn segment_for(&self, len: u64, last_end: Option<(u32, u64)>) -> Result<(u32, File, u64)> {
        let dir = &self.shared.dir;
        let ids = segment::list(dir)?;
        let highest = ids.last().copied();
        let indexed = last_end.map(|(seg, _)| seg);
        // The highest segment on disk, unless it is below the one the
        // newest message is in (that one went missing): the next id must
        // then pass both, never reuse an id that records still name.
        match highest {
            Some(id) if indexed.is_none_or(|seg| id >= seg) => {
                let (f, end) = segment::open_for_append(dir, id)?;
                match last_end {
                    Some((seg, indexed_end)) if seg == id && end < indexed_end => {
                        tracing::error!(
                            file = %segment::path(dir, id).display(),
                            len = end,
                            indexed_end,
                            "segment is shorter than the messages the index places in it (cut outside pop3sd?); new mail goes to a new segment"
                        );
                    }
                    _ if end <= segment::HEADER_SIZE
                        || end + len <= self.shared.options.segment_max =>
                    {
                        return Ok((id, f, end));
                    }
                    _ => {}
                }
            }
            _ if indexed.is_some() => {
                tracing::error!(
                    dir = %dir.display(),
                    segment = indexed.unwrap_or_default(),
                    "the segment holding the newest message is missing (removed outside pop3sd?); new mail goes to a new segment"
                );
            }
            _ => {}
        }
        let next = highest
            .max(indexed)
            .map_or(Some(1), |id| id.checked_add(1))
            .ok_or_else(|| Error::Corrupt {
                path: dir.clone(),
                offset: 0,
                reason: "segment ids exhausted".into(),
            })?;
        Ok((next, segment::create(dir, next)?, segment::HEADER_SIZE))
    }

    /// Holds off every append (of any process) until dropped: for whole-
    /// maildrop operations such as deletion that must not race a delivery.
    pub fn lock_appends(&self) -> Result<FileLock> {
        FileLock::exclusive(&self.shared.dir.join(APPEND_LOCK))
    }

    fn write_batch_locked(&self, batch: &[&PreparedMessage]) -> Result<Vec<Result<Receipt>>> {
        let dir = &self.shared.dir;
        let _lock = FileLock::exclusive(&dir.join(APPEND_LOCK))?;
        let Tail {
            header,
            mut next_uid,
            last_end,
        } = self.tail_for_append()?;

        // Per-message checks; rejected messages get their own error.
        let mut results: Vec<Option<Result<Receipt>>> = batch.iter().map(|_| None).collect();
        let custom: Vec<usize> = (0..batch.len())
            .filter(|&i| batch[i].uidl.is_some())
            .collect();
        let mut taken: std::collections::HashSet<Uidl> = std::collections::HashSet::new();
        if !custom.is_empty() {
            taken = self.read_index()?.records.iter().map(|r| r.uidl).collect();
        }
        let native_prefix = format!("{:08x}.", header.uid_validity);
        for (i, m) in batch.iter().enumerate() {
            if let Err(reason) = m.check() {
                results[i] = Some(Err(Error::Import {
                    path: dir.clone(),
                    reason,
                }));
                continue;
            }
            if let Some(u) = m.uidl {
                let looks_native = u.as_bytes().starts_with(native_prefix.as_bytes());
                if looks_native || !taken.insert(u) {
                    results[i] = Some(Err(Error::Import {
                        path: dir.clone(),
                        reason: format!(
                            "UIDL {} is already used in this maildrop",
                            String::from_utf8_lossy(u.as_bytes())
                        ),
                    }));
                }
            }
        }
        let accepted: Vec<usize> = (0..batch.len()).filter(|&i| results[i].is_none()).collect();
        if accepted.is_empty() {
            return Ok(results.into_iter().flatten().collect());
        }

        // A damaged or hand-made header can hold a next uid near the top
        // of the range; refuse rather than wrap to uids already used.
        if next_uid.checked_add(accepted.len() as u64).is_none() {
            return Err(Error::Corrupt {
                path: self.index_path(),
                offset: 24,
                reason: format!("next uid {next_uid} leaves no room for new messages"),
            });
        }
        let total: u64 = accepted.iter().map(|&i| batch[i].wire_len()).sum();
        let (seg_id, seg, start) = self.segment_for(total, last_end)?;
        let seg_path = segment::path(dir, seg_id);
        let now = unix_now();
        let first_uid = next_uid;
        let mut pos = start;
        let mut records = Vec::with_capacity(accepted.len() * RECORD_SIZE);
        let mut receipts = Vec::with_capacity(accepted.len());
        for &i in &accepted {
            let m = batch[i];
            seg.write_all_at(&m.wire, pos).at(&seg_path)?;
            let uid = next_uid;
            next_uid += 1;
            let uidl = m
                .uidl
                .unwrap_or_else(|| Uidl::native(header.uid_validity, uid));
            let rec = Record {
                uid,
                segment: seg_id,
                offset: pos,
                wire_len: m.wire_len(),
                size: m.summary.size,
                body_offset: m.summary.body_offset,
                arrival: m.arrival.unwrap_or(now),
                deleted: false,
                uidl,
            };
            records.extend_from_slice(&rec.encode());
            receipts.push(Receipt {
                uid,
                uidl,
                size: m.summary.size,
                wire_len: m.wire_len(),
            });
            pos += m.wire_len();
        }
        seg.sync_data().at(&seg_path)?;

        let index_path = self.index_path();
        let mut index = OpenOptions::new()
            .append(true)
            .open(&index_path)
            .at(&index_path)?;
        // Under the append lock the length cannot change but by us. The mark
        // stays until the records are durable, or rolled back below.
        let from = index.metadata().at(&index_path)?.len();
        let mark_path = dir.join(SESSION_LOCK);
        let _unsynced = crate::unsynced::Mark::set(&mark_path, from).at(&mark_path)?;
        let appended = index.write_all(&records).and_then(|()| {
            #[cfg(test)]
            tests::BEFORE_INDEX_SYNC.with(|hook| hook.borrow_mut().take().map(|f| f()));
            index.sync_data()
        });
        if let Err(e) = appended {
            // Nothing of this batch may stay visible once we report failure.
            if let Ok(parsed) = self.read_index() {
                let keep: Vec<Record> = parsed
                    .records
                    .into_iter()
                    .filter(|r| r.uid < first_uid)
                    .collect();
                let h = Header {
                    next_uid: next_uid.max(parsed.header.next_uid),
                    ..parsed.header
                };
                if let Err(e2) = replace_file(&index_path, &index::encode(&h, &keep)) {
                    tracing::error!(error = %e2, "could not roll back a failed append");
                }
            }
            return Err(e).at(&index_path);
        }
        let mut receipts = receipts.into_iter();
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Ok(receipts.next().expect("one receipt per accepted message")))
            })
            .collect())
    }

    /// Locks the maildrop for a POP3 session and fixes its snapshot.
    /// A maildrop already in a session (on any core, or in another process)
    /// gives [`Error::InUse`]. One held only to finish up (see
    /// [`Session::wind_down`]) is waited for, up to [`WIND_DOWN_WAIT`]: a
    /// client that logs in again right after its QUIT was answered must not
    /// be refused because that session's compaction still runs.
    pub fn open_session(&self) -> Result<Session> {
        let lock = SessionLock::acquire_waiting(&self.shared, WIND_DOWN_WAIT)?;
        self.session_with(lock)
    }

    fn session_with(&self, lock: SessionLock) -> Result<Session> {
        let snapshot = self.open_snapshot(lock.file())?;
        Ok(Session {
            maildrop: self.clone(),
            snapshot,
            _lock: lock,
        })
    }

    /// [`Maildrop::open_session`] as far as it can go without waiting for
    /// the disk, for a caller that must not wait (a core's event loop):
    /// `None` where a step would wait, or would write (a torn tail to
    /// repair), or failed; the caller then runs `open_session` where
    /// waiting is allowed, which also reports the failure. A maildrop in
    /// a session on this process is `Some(Err(InUse))` at once, unless
    /// that session is winding down (then `None`: `open_session` waits).
    pub fn open_session_cached(&self) -> Option<Result<Session>> {
        let lock = match SessionLock::acquire_cached(&self.shared) {
            Ok(Claim::Got(l)) => l,
            Ok(Claim::NotNow) | Err(_) => return None,
            Ok(Claim::WindingDown) => {
                self.shared.login_came();
                return None;
            }
            Ok(Claim::Live) => return Some(Err(Error::InUse(self.shared.name.clone()))),
        };
        let file = crate::cached::open(&self.index_path())?;
        let len = file.metadata().ok()?.len();
        if len > READ_INDEX_MAX {
            // A large index is mapped, and its pages faulted in as read.
            return None;
        }
        let bytes = crate::cached::read(&file, usize::try_from(len).ok()?)?;
        // Read after the index, as in [`Maildrop::durable_part`]. A mark is
        // rare (a login during an append's fsync, or a dead appender's): the
        // blocking path tells which.
        if crate::unsynced::read_cached(lock.file())?.is_some() {
            return None;
        }
        let (snapshot, summary) = Snapshot::from_index(self.shared.dir.clone(), &bytes).ok()?;
        if summary.torn_tail {
            return None;
        }
        Some(Ok(Session {
            maildrop: self.clone(),
            snapshot,
            _lock: lock,
        }))
    }

    /// Whether a login has come for this maildrop while its session winds
    /// down: what makes a compaction stop early; for diagnostics and tests.
    pub fn login_waiting(&self) -> bool {
        self.shared.login_came.load(Ordering::Acquire)
    }

    /// Counts without taking any lock (a torn tail is simply not counted).
    pub fn stats(&self) -> Result<MaildropStats> {
        let parsed = self.read_index()?;
        let mut s = MaildropStats::default();
        for r in &parsed.records {
            if r.deleted {
                s.expunged += 1;
                s.expunged_wire_bytes = s.expunged_wire_bytes.saturating_add(r.wire_len);
            } else {
                s.messages += 1;
                // Saturating: records are checked one by one, so a damaged
                // index can still claim sizes whose sum overflows.
                s.bytes = s.bytes.saturating_add(r.size);
                s.live_wire_bytes = s.live_wire_bytes.saturating_add(r.wire_len);
            }
        }
        Ok(s)
    }

    /// Compacts if no session holds the maildrop; `Ok(None)` if one does
    /// (not waiting for one that winds down: that one may be compacting).
    pub fn compact(&self) -> Result<Option<CompactReport>> {
        match SessionLock::acquire(&self.shared).and_then(|lock| self.session_with(lock)) {
            Ok(s) => s.compact().map(Some),
            Err(Error::InUse(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Copies live messages out of segments holding expunged ones, writes an
    /// index without expunged records, then unlinks the old segments.
    /// Caller holds the session lock. Crash-safe at every step: until the
    /// rename, the old index and segments are untouched; after it, the old
    /// segments are unreferenced. A login waiting for the maildrop stops
    /// one with much to copy before the rename (its new segments removed,
    /// nothing else changed): reclaiming space can wait for the next QUIT,
    /// the user cannot.
    fn compact_locked(&self) -> Result<CompactReport> {
        let waiting = || self.shared.login_came.load(Ordering::Acquire);
        self.compact_locked_unless(&waiting, STOPPABLE_ABOVE)
    }

    /// [`Maildrop::compact_locked`], asking `stop` before each message it
    /// copies if it has more than `stoppable_above` bytes to copy. A
    /// compaction with less (a download-and-delete session's copies none)
    /// is over sooner than a stop would save, and is never stopped: a
    /// client that always logs in again at once must not keep it from ever
    /// finishing.
    fn compact_locked_unless(
        &self,
        stop: &dyn Fn() -> bool,
        stoppable_above: u64,
    ) -> Result<CompactReport> {
        let dir = &self.shared.dir;
        let _l = FileLock::exclusive(&dir.join(APPEND_LOCK))?;
        let parsed = self.read_index()?;
        let existing = segment::list(dir)?;
        let dirty: std::collections::HashSet<u32> = parsed
            .records
            .iter()
            .filter(|r| r.deleted)
            .map(|r| r.segment)
            .collect();
        let referenced: std::collections::HashSet<u32> =
            parsed.records.iter().map(|r| r.segment).collect();
        let orphans = existing.iter().any(|id| !referenced.contains(id));
        let mut report = CompactReport::default();
        if dirty.is_empty() && !orphans && !parsed.torn_tail {
            return Ok(report);
        }
        let mut next_id = existing
            .iter()
            .chain(referenced.iter())
            .max()
            .copied()
            .unwrap_or(0)
            .checked_add(1)
            .ok_or_else(|| Error::Corrupt {
                path: dir.clone(),
                offset: 0,
                reason: "segment ids exhausted".into(),
            })?;
        let to_copy: u64 = parsed
            .records
            .iter()
            .filter(|r| !r.deleted && dirty.contains(&r.segment))
            .map(|r| r.wire_len)
            .sum();
        let stoppable = to_copy > stoppable_above;
        let mut maps: HashMap<u32, memmap2::Mmap> = HashMap::new();
        let mut out: Option<(u32, File, u64)> = None;
        let mut new_records = Vec::with_capacity(parsed.records.len());
        let first_new_id = next_id;
        for r in &parsed.records {
            if r.deleted {
                report.records_dropped += 1;
                continue;
            }
            if !dirty.contains(&r.segment) {
                new_records.push(r.clone());
                continue;
            }
            if stoppable && stop() {
                drop(out);
                // Unreferenced by any index; one left behind by a crash
                // here (or a failed unlink) is an orphan the next
                // compaction removes. All are tried; the first failure is
                // reported.
                let mut failed = Ok(());
                for id in first_new_id..next_id {
                    let p = segment::path(dir, id);
                    match std::fs::remove_file(&p) {
                        Err(e) if e.kind() != std::io::ErrorKind::NotFound && failed.is_ok() => {
                            failed = Err(e).at(&p);
                        }
                        _ => {}
                    }
                }
                failed?;
                return Ok(CompactReport {
                    interrupted: true,
                    ..CompactReport::default()
                });
            }
            let src = match maps.entry(r.segment) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(segment::map(dir, r.segment)?)
                }
            };
            let (start, end) = (r.offset as usize, (r.offset + r.wire_len) as usize);
            if end > src.len() || !src[start..end].ends_with(TERMINATOR) {
                return Err(Error::Corrupt {
                    path: segment::path(dir, r.segment),
                    offset: r.offset,
                    reason: format!("message uid {} is not where the index says", r.uid),
                });
            }
            let need_new = match &out {
                None => true,
                Some((_, _, pos)) => {
                    *pos > segment::HEADER_SIZE
                        && *pos + r.wire_len > self.shared.options.segment_max
                }
            };
            if need_new {
                if let Some((id, f, _)) = out.take() {
                    f.sync_data().at(&segment::path(dir, id))?;
                }
                out = Some((
                    next_id,
                    segment::create(dir, next_id)?,
                    segment::HEADER_SIZE,
                ));
                next_id += 1;
            }
            let (id, f, pos) = out.as_mut().expect("segment opened above");
            f.write_all_at(&src[start..end], *pos)
                .at(&segment::path(dir, *id))?;
            let mut moved = r.clone();
            moved.segment = *id;
            moved.offset = *pos;
            *pos += r.wire_len;
            report.bytes_copied += r.wire_len;
            new_records.push(moved);
        }
        if let Some((id, f, _)) = out.take() {
            f.sync_data().at(&segment::path(dir, id))?;
        }
        // A torn tail is cut here too: past its uids as in a repair.
        let header = Header {
            next_uid: parsed.next_uid_past_tail(),
            ..parsed.header
        };
        replace_file(&self.index_path(), &index::encode(&header, &new_records))?;
        let still: std::collections::HashSet<u32> = new_records.iter().map(|r| r.segment).collect();
        for id in existing {
            if !still.contains(&id) {
                let p = segment::path(dir, id);
                std::fs::remove_file(&p).at(&p)?;
                report.segments_removed += 1;
            }
        }
        sync_dir(dir)?;
        Ok(report)
    }
}

/// The exclusive right to run a POP3 session on a maildrop.
struct SessionLock {
    shared: Arc<Shared>,
    file: Option<FileLock>,
}

/// What an attempt on the session lock found.
enum Claim {
    Got(SessionLock),
    /// Held by a session of this process.
    Live,
    /// Held by a session of this process that is only finishing up.
    WindingDown,
    /// The file lock was not given (another process holds it, or its file
    /// cannot be opened without waiting).
    NotNow,
}

impl SessionLock {
    /// The lock file, open while the lock is held: it also carries an
    /// append's mark ([`crate::unsynced`]).
    fn file(&self) -> &File {
        self.file
            .as_ref()
            .expect("the file lock is taken only when the session lock is dropped")
            .file()
    }

    /// Takes the in-process state, then the file lock `take` gives for the
    /// lock file's path (the state given back when it gives none). The
    /// holder's kind is the value the failed exchange saw, not a second
    /// look that could find it already gone.
    fn acquire_with(
        shared: &Arc<Shared>,
        take: impl FnOnce(&Path) -> Result<Option<FileLock>>,
    ) -> Result<Claim> {
        match shared.session_state.compare_exchange(
            LOCK_FREE,
            LOCK_LIVE,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => {}
            Err(LOCK_WINDING_DOWN) => return Ok(Claim::WindingDown),
            Err(_) => return Ok(Claim::Live),
        }
        match take(&shared.dir.join(SESSION_LOCK)) {
            Ok(Some(file)) => Ok(Claim::Got(SessionLock {
                shared: shared.clone(),
                file: Some(file),
            })),
            other => {
                shared.session_state.store(LOCK_FREE, Ordering::Release);
                other.map(|_| Claim::NotNow)
            }
        }
    }

    /// [`SessionLock::acquire`] without waiting for the disk: `NotNow`
    /// where the lock is held by another process or its file cannot be
    /// opened without waiting (see [`crate::cached`]); the blocking path
    /// tells which.
    fn acquire_cached(shared: &Arc<Shared>) -> Result<Claim> {
        Self::acquire_with(shared, |path| match crate::cached::open(path) {
            Some(file) => FileLock::try_exclusive_file(file, path),
            None => Ok(None),
        })
    }

    fn acquire(shared: &Arc<Shared>) -> Result<Self> {
        match Self::acquire_with(shared, FileLock::try_exclusive)? {
            Claim::Got(lock) => Ok(lock),
            _ => Err(Error::InUse(shared.name.clone())),
        }
    }

    /// [`SessionLock::acquire`], waiting up to `wait` while the holder in
    /// this process is winding down. A live session, or a holder in another
    /// process, still gives [`Error::InUse`] at once.
    fn acquire_waiting(shared: &Arc<Shared>, wait: std::time::Duration) -> Result<Self> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            match Self::acquire_with(shared, FileLock::try_exclusive)? {
                Claim::Got(lock) => return Ok(lock),
                Claim::WindingDown => shared.login_came(),
                Claim::Live | Claim::NotNow => return Err(Error::InUse(shared.name.clone())),
            }
            let guard = shared
                .released
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // Checked under the mutex: a release after this point notifies
            // only once this thread waits, so it cannot be missed. Anything
            // but a holder still winding down is looked at afresh.
            if !shared.winding_down() {
                continue;
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(Error::InUse(shared.name.clone()));
            }
            drop(
                shared
                    .released_cv
                    .wait_timeout(guard, deadline - now)
                    .unwrap_or_else(std::sync::PoisonError::into_inner),
            );
        }
    }
}

impl Drop for SessionLock {
    fn drop(&mut self) {
        // Release the file lock before the in-process flag, so a thread that
        // sees the flag clear also finds the file lock free.
        self.file.take();
        self.shared.login_came.store(false, Ordering::Release);
        self.shared
            .session_state
            .store(LOCK_FREE, Ordering::Release);
        // Taking the mutex orders this release after a waiter's check.
        drop(
            self.shared
                .released
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        self.shared.released_cv.notify_all();
    }
}

/// A locked maildrop with its snapshot: what a logged-in POP3 session owns.
/// Dropping it without [`Session::expunge`] changes nothing (a dropped
/// connection deletes nothing).
pub struct Session {
    maildrop: Maildrop,
    snapshot: Snapshot,
    _lock: SessionLock,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("maildrop", &self.maildrop.shared.name)
            .field("messages", &self.snapshot.len())
            .finish()
    }
}

impl Session {
    /// The view fixed at login.
    pub fn snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    /// The maildrop this session holds.
    pub fn maildrop(&self) -> &Maildrop {
        &self.maildrop
    }

    /// Removes the given messages (0-based snapshot indices) in one atomic,
    /// durable step: a new index with their records marked deleted replaces
    /// the old one by rename. Before the rename nothing is lost, after it
    /// nothing comes back.
    pub fn expunge(&mut self, indices: &[usize]) -> Result<()> {
        if indices.is_empty() {
            return Ok(());
        }
        let mut uids: Vec<u64> = indices
            .iter()
            .map(|&i| {
                self.snapshot
                    .message(i)
                    .map(|m| m.uid())
                    .ok_or(Error::NoSuchMessage(i as u64))
            })
            .collect::<Result<_>>()?;
        uids.sort_unstable();
        uids.dedup();
        let md = &self.maildrop;
        let _l = FileLock::exclusive(&md.shared.dir.join(APPEND_LOCK))?;
        let parsed = md.read_index()?;
        // The rewrite drops a torn tail, if any: past its uids.
        let next_uid = parsed.next_uid_past_tail();
        let mut records = parsed.records;
        let mut found = 0usize;
        for r in records.iter_mut() {
            if uids.binary_search(&r.uid).is_ok() {
                r.deleted = true;
                found += 1;
            }
        }
        if found != uids.len() {
            let missing = uids
                .iter()
                .find(|u| !records.iter().any(|r| r.uid == **u))
                .copied()
                .unwrap_or(0);
            return Err(Error::NoSuchMessage(missing));
        }
        let header = Header {
            next_uid,
            ..parsed.header
        };
        replace_file(&md.index_path(), &index::encode(&header, &records))
    }

    /// True when enough space is held by expunged messages that compaction
    /// is worth its copying: a quarter of the stored bytes, or many records.
    pub fn compaction_worthwhile(&self) -> Result<bool> {
        let s = self.maildrop.stats()?;
        Ok(s.expunged > 0
            && (s.expunged_wire_bytes * 4 >= s.expunged_wire_bytes + s.live_wire_bytes
                || s.expunged >= 10_000))
    }

    /// Reclaims the space of expunged messages, still holding the session
    /// lock so no reader can be looking at what is removed; ends the session.
    /// A login that comes meanwhile waits, and a compaction with more than
    /// [`STOPPABLE_ABOVE`] to copy stops for it (see
    /// [`CompactReport::interrupted`]).
    pub fn compact(self) -> Result<CompactReport> {
        self.wind_down();
        // The lock is released when `self` drops, after the compaction.
        self.maildrop.compact_locked()
    }

    /// Says the session is over (its QUIT answered) though the caller still
    /// holds it to finish up: from now a login of this maildrop waits for
    /// it to be dropped instead of being refused `[IN-USE]`, and a long
    /// compaction stops early for that login.
    pub fn wind_down(&self) {
        let shared = &self.maildrop.shared;
        // Only the holder moves its state, and only once: a login that
        // came after a first call is not forgotten by a second one.
        if shared.session_state.load(Ordering::Acquire) == LOCK_LIVE {
            // Left over from an earlier holder's logins, if anything.
            shared.login_came.store(false, Ordering::Release);
            shared
                .session_state
                .store(LOCK_WINDING_DOWN, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::{Cell, RefCell};

    thread_local! {
        /// Makes this thread's next `write_batch` panic.
        pub(super) static PANIC_IN_WRITE: Cell<bool> = const { Cell::new(false) };
        /// Run by this thread's next append between writing its index
        /// records and fsyncing them.
        pub(super) static BEFORE_INDEX_SYNC: RefCell<Option<Box<dyn FnOnce()>>> =
            const { RefCell::new(None) };
        /// Fsyncs of the index on behalf of an appender that died.
        pub(super) static INDEX_SYNCS: Cell<u32> = const { Cell::new(0) };
    }

    /// A new, empty maildrop with the default options.
    fn empty_maildrop(d: &Path) -> Maildrop {
        let store = crate::Store::open(d.join("root"), StoreOptions::default()).unwrap();
        store
            .create_maildrop(&crate::Address::parse("a@x.org").unwrap())
            .unwrap()
    }

    /// What a login on another thread or process would take now.
    fn messages_a_login_sees(md: &Maildrop) -> usize {
        md.open_session().unwrap().snapshot().len()
    }

    #[test]
    fn a_login_takes_no_record_an_append_has_not_made_durable() {
        let d = tempfile::tempdir().unwrap();
        let md = empty_maildrop(d.path());
        for i in 0..2 {
            md.append(PreparedMessage::from_raw(&raw(i))).unwrap();
        }
        // The login runs inside the append, between the index write and its
        // fsync; it takes the append lock no more than one in another
        // process would (flock locks of separate opens conflict).
        let seen = std::rc::Rc::new(Cell::new(None));
        let (md2, seen2) = (md.clone(), seen.clone());
        BEFORE_INDEX_SYNC.with(|h| {
            *h.borrow_mut() = Some(Box::new(move || {
                let cached = md2
                    .open_session_cached()
                    .map(|s| s.unwrap().snapshot().len());
                seen2.set(Some((messages_a_login_sees(&md2), cached)));
            }))
        });
        md.append(PreparedMessage::from_raw(&raw(2))).unwrap();
        assert_eq!(
            seen.get(),
            Some((2, None)),
            "the unsynced record is not taken; the core's path leaves it to the pool's"
        );
        assert_eq!(messages_a_login_sees(&md), 3, "taken once durable");
        let lock_file = File::open(md.shared.dir.join(SESSION_LOCK)).unwrap();
        assert_eq!(crate::unsynced::read(&lock_file).unwrap(), None);
        let s = md
            .open_session_cached()
            .expect("no mark: served on the core");
        assert_eq!(s.unwrap().snapshot().len(), 3);
    }

    #[test]
    fn an_appender_that_died_between_write_and_fsync_has_its_records_made_durable() {
        let d = tempfile::tempdir().unwrap();
        let md = empty_maildrop(d.path());
        for i in 0..3 {
            md.append(PreparedMessage::from_raw(&raw(i))).unwrap();
        }
        let len = std::fs::metadata(md.index_path()).unwrap().len();
        let lock_path = md.shared.dir.join(SESSION_LOCK);
        // Its mark, left set: the process that set it is gone.
        std::mem::forget(crate::unsynced::Mark::set(&lock_path, len - RECORD_SIZE as u64).unwrap());
        // While another process holds the append lock, the mark counts.
        let held = FileLock::exclusive(&md.shared.dir.join(APPEND_LOCK)).unwrap();
        assert_eq!(messages_a_login_sees(&md), 2);
        drop(held);
        // With the lock free, the mark is a dead appender's: the login
        // fsyncs the index for it, takes the record and clears the mark.
        assert!(
            md.open_session_cached().is_none(),
            "a mark sends the core's login to the pool"
        );
        assert_eq!(INDEX_SYNCS.with(Cell::get), 0);
        assert_eq!(messages_a_login_sees(&md), 3);
        assert_eq!(INDEX_SYNCS.with(Cell::get), 1, "taken only once durable");
        let lock_file = File::open(&lock_path).unwrap();
        assert_eq!(crate::unsynced::read(&lock_file).unwrap(), None);
        let s = md
            .open_session_cached()
            .expect("mark cleared: served on the core");
        assert_eq!(s.unwrap().snapshot().len(), 3);
        // The index itself was never touched.
        assert_eq!(std::fs::metadata(md.index_path()).unwrap().len(), len);
    }

    #[test]
    fn a_panicking_append_fails_its_batch_and_the_next_append_works() {
        let d = tempfile::tempdir().unwrap();
        let md = empty_maildrop(d.path());
        PANIC_IN_WRITE.with(|p| p.set(true));
        assert!(md.append(PreparedMessage::from_raw(&raw(1))).is_err());
        // Were the group-commit leader flag left set, this would wait for
        // ever: run it on a thread and give it ten seconds.
        let (tx, rx) = std::sync::mpsc::channel();
        let md2 = md.clone();
        std::thread::spawn(move || {
            let _ = tx.send(
                md2.append(PreparedMessage::from_raw(&raw(2)))
                    .map(|r| r.uid),
            );
        });
        let uid = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the append after a panic hung")
            .unwrap();
        assert_eq!(uid, 1);
        assert_eq!(md.stats().unwrap().messages, 1);
    }

    fn raw(i: usize) -> Vec<u8> {
        format!("Subject: {i}\n\n{}\n", "y".repeat(1000)).into_bytes()
    }

    /// 40 messages of about 1 KiB in 8 KiB segments, the even ones
    /// expunged, still held by their session.
    fn half_expunged(d: &Path) -> (Maildrop, Session) {
        let options = StoreOptions {
            segment_max: 8 * 1024,
            ..StoreOptions::default()
        };
        let store = crate::Store::open(d.join("root"), options).unwrap();
        let md = store
            .create_maildrop(&crate::Address::parse("a@x.org").unwrap())
            .unwrap();
        let msgs = (0..40)
            .map(|i| PreparedMessage::from_raw(&raw(i)))
            .collect();
        assert!(md.append_batch(msgs).iter().all(|r| r.is_ok()));
        let mut session = md.open_session().unwrap();
        let even: Vec<usize> = (0..40).step_by(2).collect();
        session.expunge(&even).unwrap();
        (md, session)
    }

    #[test]
    fn a_compaction_stopped_midway_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let (md, session) = half_expunged(d.path());
        let index_before = std::fs::read(md.index_path()).unwrap();
        let segments_before = segment::list(md.dir()).unwrap();

        // Stop after 15 of the 20 live messages are copied into new
        // segments (8 KiB each), which must then go.
        let asked = Cell::new(0usize);
        let stop = || {
            asked.set(asked.get() + 1);
            asked.get() > 15
        };
        let report = session.maildrop.compact_locked_unless(&stop, 0).unwrap();
        assert!(report.interrupted);
        assert_eq!(asked.get(), 16, "asked before each copy");
        assert_eq!(std::fs::read(md.index_path()).unwrap(), index_before);
        assert_eq!(segment::list(md.dir()).unwrap(), segments_before);
        drop(session);

        let session = md.open_session().unwrap();
        let snap = session.snapshot();
        assert_eq!(snap.len(), 20);
        for (n, i) in (1..40).step_by(2).enumerate() {
            let got = wire::decode(snap.wire(n).unwrap()).unwrap();
            assert_eq!(got, wire::canonical_crlf(&raw(i)));
        }
        // Not stopped, the same compaction completes.
        let report = session.compact().unwrap();
        assert!(!report.interrupted);
        assert_eq!(report.records_dropped, 20);
        assert_eq!(md.stats().unwrap().expunged, 0);
    }

    #[test]
    fn a_compaction_with_little_to_copy_is_not_stopped() {
        let d = tempfile::tempdir().unwrap();
        let (md, session) = half_expunged(d.path());
        let asked = Cell::new(0usize);
        let stop = || {
            asked.set(asked.get() + 1);
            true
        };
        // About 21 KiB to copy: under the threshold, nothing asks.
        let report = session
            .maildrop
            .compact_locked_unless(&stop, 64 * 1024)
            .unwrap();
        assert_eq!(asked.get(), 0);
        assert!(!report.interrupted);
        assert_eq!(report.records_dropped, 20);
        assert_eq!(md.stats().unwrap().expunged, 0);
    }
}
