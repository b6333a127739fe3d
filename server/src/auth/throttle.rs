//! Brute-force control: failure delays that grow with recent failures.
//!
//! Each failed login adds to a score for the user and one for the client
//! network (the IPv4 address, or the IPv6 /64, since one host owns a whole
//! /64). Scores halve every `half_life`. A failure is answered only after a
//! delay that doubles with the higher of the two scores, up to `max_delay`,
//! so one attacker's guesses get slower and slower. A correct password is
//! never delayed and clears the user's score: a user under attack still logs
//! in, and other users are not affected at all. Crossing the warning
//! threshold is logged once per burst.
//!
//! The tables are shared by all cores (an attacker's connections are spread
//! over them) behind one mutex, taken only on the failure path.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pop3sd_storage::Address;

/// Settings of the throttle.
#[derive(Debug, Clone, Copy)]
pub struct ThrottleConfig {
    /// Delay after the first failure.
    pub base_delay: Duration,
    /// Largest delay.
    pub max_delay: Duration,
    /// Time for a score to halve.
    pub half_life: Duration,
    /// Score at which a warning is logged.
    pub warn_score: f64,
    /// Most users and networks tracked (oldest forgotten beyond it).
    pub max_entries: usize,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            base_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(15),
            half_life: Duration::from_secs(300),
            warn_score: 10.0,
            max_entries: 100_000,
        }
    }
}

#[derive(Clone, Copy)]
struct Score {
    value: f64,
    at: Instant,
}

impl Score {
    fn decayed(&self, now: Instant, half_life: Duration) -> f64 {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.value * 0.5f64.powf(dt / half_life.as_secs_f64().max(1e-9))
    }
}

#[derive(Default)]
struct Tables {
    users: HashMap<Address, Score>,
    nets: HashMap<IpAddr, Score>,
}

/// The shared failure counters.
pub struct Throttle {
    config: ThrottleConfig,
    tables: Mutex<Tables>,
}

/// The network an address is counted under.
pub fn network_of(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
            }
        },
    }
}

fn bump<K: std::hash::Hash + Eq + Clone>(
    map: &mut HashMap<K, Score>,
    key: &K,
    now: Instant,
    cfg: &ThrottleConfig,
) -> f64 {
    if map.len() >= cfg.max_entries && !map.contains_key(key) {
        map.retain(|_, s| s.decayed(now, cfg.half_life) >= 0.5);
        if map.len() >= cfg.max_entries {
            if let Some(k) = map.keys().next().cloned() {
                map.remove(&k);
            }
        }
    }
    let prev = map.get(key).map_or(0.0, |s| s.decayed(now, cfg.half_life));
    let value = prev + 1.0;
    map.insert(key.clone(), Score { value, at: now });
    value
}

impl Throttle {
    /// A throttle with these settings.
    pub fn new(config: ThrottleConfig) -> Self {
        Throttle {
            config,
            tables: Mutex::new(Tables::default()),
        }
    }

    /// Records a failed login; returns how long to wait before answering.
    pub fn failure(&self, user: Option<&Address>, ip: IpAddr, now: Instant) -> Duration {
        let net = network_of(ip);
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        let net_score = bump(&mut t.nets, &net, now, &self.config);
        let user_score = match user {
            Some(u) => bump(&mut t.users, u, now, &self.config),
            None => 0.0,
        };
        drop(t);
        let score = net_score.max(user_score);
        let warn = self.config.warn_score;
        if (net_score >= warn && net_score - 1.0 < warn)
            || (user_score >= warn && user_score - 1.0 < warn)
        {
            tracing::warn!(
                client = %ip,
                user = user.map(|u| u.to_string()).unwrap_or_default(),
                net_failures = net_score.round() as u64,
                user_failures = user_score.round() as u64,
                "repeated login failures: possible password guessing, slowing down"
            );
        }
        let exp = (score - 1.0).clamp(0.0, 30.0);
        // Past what a Duration holds (an absurd base delay), the cap.
        let delay =
            Duration::try_from_secs_f64(self.config.base_delay.as_secs_f64() * 2f64.powf(exp))
                .unwrap_or(self.config.max_delay);
        delay.min(self.config.max_delay)
    }

    /// Records a successful login: the user's failures are forgotten.
    pub fn success(&self, user: &Address) {
        let mut t = self.tables.lock().unwrap_or_else(|p| p.into_inner());
        t.users.remove(user);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ThrottleConfig {
        ThrottleConfig {
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            half_life: Duration::from_secs(60),
            warn_score: 5.0,
            max_entries: 100,
        }
    }

    #[test]
    fn an_absurd_base_delay_is_capped_not_a_panic() {
        let t = Throttle::new(ThrottleConfig {
            base_delay: Duration::from_millis(u64::MAX / 2),
            max_delay: Duration::from_secs(3),
            ..cfg()
        });
        let ip: IpAddr = "192.0.2.8".parse().unwrap();
        let now = Instant::now();
        for _ in 0..40 {
            assert_eq!(t.failure(None, ip, now), Duration::from_secs(3));
        }
    }

    #[test]
    fn delays_grow_and_cap() {
        let t = Throttle::new(cfg());
        let u = Address::parse("victim@example.com").unwrap();
        let ip: IpAddr = "192.0.2.7".parse().unwrap();
        let now = Instant::now();
        let d: Vec<Duration> = (0..8).map(|_| t.failure(Some(&u), ip, now)).collect();
        assert_eq!(d[0], Duration::from_millis(100));
        assert_eq!(d[1], Duration::from_millis(200));
        assert!(d.windows(2).all(|w| w[1] >= w[0]));
        assert_eq!(d[7], Duration::from_secs(2));
        // Scores decay: much later, the first failure is cheap again.
        let later = now + Duration::from_secs(3600);
        assert_eq!(t.failure(Some(&u), ip, later), Duration::from_millis(100));
    }

    #[test]
    fn other_users_and_networks_are_unaffected() {
        let t = Throttle::new(cfg());
        let victim = Address::parse("victim@example.com").unwrap();
        let other = Address::parse("other@example.com").unwrap();
        let now = Instant::now();
        for _ in 0..10 {
            t.failure(Some(&victim), "192.0.2.7".parse().unwrap(), now);
        }
        assert_eq!(
            t.failure(Some(&other), "198.51.100.1".parse().unwrap(), now),
            Duration::from_millis(100)
        );
        t.success(&victim);
        // The network's score stays: the attacker is still slowed.
        assert_eq!(
            t.failure(Some(&victim), "192.0.2.7".parse().unwrap(), now),
            Duration::from_secs(2)
        );
    }

    #[test]
    fn ipv6_counts_per_64() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert_eq!(network_of(a), network_of(b));
        let m: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(network_of(m), "192.0.2.1".parse::<IpAddr>().unwrap());
    }
}
