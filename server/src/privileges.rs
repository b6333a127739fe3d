//! Running with no more privilege than needed.
//!
//! pop3sd may be started as root to bind ports below 1024; once every core
//! has bound its listeners it switches to the configured user and group
//! (glibc applies `setuid` to every thread of the process). It refuses to
//! keep root unless told to, and refuses to start when mail or keys are
//! readable by anyone on the machine.

use std::ffi::CString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::config::{Config, ConfigProblem};

/// A resolved user and group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Identity {
    pub uid: u32,
    pub gid: u32,
}

fn problem(location: &str, message: String) -> ConfigProblem {
    ConfigProblem {
        location: location.into(),
        message,
    }
}

/// Looks up a user name (or numeric uid); returns its uid and primary gid.
pub fn lookup_user(name: &str) -> Result<Identity, String> {
    let c = CString::new(name).map_err(|_| format!("user {name:?} contains NUL"))?;
    // SAFETY: passwd is a plain C struct for which all-zero bytes are valid.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers are valid for the call; getpwnam_r writes only
    // into `pwd` and `buf` (bounded by buf.len()) and sets `result`.
    let rc = unsafe {
        libc::getpwnam_r(
            c.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() {
        return Ok(Identity {
            uid: pwd.pw_uid,
            gid: pwd.pw_gid,
        });
    }
    match name.parse::<u32>() {
        Ok(uid) => Ok(Identity { uid, gid: uid }),
        Err(_) => Err(format!("no such user {name:?}")),
    }
}

/// Looks up a group name (or numeric gid).
pub fn lookup_group(name: &str) -> Result<u32, String> {
    let c = CString::new(name).map_err(|_| format!("group {name:?} contains NUL"))?;
    // SAFETY: group is a plain C struct for which all-zero bytes are valid.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::group = std::ptr::null_mut();
    // SAFETY: as for getpwnam_r above.
    let rc = unsafe {
        libc::getgrnam_r(
            c.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc == 0 && !result.is_null() {
        return Ok(grp.gr_gid);
    }
    name.parse::<u32>()
        .map_err(|_| format!("no such group {name:?}"))
}

/// The identity to switch to, if the config names one.
pub fn target(cfg: &Config) -> Result<Option<Identity>, ConfigProblem> {
    let Some(user) = &cfg.user else {
        return Ok(None);
    };
    let mut id = lookup_user(user).map_err(|e| problem("user", e))?;
    if let Some(g) = &cfg.group {
        id.gid = lookup_group(g).map_err(|e| problem("group", e))?;
    }
    Ok(Some(id))
}

/// True when running as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and no memory effects.
    unsafe { libc::geteuid() == 0 }
}

/// The root policy: running as root needs `user` to drop to, or `allow_root`.
pub fn root_policy(cfg: &Config) -> Vec<ConfigProblem> {
    match target(cfg) {
        Err(e) => vec![e],
        Ok(None) if is_root() && !cfg.allow_root => vec![problem(
            "user",
            "refusing to serve as root: set `user` (and `group`) to switch to after binding, \
             or `allow_root = true` to keep root"
                .into(),
        )],
        Ok(_) => Vec::new(),
    }
}

/// File permissions: mail and secrets must not be readable by others, and
/// the storage root must belong to the user the server runs as.
pub fn permissions(cfg: &Config) -> Vec<ConfigProblem> {
    let mut p = Vec::new();
    let target = target(cfg).ok().flatten();
    let root = cfg.resolve(&cfg.storage_root);
    if let Ok(meta) = std::fs::metadata(&root) {
        if meta.permissions().mode() & 0o007 != 0 {
            p.push(problem(
                "storage_root",
                format!(
                    "{} is accessible by other users (mode {:o}); run: chmod o-rwx {}",
                    root.display(),
                    meta.permissions().mode() & 0o777,
                    root.display()
                ),
            ));
        }
        if let Some(t) = target {
            if meta.uid() != t.uid {
                p.push(problem(
                    "storage_root",
                    format!(
                        "{} belongs to uid {}, but the server runs as uid {} after start-up; run: chown -R {} {}",
                        root.display(),
                        meta.uid(),
                        t.uid,
                        cfg.user.as_deref().unwrap_or(""),
                        root.display()
                    ),
                ));
            }
        }
    }
    let mut secret = |location: String, path: &Path| {
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o004 != 0 {
                p.push(problem(
                    &location,
                    format!(
                        "{} is readable by everyone; run: chmod o-r {}",
                        path.display(),
                        path.display()
                    ),
                ));
            }
        }
    };
    for (i, t) in cfg.tenants.iter().enumerate() {
        secret(
            format!("tenant[{i}] ({}).private_key", t.domain),
            &cfg.resolve(&t.private_key),
        );
        secret(
            format!("tenant[{i}] ({}).passwd_file", t.domain),
            &cfg.resolve(&t.passwd_file),
        );
    }
    if let Some(k) = &cfg.tls.ticket_keys_file {
        secret("tls.ticket_keys_file".into(), &cfg.resolve(k));
    }
    // What the server trusts must not be replaceable by anyone on the
    // machine: a world-writable client CA, passwd-file or key (or a
    // directory above one) would let any local user log in as anyone.
    let mut trusted: Vec<(String, std::path::PathBuf)> =
        vec![("config".into(), cfg.base_dir.clone())];
    trusted.extend(files_read(cfg));
    for (location, path) in trusted {
        if let Some(w) = world_writable(&path) {
            p.push(problem(
                &location,
                format!(
                    "{} is writable by everyone, so anyone on this machine could replace {}; run: chmod o-w {}",
                    w.display(),
                    path.display(),
                    w.display()
                ),
            ));
        }
    }
    p
}

/// Every file the server reads at start-up and again on reload, with its
/// configuration key: the configuration file, each tenant's certificate,
/// key, passwd-file and client CA, the ticket key file.
fn files_read(cfg: &Config) -> Vec<(String, std::path::PathBuf)> {
    let mut files = Vec::new();
    if let Some(file) = &cfg.source {
        files.push(("config file".into(), file.clone()));
    }
    for (i, t) in cfg.tenants.iter().enumerate() {
        let loc = |f: &str| format!("tenant[{i}] ({}).{f}", t.domain);
        files.push((loc("certificate"), cfg.resolve(&t.certificate)));
        files.push((loc("private_key"), cfg.resolve(&t.private_key)));
        files.push((loc("passwd_file"), cfg.resolve(&t.passwd_file)));
        if let Some(ca) = &t.client_ca {
            files.push((loc("client_ca"), cfg.resolve(ca)));
        }
    }
    if let Some(k) = &cfg.tls.ticket_keys_file {
        files.push(("tls.ticket_keys_file".into(), cfg.resolve(k)));
    }
    files
}

/// Files a reload reads again that the server could not read once it runs
/// as `user`: started as root it reads them all, so nothing fails until
/// the first reload (a certificate renewal, a new user). Only where this
/// process is root and `user` is another, as when `serve` starts; checked
/// from the mode bits, as the kernel would for that user and group alone
/// (the server drops its supplementary groups).
pub fn unreadable_after_drop(cfg: &Config) -> Vec<ConfigProblem> {
    let Ok(Some(t)) = target(cfg) else {
        return Vec::new();
    };
    if !is_root() || t.uid == 0 {
        return Vec::new();
    }
    let files = files_read(cfg);
    let who = format!(
        "{} (uid {}, gid {}), whom the server runs as after start-up",
        cfg.user.as_deref().unwrap_or(""),
        t.uid,
        t.gid
    );
    let mut p = Vec::new();
    for (location, path) in files {
        let Ok(real) = std::fs::canonicalize(&path) else {
            continue; // missing files are reported elsewhere
        };
        // The directories on the way as written and as the links resolve:
        // the kernel walks both.
        let written = std::path::absolute(&path).unwrap_or_else(|_| path.clone());
        let mut dirs: Vec<&Path> = written.ancestors().skip(1).collect();
        dirs.extend(real.ancestors().skip(1));
        dirs.sort();
        dirs.dedup();
        if let Some((dir, meta)) = dirs.iter().find_map(|d| {
            std::fs::metadata(d)
                .ok()
                .filter(|m| !allowed(d, m, t, 0o1))
                .map(|m| (d, m))
        }) {
            let fix = if meta.uid() == t.uid {
                format!("chmod u+x {}", dir.display())
            } else {
                format!(
                    "chgrp {} {} && chmod g+x {} (or chmod o+x, where other services share its group)",
                    t.gid,
                    dir.display(),
                    dir.display()
                )
            };
            p.push(problem(
                &location,
                format!(
                    "{} cannot be entered by {who}, so {} cannot be read again on reload; run: {fix}",
                    dir.display(),
                    path.display(),
                ),
            ));
            continue;
        }
        if let Some(meta) = std::fs::metadata(&real)
            .ok()
            .filter(|m| !allowed(&real, m, t, 0o4))
        {
            let fix = if meta.uid() == t.uid {
                format!("chmod u+r {}", real.display())
            } else {
                format!(
                    "chgrp {} {} && chmod g+r {}",
                    t.gid,
                    real.display(),
                    real.display()
                )
            };
            p.push(problem(
                &location,
                format!(
                    "{} is not readable by {who}: the server starts, but every reload would fail; run: {fix}",
                    path.display(),
                ),
            ));
        }
    }
    p
}

/// Whether the permission `bits` (4 read, 1 search) of `path` are granted
/// to `id`: the owner's, else the group's, else everyone's bits apply. A
/// path with an access ACL counts as granted: the mode bits do not say
/// what the ACL allows, and a false alarm would be worse than none.
fn allowed(path: &Path, meta: &std::fs::Metadata, id: Identity, bits: u32) -> bool {
    let mode = meta.permissions().mode();
    let by_mode = if meta.uid() == id.uid {
        mode & (bits << 6) != 0
    } else if meta.gid() == id.gid {
        mode & (bits << 3) != 0
    } else {
        mode & bits != 0
    };
    by_mode || has_access_acl(path)
}

/// Whether `path` carries a POSIX access ACL.
fn has_access_acl(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: both strings are NUL-terminated and live across the call; a
    // null buffer of size 0 asks only for the value's size.
    let n = unsafe {
        libc::getxattr(
            c.as_ptr(),
            c"system.posix_acl_access".as_ptr(),
            std::ptr::null_mut(),
            0,
        )
    };
    n > 0
}

/// The first of `path` and the directories above it that anyone may write
/// to (a sticky directory such as /tmp excepted: there only an entry's
/// owner may replace it). Both the path as written and the one its links
/// lead to are walked: a link in a directory anyone may write to can be
/// pointed elsewhere, however safe its target's directories are.
fn world_writable(path: &Path) -> Option<std::path::PathBuf> {
    let written = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| written.clone());
    for start in [written.as_path(), real.as_path()] {
        let mut cur = Some(start);
        while let Some(p) = cur {
            if let Ok(meta) = std::fs::metadata(p) {
                let mode = meta.permissions().mode();
                let sticky_dir = meta.is_dir() && mode & 0o1000 != 0;
                if mode & 0o002 != 0 && !sticky_dir {
                    return Some(p.to_path_buf());
                }
            }
            cur = p.parent();
        }
    }
    None
}

/// Gives what root owns at `path` (and, with `deep`, below it) to `id`:
/// files that root creates in the store (a first start, an operator's
/// command run as root) must belong to the user the server runs as, or it
/// cannot open them. Links are changed, never followed.
pub fn give_to(id: Identity, path: &Path, deep: bool) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.uid() == 0 && id.uid != 0 {
        std::os::unix::fs::lchown(path, Some(id.uid), Some(id.gid))?;
    }
    if deep && meta.file_type().is_dir() {
        for entry in std::fs::read_dir(path)? {
            give_to(id, &entry?.path(), true)?;
        }
    }
    Ok(())
}

