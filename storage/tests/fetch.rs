//! Reading a message into memory off the core (`Snapshot::fetch_for`,
//! `Fetch::run`, `Snapshot::install`), against real files whose pages are
//! dropped from the page cache.

use std::os::fd::AsRawFd;
use std::path::Path;

use pop3sd_storage::fetch::Extent;
use pop3sd_storage::{Address, Maildrop, PreparedMessage, Store, StoreOptions};

fn message(n: usize) -> Vec<u8> {
    let mut m = format!("Subject: {n}\r\n\r\n").into_bytes();
    m.resize(40 * 1024, b'a' + (n % 26) as u8);
    m.extend_from_slice(b"\r\n");
    m
}

/// Drops a file's pages from the page cache: written back first, so that
/// they are clean and can go (pages mapped by a process stay, and so do
/// pages still being read ahead, hence a few tries). True if the page at
/// `probe` went (tmpfs keeps them all).
fn evict(path: &Path, probe: u64) -> bool {
    (0..50).any(|_| {
        if evict_once(path, probe) {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
        false
    })
}

fn evict_once(path: &Path, probe: u64) -> bool {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: posix_fadvise takes a descriptor and a range; no memory.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
    !in_memory(path, probe)
}

/// Whether the page of `path` holding byte `at` is in the page cache.
fn in_memory(path: &Path, at: u64) -> bool {
    let f = std::fs::File::open(path).unwrap();
    // Asked with mincore through a map of our own: a read, even a
    // RWF_NOWAIT one, would start reading the page back in.
    // SAFETY: a read-only map of the test's own file, which nothing
    // truncates while it lives; its bytes are never read.
    let m = unsafe { memmap2::Mmap::map(&f) }.unwrap();
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    let mut status = [0u8; 1];
    // SAFETY: one page of our live map, page-aligned; one status byte.
    let rc = unsafe {
        libc::mincore(
            m.as_ptr().add((at / page * page) as usize) as *mut libc::c_void,
            1,
            status.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    status[0] & 1 == 1
}

/// A store in a temporary directory, with alice@example.com's maildrop.
fn alice_maildrop() -> (tempfile::TempDir, Store, Address, Maildrop) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root"), StoreOptions::default()).unwrap();
    let alice = Address::parse("alice@example.com").unwrap();
    let md = store.ensure_maildrop(&alice).unwrap();
    (dir, store, alice, md)
}

#[test]
fn a_message_not_in_memory_is_fetched_then_read_from_memory() {
    let (_dir, store, alice, md) = alice_maildrop();
    for n in 0..4 {
        md.append(PreparedMessage::from_raw(&message(n))).unwrap();
    }
    let seg = md.dir().join("seg-00000001");

    // Just written: the path and header are cached, so the segment is
    // mapped on the spot. (The message itself may still need a fetch: a
    // large folio written but never read is only partly up to date.)
    {
        let s = store.open_session(&alice).unwrap();
        if let Some(f) = s.snapshot().fetch_for(2, Extent::Whole) {
            s.snapshot().install(f.run());
        }
        assert!(s.snapshot().fetch_for(2, Extent::Whole).is_none());
        assert_eq!(s.snapshot().mapped_segments(), 1);
        // Out of range: nothing to fetch (the read reports it).
        assert!(s.snapshot().fetch_for(9, Extent::Whole).is_none());
    }

    if !evict(&seg, 0) {
        eprintln!("this file system keeps its pages; nothing more to test");
        return;
    }
    let s = store.open_session(&alice).unwrap();
    let snap = s.snapshot();
    let fetch = snap
        .fetch_for(2, Extent::Whole)
        .expect("an evicted message needs a fetch");
    // Not mapped on the core: the header was not cached either.
    assert_eq!(snap.mapped_segments(), 0);
    let fetched = std::thread::spawn(move || fetch.run()).join().unwrap();
    snap.install(fetched);
    assert_eq!(snap.mapped_segments(), 1);
    // Now in memory: no second fetch, and the bytes are the message's.
    assert!(snap.fetch_for(2, Extent::Whole).is_none());
    let wire = snap.wire(2).unwrap();
    assert!(wire.starts_with(b"Subject: 2\r\n\r\ncccc"));
    assert!(wire.ends_with(b"\r\n.\r\n"));

    // Evicted again while mapped: the fetch reuses the session's map.
    drop(s);
    // The maps of the sessions before are unmapped (they would keep the
    // pages they mapped in memory).
    pop3sd_storage::map_arena::unmap_released(std::time::Duration::ZERO);
    let s = store.open_session(&alice).unwrap();
    let snap = s.snapshot();
    assert!(snap.wire(0).is_ok());
    assert_eq!(snap.mapped_segments(), 1);
    // Message 3 starts past 120 KiB, beyond the pages reading message 0
    // mapped (unless read-ahead and large folios tied them together).
    if !evict(&seg, 130 * 1024) {
        eprintln!("message 3's pages stayed in memory; the rest is not tested");
        return;
    }
    let fetch = snap.fetch_for(3, Extent::Whole).expect("evicted pages");
    snap.install(fetch.run());
    assert!(snap.fetch_for(3, Extent::Whole).is_none());
    assert!(snap.wire(3).unwrap().starts_with(b"Subject: 3\r\n"));
}

#[test]
fn a_fetch_is_only_installed_in_the_snapshot_it_came_from() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root"), StoreOptions::default()).unwrap();
    let alice = Address::parse("alice@example.com").unwrap();
    let bob = Address::parse("bob@example.net").unwrap();
    for a in [&alice, &bob] {
        let md = store.ensure_maildrop(a).unwrap();
        md.append(PreparedMessage::from_raw(&message(0))).unwrap();
    }
    let seg = store
        .ensure_maildrop(&alice)
        .unwrap()
        .dir()
        .join("seg-00000001");
    if !evict(&seg, 0) {
        eprintln!("this file system keeps its pages; nothing to test");
        return;
    }
    let a = store.open_session(&alice).unwrap();
    let b = store.open_session(&bob).unwrap();
    let for_b = a.snapshot().fetch_for(0, Extent::Whole).expect("evicted");
    let for_later = a.snapshot().fetch_for(0, Extent::Whole).expect("evicted");
    // Same segment number, same message number, another tenant: ignored.
    b.snapshot().install(for_b.run());
    assert_eq!(b.snapshot().mapped_segments(), 0);
    assert!(b.snapshot().wire(0).unwrap().starts_with(b"Subject: 0"));
    // The same maildrop's next session: ignored too (its segment 1 could
    // be another file by then).
    drop(a);
    let a2 = store.open_session(&alice).unwrap();
    a2.snapshot().install(for_later.run());
    assert_eq!(a2.snapshot().mapped_segments(), 0);
    // Its own fetch is taken.
    if let Some(own) = a2.snapshot().fetch_for(0, Extent::Whole) {
        a2.snapshot().install(own.run());
    }
    assert_eq!(a2.snapshot().mapped_segments(), 1);
}

#[test]
fn a_segment_that_cannot_be_mapped_leaves_the_read_to_report_it() {
    let (_dir, store, alice, md) = alice_maildrop();
    md.append(PreparedMessage::from_raw(&message(0))).unwrap();
    let seg = md.dir().join("seg-00000001");
    let s = store.open_session(&alice).unwrap();
    // The segment vanishes (an outside hand; pop3sd never does this while
    // a session holds the maildrop) before its first read.
    std::fs::remove_file(&seg).unwrap();
    // Not in the caches any more: a fetch, which maps nothing.
    let fetch = s
        .snapshot()
        .fetch_for(0, Extent::Whole)
        .expect("a segment whose path is gone is not readable without waiting");
    s.snapshot().install(fetch.run());
    assert_eq!(s.snapshot().mapped_segments(), 0);
    assert!(s.snapshot().wire(0).is_err());
}

#[test]
fn a_top_fetch_reads_the_head_and_the_last_page() {
    let (_dir, store, alice, md) = alice_maildrop();
    let mut big = b"Subject: big\r\n\r\nfirst line\r\n".to_vec();
    // Longer than the read-around of a page fault (half of read_ahead_kb
    // each side; 8 MiB on virtio disks), so that reading the head in does
    // not bring the end along.
    big.resize(24 << 20, b'b');
    big.extend_from_slice(b"\r\nlast line\r\n");
    md.append(PreparedMessage::from_raw(&big)).unwrap();
    let seg = md.dir().join("seg-00000001");
    let end = std::fs::metadata(&seg).unwrap().len();
    if !evict(&seg, 0) || !evict(&seg, end - 1) {
        eprintln!("this file system keeps its pages; nothing to test");
        return;
    }
    let s = store.open_session(&alice).unwrap();
    let fetch = s
        .snapshot()
        .fetch_for(0, Extent::Head)
        .expect("evicted pages");
    s.snapshot().install(fetch.run());
    // TOP reads the head, and checks the terminator at the very end: both
    // are in memory now, so the copy on the core does not wait.
    assert!(in_memory(&seg, 32));
    assert!(in_memory(&seg, end - 1));
    assert!(s.snapshot().fetch_for(0, Extent::Head).is_none());
    assert_eq!(
        s.snapshot().top(0, 1).unwrap(),
        b"Subject: big\r\n\r\nfirst line\r\n"
    );
}
