//! The operator commands, with good and bad input, against real files.

mod common;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use pop3sd::config::Config;
use pop3sd::demo;

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    cfg: Config,
}

fn setup(adjust: impl FnOnce(&mut Config)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let (mut cfg, _) = demo::prepare(&common::demo_options(dir.path().join("root"), 2, 2)).unwrap();
    adjust(&mut cfg);
    let config = dir.path().join("root/pop3sd.toml");
    std::fs::write(&config, cfg.to_toml()).unwrap();
    Setup { dir, config, cfg }
}

fn pop3sd(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(common::bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A command that refuses early (too large, unknown user) may exit
    // before reading all of its input: a broken pipe is its answer, not ours.
    match child.stdin.take().unwrap().write_all(stdin) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.unwrap(),
    }
    child.wait_with_output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn fails(o: &Output, code: i32, text: &str) {
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(code), "{err}");
    assert!(err.contains(text), "expected {text:?} in: {err}");
}

fn c(s: &Setup) -> &str {
    s.config.to_str().unwrap()
}

fn messages(cfg: &Config, user: &str) -> u64 {
    let store =
        pop3sd_storage::Store::open(cfg.resolve(&cfg.storage_root), Default::default()).unwrap();
    store
        .maildrop(&pop3sd_storage::Address::parse(user).unwrap())
        .and_then(|m| m.stats())
        .map_or(0, |s| s.messages)
}

/// A tenant that allows APOP keeps `{PLAIN}` secrets (APOP needs them, and
/// the configuration check refuses other schemes there): the commands write
/// that, so the server still reloads after them.
#[test]
fn users_of_an_apop_tenant_get_plain_secrets() {
    let s = setup(|cfg| cfg.tenants[0].apop = true);
    ok(&pop3sd(&["check-config", c(&s)], b""));
    let out = ok(&pop3sd(
        &["user", "add", "-c", c(&s), "dave@example.com"],
        b"dave-pw\n",
    ));
    assert!(out.contains("stored {PLAIN}"), "{out}");
    ok(&pop3sd(
        &["user", "passwd", "-c", c(&s), "dave@example.com"],
        b"new-pw\n",
    ));
    let passwd = std::fs::read_to_string(s.cfg.resolve(&s.cfg.tenants[0].passwd_file)).unwrap();
    assert!(
        passwd.lines().any(|l| l == "dave:{PLAIN}new-pw"),
        "{passwd}"
    );
    ok(&pop3sd(&["check-config", c(&s)], b""));
    fails(
        &pop3sd(&["user", "add", "-c", c(&s), "erin@example.com"], b"a:b\n"),
        64,
        "no ':'",
    );
    // Other tenants keep argon2id.
    ok(&pop3sd(
        &["user", "add", "-c", c(&s), "dave@example.org"],
        b"dave-pw\n",
    ));
    let passwd = std::fs::read_to_string(s.cfg.resolve(&s.cfg.tenants[1].passwd_file)).unwrap();
    assert!(passwd.contains("dave:{ARGON2ID}$argon2id$"), "{passwd}");
}

#[test]
fn users_are_added_changed_listed_and_removed() {
    let s = setup(|_| {});
    ok(&pop3sd(
        &["user", "add", "-c", c(&s), "dave@example.com"],
        b"dave-pw\n",
    ));
    let passwd = std::fs::read_to_string(s.cfg.resolve(&s.cfg.tenants[0].passwd_file)).unwrap();
    let line = passwd.lines().find(|l| l.starts_with("dave:")).unwrap();
    assert!(line.starts_with("dave:{ARGON2ID}$argon2id$"), "{line}");
    let list = ok(&pop3sd(&["user", "list", "-c", c(&s), "example.com"], b""));
    assert!(list.lines().any(|l| l == "dave@example.com"), "{list}");
    assert!(!list.contains("example.org"));
    fails(
        &pop3sd(&["user", "add", "-c", c(&s), "Dave@example.com"], b"x\n"),
        1,
        "already exists",
    );
    fails(
        &pop3sd(&["user", "add", "-c", c(&s), "eve@nowhere.example"], b"x\n"),
        68,
        "unknown tenant",
    );
    fails(
        &pop3sd(&["user", "add", "-c", c(&s), "../eve@example.com"], b"x\n"),
        64,
        "not a valid user@domain",
    );
    fails(
        &pop3sd(&["user", "add", "-c", c(&s), "eve@example.com"], b"\n"),
        64,
        "empty password",
    );

    ok(&pop3sd(
        &["user", "passwd", "-c", c(&s), "dave@example.com"],
        b"new-pw\n",
    ));
    let passwd2 = std::fs::read_to_string(s.cfg.resolve(&s.cfg.tenants[0].passwd_file)).unwrap();
    assert_ne!(passwd, passwd2);
    fails(
        &pop3sd(
            &["user", "passwd", "-c", c(&s), "nobody@example.com"],
            b"x\n",
        ),
        67,
        "no such user",
    );

    // The new password works against a server started from this config.
    let served = common::Served::start_from(&s.config, &s.dir);
    served.python(
        r#"
s_, f = tls(); f.readline()
cmd(s_, f, "USER dave@example.com")
assert cmd(s_, f, "PASS new-pw").startswith(b"+OK")
"#,
    );
    drop(served);

    ok(&pop3sd(
        &["user", "del", "-c", c(&s), "dave@example.com"],
        b"",
    ));
    assert!(!ok(&pop3sd(&["user", "list", "-c", c(&s)], b"")).contains("dave@"));
    fails(
        &pop3sd(&["user", "del", "-c", c(&s), "dave@example.com"], b""),
        67,
        "no such user",
    );
}

