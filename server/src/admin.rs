//! Operator commands on a configuration: users, tenants, local delivery,
//! Maildir import and statistics. They work on the same files the server
//! reads (passwd-files, the config, the storage root); a running server
//! picks up user and tenant changes on its next reload (SIGHUP).
//!
//! Passwd-files are edited line by line (comments and Dovecot's extra fields
//! survive), under a lock file, and replaced atomically.

use std::io::Read;
use std::path::{Path, PathBuf};

use pop3sd_storage::maildir::{import_maildir, UidlSource};
use pop3sd_storage::{Address, Domain, PreparedMessage, Store, StoreOptions};

use crate::auth::passwd;
use crate::auth::StoredHash;
use crate::config::Config;
use crate::delivery::{self, TenantUsage};
use crate::lmtp::DeliveryResult;

/// Why an operator command failed; `exit_code` follows sysexits.h where
/// MTAs read it (`deliver`).
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Usage(String),
    #[error("unknown tenant {0}")]
    NoTenant(String),
    #[error("no such user {0}")]
    NoUser(String),
    #[error("user {0} already exists")]
    Exists(String),
    #[error("{0}")]
    Config(String),
    #[error("{0}")]
    Io(String),
    #[error("delivery to {0} failed temporarily: {1}")]
    TempFail(String, String),
    #[error("delivery to {0} refused: {1}")]
    Refused(String, String),
}

impl AdminError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            AdminError::Usage(_) => 64,     // EX_USAGE
            AdminError::NoUser(_) => 67,    // EX_NOUSER
            AdminError::NoTenant(_) => 68,  // EX_NOHOST
            AdminError::Refused(..) => 69,  // EX_UNAVAILABLE
            AdminError::TempFail(..) => 75, // EX_TEMPFAIL
            AdminError::Config(_) => 78,    // EX_CONFIG
            AdminError::Exists(_) | AdminError::Io(_) => 1,
        }
    }
}

fn load(config: &Path) -> Result<Config, AdminError> {
    Config::parse_file(config).map_err(|e| AdminError::Config(e.to_string()))
}

fn address(s: &str) -> Result<Address, AdminError> {
    Address::parse(s.as_bytes())
        .map_err(|e| AdminError::Usage(format!("{s:?} is not a valid user@domain: {e}")))
}

/// The tenant configuration owning a domain (or alias), and its names.
fn tenant_of<'a>(
    cfg: &'a Config,
    domain: &Domain,
) -> Result<(&'a crate::config::TenantConfig, Vec<Domain>), AdminError> {
    for t in &cfg.tenants {
        let names: Vec<Domain> = std::iter::once(&t.domain)
            .chain(t.aliases.iter())
            .filter_map(|n| Domain::parse(n).ok())
            .collect();
        if names.contains(domain) {
            return Ok((t, names));
        }
    }
    Err(AdminError::NoTenant(domain.to_string()))
}

fn store(cfg: &Config) -> Result<Store, AdminError> {
    Store::open(cfg.resolve(&cfg.storage_root), StoreOptions::default())
        .map_err(|e| AdminError::Io(e.to_string()))
}

/// Run as root, a command makes store files the server (running as the
/// storage root's owner) could not open: the tenant's directory and the
/// user's maildrop are handed to that owner after the command wrote them.
fn hand_over(cfg: &Config, addr: &Address) -> Result<(), AdminError> {
    if !crate::privileges::is_root() {
        return Ok(());
    }
    let root = cfg.resolve(&cfg.storage_root);
    let Some(owner) = crate::privileges::store_owner(&root) else {
        return Ok(());
    };
    let tenant = root.join(addr.domain.as_str());
    let maildrop = tenant.join(addr.local.as_str());
    for (path, deep) in [(&tenant, false), (&maildrop, true)] {
        crate::privileges::give_to(owner, path, deep).map_err(|e| {
            AdminError::Io(format!(
                "giving {} to uid {}: {e}",
                path.display(),
                owner.uid
            ))
        })?;
    }
    Ok(())
}

