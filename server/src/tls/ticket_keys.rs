//! TLS session ticket keys shared by every core (and optionally by several
//! servers), rotating on their own.
//!
//! Time is cut into periods of one lifetime (`n = unix_time / lifetime`).
//! New tickets are sealed with the current period's key (AES-256-GCM, random
//! nonce); the previous period's key still opens tickets, and a ticket older
//! than the lifetime is refused whichever key sealed it (rustls's server
//! does not check a ticket's age itself), so no ticket outlives what the
//! server advertised, and never more than RFC 8446's seven days.
//!
//! - **Without a file** each period's key is fresh randomness, kept for two
//!   periods and then forgotten: a memory image of the server opens at most
//!   the tickets of the last two periods.
//! - **With a seed file** the key for period `n` is `HKDF(seed, n)`: servers
//!   that share the file (and roughly agree on the time) derive the same
//!   keys, so a client resumes on whichever server and core it reaches.
//!   Whoever holds the file can derive every key it ever gave, so the file
//!   should be replaced now and then (docs/config.md).
//!
//! Listeners that treat client certificates differently use different
//! *scopes* ([`ScopedTickets`]): the scope is authenticated with every
//! ticket, so a ticket issued where no certificate was asked for never
//! resumes on a listener that requires one.
//!
//! Ticket layout: key id (8) | issued at (8, unix seconds) | nonce (12) |
//! AES-256-GCM(state) with tag (16); the key id, the issue time and the
//! scope are the additional data.

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwap;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};

const ID_LEN: usize = 8;
const ISSUED_LEN: usize = 8;
const NONCE_LEN: usize = 12;
const HEADER_LEN: usize = ID_LEN + ISSUED_LEN + NONCE_LEN;
const TAG_LEN: usize = 16;

/// RFC 8446 §4.6.1: a server MUST NOT advertise a ticket lifetime longer
/// than seven days.
pub const MAX_LIFETIME_SECS: u64 = 7 * 24 * 3600;
const MIN_LIFETIME_SECS: u64 = 60;
/// How far in the future a ticket's issue time may lie (servers sharing a
/// seed file whose clocks differ a little).
const CLOCK_SKEW_SECS: u64 = 300;

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
    current: Arc<PeriodKey>,
    previous: Option<Arc<PeriodKey>>,
}

/// Where period keys come from.
enum Source {
    /// Derived from a seed shared by a group of servers.
    Seed(hkdf::Prk),
    /// Fresh randomness each period, never derivable again.
    Random,
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

/// The keys every listener's ticketer shares; see [`TicketKeys::scoped`].
pub struct TicketKeys {
    source: Source,
    lifetime: u64,
    keys: ArcSwap<KeySet>,
    rng: SystemRandom,
}

impl std::fmt::Debug for TicketKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TicketKeys")
            .field("lifetime", &self.lifetime)
            .field("from_file", &self.is_from_file())
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

fn new_key(raw: &[u8; 32], id: [u8; ID_LEN]) -> PeriodKey {
    // A 32-byte key is always valid for AES-256-GCM.
    let key = LessSafeKey::new(
        UnboundKey::new(&aead::AES_256_GCM, raw).expect("AES-256-GCM takes a 32-byte key"),
    );
    PeriodKey { id, key }
}

fn random_key(rng: &SystemRandom) -> Result<PeriodKey, TicketKeyError> {
    let mut raw = [0u8; 32];
    let mut id = [0u8; ID_LEN];
    rng.fill(&mut raw).map_err(|_| TicketKeyError::Random)?;
    rng.fill(&mut id).map_err(|_| TicketKeyError::Random)?;
    Ok(new_key(&raw, id))
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
    new_key(&raw, id)
}

fn derive_set(prk: &hkdf::Prk, period: u64) -> KeySet {
    KeySet {
        period,
        current: Arc::new(derive(prk, period)),
        previous: period.checked_sub(1).map(|p| Arc::new(derive(prk, p))),
    }
}

fn aad(id: &[u8], issued: &[u8], scope: u8) -> [u8; ID_LEN + ISSUED_LEN + 1] {
    let mut a = [0u8; ID_LEN + ISSUED_LEN + 1];
    a[..ID_LEN].copy_from_slice(id);
    a[ID_LEN..ID_LEN + ISSUED_LEN].copy_from_slice(issued);
    a[ID_LEN + ISSUED_LEN] = scope;
    a
}

impl TicketKeys {
    /// Keys that are fresh randomness each period (one server).
    pub fn random(lifetime_secs: u64) -> Result<Self, TicketKeyError> {
        let rng = SystemRandom::new();
        let lifetime = Self::clamp(lifetime_secs);
        let current = Arc::new(random_key(&rng)?);
        Ok(TicketKeys {
            source: Source::Random,
            lifetime,
            keys: ArcSwap::from_pointee(KeySet {
                period: unix_now() / lifetime,
                current,
                previous: None,
            }),
            rng,
        })
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
            Some(seed) if seed.len() >= 32 => Ok(Self::from_seed(&seed, lifetime_secs)),
            _ => Err(TicketKeyError::Format { path: p }),
        }
    }

