//! Where sessions' segment maps live, so that ending a session does not
//! interrupt every core.
//!
//! Unmapping costs a thread-per-core server more than mapping: each
//! `munmap` takes the process's address-space lock for writing and, once
//! the map's pages were read, flushes the TLB of every other core running
//! one of the process's threads with an inter-processor interrupt. One per
//! session, that was a tenth of a session's CPU on two cores, and it grows
//! with the cores. So maps are placed in one reserved range of address
//! space (no memory, only addresses), one after another in the order they
//! are made. A map a session is done with is only noted; once [`BATCH`]
//! are noted, or the oldest has waited [`MAX_AGE`], they are all replaced
//! by the reservation again, in as few calls as they make runs of
//! neighbours: usually one, so the flush is paid once per batch. Where no
//! range can be reserved, or the range is full, a map is an ordinary one.
//!
//! A noted map keeps its file open until it is replaced, so a segment
//! deleted meanwhile frees its disk space at most [`MAX_AGE`] later; the
//! server calls [`unmap_released`] periodically for that.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

/// Address space reserved for maps: 1 TiB (x86-64 user space is 128 TiB).
/// Reserving it costs no memory; each map takes the pages it spans.
const RESERVE: usize = 1 << 40;
/// Maps noted before they are unmapped together.
pub const BATCH: usize = 32;
/// Maps this large start on a boundary of this size, as the kernel places
/// large file maps itself: the page cache's 2 MiB folios can then be mapped
/// whole, which RETR of large messages measurably needs.
const LARGE: usize = 2 << 20;
/// The longest a noted map waits to be unmapped (see the module's doc).
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// A read-only map of the first `len` bytes of a file.
#[derive(Debug)]
pub struct SegmentMap {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    /// In the arena: `span` bytes (whole pages) at `addr`, `len` of them
    /// the file's.
    Arena {
        addr: usize,
        len: usize,
        span: usize,
    },
    /// An ordinary map of its own.
    Own(memmap2::Mmap),
}

impl SegmentMap {
    /// Maps `len` bytes of `file` read-only; `len` must not exceed the
    /// file's length (the caller has just read it), and must be non-zero.
    ///
    /// # Safety
    /// The caller promises what `memmap2::Mmap::map` asks: nobody truncates
    /// or rewrites the mapped part of the file while the map lives (pop3sd
    /// only appends to a segment, or writes a new one and unlinks the old).
    pub unsafe fn map(file: &File, len: usize) -> io::Result<SegmentMap> {
        // SAFETY: the caller's promise, passed on.
        unsafe { Self::map_in(arena(), file, len) }
    }

    /// [`SegmentMap::map`] in `arena`, or as an ordinary map without one
    /// (or where it has no room).
    ///
    /// # Safety
    /// As for [`SegmentMap::map`].
    unsafe fn map_in(arena: Option<&Arena>, file: &File, len: usize) -> io::Result<SegmentMap> {
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty file"));
        }
        if let Some(arena) = arena {
            if let Some(addr) = arena.map(file, len) {
                let span = page_span(len);
                return Ok(SegmentMap {
                    inner: Inner::Arena { addr, len, span },
                });
            }
        }
        // SAFETY: the caller's promise, passed on.
        let m = unsafe { memmap2::MmapOptions::new().len(len).map(file)? };
        Ok(SegmentMap {
            inner: Inner::Own(m),
        })
    }

    /// Whether the map lies in the arena (for tests).
    pub fn in_arena(&self) -> bool {
        matches!(self.inner, Inner::Arena { .. })
    }
}

impl std::ops::Deref for SegmentMap {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.inner {
            // SAFETY: `addr` holds a read-only shared map of `len` bytes of
            // the file, made in `Arena::map` and left in place until this
            // value is dropped: only `drop` hands its range back. The file
            // is not truncated (the `map` contract), so no access faults.
            Inner::Arena { addr, len, .. } => unsafe {
                std::slice::from_raw_parts(*addr as *const u8, *len)
            },
            Inner::Own(m) => m,
        }
    }
}

impl Drop for SegmentMap {
    fn drop(&mut self) {
        if let (Inner::Arena { addr, span, .. }, Some(arena)) = (&self.inner, arena()) {
            arena.release(*addr, *span);
        }
    }
}