/// Reads a password: the first line of stdin.
pub fn read_password_stdin() -> Result<String, AdminError> {
    let mut s = String::new();
    std::io::stdin()
        .read_line(&mut s)
        .map_err(|e| AdminError::Io(format!("reading the password from stdin: {e}")))?;
    let pw = s.trim_end_matches(['\r', '\n']).to_string();
    if pw.is_empty() {
        return Err(AdminError::Usage("empty password".into()));
    }
    Ok(pw)
}

/// Applies `f` to a passwd-file's lines under its lock, then replaces the
/// file atomically (mode 0600).
fn edit_passwd(
    cfg: &Config,
    path: &Path,
    domains: &[Domain],
    f: impl FnOnce(&mut Vec<String>, &[passwd::PasswdEntry]) -> Result<(), AdminError>,
) -> Result<(), AdminError> {
    let _lock = pop3sd_storage::lock::FileLock::exclusive(&lock_path_of(path))
        .map_err(|e| AdminError::Io(e.to_string()))?;
    let (text, exists) = match std::fs::read_to_string(path) {
        Ok(t) => (t, true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), false),
        Err(e) => return Err(AdminError::Io(format!("{}: {e}", path.display()))),
    };
    let entries = passwd::parse(&text, domains).map_err(|errs| {
        AdminError::Config(format!(
            "{} has problems; fix them first:\n{}",
            path.display(),
            errs.iter()
                .map(|e| format!("  - {e}"))
                .collect::<Vec<_>>()
                .join("\n")
        ))
    })?;
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    f(&mut lines, &entries)?;
    let mut out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    // A new file is made readable by the server's user (as `tenant add`
    // makes one); a rewrite keeps the file's owner, group and mode
    // (replace_file): the service user must still be able to read it on
    // reload.
    if !exists {
        create_passwd_file(cfg, path)?;
    }
    pop3sd_storage::durable::replace_file(path, out.as_bytes())
        .map_err(|e| AdminError::Io(e.to_string()))
}

/// Index of the line defining `user` (bare or user@alias), if any.
fn user_line(lines: &[String], user: &str, domains: &[Domain]) -> Option<usize> {
    lines.iter().position(|l| {
        let name = l.split(':').next().unwrap_or("").trim();
        if name.starts_with('#') || name.is_empty() {
            return false;
        }
        let local = match name.rsplit_once('@') {
            Some((local, d)) if Domain::parse(d).is_ok_and(|d| domains.contains(&d)) => local,
            Some(_) => return false,
            None => name,
        };
        local.eq_ignore_ascii_case(user)
    })
}

const RELOAD_HINT: &str =
    "a running server picks this up on reload (systemctl reload pop3sd, or kill -HUP)";

/// The stored form of a new password: argon2id, or `{PLAIN}` in a tenant
/// that allows APOP, which needs the secret itself (the configuration check
/// refuses other schemes there, so another would stop every reload).
fn new_hash(
    tenant: &crate::config::TenantConfig,
    password: &str,
) -> Result<(StoredHash, &'static str), AdminError> {
    if tenant.apop {
        // Stored as it is, it must not end its passwd-file field or line.
        if password.contains(':') || password.chars().any(char::is_control) {
            return Err(AdminError::Usage(
                "this tenant allows APOP, so the password is stored as it is ({PLAIN}): it may hold no ':' and no control characters".into(),
            ));
        }
        let plain = StoredHash::parse(&format!("{{PLAIN}}{password}"))
            .map_err(|e| AdminError::Usage(format!("password: {e}")))?;
        return Ok((
            plain,
            " (stored {PLAIN}: the tenant allows APOP, which needs the password itself)",
        ));
    }
    let hash =
        StoredHash::new_argon2id(password.as_bytes()).map_err(|e| AdminError::Io(e.to_string()))?;
    Ok((hash, ""))
}

