//! Crash safety, proven by really killing a process.
//!
//! A child process (this test binary, running the ignored `crash_child`
//! test) appends, expunges and compacts in a loop and reports on stdout what
//! it is about to do and what the store acknowledged. The parent kills it
//! with SIGKILL at a random instant, many times, and after every kill checks:
//! - every acknowledged append is present exactly once, bytes intact, unless
//!   an acknowledged expunge removed it;
//! - every acknowledged expunge stays expunged;
//! - an expunge that was interrupted took effect for all of its messages or
//!   for none (atomicity);
//! - no message is torn or duplicated, acknowledged or not.
//!
//! SIGKILL leaves the page cache intact, so this proves ordering and
//! atomicity of the on-disk protocol. Power loss is covered by a second test,
//! `acknowledgements_wait_for_fsync`: the same child runs under strace, and
//! at every acknowledgement each byte written to the store and each
//! directory entry changed before it must already have been fsynced. A power
//! cut keeps at least what was fsynced, so an acknowledged state survives it.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pop3sd_storage::{wire, Address, PreparedMessage, Store, StoreOptions};

const KILLS: u64 = 200;

/// Starts every line of the child's report. The test harness prints
/// `test crash_child ... ` on the same line as the child's first report, so
/// the parent looks for this mark anywhere in a line rather than at its start.
const MARK: &str = "@crash ";

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic from the seed, good enough for timing.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn content(cid: u64) -> Vec<u8> {
    let mut m = format!("X-Cid: {cid}\nSubject: crash test\n\n").into_bytes();
    // Sizes from a few bytes to a few hundred KiB, with dot lines and bare LFs.
    let lines = (cid * 7919) % 3000;
    for l in 0..lines {
        if l % 17 == 0 {
            m.extend_from_slice(b".dotted\n");
        }
        m.extend_from_slice(
            format!("{cid} line {l} ................................\n").as_bytes(),
        );
    }
    m
}

fn cid_of(decoded: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(decoded.split(|&b| b == b'\r').next()?).ok()?;
    s.strip_prefix("X-Cid: ")?.parse().ok()
}

fn address() -> Address {
    Address::parse("crash@test.example").unwrap()
}

fn options() -> StoreOptions {
    StoreOptions {
        // Small segments so that rotation and compaction happen often.
        segment_max: 256 * 1024,
        ..StoreOptions::default()
    }
}

/// Reports a store error to the parent, which fails the test: an earlier
/// crash must never leave the maildrop unusable.
fn fail(what: &str, e: pop3sd_storage::Error) -> ! {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{MARK}E {what}: {e}");
    let _ = out.flush();
    std::process::exit(1);
}

/// The child's loop. Ignored in normal runs; the parent starts it.
#[test]
#[ignore = "entry point for the crash test's child process"]
fn crash_child() {
    let (Ok(root), Ok(first_cid), Ok(seed)) = (
        std::env::var("CRASH_ROOT"),
        std::env::var("CRASH_FIRST_CID"),
        std::env::var("CRASH_SEED"),
    ) else {
        return;
    };
    let mut cid: u64 = first_cid.parse().unwrap();
    let mut rng = Rng(seed.parse::<u64>().unwrap() | 1);
    let store = Store::open(&root, options()).unwrap_or_else(|e| fail("open", e));
    let md = store
        .ensure_maildrop(&address())
        .unwrap_or_else(|e| fail("maildrop", e));
    let out = std::io::stdout();
    let mut out = out.lock();
    let seconds = std::env::var("CRASH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < deadline {
        match rng.below(10) {
            0..=5 => {
                writeln!(out, "{MARK}a {cid}").unwrap();
                out.flush().unwrap();
                let r = md
                    .append(PreparedMessage::from_raw(&content(cid)))
                    .unwrap_or_else(|e| fail("append", e));
                writeln!(out, "{MARK}A {cid} {}", r.uid).unwrap();
                out.flush().unwrap();
                cid += 1;
            }
            6..=8 => {
                let mut session = md.open_session().unwrap_or_else(|e| fail("session", e));
                let n = session.snapshot().len();
                if n == 0 {
                    continue;
                }
                let picks: Vec<usize> = (0..n).filter(|_| rng.below(3) == 0).collect();
                if picks.is_empty() {
                    continue;
                }
                let uids: Vec<String> = picks
                    .iter()
                    .map(|&i| session.snapshot().message(i).unwrap().uid().to_string())
                    .collect();
                writeln!(out, "{MARK}x {}", uids.join(" ")).unwrap();
                out.flush().unwrap();
                if let Err(e) = session.expunge(&picks) {
                    fail("expunge", e);
                }
                writeln!(out, "{MARK}X {}", uids.join(" ")).unwrap();
                out.flush().unwrap();
            }
            _ => {
                if let Err(e) = md.compact() {
                    fail("compact", e);
                }
            }
        }
    }
}

