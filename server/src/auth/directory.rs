//! The tenant directory: which domains exist, who their users are, and the
//! policies that apply to them.
//!
//! A tenant is a domain plus aliases. Every lookup goes from a validated
//! [`Address`] to its tenant by domain, then to the user within that tenant
//! only: there is no operation that takes a user of one tenant to another.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use pop3sd_storage::{Address, Domain, LocalPart};

use super::scheme::StoredHash;
use crate::engine::{Expire, Policy, PolicyHint};

/// A storage quota; 0 in a field means no limit on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Quota {
    pub messages: u64,
    pub bytes: u64,
}

impl Quota {
    /// True when `messages` and `bytes` more would go past the quota.
    pub fn exceeded_by(&self, have_messages: u64, have_bytes: u64, add_bytes: u64) -> bool {
        (self.messages > 0 && have_messages + 1 > self.messages)
            || (self.bytes > 0 && have_bytes + add_bytes > self.bytes)
    }
}

/// Per-tenant rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantPolicy {
    pub expire: Expire,
    pub login_delay: u32,
    /// Allow USER/PASS and AUTH PLAIN without TLS (plain listener, no STLS).
    pub allow_cleartext: bool,
    /// Allow `user` without `@domain` on connections whose SNI names this tenant.
    pub allow_bare_user: bool,
    /// Offer APOP (needs PLAIN-scheme passwords; off by default).
    pub apop: bool,
    /// Largest message LMTP accepts for this tenant (SIZE).
    pub max_message_size: u64,
    /// Default quota of each user (a passwd-file entry can override it).
    pub user_quota: Quota,
    /// Quota of the whole tenant.
    pub tenant_quota: Quota,
    /// Answer over-quota deliveries with 552 5.2.2 instead of 452 4.2.2.
    pub quota_permanent: bool,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        TenantPolicy {
            expire: Expire::Never,
            login_delay: 0,
            allow_cleartext: false,
            allow_bare_user: true,
            apop: false,
            max_message_size: 50 << 20,
            user_quota: Quota::default(),
            tenant_quota: Quota::default(),
            quota_permanent: false,
        }
    }
}

impl TenantPolicy {
    /// The POP3-visible part (EXPIRE, LOGIN-DELAY).
    pub fn pop3(&self) -> Policy {
        Policy {
            expire: self.expire,
            login_delay: self.login_delay,
        }
    }
}

/// One tenant: a domain, its aliases, users and policy.
#[derive(Debug)]
pub struct Tenant {
    pub domain: Domain,
    pub aliases: Vec<Domain>,
    pub policy: TenantPolicy,
    users: HashMap<LocalPart, StoredHash>,
    quotas: HashMap<LocalPart, Quota>,
    /// One user's hash, which an unknown user's password is checked
    /// against (see [`Tenant::stand_in`]).
    stand_in: Option<StoredHash>,
}

impl Tenant {
    /// A tenant with these users.
    pub fn new(
        domain: Domain,
        aliases: Vec<Domain>,
        policy: TenantPolicy,
        users: impl IntoIterator<Item = (LocalPart, StoredHash)>,
    ) -> Self {
        let users: HashMap<LocalPart, StoredHash> = users.into_iter().collect();
        // From the scheme most of its users have (mid-migration a tenant
        // mixes several): an unknown user then costs what most users cost.
        let mut per_scheme: HashMap<&'static str, usize> = HashMap::new();
        for h in users.values() {
            *per_scheme.entry(h.scheme()).or_default() += 1;
        }
        let stand_in = users
            .iter()
            .min_by(|a, b| {
                let count = |h: &StoredHash| per_scheme.get(h.scheme()).copied().unwrap_or(0);
                // Most users first, then the dearer scheme, then by name.
                count(b.1)
                    .cmp(&count(a.1))
                    .then_with(|| b.1.cost_rank().cmp(&a.1.cost_rank()))
                    .then_with(|| a.0.cmp(b.0))
            })
            .map(|(_, h)| h.clone());
        Tenant {
            domain,
            aliases,
            policy,
            users,
            quotas: HashMap::new(),
            stand_in,
        }
    }

