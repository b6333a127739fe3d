//! One logout line, as every session logs it, through tracing-subscriber's
//! default text formatter and through pop3sd's (`log_format.rs`), into a
//! sink that keeps nothing: what formatting the line costs a core.

use std::io;
use std::net::IpAddr;

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkGroup, Criterion};
use pop3sd::log_format::PlainLine;

/// Counts bytes and drops them, so the writer's cost is nil.
#[derive(Clone, Copy)]
struct Sink;

impl io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        Ok(std::hint::black_box(b).len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The fields of the server's logout line (runtime/conn.rs, `log_end`).
fn logout_line(n: u64) {
    let client: IpAddr = "192.0.2.7".parse().expect("an address");
    tracing::info!(
        session = n,
        client = %client,
        user = %"alice@example.com",
        top = 0u64,
        top_bytes = 0u64,
        retr = 1u64,
        retr_bytes = 51_207u64,
        del = 0u64,
        expunged = 0u64,
        messages = 10u64,
        size = 512_000u64,
        bytes_in = 61u64,
        bytes_out = 51_650u64,
        state = "CLOSED",
        error = "",
        "logout"
    );
}

/// Logs logout lines under `subscriber`, as benchmark `name`.
fn bench_lines(
    g: &mut BenchmarkGroup<'_, WallTime>,
    name: &str,
    subscriber: impl tracing::Subscriber + Send + Sync + 'static,
) {
    tracing::subscriber::with_default(subscriber, || {
        let mut n = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                n += 1;
                logout_line(n)
            })
        });
    });
}

fn log_line(c: &mut Criterion) {
    let mut g = c.benchmark_group("log_line");
    let fmt = || {
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(|| Sink)
    };
    bench_lines(&mut g, "default_formatter", fmt().finish());
    bench_lines(
        &mut g,
        "pop3sd_plain_line",
        fmt().event_format(PlainLine).finish(),
    );
    g.finish();
}

criterion_group!(benches, log_line);
criterion_main!(benches);
