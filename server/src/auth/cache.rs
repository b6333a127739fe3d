//! Cache of successful password verifications.
//!
//! argon2id on every login would dominate a busy server's CPU, so a success
//! is remembered as an HMAC over (user, stored hash, password) under a key
//! that never leaves memory. A later login with the same password against
//! the same stored hash matches the tag without hashing; a changed password
//! or a changed stored hash gives a different tag, so nothing stale is ever
//! accepted. One cache per core: lookups take no lock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use pop3sd_storage::Address;
use ring::hmac;

use super::scheme::StoredHash;

struct Entry {
    tag: hmac::Tag,
    at: Instant,
}

/// Remembers verified (user, password) pairs for a while.
pub struct VerifyCache {
    key: hmac::Key,
    entries: HashMap<Address, Entry>,
    capacity: usize,
    ttl: Duration,
}

impl VerifyCache {
    /// A cache of at most `capacity` users, each remembered for `ttl`.
    pub fn new(capacity: usize, ttl: Duration) -> Self {
        let rng = ring::rand::SystemRandom::new();
        let key = hmac::Key::generate(hmac::HMAC_SHA256, &rng).unwrap_or_else(|_| {
            hmac::Key::new(hmac::HMAC_SHA256, &std::process::id().to_le_bytes())
        });
        VerifyCache {
            key,
            entries: HashMap::new(),
            capacity,
            ttl,
        }
    }

    /// The bytes the tag covers: user, stored hash and password, NUL-separated.
    fn message(user: &Address, stored: &StoredHash, password: &[u8]) -> Vec<u8> {
        let user = user.to_string();
        let stored = stored.to_field();
        let mut m = Vec::with_capacity(user.len() + stored.len() + password.len() + 2);
        m.extend_from_slice(user.as_bytes());
        m.push(0);
        m.extend_from_slice(stored.as_bytes());
        m.push(0);
        m.extend_from_slice(password);
        m
    }

    /// True when this exact password was verified against this exact stored
    /// hash recently. The comparison is constant-time.
    pub fn check(
        &self,
        user: &Address,
        stored: &StoredHash,
        password: &[u8],
        now: Instant,
    ) -> bool {
        let Some(e) = self.entries.get(user) else {
            return false;
        };
        if now.duration_since(e.at) > self.ttl {
            return false;
        }
        hmac::verify(
            &self.key,
            &Self::message(user, stored, password),
            e.tag.as_ref(),
        )
        .is_ok()
    }

    /// Records a successful verification.
    pub fn insert(&mut self, user: &Address, stored: &StoredHash, password: &[u8], now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(user) {
            let ttl = self.ttl;
            self.entries.retain(|_, e| now.duration_since(e.at) <= ttl);
            if self.entries.len() >= self.capacity {
                if let Some(k) = self.entries.keys().next().cloned() {
                    self.entries.remove(&k);
                }
            }
        }
        let tag = hmac::sign(&self.key, &Self::message(user, stored, password));
        self.entries.insert(user.clone(), Entry { tag, at: now });
    }

    /// Number of users cached.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hit_miss_and_invalidation() {
        let mut c = VerifyCache::new(10, Duration::from_secs(60));
        let u = Address::parse("a@example.com").unwrap();
        let h1 = StoredHash::parse("{PLAIN}one").unwrap();
        let h2 = StoredHash::parse("{PLAIN}two").unwrap();
        let now = Instant::now();
        assert!(!c.check(&u, &h1, b"one", now));
        c.insert(&u, &h1, b"one", now);
        assert!(c.check(&u, &h1, b"one", now));
        assert!(!c.check(&u, &h1, b"two", now), "other password");
        assert!(!c.check(&u, &h2, b"one", now), "changed stored hash");
        assert!(
            !c.check(&u, &h1, b"one", now + Duration::from_secs(61)),
            "expired"
        );
    }

    #[test]
    fn bounded() {
        let mut c = VerifyCache::new(3, Duration::from_secs(60));
        let h = StoredHash::parse("{PLAIN}x").unwrap();
        let now = Instant::now();
        for i in 0..10 {
            c.insert(
                &Address::parse(format!("u{i}@e.com")).unwrap(),
                &h,
                b"x",
                now,
            );
        }
        assert_eq!(c.len(), 3);
    }
}
