//! Deciding a login: directory lookup, password check (cached, or hashed off
//! the core), policy checks, brute-force delays.
//!
//! The work is split so the network driver can keep slow hashing off its
//! event loop: [`Authenticator::check`] runs on the connection's core and
//! either decides at once (cache hit, PLAIN scheme, EXTERNAL, APOP, policy
//! refusal) or returns a [`HashJob`] for the thread pool. Unknown users are
//! checked too, against the tenant's stand-in hash, so they take as long as
//! known ones.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pop3sd_storage::Address;
use subtle::ConstantTimeEq;

use super::cache::VerifyCache;
use super::directory::{Directory, Tenant};
use super::scheme::{dummy_hash, StoredHash};
use super::throttle::{Throttle, ThrottleConfig};
use crate::engine::{AuthRequest, Credentials, Policy, Secret};

/// A login that passed every check.
#[derive(Debug, Clone)]
pub struct Verified {
    /// Canonical address (aliases resolved): the maildrop to open.
    pub address: Address,
    pub tenant: Arc<Tenant>,
    pub policy: Policy,
}

/// Why a login was refused (the engine maps each to its response code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Unknown user, wrong password, unmapped certificate: indistinguishable.
    Failed,
    CleartextRefused,
    LoginDelay,
}

/// A password check that needs real CPU; run [`HashJob::run`] off the core.
pub struct HashJob {
    target: Option<Verified>,
    stored: StoredHash,
    password: Secret,
}

impl HashJob {
    /// Verifies the password (slow by design). Returns the job back with the result.
    pub fn run(self) -> HashResult {
        let ok = self.stored.verify(self.password.expose()) && self.target.is_some();
        HashResult { job: self, ok }
    }
}

/// A finished [`HashJob`], to hand back to the core that asked.
pub struct HashResult {
    job: HashJob,
    ok: bool,
}

/// The decision [`Authenticator::check`] could make on the core.
pub enum Check {
    Verified(Verified),
    Refused(Refusal),
    Hash(HashJob),
}

/// A login that LOGIN-DELAY admitted, kept until the maildrop opens so that
/// it can be taken back if it does not.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "revoke an admission whose session did not start"]
pub struct Admission {
    recorded: Option<(Address, Instant)>,
    previous: Option<Instant>,
}

/// Shared login logic for all cores. The tenant directory is passed in on
/// each call (it is replaced on reload); the failure counters and login
/// times live here and survive reloads.
pub struct Authenticator {
    throttle: Throttle,
    last_login: Mutex<HashMap<Address, Instant>>,
}

fn md5_hex_eq(banner: &str, secret: &[u8], digest: &[u8; 16]) -> bool {
    use md5::Digest;
    let mut h = md5::Md5::new();
    h.update(banner.as_bytes());
    h.update(secret);
    let got: [u8; 16] = h.finalize().into();
    bool::from(got.ct_eq(digest))
}

impl Authenticator {
    /// An authenticator with these brute-force settings.
    pub fn new(throttle: ThrottleConfig) -> Self {
        Authenticator {
            throttle: Throttle::new(throttle),
            last_login: Mutex::new(HashMap::new()),
        }
    }

    /// Decides what can be decided on the core.
    pub fn check(
        &self,
        directory: &Directory,
        req: &AuthRequest,
        cache: &VerifyCache,
        now: Instant,
    ) -> Check {
        // Decided by the domain's tenant, not the user's entry: a refusal
        // given only to existing users would tell an attacker which exist.
        if !req.secure
            && directory
                .tenant(&req.address.domain)
                .is_some_and(|t| !t.policy.allow_cleartext)
        {
            return Check::Refused(Refusal::CleartextRefused);
        }
        let found = directory.user(&req.address);
        let target = found.as_ref().map(|f| Verified {
            address: f.address.clone(),
            tenant: f.tenant.clone(),
            policy: f.tenant.policy.pop3(),
        });
        match &req.credentials {
            Credentials::External => match target {
                // The TLS layer verified the certificate against this
                // tenant's CA and mapped it to this address.
                Some(t) => Check::Verified(t),
                None => Check::Refused(Refusal::Failed),
            },
            Credentials::Apop { banner, digest } => {
                let ok = found.as_ref().is_some_and(|f| {
                    f.tenant.policy.apop
                        && f.hash
                            .plaintext()
                            .is_some_and(|p| md5_hex_eq(banner, p, digest))
                });
                match (ok, target) {
                    (true, Some(t)) => Check::Verified(t),
                    _ => Check::Refused(Refusal::Failed),
                }
            }
            Credentials::Password(pw) => match (found, target) {
                (Some(f), Some(t)) => {
                    if !f.hash.is_expensive() {
                        if f.hash.verify(pw.expose()) {
                            Check::Verified(t)
                        } else {
                            Check::Refused(Refusal::Failed)
                        }
                    } else if cache.check(&t.address, f.hash, pw.expose(), now) {
                        Check::Verified(t)
                    } else {
                        Check::Hash(HashJob {
                            target: Some(t),
                            stored: f.hash.clone(),
                            password: pw.clone(),
                        })
                    }
                }
                // An unknown user: the same check as one of the tenant's
                // users gets (the same scheme and work, on the core or on
                // the pool alike), its result ignored.
                _ => match directory
                    .tenant(&req.address.domain)
                    .and_then(|t| t.stand_in())
                {
                    Some(h) if !h.is_expensive() => {
                        let _ = h.verify(pw.expose());
                        Check::Refused(Refusal::Failed)
                    }
                    stand_in => Check::Hash(HashJob {
                        target: None,
                        stored: stand_in.unwrap_or_else(|| dummy_hash()).clone(),
                        password: pw.clone(),
                    }),
                },
            },
        }
    }

