//! Reading a message into memory before a core sends it.
//!
//! RETR and TOP copy a message out of its segment's map on the
//! connection's core. If the segment's path, its header or the message's
//! pages are not in the kernel's caches, that copy waits for the disk: a
//! page fault per stretch of the file, during which every other connection
//! of the core waits too. [`crate::Snapshot::fetch_for`] tells, without
//! waiting, whether a message's bytes are all in memory (the segment
//! mapped as in [`crate::cached`], then `mincore` over the message's
//! pages); if not, it returns a [`Fetch`] to run where waiting is allowed
//! (the blocking pool), which maps the segment and reads the message's
//! pages in (`MADV_POPULATE_READ`). The result goes back to the snapshot
//! with [`crate::Snapshot::install`], and the copy on the core then finds
//! everything in memory.

use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;

use crate::map_arena::{page_size, SegmentMap};
use crate::segment;

/// What part of a message a command reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extent {
    /// All of it (RETR).
    Whole,
    /// The header and the start of the body (TOP): [`HEAD_READ`] bytes
    /// past the empty line at most, and the message's last bytes (reading
    /// a message checks its terminator). A TOP that asks for more lines
    /// reads the rest as it copies.
    Head,
}

/// How much of the body a TOP is read ahead for.
pub const HEAD_READ: u64 = 64 * 1024;

/// Work that brings a message's bytes into memory; run it where waiting
/// for the disk is allowed, then hand the result to the snapshot it came
/// from.
#[derive(Debug)]
pub struct Fetch {
    /// The snapshot that asked (see [`crate::Snapshot::install`]).
    pub(crate) snapshot: u64,
    pub(crate) dir: PathBuf,
    pub(crate) seg_ix: usize,
    pub(crate) seg_id: u32,
    /// The segment's map, if the snapshot already holds one.
    pub(crate) map: Option<Arc<SegmentMap>>,
    /// The bytes of the segment to read in: the part of the message read,
    /// and its last bytes (empty when the first range holds them).
    pub(crate) ranges: [Range<usize>; 2],
}

/// What a [`Fetch`] made: the segment's map, unless mapping it failed
/// (reading the message then reports why), and whether the message's pages
/// could be read at all.
#[derive(Debug)]
pub struct Fetched {
    pub(crate) snapshot: u64,
    pub(crate) seg_ix: usize,
    pub(crate) seg_id: u32,
    pub(crate) map: Option<Arc<SegmentMap>>,
    /// The message (its offset in the segment) could not be read in, and
    /// why: copying it on the core would raise `SIGBUS` there, killing the
    /// process, so the snapshot refuses to read it instead.
    pub(crate) unreadable: Option<(u64, String)>,
}

impl Fetch {
    /// Maps the segment if needed and reads the message's pages in. May
    /// wait for the disk.
    pub fn run(self) -> Fetched {
        let map = match self.map {
            Some(map) => Some(map),
            None => match segment::map_for_session(&self.dir, self.seg_id) {
                Ok(map) => Some(Arc::new(map)),
                Err(e) => {
                    tracing::debug!(error = %e, "segment not mapped ahead of a read");
                    None
                }
            },
        };
        let mut unreadable = None;
        if let Some(map) = &map {
            let offset = self.ranges[0].start as u64;
            for r in self.ranges {
                if let Err(e) = populate(map, r) {
                    tracing::error!(
                        file = %segment::path(&self.dir, self.seg_id).display(),
                        offset,
                        error = %e,
                        "message cannot be read from the disk (an I/O error, or the file was cut short outside pop3sd)"
                    );
                    unreadable = Some((offset, e.to_string()));
                    break;
                }
            }
        }
        Fetched {
            snapshot: self.snapshot,
            seg_ix: self.seg_ix,
            seg_id: self.seg_id,
            map,
            unreadable,
        }
    }
}

/// The whole pages of `map` that hold `range`, as (address, length);
/// `None` when the range is empty or not inside the map.
fn pages_of(map: &SegmentMap, range: &Range<usize>) -> Option<(usize, usize)> {
    if range.start >= range.end || range.end > map.len() {
        return None;
    }
    let page = page_size();
    // Maps start on a page boundary, so page boundaries of the file are
    // page boundaries of the map.
    let base = map.as_ptr() as usize;
    let start = base + range.start / page * page;
    let end = base + range.end.div_ceil(page) * page;
    Some((start, end - start))
}

