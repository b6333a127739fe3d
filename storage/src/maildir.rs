//! Import of a Maildir (as Dovecot, Courier and Postfix write them).
//!
//! Messages in `cur/` and `new/` are converted to wire form (bare LF becomes
//! CRLF, dots are stuffed) and appended in their Maildir order. The point of
//! a migration is that POP3 clients which leave mail on the server do not
//! download everything again, so the UIDLs the old server gave are kept:
//! - from Dovecot's `dovecot-uidlist` (a `P` field where Dovecot saved one,
//!   otherwise computed with the operator's `pop3_uidl_format`, by default
//!   `%08Xu%08Xv`);
//! - or from an explicit map file, one `filename uidl` pair per line.
//!
//! A message whose UIDL is already in the maildrop is skipped and reported,
//! which also makes re-running an interrupted import safe.
//!
//! A Maildir belongs to its user, and the import runs as root or as the
//! store's owner: a symbolic link in it (`cur/` itself, a message, the
//! uidlist) could point at another tenant's mail or at `/etc/shadow`, which
//! would then be served as a message. Nothing inside the Maildir is reached
//! through a link: the Maildir, then `cur/`, `new/` and the uidlist relative
//! to it, are opened without following one, and every message is opened
//! relative to its directory's descriptor, without following one, and read
//! only if it is a regular file. A message that is a link is reported as
//! skipped; any of the others that is one is refused with an error.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::error::{Error, IoContext, Result};
use crate::maildrop::{Maildrop, PreparedMessage};
use crate::record::Uidl;

/// Where imported messages get their UIDLs.
#[derive(Debug, Clone)]
pub enum UidlSource {
    /// UIDLs new to clients (they will download everything once more):
    /// each file's Maildir unique name, so that a re-run recognises what an
    /// interrupted one imported; a name that is no valid UIDL gets a
    /// pop3sd one.
    Native,
    /// `dovecot-uidlist` in the Maildir, with Dovecot's `pop3_uidl_format`
    /// (supported variables: `%u`, `%v`, `%f`, with optional zero-padded
    /// width and `X` for hex, printed lowercase as Dovecot does, e.g. `%08Xu%08Xv`).
    Dovecot { format: String },
    /// A file of `filename uidl` lines (filename up to its `:2,` suffix).
    MapFile(PathBuf),
}

impl Default for UidlSource {
    fn default() -> Self {
        UidlSource::Dovecot {
            format: "%08Xu%08Xv".into(),
        }
    }
}

/// What an import did.
#[derive(Debug, Clone, Default)]
pub struct ImportReport {
    pub imported: u64,
    pub kept_uidls: u64,
    pub new_uidls: u64,
    /// Files not imported, with the reason.
    pub skipped: Vec<(PathBuf, String)>,
}

/// One entry of a dovecot-uidlist.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UidlistEntry {
    pub uid: u32,
    pub pop3_uidl: Option<String>,
}

/// A parsed dovecot-uidlist: validity and entries keyed by base filename.
#[derive(Debug, Clone, Default)]
pub struct Uidlist {
    pub uid_validity: u32,
    pub entries: HashMap<String, UidlistEntry>,
}

fn base_name(file_name: &str) -> &str {
    file_name.split(':').next().unwrap_or(file_name)
}

/// Parses dovecot-uidlist versions 1 and 3.
pub fn parse_uidlist(text: &str) -> std::result::Result<Uidlist, String> {
    let mut lines = text.lines();
    let header = lines.next().ok_or("empty uidlist")?;
    let mut fields = header.split_whitespace();
    let version = fields.next().ok_or("empty header")?;
    let mut list = Uidlist::default();
    match version {
        "1" => {
            list.uid_validity = fields
                .next()
                .and_then(|v| v.parse().ok())
                .ok_or("version 1 header without uidvalidity")?;
        }
        "3" => {
            for f in fields {
                if let Some(v) = f.strip_prefix('V') {
                    list.uid_validity = v.parse().map_err(|_| "bad V field")?;
                }
            }
        }
        other => return Err(format!("unsupported uidlist version {other}")),
    }
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = || format!("line {}: cannot parse {line:?}", n + 2);
        let (uid_str, rest) = line.split_once(' ').ok_or_else(bad)?;
        let uid: u32 = uid_str.parse().map_err(|_| bad())?;
        let (exts, file) = if version == "1" {
            ("", rest.trim())
        } else {
            let idx = rest.find(':').ok_or_else(bad)?;
            (&rest[..idx], &rest[idx + 1..])
        };
        let mut pop3_uidl = None;
        for ext in exts.split_whitespace() {
            if let Some(p) = ext.strip_prefix('P') {
                pop3_uidl = Some(p.to_string());
            }
        }
        list.entries
            .insert(base_name(file).to_string(), UidlistEntry { uid, pop3_uidl });
    }
    Ok(list)
}

