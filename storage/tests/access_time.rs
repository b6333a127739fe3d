//! pop3sd's reads of its own files (logins, first reads of a segment,
//! deliveries) leave their access times alone (`O_NOATIME`), so that no
//! read dirties an inode on a connection's core.

use std::path::Path;

use pop3sd_storage::fetch::Extent;
use pop3sd_storage::{Address, PreparedMessage, Store, StoreOptions};

fn message(n: usize) -> Vec<u8> {
    format!("Subject: {n}\r\n\r\nbody {n}\r\n").into_bytes()
}

/// The access time of `path`, in nanoseconds.
fn atime(path: &Path) -> i128 {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).unwrap();
    i128::from(m.atime()) * 1_000_000_000 + i128::from(m.atime_nsec())
}

#[test]
fn logins_and_reads_leave_access_times_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path().join("root"), StoreOptions::default()).unwrap();
    let alice = Address::parse("alice@example.com").unwrap();
    let md = store.ensure_maildrop(&alice).unwrap();
    md.append(PreparedMessage::from_raw(&message(0))).unwrap();
    let index = md.dir().join("index");
    let seg = md.dir().join("seg-00000001");
    // Just written: modified after they were last read, so that under
    // `relatime` (the usual mount option) a read would move their atime.
    let before = (atime(&index), atime(&seg));
    // The login on the core (cached opens) and on the pool (blocking
    // opens), and the first read of the segment each way.
    {
        let s = store.open_session_cached(&alice).expect("cached").unwrap();
        assert!(s.snapshot().wire(0).is_ok());
    }
    pop3sd_storage::map_arena::unmap_released(std::time::Duration::ZERO);
    {
        let s = store.open_session(&alice).unwrap();
        if let Some(f) = s.snapshot().fetch_for(0, Extent::Whole) {
            s.snapshot().install(f.run());
        }
        assert!(s.snapshot().wire(0).is_ok());
    }
    // A delivery reads the index's tail too.
    md.append(PreparedMessage::from_raw(&message(1))).unwrap();
    let after = (atime(&index), atime(&seg));
    assert_eq!(before, after, "access times moved (index, segment)");
}
