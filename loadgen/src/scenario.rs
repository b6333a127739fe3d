//! The operations a scenario is made of. Each one is a complete, checked
//! exchange with the server; the runner times it and counts its result.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;

use crate::pop3::{LoginMethod, OpError, Pop3};
use crate::tls_stream::{ConnectFailure, TlsStream};
use crate::users::User;

/// What to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Full TLS handshake, greeting, QUIT.
    Handshake,
    /// Like handshake, resuming a previous session where possible.
    Resume,
    /// Login, STAT, LIST, UIDL, RETR of a random message, QUIT.
    Session,
    /// Logged-in connections RETR'ing random messages over and over.
    Retr,
    /// N logged-in connections held idle for a while.
    Idle,
    /// A weighted mix of handshake, resume and session (see --mix).
    Mixed,
    /// Plain TCP, no TLS: plays --floor-script with a `tcp-floor` server,
    /// whose CPU per connection is this machine's floor under any server's.
    TcpFloor,
}

/// One kind of operation (what mixed chooses among).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Handshake,
    Resume,
    Session,
}

/// Where and how to connect.
pub struct Target {
    pub addr: SocketAddr,
    /// SNI; None means the user's domain.
    pub sni: Option<String>,
    /// Configs without and with session resumption.
    pub full: Arc<ClientConfig>,
    pub resuming: Arc<ClientConfig>,
    pub login: LoginMethod,
    pub timeout: Duration,
    /// tcp-floor: the exchange to play.
    pub floor: Option<pop3_loadgen::floor::Script>,
}

/// What an operation reports besides its latency.
#[derive(Debug, Default, Clone, Copy)]
pub struct Outcome {
    pub bytes_in: u64,
    pub payload: u64,
    pub handshakes: u64,
    pub attempts: u64,
    pub resumed: u64,
}

/// A small deterministic PRNG (xorshift64*), one per task.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    pub fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    }
}

impl Target {
    fn sni_for<'a>(&'a self, user: &'a User) -> &'a str {
        self.sni
            .as_deref()
            .or_else(|| user.domain())
            .unwrap_or("localhost")
    }

    /// Connects, handshakes and reads the greeting.
    pub async fn connect(
        &self,
        user: &User,
        resume: bool,
        out: &mut Outcome,
    ) -> Result<Pop3, OpError> {
        let cfg = if resume {
            self.resuming.clone()
        } else {
            self.full.clone()
        };
        let stream = TlsStream::connect(self.addr, self.sni_for(user), cfg)
            .await
            .map_err(|f| match f {
                ConnectFailure { tcp: true, error } => OpError::Connect(error),
                ConnectFailure { error, .. } => OpError::from(error),
            })?;
        out.handshakes += 1;
        if stream.offered_resumption() {
            out.attempts += 1;
        }
        if stream.resumed() {
            out.resumed += 1;
        }
        let mut p = Pop3::new(stream);
        p.greeting().await?;
        Ok(p)
    }
}

/// handshake / resume: connect, greeting, QUIT.
pub async fn handshake(t: &Target, user: &User, resume: bool) -> Result<Outcome, OpError> {
    let mut out = Outcome::default();
    let mut p = t.connect(user, resume, &mut out).await?;
    p.quit().await?;
    out.bytes_in = p.bytes_in;
    Ok(out)
}

/// What a session does beyond login, STAT, LIST, RETR and QUIT, so that
/// one scenario can take the shape of a published figure it is compared
/// with.
#[derive(Debug, Clone, Copy)]
pub struct SessionShape {
    /// Resume a previous TLS session where possible.
    pub resume: bool,
    /// Send UIDL after LIST.
    pub uidl: bool,
    /// RETR this message (1-based; the last if the maildrop has fewer)
    /// instead of a random one.
    pub message: Option<usize>,
}

