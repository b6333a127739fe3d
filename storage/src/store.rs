//! The storage root: tenants (domains) containing users' maildrops.
//!
//! Layout: `ROOT/FORMAT` (format marker), `ROOT/<domain>/<local>/` per
//! maildrop. Names are validated [`Domain`]s and [`LocalPart`]s, so no path
//! built here can leave its tenant's directory, and entries starting with a
//! dot (never valid names) are free for pop3sd's own files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use crate::durable::{create_dir_durable, replace_file, sync_dir};
use crate::error::{Error, IoContext, Result};
use crate::maildrop::{create_files, Maildrop, Session, Shared, StoreOptions, INDEX};
use crate::name::{Address, Domain, LocalPart};

const FORMAT_FILE: &str = "FORMAT";
const FORMAT_LINE: &str = "pop3sd-store 1\n";

/// Handle to a storage root. One per process is the intent: it also holds the
/// in-process lock table (one shared state per maildrop).
pub struct Store {
    root: PathBuf,
    options: StoreOptions,
    registry: Mutex<HashMap<PathBuf, Weak<Shared>>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("root", &self.root).finish()
    }
}

impl Store {
    /// Opens (creating if needed) a storage root.
    pub fn open(root: impl Into<PathBuf>, options: StoreOptions) -> Result<Store> {
        let root = root.into();
        create_dir_durable(&root)?;
        let marker = root.join(FORMAT_FILE);
        match std::fs::read_to_string(&marker) {
            Ok(s) if s == FORMAT_LINE => {}
            Ok(s) => {
                let found = s
                    .trim()
                    .strip_prefix("pop3sd-store ")
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                return Err(Error::Version {
                    path: marker,
                    found,
                    supported: 1,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                replace_file(&marker, FORMAT_LINE.as_bytes())?;
            }
            Err(e) => return Err(e).at(&marker),
        }
        Ok(Store {
            root,
            options,
            registry: Mutex::new(HashMap::new()),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn tenant_dir(&self, domain: &Domain) -> PathBuf {
        self.root.join(domain.as_str())
    }

    fn maildrop_dir(&self, addr: &Address) -> PathBuf {
        self.tenant_dir(&addr.domain).join(addr.local.as_str())
    }

    /// Creates a tenant's directory (idempotent).
    pub fn create_tenant(&self, domain: &Domain) -> Result<()> {
        create_dir_durable(&self.tenant_dir(domain))
    }

    /// True when the tenant has a directory.
    pub fn tenant_exists(&self, domain: &Domain) -> bool {
        self.tenant_dir(domain).is_dir()
    }

    fn names_in<T>(dir: &Path, parse: impl Fn(&str) -> Option<T>) -> Result<Vec<T>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).at(dir)? {
            let entry = entry.at(dir)?;
            if !entry.file_type().at(dir)?.is_dir() {
                continue;
            }
            if let Some(v) = entry.file_name().to_str().and_then(&parse) {
                out.push(v);
            }
        }
        Ok(out)
    }

    /// Every tenant with a directory, sorted.
    pub fn tenants(&self) -> Result<Vec<Domain>> {
        let mut v = Self::names_in(&self.root, |s| {
            Domain::parse(s).ok().filter(|d| d.as_str() == s)
        })?;
        v.sort();
        Ok(v)
    }

    /// Every user of a tenant that has a maildrop, sorted.
    pub fn users(&self, domain: &Domain) -> Result<Vec<LocalPart>> {
        let dir = self.tenant_dir(domain);
        if !dir.is_dir() {
            return Err(Error::NoTenant(domain.to_string()));
        }
        let mut v = Self::names_in(&dir, |s| {
            LocalPart::parse(s)
                .ok()
                .filter(|l| l.as_str() == s && dir.join(s).join(INDEX).is_file())
        })?;
        v.sort();
        Ok(v)
    }

    fn handle(&self, addr: &Address, dir: PathBuf) -> Maildrop {
        let mut reg = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(shared) = reg.get(&dir).and_then(Weak::upgrade) {
            return Maildrop { shared };
        }
        if reg.len() >= 1024 && reg.len().is_power_of_two() {
            reg.retain(|_, w| w.strong_count() > 0);
        }
        let shared = Arc::new(Shared::new(
            dir.clone(),
            addr.to_string(),
            self.options.clone(),
        ));
        reg.insert(dir, Arc::downgrade(&shared));
        Maildrop { shared }
    }

    /// An existing maildrop; [`Error::NoMaildrop`] if there is none.
    pub fn maildrop(&self, addr: &Address) -> Result<Maildrop> {
        let dir = self.maildrop_dir(addr);
        if !dir.join(INDEX).is_file() {
            return Err(Error::NoMaildrop(addr.to_string()));
        }
        Ok(self.handle(addr, dir))
    }

    /// Creates a maildrop (and its tenant directory if missing);
    /// [`Error::Exists`] if it already exists.
    pub fn create_maildrop(&self, addr: &Address) -> Result<Maildrop> {
        let dir = self.maildrop_dir(addr);
        if dir.join(INDEX).is_file() {
            return Err(Error::Exists(addr.to_string()));
        }
        create_dir_durable(&dir)?;
        // The directories' entries are on disk before any mail is
        // acknowledged in them, whoever created them: another thread may
        // still be between its mkdir and its fsync (create_dir_durable
        // returns at once for a directory that exists), or a crash may have
        // come between the two.
        for d in dir.ancestors().skip(1).take(2) {
            sync_dir(d)?;
        }
        if !create_files(&dir)? {
            return Err(Error::Exists(addr.to_string()));
        }
        Ok(self.handle(addr, dir))
    }

    /// The maildrop, created if it does not exist yet.
    pub fn ensure_maildrop(&self, addr: &Address) -> Result<Maildrop> {
        match self.maildrop(addr) {
            Err(Error::NoMaildrop(_)) => match self.create_maildrop(addr) {
                Err(Error::Exists(_)) => self.maildrop(addr),
                other => other,
            },
            other => other,
        }
    }

    /// Opens a POP3 session on `addr`'s maildrop, creating the maildrop
    /// first if it has none yet (a user added to a passwd-file gets one at
    /// the first delivery or login). Every login comes through here, so
    /// whether the maildrop exists is learnt from the session's own opens
    /// (its lock file's directory, its index) instead of a lookup before
    /// them: one path walk fewer per login.
    pub fn open_session(&self, addr: &Address) -> Result<Session> {
        let dir = self.maildrop_dir(addr);
        match self.handle(addr, dir).open_session() {
            Err(Error::NoMaildrop(_)) => {}
            // The maildrop's directory is missing: the lock file cannot be
            // created in it.
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            other => return other,
        }
        self.ensure_maildrop(addr)?.open_session()
    }

    /// [`Store::open_session`] as far as it can go without waiting for the
    /// disk ([`Maildrop::open_session_cached`]): `None` where the caller
    /// must run `open_session` where waiting is allowed (also for a
    /// maildrop that does not exist yet).
    pub fn open_session_cached(&self, addr: &Address) -> Option<Result<Session>> {
        let dir = self.maildrop_dir(addr);
        self.handle(addr, dir).open_session_cached()
    }

    /// Removes a maildrop and all its mail, provided no session holds it.
    /// The directory is first renamed to a dot-name (atomic: the user is gone
    /// at once), then removed. The rename happens under the append lock, so
    /// a delivery in progress either completes before it or fails after it
    /// (its paths are gone); none writes into the directory being removed.
    /// Deletions in the tenant that a crash interrupted are finished too, so
    /// that a deleted user's mail does not stay on disk for ever.
    pub fn delete_maildrop(&self, addr: &Address) -> Result<()> {
        let md = self.maildrop(addr)?;
        let session = md.open_session()?;
        let appends = md.lock_appends()?;
        let dir = self.maildrop_dir(addr);
        let tenant = self.tenant_dir(&addr.domain);
        // Unique even for a second deletion of the same user by the same
        // process (a re-created user deleted again).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let grave = tenant.join(format!(
            "{GRAVE_PREFIX}{}-{}-{nanos}",
            addr.local,
            std::process::id()
        ));
        std::fs::rename(&dir, &grave).at(&dir)?;
        sync_dir(&tenant)?;
        drop(appends);
        drop(session);
        match std::fs::remove_dir_all(&grave) {
            Ok(()) => {}
            // Finished by another deletion's sweep that took this one for
            // an interrupted one (its process looked gone): it is gone.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).at(&grave),
        }
        remove_interrupted_deletions(&tenant);
        Ok(())
    }
}

/// Name prefix of a maildrop directory being removed; then the user, the
/// deleting process's id and a timestamp, joined by `-`.
const GRAVE_PREFIX: &str = ".deleted-";

/// Whether process `pid` exists (one we may not signal exists too).
fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be
    // signalled; nothing is sent and no memory is touched.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Removes what deletions left in `tenant` when their process died before
/// finishing: graves whose process is gone. One whose process still runs
/// (this one included) is another deletion in progress, and is left to it.
fn remove_interrupted_deletions(tenant: &Path) {
    let Ok(entries) = std::fs::read_dir(tenant) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(GRAVE_PREFIX)) else {
            continue;
        };
        let mut fields = rest.rsplitn(3, '-');
        let (Some(_stamp), Some(pid), Some(_user)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let Ok(pid) = pid.parse::<u32>() else {
            continue;
        };
        if pid == std::process::id() || process_alive(pid) {
            continue;
        }
        let path = entry.path();
        match std::fs::remove_dir_all(&path) {
            Ok(()) => tracing::warn!(
                dir = %path.display(),
                "removed a maildrop whose deletion a crash interrupted"
            ),
            Err(e) => tracing::warn!(
                dir = %path.display(),
                error = %e,
                "cannot remove a maildrop whose deletion a crash interrupted"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::maildrop::PreparedMessage;

    #[test]
    fn deletion_removes_the_mail_and_what_crashed_deletions_left() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path().join("root"), StoreOptions::default()).unwrap();
        let a = Address::parse("alice@example.com").unwrap();
        let tenant = d.path().join("root/example.com");
        // A deletion whose process died (no pid is this large), and one
        // this process is still making.
        let crashed = tenant.join(".deleted-bob-999999999-1");
        let running = tenant.join(format!(".deleted-carol-{}-1", std::process::id()));
        for g in [&crashed, &running] {
            std::fs::create_dir_all(g).unwrap();
            std::fs::write(g.join("seg-00000001"), b"old mail").unwrap();
        }
        // The same user deleted twice by one process (re-created between).
        for _ in 0..2 {
            let md = s.create_maildrop(&a).unwrap();
            md.append(PreparedMessage::from_raw(b"Subject: x\n\ny\n"))
                .unwrap();
            drop(md);
            s.delete_maildrop(&a).unwrap();
            assert!(!tenant.join("alice").exists());
        }
        assert!(!crashed.exists(), "a crashed deletion is finished");
        assert!(running.exists(), "a running one is left to its process");
        let left: Vec<String> = std::fs::read_dir(&tenant)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    #[test]
    fn layout_and_listing() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path().join("root"), StoreOptions::default()).unwrap();
        let a = Address::parse("alice@example.com").unwrap();
        let b = Address::parse("bob@example.com").unwrap();
        let c = Address::parse("alice@example.org").unwrap();
        for x in [&a, &b, &c] {
            s.create_maildrop(x).unwrap();
        }
        assert!(matches!(s.create_maildrop(&a), Err(Error::Exists(_))));
        assert_eq!(
            s.tenants()
                .unwrap()
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>(),
            ["example.com", "example.org"]
        );
        assert_eq!(s.users(&a.domain).unwrap().len(), 2);
        assert!(d.path().join("root/example.com/alice/index").is_file());
        // The lock files exist before the first login needs them.
        for f in ["session.lock", "append.lock"] {
            assert!(d.path().join("root/example.com/alice").join(f).is_file());
        }
        s.delete_maildrop(&b).unwrap();
        assert_eq!(s.users(&a.domain).unwrap().len(), 1);
        assert!(matches!(s.maildrop(&b), Err(Error::NoMaildrop(_))));
    }

