//! Turning a configuration into the state the cores run on, and replacing
//! it on reload: tenant directory (passwd-files), TLS context, limits.
//! Every problem is collected with its location, so `check-config`, start-up
//! and a refused reload report them all at once.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pop3sd_storage::{Domain, Store, StoreOptions};

use crate::auth::directory::Quota;
use crate::auth::{passwd, Authenticator, Directory, Tenant, TenantPolicy, ThrottleConfig};
use crate::config::{Config, ConfigProblem, QuotaExceeded};
use crate::engine::Limits;
use crate::proxy::TrustedNetworks;
use crate::runtime::{BlockingPool, Generation, Shared};

fn problem(location: impl Into<String>, message: impl ToString) -> ConfigProblem {
    ConfigProblem {
        location: location.into(),
        message: message.to_string(),
    }
}

/// Reads every tenant's passwd-file into a directory.
pub fn build_directory(cfg: &Config) -> Result<Directory, Vec<ConfigProblem>> {
    let mut problems = Vec::new();
    let mut tenants = Vec::new();
    for (i, t) in cfg.tenants.iter().enumerate() {
        let loc = |f: &str| format!("tenant[{i}] ({}).{f}", t.domain);
        let Ok(domain) = Domain::parse(&t.domain) else {
            continue; // reported by Config::check
        };
        let aliases: Vec<Domain> = t
            .aliases
            .iter()
            .filter_map(|a| Domain::parse(a).ok())
            .collect();
        let mut names = vec![domain.clone()];
        names.extend(aliases.iter().cloned());
        let path = cfg.resolve(&t.passwd_file);
        if let Some(why) = crate::config::file_problem("passwd_file", &path) {
            problems.push(problem(loc("passwd_file"), why));
            continue;
        }
        let entries = match passwd::load(&path, &names) {
            Ok(entries) => entries,
            Err(errs) => {
                for e in errs {
                    problems.push(problem(loc("passwd_file"), e));
                }
                continue;
            }
        };
        let mut quotas = Vec::new();
        for e in &entries {
            if let Err(why) = passwd::check_access_fields(e) {
                problems.push(problem(
                    loc("passwd_file"),
                    format!("user {}: {why}", e.user),
                ));
            }
            match passwd::quota_of(e) {
                Ok(Some(q)) => quotas.push((e.user.clone(), q)),
                Ok(None) => {}
                Err(why) => problems.push(problem(
                    loc("passwd_file"),
                    format!("user {}: {why}", e.user),
                )),
            }
        }
        let users: Vec<_> = entries.into_iter().map(|e| (e.user, e.hash)).collect();
        let policy = TenantPolicy {
            expire: t.expire.into(),
            login_delay: t.login_delay,
            allow_cleartext: t.allow_cleartext,
            allow_bare_user: t.allow_bare_user,
            apop: t.apop,
            max_message_size: t.max_message_size,
            user_quota: Quota {
                messages: t.quota_messages,
                bytes: t.quota_bytes,
            },
            tenant_quota: Quota {
                messages: t.tenant_quota_messages,
                bytes: t.tenant_quota_bytes,
            },
            quota_permanent: t.quota_exceeded == QuotaExceeded::Permanent,
        };
        if t.apop && users.iter().any(|(_, h)| h.plaintext().is_none()) {
            problems.push(problem(
                loc("apop"),
                "APOP needs {PLAIN} passwords; users with other schemes cannot use it",
            ));
        }
        let mut tenant = Tenant::new(domain, aliases, policy, users);
        for (u, q) in quotas {
            tenant.set_quota(u, q);
        }
        tenants.push(tenant);
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Directory::new(tenants).map_err(|e| vec![problem("tenant", e)])
}

fn extend_unique(into: &mut Vec<ConfigProblem>, more: Vec<ConfigProblem>) {
    for p in more {
        if !into.contains(&p) {
            into.push(p);
        }
    }
}

/// Everything `check-config` checks: meaning, passwd-files, certificates
/// (keys match, names cover every tenant domain), file permissions, and
/// that `user` and `group` exist ([`check_warnings`] has the rest).
pub fn check(cfg: &Config) -> Vec<ConfigProblem> {
    let mut problems = cfg.check();
    if let Err(p) = build_directory(cfg) {
        extend_unique(&mut problems, p);
    }
    if let Err(p) = crate::tls::build(cfg, None) {
        extend_unique(&mut problems, p);
    }
    extend_unique(&mut problems, crate::privileges::permissions(cfg));
    // `serve` looks them up to switch to after binding.
    if let Err(p) = crate::privileges::target(cfg) {
        extend_unique(&mut problems, vec![p]);
    }
    problems
}

/// What `check-config` warns of without failing: what `serve` would refuse
/// if started as root (this check may run as root for a server that does
/// not), and files the service user could not read again on reload (from
/// the mode bits, which an ACL may overrule).
pub fn check_warnings(cfg: &Config) -> Vec<ConfigProblem> {
    let mut w = cfg.warnings();
    if crate::privileges::target(cfg).is_ok() {
        for p in crate::privileges::root_policy(cfg) {
            w.push(problem(
                p.location,
                format!("if started as root: {}", p.message),
            ));
        }
    }
    extend_unique(&mut w, crate::privileges::unreadable_after_drop(cfg));
    w
}

/// Builds one generation (directory, TLS, limits) from a configuration.
pub fn build_generation(
    cfg: Config,
    previous: Option<&Generation>,
) -> Result<Generation, Vec<ConfigProblem>> {
    let mut problems = cfg.check();
    let directory = build_directory(&cfg);
    let tls = crate::tls::build(&cfg, previous.map(|g| &g.tls));
    if let Err(p) = &directory {
        extend_unique(&mut problems, p.clone());
    }
    if let Err(p) = &tls {
        extend_unique(&mut problems, p.clone());
    }
    extend_unique(&mut problems, crate::privileges::permissions(&cfg));
    let (Ok(directory), Ok(tls), true) = (directory, tls, problems.is_empty()) else {
        return Err(problems);
    };
    let trusted_proxies = TrustedNetworks::parse(&cfg.proxy.trusted_networks)
        .map_err(|e| vec![problem("proxy", e)])?;
    let limits = Limits {
        auth_timeout: Duration::from_secs(cfg.limits.auth_timeout_secs),
        idle_timeout: Duration::from_secs(cfg.limits.idle_timeout_secs),
        max_bad_commands: cfg.limits.max_bad_commands,
        max_auth_failures: cfg.limits.max_auth_failures,
        ..Limits::default()
    };
    for w in cfg.warnings() {
        tracing::warn!("{w}");
    }
    Ok(Generation {
        number: previous.map_or(1, |g| g.number + 1),
        directory: Arc::new(directory),
        tls,
        limits,
        handshake_timeout: cfg.handshake_timeout(),
        write_timeout: Duration::from_secs(cfg.limits.write_timeout_secs),
        trusted_proxies,
        config: cfg,
    })
}

/// Builds the shared state from a configuration (read from `path`, if any,
/// which SIGHUP reads again).
pub fn build(cfg: Config, path: Option<PathBuf>) -> Result<Arc<Shared>, Vec<ConfigProblem>> {
    let mut root_problems = crate::privileges::root_policy(&cfg);
    let generation = match build_generation(cfg, None) {
        Ok(g) => g,
        Err(mut p) => {
            p.append(&mut root_problems);
            return Err(p);
        }
    };
    if !root_problems.is_empty() {
        return Err(root_problems);
    }
    // It starts, but would not reload: said at once, not at the first
    // certificate renewal.
    for p in crate::privileges::unreadable_after_drop(&generation.config) {
        tracing::warn!("{p}");
    }
    let cfg = &generation.config;
    let root = cfg.resolve(&cfg.storage_root);
    let store = Store::open(&root, StoreOptions::default())
        .map_err(|e| vec![problem("storage_root", e)])?;
    // Started as root on a new storage root: root just made it, and the
    // user the server switches to must own it.
    let root_owned = crate::privileges::store_owner(&root).is_none();
    if let (true, true, Ok(Some(id))) = (
        crate::privileges::is_root(),
        root_owned,
        crate::privileges::target(cfg),
    ) {
        crate::privileges::give_to(id, &root, true).map_err(|e| {
            vec![problem(
                "storage_root",
                format!("cannot give {} to uid {}: {e}", root.display(), id.uid),
            )]
        })?;
    }
    let pool = BlockingPool::new(cfg.runtime.blocking_threads)
        .map_err(|e| vec![problem("runtime.blocking_threads", e)])?;
    let auth = Authenticator::new(ThrottleConfig {
        base_delay: Duration::from_millis(cfg.limits.failure_delay_ms),
        max_delay: Duration::from_millis(cfg.limits.max_failure_delay_ms),
        warn_score: f64::from(cfg.limits.failure_log_threshold.max(1)),
        ..ThrottleConfig::default()
    });
    Ok(Arc::new(Shared::new(
        Arc::new(store),
        pool,
        auth,
        generation,
        path,
    )))
}

/// Formats problems for a log line or an error exit.
pub fn describe(path: &Path, problems: &[ConfigProblem]) -> String {
    format!(
        "{} has {} problem(s):\n{}",
        path.display(),
        problems.len(),
        problems
            .iter()
            .map(|p| format!("  - {p}"))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// Loads, checks and builds in one step (what `serve` does).
pub fn from_file(path: &Path) -> Result<Arc<Shared>, String> {
    let cfg = Config::parse_file(path).map_err(|e| e.to_string())?;
    build(cfg, Some(path.to_path_buf())).map_err(|problems| describe(path, &problems))
}

/// Reads the configuration file again and swaps it in (SIGHUP). A broken
/// file changes nothing. Listeners, the storage root and the runtime cannot
/// change without a restart; such changes are refused with that reason.
pub fn reload(shared: &Shared) -> Result<u64, String> {
    let Some(path) = &shared.config_path else {
        return Err("this server was not started from a configuration file".into());
    };
    let cfg = Config::parse_file(path).map_err(|e| e.to_string())?;
    let current = shared.generation();
    let old = &current.config;
    let mut fixed = Vec::new();
    if cfg.storage_root != old.storage_root {
        fixed.push(problem("storage_root", "cannot change without a restart"));
    }
    let addrs = |c: &Config| {
        c.listeners
            .iter()
            .map(|l| {
                (
                    l.address,
                    l.kind,
                    l.client_certificates,
                    l.proxy_protocol,
                    l.tcp_congestion.clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    if addrs(&cfg) != addrs(old) {
        fixed.push(problem(
            "listener",
            "listeners cannot change without a restart",
        ));
    }
    // Cores, rings, buffers and sockets are set up once, at start-up.
    if cfg.runtime != old.runtime {
        fixed.push(problem(
            "runtime",
            "the [runtime] section cannot change without a restart",
        ));
    }
    // Set up once, at start-up: the failure throttle and each core's
    // authentication cache, the user the process runs as, each core's
    // handshake gate and buffers, and the metrics socket. A reload that
    // took them silently would leave the old values in force; each one
    // changed is named.
    let start_up_only = [
        (
            "limits.failure_delay_ms",
            cfg.limits.failure_delay_ms != old.limits.failure_delay_ms,
        ),
        (
            "limits.max_failure_delay_ms",
            cfg.limits.max_failure_delay_ms != old.limits.max_failure_delay_ms,
        ),
        (
            "limits.failure_log_threshold",
            cfg.limits.failure_log_threshold != old.limits.failure_log_threshold,
        ),
        (
            "limits.auth_cache_size",
            cfg.limits.auth_cache_size != old.limits.auth_cache_size,
        ),
        (
            "limits.auth_cache_ttl_secs",
            cfg.limits.auth_cache_ttl_secs != old.limits.auth_cache_ttl_secs,
        ),
        (
            "limits.max_handshakes_per_core",
            cfg.limits.max_handshakes_per_core != old.limits.max_handshakes_per_core,
        ),
        ("user", cfg.user != old.user),
        ("group", cfg.group != old.group),
        (
            "tls.record_size",
            cfg.tls.record_size != old.tls.record_size,
        ),
        (
            "metrics.address",
            cfg.metrics.address != old.metrics.address,
        ),
    ];
    for (key, _) in start_up_only.iter().filter(|(_, changed)| *changed) {
        fixed.push(problem(*key, "cannot change without a restart"));
    }
    // Its sockets are bound and its connection limit set up at start-up.
    if cfg.lmtp != old.lmtp {
        fixed.push(problem(
            "lmtp",
            "the [lmtp] section cannot change without a restart",
        ));
    }
    if !fixed.is_empty() {
        return Err(describe(path, &fixed));
    }
    let next = build_generation(cfg, Some(&current)).map_err(|p| describe(path, &p))?;
    let n = next.number;
    shared.current.store(Arc::new(next));
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::{DemoOptions, DemoScheme};

    /// A reload keeps the session cache and random ticket keys (clients
    /// still resume), except where it changes their size or lifetime, which
    /// would otherwise be ignored.
    #[test]
    fn a_reload_keeps_resumption_state_unless_its_settings_change() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DemoOptions {
            dir: Some(dir.path().join("demo")),
            port: 0,
            pop3_port: 0,
            external_port: 0,
            users: 1,
            messages: 1,
            scheme: DemoScheme::Plain,
            cores: 1,
            message_size: 0,
            maildir: None,
        };
        let (cfg, _) = crate::demo::prepare(&opts).unwrap();
        let first = build_generation(cfg.clone(), None).unwrap();
        let same = build_generation(cfg.clone(), Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&same.tls.sessions, &first.tls.sessions));
        assert!(Arc::ptr_eq(&same.tls.ticketer, &first.tls.ticketer));

        let mut bigger = cfg.clone();
        bigger.tls.session_cache_size += 1;
        let next = build_generation(bigger, Some(&first)).unwrap();
        assert!(!Arc::ptr_eq(&next.tls.sessions, &first.tls.sessions));
        assert!(Arc::ptr_eq(&next.tls.ticketer, &first.tls.ticketer));

        let mut longer = cfg;
        longer.tls.ticket_key_lifetime_secs += 3600;
        let next = build_generation(longer, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&next.tls.sessions, &first.tls.sessions));
        assert!(!Arc::ptr_eq(&next.tls.ticketer, &first.tls.ticketer));
    }
}
