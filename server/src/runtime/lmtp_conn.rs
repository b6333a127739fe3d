//! An LMTP connection from the MTA: the socket glue around
//! [`crate::lmtp::Session`]. Deliveries run on the blocking pool (they
//! fsync), one job per recipient so their appends proceed in parallel (and
//! share fsyncs through group commit), and the per-recipient replies go out
//! only once every append has returned.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use monoio::io::{AsyncReadRent, AsyncWriteRent, AsyncWriteRentExt};
use pop3sd_storage::{Address, PreparedMessage};

use super::local_sync::Stage;
use super::{Core, Generation};
use crate::auth::Directory;
use crate::lmtp::{Action, DeliveryResult, RcptCheck, Recipients, Session};

/// An idle LMTP client (or one not reading its replies) is dropped after
/// this long.
const IDLE: Duration = Duration::from_secs(300);

/// Recipient checks against a tenant directory.
pub struct DirectoryRecipients<'a> {
    pub directory: &'a Directory,
    /// `lmtp.recipient_delimiter`.
    pub delimiters: &'a str,
}

impl<'a> DirectoryRecipients<'a> {
    fn of(gen: &'a Generation) -> Self {
        DirectoryRecipients {
            directory: &gen.directory,
            delimiters: &gen.config.lmtp.recipient_delimiter,
        }
    }
}

/// `rcpt` without its address extension (`alice+lists@…` → `alice@…`),
/// where its local part has one after at least one character.
pub fn without_extension(rcpt: &Address, delimiters: &str) -> Option<Address> {
    let local = rcpt.local.as_str();
    let at = local.find(|c| delimiters.contains(c)).filter(|&i| i > 0)?;
    let base = pop3sd_storage::LocalPart::parse(&local[..at]).ok()?;
    Some(Address::new(base, rcpt.domain.clone()))
}

impl Recipients for DirectoryRecipients<'_> {
    fn check(&self, rcpt: &Address) -> RcptCheck {
        let found = self.directory.user(rcpt).or_else(|| {
            without_extension(rcpt, self.delimiters).and_then(|base| self.directory.user(&base))
        });
        match found {
            Some(found) => RcptCheck::Accept {
                address: found.address,
                size_limit: found.tenant.policy.max_message_size,
            },
            None => RcptCheck::Unknown,
        }
    }

    fn max_size(&self) -> u64 {
        self.directory
            .tenants()
            .iter()
            .map(|t| t.policy.max_message_size)
            .max()
            .unwrap_or(0)
    }
}

/// Answers a connection over `lmtp.max_connections` with `421` and closes
/// it: the MTA keeps the mail queued and tries again.
pub(crate) async fn refuse_busy<S: AsyncWriteRent>(core: &Core, mut stream: S, peer: String) {
    let gen = core.shared.generation();
    let max = gen.config.lmtp.max_connections;
    if core.warn_lmtp_busy(Instant::now()) {
        tracing::warn!(peer = %peer, max, "LMTP connection refused: lmtp.max_connections reached (further ones this minute are logged at debug level)");
    } else {
        tracing::debug!(peer = %peer, max, "LMTP connection refused: lmtp.max_connections reached");
    }
    let line = format!(
        "421 4.3.2 {} too many LMTP connections, try again later\r\n",
        gen.config.hostname
    );
    let _ =
        monoio::time::timeout(Duration::from_secs(5), stream.write_all(line.into_bytes())).await;
}

/// How long replies still being written when the shutdown's drain deadline
/// passes get to reach the MTA.
const CLOSING_GRACE: Duration = Duration::from_secs(5);

/// What a wait for the MTA's next bytes ended with.
enum Woke {
    Read(std::io::Result<usize>, Vec<u8>),
    Idle,
    /// The server is shutting down: between transactions, or past the drain
    /// deadline.
    Stop,
}