/// Expands a Dovecot `pop3_uidl_format` for one message.
pub fn format_uidl(
    format: &str,
    uid: u32,
    uid_validity: u32,
    base: &str,
) -> std::result::Result<String, String> {
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        let mut width = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(*d);
            chars.next();
        }
        // Dovecot's `X` modifier prints lowercase hex (its default format
        // `%08Xu%08Xv` gives `000000016b0a4509`); matching it keeps the
        // UIDLs clients already saw.
        let hex = chars.peek() == Some(&'X');
        if hex {
            chars.next();
        }
        let w: usize = width.parse().unwrap_or(0);
        let num = |v: u32| {
            if hex {
                format!("{v:0w$x}")
            } else {
                format!("{v:0w$}")
            }
        };
        match chars.next() {
            Some('u') => out.push_str(&num(uid)),
            Some('v') => out.push_str(&num(uid_validity)),
            Some('f') => out.push_str(base),
            Some('%') => out.push('%'),
            other => {
                return Err(format!(
                    "pop3_uidl_format variable %{} is not supported for import; \
                     export the UIDLs to a map file instead",
                    other.map(String::from).unwrap_or_default()
                ))
            }
        }
    }
    Ok(out)
}

fn parse_map_file(path: &Path) -> Result<HashMap<String, String>> {
    let text = std::fs::read_to_string(path).at(path)?;
    let mut map = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut parts = line.split_whitespace();
        match (parts.next(), parts.next(), parts.next()) {
            (Some(f), Some(u), None) => {
                map.insert(base_name(f).to_string(), u.to_string());
            }
            _ => {
                return Err(Error::Import {
                    path: path.to_path_buf(),
                    reason: format!("line {}: expected \"filename uidl\"", n + 1),
                })
            }
        }
    }
    Ok(map)
}

/// Why a file in the Maildir was not read: a link is not followed.
const LINK_SKIPPED: &str = "a symbolic link; an import does not follow links";

/// Opens `name` in the directory `dir` without following a symbolic link
/// (one fails with `ELOOP`, or `ENOTDIR` with `O_DIRECTORY`); `extra` adds
/// flags.
fn open_at(dir: &File, name: &OsStr, extra: libc::c_int) -> std::io::Result<File> {
    let c_name = CString::new(name.as_bytes())
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::InvalidInput, "NUL in a file name"))?;
    let flags = libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NOCTTY | extra;
    // SAFETY: `dir` is an open directory descriptor for the whole call and
    // `c_name` a NUL-terminated string that outlives it; openat only reads
    // them and returns a new descriptor (or -1).
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c_name.as_ptr(), flags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by openat, is valid, and nothing else
    // owns it: the File closes it exactly once.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens the Maildir itself, refusing a symbolic link: the user who owns
/// it could point their `Maildir` at someone else's.
fn open_root(maildir: &Path) -> Result<File> {
    let opened = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(maildir);
    match opened {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(Error::Import {
            path: maildir.to_path_buf(),
            reason: "not a Maildir (no such directory)".into(),
        }),
        Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTDIR | libc::ELOOP)) => {
            let link = std::fs::symlink_metadata(maildir).is_ok_and(|m| m.file_type().is_symlink());
            Err(Error::Import {
                path: maildir.to_path_buf(),
                reason: if link {
                    format!("{LINK_SKIPPED} (give the directory it points to, if it is trusted)")
                } else {
                    "not a Maildir (not a directory)".into()
                },
            })
        }
        Err(e) => Err(e).at(maildir),
    }
}

/// Opens `cur/` or `new/` in the Maildir (None if there is none), refusing
/// a symbolic link: its messages are then opened relative to it.
fn open_subdir(root: &File, maildir: &Path, sub: &str) -> Result<Option<File>> {
    let d = maildir.join(sub);
    match open_at(root, OsStr::new(sub), libc::O_DIRECTORY) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // With O_DIRECTORY a link is refused as "not a directory" (ELOOP
        // without it): tell a link from a plain file by looking at it.
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
            if std::fs::symlink_metadata(&d).is_ok_and(|m| m.file_type().is_symlink()) {
                Err(Error::Import {
                    path: d,
                    reason: LINK_SKIPPED.into(),
                })
            } else {
                Ok(None)
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => Err(Error::Import {
            path: d,
            reason: LINK_SKIPPED.into(),
        }),
        Err(e) => Err(e).at(&d),
    }
}

