//! Maildir import keeps Dovecot's POP3 UIDLs so clients do not re-download.

use pop3sd_storage::maildir::{import_maildir, UidlSource};
use pop3sd_storage::{wire, Address, Error, Maildrop, Store, StoreOptions};

fn make_maildir(root: &std::path::Path) {
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::write(
        root.join("cur/1500000001.M1P1.host,S=20:2,S"),
        b"Subject: one\n\n.hidden dot\n",
    )
    .unwrap();
    std::fs::write(
        root.join("cur/1500000002.M2P2.host:2,"),
        b"Subject: two\n\nbody\n",
    )
    .unwrap();
    std::fs::write(
        root.join("new/1500000003.M3P3.host"),
        b"Subject: three\n\nbody",
    )
    .unwrap();
    std::fs::write(
        root.join("dovecot-uidlist"),
        "3 V1500000000 N4 G0123\n\
         1 :1500000001.M1P1.host,S=20\n\
         2 P00001234abcd :1500000002.M2P2.host\n\
         3 :1500000003.M3P3.host\n",
    )
    .unwrap();
}

/// A store under `d` and an empty maildrop for `user` in it.
fn empty_maildrop(d: &std::path::Path, user: &str) -> (Store, Maildrop) {
    let store = Store::open(d.join("root"), StoreOptions::default()).unwrap();
    let md = store
        .create_maildrop(&Address::parse(user).unwrap())
        .unwrap();
    (store, md)
}

fn uidls(store: &Store, a: &Address) -> Vec<String> {
    let md = store.maildrop(a).unwrap();
    let s = md.open_session().unwrap();
    (0..s.snapshot().len())
        .map(|i| String::from_utf8(s.snapshot().uidl(i).unwrap().as_bytes().to_vec()).unwrap())
        .collect()
}

#[test]
fn dovecot_uidls_are_kept_and_reimport_is_safe() {
    let d = tempfile::tempdir().unwrap();
    let maildir = d.path().join("Maildir");
    make_maildir(&maildir);
    let store = Store::open(d.path().join("root"), StoreOptions::default()).unwrap();
    let a = Address::parse("migrated@example.com").unwrap();
    let md = store.create_maildrop(&a).unwrap();
    let r = import_maildir(&md, &maildir, &UidlSource::default()).unwrap();
    assert_eq!((r.imported, r.kept_uidls), (3, 3));
    assert_eq!(
        uidls(&store, &a),
        ["0000000159682f00", "00001234abcd", "0000000359682f00"]
    );
    {
        let s = md.open_session().unwrap();
        let snap = s.snapshot();
        assert_eq!(
            wire::decode(snap.wire(0).unwrap()).unwrap(),
            b"Subject: one\r\n\r\n.hidden dot\r\n"
        );
        assert_eq!(
            snap.wire(0).unwrap(),
            b"Subject: one\r\n\r\n..hidden dot\r\n.\r\n"
        );
        assert_eq!(snap.message(2).unwrap().arrival(), 1_500_000_003);
    }
    // Running it again imports nothing twice.
    let again = import_maildir(&md, &maildir, &UidlSource::default()).unwrap();
    assert_eq!(again.imported, 0);
    assert_eq!(again.skipped.len(), 3);
    assert_eq!(md.stats().unwrap().messages, 3);
}

#[test]
fn map_file_and_native_sources() {
    let d = tempfile::tempdir().unwrap();
    let maildir = d.path().join("Maildir");
    make_maildir(&maildir);
    let map = d.path().join("uidl.map");
    std::fs::write(&map, "# file uidl\n1500000002.M2P2.host:2, legacy-2\n").unwrap();
    let store = Store::open(d.path().join("root"), StoreOptions::default()).unwrap();
    let a = Address::parse("m@example.com").unwrap();
    let md = store.create_maildrop(&a).unwrap();
    let r = import_maildir(&md, &maildir, &UidlSource::MapFile(map.clone())).unwrap();
    assert_eq!((r.imported, r.kept_uidls, r.new_uidls), (3, 1, 2));
    assert!(uidls(&store, &a).contains(&"legacy-2".to_string()));

    let b = Address::parse("n@example.com").unwrap();
    let md = store.create_maildrop(&b).unwrap();
    let r = import_maildir(&md, &maildir, &UidlSource::Native).unwrap();
    assert_eq!(r.new_uidls, 3);
    assert_eq!(
        uidls(&store, &b),
        [
            "1500000001.M1P1.host,S=20",
            "1500000002.M2P2.host",
            "1500000003.M3P3.host"
        ]
    );
    // Messages that got new UIDLs are recognised when the same import is
    // run again (as after an interruption), with either source.
    let again = import_maildir(&md, &maildir, &UidlSource::Native).unwrap();
    assert_eq!(again.imported, 0);
    let again = import_maildir(
        &store.maildrop(&a).unwrap(),
        &maildir,
        &UidlSource::MapFile(map),
    )
    .unwrap();
    assert_eq!(again.imported, 0);
    assert_eq!(store.maildrop(&a).unwrap().stats().unwrap().messages, 3);
    assert_eq!(store.maildrop(&b).unwrap().stats().unwrap().messages, 3);
}

