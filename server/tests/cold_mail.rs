//! Mail that is not in the page cache: RETR reads it in on the blocking
//! pool first (Action::Fetch), then sends exactly the stored bytes, in
//! order with the commands pipelined around it; the metrics count it.

mod common;

use std::os::fd::AsRawFd;
use std::path::Path;

use common::Served;

/// Drops a file's pages from the page cache (written back first, so that
/// they are clean and can go); true if its first page went. Checked with
/// `mincore` through a map of our own: a read would bring it back.
fn evict(path: &Path) -> bool {
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: posix_fadvise takes a descriptor and a range; no memory.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0);
    // SAFETY: a fresh read-only shared map of one page of our open file,
    // unmapped below; nothing else uses it.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let mut status = [0u8; 1];
    // SAFETY: `p` is the page mapped above; one status byte for one page.
    let rc = unsafe { libc::mincore(p, 4096, status.as_mut_ptr()) };
    // SAFETY: unmaps only the page mapped above, never touched.
    unsafe { libc::munmap(p, 4096) };
    assert_eq!(rc, 0);
    status[0] & 1 == 0
}

#[test]
fn retr_of_evicted_mail_is_fetched_off_the_core_and_exact() {
    // Messages of 200 KiB: many pages, past the kernel's first fault.
    let s = Served::start_with(2, 200 * 1024, |_| {});
    let metrics = s.info.metrics.clone().expect("demo serves metrics");
    let (user, pw) = s.user(0, 0);
    let local = user.split('@').next().unwrap().to_string();
    let root = s.config.resolve(&s.config.storage_root);
    let seg = root.join("example.com").join(&local).join("seg-00000001");
    assert!(seg.is_file(), "{}", seg.display());
    let out = s.dir.path().join("retr-2.eml");
    // One RETR, pipelined between NOOP and STAT; prints the fetch counter
    // after it.
    let retr = format!(
        r##"
import urllib.request
def fetches():
    text = urllib.request.urlopen("http://{metrics}/metrics", timeout=5).read().decode()
    for l in text.splitlines():
        if l.startswith("pop3sd_message_fetches_total "):
            return float(l.split()[1])
    raise AssertionError("no pop3sd_message_fetches_total")
s_, f = tls(); f.readline()
cmd(s_, f, "USER {user}"); assert cmd(s_, f, "PASS {pw}").startswith(b"+OK")
s_.sendall(b"NOOP\r\nRETR 2\r\nSTAT\r\n")
assert f.readline() == b"+OK\r\n", "NOOP before RETR"
status = f.readline()
assert status.startswith(b"+OK"), status
# The wire form as sent: stuffed, with its terminator.
body = b""
while True:
    l = f.readline()
    body += l
    if l == b".\r\n":
        break
assert f.readline().startswith(b"+OK 3 "), "STAT after RETR"
assert cmd(s_, f, "QUIT").startswith(b"+OK")
f.close(); s_.close()
open(r"{out}", "wb").write(body)
print("fetches", fetches())
"##,
        out = out.display(),
    );
    let count = |report: &str| -> f64 {
        report
            .split_whitespace()
            .skip_while(|w| *w != "fetches")
            .nth(1)
            .and_then(|w| w.parse().ok())
            .unwrap_or_else(|| panic!("no count in {report}"))
    };
    if !evict(&seg) {
        eprintln!("this file system keeps its pages (tmpfs?); nothing to test");
        return;
    }
    let cold = count(&s.python(&retr));
    let first = std::fs::read(&out).unwrap();
    // In memory now: the same RETR needs no fetch.
    let warm = count(&s.python(&retr));
    let second = std::fs::read(&out).unwrap();
    assert_eq!(cold, 1.0, "one fetch for the evicted message");
    assert_eq!(warm, 1.0, "no fetch once in memory");

    // Exactly the stored wire form, both times (read now that no session
    // holds the maildrop).
    let store = pop3sd_storage::Store::open(&root, Default::default()).unwrap();
    let session = store
        .open_session(&pop3sd_storage::Address::parse(&user).unwrap())
        .unwrap();
    let stored = session.snapshot().wire(1).unwrap();
    assert!(stored.len() > 200 * 1024, "{}", stored.len());
    for got in [&first, &second] {
        assert!(
            got.as_slice() == stored,
            "RETR 2 differs from the stored message ({} against {} bytes)",
            got.len(),
            stored.len()
        );
    }
}