#[derive(Default)]
struct Expected {
    /// Acknowledged appends: content id to uid.
    acked: HashMap<u64, u64>,
    /// Uids whose expunge was acknowledged.
    expunged: HashSet<u64>,
}

fn verify(root: &std::path::Path, exp: &Expected, in_doubt: &[Vec<u64>], cycle: u64) {
    let store = Store::open(root, options()).unwrap();
    let md = store.ensure_maildrop(&address()).unwrap();
    let session = md.open_session().unwrap();
    let snap = session.snapshot();
    let mut seen_cids = HashSet::new();
    let mut present_uids = HashSet::new();
    for i in 0..snap.len() {
        let meta = snap.message(i).unwrap();
        let decoded = wire::decode(snap.wire(i).unwrap()).unwrap();
        let cid = cid_of(&decoded).unwrap_or_else(|| panic!("cycle {cycle}: message {i} is torn"));
        assert_eq!(
            decoded,
            wire::canonical_crlf(&content(cid)),
            "cycle {cycle}: bytes of cid {cid}"
        );
        assert!(seen_cids.insert(cid), "cycle {cycle}: cid {cid} duplicated");
        present_uids.insert(meta.uid());
    }
    let doubtful: HashSet<u64> = in_doubt.iter().flatten().copied().collect();
    for (cid, uid) in &exp.acked {
        if doubtful.contains(uid) {
            continue; // checked for atomicity below
        }
        if exp.expunged.contains(uid) {
            assert!(
                !present_uids.contains(uid),
                "cycle {cycle}: expunged uid {uid} came back"
            );
        } else {
            assert!(
                present_uids.contains(uid),
                "cycle {cycle}: acknowledged cid {cid} (uid {uid}) lost"
            );
        }
    }
    for uids in in_doubt {
        let present = uids.iter().filter(|u| present_uids.contains(u)).count();
        assert!(
            present == 0 || present == uids.len(),
            "cycle {cycle}: interrupted expunge of {uids:?} half applied"
        );
    }
}