#[test]
fn a_malformed_passwd_file_is_not_rewritten() {
    let s = setup(|_| {});
    let path = s.cfg.resolve(&s.cfg.tenants[1].passwd_file);
    let mut text = std::fs::read_to_string(&path).unwrap();
    text.push_str("broken line without colon\n");
    std::fs::write(&path, &text).unwrap();
    fails(
        &pop3sd(&["user", "add", "-c", c(&s), "zed@example.org"], b"pw\n"),
        78,
        "line 3",
    );
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "left exactly as it was"
    );
}

#[test]
fn tenants_are_added_and_listed() {
    let s = setup(|_| {});
    let root = s.dir.path().join("root/tls");
    // The demo CA signs a certificate for a new domain.
    let sh = "openssl ecparam -name prime256v1 -genkey -noout -out new.key && \
              openssl req -new -key new.key -subj /CN=example.net -out new.csr && \
              printf 'subjectAltName=DNS:example.net,DNS:mail.example.net\\n' > ext && \
              openssl x509 -req -in new.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext -out new.pem && chmod 600 new.key";
    let o = Command::new("sh")
        .arg("-c")
        .arg(sh)
        .current_dir(&root)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (cert, key) = (root.join("new.pem"), root.join("new.key"));
    let args = |domain: &str, alias: &str| {
        vec![
            "tenant".to_string(),
            "add".into(),
            "-c".into(),
            c(&s).to_string(),
            domain.into(),
            "--certificate".into(),
            cert.display().to_string(),
            "--private-key".into(),
            key.display().to_string(),
            "--alias".into(),
            alias.into(),
        ]
    };
    let run = |a: Vec<String>| pop3sd(&a.iter().map(String::as_str).collect::<Vec<_>>(), b"");
    fails(
        &run(args("example.net", "other.example")),
        64,
        "does not cover other.example",
    );
    fails(
        &run(args("example.com", "mail.example.net")),
        1,
        "already exists",
    );
    // The whole configuration is checked before anything is written.
    fails(
        &run(args("example.net", "example.net")),
        78,
        "would not be valid",
    );
    let passwd = s.dir.path().join("root/passwd/example.net");
    assert!(!passwd.exists(), "nothing created for a refused tenant");
    let before = std::fs::read_to_string(&s.config).unwrap();
    assert!(
        !before.contains("example.net\""),
        "nothing added to the configuration"
    );
    // Run from the configuration's parent directory with a relative path,
    // as an operator may: the default passwd-file lies beside the
    // configuration, not at that path again below it.
    let mut relative = args("example.net", "mail.example.net");
    relative[3] = "root/pop3sd.toml".into();
    let o = Command::new(common::bin())
        .args(&relative)
        .current_dir(s.dir.path())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    ok(&o);
    // Made by root for a server that runs as another user, the new
    // passwd-file must be readable by that user's group.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::metadata(&passwd).unwrap();
    if meta.uid() == 0 {
        let root_owner = std::fs::metadata(s.cfg.resolve(&s.cfg.storage_root)).unwrap();
        let expected = if root_owner.uid() == 0 { 0o600 } else { 0o640 };
        assert_eq!(meta.permissions().mode() & 0o777, expected);
    }
    let list = ok(&pop3sd(&["tenant", "list", "-c", c(&s)], b""));
    assert!(
        list.contains("example.net users=0 aliases=mail.example.net"),
        "{list}"
    );
    ok(&pop3sd(&["check-config", c(&s)], b""));
    ok(&pop3sd(
        &["user", "add", "-c", c(&s), "first@mail.example.net"],
        b"pw\n",
    ));
    assert!(
        ok(&pop3sd(&["user", "list", "-c", c(&s), "example.net"], b""))
            .contains("first@example.net")
    );
}

