//! Crash safety of the whole server: LMTP deliveries and POP3 sessions
//! (RETR, DELE, QUIT) run against `pop3sd serve` while it is SIGKILLed and
//! restarted 50 times. Afterwards every message acknowledged with 250 by
//! LMTP is present exactly once, unless its deletion was acknowledged with
//! +OK to QUIT (then it is gone); no message appears twice.

mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::Served;

const CYCLES: usize = 50;

/// The client side: delivers and downloads in a loop, journaling what the
/// server acknowledged. Runs until killed.
const WORKER: &str = r#"
import random, smtplib, socket, ssl, sys, time
lmtp, pop3s, ca, journal = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
users = [(sys.argv[i], sys.argv[i + 1]) for i in range(5, len(sys.argv), 2)]
j = open(journal, "a", buffering=1)
ctx = ssl.create_default_context(cafile=ca)
next_id = int(time.time() * 1000) % 10**9 * 1000
rnd = random.Random()
def lmtp_deliver():
    global next_id
    h, p = lmtp.rsplit(":", 1)
    l = smtplib.LMTP(h, int(p), timeout=5)
    for _ in range(rnd.randint(1, 4)):
        user = rnd.choice(users)[0]
        next_id += 1
        mid = next_id
        body = ("X-Id: %d\r\nSubject: crash test\r\n\r\n" % mid + ".dot\r\n" * rnd.randint(0, 3) + "x" * rnd.randint(0, 3000) + "\r\n").encode()
        j.write("T %d %s\n" % (mid, user))
        refused = l.sendmail("s@crash.test", [user], body)
        if not refused:
            j.write("A %d %s\n" % (mid, user))
    l.quit()
def pop_session():
    user, pw = rnd.choice(users)
    h, p = pop3s.rsplit(":", 1)
    s = ctx.wrap_socket(socket.create_connection((h, int(p)), 5), server_hostname="example.com")
    s.settimeout(5)
    f = s.makefile("rb")
    def cmd(line):
        s.sendall(line.encode() + b"\r\n")
        return f.readline()
    f.readline()
    cmd("USER " + user)
    if not cmd("PASS " + pw).startswith(b"+OK"):
        return
    n = int(cmd("STAT").split()[1])
    dele = []
    for i in range(1, n + 1):
        if rnd.random() < 0.5:
            continue
        if not cmd("RETR %d" % i).startswith(b"+OK"):
            return
        mid = None
        while True:
            line = f.readline()
            if line == b".\r\n" or line == b"":
                break
            if line.startswith(b"X-Id: "):
                mid = int(line[6:].strip())
        if mid is not None and rnd.random() < 0.5 and cmd("DELE %d" % i).startswith(b"+OK"):
            dele.append(mid)
    for mid in dele:
        j.write("U %d\n" % mid)      # deletion asked, QUIT not yet acknowledged
    r = cmd("QUIT")
    if r.startswith(b"+OK"):
        for mid in dele:
            j.write("D %d\n" % mid)
while True:
    try:
        if rnd.random() < 0.6:
            lmtp_deliver()
        else:
            pop_session()
    except Exception:
        time.sleep(0.02)
"#;

/// What a server that failed to start is doing: its exit status, or the
/// kernel's and gdb's view of its threads (for a failure seen once in CI).
fn where_stuck(child: &mut Child) -> String {
    if let Ok(Some(status)) = child.try_wait() {
        return format!("exited: {status}");
    }
    let pid = child.id();
    let mut out = String::new();
    if let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in tasks.flatten() {
            let p = t.path();
            let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
            out.push_str(&format!(
                "thread {} {} wchan={} stack:\n{}\n",
                t.file_name().to_string_lossy(),
                read("comm").trim(),
                read("wchan"),
                read("stack")
            ));
        }
    }
    if common::have("gdb") {
        if let Ok(o) = Command::new("gdb")
            .args([
                "-batch",
                "-p",
                &pid.to_string(),
                "-ex",
                "thread apply all bt",
            ])
            .output()
        {
            out.push_str(&String::from_utf8_lossy(&o.stdout));
        }
    }
    out
}

/// Kills and reaps a child when dropped, also when the test panics.
struct Reap(Child);

impl Drop for Reap {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(config: &Path, log: &Path) -> Child {
    let serving_lines = |p: &Path| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .matches(" serving ")
            .count()
    };
    // Counted before the start: a server quicker than this thread would
    // otherwise log its line first, and the wait below would never end.
    let before = serving_lines(log);
    let mut child = Command::new(common::bin())
        .args(["serve", "--config"])
        .arg(config)
        .env_remove("POP3SD_LOG")
        .stdout(Stdio::null())
        .stderr(
            std::fs::File::options()
                .create(true)
                .append(true)
                .open(log)
                .unwrap(),
        )
        .spawn()
        .unwrap();
    let start = Instant::now();
    while serving_lines(log) == before && start.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    if start.elapsed() >= Duration::from_secs(20) {
        let stuck = where_stuck(&mut child);
        // Leave nothing running behind a failed test.
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the server did not restart ({stuck}): {:?}",
            std::fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .rev()
                .take(3)
                .collect::<Vec<_>>()
        );
    }
    child
}