/// Unmaps the maps sessions are done with if the oldest has waited
/// `max_age`; returns how many were unmapped.
pub fn unmap_released(max_age: Duration) -> usize {
    match ARENA.get() {
        Some(Some(arena)) => arena.unmap_released(max_age),
        _ => 0,
    }
}

pub(crate) fn page_size() -> usize {
    static PAGE: OnceLock<usize> = OnceLock::new();
    // SAFETY: sysconf reads a constant of the system; no memory of ours.
    *PAGE.get_or_init(|| match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        n if n > 0 => n as usize,
        _ => 4096,
    })
}

/// `len` rounded up to whole pages.
fn page_span(len: usize) -> usize {
    let p = page_size();
    len.div_ceil(p) * p
}

static ARENA: OnceLock<Option<Arena>> = OnceLock::new();

fn arena() -> Option<&'static Arena> {
    ARENA.get_or_init(Arena::reserve).as_ref()
}

struct Arena {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Reserved ranges holding no map: start -> length. Neighbours are
    /// merged.
    free: BTreeMap<usize, usize>,
    /// Where the next map goes (next fit), so that maps made one after the
    /// other are neighbours.
    cursor: usize,
    /// Maps sessions are done with: (start, span).
    released: Vec<(usize, usize)>,
    /// When the oldest of `released` was noted.
    oldest: Option<Instant>,
    /// Reserved ranges lost to a failed replacement (never reused).
    lost: usize,
}

impl Arena {
    fn reserve() -> Option<Arena> {
        Arena::reserve_bytes(RESERVE)
    }

