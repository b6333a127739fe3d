//! What one POP3 session sees: message numbers, sizes and UIDLs fixed at login.
//!
//! The snapshot is built from the index when the session lock is taken, and
//! never changes afterwards: mail delivered meanwhile is not in it, and the
//! message numbers it hands out stay valid until QUIT. Message bytes are
//! borrowed from read-only memory maps of the segments, mapped on first use so
//! that an idle logged-in session holds no mapping at all.

use std::cell::{OnceCell, RefCell};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::fetch::{self, Extent, Fetch, Fetched, HEAD_READ};
use crate::index::{self, IndexError, ScanSummary};
use crate::map_arena::SegmentMap;
use crate::record::{NativeUidl, Uidl};
use crate::segment;
use crate::wire::{top_len, TERMINATOR};

/// One message as the session sees it.
#[derive(Debug, Clone)]
pub struct MessageMeta {
    uid: u64,
    segment_ix: u32,
    offset: u64,
    wire_len: u64,
    size: u64,
    body_offset: u64,
    arrival: i64,
    /// Present only when the UIDL is not the native one (imported mail).
    custom_uidl: Option<Box<Uidl>>,
}

impl MessageMeta {
    /// The never-reused per-maildrop id; expunges name messages by it.
    pub fn uid(&self) -> u64 {
        self.uid
    }
    /// RFC 1939 size, as LIST and STAT report it.
    pub fn size(&self) -> u64 {
        self.size
    }
    /// Length of the wire form, terminator included: the bytes RETR sends.
    pub fn wire_len(&self) -> u64 {
        self.wire_len
    }
    /// Arrival time (Unix seconds), for EXPIRE.
    pub fn arrival(&self) -> i64 {
        self.arrival
    }
}

#[derive(Debug)]
struct SegmentSlot {
    id: u32,
    /// Shared with a [`Fetch`] reading pages in on another thread.
    map: OnceCell<Arc<SegmentMap>>,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// A session's fixed view of a maildrop.
#[derive(Debug)]
pub struct Snapshot {
    /// Unique in the process: a [`Fetched`] is installed only in the
    /// snapshot whose [`Fetch`] made it.
    id: u64,
    dir: PathBuf,
    uid_validity: u32,
    messages: Vec<MessageMeta>,
    segments: Vec<SegmentSlot>,
    total_size: u64,
    /// Messages a fetch could not read in, as (segment index, offset, why):
    /// reading them fails instead of faulting on the core.
    unreadable: RefCell<Vec<(usize, u64, String)>>,
}

impl Snapshot {
    /// Builds a snapshot straight from index bytes, in one pass.
    pub(crate) fn from_index(
        dir: PathBuf,
        index_bytes: &[u8],
    ) -> Result<(Self, ScanSummary), IndexError> {
        let header = index::parse_header(index_bytes)?;
        let uid_validity = header.uid_validity;
        let mut segments: Vec<SegmentSlot> = Vec::new();
        let mut messages = Vec::with_capacity(
            index_bytes.len().saturating_sub(index::HEADER_SIZE) / crate::record::RECORD_SIZE,
        );
        let mut total_size = 0u64;
        let native = NativeUidl::new(uid_validity);
        let summary = index::scan(index_bytes, |r| {
            if r.deleted() {
                return;
            }
            let seg = r.segment();
            let segment_ix = match segments.iter().rposition(|s| s.id == seg) {
                Some(i) => i,
                None => {
                    segments.push(SegmentSlot {
                        id: seg,
                        map: OnceCell::new(),
                    });
                    segments.len() - 1
                }
            };
            let uid = r.uid();
            let custom_uidl = if native.matches(r.uidl_bytes(), uid) {
                None
            } else {
                Uidl::new(r.uidl_bytes()).map(Box::new)
            };
            // Saturating: each record is checked alone, and a damaged index
            // could claim sizes whose sum overflows.
            total_size = total_size.saturating_add(r.size());
            messages.push(MessageMeta {
                uid,
                segment_ix: segment_ix as u32,
                offset: r.offset(),
                wire_len: r.wire_len(),
                size: r.size(),
                body_offset: r.body_offset(),
                arrival: r.arrival(),
                custom_uidl,
            });
        })?;
        Ok((
            Snapshot {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                dir,
                uid_validity,
                messages,
                segments,
                total_size,
                unreadable: RefCell::new(Vec::new()),
            },
            summary,
        ))
    }

    /// Number of messages in the snapshot (deleted-in-session ones included;
    /// the POP3 engine tracks its own DELE marks).
    pub fn len(&self) -> usize {
        self.messages.len()
    }

    /// True when the maildrop was empty at login.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    /// Sum of the RFC 1939 sizes of all messages.
    pub fn total_size(&self) -> u64 {
        self.total_size
    }

    /// Message `i` (0-based; POP3 message number minus one).
    pub fn message(&self, i: usize) -> Option<&MessageMeta> {
        self.messages.get(i)
    }

    /// All messages, in message-number order.
    pub fn messages(&self) -> &[MessageMeta] {
        &self.messages
    }

    /// The UIDL of message `i`.
    pub fn uidl(&self, i: usize) -> Option<Uidl> {
        let m = self.messages.get(i)?;
        Some(match &m.custom_uidl {
            Some(u) => **u,
            None => Uidl::native(self.uid_validity, m.uid),
        })
    }