#[test]
fn bad_inputs_are_clear_errors() {
    let d = tempfile::tempdir().unwrap();
    let (_store, md) = empty_maildrop(d.path(), "x@example.com");
    assert!(matches!(
        import_maildir(&md, d.path(), &UidlSource::default()),
        Err(Error::Import { .. })
    ));
    let maildir = d.path().join("Maildir");
    make_maildir(&maildir);
    std::fs::write(maildir.join("dovecot-uidlist"), "7 nonsense\n").unwrap();
    assert!(matches!(
        import_maildir(&md, &maildir, &UidlSource::default()),
        Err(Error::Import { .. })
    ));
    let bad_map = d.path().join("bad.map");
    std::fs::write(&bad_map, "only-one-field\n").unwrap();
    assert!(matches!(
        import_maildir(&md, &maildir, &UidlSource::MapFile(bad_map)),
        Err(Error::Import { .. })
    ));
    assert_eq!(md.stats().unwrap().messages, 0, "nothing imported on error");
}

/// A Maildir belongs to its user: a link in it must not carry another
/// tenant's mail (or any file the importing process can read) into the
/// maildrop being filled.
#[test]
fn links_in_a_maildir_are_not_followed() {
    use std::os::unix::fs::symlink;
    let d = tempfile::tempdir().unwrap();
    let (_store, md) = empty_maildrop(d.path(), "mallory@example.com");
    let secret = d.path().join("other-tenant-secret");
    std::fs::write(&secret, b"Subject: secret\n\nnot yours\n").unwrap();
    let other_dir = d.path().join("other-tenant-dir");
    std::fs::create_dir_all(&other_dir).unwrap();
    std::fs::write(other_dir.join("1600000000.M1P1.host"), b"Subject: x\n\ny\n").unwrap();

    // A message that is a link: skipped and reported, the rest imported.
    let maildir = d.path().join("Maildir");
    make_maildir(&maildir);
    symlink(&secret, maildir.join("cur/1500000009.M9P9.host:2,")).unwrap();
    let report = import_maildir(&md, &maildir, &UidlSource::default()).unwrap();
    assert_eq!(report.imported, 3);
    assert_eq!(report.skipped.len(), 1, "{:?}", report.skipped);
    assert!(
        report.skipped[0].1.contains("symbolic link"),
        "{:?}",
        report.skipped
    );
    let s = md.open_session().unwrap();
    for i in 0..s.snapshot().len() {
        let body = s.snapshot().wire(i).unwrap().to_vec();
        assert!(!String::from_utf8_lossy(&body).contains("not yours"));
    }
    drop(s);

    // `cur/` itself a link: the import refuses, naming it, and adds nothing.
    let linked = d.path().join("Linked");
    std::fs::create_dir_all(linked.join("new")).unwrap();
    symlink(&other_dir, linked.join("cur")).unwrap();
    let before = md.stats().unwrap().messages;
    match import_maildir(&md, &linked, &UidlSource::Native) {
        Err(Error::Import { path, reason }) => {
            assert!(path.ends_with("cur"), "{path:?}");
            assert!(reason.contains("symbolic link"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(md.stats().unwrap().messages, before);

    // The Maildir itself a link (a user pointing theirs at another's):
    // refused, naming it.
    let pointed = d.path().join("Pointed");
    symlink(&maildir, &pointed).unwrap();
    match import_maildir(&md, &pointed, &UidlSource::Native) {
        Err(Error::Import { path, reason }) => {
            assert_eq!(path, pointed);
            assert!(reason.contains("symbolic link"), "{reason}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(md.stats().unwrap().messages, before);

    // A uidlist that is a link is refused too.
    let uidlist = d.path().join("Uidlist");
    make_maildir(&uidlist);
    std::fs::remove_file(uidlist.join("dovecot-uidlist")).unwrap();
    symlink(&secret, uidlist.join("dovecot-uidlist")).unwrap();
    assert!(matches!(
        import_maildir(&md, &uidlist, &UidlSource::default()),
        Err(Error::Import { .. })
    ));
    assert_eq!(md.stats().unwrap().messages, before);
}