/// Serves one LMTP connection to its end.
pub(crate) async fn serve<S: AsyncReadRent + AsyncWriteRent>(
    core: Rc<Core>,
    mut stream: S,
    peer: String,
) {
    // The configuration RCPT checks and deliveries go by: the one in force
    // when a transaction begins, so that a user added or removed by a reload
    // counts on the connections an MTA keeps open and reuses.
    let mut gen: Arc<Generation> = core.shared.generation();
    let mut session = Session::new(&gen.config.hostname);
    let mut buf = vec![0u8; 16 * 1024];
    let mut memory = core.lmtp_memory.hold();
    loop {
        if !session.output().is_empty() {
            let out = session.output().to_vec();
            let n = out.len();
            // A peer that stops reading is dropped like an idle one, and
            // does not hold up the shutdown for long: once the drain
            // deadline passes, a write gets a short grace, since replies to
            // a finished delivery that never arrive make the MTA deliver the
            // message again.
            let deadline = monoio::time::Instant::from_std(Instant::now() + IDLE);
            let mut write =
                std::pin::pin!(monoio::time::timeout_at(deadline, stream.write_all(out)));
            let written = monoio::select! {
                r = &mut write => Some(r),
                _ = core.phase.reached(Stage::Closing) => {
                    monoio::time::timeout(CLOSING_GRACE, &mut write).await.ok()
                }
            };
            match written {
                Some(Ok((Ok(_), _))) => {}
                Some(Ok((Err(_), _))) | None => return,
                Some(Err(_)) => {
                    tracing::info!(peer = %peer, "LMTP client not reading its replies; closed");
                    return;
                }
            }
            session.consumed(n);
        }
        let mut closing = false;
        while let Some(action) = session.poll_action() {
            match action {
                Action::Close => closing = true,
                Action::Deliver {
                    recipients,
                    wire,
                    summary,
                    received,
                } => {
                    let results = deliver_all(
                        &core,
                        &gen,
                        recipients,
                        PreparedMessage::from_encoded(wire, summary),
                        received,
                    )
                    .await;
                    session.delivered(results, &DirectoryRecipients::of(&gen));
                    memory.set(session.memory() as u64);
                }
            }
        }
        if !session.output().is_empty() {
            continue;
        }
        if closing || session.is_closed() {
            return;
        }
        let between = !session.in_transaction();
        if between && core.phase.get() >= Stage::Draining {
            session.shut_down();
            continue;
        }
        let deadline = monoio::time::Instant::from_std(Instant::now() + IDLE);
        // Between transactions a shutdown ends the session at once (with a
        // 421); within one, only the drain deadline does.
        let stop_at = if between {
            Stage::Draining
        } else {
            Stage::Closing
        };
        let woke = monoio::select! {
            r = monoio::time::timeout_at(deadline, stream.read(buf)) => match r {
                Ok((res, b)) => Woke::Read(res, b),
                Err(_) => Woke::Idle,
            },
            _ = core.phase.reached(stop_at) => Woke::Stop,
        };
        match woke {
            Woke::Read(res, b) => {
                buf = b;
                if !session.in_transaction() {
                    gen = core.shared.generation();
                }
                match res {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let dir = DirectoryRecipients::of(&gen);
                        session.receive(&buf[..n], &dir);
                        // Checked after each read (one read may grow the
                        // message's buffer by doubling it).
                        if !memory.set(session.memory() as u64) && session.shed_message(&dir) {
                            warn_shed(&core, &peer);
                            memory.set(session.memory() as u64);
                        }
                    }
                }
                // The next read needs the whole buffer again.
                buf.resize(16 * 1024, 0);
            }
            Woke::Idle => {
                tracing::info!(peer = %peer, "LMTP client idle too long; closed");
                return;
            }
            // The read was dropped with its buffer; the session ends here.
            Woke::Stop if between => {
                session.shut_down();
                buf = Vec::new();
            }
            Woke::Stop => return,
        }
    }
}

/// Logs a message shed because LMTP connections together held more than
/// `lmtp.max_memory`.
fn warn_shed(core: &Core, peer: &str) {
    let (used, max) = (core.lmtp_memory.used(), core.lmtp_memory.limit());
    if core.warn_lmtp_shed(Instant::now()) {
        tracing::warn!(peer = %peer, used, max, "LMTP message shed: lmtp.max_memory reached; its recipients are told to try again later (further ones this minute are logged at debug level)");
    } else {
        tracing::debug!(peer = %peer, used, max, "LMTP message shed: lmtp.max_memory reached");
    }
}

async fn deliver_all(
    core: &Rc<Core>,
    gen: &Arc<Generation>,
    recipients: Vec<(Address, u64)>,
    msg: PreparedMessage,
    received: u64,
) -> Vec<DeliveryResult> {
    let msg = Arc::new(msg);
    let started = Instant::now();
    let jobs: Vec<_> = recipients
        .into_iter()
        .map(|(addr, _)| {
            let (store, dir, usage, msg) = (
                core.shared.store.clone(),
                gen.directory.clone(),
                core.shared.usage.clone(),
                msg.clone(),
            );
            let tenant = addr.domain.to_string();
            let job = core
                .shared
                .pool
                .run(move || crate::delivery::deliver(&store, &dir, &usage, &addr, &msg, received));
            (tenant, job)
        })
        .collect();
    let mut results = Vec::with_capacity(jobs.len());
    for (tenant, job) in jobs {
        let r = job
            .await
            .unwrap_or_else(|_| DeliveryResult::TempFail("delivery worker failed".into()));
        core.metrics
            .delivery(&tenant, r == DeliveryResult::Delivered, started.elapsed());
        results.push(r);
    }
    results
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::directory::{Tenant, TenantPolicy};
    use crate::auth::StoredHash;
    use pop3sd_storage::{Domain, LocalPart};

    #[test]
    fn an_address_extension_reaches_its_user_only_where_configured() {
        let dir = Directory::new(vec![Tenant::new(
            Domain::parse("example.com").unwrap(),
            vec![],
            TenantPolicy::default(),
            ["alice", "bob+x"].map(|u| {
                (
                    LocalPart::parse(u).unwrap(),
                    StoredHash::parse("{PLAIN}x").unwrap(),
                )
            }),
        )])
        .unwrap();
        let check = |rcpt: &str, delimiters: &str| match (DirectoryRecipients {
            directory: &dir,
            delimiters,
        })
        .check(&Address::parse(rcpt.as_bytes()).unwrap())
        {
            RcptCheck::Accept { address, .. } => Some(address.to_string()),
            _ => None,
        };
        assert_eq!(check("alice+lists@example.com", ""), None);
        assert_eq!(
            check("alice+lists@example.com", "+"),
            Some("alice@example.com".into())
        );
        assert_eq!(
            check("alice-lists@example.com", "+-"),
            Some("alice@example.com".into())
        );
        // A user whose name holds the delimiter is taken as it stands.
        assert_eq!(
            check("bob+x@example.com", "+"),
            Some("bob+x@example.com".into())
        );
        assert_eq!(check("+alice@example.com", "+"), None);
        assert_eq!(check("carol+x@example.com", "+"), None);
    }
}