/// `user add`: a new user with an argon2id password (`{PLAIN}` where the
/// tenant allows APOP).
pub fn user_add(config: &Path, user: &str, password: &str) -> Result<String, AdminError> {
    let cfg = load(config)?;
    let addr = address(user)?;
    let (t, names) = tenant_of(&cfg, &addr.domain)?;
    let (hash, note) = new_hash(t, password)?;
    edit_passwd(
        &cfg,
        &cfg.resolve(&t.passwd_file),
        &names,
        |lines, entries| {
            if entries.iter().any(|e| e.user == addr.local) {
                return Err(AdminError::Exists(addr.to_string()));
            }
            lines.push(format!("{}:{}", addr.local, hash.to_field()));
            Ok(())
        },
    )?;
    let home = Address::new(
        addr.local.clone(),
        Domain::parse(&t.domain).map_err(|e| AdminError::Config(e.to_string()))?,
    );
    store(&cfg)?
        .ensure_maildrop(&home)
        .map_err(|e| AdminError::Io(e.to_string()))?;
    hand_over(&cfg, &home)?;
    Ok(format!("added {addr}{note}; {RELOAD_HINT}"))
}

/// `user passwd`: a new password for an existing user.
pub fn user_passwd(config: &Path, user: &str, password: &str) -> Result<String, AdminError> {
    let cfg = load(config)?;
    let addr = address(user)?;
    let (t, names) = tenant_of(&cfg, &addr.domain)?;
    let (hash, note) = new_hash(t, password)?;
    edit_passwd(&cfg, &cfg.resolve(&t.passwd_file), &names, |lines, _| {
        let i = user_line(lines, addr.local.as_str(), &names)
            .ok_or_else(|| AdminError::NoUser(addr.to_string()))?;
        // Keep the name as written and every field after the password.
        let mut fields: Vec<&str> = lines[i].splitn(3, ':').collect();
        let field = hash.to_field();
        if fields.len() < 2 {
            fields.push(&field);
        } else {
            fields[1] = &field;
        }
        lines[i] = fields.join(":");
        Ok(())
    })?;
    Ok(format!("password of {addr} changed{note}; {RELOAD_HINT}"))
}

/// `user del`: removes a user and, unless `keep_mail`, their maildrop.
pub fn user_del(config: &Path, user: &str, keep_mail: bool) -> Result<String, AdminError> {
    let cfg = load(config)?;
    let addr = address(user)?;
    let (t, names) = tenant_of(&cfg, &addr.domain)?;
    edit_passwd(&cfg, &cfg.resolve(&t.passwd_file), &names, |lines, _| {
        let i = user_line(lines, addr.local.as_str(), &names)
            .ok_or_else(|| AdminError::NoUser(addr.to_string()))?;
        lines.remove(i);
        Ok(())
    })?;
    if !keep_mail {
        let canonical = Address::new(
            addr.local.clone(),
            Domain::parse(&t.domain).map_err(|e| AdminError::Config(e.to_string()))?,
        );
        match store(&cfg)?.delete_maildrop(&canonical) {
            Ok(()) | Err(pop3sd_storage::Error::NoMaildrop(_)) => {}
            Err(e) => {
                return Err(AdminError::Io(format!(
                    "user removed, but the maildrop was not: {e}"
                )))
            }
        }
    }
    Ok(format!("removed {addr}; {RELOAD_HINT}"))
}