    /// Keys derived from a seed (`from_file` reads one; tests pass one).
    pub fn from_seed(seed: &[u8], lifetime_secs: u64) -> Self {
        let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, b"pop3sd-session-tickets-v1").extract(seed);
        let lifetime = Self::clamp(lifetime_secs);
        let keys = ArcSwap::from_pointee(derive_set(&prk, unix_now() / lifetime));
        TicketKeys {
            source: Source::Seed(prk),
            lifetime,
            keys,
            rng: SystemRandom::new(),
        }
    }

    fn clamp(lifetime_secs: u64) -> u64 {
        lifetime_secs.clamp(MIN_LIFETIME_SECS, MAX_LIFETIME_SECS)
    }

    /// True when these keys were made for `lifetime_secs` (a reload that
    /// changes the lifetime needs new random keys to take it).
    pub fn has_lifetime(&self, lifetime_secs: u64) -> bool {
        self.lifetime == Self::clamp(lifetime_secs)
    }

    /// True when the keys come from a seed file (reloads read it again).
    pub fn is_from_file(&self) -> bool {
        matches!(self.source, Source::Seed(_))
    }

    /// The ticketer for one kind of listener (see the module doc).
    pub fn scoped(self: &Arc<Self>, scope: u8) -> Arc<ScopedTickets> {
        Arc::new(ScopedTickets {
            keys: self.clone(),
            scope,
        })
    }

    /// The key set for `now`, moved on first when the period has.
    fn keys_at(&self, now: u64) -> Option<Arc<KeySet>> {
        let period = now / self.lifetime;
        loop {
            let cur = self.keys.load_full();
            // A clock that steps back keeps the newer keys.
            if cur.period >= period {
                return Some(cur);
            }
            let next = Arc::new(match &self.source {
                Source::Seed(prk) => derive_set(prk, period),
                Source::Random => KeySet {
                    period,
                    current: Arc::new(random_key(&self.rng).ok()?),
                    previous: (cur.period + 1 == period).then(|| cur.current.clone()),
                },
            });
            // Cores may race to rotate; the first wins and the others use
            // its keys, so no ticket is sealed with a key that is dropped.
            let was = self.keys.compare_and_swap(&cur, next.clone());
            if Arc::ptr_eq(&was, &cur) {
                tracing::info!(period, "session ticket key rotated");
                return Some(next);
            }
        }
    }

    fn seal(&self, scope: u8, plain: &[u8], now: u64) -> Option<Vec<u8>> {
        let keys = self.keys_at(now)?;
        let k = &keys.current;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let issued = now.to_be_bytes();
        let mut out = Vec::with_capacity(HEADER_LEN + plain.len() + TAG_LEN);
        out.extend_from_slice(&k.id);
        out.extend_from_slice(&issued);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let (_, body) = out.split_at_mut(HEADER_LEN);
        let tag = k
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(&k.id, &issued, scope)),
                body,
            )
            .ok()?;
        out.extend_from_slice(tag.as_ref());
        Some(out)
    }

    fn open(&self, scope: u8, ticket: &[u8], now: u64) -> Option<Vec<u8>> {
        if ticket.len() < HEADER_LEN + TAG_LEN {
            return None;
        }
        let (id, rest) = ticket.split_at(ID_LEN);
        let (issued, rest) = rest.split_at(ISSUED_LEN);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let at = u64::from_be_bytes(issued.try_into().ok()?);
        if at > now.saturating_add(CLOCK_SKEW_SECS) || now.saturating_sub(at) > self.lifetime {
            return None;
        }
        let keys = self.keys_at(now)?;
        let k = std::iter::once(&keys.current)
            .chain(keys.previous.as_ref())
            .find(|k| k.id == id)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buf = sealed.to_vec();
        let n = k
            .key
            .open_in_place(nonce, Aad::from(aad(id, issued, scope)), &mut buf)
            .ok()?
            .len();
        buf.truncate(n);
        Some(buf)
    }
}

