//! A client that logs in again as soon as its QUIT is answered gets its
//! maildrop, even while the QUIT's compaction still runs: the login waits
//! for it instead of `[IN-USE]`. (Whether the compaction stops for it here
//! depends on timing; storage/tests/wind_down.rs tests the stop.)

mod common;

use common::Served;
use pop3sd_storage::{Address, PreparedMessage, Store};

#[test]
fn login_right_after_a_deleting_quit_is_not_refused() {
    let s = Served::start_with(1, 1024, |_| {});
    let (user, pw) = s.user(0, 0);
    // 40 MiB more, so that the compaction after deleting half of it takes
    // far longer than a new connection's handshake and login.
    let root = s.config.resolve(&s.config.storage_root);
    let store = Store::open(&root, Default::default()).unwrap();
    let md = store.maildrop(&Address::parse(&user).unwrap()).unwrap();
    let body = "x".repeat(1 << 20);
    let msgs = (0..40)
        .map(|i| PreparedMessage::from_raw(format!("Subject: {i}\n\n{body}\n").as_bytes()))
        .collect();
    assert!(md.append_batch(msgs).iter().all(|r| r.is_ok()));
    let before = md.stats().unwrap().messages;
    drop((md, store));

    let out = s.python(&format!(
        r#"
def login():
    s_, f = tls(); assert f.readline().startswith(b"+OK")
    assert cmd(s_, f, "USER {user}").startswith(b"+OK")
    r = cmd(s_, f, "PASS {pw}")
    assert r.startswith(b"+OK"), r
    return s_, f
for round in range(3):
    s_, f = login()
    n = int(cmd(s_, f, "STAT").split()[1])
    for i in range(1, n // 2 + 1):
        assert cmd(s_, f, "DELE %d" % i).startswith(b"+OK")
    assert cmd(s_, f, "QUIT").startswith(b"+OK")
    f.close(); s_.close()
    s_, f = login()
    left = int(cmd(s_, f, "STAT").split()[1])
    assert left == n - n // 2, (n, left)
    assert cmd(s_, f, "QUIT").startswith(b"+OK")
    f.close(); s_.close()
    print("round", round, n, left)
"#
    ));
    // 43 messages: 22 left after the first round, 11 after the second, 6
    // after the third.
    assert_eq!(before, 43, "{out}");
    assert!(out.contains("round 2 11 6"), "{out}");
}