    /// A hash of this tenant's (one of its users', of the scheme most of
    /// them have), to check an unknown user's password against and ignore
    /// the result: a failed login then costs the same scheme and work
    /// whether or not the user exists (for the users of that scheme: where a
    /// tenant mixes schemes, those of the others cost what their own does),
    /// so its timing does not tell which users do.
    pub fn stand_in(&self) -> Option<&StoredHash> {
        self.stand_in.as_ref()
    }

    /// Gives one user a quota of their own (from the passwd-file).
    pub fn set_quota(&mut self, user: LocalPart, quota: Quota) {
        self.quotas.insert(user, quota);
    }

    /// The quota that applies to a user.
    pub fn quota_of(&self, user: &LocalPart) -> Quota {
        self.quotas
            .get(user)
            .copied()
            .unwrap_or(self.policy.user_quota)
    }

    /// The user's stored hash, if the user exists.
    pub fn user(&self, local: &LocalPart) -> Option<&StoredHash> {
        self.users.get(local)
    }

    /// Number of users.
    pub fn user_count(&self) -> usize {
        self.users.len()
    }

    /// All user names, sorted.
    pub fn user_names(&self) -> Vec<&LocalPart> {
        let mut v: Vec<_> = self.users.keys().collect();
        v.sort();
        v
    }

    /// Every name the tenant answers to, its own domain first.
    pub fn names(&self) -> impl Iterator<Item = &Domain> {
        std::iter::once(&self.domain).chain(self.aliases.iter())
    }
}

/// A user found in the directory.
#[derive(Debug, Clone)]
pub struct Found<'a> {
    pub tenant: &'a Arc<Tenant>,
    /// The address with the tenant's own domain (aliases resolved).
    pub address: Address,
    pub hash: &'a StoredHash,
}

/// All tenants.
#[derive(Debug, Default)]
pub struct Directory {
    tenants: Vec<Arc<Tenant>>,
    by_name: HashMap<Domain, usize>,
    /// See [`Directory::tls_required`]; built once per configuration.
    tls_required: Option<Arc<HashSet<Domain>>>,
}

impl Directory {
    /// Builds the directory; a domain claimed by two tenants is an error.
    pub fn new(tenants: Vec<Tenant>) -> Result<Self, String> {
        let mut by_name = HashMap::new();
        for (i, t) in tenants.iter().enumerate() {
            for name in t.names() {
                if let Some(prev) = by_name.insert(name.clone(), i) {
                    return Err(format!(
                        "domain {name} is claimed by tenants {} and {}",
                        tenants[prev].domain, t.domain
                    ));
                }
            }
        }
        // Only where some tenant takes passwords without TLS: otherwise
        // every password login without TLS is refused anyway.
        let tls_required = tenants
            .iter()
            .any(|t| t.policy.allow_cleartext)
            .then(|| {
                let names = tenants
                    .iter()
                    .filter(|t| !t.policy.allow_cleartext)
                    .flat_map(|t| t.names().cloned());
                Arc::new(names.collect::<HashSet<Domain>>())
            })
            .filter(|names| !names.is_empty());
        Ok(Directory {
            tenants: tenants.into_iter().map(Arc::new).collect(),
            by_name,
            tls_required,
        })
    }

    /// The tenant a domain (or alias) belongs to.
    pub fn tenant(&self, domain: &Domain) -> Option<&Arc<Tenant>> {
        self.by_name.get(domain).map(|&i| &self.tenants[i])
    }

    /// All tenants, in configuration order.
    pub fn tenants(&self) -> &[Arc<Tenant>] {
        &self.tenants
    }

