//! TLS session ticket keys shared by every core (and optionally by several
//! servers), rotating on their own.
//!
//! All keys derive from one secret seed with HKDF: the key for time period
//! `n` (`n = unix_time / lifetime`) is `HKDF(seed, "pop3sd ticket key", n)`.
//! New tickets are sealed with the current period's key (AES-256-GCM, random
//! nonce); tickets sealed in the previous period are still accepted, so a
//! ticket lives between one and two periods. Servers that share the seed
//! file (and roughly agree on the time) derive the same keys, so a client
//! resumes on whichever server and whichever core it reaches, with no key
//! distribution beyond the file itself. Without a file the seed is random
//! per process.
//!
//! Ticket layout: key id (8) | nonce (12) | AES-256-GCM(state) with tag (16).

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

const ID_LEN: usize = 8;
const NONCE_LEN: usize = 12;

struct Len(usize);
impl hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

struct PeriodKey {
    id: [u8; ID_LEN],
    key: LessSafeKey,
}

struct KeySet {
    period: u64,
    current: PeriodKey,
    previous: PeriodKey,
}

/// Why a seed could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TicketKeyError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: expected at least 32 bytes of secret as hex (e.g. `openssl rand -hex 32`)")]
    Format { path: String },
    #[error("{path}: ticket key file must not be readable by group or others (chmod 600)")]
    Permissions { path: String },
    #[error("no system randomness")]
    Random,
}

/// The shared ticketer (a rustls `ProducesTickets`).
pub struct TicketKeys {
    prk: hkdf::Prk,
    from_file: bool,
    lifetime: u64,
    keys: ArcSwap<KeySet>,
    rng: SystemRandom,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("lifetime", &self.lifetime)
            .finish_non_exhaustive()
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn parse_hex(text: &str) -> Option<Vec<u8>> {
    let hex: String = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .collect();
    if hex.len() % 2 != 0 {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

impl TicketKeys {
    /// Keys from a random, per-process seed.
    pub fn random(lifetime_secs: u64) -> Result<Self, TicketKeyError> {
        let mut seed = [0u8; 32];
        SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| TicketKeyError::Random)?;
        Ok(Self::from_seed(&seed, lifetime_secs))
    }

    /// Keys from a seed file shared by a group of servers.
    pub fn from_file(path: &Path, lifetime_secs: u64) -> Result<Self, TicketKeyError> {
        use std::os::unix::fs::PermissionsExt;
        let p = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|source| TicketKeyError::Read {
            path: p.clone(),
            source,
        })?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(TicketKeyError::Permissions { path: p });
        }
        let text = std::fs::read_to_string(path).map_err(|source| TicketKeyError::Read {
            path: p.clone(),
            source,
        })?;
        match parse_hex(&text) {
            Some(seed) if seed.len() >= 32 => {
                let mut k = Self::from_seed(&seed, lifetime_secs);
                k.from_file = true;
                Ok(k)
            }
            _ => Err(TicketKeyError::Format { path: p }),
        }
    }