/// True when every page of `range` in `map` is in the page cache, so
/// reading it will not wait for the disk. One `mincore` call per 2 MiB
/// (with 4 KiB pages), so that the status buffer a RETR clears stays
/// small.
///
/// The kernel answers truthfully only for files the process owns or may
/// write (otherwise it reports every page present, so that `mincore`
/// cannot reveal what others read): pop3sd's segments are its own, 0600.
pub(crate) fn resident(map: &SegmentMap, range: Range<usize>) -> bool {
    let Some((start, len)) = pages_of(map, &range) else {
        // Nothing to read, or a range the read itself will refuse.
        return true;
    };
    let page = page_size();
    let mut status = [0u8; 512];
    let mut at = 0;
    while at < len {
        let chunk = (len - at).min(status.len() * page);
        // SAFETY: [start + at, start + at + chunk) lies within `map`'s
        // pages (pages_of), which stay mapped while `map` is borrowed;
        // `start + at` is page-aligned; `status` has a byte for each of
        // the chunk's pages (chunk ≤ status.len() pages).
        let rc = unsafe {
            libc::mincore(
                (start + at) as *mut libc::c_void,
                chunk,
                status.as_mut_ptr(),
            )
        };
        if rc != 0 {
            // Cannot tell: treat as not in memory, so the read happens
            // where waiting is allowed.
            return false;
        }
        if status[..chunk.div_ceil(page)].iter().any(|s| s & 1 == 0) {
            return false;
        }
        at += chunk;
    }
    true
}

/// Reads `range`'s pages of `map` into the page cache and maps them
/// (`MADV_POPULATE_READ`, Linux 5.14; before it, `MADV_WILLNEED` starts
/// the reads). An error is a page that cannot be read: the disk failed to
/// read it, or it lies past the end of a file cut short since it was
/// mapped; touching it would raise `SIGBUS`. Other failures (an older
/// kernel, an interruption) only mean the copy on the core faults the
/// pages in itself.
fn populate(map: &SegmentMap, range: Range<usize>) -> std::io::Result<()> {
    let Some((start, len)) = pages_of(map, &range) else {
        return Ok(());
    };
    // SAFETY: madvise only advises the kernel about pages of `map`
    // (pages_of), which stay mapped while `map` is borrowed; it writes no
    // memory of ours, and a page it cannot read in is an error returned,
    // not a fault.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_POPULATE_READ) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        // EFAULT: "a SIGBUS would have been generated on actual access".
        if matches!(
            e.raw_os_error(),
            Some(libc::EFAULT | libc::EHWPOISON | libc::EIO)
        ) {
            return Err(e);
        }
        // SAFETY: as above.
        unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_WILLNEED) };
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map_of(bytes: &[u8]) -> (tempfile::NamedTempFile, SegmentMap) {
        let (f, file) = crate::map_arena::tests::file_of(bytes);
        // SAFETY: the test's own file, not truncated while mapped.
        let m = unsafe { SegmentMap::map(&file, bytes.len()) }.unwrap();
        (f, m)
    }

    #[test]
    fn pages_cover_the_range_and_stay_inside_the_map() {
        let page = page_size();
        let (_f, m) = map_of(&vec![7u8; 3 * page + 10]);
        let base = m.as_ptr() as usize;
        assert_eq!(pages_of(&m, &(0..1)), Some((base, page)));
        assert_eq!(pages_of(&m, &(page - 1..page + 1)), Some((base, 2 * page)));
        assert_eq!(
            pages_of(&m, &(page..3 * page + 10)),
            Some((base + page, 3 * page))
        );
        assert_eq!(pages_of(&m, &(5..5)), None);
        assert_eq!(pages_of(&m, &(0..3 * page + 11)), None);
    }

    #[test]
    fn written_pages_are_resident_and_evicted_ones_are_not() {
        let page = page_size();
        let (f, m) = map_of(&vec![1u8; 64 * page]);
        // Just written: in the page cache.
        assert!(resident(&m, 0..64 * page));
        // Drop the file's clean pages from the page cache (written back
        // first, so that they are clean), and check again.
        let file = std::fs::File::open(f.path()).unwrap();
        file.sync_all().unwrap();
        use std::os::fd::AsRawFd;
        // SAFETY: posix_fadvise takes a descriptor and a range; no memory.
        let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        if resident(&m, 0..64 * page) {
            // Some file systems (tmpfs) keep their pages: nothing to test.
            return;
        }
        populate(&m, page..10 * page).unwrap();
        assert!(resident(&m, page..10 * page));
        assert_eq!(m[5 * page], 1);
    }
}