#[test]
fn acknowledged_mail_survives_sigkill_of_the_server() {
    // Listening ports below the ephemeral range: while the server is down,
    // the clients' own connections must not be able to take them as
    // source ports (which would make the restart fail with EADDRINUSE).
    let low = {
        let base = 20_000 + (std::process::id() % 5_000) as u16 * 2;
        move |i: u16| -> std::net::SocketAddr { format!("127.0.0.1:{}", base + i).parse().unwrap() }
    };
    let mut s = Served::start_with(3, 0, |c| {
        for (i, l) in c.listeners.iter_mut().enumerate() {
            l.address = low(i as u16 + 2);
        }
        c.lmtp.address = Some(low(0));
        c.metrics.address = None;
    });
    let users: Vec<(String, String)> = (0..3).map(|i| s.user(0, i)).collect();
    let config = s.config_path.clone();
    let dir = s.dir.path().to_path_buf();
    let lmtp = low(0).to_string();
    let pop3s = low(2).to_string();
    let ca = s.info.ca_file.clone();
    // This test runs the server itself, kill after kill.
    s.signal(libc::SIGKILL);
    assert!(s.wait_exit(Duration::from_secs(5)).is_some());
    let journal = dir.join("journal");
    let log = dir.join("crash.log");
    let worker = Reap(
        Command::new("python3")
            .arg("-c")
            .arg(WORKER)
            .args([
                &lmtp,
                &pop3s,
                ca.to_str().unwrap(),
                journal.to_str().unwrap(),
            ])
            .args(users.iter().flat_map(|(u, p)| [u.clone(), p.clone()]))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut seed = 0x2545_f491_4f6c_dd1du64 ^ std::process::id() as u64;
    for _ in 0..CYCLES {
        let mut server = serve(&config, &log);
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(300 + seed % 700));
        server.kill().unwrap(); // SIGKILL
        server.wait().unwrap();
    }
    drop(worker);

    // Read what was acknowledged.
    let text = std::fs::read_to_string(&journal).unwrap();
    let mut acked: HashMap<u64, String> = HashMap::new();
    let (mut deleted, mut doubtful) = (HashSet::new(), HashSet::new());
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["A", id, user] => {
                acked.insert(id.parse().unwrap(), user.to_string());
            }
            ["U", id] => {
                doubtful.insert(id.parse::<u64>().unwrap());
            }
            ["D", id] => {
                deleted.insert(id.parse::<u64>().unwrap());
            }
            _ => {}
        }
    }
    assert!(
        acked.len() > 50,
        "too little happened between kills: {} acknowledged deliveries",
        acked.len()
    );

    // What is stored now, read straight from the storage root.
    let cfg = pop3sd::config::Config::parse_file(&config).unwrap();
    let store =
        pop3sd_storage::Store::open(cfg.resolve(&cfg.storage_root), Default::default()).unwrap();
    let mut present: HashMap<u64, (String, usize)> = HashMap::new();
    for (user, _) in &users {
        let md = store
            .maildrop(&pop3sd_storage::Address::parse(user).unwrap())
            .unwrap();
        let session = md.open_session().unwrap();
        let snap = session.snapshot();
        for i in 0..snap.len() {
            let msg = pop3sd_storage::wire::decode(snap.wire(i).unwrap()).unwrap();
            let text = String::from_utf8_lossy(&msg);
            if let Some(id) = text
                .lines()
                .find_map(|l| l.strip_prefix("X-Id: "))
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                let e = present.entry(id).or_insert((user.clone(), 0));
                e.1 += 1;
            }
        }
    }
    for (id, (user, n)) in &present {
        assert_eq!(*n, 1, "message {id} for {user} stored {n} times");
    }
    let mut checked = 0;
    for (id, user) in &acked {
        if deleted.contains(id) {
            assert!(
                !present.contains_key(id),
                "message {id}: its deletion was acknowledged, yet it is back"
            );
        } else if !doubtful.contains(id) {
            assert_eq!(
                present.get(id).map(|p| p.0.as_str()),
                Some(user.as_str()),
                "acknowledged message {id} for {user} was lost"
            );
            checked += 1;
        }
    }
    eprintln!(
        "{CYCLES} kills: {} deliveries acknowledged, {} deletions acknowledged, {} uncertain, {checked} checked present",
        acked.len(),
        deleted.len(),
        doubtful.len() - deleted.len().min(doubtful.len())
    );
    assert!(
        !deleted.is_empty(),
        "no deletion was acknowledged: the test did not exercise QUIT"
    );
}
