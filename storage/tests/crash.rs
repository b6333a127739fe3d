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
        let mut stdout = child.stdout.take().unwrap();
        // The kill's random instant counts from the child's first output
        // (libtest's, once the process is up), not from the spawn: on a
        // busy machine, starting a process can take most of the window.
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            let mut raw = vec![0u8; 1];
            if stdout.read_exact(&mut raw).is_err() {
                raw.clear();
            }
            let _ = started_tx.send(());
            // Only whole lines count: a long "X uid uid ..." line goes to the
            // pipe in several writes, and a kill between them leaves a
            // truncated acknowledgement that must not be believed (the
            // expunge then stays in doubt and is settled below).
            let _ = BufReader::new(stdout).read_to_end(&mut raw);
            let complete = raw.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
            String::from_utf8_lossy(&raw[..complete])
                .lines()
                .map(str::to_string)
                .collect::<Vec<String>>()
        });
        let _ = started_rx.recv_timeout(Duration::from_secs(10));
        std::thread::sleep(Duration::from_micros(5_000 + rng.below(40_000)));
        // The child runs for 20 s: one that is gone already died of
        // something other than our SIGKILL (a panic, a store error).
        let early_exit = child.try_wait().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
        let lines = reader.join().unwrap();
        if let Some(status) = early_exit {
            panic!(
                "cycle {cycle}: the child exited by itself ({status}); its last reports: {:?}",
                &lines[lines.len().saturating_sub(3)..]
            );
        }

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
    /// Bytes written to a file (or the file truncated on open).
    Write(String),
    /// fsync or fdatasync of a file or a directory.
    Sync(String),
    /// A directory entry created (open with O_CREAT, mkdir).
    Create(String),
    Rename(String, String),
    Unlink(String),
    /// A call that changes files in a way the checker does not model
    /// (ftruncate, fallocate, link, O_TMPFILE, ...): refused under the store.
    Unmodelled(String, String),
    /// The child's acknowledgement on its stdout pipe.
    Ack(String),
}

/// Calls traced by `acknowledgements_wait_for_fsync`: all that write data,
/// make it durable or change directory entries.
const TRACED: &str = "trace=openat,open,creat,mkdir,mkdirat,write,pwrite64,writev,pwritev,\
pwritev2,fsync,fdatasync,syncfs,sync_file_range,rename,renameat,renameat2,unlink,unlinkat,\
rmdir,link,linkat,symlink,symlinkat,truncate,ftruncate,fallocate,copy_file_range";

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

/// Parses one complete strace line (`PID name(args) = ret`). A traced call
/// that succeeded but cannot be read is an error, never silently skipped:
/// a checker that misses events proves nothing.
fn parse_strace_line(line: &str) -> Result<Vec<Event>, String> {
    let body = line
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .trim_start();
    // Signals and exits: `--- SIGCHLD ... ---`, `+++ exited with 0 +++`.
    if body.starts_with("---") || body.starts_with("+++") || body.is_empty() {
        return Ok(Vec::new());
    }
    let bad = || format!("unreadable strace line: {line}");
    let open = body.find('(').ok_or_else(bad)?;
    let name = &body[..open];
    let args = &body[open + 1..];
    // strace pads short calls: `fsync(3</d>)         = 0`.
    let eq = args.rfind(" = ").ok_or_else(bad)?;
    let call = args[..eq].trim_end().strip_suffix(')').ok_or_else(bad)?;
    let ret = &args[eq + 3..];
    if ret.starts_with('-') {
        return Ok(Vec::new()); // failed calls change nothing
    }
    let path = || fd_path(call).ok_or_else(bad);
    let first_quoted = || quoted(call).into_iter().next().ok_or_else(bad);
    Ok(match name {
        "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" => {
            let text = quoted(call).into_iter().next().unwrap_or_default();
            match text.find(MARK) {
                // The child's report, on its stdout (a pipe or /dev/null).
                Some(at) if call.starts_with("1<") => {
                    vec![Event::Ack(text[at + MARK.len()..].to_string())]
                }
                _ => vec![Event::Write(path()?)],
            }
        }
        "fsync" | "fdatasync" => vec![Event::Sync(path()?)],
        "openat" | "open" => {
            let opened = fd_path(ret).map_or_else(first_quoted, Ok)?;
            let mut v = Vec::new();
            if call.contains("O_TMPFILE") {
                v.push(Event::Unmodelled(name.into(), opened.clone()));
            }
            if call.contains("O_CREAT") {
                v.push(Event::Create(opened.clone()));
            }
            if call.contains("O_TRUNC") {
                v.push(Event::Write(opened));
            }
            v
        }
        "creat" => {
            let p = first_quoted()?;
            vec![Event::Create(p.clone()), Event::Write(p)]
        }
        "mkdir" | "mkdirat" => vec![Event::Create(first_quoted()?)],
        "rename" | "renameat" | "renameat2" => {
            let q = quoted(call);
            match (q.first(), q.get(1)) {
                (Some(from), Some(to)) => vec![Event::Rename(from.clone(), to.clone())],
                _ => return Err(bad()),
            }
        }
        "unlink" | "unlinkat" | "rmdir" => vec![Event::Unlink(first_quoted()?)],
        "link" | "linkat" | "symlink" | "symlinkat" | "truncate" => {
            let q = quoted(call);
            let p = q.last().cloned().ok_or_else(bad)?;
            vec![Event::Unmodelled(name.into(), p)]
        }
        "ftruncate" | "fallocate" | "sync_file_range" | "syncfs" | "copy_file_range" => {
            vec![Event::Unmodelled(name.into(), path()?)]
        }
        _ => return Err(format!("untraced call in the trace: {line}")),
    })
}

