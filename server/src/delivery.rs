//! Putting one message into one recipient's maildrop, with the checks an
//! operator expects: the recipient exists, the message fits the tenant's
//! size limit, and neither the user's nor the tenant's quota is exceeded.
//! Used by LMTP (on the blocking pool) and by `pop3sd deliver`.
//!
//! Tenant usage is the sum over its maildrops; recomputing it on every
//! delivery would read every index of the tenant, so it is cached for
//! [`TenantUsage::ttl`] and the deliveries made meanwhile are added to it.
//! The tenant quota is therefore exact for one process and can be exceeded
//! by what other processes (the CLI) deliver within one cache period.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pop3sd_storage::{Address, Domain, PreparedMessage, Store};

use crate::auth::directory::{Directory, Quota, Tenant};
use crate::lmtp::DeliveryResult;

#[derive(Clone, Copy)]
struct Usage {
    at: Instant,
    messages: u64,
    bytes: u64,
}

/// Cached per-tenant usage. Each tenant has a lock of its own: a large
/// tenant's recount (reading all its indexes) holds up only deliveries to
/// that tenant.
pub struct TenantUsage {
    cache: Mutex<HashMap<Domain, Arc<Mutex<Option<Usage>>>>>,
    ttl: Duration,
}

impl Default for TenantUsage {
    fn default() -> Self {
        TenantUsage::new(Duration::from_secs(60))
    }
}

/// Messages and bytes a tenant stores now, summed over its maildrops.
pub fn tenant_usage(store: &Store, domain: &Domain) -> (u64, u64) {
    let mut total = (0, 0);
    if let Ok(users) = store.users(domain) {
        for u in users {
            let addr = Address::new(u, domain.clone());
            if let Ok(s) = store.maildrop(&addr).and_then(|m| m.stats()) {
                total.0 += s.messages;
                total.1 += s.bytes;
            }
        }
    }
    total
}

impl TenantUsage {
    /// A cache whose entries are recomputed after `ttl`.
    pub fn new(ttl: Duration) -> Self {
        TenantUsage {
            cache: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    /// Gives back what [`TenantUsage::reserve`] took for a message that was
    /// not stored after all, unless the tenant was counted afresh since (a
    /// recount never saw the message).
    fn release(&self, tenant: &Tenant, size: u64, reserved: Reservation) {
        let Reservation(Some(counted_at)) = reserved else {
            return;
        };
        let entry = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.get(&tenant.domain).cloned()
        };
        if let Some(entry) = entry {
            if let Some(u) = entry.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
                if u.at == counted_at {
                    u.messages = u.messages.saturating_sub(1);
                    u.bytes = u.bytes.saturating_sub(size);
                }
            }
        }
    }

    /// Reserves room for one message of `size` under the tenant's quota;
    /// `None` when it would not fit.
    fn reserve(&self, store: &Store, tenant: &Tenant, size: u64) -> Option<Reservation> {
        let quota = tenant.policy.tenant_quota;
        if quota == Quota::default() {
            return Some(Reservation(None));
        }
        let now = Instant::now();
        let entry = {
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            cache.entry(tenant.domain.clone()).or_default().clone()
        };
        let mut usage = entry.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = usage.is_some_and(|u| now.duration_since(u.at) < self.ttl);
        if !fresh {
            // Reading every maildrop of the tenant: this runs on the
            // blocking pool, once per cache period.
            let (messages, bytes) = tenant_usage(store, &tenant.domain);
            *usage = Some(Usage {
                at: now,
                messages,
                bytes,
            });
        }
        let Some(u) = usage.as_mut() else {
            return Some(Reservation(None));
        };
        if quota.exceeded_by(u.messages, u.bytes, size) {
            return None;
        }
        u.messages += 1;
        u.bytes += size;
        Some(Reservation(Some(u.at)))
    }
}

/// A message's room in its tenant's cached usage: when that count was made
/// (`None`: the tenant has no quota).
struct Reservation(Option<Instant>);

