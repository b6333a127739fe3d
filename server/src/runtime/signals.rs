//! Signals: SIGHUP reloads the configuration, SIGTERM and SIGINT drain.
//!
//! A dedicated thread receives the signals (signal-hook), so no core's event
//! loop is interrupted; it changes shared state that the cores follow.

use std::sync::Arc;
use std::time::Duration;

use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use super::Shared;

/// Takes the signals over, before anything slow: until then SIGHUP's
/// default action would kill the process (a `systemctl reload` right after
/// `start`, while the passwd-files and certificates load), and systemd
/// would count that as a clean exit and not restart it. Signals that
/// arrive before [`spawn`] wait for it.
pub fn register() -> std::io::Result<Signals> {
    Signals::new([SIGHUP, SIGTERM, SIGINT])
}

/// Starts the signal thread on signals taken by [`register`]. `reload`
/// rebuilds and swaps the configuration.
pub fn spawn(
    mut signals: Signals,
    shared: Arc<Shared>,
    reload: fn(&Shared) -> Result<u64, String>,
) -> std::io::Result<()> {
    std::thread::Builder::new().name("pop3sd-signals".into()).spawn(move || {
        for sig in signals.forever() {
            match sig {
                SIGHUP => match reload(&shared) {
                    Ok(generation) => tracing::info!(generation, "configuration reloaded"),
                    // One line, its problems separated by " - ": a text log
                    // escapes line breaks, which made it hard to read.
                    Err(e) => tracing::error!(
                        "configuration reload refused; the previous configuration stays in force: {}",
                        e.lines().map(str::trim).collect::<Vec<_>>().join(" ")
                    ),
                },
                _ => {
                    let first = !shared.draining.load(std::sync::atomic::Ordering::Acquire);
                    let grace = if first {
                        Duration::from_secs(shared.generation().config.limits.drain_timeout_secs)
                    } else {
                        Duration::ZERO
                    };
                    shared.begin_drain(grace);
                    if first {
                        tracing::info!(
                            grace_secs = grace.as_secs(),
                            "shutting down: no new connections; sessions may finish, then they are closed \
                             without committing (signal again to close now)"
                        );
                    } else {
                        tracing::info!("closing all sessions now");
                    }
                }
            }
        }
    })?;
    Ok(())
}