/// Opens the file `name` in the directory `dir` for reading, only if it is
/// a regular file reached without a symbolic link (one fails with `ELOOP`).
/// `O_NONBLOCK` keeps a FIFO put in the Maildir from stalling the import on
/// its open.
fn open_message(dir: &File, name: &OsStr) -> std::io::Result<File> {
    let file = open_at(dir, name, libc::O_NONBLOCK)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    Ok(file)
}

/// Arrival time from a Maildir name (`<secs>.<unique>.<host>`), else the mtime.
fn arrival_of(mtime: Option<SystemTime>, base: &str) -> i64 {
    // A name's time is believed only if it could be a real delivery time:
    // from 1970 to a day past now. Anything else (a name from another
    // scheme, or a hand-made one) falls back to the file's mtime, so that
    // EXPIRE never acts on a made-up age.
    let plausible = 0..=crate::durable::unix_now().saturating_add(86_400);
    if let Some(secs) = base
        .split('.')
        .next()
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|s| plausible.contains(s))
    {
        return secs;
    }
    mtime
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs() as i64)
}

/// The Maildir's `dovecot-uidlist`, not through a symbolic link.
fn read_uidlist(root: &File) -> std::io::Result<String> {
    let mut t = String::new();
    open_message(root, OsStr::new("dovecot-uidlist"))?.read_to_string(&mut t)?;
    Ok(t)
}

