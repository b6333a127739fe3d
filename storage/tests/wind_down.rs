//! A session that is only finishing up (its QUIT answered, its compaction
//! running) makes a login of the same maildrop wait, not fail: a client
//! that logs in again at once must not be told `[IN-USE]`.

use std::time::{Duration, Instant};

use pop3sd_storage::{
    wire, Address, Error, Maildrop, PreparedMessage, Session, Store, StoreOptions,
};

fn maildrop(count: usize, size: usize) -> (tempfile::TempDir, Maildrop) {
    let d = tempfile::tempdir().unwrap();
    let s = Store::open(d.path().join("root"), StoreOptions::default()).unwrap();
    let md = s
        .create_maildrop(&Address::parse("alice@example.com").unwrap())
        .unwrap();
    let msgs = (0..count)
        .map(|i| PreparedMessage::from_raw(&raw(i, size)))
        .collect();
    assert!(md.append_batch(msgs).iter().all(|r| r.is_ok()));
    (d, md)
}

fn raw(i: usize, size: usize) -> Vec<u8> {
    format!("Subject: {i}\n\n{}\n.\n", "z".repeat(size)).into_bytes()
}

/// 60 messages of 200 KiB, the first `deleted` expunged by a session that
/// is now winding down (its QUIT answered).
fn winding_down_after_deleting(deleted: usize) -> (tempfile::TempDir, Maildrop, Session) {
    let (d, md) = maildrop(60, 200 * 1024);
    let mut session = md.open_session().unwrap();
    session.expunge(&(0..deleted).collect::<Vec<_>>()).unwrap();
    session.wind_down();
    (d, md, session)
}

/// Polls `cond` for up to ten seconds.
fn eventually(cond: impl Fn() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

#[test]
fn a_login_waits_for_a_session_winding_down_and_not_for_a_live_one() {
    let (_d, md) = maildrop(3, 2000);
    let session = md.open_session().unwrap();
    // A live session refuses at once, on both paths.
    let t = Instant::now();
    assert!(matches!(md.open_session(), Err(Error::InUse(_))));
    assert!(t.elapsed() < Duration::from_secs(1));
    assert!(matches!(
        md.open_session_cached(),
        Some(Err(Error::InUse(_)))
    ));

    session.wind_down();
    // The cached path does not refuse: it leaves the wait to the pool.
    assert!(md.open_session_cached().is_none());
    let waiter = {
        let md = md.clone();
        std::thread::spawn(move || md.open_session().map(|s| s.snapshot().len()))
    };
    assert!(eventually(|| md.login_waiting()));
    assert!(!waiter.is_finished());
    drop(session);
    assert_eq!(waiter.join().unwrap().unwrap(), 3);
    assert!(!md.login_waiting());
}

#[test]
fn a_waiting_login_stops_the_compaction_of_the_session_before_it() {
    // 6 MiB of live mail to copy: over STOPPABLE_ABOVE.
    const { assert!(30 * 200 * 1024 > pop3sd_storage::STOPPABLE_ABOVE) };
    let (_d, md, session) = winding_down_after_deleting(30);
    assert!(session.compaction_worthwhile().unwrap());
    let waiter = {
        let md = md.clone();
        std::thread::spawn(move || {
            let s = md.open_session()?;
            let snap = s.snapshot();
            let bodies: Vec<Vec<u8>> = (0..snap.len())
                .map(|i| wire::decode(snap.wire(i).unwrap()).unwrap())
                .collect();
            Ok::<_, Error>(bodies)
        })
    };
    assert!(eventually(|| md.login_waiting()));
    let report = session.compact().unwrap();
    assert!(report.interrupted, "{report:?}");
    let bodies = waiter.join().unwrap().unwrap();
    let want: Vec<Vec<u8>> = (30..60)
        .map(|i| wire::canonical_crlf(&raw(i, 200 * 1024)))
        .collect();
    assert_eq!(bodies, want);
    // The space is still to reclaim, and the next compaction does it.
    let stats = md.stats().unwrap();
    assert_eq!((stats.messages, stats.expunged), (30, 30));
    assert_eq!(md.compact().unwrap().unwrap().records_dropped, 30);
}

#[test]
fn a_login_seen_on_the_core_stops_the_compaction_without_a_pool_thread() {
    // The core's open does not wait; it leaves that to the blocking pool,
    // whose threads may all be busy. The compaction stops all the same.
    let (_d, md, session) = winding_down_after_deleting(30);
    assert!(md.open_session_cached().is_none());
    assert!(md.login_waiting());
    // `compact` winds down again: that must not forget the login.
    let report = session.compact().unwrap();
    assert!(report.interrupted, "{report:?}");
    assert!(!md.login_waiting(), "cleared with the lock");
    assert_eq!(md.stats().unwrap().expunged, 30);
}

#[test]
fn a_download_and_delete_compaction_finishes_before_the_waiting_login() {
    // Nothing to copy: stopping would save nothing, and a client that
    // always logs in again at once would keep the space from ever coming
    // back.
    let (_d, md, session) = winding_down_after_deleting(60);
    let waiter = {
        let md = md.clone();
        std::thread::spawn(move || md.open_session().map(|s| s.snapshot().len()))
    };
    assert!(eventually(|| md.login_waiting()));
    let report = session.compact().unwrap();
    assert!(!report.interrupted, "{report:?}");
    assert_eq!(report.records_dropped, 60);
    assert_eq!(waiter.join().unwrap().unwrap(), 0);
    assert_eq!(md.stats().unwrap().expunged, 0);
}

#[test]
fn a_login_gives_up_on_a_holder_that_never_finishes() {
    let (_d, md) = maildrop(1, 2000);
    let session = md.open_session().unwrap();
    session.wind_down();
    // Bounded: the wait ends with [IN-USE] after WIND_DOWN_WAIT.
    let t = Instant::now();
    assert!(matches!(md.open_session(), Err(Error::InUse(_))));
    let waited = t.elapsed();
    assert!(
        waited >= pop3sd_storage::WIND_DOWN_WAIT,
        "gave up after {waited:?}"
    );
    drop(session);
    md.open_session().unwrap();
}