    /// Takes a hash result back on the core, caching a success.
    pub fn finish_hash(
        &self,
        r: HashResult,
        cache: &mut VerifyCache,
        now: Instant,
    ) -> Result<Verified, Refusal> {
        match (r.ok, r.job.target) {
            (true, Some(t)) => {
                cache.insert(&t.address, &r.job.stored, r.job.password.expose(), now);
                Ok(t)
            }
            // A failure leaves the user's cached success alone: a wrong
            // password can never match its tag, and were it forgotten, one
            // wrong guess before each of the user's logins would send them
            // all to the hash queue, which a flood of guesses keeps full.
            _ => Err(Refusal::Failed),
        }
    }

    /// Applies LOGIN-DELAY and records the login. Call after credentials
    /// are verified. The login counts from now on; should the maildrop then
    /// fail to open, [`Authenticator::revoke`] takes it back, so a client
    /// told `[IN-USE]` may retry as soon as the lock is free instead of
    /// meeting `[LOGIN-DELAY]` for a login that never happened.
    pub fn admit(&self, v: &Verified, now: Instant) -> Result<Admission, Refusal> {
        self.throttle.success(&v.address);
        let delay = v.policy.login_delay;
        if delay == 0 {
            return Ok(Admission {
                recorded: None,
                previous: None,
            });
        }
        let mut last = self.last_login.lock().unwrap_or_else(|p| p.into_inner());
        let previous = last.get(&v.address).copied();
        if let Some(prev) = previous {
            if now.saturating_duration_since(prev) < Duration::from_secs(delay.into()) {
                return Err(Refusal::LoginDelay);
            }
        }
        last.insert(v.address.clone(), now);
        Ok(Admission {
            recorded: Some((v.address.clone(), now)),
            previous,
        })
    }

    /// Undoes an admission whose session did not start. Only the record
    /// this admission made is undone: a later login's stays.
    pub fn revoke(&self, a: Admission) {
        let Some((address, at)) = a.recorded else {
            return;
        };
        let mut last = self.last_login.lock().unwrap_or_else(|p| p.into_inner());
        if last.get(&address) == Some(&at) {
            match a.previous {
                Some(prev) => {
                    last.insert(address, prev);
                }
                None => {
                    last.remove(&address);
                }
            }
        }
    }