/// Imports every message of `maildir` into `maildrop`.
pub fn import_maildir(
    maildrop: &Maildrop,
    maildir: &Path,
    uidl: &UidlSource,
) -> Result<ImportReport> {
    // (base name, which directory, file name, path for reports)
    let mut files: Vec<(String, usize, std::ffi::OsString, PathBuf)> = Vec::new();
    let mut dirs: Vec<File> = Vec::new();
    let mut skipped: Vec<(PathBuf, String)> = Vec::new();
    let root = open_root(maildir)?;
    for sub in ["cur", "new"] {
        let d = maildir.join(sub);
        let Some(dir) = open_subdir(&root, maildir, sub)? else {
            continue;
        };
        // Only names come from this listing: each is then opened relative
        // to `dir`, so a directory swapped in after the open is not read.
        for entry in std::fs::read_dir(&d).at(&d)? {
            let entry = entry.at(&d)?;
            let name = entry.file_name();
            let shown = name.to_string_lossy().into_owned();
            if shown.starts_with('.') {
                continue;
            }
            let kind = entry.file_type().at(&d)?;
            if kind.is_symlink() {
                skipped.push((entry.path(), LINK_SKIPPED.into()));
                continue;
            }
            if !kind.is_file() {
                continue;
            }
            files.push((
                base_name(&shown).to_string(),
                dirs.len(),
                name,
                entry.path(),
            ));
        }
        dirs.push(dir);
    }
    if files.is_empty() && dirs.is_empty() {
        return Err(Error::Import {
            path: maildir.to_path_buf(),
            reason: "not a Maildir (no cur/ or new/)".into(),
        });
    }

    let (uidlist, map) = match uidl {
        UidlSource::Native => (None, None),
        UidlSource::Dovecot { .. } => {
            let p = maildir.join("dovecot-uidlist");
            match read_uidlist(&root) {
                Ok(t) => (
                    Some(parse_uidlist(&t).map_err(|reason| Error::Import {
                        path: p.clone(),
                        reason,
                    })?),
                    None,
                ),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, None),
                Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
                    return Err(Error::Import {
                        path: p,
                        reason: LINK_SKIPPED.into(),
                    })
                }
                Err(e) => return Err(e).at(&p),
            }
        }
        UidlSource::MapFile(p) => (None, Some(parse_map_file(p)?)),
    };

    // Maildir order: by uidlist uid where known, then by name (delivery time).
    files.sort_by(|a, b| {
        let ua = uidlist
            .as_ref()
            .and_then(|l| l.entries.get(&a.0))
            .map(|e| e.uid);
        let ub = uidlist
            .as_ref()
            .and_then(|l| l.entries.get(&b.0))
            .map(|e| e.uid);
        match (ua, ub) {
            (Some(x), Some(y)) => x.cmp(&y),
            (Some(_), None) => std::cmp::Ordering::Less,
            (None, Some(_)) => std::cmp::Ordering::Greater,
            (None, None) => a.0.cmp(&b.0),
        }
    });

    let mut report = ImportReport {
        skipped,
        ..ImportReport::default()
    };
    for (base, dir, name, path) in files {
        let wanted: Option<String> = match (uidl, &uidlist, &map) {
            (UidlSource::Dovecot { format }, Some(list), _) => match list.entries.get(&base) {
                Some(e) => match &e.pop3_uidl {
                    Some(p) => Some(p.clone()),
                    None => Some(
                        format_uidl(format, e.uid, list.uid_validity, &base).map_err(|reason| {
                            Error::Import {
                                path: maildir.to_path_buf(),
                                reason,
                            }
                        })?,
                    ),
                },
                None => None,
            },
            (_, _, Some(m)) => m.get(&base).cloned(),
            _ => None,
        };
        let read = open_message(&dirs[dir], &name).and_then(|mut f| {
            let mtime = f.metadata().and_then(|m| m.modified()).ok();
            let mut raw = Vec::new();
            f.read_to_end(&mut raw).map(|_| (raw, mtime))
        });
        let (raw, mtime) = match read {
            Ok(r) => r,
            Err(e) => {
                let why = if e.raw_os_error() == Some(libc::ELOOP) {
                    LINK_SKIPPED.to_string()
                } else {
                    e.to_string()
                };
                report.skipped.push((path, why));
                continue;
            }
        };
        let mut msg = PreparedMessage::from_raw(&raw).with_arrival(arrival_of(mtime, &base));
        let mut kept = false;
        if let Some(w) = wanted {
            match Uidl::new(w.as_bytes()) {
                Some(u) => {
                    msg = msg.with_uidl(u);
                    kept = true;
                }
                None => {
                    tracing::warn!(file = %path.display(), uidl = %w, "UIDL is not valid for POP3 (1-70 printable characters); giving a new one");
                }
            }
        }
        if !kept {
            // No UIDL to keep: the file's unique name, the same on every
            // run, so that a re-run after an interruption skips what is
            // already imported (pop3sd's own UIDLs would differ each time).
            if let Some(u) = Uidl::new(base.as_bytes()) {
                msg = msg.with_uidl(u);
            }
        }
        match maildrop.append(msg) {
            Ok(_) => {
                report.imported += 1;
                if kept {
                    report.kept_uidls += 1;
                } else {
                    report.new_uidls += 1;
                }
            }
            Err(Error::Import { reason, .. }) => report.skipped.push((path, reason)),
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_are_opened_as_messages() {
        use std::os::unix::fs::symlink;
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("plain"), b"Subject: a\n\nb\n").unwrap();
        std::fs::create_dir(d.path().join("sub")).unwrap();
        symlink(d.path().join("plain"), d.path().join("link")).unwrap();
        let fifo = d.path().join("fifo");
        let status = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(status.success());
        let dir = File::open(d.path()).unwrap();
        let mut text = String::new();
        open_message(&dir, OsStr::new("plain"))
            .unwrap()
            .read_to_string(&mut text)
            .unwrap();
        assert_eq!(text, "Subject: a\n\nb\n");
        let refused = |name: &str| open_message(&dir, OsStr::new(name)).unwrap_err();
        assert_eq!(refused("link").raw_os_error(), Some(libc::ELOOP));
        // Opened without waiting for a writer, then refused.
        assert!(refused("fifo").to_string().contains("not a regular file"));
        assert!(refused("sub").to_string().contains("not a regular file"));
        assert!(open_message(&dir, OsStr::new("missing")).is_err());
    }

    #[test]
    fn uidlist_v3() {
        let t = "3 V1500000000 N4 G3085f01b7f11094c501100008c4a11c1\n\
                 1 :1500000001.M1P1.host,S=10,W=12:2,S\n\
                 2 W33 P0000abcd :1500000002.M2P2.host\n";
        let l = parse_uidlist(t).unwrap();
        assert_eq!(l.uid_validity, 1_500_000_000);
        assert_eq!(l.entries["1500000001.M1P1.host,S=10,W=12"].uid, 1);
        assert_eq!(
            l.entries["1500000002.M2P2.host"].pop3_uidl.as_deref(),
            Some("0000abcd")
        );
    }

    #[test]
    fn uidl_formats() {
        assert_eq!(
            format_uidl("%08Xu%08Xv", 26, 1_500_000_000, "x").unwrap(),
            "0000001a59682f00"
        );
        assert_eq!(format_uidl("%u.%v", 3, 7, "x").unwrap(), "3.7");
        assert_eq!(format_uidl("%f", 3, 7, "file").unwrap(), "file");
        assert!(format_uidl("%m", 3, 7, "x").is_err());
    }
}
