//! Connection limits: in total, per client address, per user.
//!
//! The counts are shared by all cores. The total is one atomic; the
//! per-address and per-user tables are split into shards by hash, so two
//! cores only meet on the same lock when their clients hash alike, and only
//! twice per connection (open and close), never per command. Each successful
//! acquisition returns a guard that gives the slot back when dropped.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pop3sd_storage::Address;

use crate::auth::throttle::network_of;

const SHARDS: usize = 32;

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitHit {
    Total,
    PerAddress,
    PerUser,
}

impl LimitHit {
    /// The `-ERR` text (with response code) the client gets.
    pub fn message(self) -> &'static str {
        match self {
            LimitHit::Total => "[SYS/TEMP] Too many connections to this server; try again later.",
            LimitHit::PerAddress => {
                "[SYS/TEMP] Too many connections from your address; try again later."
            }
            LimitHit::PerUser => "[IN-USE] Too many sessions for this user; try again later.",
        }
    }
}

struct Sharded<K>([Mutex<HashMap<K, usize>>; SHARDS]);

impl<K: Hash + Eq + Clone> Sharded<K> {
    fn new() -> Self {
        Sharded(std::array::from_fn(|_| Mutex::new(HashMap::new())))
    }

    fn shard(&self, k: &K) -> &Mutex<HashMap<K, usize>> {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        k.hash(&mut h);
        &self.0[h.finish() as usize % SHARDS]
    }

    fn try_add(&self, k: &K, max: usize) -> bool {
        let mut m = self.shard(k).lock().unwrap_or_else(|p| p.into_inner());
        let n = m.entry(k.clone()).or_insert(0);
        if *n >= max {
            if *n == 0 {
                m.remove(k);
            }
            return false;
        }
        *n += 1;
        true
    }

    fn remove(&self, k: &K) {
        let mut m = self.shard(k).lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(k) {
            *n -= 1;
            if *n == 0 {
                m.remove(k);
            }
        }
    }

    fn get(&self, k: &K) -> usize {
        let m = self.shard(k).lock().unwrap_or_else(|p| p.into_inner());
        m.get(k).copied().unwrap_or(0)
    }
}

/// The shared counters.
pub struct Counters {
    total: AtomicUsize,
    per_address: Sharded<IpAddr>,
    per_user: Sharded<Address>,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            total: AtomicUsize::new(0),
            per_address: Sharded::new(),
            per_user: Sharded::new(),
        }
    }
}

/// A held connection slot (total and per address).
pub struct ConnGuard {
    counters: Arc<Counters>,
    net: IpAddr,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.counters.total.fetch_sub(1, Ordering::AcqRel);
        self.counters.per_address.remove(&self.net);
    }
}

/// A held per-user session slot.
pub struct UserGuard {
    counters: Arc<Counters>,
    user: Address,
}

impl Drop for UserGuard {
    fn drop(&mut self) {
        self.counters.per_user.remove(&self.user);
    }
}

impl Counters {
    /// Takes a connection slot for a client, or says which limit is reached.
    pub fn connect(
        self: &Arc<Self>,
        client: IpAddr,
        max_total: usize,
        max_per_address: usize,
    ) -> Result<ConnGuard, LimitHit> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= max_total {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitHit::Total);
        }
        let net = network_of(client);
        if !self.per_address.try_add(&net, max_per_address) {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(LimitHit::PerAddress);
        }
        Ok(ConnGuard {
            counters: self.clone(),
            net,
        })
    }

    /// Takes a session slot for a user.
    pub fn user(self: &Arc<Self>, user: &Address, max: usize) -> Result<UserGuard, LimitHit> {
        if self.per_user.try_add(user, max) {
            Ok(UserGuard {
                counters: self.clone(),
                user: user.clone(),
            })
        } else {
            Err(LimitHit::PerUser)
        }
    }

    /// Connections open now.
    pub fn total(&self) -> usize {
        self.total.load(Ordering::Acquire)
    }

    /// Connections open now from a client's network.
    pub fn from_address(&self, client: IpAddr) -> usize {
        self.per_address.get(&network_of(client))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_release() {
        let c = Arc::new(Counters::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let g1 = c.connect(a, 3, 2).unwrap();
        let g2 = c.connect(a, 3, 2).unwrap();
        assert_eq!(c.connect(a, 3, 2).err(), Some(LimitHit::PerAddress));
        let g3 = c.connect(b, 3, 2).unwrap();
        assert_eq!(c.connect(b, 3, 2).err(), Some(LimitHit::Total));
        assert_eq!(c.total(), 3);
        drop(g1);
        assert_eq!(c.from_address(a), 1);
        let _g4 = c.connect(a, 3, 2).unwrap();
        drop((g2, g3));
        let u = Address::parse("u@example.com").unwrap();
        let s1 = c.user(&u, 1).unwrap();
        assert_eq!(c.user(&u, 1).err(), Some(LimitHit::PerUser));
        drop(s1);
        c.user(&u, 1).unwrap();
    }
}
