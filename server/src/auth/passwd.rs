//! Dovecot-compatible passwd-files, one per tenant.
//!
//! Each line is `user:{SCHEME}hash:uid:gid:gecos:home:shell:extra_fields`;
//! only the first two fields matter to pop3sd (the rest are kept so that a
//! file rewritten by `pop3sd user` stays usable by Dovecot). The user may be
//! written bare or as `user@domain` (the tenant's domain or an alias).
//! Blank lines and `#` comments are skipped.

use std::path::Path;

use pop3sd_storage::{Domain, LocalPart};

use super::scheme::{SchemeError, StoredHash};

/// One user of a passwd-file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    pub user: LocalPart,
    pub hash: StoredHash,
    /// Fields 3 and later, verbatim (joined by ':').
    pub rest: String,
}

/// A problem in a passwd-file, with its line number (1-based).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}")]
pub struct PasswdError {
    pub line: usize,
    pub reason: String,
}

/// Parses a passwd-file's text. `domains` are the names the tenant answers
/// to; a `user@domain` line for another domain is an error (it would be a
/// path from one tenant to another). Every problem is reported, not just
/// the first.
pub fn parse(text: &str, domains: &[Domain]) -> Result<Vec<PasswdEntry>, Vec<PasswdError>> {
    let mut entries: Vec<PasswdEntry> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut errors = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let trimmed = raw.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let mut err = |reason: String| errors.push(PasswdError { line, reason });
        let mut fields = trimmed.splitn(3, ':');
        let (Some(name), Some(pw)) = (fields.next(), fields.next()) else {
            err("expected user:password".into());
            continue;
        };
        let rest = fields.next().unwrap_or("").to_string();
        let local = match name.rsplit_once('@') {
            Some((local, domain)) => match Domain::parse(domain) {
                Ok(d) if domains.contains(&d) => local,
                Ok(d) => {
                    err(format!("user {name:?} belongs to {d}, not to this tenant"));
                    continue;
                }
                Err(e) => {
                    err(format!("user {name:?}: domain: {e}"));
                    continue;
                }
            },
            None => name,
        };
        let user = match LocalPart::parse(local) {
            Ok(u) => u,
            Err(e) => {
                err(format!("user {name:?}: {e}"));
                continue;
            }
        };
        let hash = match StoredHash::parse(pw) {
            Ok(h) => h,
            Err(SchemeError::Unsupported(s)) => {
                err(format!("user {user}: unsupported password scheme {s}"));
                continue;
            }
            Err(e) => {
                err(format!("user {user}: {e}"));
                continue;
            }
        };
        // A set, not a scan of the entries: a migrated tenant's file can
        // hold hundreds of thousands of users.
        if !seen.insert(user.clone()) {
            err(format!("user {user} is listed twice"));
            continue;
        }
        entries.push(PasswdEntry { user, hash, rest });
    }
    if errors.is_empty() {
        Ok(entries)
    } else {
        Err(errors)
    }
}

/// Reads and parses a passwd-file; errors name the file.
pub fn load(path: &Path, domains: &[Domain]) -> Result<Vec<PasswdEntry>, Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| vec![format!("{}: {e}", path.display())])?;
    parse(&text, domains).map_err(|errs| {
        errs.into_iter()
            .map(|e| format!("{}:{}: {}", path.display(), e.line, e.reason))
            .collect()
    })
}

/// A user's quota from the passwd-file's extra fields, in Dovecot's syntax:
/// `userdb_quota_rule=*:storage=100M` and/or `userdb_quota_rule2=*:messages=1000`
/// (storage suffixes B, K, M, G, T; binary multiples, as Dovecot uses).
pub fn quota_of(entry: &PasswdEntry) -> Result<Option<super::directory::Quota>, String> {
    // rest = uid:gid:gecos:home:shell:extra (the extra fields may hold ':').
    let Some(extra) = entry.rest.splitn(6, ':').nth(5) else {
        return Ok(None);
    };
    let mut quota = super::directory::Quota::default();
    let mut any = false;
    for field in extra.split_whitespace() {
        let Some((key, value)) = field.split_once('=') else {
            continue;
        };
        if !key.starts_with("userdb_quota_rule") && !key.starts_with("quota_rule") {
            continue;
        }
        let rule = value
            .strip_prefix("*:")
            .ok_or_else(|| format!("{field}: only `*:` rules are supported"))?;
        for part in rule.split(':') {
            let (what, amount) = part
                .split_once('=')
                .ok_or_else(|| format!("{field}: expected storage=N or messages=N"))?;
            match what {
                "storage" | "bytes" => {
                    quota.bytes =
                        parse_size(amount).ok_or_else(|| format!("{field}: bad size {amount:?}"))?
                }
                "messages" => {
                    quota.messages = amount
                        .parse()
                        .map_err(|_| format!("{field}: bad count {amount:?}"))?
                }
                other => return Err(format!("{field}: unknown quota resource {other:?}")),
            }
            any = true;
        }
    }
    Ok(any.then_some(quota))
}