    /// Reserves `size` bytes (tests use small arenas to fill them).
    fn reserve_bytes(size: usize) -> Option<Arena> {
        // SAFETY: a fresh anonymous reservation at an address the kernel
        // picks: it overlaps nothing of ours, and PROT_NONE with
        // MAP_NORESERVE commits no memory.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            tracing::debug!(
                error = %io::Error::last_os_error(),
                "no address range for segment maps; each gets an ordinary map"
            );
            return None;
        }
        let start = p as usize;
        let mut state = State {
            cursor: start,
            ..State::default()
        };
        state.free.insert(start, size);
        Some(Arena {
            state: Mutex::new(state),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Maps `file` at a free place of the arena; None when it is full or
    /// the map fails (the caller then makes an ordinary map).
    fn map(&self, file: &File, len: usize) -> Option<usize> {
        let span = page_span(len);
        let align = if span >= LARGE { LARGE } else { page_size() };
        let addr = {
            let mut st = self.lock();
            match st.carve(span, align) {
                Some(a) => a,
                None => {
                    // Full: what sessions are done with may make room.
                    let runs = st.take_runs();
                    drop(st);
                    self.replace(runs);
                    self.lock().carve(span, align)?
                }
            }
        };
        // SAFETY: [addr, addr + span) is a range of the reservation that
        // this thread alone owns now (carved out under the lock, holding
        // no map): MAP_FIXED replaces only that reserved range, atomically.
        // The file is open and `len` bytes long at least (caller).
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                len,
                libc::PROT_READ,
                libc::MAP_SHARED | libc::MAP_FIXED,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED || p as usize != addr {
            let error = io::Error::last_os_error();
            // The range may or may not still be reserved: never reuse it.
            self.lose(span, &error);
            return None;
        }
        Some(addr)
    }

    /// Gives up a range whose state a failed `mmap` left unknown. Failures
    /// come from the kernel's limit on map entries (`vm.max_map_count`,
    /// which `pop3sd tune-check` checks); each loses its range for good, so
    /// this warns the first time and each time the loss doubles.
    fn lose(&self, span: usize, error: &io::Error) {
        let mut st = self.lock();
        let before = st.lost;
        st.lost += span;
        if before == 0 || st.lost.ilog2() > before.ilog2() {
            tracing::warn!(
                %error,
                lost_bytes = st.lost,
                "a segment map in the reserved range failed (raise vm.max_map_count?); that range is no longer used, and maps that do not fit become ordinary ones"
            );
        }
    }

    /// Notes a map a session is done with; unmaps the noted ones once there
    /// are [`BATCH`] of them or the oldest has waited [`MAX_AGE`].
    fn release(&self, addr: usize, span: usize) {
        let mut st = self.lock();
        st.released.push((addr, span));
        let now = Instant::now();
        let oldest = *st.oldest.get_or_insert(now);
        if st.released.len() < BATCH && now.duration_since(oldest) < MAX_AGE {
            return;
        }
        let runs = st.take_runs();
        drop(st);
        self.replace(runs);
    }

    fn unmap_released(&self, max_age: Duration) -> usize {
        let mut st = self.lock();
        match st.oldest {
            Some(t) if t.elapsed() >= max_age => {}
            _ => return 0,
        }
        let n = st.released.len();
        let runs = st.take_runs();
        drop(st);
        self.replace(runs);
        n
    }

    /// Puts the reservation back over runs of released maps (see
    /// [`State::take_runs`]), one call per run; then their ranges are free
    /// again.
    fn replace(&self, runs: Vec<(usize, usize)>) {
        let mut done = Vec::with_capacity(runs.len());
        for (a, s) in runs {
            // SAFETY: [a, a + s) is made only of maps this arena made whose
            // owners have dropped them (no reference into them is left), and
            // of free gaps of the arena's own reservation between them (no
            // map there at all); replacing it with the reservation
            // atomically unmaps those pages and keeps the range ours.
            let p = unsafe {
                libc::mmap(
                    a as *mut libc::c_void,
                    s,
                    libc::PROT_NONE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_FIXED,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED || p as usize != a {
                let error = io::Error::last_os_error();
                // The maps may still be there: leave the range alone for
                // good (read-only maps of our own files; nothing unsafe).
                self.lose(s, &error);
            } else {
                done.push((a, s));
            }
        }
        let mut st = self.lock();
        for (a, s) in done {
            st.give_back(a, s);
        }
    }
}

impl State {
    /// Takes `span` bytes of free range starting on a multiple of `align`
    /// (a power of two), next fit: from the cursor on (within the free
    /// range holding it, then the ranges after it), then from the lowest
    /// address.
    fn carve(&mut self, span: usize, align: usize) -> Option<usize> {
        let cursor = self.cursor;
        // The first aligned place at or after `from` in the range (s, l).
        let place = |(&s, &l): (&usize, &usize), from: usize| {
            let a = from.checked_add(align - 1)? & !(align - 1);
            (a.checked_add(span)? <= s + l).then_some((s, l, a))
        };
        let fits = |r: (&usize, &usize)| place(r, (*r.0).max(cursor));
        let wrapped = |r: (&usize, &usize)| place(r, *r.0);
        // The range holding the cursor starts before it.
        let holding = self
            .free
            .range(..cursor)
            .next_back()
            .filter(|(&s, &l)| s + l > cursor);
        let (s, l, a) = holding
            .and_then(fits)
            .or_else(|| self.free.range(cursor..).find_map(fits))
            .or_else(|| self.free.range(..cursor).find_map(wrapped))?;
        self.free.remove(&s);
        if a > s {
            self.free.insert(s, a - s);
        }
        if s + l > a + span {
            self.free.insert(a + span, s + l - (a + span));
        }
        self.cursor = a + span;
        Some(a)
    }

    /// Returns a range to the free ones, merged with its neighbours.
    fn give_back(&mut self, mut start: usize, mut len: usize) {
        if let Some((&ps, &pl)) = self.free.range(..start).next_back() {
            if ps + pl == start {
                self.free.remove(&ps);
                start = ps;
                len += pl;
            }
        }
        if let Some(nl) = self.free.remove(&(start + len)) {
            len += nl;
        }
        self.free.insert(start, len);
    }

    /// Takes the released maps as runs to unmap with one call each: maps
    /// side by side, and maps with only free range between them (an
    /// alignment gap, or maps released earlier), which is taken out of the
    /// free ranges until the run is replaced and given back.
    fn take_runs(&mut self) -> Vec<(usize, usize)> {
        self.oldest = None;
        let mut batch = std::mem::take(&mut self.released);
        batch.sort_unstable();
        let mut runs: Vec<(usize, usize)> = Vec::new();
        for (a, s) in batch {
            if let Some((ra, rs)) = runs.last_mut() {
                let end = *ra + *rs;
                if end == a {
                    *rs += s;
                    continue;
                }
                // Free ranges are merged, so a wholly free gap is one range.
                if end < a && self.free.get(&end) == Some(&(a - end)) {
                    self.free.remove(&end);
                    *rs += (a - end) + s;
                    continue;
                }
            }
            runs.push((a, s));
        }
        runs
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A temporary file holding `bytes` (kept while the first is), and
    /// that file opened for reading.
    pub(crate) fn file_of(bytes: &[u8]) -> (tempfile::NamedTempFile, File) {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(bytes).unwrap();
        f.flush().unwrap();
        let r = File::open(f.path()).unwrap();
        (f, r)
    }

    #[test]
    fn without_arena_room_a_map_is_an_ordinary_one_with_the_same_bytes() {
        let content = b"From: a\r\n\r\nbody\r\n.\r\n".to_vec();
        let (_keep, f) = file_of(&content);
        // SAFETY: the temporary file is neither truncated nor rewritten.
        let m = unsafe { SegmentMap::map_in(None, &f, content.len()) }.unwrap();
        assert!(!m.in_arena());
        assert_eq!(&m[..], &content[..]);
        drop(m);
        // An arena with no room at all falls back the same way.
        let page = page_size();
        let full = Arena::reserve_bytes(page).expect("reserve a page");
        let big = vec![1u8; 2 * page];
        let (_keep2, g) = file_of(&big);
        // SAFETY: as above.
        let m = unsafe { SegmentMap::map_in(Some(&full), &g, big.len()) }.unwrap();
        assert!(!m.in_arena());
        assert_eq!(&m[..], &big[..]);
    }

    #[test]
    fn a_failed_map_loses_its_range_and_the_next_goes_elsewhere() {
        let page = page_size();
        let arena = Arena::reserve_bytes(8 * page).expect("reserve 8 pages");
        let content = vec![3u8; page];
        let (keep, readable) = file_of(&content);
        // A descriptor without read access: a read-only shared map fails.
        let write_only = std::fs::OpenOptions::new()
            .write(true)
            .open(keep.path())
            .unwrap();
        assert_eq!(arena.map(&write_only, content.len()), None);
        assert_eq!(arena.lock().lost, page, "its range is given up");
        let a = arena.map(&readable, content.len()).unwrap();
        // SAFETY: `a` holds a live read-only map of the file's bytes.
        let bytes = unsafe { std::slice::from_raw_parts(a as *const u8, content.len()) };
        assert_eq!(bytes, &content[..]);
        assert_eq!(arena.lock().lost, page);
    }

    #[test]
    fn free_ranges_are_carved_next_fit_and_merged_when_given_back() {
        let mut st = State {
            cursor: 0x10000,
            ..State::default()
        };
        st.free.insert(0x10000, 0x10000);
        let a = st.carve(0x1000, 0x1000).unwrap();
        let b = st.carve(0x2000, 0x1000).unwrap();
        assert_eq!((a, b), (0x10000, 0x11000), "one after the other");
        st.give_back(a, 0x1000);
        // Next fit: the freed range before the cursor waits its turn.
        assert_eq!(st.carve(0x1000, 0x1000), Some(0x13000));
        st.give_back(b, 0x2000);
        st.give_back(0x13000, 0x1000);
        // Everything merged back into one range again.
        assert_eq!(st.free.len(), 1, "{:?}", st.free);
        assert_eq!(st.free.get(&0x10000), Some(&0x10000));
        // Too large for what is free: none.
        assert_eq!(st.carve(0x20000, 0x1000), None);
        // Wrapping: past the cursor nothing fits, before it something does.
        st.cursor = 0x1f000;
        assert_eq!(st.carve(0x8000, 0x1000), Some(0x10000));
        assert_eq!(st.carve(0x1000, 0x1000), Some(0x18000));
        // Aligned: the range before the boundary stays free.
        assert_eq!(st.carve(0x1000, 0x4000), Some(0x1c000));
        assert_eq!(st.free.get(&0x19000), Some(&0x3000));
        assert_eq!(st.free.get(&0x1d000), Some(&0x3000));
        // No aligned place large enough: none, and nothing taken.
        let before = st.free.clone();
        assert_eq!(st.carve(0x4000, 0x10000), None);
        assert_eq!(st.free, before);
    }

    #[test]
    fn released_maps_with_free_range_between_them_make_one_run() {
        let mut st = State::default();
        // Maps at 0x10000 (one page) and 0x20000 (two pages), free range
        // between them (an alignment gap) and after; a live map at 0x30000
        // and a released one after it.
        st.free.insert(0x11000, 0xf000);
        st.free.insert(0x22000, 0xe000);
        st.released = vec![(0x31000, 0x1000), (0x20000, 0x2000), (0x10000, 0x1000)];
        st.oldest = Some(Instant::now());
        let runs = st.take_runs();
        assert_eq!(runs, vec![(0x10000, 0x12000), (0x31000, 0x1000)]);
        // The gap is the run's until it is replaced; the range next to the
        // live map is not part of any run.
        assert!(!st.free.contains_key(&0x11000));
        assert_eq!(st.free.get(&0x22000), Some(&0xe000));
        assert!(st.released.is_empty() && st.oldest.is_none());
    }

    /// How a temporary file appears in /proc/self/maps.
    fn name_of(f: &tempfile::NamedTempFile) -> String {
        f.path().file_name().unwrap().to_string_lossy().into_owned()
    }

    /// The line of /proc/self/maps holding `addr`.
    fn maps_line(addr: usize) -> String {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        maps.lines()
            .find(|l| {
                let range = l.split_whitespace().next().unwrap();
                let (a, b) = range.split_once('-').unwrap();
                let (a, b) = (
                    usize::from_str_radix(a, 16).unwrap(),
                    usize::from_str_radix(b, 16).unwrap(),
                );
                a <= addr && addr < b
            })
            .unwrap_or_default()
            .to_string()
    }

    #[test]
    fn maps_sit_side_by_side_and_a_batch_is_unmapped_in_one_run() {
        // An arena of this test's own: the process-wide one is shared with
        // the other tests running at the same time.
        let arena = Arena::reserve().expect("1 TiB of address space to reserve");
        // Odd length: the map ends inside its last page.
        let content: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let (keep, f) = file_of(&content);
        let name = name_of(&keep);
        let span = page_span(content.len());
        let addrs: Vec<usize> = (0..BATCH)
            .map(|_| arena.map(&f, content.len()).unwrap())
            .collect();
        for (i, &a) in addrs.iter().enumerate() {
            // Made one after the other, they are neighbours.
            assert_eq!(a, addrs[0] + i * span);
            // SAFETY: `a` holds a live read-only map of `content.len()`
            // bytes of the file, which is not changed.
            let bytes = unsafe { std::slice::from_raw_parts(a as *const u8, content.len()) };
            assert_eq!(bytes, &content[..]);
            assert!(maps_line(a).contains(&name), "{}", maps_line(a));
        }
        for &a in &addrs[..BATCH - 1] {
            arena.release(a, span);
        }
        let runs = {
            let mut st = arena.lock();
            assert_eq!(
                st.released.len(),
                BATCH - 1,
                "only noted until a batch is full"
            );
            assert!(maps_line(addrs[0]).contains(&name));
            // What the last release does, step by step: the whole batch is
            // one run, replaced with one call.
            st.released.push((addrs[BATCH - 1], span));
            st.take_runs()
        };
        assert_eq!(runs, vec![(addrs[0], BATCH * span)]);
        arena.replace(runs);
        let st = arena.lock();
        assert!(st.released.is_empty());
        // All the reservation is one free range again, and the maps are
        // gone: the addresses hold the anonymous reservation, not the file.
        assert_eq!(st.free.len(), 1, "{:?}", st.free);
        for &a in &addrs {
            let line = maps_line(a);
            assert!(!line.contains(&name) && line.contains("---p"), "{line}");
        }
        assert_eq!(st.lost, 0);
    }

    #[test]
    fn a_full_arena_makes_room_from_noted_maps_and_then_refuses() {
        let page = page_size();
        let arena = Arena::reserve_bytes(16 * page).expect("reserve 16 pages");
        let content = vec![7u8; 3 * page + 1];
        let (_keep, f) = file_of(&content);
        let span = page_span(content.len());
        assert_eq!(span, 4 * page);
        let maps: Vec<usize> = (0..4)
            .map(|_| arena.map(&f, content.len()).unwrap())
            .collect();
        // Full, and nothing noted to make room with.
        assert_eq!(arena.map(&f, content.len()), None);
        // One noted map (far from a batch) is unmapped to make room, and
        // its range is used again.
        arena.release(maps[2], span);
        assert_eq!(arena.lock().released.len(), 1);
        let again = arena.map(&f, content.len()).unwrap();
        assert_eq!(again, maps[2]);
        // SAFETY: `again` holds a live read-only map of the file's bytes.
        let bytes = unsafe { std::slice::from_raw_parts(again as *const u8, content.len()) };
        assert_eq!(bytes, &content[..]);
        let st = arena.lock();
        assert!(st.released.is_empty() && st.free.is_empty());
        assert_eq!(st.lost, 0);
    }

    #[test]
    fn maps_made_and_dropped_on_many_threads_keep_their_bytes() {
        let arena =
            std::sync::Arc::new(Arena::reserve().expect("1 TiB of address space to reserve"));
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let arena = arena.clone();
                std::thread::spawn(move || {
                    // A size per thread, one over 2 MiB (aligned maps).
                    let len = [5_000, 70_000, (2 << 20) + 3, 300][t as usize];
                    let content: Vec<u8> = (0..len).map(|i| (i as u8) ^ t).collect();
                    let (_keep, f) = file_of(&content);
                    let span = page_span(len);
                    let mut live = std::collections::VecDeque::new();
                    for i in 0..150 {
                        let a = arena.map(&f, len).expect("room in 1 TiB");
                        live.push_back(a);
                        for &a in &live {
                            // SAFETY: every address in `live` holds a map
                            // of this thread's file, not yet released.
                            let b = unsafe { std::slice::from_raw_parts(a as *const u8, len) };
                            assert!(b == &content[..], "thread {t}, step {i}");
                        }
                        if live.len() > 3 {
                            arena.release(live.pop_front().unwrap(), span);
                        }
                        if i % 50 == 0 {
                            arena.unmap_released(Duration::ZERO);
                        }
                    }
                    for a in live {
                        arena.release(a, span);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        arena.unmap_released(Duration::ZERO);
        let st = arena.lock();
        assert_eq!(st.free.len(), 1, "all free and merged again: {:?}", st.free);
        assert_eq!(st.lost, 0);
    }

    #[test]
    fn a_noted_map_is_unmapped_once_it_is_old_enough() {
        let arena = Arena::reserve().expect("1 TiB of address space to reserve");
        let (keep, f) = file_of(b"some segment bytes");
        let name = name_of(&keep);
        let a = arena.map(&f, 18).unwrap();
        arena.release(a, page_span(18));
        assert_eq!(
            arena.unmap_released(Duration::from_secs(3600)),
            0,
            "not old yet"
        );
        assert!(maps_line(a).contains(&name));
        assert_eq!(arena.unmap_released(Duration::ZERO), 1);
        assert!(!maps_line(a).contains(&name));
        assert!(arena.lock().released.is_empty());
    }

    #[test]
    fn segment_maps_read_their_file_wherever_they_are() {
        let (_keep, f) = file_of(b"0123456789");
        // SAFETY: the temporary file is not changed while mapped.
        let m = unsafe { SegmentMap::map(&f, 10) }.unwrap();
        assert_eq!(&m[..], b"0123456789");
        // Only part of a file may be mapped, as a snapshot maps what its
        // index knew of.
        // SAFETY: as above.
        let part = unsafe { SegmentMap::map(&f, 4) }.unwrap();
        assert_eq!(&part[..], b"0123");
        drop(m);
        drop(part);
        unmap_released(Duration::ZERO);
    }

    #[test]
    fn an_empty_file_is_refused_not_mapped() {
        let (_keep, f) = file_of(b"");
        // SAFETY: nothing is mapped.
        let e = unsafe { SegmentMap::map(&f, 0) }.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }
}