/// The owner of the storage root, when it is not root: the user the
/// server runs as (`check-config` insists), to whom whatever root creates
/// in the store belongs.
pub fn store_owner(root: &Path) -> Option<Identity> {
    let meta = std::fs::metadata(root).ok()?;
    (meta.uid() != 0).then(|| Identity {
        uid: meta.uid(),
        gid: meta.gid(),
    })
}

/// Switches the whole process to `id` for good (supplementary groups
/// cleared, then gid, then uid), and checks root cannot be regained.
pub fn drop_to(id: Identity) -> Result<(), String> {
    // SAFETY: these calls take plain integers (and a valid one-element
    // array for setgroups); glibc applies them to every thread.
    unsafe {
        let groups = [id.gid];
        if libc::setgroups(1, groups.as_ptr()) != 0 {
            return Err(format!("setgroups: {}", std::io::Error::last_os_error()));
        }
        if libc::setgid(id.gid) != 0 {
            return Err(format!(
                "setgid({}): {}",
                id.gid,
                std::io::Error::last_os_error()
            ));
        }
        if libc::setuid(id.uid) != 0 {
            return Err(format!(
                "setuid({}): {}",
                id.uid,
                std::io::Error::last_os_error()
            ));
        }
        if id.uid != 0 && libc::setuid(0) == 0 {
            return Err("root privileges could be regained after setuid".into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups() {
        assert_eq!(lookup_user("root").unwrap().uid, 0);
        assert_eq!(lookup_user("4242").unwrap().uid, 4242);
        assert!(lookup_user("no-such-user-pop3sd").is_err());
        assert_eq!(lookup_group("root").unwrap(), 0);
        assert!(lookup_group("no-such-group-pop3sd").is_err());
    }

    /// What root owns is given away, deeply; a link is changed itself and
    /// never followed to what it points at.
    #[test]
    fn giving_the_store_away_does_not_follow_links() {
        if !is_root() {
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::write(&outside, "root's").unwrap();
        let store = d.path().join("store");
        std::fs::create_dir_all(store.join("example.com/alice")).unwrap();
        std::fs::write(store.join("example.com/alice/index"), "x").unwrap();
        std::os::unix::fs::symlink(&outside, store.join("example.com/alice/link")).unwrap();
        let nobody = Identity {
            uid: 65534,
            gid: 65534,
        };
        give_to(nobody, &store, true).unwrap();
        for p in [
            "",
            "example.com",
            "example.com/alice",
            "example.com/alice/index",
            "example.com/alice/link",
        ] {
            let m = std::fs::symlink_metadata(store.join(p)).unwrap();
            assert_eq!((m.uid(), m.gid()), (65534, 65534), "{p}");
        }
        assert_eq!(std::fs::metadata(&outside).unwrap().uid(), 0);
        assert_eq!(store_owner(&store), Some(nobody));
    }

    #[test]
    fn world_writable_files_and_directories_above_them_are_found() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("conf");
        std::fs::create_dir(&dir).unwrap();
        let ca = dir.join("ca.pem");
        std::fs::write(&ca, "x").unwrap();
        assert_eq!(world_writable(&ca), None);
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o646)).unwrap();
        assert_eq!(
            world_writable(&ca),
            Some(std::fs::canonicalize(&ca).unwrap())
        );
        std::fs::set_permissions(&ca, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert_eq!(
            world_writable(&ca),
            Some(std::fs::canonicalize(&dir).unwrap())
        );
        // Sticky, as /tmp: only an entry's owner may replace it.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        assert_eq!(world_writable(&ca), None);
        // A link to it from a directory anyone may write to: the link can
        // be pointed elsewhere.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::symlink(&ca, open.join("ca.pem")).unwrap();
        assert_eq!(world_writable(&open.join("ca.pem")), Some(open.clone()));
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(world_writable(&open.join("ca.pem")), None);
    }
}