#[test]
fn deliver_honours_users_sizes_and_quotas() {
    let s = setup(|cfg| {
        cfg.tenants[0].max_message_size = 2000;
        cfg.tenants[0].quota_messages = 3;
        cfg.tenants[1].quota_messages = 2;
        cfg.tenants[1].quota_exceeded = pop3sd::config::QuotaExceeded::Permanent;
    });
    let msg = b"Subject: local delivery\n\n.dotted\nhello\n";
    ok(&pop3sd(&["deliver", "-c", c(&s), "alice@example.com"], msg));
    assert_eq!(messages(&s.cfg, "alice@example.com"), 3);
    fails(
        &pop3sd(&["deliver", "-c", c(&s), "alice@example.com"], msg),
        75,
        "over quota",
    );
    fails(
        &pop3sd(&["deliver", "-c", c(&s), "bob@example.org"], msg),
        69,
        "over quota",
    );
    fails(
        &pop3sd(&["deliver", "-c", c(&s), "nobody@example.com"], msg),
        67,
        "no such user",
    );
    fails(
        &pop3sd(&["deliver", "-c", c(&s), "x@nowhere.example"], msg),
        68,
        "unknown tenant",
    );
    fails(
        &pop3sd(&["deliver", "-c", c(&s), "bob@example.com"], &[b'x'; 5000]),
        69,
        "larger than 2000",
    );
    assert_eq!(
        messages(&s.cfg, "bob@example.com"),
        2,
        "nothing stored on refusal"
    );
    // A store that cannot be opened now (here: a newer pop3sd's format)
    // must have the MTA retry, not bounce.
    let format = s.cfg.resolve(&s.cfg.storage_root).join("FORMAT");
    let good = std::fs::read(&format).unwrap();
    std::fs::write(&format, "pop3sd-store 9\n").unwrap();
    fails(
        &pop3sd(&["deliver", "-c", c(&s), "alice@example.com"], msg),
        75,
        "opening the store",
    );
    std::fs::write(&format, good).unwrap();
}

#[test]
fn import_keeps_uidls_and_stats_add_up() {
    let s = setup(|_| {});
    let md = s.dir.path().join("Maildir");
    for d in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(md.join(d)).unwrap();
    }
    std::fs::write(
        md.join("cur/1600000001.M1P1.old:2,S"),
        "Subject: old 1\n\nbody\n",
    )
    .unwrap();
    std::fs::write(
        md.join("new/1600000002.M2P2.old"),
        "Subject: old 2\n\nbody\n",
    )
    .unwrap();
    std::fs::write(
        md.join("dovecot-uidlist"),
        "3 V1600000000 N3\n1 :1600000001.M1P1.old\n2 P0badcafe :1600000002.M2P2.old\n",
    )
    .unwrap();
    let out = ok(&pop3sd(
        &[
            "import-maildir",
            "-c",
            c(&s),
            "bob@example.com",
            md.to_str().unwrap(),
        ],
        b"",
    ));
    assert!(
        out.contains("imported 2 message(s)") && out.contains("2 with their old UIDL"),
        "{out}"
    );
    fails(
        &pop3sd(
            &[
                "import-maildir",
                "-c",
                c(&s),
                "bob@example.com",
                "/nonexistent",
            ],
            b"",
        ),
        64,
        "not a Maildir",
    );
    fails(
        &pop3sd(
            &[
                "import-maildir",
                "-c",
                c(&s),
                "ghost@example.com",
                md.to_str().unwrap(),
            ],
            b"",
        ),
        67,
        "no such user",
    );

    let json = ok(&pop3sd(&["stats", "-c", c(&s), "--json"], b""));
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    let com = v
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["domain"] == "example.com")
        .unwrap();
    // Two demo users with two messages each, plus the two imported for bob.
    assert_eq!(com["users"], 2);
    assert_eq!(com["messages"], 6);
    // The imported UIDLs are served as they were.
    let store = pop3sd_storage::Store::open(s.cfg.resolve(&s.cfg.storage_root), Default::default())
        .unwrap();
    let bob = store
        .maildrop(&pop3sd_storage::Address::parse("bob@example.com").unwrap())
        .unwrap();
    let session = bob.open_session().unwrap();
    let snap = session.snapshot();
    let uidls: Vec<String> = (0..snap.len())
        .map(|i| String::from_utf8(snap.uidl(i).unwrap().as_bytes().to_vec()).unwrap())
        .collect();
    assert!(
        uidls.contains(&"0badcafe".to_string()) && uidls.contains(&"000000015f5e1000".to_string()),
        "{uidls:?}"
    );
    let table = ok(&pop3sd(&["stats", "-c", c(&s)], b""));
    assert!(table.contains("example.org"), "{table}");
    fails(
        &pop3sd(&["stats", "-c", c(&s), "nowhere.example"], b""),
        68,
        "unknown tenant",
    );
}

