//! The Prometheus endpoint: a minimal HTTP/1.0 responder for `GET /metrics`,
//! served by core 0's runtime. Scraping merges every core's counters; no
//! core is interrupted.

use std::rc::Rc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use super::Core;

/// Scrapes answered at once; a scraper beyond them is closed at once (a
/// monitoring system scrapes with one or two connections).
pub(crate) const MAX_SCRAPES: usize = 16;

/// Accepts scrapes until the core closes.
pub(crate) async fn serve(core: Rc<Core>, listener: TcpListener) {
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = core.phase.reached(super::local_sync::Stage::Draining) => return,
        };
        match accepted {
            Ok((stream, _)) => {
                let Some(place) = core.metrics_places.try_enter() else {
                    continue; // dropped: closed untold
                };
                let core = core.clone();
                monoio::spawn(async move {
                    let _place = place;
                    let _ =
                        monoio::time::timeout(Duration::from_secs(10), answer(core, stream)).await;
                });
            }
            Err(e) => {
                // EMFILE and friends fail at once under io_uring: back off
                // rather than spin core 0, which serves sessions too.
                tracing::warn!(error = %e, "metrics accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Whether a request's head ends within `request`, whose first `seen`
/// bytes were already looked at (only the new ones are, and the three
/// before them, where the blank line may begin).
fn head_ends(request: &[u8], seen: usize) -> bool {
    request[seen.saturating_sub(3)..]
        .windows(4)
        .any(|w| w == b"\r\n\r\n")
}

async fn answer(core: Rc<Core>, mut stream: TcpStream) {
    let mut request = Vec::new();
    let mut buf = vec![0u8; 4096];
    let mut seen = 0;
    while !head_ends(&request, seen) && request.len() < 16 * 1024 {
        seen = request.len();
        let (r, b) = stream.read(buf).await;
        buf = b;
        match r {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
        buf.resize(4096, 0);
    }
    let first = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let wants_metrics = first.starts_with(b"GET /metrics ") || first.starts_with(b"GET /metrics\r");
    let response = if wants_metrics {
        let cores = core
            .shared
            .metrics
            .lock()
            .map(|m| m.clone())
            .unwrap_or_default();
        let shared = &core.shared;
        let gen = shared.generation();
        let body = super::metrics::render(
            &cores,
            &[
                (
                    "pop3sd_config_generation",
                    "Configuration generation in force (1 + successful reloads).",
                    gen.number,
                ),
                (
                    "pop3sd_blocking_queue",
                    "Jobs waiting for the blocking pool.",
                    shared.pool.backlog() as u64,
                ),
                (
                    "pop3sd_tenants",
                    "Tenants configured.",
                    gen.directory.tenants().len() as u64,
                ),
                (
                    "pop3sd_lmtp_memory_bytes",
                    "Memory LMTP connections hold for messages (lmtp.max_memory bounds it).",
                    core.lmtp_memory.used(),
                ),
            ],
        );
        format!(
            "HTTP/1.0 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
    } else {
        "HTTP/1.0 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n".to_string()
    };
    let _ = stream.write_all(response.into_bytes()).await;
}

#[cfg(test)]
mod tests {
    use super::head_ends;

    #[test]
    fn the_blank_line_is_found_across_reads() {
        let req = b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n";
        for seen in 0..req.len() {
            assert!(head_ends(req, seen), "{seen}");
        }
        assert!(!head_ends(b"GET /metrics HTTP/1.0\r\n", 0));
        assert!(!head_ends(b"", 0));
    }
}
