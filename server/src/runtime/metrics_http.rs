//! The Prometheus endpoint: a minimal HTTP/1.0 responder for `GET /metrics`,
//! served by core 0's runtime. Scraping merges every core's counters; no
//! core is interrupted.

use std::rc::Rc;
use std::time::Duration;

use monoio::io::{AsyncReadRent, AsyncWriteRentExt};
use monoio::net::{TcpListener, TcpStream};

use super::Core;

/// Accepts scrapes until the core closes.
pub(crate) async fn serve(core: Rc<Core>, listener: TcpListener) {
    loop {
        let accepted = monoio::select! {
            r = listener.accept() => r,
            _ = core.phase.reached(super::local_sync::Stage::Draining) => return,
        };
        if let Ok((stream, _)) = accepted {
            let core = core.clone();
            monoio::spawn(async move {
                let _ = monoio::time::timeout(Duration::from_secs(10), answer(core, stream)).await;
            });
        }
    }
}

async fn answer(core: Rc<Core>, mut stream: TcpStream) {
    let mut request = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
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