/// Run as root (as operators do), the commands leave the store and the
/// passwd file usable by the user the server runs as: new maildrops belong
/// to the storage root's owner, and a rewritten passwd file keeps its owner,
/// group and mode.
#[test]
fn commands_run_as_root_leave_files_the_server_can_use() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !pop3sd::privileges::is_root() {
        eprintln!("not root: nothing to check");
        return;
    }
    let s = setup(|_| {});
    let nobody = 65534;
    let root = s.cfg.resolve(&s.cfg.storage_root);
    let chown =
        |p: &std::path::Path| std::os::unix::fs::lchown(p, Some(nobody), Some(nobody)).unwrap();
    let walk = |p: &std::path::Path| -> Vec<std::path::PathBuf> {
        let mut out = vec![p.to_path_buf()];
        let mut i = 0;
        while i < out.len() {
            if out[i].is_dir() {
                for e in std::fs::read_dir(&out[i]).unwrap() {
                    out.push(e.unwrap().path());
                }
            }
            i += 1;
        }
        out
    };
    // Everything at and below `dir` belongs to the service user.
    let owned_by_nobody = |dir: &std::path::Path| {
        for p in walk(dir) {
            assert_eq!(
                std::fs::symlink_metadata(&p).unwrap().uid(),
                nobody,
                "{}",
                p.display()
            );
        }
    };
    for p in walk(&root) {
        chown(&p);
    }
    let passwd = s.cfg.resolve(&s.cfg.tenants[0].passwd_file);
    chown(&passwd);
    std::fs::set_permissions(&passwd, std::fs::Permissions::from_mode(0o640)).unwrap();
    ok(&pop3sd(
        &["user", "add", "-c", c(&s), "dave@example.com"],
        b"pw\n",
    ));
    let maildrop = root.join("example.com/dave");
    owned_by_nobody(&maildrop);
    let meta = std::fs::metadata(&passwd).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (nobody, nobody, 0o640)
    );
    // A delivery to a user without a maildrop yet, and a new tenant directory.
    ok(&pop3sd(
        &["deliver", "-c", c(&s), "dave@example.com"],
        b"Subject: hi\r\n\r\nx\r\n",
    ));
    owned_by_nobody(&maildrop);
    std::fs::remove_dir_all(root.join("example.org")).unwrap();
    ok(&pop3sd(
        &["deliver", "-c", c(&s), "bob@example.org"],
        b"Subject: hi\r\n\r\nx\r\n",
    ));
    owned_by_nobody(&root.join("example.org"));
    // A passwd-file that `user add` creates is one the server's user can
    // read too (before, root's alone: the next reload failed).
    let org_passwd = s.cfg.resolve(&s.cfg.tenants[1].passwd_file);
    std::fs::remove_file(&org_passwd).unwrap();
    ok(&pop3sd(
        &["user", "add", "-c", c(&s), "carol@example.org"],
        b"pw\n",
    ));
    let meta = std::fs::metadata(&org_passwd).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid(), meta.mode() & 0o777),
        (0, nobody, 0o640)
    );
    // A `user` this machine lacks: refused, and no file of root's alone is
    // left for the next run to keep as it found it.
    let mut cfg = s.cfg.clone();
    cfg.user = Some("pop3sd-no-such-user".into());
    std::fs::write(&s.config, cfg.to_toml()).unwrap();
    std::fs::remove_file(&org_passwd).unwrap();
    fails(
        &pop3sd(&["user", "add", "-c", c(&s), "erin@example.org"], b"pw\n"),
        78,
        "pop3sd-no-such-user",
    );
    assert!(!org_passwd.exists());
}