/// One kind of listener's ticketer over the shared [`TicketKeys`]: tickets
/// it seals open only in the same scope.
#[derive(Debug)]
pub struct ScopedTickets {
    keys: Arc<TicketKeys>,
    scope: u8,
}

impl rustls::server::ProducesTickets for ScopedTickets {
    fn enabled(&self) -> bool {
        true
    }
    fn lifetime(&self) -> u32 {
        // At most MAX_LIFETIME_SECS, which fits.
        u32::try_from(self.keys.lifetime).unwrap_or(u32::MAX)
    }
    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.keys.seal(self.scope, plain, unix_now())
    }
    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.keys.open(self.scope, cipher, unix_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::server::ProducesTickets;

    #[test]
    fn seal_open_and_tamper() {
        let k = Arc::new(TicketKeys::from_seed(&[7; 32], 3600));
        let s = k.scoped(0);
        let t = s.encrypt(b"session state").unwrap();
        assert_eq!(s.decrypt(&t).unwrap(), b"session state");
        for i in [0, ID_LEN, ID_LEN + ISSUED_LEN - 1, HEADER_LEN, t.len() - 1] {
            let mut bad = t.clone();
            bad[i] ^= 1;
            assert!(s.decrypt(&bad).is_none(), "byte {i} is not authenticated");
        }
        assert!(s.decrypt(&t[..10]).is_none());
        assert!(s.decrypt(&t[..HEADER_LEN + TAG_LEN - 1]).is_none());
    }

    #[test]
    fn a_ticket_opens_only_in_its_own_scope() {
        let k = Arc::new(TicketKeys::from_seed(&[7; 32], 3600));
        let t = k.scoped(0).encrypt(b"no certificate asked").unwrap();
        assert!(k.scoped(2).decrypt(&t).is_none());
        assert!(k.scoped(1).decrypt(&t).is_none());
        assert!(k.scoped(0).decrypt(&t).is_some());
        let r = Arc::new(TicketKeys::random(3600).unwrap());
        let t = r.scoped(2).encrypt(b"x").unwrap();
        assert!(r.scoped(0).decrypt(&t).is_none());
        assert!(r.scoped(2).decrypt(&t).is_some());
    }

    #[test]
    fn servers_sharing_a_seed_accept_each_others_tickets() {
        let a = Arc::new(TicketKeys::from_seed(&[9; 32], 3600));
        let b = Arc::new(TicketKeys::from_seed(&[9; 32], 3600));
        let other = Arc::new(TicketKeys::from_seed(&[1; 32], 3600));
        let t = a.scoped(0).encrypt(b"x").unwrap();
        assert_eq!(b.scoped(0).decrypt(&t).unwrap(), b"x");
        assert!(other.scoped(0).decrypt(&t).is_none());
        // Random keys are the process's own.
        let r1 = Arc::new(TicketKeys::random(3600).unwrap());
        let r2 = Arc::new(TicketKeys::random(3600).unwrap());
        let t = r1.scoped(0).encrypt(b"x").unwrap();
        assert!(r2.scoped(0).decrypt(&t).is_none());
    }

    #[test]
    fn a_ticket_lives_no_longer_than_the_lifetime() {
        let life = 3600;
        let k = TicketKeys::from_seed(&[3; 32], life);
        let now = unix_now();
        let t = k.seal(0, b"s", now).unwrap();
        assert!(k.open(0, &t, now + life).is_some());
        assert!(
            k.open(0, &t, now + life + 1).is_none(),
            "older than advertised"
        );
        // Issued (as it claims) in the future: only within the clock skew.
        let ahead = k.seal(0, b"s", now + CLOCK_SKEW_SECS).unwrap();
        assert!(k.open(0, &ahead, now).is_some());
        let far = k.seal(0, b"s", now + CLOCK_SKEW_SECS + 10).unwrap();
        assert!(k.open(0, &far, now).is_none());
    }

    #[test]
    fn previous_period_still_opens_older_does_not() {
        let life = 3600;
        let k = TicketKeys::from_seed(&[3; 32], life);
        let now = unix_now();
        let period = now / life;
        let Source::Seed(prk) = &k.source else {
            panic!("seeded")
        };
        // A ticket sealed with a period's key, issued a minute ago.
        let seal_with = |period: u64| {
            let pk = derive(prk, period);
            let nonce = [5u8; NONCE_LEN];
            let issued = (now - 60).to_be_bytes();
            let mut body = b"old".to_vec();
            pk.key
                .seal_in_place_append_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad(&pk.id, &issued, 0)),
                    &mut body,
                )
                .unwrap();
            [pk.id.to_vec(), issued.to_vec(), nonce.to_vec(), body].concat()
        };
        assert_eq!(k.open(0, &seal_with(period), now).unwrap(), b"old");
        assert_eq!(k.open(0, &seal_with(period - 1), now).unwrap(), b"old");
        assert!(k.open(0, &seal_with(period - 2), now).is_none());
    }

    #[test]
    fn random_keys_are_fresh_each_period_and_forgotten_after_two() {
        let life = 60;
        let k = TicketKeys::random(life).unwrap();
        let now = unix_now();
        let first = k.keys_at(now).unwrap().current.id;
        let t = k.seal(0, b"s", now).unwrap();
        // Next period: a new key seals, the old one still opens.
        let next = k.keys_at(now + life).unwrap();
        assert_ne!(next.current.id, first);
        assert_eq!(next.previous.as_ref().map(|p| p.id), Some(first));
        assert!(k.open(0, &t, now + life).is_some());
        // Two periods on, the first key is gone from memory.
        let later = k.keys_at(now + 2 * life).unwrap();
        assert!(later.current.id != first && later.previous.as_ref().map(|p| p.id) != Some(first));
        // After a gap of several periods there is no previous key at all.
        let gap = k.keys_at(now + 10 * life).unwrap();
        assert!(gap.previous.is_none());
        // A clock stepping back keeps the newest keys.
        assert_eq!(k.keys_at(now).unwrap().current.id, gap.current.id);
    }

    #[test]
    fn lifetime_is_clamped_to_what_rfc_8446_allows() {
        let k = Arc::new(TicketKeys::from_seed(&[1; 32], 30 * 24 * 3600));
        assert_eq!(k.scoped(0).lifetime(), 604_800);
        let k = Arc::new(TicketKeys::random(1).unwrap());
        assert_eq!(k.scoped(0).lifetime(), 60);
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
        assert!(TicketKeys::from_file(&p, 3600).unwrap().is_from_file());
        assert!(!TicketKeys::random(3600).unwrap().is_from_file());
        std::fs::write(&p, "abcd\n").unwrap();
        assert!(matches!(
            TicketKeys::from_file(&p, 3600),
            Err(TicketKeyError::Format { .. })
        ));
    }
}