/// Delivers `msg` to `recipient` (a canonical address of `directory`).
/// `sent` is the message's size as the sender gave it (LMTP's octets as
/// sent, the bytes `pop3sd deliver` read): the tenant's size limit is held
/// against that, as SIZE and the DATA limit are, so that a message they let
/// through is not refused for the Return-Path line and CRs storing adds.
pub fn deliver(
    store: &Store,
    directory: &Directory,
    usage: &TenantUsage,
    recipient: &Address,
    msg: &PreparedMessage,
    sent: u64,
) -> DeliveryResult {
    let Some(tenant) = directory.tenant(&recipient.domain) else {
        return DeliveryResult::TempFail(format!("{} is not a tenant any more", recipient.domain));
    };
    let permanent = tenant.policy.quota_permanent;
    if sent > tenant.policy.max_message_size {
        return DeliveryResult::TooBig;
    }
    let maildrop = match store.ensure_maildrop(recipient) {
        Ok(m) => m,
        Err(e) => return DeliveryResult::TempFail(e.to_string()),
    };
    let quota = tenant.quota_of(&recipient.local);
    if quota != Quota::default() {
        match maildrop.stats() {
            Ok(s) if quota.exceeded_by(s.messages, s.bytes, msg.size()) => {
                tracing::info!(recipient = %recipient, messages = s.messages, bytes = s.bytes, "user over quota");
                return DeliveryResult::OverQuota { permanent };
            }
            Ok(_) => {}
            Err(e) => return DeliveryResult::TempFail(e.to_string()),
        }
    }
    let Some(reserved) = usage.reserve(store, tenant, msg.size()) else {
        tracing::info!(tenant = %tenant.domain, "tenant over quota");
        return DeliveryResult::OverQuota { permanent };
    };
    match maildrop.append(msg.clone()) {
        Ok(r) => {
            tracing::info!(recipient = %recipient, uid = r.uid, size = r.size, "delivered");
            DeliveryResult::Delivered
        }
        Err(e) => {
            // Not stored: its room goes back, or every failed try (a full
            // disk, say) would count until the next recount, and refuse good
            // mail as over quota meanwhile.
            usage.release(tenant, msg.size(), reserved);
            DeliveryResult::TempFail(e.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::directory::TenantPolicy;
    use crate::auth::StoredHash;
    use pop3sd_storage::{LocalPart, StoreOptions};

    #[test]
    fn quotas_and_size_limits() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path(), StoreOptions::default()).unwrap();
        let l = |s: &str| LocalPart::parse(s).unwrap();
        let h = StoredHash::parse("{PLAIN}x").unwrap();
        let mut t = Tenant::new(
            Domain::parse("q.example").unwrap(),
            vec![],
            TenantPolicy {
                max_message_size: 1000,
                user_quota: Quota {
                    messages: 2,
                    bytes: 0,
                },
                tenant_quota: Quota {
                    messages: 3,
                    bytes: 0,
                },
                ..TenantPolicy::default()
            },
            [(l("a"), h.clone()), (l("b"), h.clone()), (l("vip"), h)],
        );
        t.set_quota(
            l("vip"),
            Quota {
                messages: 0,
                bytes: 0,
            },
        );
        let dir = Directory::new(vec![t]).unwrap();
        let usage = TenantUsage::default();
        let a = Address::parse("a@q.example").unwrap();
        let b = Address::parse("b@q.example").unwrap();
        let msg = PreparedMessage::from_raw(b"Subject: q\r\n\r\nhello\r\n");
        assert_eq!(
            deliver(&store, &dir, &usage, &a, &msg, msg.size()),
            DeliveryResult::Delivered
        );
        assert_eq!(
            deliver(&store, &dir, &usage, &a, &msg, msg.size()),
            DeliveryResult::Delivered
        );
        assert_eq!(
            deliver(&store, &dir, &usage, &a, &msg, msg.size()),
            DeliveryResult::OverQuota { permanent: false }
        );
        assert_eq!(
            deliver(&store, &dir, &usage, &b, &msg, msg.size()),
            DeliveryResult::Delivered
        );
        // The tenant holds 3 now: its quota stops even a user without one.
        let vip = Address::parse("vip@q.example").unwrap();
        assert_eq!(
            deliver(&store, &dir, &usage, &vip, &msg, msg.size()),
            DeliveryResult::OverQuota { permanent: false }
        );
        let big = PreparedMessage::from_raw(&[b'x'; 2000]);
        assert_eq!(
            deliver(&store, &dir, &usage, &b, &big, big.size()),
            DeliveryResult::TooBig
        );
        assert_eq!(store.maildrop(&a).unwrap().stats().unwrap().messages, 2);
    }

    /// A tenant of `domain` whose `users` all have the password "x".
    fn tenant(domain: &str, policy: TenantPolicy, users: &[&str]) -> Tenant {
        let h = StoredHash::parse("{PLAIN}x").unwrap();
        Tenant::new(
            Domain::parse(domain).unwrap(),
            vec![],
            policy,
            users
                .iter()
                .map(|u| (LocalPart::parse(u).unwrap(), h.clone())),
        )
    }

    /// A policy with a tenant quota of `messages`.
    fn tenant_quota(messages: u64) -> TenantPolicy {
        TenantPolicy {
            tenant_quota: Quota { messages, bytes: 0 },
            ..TenantPolicy::default()
        }
    }

    #[test]
    fn the_size_limit_is_held_against_the_size_sent() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path(), StoreOptions::default()).unwrap();
        let t = tenant(
            "s.example",
            TenantPolicy {
                max_message_size: 1000,
                ..TenantPolicy::default()
            },
            &["u"],
        );
        let dir = Directory::new(vec![t]).unwrap();
        let u = Address::parse("u@s.example").unwrap();
        // 1,000 octets as sent with bare LFs; stored with CRLFs, more.
        let mut raw = b"Subject: s\n\n".to_vec();
        raw.resize(1000, b'\n');
        let msg = PreparedMessage::from_raw(&raw);
        assert!(msg.size() > 1000);
        let usage = TenantUsage::default();
        assert_eq!(
            deliver(&store, &dir, &usage, &u, &msg, 1000),
            DeliveryResult::Delivered
        );
        assert_eq!(
            deliver(&store, &dir, &usage, &u, &msg, 1001),
            DeliveryResult::TooBig
        );
    }

    #[test]
    fn a_release_after_a_recount_takes_nothing_off() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path(), StoreOptions::default()).unwrap();
        let t = tenant("r.example", tenant_quota(10), &[]);
        // Every reservation counts the tenant afresh.
        let usage = TenantUsage::new(Duration::ZERO);
        let counted = |u: &TenantUsage| {
            let entry = u.cache.lock().unwrap().get(&t.domain).cloned().unwrap();
            let n = entry.lock().unwrap().map(|u| u.messages);
            n
        };
        let first = usage.reserve(&store, &t, 10).unwrap();
        std::thread::sleep(Duration::from_millis(2));
        let second = usage.reserve(&store, &t, 10).unwrap();
        assert_eq!(
            counted(&usage),
            Some(1),
            "the recount saw neither; the second is reserved"
        );
        usage.release(&t, 10, first);
        assert_eq!(counted(&usage), Some(1), "the first was not in this count");
        usage.release(&t, 10, second);
        assert_eq!(counted(&usage), Some(0));
    }

    #[test]
    fn a_failed_append_gives_its_quota_room_back() {
        let d = tempfile::tempdir().unwrap();
        let store = Store::open(d.path(), StoreOptions::default()).unwrap();
        let t = tenant("q.example", tenant_quota(1), &["u"]);
        let dir = Directory::new(vec![t]).unwrap();
        let usage = TenantUsage::default();
        let u = Address::parse("u@q.example").unwrap();
        let msg = PreparedMessage::from_raw(b"Subject: q\r\n\r\nhello\r\n");
        // A segment that cannot be written (a directory in its place): the
        // append fails after the quota check.
        let md = store.ensure_maildrop(&u).unwrap();
        let segment = d.path().join("q.example/u/seg-00000001");
        std::fs::create_dir(&segment).unwrap();
        for _ in 0..3 {
            match deliver(&store, &dir, &usage, &u, &msg, msg.size()) {
                DeliveryResult::TempFail(why) => assert!(why.contains("seg-00000001"), "{why}"),
                other => panic!("{other:?}"),
            }
        }
        std::fs::remove_dir(&segment).unwrap();
        assert_eq!(
            deliver(&store, &dir, &usage, &u, &msg, msg.size()),
            DeliveryResult::Delivered,
            "the failed tries still counted against the quota"
        );
        assert_eq!(md.stats().unwrap().messages, 1);
        assert_eq!(
            deliver(&store, &dir, &usage, &u, &msg, msg.size()),
            DeliveryResult::OverQuota { permanent: false }
        );
    }

    /// One tenant's recount (its lock held) does not hold up deliveries to
    /// another tenant.
    #[test]
    fn a_tenants_recount_does_not_block_other_tenants() {
        let d = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(d.path(), StoreOptions::default()).unwrap());
        let h = StoredHash::parse("{PLAIN}x").unwrap();
        let tenant = |name: &str| {
            Tenant::new(
                Domain::parse(name).unwrap(),
                vec![],
                TenantPolicy {
                    tenant_quota: Quota {
                        messages: 100,
                        bytes: 0,
                    },
                    ..TenantPolicy::default()
                },
                [(LocalPart::parse("u").unwrap(), h.clone())],
            )
        };
        let dir =
            Arc::new(Directory::new(vec![tenant("big.example"), tenant("small.example")]).unwrap());
        let usage = Arc::new(TenantUsage::default());
        // The big tenant's recount in progress: its entry locked.
        let big = {
            let mut cache = usage.cache.lock().unwrap();
            cache
                .entry(Domain::parse("big.example").unwrap())
                .or_default()
                .clone()
        };
        let held = big.lock().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (s2, d2, u2) = (store.clone(), dir.clone(), usage.clone());
        std::thread::spawn(move || {
            let to = Address::parse("u@small.example").unwrap();
            let msg = PreparedMessage::from_raw(b"Subject: s\r\n\r\nx\r\n");
            let _ = tx.send(deliver(&s2, &d2, &u2, &to, &msg, msg.size()));
        });
        assert_eq!(
            rx.recv_timeout(Duration::from_secs(10)),
            Ok(DeliveryResult::Delivered),
            "a delivery to another tenant waited for this one's recount"
        );
        drop(held);
    }
}