    /// Records a failure; returns the delay before answering it.
    pub fn failure(&self, address: &Address, ip: IpAddr, now: Instant) -> Duration {
        self.throttle.failure(Some(address), ip, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::directory::TenantPolicy;
    use crate::engine::Mechanism;
    use pop3sd_storage::{Domain, LocalPart};

    /// An authenticator and the directory it checks against.
    struct Auth(Authenticator, Directory);

    impl Auth {
        fn check(&self, req: &AuthRequest, cache: &VerifyCache, now: Instant) -> Check {
            self.0.check(&self.1, req, cache, now)
        }
        fn finish_hash(
            &self,
            r: HashResult,
            cache: &mut VerifyCache,
            now: Instant,
        ) -> Result<Verified, Refusal> {
            self.0.finish_hash(r, cache, now)
        }
        fn admit(&self, v: &Verified, now: Instant) -> Result<Admission, Refusal> {
            self.0.admit(v, now)
        }
    }

    fn auth(policy: TenantPolicy) -> Auth {
        let users = [
            (
                LocalPart::parse("plain").unwrap(),
                StoredHash::parse("{PLAIN}pw").unwrap(),
            ),
            (
                LocalPart::parse("argon").unwrap(),
                StoredHash::new_argon2id(b"pw").unwrap(),
            ),
        ];
        let dir = Directory::new(vec![Tenant::new(
            Domain::parse("e.example").unwrap(),
            vec![],
            policy,
            users,
        )])
        .unwrap();
        Auth(Authenticator::new(ThrottleConfig::default()), dir)
    }

    fn req(user: &str, pw: &str, secure: bool) -> AuthRequest {
        AuthRequest {
            address: Address::parse(user).unwrap(),
            credentials: Credentials::Password(Secret::new(pw.as_bytes())),
            mechanism: Mechanism::UserPass,
            secure,
        }
    }

    #[test]
    fn plain_is_decided_on_the_core_argon_goes_to_the_pool_then_the_cache() {
        let a = auth(TenantPolicy::default());
        let mut cache = VerifyCache::new(10, Duration::from_secs(60));
        let now = Instant::now();
        assert!(matches!(
            a.check(&req("plain@e.example", "pw", true), &cache, now),
            Check::Verified(_)
        ));
        assert!(matches!(
            a.check(&req("plain@e.example", "no", true), &cache, now),
            Check::Refused(Refusal::Failed)
        ));
        let Check::Hash(job) = a.check(&req("argon@e.example", "pw", true), &cache, now) else {
            panic!("argon2 should need the pool")
        };
        let v = a.finish_hash(job.run(), &mut cache, now).unwrap();
        assert_eq!(v.address.to_string(), "argon@e.example");
        assert!(matches!(
            a.check(&req("argon@e.example", "pw", true), &cache, now),
            Check::Verified(_)
        ));
        let Check::Hash(job) = a.check(&req("argon@e.example", "wrong", true), &cache, now) else {
            panic!("a wrong password is never a cache hit")
        };
        assert_eq!(
            a.finish_hash(job.run(), &mut cache, now).unwrap_err(),
            Refusal::Failed
        );
        // Someone else's wrong guess does not cost the user the cache.
        assert!(
            matches!(
                a.check(&req("argon@e.example", "pw", true), &cache, now),
                Check::Verified(_)
            ),
            "a failed guess evicted the user's cached login"
        );
    }

    #[test]
    fn unknown_users_are_hashed_too() {
        let a = auth(TenantPolicy::default());
        let mut cache = VerifyCache::new(10, Duration::from_secs(60));
        let now = Instant::now();
        for user in ["nobody@e.example", "x@unknown.example"] {
            let Check::Hash(job) = a.check(&req(user, "pw", true), &cache, now) else {
                panic!("unknown user {user} must cost a hash")
            };
            assert_eq!(
                a.finish_hash(job.run(), &mut cache, now).unwrap_err(),
                Refusal::Failed
            );
        }
    }

    /// An unknown user's password is checked against one of the tenant's
    /// own hashes: a {PLAIN} tenant refuses it on the core, as it does a
    /// known user's wrong password, and a hashing tenant hashes it with its
    /// own scheme and cost; an alias counts failures under the tenant's
    /// domain.
    #[test]
    fn unknown_users_cost_what_the_tenants_users_cost() {
        let a = auth(TenantPolicy::default());
        let cache = VerifyCache::new(10, Duration::from_secs(60));
        let now = Instant::now();
        let Check::Hash(job) = a.check(&req("nobody@e.example", "pw", true), &cache, now) else {
            panic!("the tenant's stand-in is its argon2 user")
        };
        assert!(
            job.stored
                == *a
                    .1
                    .tenant(&Domain::parse("e.example").unwrap())
                    .unwrap()
                    .user(&LocalPart::parse("argon").unwrap())
                    .unwrap()
        );
        let plain = Auth(
            Authenticator::new(ThrottleConfig::default()),
            Directory::new(vec![Tenant::new(
                Domain::parse("p.example").unwrap(),
                vec![Domain::parse("alias.example").unwrap()],
                TenantPolicy::default(),
                [(
                    LocalPart::parse("known").unwrap(),
                    StoredHash::parse("{PLAIN}pw").unwrap(),
                )],
            )])
            .unwrap(),
        );
        for user in ["known@p.example", "nobody@p.example"] {
            assert!(
                matches!(
                    plain.check(&req(user, "wrong", true), &cache, now),
                    Check::Refused(Refusal::Failed)
                ),
                "{user}: decided on the core"
            );
        }
        let typed = Address::parse("nobody@alias.example").unwrap();
        assert_eq!(plain.1.canonical(&typed).to_string(), "nobody@p.example");
        let elsewhere = Address::parse("x@unknown.example").unwrap();
        assert_eq!(plain.1.canonical(&elsewhere), elsewhere);
    }

    #[test]
    fn cleartext_and_login_delay_policies() {
        let a = auth(TenantPolicy::default());
        let cache = VerifyCache::new(10, Duration::from_secs(60));
        let now = Instant::now();
        // Known or not, a user of that tenant gets the same refusal: it
        // does not tell which users exist.
        for user in ["plain@e.example", "nobody@e.example"] {
            assert!(matches!(
                a.check(&req(user, "pw", false), &cache, now),
                Check::Refused(Refusal::CleartextRefused)
            ));
        }
        let a = auth(TenantPolicy {
            login_delay: 60,
            allow_cleartext: true,
            ..TenantPolicy::default()
        });
        let Check::Verified(v) = a.check(&req("plain@e.example", "pw", false), &cache, now) else {
            panic!("cleartext allowed")
        };
        assert!(a.admit(&v, now).is_ok());
        assert_eq!(
            a.admit(&v, now + Duration::from_secs(30)),
            Err(Refusal::LoginDelay)
        );
        let later = a
            .admit(&v, now + Duration::from_secs(61))
            .expect("admitted");
        assert_eq!(
            a.admit(&v, now + Duration::from_secs(62)),
            Err(Refusal::LoginDelay)
        );
        // The maildrop did not open: the delay runs from the login before.
        a.0.revoke(later);
        assert!(a.admit(&v, now + Duration::from_secs(62)).is_ok());
    }

    #[test]
    fn revoking_a_first_login_forgets_it_and_spares_a_later_one() {
        let a = auth(TenantPolicy {
            login_delay: 60,
            allow_cleartext: true,
            ..TenantPolicy::default()
        });
        let now = Instant::now();
        let cache = VerifyCache::new(16, Duration::from_secs(60));
        let Check::Verified(v) = a.check(&req("plain@e.example", "pw", false), &cache, now) else {
            panic!("cleartext allowed")
        };
        let first = a.admit(&v, now).expect("admitted");
        a.0.revoke(first);
        let _second = a
            .admit(&v, now + Duration::from_secs(1))
            .expect("forgotten");
        // A stale admission (its record already replaced) undoes nothing.
        let stale = Admission {
            recorded: Some((v.address.clone(), now)),
            previous: None,
        };
        a.0.revoke(stale);
        assert_eq!(
            a.admit(&v, now + Duration::from_secs(2)),
            Err(Refusal::LoginDelay)
        );
        let none = auth(TenantPolicy {
            allow_cleartext: true,
            ..TenantPolicy::default()
        });
        let Check::Verified(v) = none.check(&req("plain@e.example", "pw", false), &cache, now)
        else {
            panic!("cleartext allowed")
        };
        // Without a delay nothing is recorded, so nothing is taken back.
        let free = none.admit(&v, now).expect("no delay");
        none.0.revoke(free);
        assert!(none.admit(&v, now).is_ok());
    }

    #[test]
    fn apop_needs_the_tenant_and_a_plain_secret() {
        let banner = "<1896.697170952@dbc.mtview.ca.us>".to_string();
        let digest = |pw: &str| -> [u8; 16] {
            use md5::Digest;
            md5::Md5::digest(format!("{banner}{pw}").as_bytes()).into()
        };
        let r = |user: &str, pw: &str| AuthRequest {
            address: Address::parse(user).unwrap(),
            credentials: Credentials::Apop {
                banner: banner.clone(),
                digest: digest(pw),
            },
            mechanism: Mechanism::Apop,
            secure: true,
        };
        let cache = VerifyCache::new(10, Duration::from_secs(60));
        let now = Instant::now();
        let off = auth(TenantPolicy::default());
        assert!(matches!(
            off.check(&r("plain@e.example", "pw"), &cache, now),
            Check::Refused(_)
        ));
        let on = auth(TenantPolicy {
            apop: true,
            ..TenantPolicy::default()
        });
        assert!(matches!(
            on.check(&r("plain@e.example", "pw"), &cache, now),
            Check::Verified(_)
        ));
        assert!(matches!(
            on.check(&r("plain@e.example", "no"), &cache, now),
            Check::Refused(_)
        ));
        assert!(matches!(
            on.check(&r("argon@e.example", "pw"), &cache, now),
            Check::Refused(_)
        ));
    }
}
