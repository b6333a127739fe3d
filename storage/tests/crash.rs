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
//! atomicity of the on-disk protocol; power-loss durability rests on the
//! fsyncs it also exercises (see docs/storage-format.md).

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
    let deadline = Instant::now() + Duration::from_secs(20);
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