fn parent(path: &str) -> String {
    std::path::Path::new(path)
        .parent()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn is_index(path: &str) -> bool {
    std::path::Path::new(path).file_name() == Some(std::ffi::OsStr::new("index"))
}

/// What the replay saw.
#[derive(Debug, Default, PartialEq)]
struct Replay {
    acks: usize,
    expunges: usize,
    writes: usize,
    creates: usize,
    renames: usize,
    syncs: usize,
}

/// Replays the events under `root` (lock files carry no mail and are
/// exempt) and returns the first violation of these rules:
/// - no file is renamed before its contents were fsynced;
/// - whenever the index changes (records appended, or a new index renamed
///   into place), everything else written or renamed before has been
///   fsynced: the index must never point at bytes or names a power cut
///   could take away;
/// - at every acknowledgement ("A" delivered, "X" expunged), nothing at all
///   is left unsynced;
/// - calls the checker does not model never touch the store.
fn check_fsync_order(events: &[Event], root: &str) -> Result<Replay, String> {
    use std::collections::BTreeSet;
    let ours = |p: &str| p.starts_with(root) && !p.ends_with(".lock");
    let mut unsynced_files: BTreeSet<String> = BTreeSet::new();
    // Directory entries (created, renamed or removed names) whose directory
    // has not been fsynced since.
    let mut unsynced_entries: BTreeSet<String> = BTreeSet::new();
    let mut seen = Replay::default();
    let settled = |files: &BTreeSet<String>, entries: &BTreeSet<String>, i: usize, what: &str| {
        if files.is_empty() && entries.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "event {i}: {what} while data in {files:?} and the directory entries \
                 {entries:?} were not fsynced"
            ))
        }
    };
    for (i, e) in events.iter().enumerate() {
        match e {
            Event::Write(p) if ours(p) => {
                if is_index(p) {
                    let others: BTreeSet<String> =
                        unsynced_files.iter().filter(|f| *f != p).cloned().collect();
                    settled(&others, &unsynced_entries, i, &format!("{p} changed"))?;
                }
                unsynced_files.insert(p.clone());
                seen.writes += 1;
            }
            Event::Sync(p) => {
                unsynced_files.remove(p);
                unsynced_entries.retain(|e| parent(e) != *p);
                seen.syncs += 1;
            }
            Event::Create(p) if ours(p) => {
                unsynced_entries.insert(p.clone());
                seen.creates += 1;
            }
            Event::Rename(from, to) if ours(from) || ours(to) => {
                if unsynced_files.remove(from) {
                    return Err(format!(
                        "event {i}: {from} renamed to {to} before its contents were fsynced"
                    ));
                }
                if is_index(to) {
                    // The new index's own name needs no sync before the
                    // rename that moves it (the directory sync after covers
                    // both); everything else does.
                    let others: BTreeSet<String> = unsynced_entries
                        .iter()
                        .filter(|e| *e != from)
                        .cloned()
                        .collect();
                    settled(&unsynced_files, &others, i, &format!("{to} replaced"))?;
                }
                unsynced_entries.insert(from.clone());
                unsynced_entries.insert(to.clone());
                seen.renames += 1;
            }
            Event::Unlink(p) if ours(p) => {
                unsynced_files.remove(p);
                unsynced_entries.insert(p.clone());
            }
            Event::Unmodelled(call, p) if ours(p) => {
                return Err(format!(
                    "event {i}: {call} on {p}: not modelled by this checker"
                ));
            }
            // Only "A" (delivered) and "X" (expunged) promise anything.
            Event::Ack(what) if what.starts_with('A') || what.starts_with('X') => {
                settled(
                    &unsynced_files,
                    &unsynced_entries,
                    i,
                    &format!("acknowledged \"{}\"", what.trim()),
                )?;
                seen.acks += 1;
                if what.starts_with('X') {
                    seen.expunges += 1;
                }
            }
            _ => {}
        }
    }
    Ok(seen)
}