    /// Keys from a seed (tests; `from_file` and `random` use this).
    pub fn from_seed(seed: &[u8], lifetime_secs: u64) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"pop3sd-session-tickets-v1").extract(seed);
        let lifetime = lifetime_secs.max(60);
        let period = unix_now() / lifetime;
        let keys = ArcSwap::from_pointee(Self::derive_set(&prk, period));
        TicketKeys {
            prk,
            from_file: false,
            lifetime,
            keys,
            rng: SystemRandom::new(),
        }
    }

    /// True when the seed came from a file (reloads read it again).
    pub fn is_from_file(&self) -> bool {
        self.from_file
    }

    fn derive(prk: &hkdf::Prk, period: u64) -> PeriodKey {
        let p = period.to_be_bytes();
        let mut id = [0u8; ID_LEN];
        // HKDF-Expand of at most 255*32 bytes cannot fail for these lengths.
        if let Ok(okm) = prk.expand(&[b"pop3sd ticket id", &p], Len(ID_LEN)) {
            let _ = okm.fill(&mut id);
        }
        let mut raw = [0u8; 32];
        if let Ok(okm) = prk.expand(&[b"pop3sd ticket key", &p], Len(32)) {
            let _ = okm.fill(&mut raw);
        }
        // A 32-byte key is always valid for AES-256-GCM.
        let key = LessSafeKey::new(
            UnboundKey::new(&aead::AES_256_GCM, &raw).expect("AES-256-GCM takes a 32-byte key"),
        );
        PeriodKey { id, key }
    }

    fn derive_set(prk: &hkdf::Prk, period: u64) -> KeySet {
        KeySet {
            period,
            current: Self::derive(prk, period),
            previous: Self::derive(prk, period.saturating_sub(1)),
        }
    }

    /// The key set for now, derived anew when the period has moved on.
    fn keys_now(&self) -> Arc<KeySet> {
        let period = unix_now() / self.lifetime;
        let cur = self.keys.load_full();
        if cur.period == period {
            return cur;
        }
        let fresh = Arc::new(Self::derive_set(&self.prk, period));
        self.keys.store(fresh.clone());
        tracing::info!(period, "session ticket key rotated");
        fresh
    }

    fn seal(&self, plain: &[u8]) -> Option<Vec<u8>> {
        let keys = self.keys_now();
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut out = Vec::with_capacity(ID_LEN + NONCE_LEN + plain.len() + 16);
        out.extend_from_slice(&keys.current.id);
        out.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        keys.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(&keys.current.id),
                &mut body,
            )
            .ok()?;
        out.extend_from_slice(&body);
        Some(out)
    }

    fn open(&self, ticket: &[u8]) -> Option<Vec<u8>> {
        if ticket.len() < ID_LEN + NONCE_LEN + 16 {
            return None;
        }
        let keys = self.keys_now();
        let (id, rest) = ticket.split_at(ID_LEN);
        let k = if id == keys.current.id {
            &keys.current
        } else if id == keys.previous.id {
            &keys.previous
        } else {
            return None;
        };
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let plain = k
            .key
            .open_in_place(nonce, Aad::from(&k.id), &mut buf)
            .ok()?;
        let n = plain.len();
        buf.truncate(n);
        Some(buf)
    }
}

impl rustls::server::ProducesTickets for TicketKeys {
    fn enabled(&self) -> bool {
        true
    }
    fn lifetime(&self) -> u32 {
        self.lifetime.min(u32::MAX as u64) as u32
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.seal(plain)
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.open(cipher)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    #[test]
    fn seal_open_and_tamper() {
        let k = TicketKeys::from_seed(&[7; 32], 3600);
        let t = k.encrypt(b"session state").unwrap();
        assert_eq!(k.decrypt(&t).unwrap(), b"session state");
        let mut bad = t.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(k.decrypt(&bad).is_none());
        assert!(k.decrypt(&t[..10]).is_none());
    }

    #[test]
    fn servers_sharing_a_seed_accept_each_others_tickets() {
        let a = TicketKeys::from_seed(&[9; 32], 3600);
        let b = TicketKeys::from_seed(&[9; 32], 3600);
        let other = TicketKeys::from_seed(&[1; 32], 3600);
        let t = a.encrypt(b"x").unwrap();
        assert_eq!(b.decrypt(&t).unwrap(), b"x");
        assert!(other.decrypt(&t).is_none());
    }

    #[test]
    fn previous_period_still_opens_older_does_not() {
        let k = TicketKeys::from_seed(&[3; 32], 3600);
        let now = unix_now() / 3600;
        let seal_with = |period: u64| {
            let pk = TicketKeys::derive(&k.prk, period);
            let nonce = [5u8; NONCE_LEN];
            let mut body = b"old".to_vec();
            pk.key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(&pk.id),
                    &mut body,
                )
                .unwrap();
            [pk.id.to_vec(), nonce.to_vec(), body].concat()
        };
        assert_eq!(k.decrypt(&seal_with(now - 1)).unwrap(), b"old");
        assert!(k.decrypt(&seal_with(now - 2)).is_none());
    }

    #[test]
    fn seed_file_rules() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("keys");
        std::fs::write(&p, "# shared\n".to_string() + &"ab".repeat(32) + "\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            TicketKeys::from_file(&p, 3600),
            Err(TicketKeyError::Permissions { .. })
        ));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        TicketKeys::from_file(&p, 3600).unwrap();
        std::fs::write(&p, "abcd\n").unwrap();
        assert!(matches!(
            TicketKeys::from_file(&p, 3600),
            Err(TicketKeyError::Format { .. })
        ));
    }
}
