//! Turning a checked configuration into the shared state the cores run on:
//! tenant directory (passwd-files), TLS context, storage root, authenticator
//! and blocking pool. Every problem is collected with its location, so
//! `check-config` and start-up report them all at once.

use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use pop3sd_storage::{Domain, Store, StoreOptions};

use crate::auth::{passwd, Authenticator, Directory, Tenant, TenantPolicy, ThrottleConfig};
use crate::config::{Config, ConfigProblem};
use crate::engine::Limits;
use crate::runtime::{BlockingPool, Shared};

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
        let users = match passwd::load(&cfg.resolve(&t.passwd_file), &names) {
            Ok(entries) => entries
                .into_iter()
                .map(|e| (e.user, e.hash))
                .collect::<Vec<_>>(),
            Err(errs) => {
                for e in errs {
                    problems.push(problem(loc("passwd_file"), e));
                }
                continue;
            }
        };
        let policy = TenantPolicy {
            expire: t.expire.into(),
            login_delay: t.login_delay,
            allow_cleartext: t.allow_cleartext,
            allow_bare_user: t.allow_bare_user,
            apop: t.apop,
        };
        if t.apop && users.iter().any(|(_, h)| h.plaintext().is_none()) {
            problems.push(problem(
                loc("apop"),
                "APOP needs {PLAIN} passwords; users with other schemes cannot use it",
            ));
        }
        tenants.push(Tenant::new(domain, aliases, policy, users));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Directory::new(tenants).map_err(|e| vec![problem("tenant", e)])
}

/// Everything `check-config` checks: meaning, passwd-files, certificates.
pub fn check(cfg: &Config) -> Vec<ConfigProblem> {
    let mut problems = cfg.check();
    if let Err(p) = build_directory(cfg) {
        problems.extend(p);
    }
    if let Err(p) = crate::tls::build(cfg) {
        for x in p {
            if !problems.contains(&x) {
                problems.push(x);
            }
        }
    }
    problems
}

/// Builds the shared state from a configuration.
pub fn build(cfg: Config) -> Result<Arc<Shared>, Vec<ConfigProblem>> {
    let mut problems = cfg.check();
    let directory = build_directory(&cfg);
    let tls = crate::tls::build(&cfg);
    if let Err(p) = &directory {
        problems.extend(p.iter().cloned());
    }
    if let Err(p) = &tls {
        problems.extend(
            p.iter()
                .filter(|x| !problems.contains(x))
                .cloned()
                .collect::<Vec<_>>(),
        );
    }
    let (Ok(directory), Ok(tls), true) = (directory, tls, problems.is_empty()) else {
        return Err(problems);
    };
    let root = cfg.resolve(&cfg.storage_root);
    let store = Store::open(&root, StoreOptions::default())
        .map_err(|e| vec![problem("storage_root", e)])?;
    let pool = BlockingPool::new(cfg.runtime.blocking_threads)
        .map_err(|e| vec![problem("runtime.blocking_threads", e)])?;
    let throttle = ThrottleConfig {
        base_delay: Duration::from_millis(cfg.limits.failure_delay_ms),
        max_delay: Duration::from_millis(cfg.limits.max_failure_delay_ms),
        ..ThrottleConfig::default()
    };
    let limits = Limits {
        auth_timeout: Duration::from_secs(cfg.limits.auth_timeout_secs),
        idle_timeout: Duration::from_secs(cfg.limits.idle_timeout_secs),
        max_bad_commands: cfg.limits.max_bad_commands,
        max_auth_failures: cfg.limits.max_auth_failures,
        ..Limits::default()
    };
    Ok(Arc::new(Shared {
        store: Arc::new(store),
        auth: Authenticator::new(Arc::new(directory), throttle),
        tls,
        pool,
        limits,
        hostname: cfg.hostname.clone(),
        handshake_timeout: cfg.handshake_timeout(),
        write_timeout: Duration::from_secs(cfg.limits.idle_timeout_secs),
        stop: AtomicBool::new(false),
        config: cfg,
    }))
}

/// Loads, checks and builds in one step (what `serve` does).
pub fn from_file(path: &Path) -> Result<Arc<Shared>, String> {
    let cfg = Config::parse_file(path).map_err(|e| e.to_string())?;
    build(cfg).map_err(|problems| {
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
    })
}