    fn segment_map(&self, ix: usize) -> Result<&SegmentMap> {
        let slot = &self.segments[ix];
        if let Some(m) = slot.map.get() {
            return Ok(m.as_ref());
        }
        let m = segment::map_for_session(&self.dir, slot.id)?;
        Ok(slot.map.get_or_init(|| Arc::new(m)).as_ref())
    }

    /// What must be read in, where waiting for the disk is allowed, before
    /// `extent` of message `i` can be copied without waiting (see
    /// [`crate::fetch`]); `None` when it is all in memory already. Never
    /// waits itself: the segment is mapped here only if its path and
    /// header are cached. Also `None` where reading the message will fail
    /// anyway (no such message, a bad segment, a record past the segment's
    /// end), so that the read reports why.
    pub fn fetch_for(&self, i: usize, extent: Extent) -> Option<Fetch> {
        let m = self.messages.get(i)?;
        let seg_ix = m.segment_ix as usize;
        let slot = self.segments.get(seg_ix)?;
        let start = usize::try_from(m.offset).ok()?;
        let end = start.checked_add(usize::try_from(m.wire_len).ok()?)?;
        let ranges = match extent {
            Extent::Whole => [start..end, end..end],
            Extent::Head => {
                let head = usize::try_from(m.body_offset.saturating_add(HEAD_READ)).ok()?;
                let head_end = start.saturating_add(head).min(end);
                // Reading the message checks its terminator, at its end.
                [start..head_end, head_end.max(end.saturating_sub(3))..end]
            }
        };
        let fetch = |map| Fetch {
            snapshot: self.id,
            dir: self.dir.clone(),
            seg_ix,
            seg_id: slot.id,
            map,
            ranges: ranges.clone(),
        };
        let map = match slot.map.get() {
            Some(map) => map,
            None => match segment::map_for_session_cached(&self.dir, slot.id) {
                Some(Ok(map)) => slot.map.get_or_init(|| Arc::new(map)),
                Some(Err(_)) => return None,
                None => return Some(fetch(None)),
            },
        };
        if ranges.iter().all(|r| fetch::resident(map, r.clone())) {
            None
        } else {
            Some(fetch(Some(map.clone())))
        }
    }

    /// Takes the segment map a [`Fetch`] of this snapshot made, unless one
    /// is held already. A result from another snapshot's fetch (another
    /// maildrop's, or an earlier session's whose segment may since have
    /// been replaced) is ignored.
    pub fn install(&self, fetched: Fetched) {
        if fetched.snapshot != self.id {
            return;
        }
        if let Some((offset, why)) = fetched.unreadable {
            self.unreadable
                .borrow_mut()
                .push((fetched.seg_ix, offset, why));
        }
        let Some(map) = fetched.map else { return };
        if let Some(slot) = self.segments.get(fetched.seg_ix) {
            if slot.id == fetched.seg_id {
                let _ = slot.map.set(map);
            }
        }
    }

    /// The full wire form of message `i` (dot-stuffed, terminator included),
    /// borrowed from the segment's memory map: RETR sends exactly this.
    pub fn wire(&self, i: usize) -> Result<&[u8]> {
        let m = self.messages.get(i).ok_or(Error::NoSuchMessage(i as u64))?;
        let unreadable = self
            .unreadable
            .borrow()
            .iter()
            .find(|(ix, offset, _)| *ix == m.segment_ix as usize && *offset == m.offset)
            .map(|(_, _, why)| why.clone());
        if let Some(why) = unreadable {
            let path = segment::path(&self.dir, self.segments[m.segment_ix as usize].id);
            return Err(Error::Io {
                path,
                source: std::io::Error::other(format!(
                    "message uid {} cannot be read: {why}",
                    m.uid
                )),
            });
        }
        let map = self.segment_map(m.segment_ix as usize)?;
        let start = m.offset as usize;
        let end = start.checked_add(m.wire_len as usize);
        let corrupt = |reason: &str| Error::Corrupt {
            path: segment::path(&self.dir, self.segments[m.segment_ix as usize].id),
            offset: m.offset,
            reason: format!("message uid {}: {reason}", m.uid),
        };
        let bytes = match end {
            Some(end) if start as u64 >= segment::HEADER_SIZE && end <= map.len() => {
                &map[start..end]
            }
            _ => return Err(corrupt("record points past the end of the segment")),
        };
        if !bytes.ends_with(TERMINATOR) {
            return Err(corrupt("wire form does not end with the terminator"));
        }
        Ok(bytes)
    }

    /// What TOP sends for message `i` with `lines` body lines: the header,
    /// the empty line and at most `lines` lines of body, stuffing intact,
    /// without the terminator (the caller appends `.\r\n`).
    pub fn top(&self, i: usize, lines: u64) -> Result<&[u8]> {
        let wire = self.wire(i)?;
        let body_offset = self.messages[i].body_offset as usize;
        Ok(&wire[..top_len(wire, body_offset, lines)])
    }

    /// Number of segment files currently mapped (for tests and memory accounting).
    pub fn mapped_segments(&self) -> usize {
        self.segments
            .iter()
            .filter(|s| s.map.get().is_some())
            .count()
    }
}