    /// Deletion waits for a delivery holding the append lock; the delivery
    /// after it fails instead of writing into the removed directory.
    #[test]
    fn deleting_waits_for_a_delivery_in_progress() {
        let d = tempfile::tempdir().unwrap();
        let s = Arc::new(Store::open(d.path().join("root"), StoreOptions::default()).unwrap());
        let a = Address::parse("alice@example.com").unwrap();
        let md = s.create_maildrop(&a).unwrap();
        let held = md.lock_appends().unwrap();
        let (s2, a2) = (s.clone(), a.clone());
        let deleter = std::thread::spawn(move || s2.delete_maildrop(&a2));
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            !deleter.is_finished(),
            "deletion did not wait for the append lock"
        );
        assert!(d.path().join("root/example.com/alice/index").is_file());
        drop(held);
        deleter.join().unwrap().unwrap();
        assert!(!d.path().join("root/example.com/alice").exists());
        assert!(md
            .append(PreparedMessage::from_raw(b"Subject: late\r\n\r\nx\r\n"))
            .is_err());
        assert!(!d.path().join("root/example.com/alice").exists());
    }

    /// A maildrop made before lock files were created up front (or whose
    /// lock files an operator removed) still opens, locks and takes mail.
    #[test]
    fn a_maildrop_without_lock_files_still_opens() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), StoreOptions::default()).unwrap();
        let a = Address::parse("alice@example.com").unwrap();
        let md = s.create_maildrop(&a).unwrap();
        for f in ["session.lock", "append.lock"] {
            std::fs::remove_file(md.dir().join(f)).unwrap();
        }
        md.append(crate::PreparedMessage::from_raw(
            b"Subject: x\r\n\r\nhi\r\n",
        ))
        .unwrap();
        let session = md.open_session().unwrap();
        assert_eq!(session.snapshot().len(), 1);
        assert!(matches!(md.open_session(), Err(Error::InUse(_))));
        assert!(md.dir().join("session.lock").is_file());
    }

    #[test]
    fn format_marker_is_checked() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("FORMAT"), "pop3sd-store 9\n").unwrap();
        assert!(matches!(
            Store::open(d.path(), StoreOptions::default()),
            Err(Error::Version { found: 9, .. })
        ));
    }
}