/// Joins strace's `<unfinished ...>` / `<... resumed>` halves per process
/// and parses every line.
fn strace_events(trace: &str) -> Result<Vec<Event>, String> {
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
                None => return Err(format!("resumed call that never started: {line}")),
            },
            _ => line.to_string(),
        };
        events.extend(parse_strace_line(&whole)?);
    }
    if let Some((pid, head)) = pending.into_iter().next() {
        // A process killed inside a call leaves it unfinished; this child
        // exits normally, so every call must end.
        return Err(format!("call of {pid} never finished: {head}"));
    }
    Ok(events)
}

#[test]
fn fsync_order_checker_catches_what_power_loss_would_lose() {
    let root = "/r";
    let ack = || Event::Ack("A 1 1\n".into());
    let w = |p: &str| Event::Write(p.into());
    let sync = |p: &str| Event::Sync(p.into());
    // Segment written and synced, index appended and synced: fine.
    let good = [
        w("/r/d/seg-1"),
        sync("/r/d/seg-1"),
        w("/r/d/index"),
        sync("/r/d/index"),
        ack(),
    ];
    assert_eq!(check_fsync_order(&good, root).map(|r| r.acks), Ok(1));
    // The index append not synced before the acknowledgement.
    let unsynced = [w("/r/d/index"), ack()];
    assert!(check_fsync_order(&unsynced, root).is_err());
    // The index points at segment bytes not yet synced (fdatasyncs swapped).
    let swapped = [
        w("/r/d/seg-1"),
        w("/r/d/index"),
        sync("/r/d/index"),
        sync("/r/d/seg-1"),
        ack(),
    ];
    assert!(check_fsync_order(&swapped, root)
        .unwrap_err()
        .contains("/r/d/index changed"));
    // Compaction installing the new index before its segment is synced.
    let early_index = [
        Event::Create("/r/d/seg-2".into()),
        sync("/r/d"),
        w("/r/d/seg-2"),
        Event::Create("/r/d/index.tmp".into()),
        w("/r/d/index.tmp"),
        sync("/r/d/index.tmp"),
        Event::Rename("/r/d/index.tmp".into(), "/r/d/index".into()),
        sync("/r/d/seg-2"),
        sync("/r/d"),
    ];
    assert!(check_fsync_order(&early_index, root)
        .unwrap_err()
        .contains("/r/d/index replaced"));
    // A new segment whose directory entry was never synced.
    let no_dir_sync = [
        Event::Create("/r/d/seg-2".into()),
        w("/r/d/seg-2"),
        sync("/r/d/seg-2"),
        ack(),
    ];
    assert!(check_fsync_order(&no_dir_sync, root).is_err());
    // Replace by rename without syncing the new file first.
    let early_rename = [
        Event::Create("/r/d/index.tmp".into()),
        w("/r/d/index.tmp"),
        Event::Rename("/r/d/index.tmp".into(), "/r/d/index".into()),
        sync("/r/d"),
        ack(),
    ];
    assert!(check_fsync_order(&early_rename, root).is_err());
    // Calls the checker does not model are refused under the store.
    let truncated = [Event::Unmodelled("ftruncate".into(), "/r/d/seg-1".into())];
    assert!(check_fsync_order(&truncated, root).is_err());
    // Lock files and paths outside the store do not matter.
    let others = [
        Event::Create("/r/d/append.lock".into()),
        w("/elsewhere/log"),
        Event::Unmodelled("ftruncate".into(), "/elsewhere/log".into()),
        ack(),
    ];
    assert_eq!(check_fsync_order(&others, root).map(|r| r.acks), Ok(1));
    // The parser reads strace's own lines, including split ones.
    let trace = "\
7 openat(AT_FDCWD</w>, \"/r/d/seg-00000002\", O_RDWR|O_CREAT|O_EXCL|O_CLOEXEC, 0600) = 5</r/d/seg-00000002>
7 pwrite64(5</r/d/seg-00000002>, \"abc\"..., 300, 32 <unfinished ...>
8 +++ exited with 0 +++
7 <... pwrite64 resumed>) = 300
7 fdatasync(5</r/d/seg-00000002>) = 0
7 fsync(6</r/d>)         = 0
7 openat(AT_FDCWD</w>, \"/r/d/index.tmp\", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0666) = 3</r/d/index.tmp>
7 rename(\"/r/d/index.tmp\", \"/r/d/index\") = 0
7 unlink(\"/r/d/seg-00000001\") = -1 ENOENT (No such file or directory)
7 ftruncate(4</r/d/seg-00000003>, 0) = 0
7 write(1<pipe:[99]>, \"test crash_child ... @crash A 5 3\\n\", 32) = 32
";
    assert_eq!(
        strace_events(trace),
        Ok(vec![
            Event::Create("/r/d/seg-00000002".into()),
            w("/r/d/seg-00000002"),
            sync("/r/d/seg-00000002"),
            sync("/r/d"),
            Event::Create("/r/d/index.tmp".into()),
            w("/r/d/index.tmp"),
            Event::Rename("/r/d/index.tmp".into(), "/r/d/index".into()),
            Event::Unmodelled("ftruncate".into(), "/r/d/seg-00000003".into()),
            Event::Ack("A 5 3\\n".into()),
        ])
    );
    // Nothing is silently skipped.
    assert!(
        strace_events("7 fsync(3) = 0\n").is_err(),
        "no path annotation"
    );
    assert!(strace_events("7 <... write resumed>) = 3\n").is_err());
    assert!(strace_events("7 write(3</r/x>, \"a\", 1 <unfinished ...>\n").is_err());
    assert!(strace_events("7 getpid() = 7\n").is_err(), "untraced call");
}

/// Power loss: the index never points at anything a power cut could take
/// away, and every acknowledgement comes after the fsyncs that make it
/// durable. Needs strace (installed by `.ci/run`).
#[test]
fn acknowledgements_wait_for_fsync() {
    let dir = tempfile::tempdir().unwrap();
    // strace reports paths as the program passed them, and resolves
    // descriptors to real paths: with a canonical root both agree even
    // when the temporary directory is reached through a symlink.
    let root = dir.path().canonicalize().unwrap().join("root");
    let trace = dir.path().join("trace");
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("strace")
        .args(["-f", "-y", "-qq", "-s", "64", "-o"])
        .arg(&trace)
        .arg("-e")
        .arg(TRACED)
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
        .stderr(Stdio::piped())
        .output()
        .expect("strace is needed for the power-loss ordering test (apt-get install strace)");
    assert!(
        out.status.success(),
        "traced child failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(&trace).unwrap();
    let events = strace_events(&text).unwrap_or_else(|e| panic!("{e}"));
    let seen =
        check_fsync_order(&events, &root.to_string_lossy()).unwrap_or_else(|e| panic!("{e}"));
    eprintln!("each acknowledgement after its fsyncs: {seen:?}");
    assert!(seen.acks >= 20, "too few acknowledgements traced: {seen:?}");
    assert!(seen.expunges > 0, "no expunge was traced: {seen:?}");
    assert!(
        seen.writes > seen.acks && seen.creates > 0 && seen.renames > 0 && seen.syncs >= seen.acks,
        "the trace does not show the store at work: {seen:?}"
    );
}