/// Dovecot passdb extra fields that restrict or redirect a login. pop3sd
/// does not implement them; a user carrying one is refused at load rather
/// than let in where Dovecot would have kept them out.
const RESTRICTING_FIELDS: [&str; 8] = [
    "allow_nets",
    "allow_real_nets",
    "nologin",
    "noauthenticate",
    "deny",
    "proxy",
    "proxy_maybe",
    "host",
];

/// Refuses an entry whose extra fields would restrict its logins under
/// Dovecot (see [`RESTRICTING_FIELDS`]), naming the field.
pub fn check_access_fields(entry: &PasswdEntry) -> Result<(), String> {
    let Some(extra) = entry.rest.splitn(6, ':').nth(5) else {
        return Ok(());
    };
    for field in extra.split_whitespace() {
        let key = field.split_once('=').map_or(field, |(k, _)| k);
        if RESTRICTING_FIELDS.contains(&key) {
            return Err(format!(
                "extra field `{field}` restricts or redirects this user's logins under Dovecot, which pop3sd does not implement: remove it (or the user) rather than let the user in where Dovecot would not"
            ));
        }
    }
    Ok(())
}

/// Parses "100", "100B", "64K", "10M", "2G", "1T".
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (digits, mult) = match s.chars().last()? {
        'b' | 'B' => (&s[..s.len() - 1], 1u64),
        'k' | 'K' => (&s[..s.len() - 1], 1 << 10),
        'm' | 'M' => (&s[..s.len() - 1], 1 << 20),
        'g' | 'G' => (&s[..s.len() - 1], 1 << 30),
        't' | 'T' => (&s[..s.len() - 1], 1 << 40),
        _ => (s, 1),
    };
    digits.parse::<u64>().ok()?.checked_mul(mult)
}

/// Serializes entries back into passwd-file text.
pub fn render(entries: &[PasswdEntry]) -> String {
    let mut out = String::new();
    for e in entries {
        out.push_str(e.user.as_str());
        out.push(':');
        out.push_str(&e.hash.to_field());
        if !e.rest.is_empty() {
            out.push(':');
            out.push_str(&e.rest);
        }
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn domains() -> Vec<Domain> {
        vec![
            Domain::parse("example.com").unwrap(),
            Domain::parse("example.net").unwrap(),
        ]
    }

    #[test]
    fn dovecot_lines() {
        let text =
            "# comment\n\nalice:{PLAIN}pw:1000:1000::/home/alice::\nBob@example.net:{PLAIN}x\n";
        let e = parse(text, &domains()).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].user.as_str(), "alice");
        assert_eq!(e[0].rest, "1000:1000::/home/alice::");
        assert_eq!(e[1].user.as_str(), "bob");
        assert!(e[1].hash.verify(b"x"));
        let again = parse(&render(&e), &domains()).unwrap();
        assert_eq!(again, e);
    }

    #[test]
    fn quota_extra_fields() {
        let text = "a:{PLAIN}x:::::: userdb_quota_rule=*:storage=10M userdb_quota_rule2=*:messages=5\nb:{PLAIN}y\n";
        let e = parse(text, &domains()).unwrap();
        let q = quota_of(&e[0]).unwrap().unwrap();
        assert_eq!((q.bytes, q.messages), (10 << 20, 5));
        assert_eq!(quota_of(&e[1]).unwrap(), None);
        let bad = parse(
            "c:{PLAIN}z:::::: userdb_quota_rule=*:storage=lots\n",
            &domains(),
        )
        .unwrap();
        assert!(quota_of(&bad[0]).is_err());
        assert_eq!(parse_size("2G"), Some(2 << 30));
        assert_eq!(parse_size("x"), None);
    }

    #[test]
    fn fields_that_restrict_logins_are_refused_not_ignored() {
        let text = "a:{PLAIN}x:::::: allow_nets=10.0.0.0/8\nb:{PLAIN}y:::::: nologin reason=moved\nc:{PLAIN}z:::::: userdb_quota_rule=*:storage=1M\nd:{PLAIN}w\ne:{PLAIN}v:::::: userdb_host=x\n";
        let e = parse(text, &domains()).unwrap();
        assert!(check_access_fields(&e[0])
            .unwrap_err()
            .contains("allow_nets=10.0.0.0/8"));
        assert!(check_access_fields(&e[1])
            .unwrap_err()
            .contains("`nologin`"));
        for ok in &e[2..] {
            assert_eq!(check_access_fields(ok), Ok(()), "{}", ok.user);
        }
    }

    #[test]
    fn every_problem_is_reported_with_its_line() {
        let text = "ok:{PLAIN}a\nnocolon\n../x:{PLAIN}a\ncarol:{MD5}abc\ndave@other.org:{PLAIN}a\nok:{PLAIN}b\n";
        let errs = parse(text, &domains()).unwrap_err();
        let lines: Vec<usize> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, vec![2, 3, 4, 5, 6]);
        assert!(errs[3].reason.contains("not to this tenant"));
        assert!(errs[4].reason.contains("twice"));
    }
}