#[test]
fn survives_sigkill_at_random_instants() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ std::process::id() as u64);
    let mut exp = Expected::default();
    let mut appends_acked = 0u64;
    let mut expunges_acked = 0u64;
    let started = Instant::now();
    for cycle in 0..KILLS {
        let mut child = Command::new(&exe)
            .args([
                "--ignored",
                "--exact",
                "crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("CRASH_ROOT", &root)
            .env("CRASH_FIRST_CID", (cycle * 1_000_000).to_string())
            .env("CRASH_SEED", rng.next().to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            // Only whole lines count: a long "X uid uid ..." line goes to the
            // pipe in several writes, and a kill between them leaves a
            // truncated acknowledgement that must not be believed (the
            // expunge then stays in doubt and is settled below).
            let mut raw = Vec::new();
            let _ = BufReader::new(stdout).read_to_end(&mut raw);
            let complete = raw.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            String::from_utf8_lossy(&raw[..complete])
                .lines()
                .map(str::to_string)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_micros(5_000 + rng.below(40_000)));
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = reader.join().unwrap();

        let mut pending_expunge: Option<Vec<u64>> = None;
        for line in &lines {
            let Some(at) = line.find(MARK) else { continue };
            let mut f = line[at + MARK.len()..].split_whitespace();
            match f.next() {
                Some("A") => {
                    let cid: u64 = f.next().unwrap().parse().unwrap();
                    let uid: u64 = f.next().unwrap().parse().unwrap();
                    exp.acked.insert(cid, uid);
                    appends_acked += 1;
                }
                Some("x") => pending_expunge = Some(f.map(|u| u.parse().unwrap()).collect()),
                Some("E") => panic!("cycle {cycle}: the child's store failed: {line}"),
                Some("X") => {
                    exp.expunged.extend(f.map(|u| u.parse::<u64>().unwrap()));
                    pending_expunge = None;
                    expunges_acked += 1;
                }
                _ => {}
            }
        }
        let in_doubt: Vec<Vec<u64>> = pending_expunge.into_iter().collect();
        verify(&root, &exp, &in_doubt, cycle);
        // Settle what was in doubt so later cycles know.
        for uids in in_doubt {
            let store = Store::open(&root, options()).unwrap();
            let md = store.maildrop(&address()).unwrap();
            let s = md.open_session().unwrap();
            let gone = !s.snapshot().messages().iter().any(|m| m.uid() == uids[0]);
            if gone {
                exp.expunged.extend(uids);
            }
        }
    }
    eprintln!(
        "{KILLS} kills in {:?}: {appends_acked} acknowledged appends, {expunges_acked} acknowledged expunges checked",
        started.elapsed()
    );
    assert!(
        appends_acked > KILLS,
        "the child should make progress between kills"
    );
    assert!(expunges_acked > 0);
}

/// What one strace line (after `-f -y`) says, reduced to what durability
/// depends on. Paths come from strace's `fd<path>` annotations.
#[derive(Debug, PartialEq)]
enum Event {
    /// Bytes written to a file.
    Write(String),
    /// fsync or fdatasync of a file or a directory.
    Sync(String),
    /// A directory entry created (open with O_CREAT, mkdir).
    Create(String),
    Rename(String, String),
    Unlink(String),
    /// The child's acknowledgement on its stdout pipe.
    Ack(String),
}

/// The first `<path>` annotation after the opening parenthesis.
fn fd_path(args: &str) -> Option<String> {
    let start = args.find('<')? + 1;
    let end = start + args[start..].find('>')?;
    Some(args[start..end].to_string())
}

/// The quoted strings of a call's arguments, in order.
fn quoted(args: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = args;
    while let Some(a) = rest.find('"') {
        let Some(b) = rest[a + 1..].find('"') else {
            break;
        };
        out.push(rest[a + 1..a + 1 + b].to_string());
        rest = &rest[a + b + 2..];
    }
    out
}

/// Parses one complete strace line (`PID name(args) = ret`).
fn parse_strace_line(line: &str) -> Option<Event> {
    let line = line
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .trim_start();
    let open = line.find('(')?;
    let name = &line[..open];
    let args = &line[open + 1..];
    // strace pads short calls: `fsync(3</d>)         = 0`.
    let eq = args.rfind(" = ")?;
    let call = args[..eq].trim_end().strip_suffix(')')?;
    let ret = &args[eq + 3..];
    if ret.starts_with('-') {
        return None; // failed calls change nothing
    }
    Some(match name {
        "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" => {
            let path = fd_path(call)?;
            let text = quoted(call).into_iter().next().unwrap_or_default();
            match text.find(MARK) {
                // The child's report, on its stdout (a pipe or /dev/null).
                Some(at) if call.starts_with("1<") => {
                    Event::Ack(text[at + MARK.len()..].to_string())
                }
                _ => Event::Write(path),
            }
        }
        "fsync" | "fdatasync" => Event::Sync(fd_path(call)?),
        "openat" | "open" if call.contains("O_CREAT") => {
            Event::Create(fd_path(ret).or_else(|| quoted(call).into_iter().next())?)
        }
        "mkdir" | "mkdirat" => Event::Create(quoted(call).into_iter().next()?),
        "rename" | "renameat" | "renameat2" => {
            let q = quoted(call);
            Event::Rename(q.first()?.clone(), q.get(1)?.clone())
        }
        "unlink" | "unlinkat" => Event::Unlink(quoted(call).into_iter().next()?),
        _ => return None,
    })
}

fn parent(path: &str) -> String {
    std::path::Path::new(path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Replays the events: at every acknowledgement nothing written or renamed
/// under `root` may still be waiting for an fsync. Lock files carry no mail
/// and are exempt. Returns the acknowledgements checked, or the first
/// violation.
fn check_fsync_order(events: &[Event], root: &str) -> Result<usize, String> {
    use std::collections::BTreeSet;
    let ours = |p: &str| p.starts_with(root) && !p.ends_with(".lock");
    let mut unsynced_files: BTreeSet<String> = BTreeSet::new();
    let mut unsynced_dirs: BTreeSet<String> = BTreeSet::new();
    let mut acks = 0;
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Write(p) if ours(p) => {
                unsynced_files.insert(p.clone());
            }
            Event::Sync(p) => {
                unsynced_files.remove(p);
                unsynced_dirs.remove(p);
            }
            Event::Create(p) if ours(p) => {
                unsynced_dirs.insert(parent(p));
            }
            Event::Rename(from, to) if ours(from) || ours(to) => {
                if unsynced_files.remove(from) {
                    return Err(format!(
                        "event {i}: {from} renamed to {to} before its contents were fsynced"
                    ));
                }
                unsynced_dirs.insert(parent(from));
                unsynced_dirs.insert(parent(to));
            }
            Event::Unlink(p) if ours(p) => {
                unsynced_files.remove(p);
                unsynced_dirs.insert(parent(p));
            }
            // Only "A" (delivered) and "X" (expunged) promise anything.
            Event::Ack(what) if what.starts_with('A') || what.starts_with('X') => {
                if !unsynced_files.is_empty() || !unsynced_dirs.is_empty() {
                    return Err(format!(
                        "event {i}: acknowledged \"{}\" while data in {unsynced_files:?} and \
                         entries of {unsynced_dirs:?} were not fsynced",
                        what.trim()
                    ));
                }
                acks += 1;
            }
            _ => {}
        }
    }
    Ok(acks)
}

/// Joins strace's `<unfinished ...>` / `<... resumed>` halves per process.
fn strace_events(trace: &str) -> Vec<Event> {
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut events = Vec::new();
    for line in trace.lines() {
        let pid = line.split_whitespace().next().unwrap_or("").to_string();
        if let Some(head) = line.strip_suffix(" <unfinished ...>") {
            pending.insert(pid, head.to_string());
            continue;
        }
        let whole = match line.find("resumed>") {
            Some(at) if line.contains("<... ") => match pending.remove(&pid) {
                Some(head) => format!("{head}{}", &line[at + "resumed>".len()..]),
                None => continue,
            },
            _ => line.to_string(),
        };
        events.extend(parse_strace_line(&whole));
    }
    events
}

#[test]
fn fsync_order_checker_catches_what_power_loss_would_lose() {
    let root = "/r";
    let ack = || Event::Ack("A 1 1\n".into());
    // Segment written and synced, index appended and synced: fine.
    let good = [
        Event::Write("/r/d/seg-1".into()),
        Event::Sync("/r/d/seg-1".into()),
        Event::Write("/r/d/index".into()),
        Event::Sync("/r/d/index".into()),
        ack(),
    ];
    assert_eq!(check_fsync_order(&good, root), Ok(1));
    // The index append not synced before the acknowledgement.
    let unsynced = [Event::Write("/r/d/index".into()), ack()];
    assert!(check_fsync_order(&unsynced, root).is_err());
    // A new segment whose directory entry was never synced.
    let no_dir_sync = [
        Event::Create("/r/d/seg-2".into()),
        Event::Write("/r/d/seg-2".into()),
        Event::Sync("/r/d/seg-2".into()),
        ack(),
    ];
    assert!(check_fsync_order(&no_dir_sync, root).is_err());
    // Replace by rename without syncing the new file first.
    let early_rename = [
        Event::Create("/r/d/index.tmp".into()),
        Event::Write("/r/d/index.tmp".into()),
        Event::Rename("/r/d/index.tmp".into(), "/r/d/index".into()),
        Event::Sync("/r/d".into()),
        ack(),
    ];
    assert!(check_fsync_order(&early_rename, root).is_err());
    // Lock files and paths outside the store do not matter.
    let others = [
        Event::Create("/r/d/append.lock".into()),
        Event::Write("/elsewhere/log".into()),
        ack(),
    ];
    assert_eq!(check_fsync_order(&others, root), Ok(1));
    // The parser reads strace's own lines, including split ones.
    let trace = "\
7 openat(AT_FDCWD</w>, \"/r/d/seg-00000002\", O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 5</r/d/seg-00000002>
7 pwrite64(5</r/d/seg-00000002>, \"abc\"..., 300, 32 <unfinished ...>
8 futex(0x1, FUTEX_WAKE, 1) = 0
7 <... pwrite64 resumed>) = 300
7 fdatasync(5</r/d/seg-00000002>) = 0
7 fsync(6</r/d>)         = 0
7 rename(\"/r/d/index.tmp\", \"/r/d/index\") = 0
7 unlink(\"/r/d/seg-00000001\") = -1 ENOENT (No such file or directory)
7 write(1<pipe:[99]>, \"test crash_child ... @crash A 5 3\\n\", 32) = 32
";
    assert_eq!(
        strace_events(trace),
        vec![
            Event::Create("/r/d/seg-00000002".into()),
            Event::Write("/r/d/seg-00000002".into()),
            Event::Sync("/r/d/seg-00000002".into()),
            Event::Sync("/r/d".into()),
            Event::Rename("/r/d/index.tmp".into(), "/r/d/index".into()),
            Event::Ack("A 5 3\\n".into()),
        ]
    );
}

/// Power loss: every acknowledgement comes after the fsyncs that make it
/// durable. Needs strace (installed by `.ci/run`).
#[test]
fn acknowledgements_wait_for_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let trace = dir.path().join("trace");
    let exe = std::env::current_exe().unwrap();
    let status = Command::new("strace")
        .args(["-f", "-y", "-qq", "-s", "64", "-o"])
        .arg(&trace)
        .arg("-e")
        .arg(
            "trace=openat,open,creat,mkdir,mkdirat,write,pwrite64,writev,pwritev,pwritev2,\
             fsync,fdatasync,rename,renameat,renameat2,unlink,unlinkat",
        )
        .arg(&exe)
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CRASH_ROOT", &root)
        .env("CRASH_FIRST_CID", "1")
        .env("CRASH_SEED", "12345")
        .env("CRASH_SECONDS", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("strace is needed for the power-loss ordering test (apt-get install strace)");
    assert!(status.success(), "traced child failed: {status}");
    let text = std::fs::read_to_string(&trace).unwrap();
    let events = strace_events(&text);
    let root = root.canonicalize().unwrap();
    let acks =
        check_fsync_order(&events, &root.to_string_lossy()).unwrap_or_else(|e| panic!("{e}"));
    let syncs = events
        .iter()
        .filter(|e| matches!(e, Event::Sync(_)))
        .count();
    let expunges = events
        .iter()
        .filter(|e| matches!(e, Event::Ack(a) if a.starts_with('X')))
        .count();
    eprintln!(
        "{acks} acknowledgements ({expunges} expunges), each after its fsyncs ({syncs} fsyncs traced)"
    );
    assert!(acks >= 20, "only {acks} acknowledgements were traced");
    assert!(expunges > 0, "no expunge was traced");
    assert!(syncs >= acks, "{syncs} fsyncs for {acks} acknowledgements");
}