/// session: login, STAT, LIST, UIDL, RETR, QUIT — all checked.
pub async fn session(
    t: &Target,
    user: &User,
    shape: SessionShape,
    rng: &mut Rng,
) -> Result<Outcome, OpError> {
    let mut out = Outcome::default();
    let mut p = t.connect(user, shape.resume, &mut out).await?;
    p.login(t.login, &user.name, &user.password).await?;
    let (count, octets) = p.stat().await?;
    let sizes = p.list().await?;
    if sizes.len() != count || sizes.iter().sum::<u64>() != octets {
        return Err(OpError::Malformed("LIST disagrees with STAT"));
    }
    if shape.uidl && p.uidl().await? != count {
        return Err(OpError::Malformed("UIDL disagrees with STAT"));
    }
    if count > 0 {
        let n = match shape.message {
            Some(m) => m.clamp(1, count),
            None => rng.below(count) + 1,
        };
        out.payload += p.retr(n, sizes[n - 1]).await?;
    }
    p.quit().await?;
    out.bytes_in = p.bytes_in;
    Ok(out)
}

/// A logged-in connection for the retr scenario.
pub struct RetrConn {
    pub pop: Pop3,
    pub sizes: Vec<u64>,
}

/// Opens a connection for retr and learns the message sizes.
pub async fn retr_open(t: &Target, user: &User) -> Result<(RetrConn, Outcome), OpError> {
    let mut out = Outcome::default();
    let mut pop = t.connect(user, true, &mut out).await?;
    pop.login(t.login, &user.name, &user.password).await?;
    let sizes = pop.list().await?;
    if sizes.is_empty() {
        return Err(OpError::Malformed("maildrop is empty; retr needs mail"));
    }
    Ok((RetrConn { pop, sizes }, out))
}

/// One RETR of a random message (or of `fixed`, 1-based).
pub async fn retr_one(
    c: &mut RetrConn,
    rng: &mut Rng,
    fixed: Option<usize>,
) -> Result<Outcome, OpError> {
    let n = fixed
        .unwrap_or_else(|| rng.below(c.sizes.len()) + 1)
        .clamp(1, c.sizes.len());
    let before = c.pop.bytes_in;
    let payload = c.pop.retr(n, c.sizes[n - 1]).await?;
    Ok(Outcome {
        bytes_in: c.pop.bytes_in - before,
        payload,
        ..Outcome::default()
    })
}

/// Parses `--mix handshake=20,resume=10,session=70`.
pub fn parse_mix(s: &str) -> Result<Vec<(Op, u32)>, String> {
    let mut v = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (name, w) = part
            .split_once('=')
            .ok_or_else(|| format!("--mix: {part:?} is not name=weight"))?;
        let w: u32 = w
            .parse()
            .map_err(|_| format!("--mix: weight {w:?} is not a number"))?;
        let op = match name {
            "handshake" => Op::Handshake,
            "resume" => Op::Resume,
            "session" => Op::Session,
            other => {
                return Err(format!(
                    "--mix: unknown operation {other:?} (handshake, resume, session)"
                ))
            }
        };
        v.push((op, w));
    }
    if v.iter().map(|(_, w)| w).sum::<u32>() == 0 {
        return Err("--mix: weights add up to zero".into());
    }
    Ok(v)
}

/// Picks an operation by weight.
pub fn pick(mix: &[(Op, u32)], rng: &mut Rng) -> Op {
    let total: u32 = mix.iter().map(|(_, w)| w).sum();
    let mut x = rng.below(total as usize) as u32;
    for (op, w) in mix {
        if x < *w {
            return *op;
        }
        x -= w;
    }
    mix[0].0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mix_parsing_and_picking() {
        let m = parse_mix("handshake=1,session=3").unwrap();
        let mut rng = Rng::new(7);
        let sessions = (0..4000)
            .filter(|_| pick(&m, &mut rng) == Op::Session)
            .count();
        assert!((2700..3300).contains(&sessions), "{sessions}");
        assert!(parse_mix("bogus=1").is_err());
        assert!(parse_mix("session=0").is_err());
    }
}