/// `user list`: users of one tenant, or of all.
pub fn user_list(config: &Path, domain: Option<&str>) -> Result<Vec<String>, AdminError> {
    let cfg = load(config)?;
    let dir = crate::startup::build_directory(&cfg).map_err(|p| {
        AdminError::Config(
            p.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let mut out = Vec::new();
    for t in dir.tenants() {
        if let Some(d) = domain {
            let d = Domain::parse(d).map_err(|e| AdminError::Usage(e.to_string()))?;
            if !t.names().any(|n| n == &d) {
                continue;
            }
        }
        for u in t.user_names() {
            out.push(format!("{u}@{}", t.domain));
        }
    }
    if let Some(d) = domain {
        if out.is_empty() && !cfg.tenants.iter().any(|t| t.domain.eq_ignore_ascii_case(d)) {
            return Err(AdminError::NoTenant(d.to_string()));
        }
    }
    Ok(out)
}

/// `tenant add`: appends a `[[tenant]]` section to the config file (its
/// comments and layout are kept) and creates the passwd-file and the
/// tenant's storage directory.
pub fn tenant_add(
    config: &Path,
    domain: &str,
    certificate: &Path,
    private_key: &Path,
    passwd_file: Option<&Path>,
    aliases: &[String],
) -> Result<String, AdminError> {
    // Two at once must not both read the old file and each write it back
    // with only their own section.
    let _lock = pop3sd_storage::lock::FileLock::exclusive(&lock_path_of(config))
        .map_err(|e| AdminError::Io(e.to_string()))?;
    let cfg = load(config)?;
    let d = Domain::parse(domain).map_err(|e| AdminError::Usage(format!("{domain:?}: {e}")))?;
    for name in std::iter::once(domain).chain(aliases.iter().map(String::as_str)) {
        let n = Domain::parse(name).map_err(|e| AdminError::Usage(format!("{name:?}: {e}")))?;
        if tenant_of(&cfg, &n).is_ok() {
            return Err(AdminError::Exists(format!("tenant for {n}")));
        }
    }
    let ck = crate::tls::certs::load_certified_key(certificate, private_key)
        .map_err(|e| AdminError::Usage(e.to_string()))?;
    let cert_names = ck
        .end_entity_cert()
        .map(crate::tls::certificate_names)
        .unwrap_or_default();
    for name in std::iter::once(domain).chain(aliases.iter().map(String::as_str)) {
        if !cert_names
            .iter()
            .any(|c| crate::tls::name_covers(c, &name.to_ascii_lowercase()))
        {
            return Err(AdminError::Usage(format!(
                "{} does not cover {name} (it names {})",
                certificate.display(),
                cert_names.join(", ")
            )));
        }
    }
    let passwd_path = match passwd_file {
        Some(p) => p.to_path_buf(),
        None => config
            .parent()
            .unwrap_or(Path::new("."))
            .join("passwd")
            .join(d.as_str()),
    };
    // Paths given on the command line are the caller's (relative to the
    // working directory); written into the configuration they must not be
    // read as relative to its directory. Links are kept: certbot's
    // `live/` names lead to each renewal's files, and a reload after a
    // renewal must read the new ones.
    let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let quote = |p: &Path| toml::Value::String(abs(p).display().to_string()).to_string();
    let mut section = format!(
        "\n[[tenant]]\ndomain = {}\ncertificate = {}\nprivate_key = {}\npasswd_file = {}\n",
        toml::Value::String(d.to_string()),
        quote(certificate),
        quote(private_key),
        quote(&passwd_path)
    );
    if !aliases.is_empty() {
        section.push_str(&format!(
            "aliases = [{}]\n",
            aliases
                .iter()
                .map(|a| toml::Value::String(a.to_ascii_lowercase()).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    let mut text = std::fs::read_to_string(config)
        .map_err(|e| AdminError::Io(format!("{}: {e}", config.display())))?;
    text.push_str(&section);
    // The passwd-file first: the check below wants it there.
    if let Some(parent) = passwd_path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| AdminError::Io(format!("{}: {e}", parent.display())))?;
    }
    let created = !passwd_path.exists();
    if created {
        create_passwd_file(&cfg, &passwd_path)?;
    }
    // The result must still be a valid configuration before it replaces the
    // old one; if not, the empty passwd-file made for it goes too.
    let checked = match toml::from_str::<Config>(&text) {
        Err(e) => Err(format!("the new section would not parse: {e}")),
        Ok(mut next) => {
            next.base_dir = cfg.base_dir.clone();
            let problems = next.check();
            if problems.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "the configuration would not be valid with this tenant:\n{}",
                    problems
                        .iter()
                        .map(|p| p.to_string())
                        .collect::<Vec<_>>()
                        .join("\n")
                ))
            }
        }
    };
    if let Err(why) = checked {
        if created {
            let _ = std::fs::remove_file(&passwd_path);
        }
        return Err(AdminError::Config(why));
    }
    pop3sd_storage::durable::replace_file(config, text.as_bytes())
        .map_err(|e| AdminError::Io(e.to_string()))?;
    store(&cfg)?
        .create_tenant(&d)
        .map_err(|e| AdminError::Io(e.to_string()))?;
    Ok(format!("added tenant {d}; {RELOAD_HINT}"))
}

/// `path` with `.lock` added: the lock file guarding its edits.
fn lock_path_of(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".lock");
    PathBuf::from(p)
}

/// Creates an empty passwd-file the server can read once it runs as its
/// own user: made by root, it is `root:<group>` mode 0640 (the group the
/// server runs as: `group`, else `user`'s; without either, the storage
/// root's), as
/// docs/operations.md advises; otherwise it is the caller's, mode 0600.
fn create_passwd_file(cfg: &Config, path: &Path) -> Result<(), AdminError> {
    use std::os::unix::fs::PermissionsExt;
    let io = |e: std::io::Error| AdminError::Io(format!("{}: {e}", path.display()));
    // The group first: an unknown `user` or `group` leaves no file behind
    // (one of root's alone, which a later run would keep as it found it).
    let group = if crate::privileges::is_root() {
        match crate::privileges::target(cfg) {
            Ok(Some(id)) => Some(id.gid),
            Ok(None) => {
                crate::privileges::store_owner(&cfg.resolve(&cfg.storage_root)).map(|o| o.gid)
            }
            Err(p) => return Err(AdminError::Config(p.to_string())),
        }
    } else {
        None
    };
    pop3sd_storage::durable::replace_file(path, b"").map_err(|e| AdminError::Io(e.to_string()))?;
    let mode = match group {
        Some(gid) => {
            std::os::unix::fs::chown(path, None, Some(gid)).map_err(|e| {
                let _ = std::fs::remove_file(path);
                io(e)
            })?;
            0o640
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| {
        let _ = std::fs::remove_file(path);
        io(e)
    })
}

/// `tenant list`: domains with aliases and user counts.
pub fn tenant_list(config: &Path) -> Result<Vec<String>, AdminError> {
    let cfg = load(config)?;
    let dir = crate::startup::build_directory(&cfg).map_err(|p| {
        AdminError::Config(
            p.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    Ok(dir
        .tenants()
        .iter()
        .map(|t| {
            let aliases: Vec<String> = t.aliases.iter().map(|a| a.to_string()).collect();
            format!(
                "{} users={}{}",
                t.domain,
                t.user_count(),
                if aliases.is_empty() {
                    String::new()
                } else {
                    format!(" aliases={}", aliases.join(","))
                }
            )
        })
        .collect())
}

/// `deliver`: one message from stdin to one user, with quota and size
/// checks (for procmail- or sieve-style setups, like dovecot-lda).
pub fn deliver(config: &Path, user: &str, input: &mut dyn Read) -> Result<String, AdminError> {
    let cfg = load(config)?;
    let addr = address(user)?;
    let dir = crate::startup::build_directory(&cfg).map_err(|p| {
        AdminError::Config(
            p.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let found = dir.user(&addr).ok_or_else(|| {
        if dir.tenant(&addr.domain).is_some() {
            AdminError::NoUser(addr.to_string())
        } else {
            AdminError::NoTenant(addr.domain.to_string())
        }
    })?;
    let limit = found.tenant.policy.max_message_size;
    let mut raw = Vec::new();
    input
        .take(limit + 1)
        .read_to_end(&mut raw)
        .map_err(|e| AdminError::TempFail(addr.to_string(), format!("reading the message: {e}")))?;
    if raw.len() as u64 > limit {
        return Err(AdminError::Refused(
            addr.to_string(),
            format!("message larger than {limit} bytes"),
        ));
    }
    let msg = PreparedMessage::from_raw(&raw);
    // An MTA's pipe bounces mail on any status but EX_TEMPFAIL and a few
    // others: a store it cannot open now (permissions, a disk error, a
    // FORMAT from a newer pop3sd) must have the mail retried, not bounced.
    let store = store(&cfg)
        .map_err(|e| AdminError::TempFail(addr.to_string(), format!("opening the store: {e}")))?;
    let delivered = delivery::deliver(
        &store,
        &dir,
        &TenantUsage::default(),
        &found.address,
        &msg,
        raw.len() as u64,
    );
    // The delivery's outcome is what the MTA must hear: a message that is
    // in the maildrop must not be bounced (nor retried, and so duplicated)
    // because handing the files to the server's user failed afterwards.
    if let Err(e) = hand_over(&cfg, &found.address) {
        tracing::warn!(user = %found.address, error = %e, "the maildrop's files stay root's: the server may not open them until they are given to the store's owner");
    }
    match delivered {
        DeliveryResult::Delivered => Ok(format!("delivered to {}", found.address)),
        DeliveryResult::OverQuota { permanent: true } => {
            Err(AdminError::Refused(addr.to_string(), "over quota".into()))
        }
        DeliveryResult::OverQuota { permanent: false } => {
            Err(AdminError::TempFail(addr.to_string(), "over quota".into()))
        }
        DeliveryResult::TooBig => Err(AdminError::Refused(
            addr.to_string(),
            "message too big".into(),
        )),
        DeliveryResult::TempFail(why) => Err(AdminError::TempFail(addr.to_string(), why)),
    }
}

/// `import-maildir`: a Maildir into a user's maildrop, keeping UIDLs.
pub fn import(
    config: &Path,
    user: &str,
    maildir: &Path,
    uidl: &UidlSource,
) -> Result<String, AdminError> {
    let cfg = load(config)?;
    let addr = address(user)?;
    let dir = crate::startup::build_directory(&cfg).map_err(|p| {
        AdminError::Config(
            p.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let found = dir
        .user(&addr)
        .ok_or_else(|| AdminError::NoUser(addr.to_string()))?;
    let store = store(&cfg)?;
    let md = store
        .ensure_maildrop(&found.address)
        .map_err(|e| AdminError::Io(e.to_string()))?;
    let imported = import_maildir(&md, maildir, uidl);
    hand_over(&cfg, &found.address)?;
    let r = imported.map_err(|e| AdminError::Usage(e.to_string()))?;
    let mut out = format!(
        "imported {} message(s) into {} ({} with their old UIDL, {} with a new one)",
        r.imported, found.address, r.kept_uidls, r.new_uidls
    );
    for (path, why) in &r.skipped {
        out.push_str(&format!("\nskipped {}: {why}", path.display()));
    }
    Ok(out)
}

/// One tenant's figures for `stats`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TenantStats {
    pub domain: String,
    pub users: usize,
    pub messages: u64,
    pub bytes: u64,
    pub quota_messages: u64,
    pub quota_bytes: u64,
    /// Users at or above 90% of their own quota.
    pub users_near_quota: Vec<String>,
}

/// `stats`: per tenant, users, messages, bytes and quota use.
pub fn stats(config: &Path, domain: Option<&str>) -> Result<Vec<TenantStats>, AdminError> {
    let cfg = load(config)?;
    let dir = crate::startup::build_directory(&cfg).map_err(|p| {
        AdminError::Config(
            p.iter()
                .map(|x| x.to_string())
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    let store = store(&cfg)?;
    let mut out = Vec::new();
    for t in dir.tenants() {
        if let Some(d) = domain {
            if !t.names().any(|n| n.as_str().eq_ignore_ascii_case(d)) {
                continue;
            }
        }
        let mut s = TenantStats {
            domain: t.domain.to_string(),
            users: t.user_count(),
            messages: 0,
            bytes: 0,
            quota_messages: t.policy.tenant_quota.messages,
            quota_bytes: t.policy.tenant_quota.bytes,
            users_near_quota: Vec::new(),
        };
        for u in t.user_names() {
            let addr = Address::new(u.clone(), t.domain.clone());
            let Ok(st) = store.maildrop(&addr).and_then(|m| m.stats()) else {
                continue;
            };
            s.messages += st.messages;
            s.bytes += st.bytes;
            let q = t.quota_of(u);
            let near = (q.messages > 0 && st.messages * 10 >= q.messages * 9)
                || (q.bytes > 0 && st.bytes * 10 >= q.bytes * 9);
            if near {
                s.users_near_quota.push(addr.to_string());
            }
        }
        out.push(s);
    }
    if out.is_empty() {
        if let Some(d) = domain {
            return Err(AdminError::NoTenant(d.to_string()));
        }
    }
    Ok(out)
}