    /// Finds a user; `None` for an unknown tenant or user.
    pub fn user(&self, address: &Address) -> Option<Found<'_>> {
        let tenant = self.tenant(&address.domain)?;
        let hash = tenant.user(&address.local)?;
        Some(Found {
            tenant,
            address: Address::new(address.local.clone(), tenant.domain.clone()),
            hash,
        })
    }

    /// The address as its tenant knows it (an alias's domain replaced by
    /// the tenant's own), whether or not the user exists; unchanged for an
    /// unknown domain. Failures are counted under it, so that rotating
    /// through a tenant's aliases does not multiply the guesses allowed.
    pub fn canonical(&self, address: &Address) -> Address {
        match self.tenant(&address.domain) {
            Some(t) => Address::new(address.local.clone(), t.domain.clone()),
            None => address.clone(),
        }
    }

    /// What CAPA shows before login: the SNI tenant's policy if known, else
    /// the values common to all tenants (marked per-user when they differ).
    pub fn policy_hint(&self, sni_tenant: Option<&Tenant>) -> PolicyHint {
        if let Some(t) = sni_tenant {
            return PolicyHint {
                policy: t.policy.pop3(),
                ..PolicyHint::default()
            };
        }
        let mut policies = self.tenants.iter().map(|t| t.policy.pop3());
        match policies.next() {
            None => PolicyHint::default(),
            Some(first) => {
                // The shortest retention and the longest delay are safe to
                // announce; "USER" marks only what differs between tenants.
                let all: Vec<Policy> = std::iter::once(first).chain(policies).collect();
                let expire = all
                    .iter()
                    .filter_map(|p| match p.expire {
                        Expire::Days(d) => Some(d),
                        Expire::Never => None,
                    })
                    .min()
                    .map_or(Expire::Never, Expire::Days);
                let login_delay = all.iter().map(|p| p.login_delay).max().unwrap_or(0);
                PolicyHint {
                    policy: Policy {
                        expire,
                        login_delay,
                    },
                    expire_per_user: all.iter().any(|p| p.expire != first.expire),
                    login_delay_per_user: all.iter().any(|p| p.login_delay != first.login_delay),
                }
            }
        }
    }

    /// True when some tenant accepts passwords without TLS.
    pub fn any_cleartext(&self) -> bool {
        self.tenants.iter().any(|t| t.policy.allow_cleartext)
    }

    /// Where some tenants take passwords without TLS and others do not:
    /// the domains and aliases of the others. A connection without TLS
    /// refuses USER for them at once, before the password is sent.
    pub fn tls_required(&self) -> Option<Arc<HashSet<Domain>>> {
        self.tls_required.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Directory {
        let d = |s: &str| Domain::parse(s).unwrap();
        let l = |s: &str| LocalPart::parse(s).unwrap();
        let h = |s: &str| StoredHash::parse(&format!("{{PLAIN}}{s}")).unwrap();
        Directory::new(vec![
            Tenant::new(
                d("a.example"),
                vec![d("alias.example")],
                TenantPolicy::default(),
                [(l("alice"), h("1"))],
            ),
            Tenant::new(
                d("b.example"),
                vec![],
                TenantPolicy::default(),
                [(l("alice"), h("2"))],
            ),
        ])
        .unwrap()
    }

    #[test]
    fn before_login_capa_marks_per_user_only_what_differs_between_tenants() {
        let d = |s: &str| Domain::parse(s).unwrap();
        let with = |name: &str, expire: Expire, login_delay: u32| {
            Tenant::new(
                d(name),
                vec![],
                TenantPolicy {
                    expire,
                    login_delay,
                    ..TenantPolicy::default()
                },
                std::iter::empty(),
            )
        };
        let dir = Directory::new(vec![
            with("a.example", Expire::Never, 0),
            with("b.example", Expire::Days(30), 0),
        ])
        .unwrap();
        let hint = dir.policy_hint(None);
        assert_eq!(hint.policy.expire, Expire::Days(30));
        assert!(hint.expire_per_user);
        assert_eq!(hint.policy.login_delay, 0);
        assert!(!hint.login_delay_per_user, "no tenant sets a delay");
        let dir = Directory::new(vec![
            with("a.example", Expire::Never, 0),
            with("b.example", Expire::Never, 60),
        ])
        .unwrap();
        let hint = dir.policy_hint(None);
        assert_eq!(
            (hint.policy.expire, hint.expire_per_user),
            (Expire::Never, false)
        );
        assert_eq!(
            (hint.policy.login_delay, hint.login_delay_per_user),
            (60, true)
        );
    }

    #[test]
    fn the_stand_in_has_the_scheme_most_users_have() {
        let l = |s: &str| LocalPart::parse(s).unwrap();
        let plain = |s: &str| StoredHash::parse(&format!("{{PLAIN}}{s}")).unwrap();
        let sha = StoredHash::parse("{SHA512-CRYPT}$6$salt$hash").unwrap();
        // "aaron" is first by name, but most users are {PLAIN}.
        let t = Tenant::new(
            Domain::parse("m.example").unwrap(),
            vec![],
            TenantPolicy::default(),
            [
                (l("aaron"), sha.clone()),
                (l("bob"), plain("1")),
                (l("carl"), plain("2")),
            ],
        );
        assert_eq!(t.stand_in().map(StoredHash::scheme), Some("PLAIN"));
        // A tie goes to the dearer scheme.
        let t = Tenant::new(
            Domain::parse("m.example").unwrap(),
            vec![],
            TenantPolicy::default(),
            [(l("aaron"), plain("1")), (l("zed"), sha)],
        );
        assert_eq!(t.stand_in().map(StoredHash::scheme), Some("SHA512-CRYPT"));
    }

    #[test]
    fn tls_only_names_include_aliases_and_only_matter_beside_cleartext() {
        let d = |s: &str| Domain::parse(s).unwrap();
        let tenants = |b_cleartext: bool| {
            vec![
                Tenant::new(
                    d("a.example"),
                    vec![d("alias.example")],
                    TenantPolicy::default(),
                    [],
                ),
                Tenant::new(
                    d("b.example"),
                    vec![],
                    TenantPolicy {
                        allow_cleartext: b_cleartext,
                        ..TenantPolicy::default()
                    },
                    [],
                ),
            ]
        };
        let mixed = Directory::new(tenants(true)).unwrap();
        let names = mixed.tls_required().expect("some tenants need TLS");
        assert!(names.contains(&d("a.example")) && names.contains(&d("alias.example")));
        assert!(!names.contains(&d("b.example")));
        // No tenant takes passwords without TLS: nothing to list.
        assert!(Directory::new(tenants(false))
            .unwrap()
            .tls_required()
            .is_none());
    }

    #[test]
    fn same_local_part_in_two_tenants_stays_apart() {
        let dir = dir();
        let a = dir
            .user(&Address::parse("alice@a.example").unwrap())
            .unwrap();
        let b = dir
            .user(&Address::parse("alice@b.example").unwrap())
            .unwrap();
        assert!(a.hash.verify(b"1") && !a.hash.verify(b"2"));
        assert!(b.hash.verify(b"2") && !b.hash.verify(b"1"));
        let via_alias = dir
            .user(&Address::parse("alice@alias.example").unwrap())
            .unwrap();
        assert_eq!(via_alias.address.to_string(), "alice@a.example");
        assert!(dir
            .user(&Address::parse("bob@a.example").unwrap())
            .is_none());
        assert!(dir
            .user(&Address::parse("alice@c.example").unwrap())
            .is_none());
    }

    #[test]
    fn a_domain_belongs_to_one_tenant() {
        let d = Domain::parse("x.example").unwrap();
        let r = Directory::new(vec![
            Tenant::new(d.clone(), vec![], TenantPolicy::default(), []),
            Tenant::new(
                Domain::parse("y.example").unwrap(),
                vec![d],
                TenantPolicy::default(),
                [],
            ),
        ]);
        assert!(r.is_err());
    }
}
