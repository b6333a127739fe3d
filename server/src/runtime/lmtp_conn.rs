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

use super::{Core, Generation};
use crate::auth::Directory;
use crate::lmtp::{Action, DeliveryResult, RcptCheck, Recipients, Session};

/// An idle LMTP client (or one not reading its replies) is dropped after
/// this long.
const IDLE: Duration = Duration::from_secs(300);

/// Recipient checks against a tenant directory.
pub struct DirectoryRecipients<'a>(pub &'a Directory);

impl Recipients for DirectoryRecipients<'_> {
    fn check(&self, rcpt: &Address) -> RcptCheck {
        match self.0.user(rcpt) {
            Some(found) => RcptCheck::Accept {
                address: found.address,
                size_limit: found.tenant.policy.max_message_size,
            },
            None => RcptCheck::Unknown,
        }
    }

    fn max_size(&self) -> u64 {
        self.0
            .tenants()
            .iter()
            .map(|t| t.policy.max_message_size)
            .max()
            .unwrap_or(0)
    }
}

/// Serves one LMTP connection to its end.
pub(crate) async fn serve<S: AsyncReadRent + AsyncWriteRent>(
    core: Rc<Core>,
    mut stream: S,
    peer: String,
) {
    let gen: Arc<Generation> = core.shared.generation();
    let mut session = Session::new(&gen.config.hostname);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !session.output().is_empty() {
            let out = session.output().to_vec();
            let n = out.len();
            // A peer that stops reading is dropped like an idle one, and
            // does not hold up the shutdown.
            let deadline = monoio::time::Instant::from_std(Instant::now() + IDLE);
            let written = monoio::select! {
                r = monoio::time::timeout_at(deadline, stream.write_all(out)) => r,
                _ = core.phase.reached(super::local_sync::Stage::Closing) => return,
            };
            match written {
                Ok((Ok(_), _)) => {}
                Ok((Err(_), _)) => return,
                Err(_) => {
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
                } => {
                    let results = deliver_all(
                        &core,
                        &gen,
                        recipients,
                        PreparedMessage::from_encoded(wire, summary),
                    )
                    .await;
                    session.delivered(results, &DirectoryRecipients(&gen.directory));
                }
            }
        }
        if !session.output().is_empty() {
            continue;
        }
        if closing || session.is_closed() {
            return;
        }
        let deadline = monoio::time::Instant::from_std(Instant::now() + IDLE);
        let read = monoio::select! {
            r = monoio::time::timeout_at(deadline, stream.read(buf)) => r,
            _ = core.phase.reached(super::local_sync::Stage::Closing) => return,
        };
        let (res, b) = match read {
            Ok(x) => x,
            Err(_) => {
                tracing::info!(peer = %peer, "LMTP client idle too long; closed");
                return;
            }
        };
        buf = b;
        match res {
            Ok(0) | Err(_) => return,
            Ok(n) => session.receive(&buf[..n], &DirectoryRecipients(&gen.directory)),
        }
        // The next read needs the whole buffer again.
        buf.resize(16 * 1024, 0);
    }
}

async fn deliver_all(
    core: &Rc<Core>,
    gen: &Arc<Generation>,
    recipients: Vec<(Address, u64)>,
    msg: PreparedMessage,
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
                .run(move || crate::delivery::deliver(&store, &dir, &usage, &addr, &msg));
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
