//! The POP3 engine: parse-and-dispatch throughput of a pipelined command
//! stream, RETR through the engine (no copy), and password verification
//! with and without the verification cache.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pop3sd::auth::{StoredHash, VerifyCache};
use pop3sd::engine::{Action, AuthOutcome, Engine, MemoryMailbox, Policy, SessionContext};
use pop3sd_storage::Address;

fn logged_in() -> Engine<MemoryMailbox> {
    let now = Instant::now();
    let msgs: Vec<Vec<u8>> = (0..10)
        .map(|i| {
            let mut m = format!("Subject: {i}\r\n\r\n").into_bytes();
            m.resize(50 * 1024, b'y');
            m
        })
        .collect();
    let mut e = Engine::new(SessionContext::default(), now);
    e.receive(b"USER a@example.com\r\nPASS pw\r\n", now);
    while let Some(a) = e.poll_action() {
        if let Action::Authenticate(_) = a {
            e.auth_complete(
                AuthOutcome::Success {
                    mailbox: MemoryMailbox::from_raw(msgs.clone()),
                    policy: Policy::default(),
                    unix_time: 0,
                },
                now,
            );
        }
    }
    drain(&mut e, now);
    e
}

fn drain(e: &mut Engine<MemoryMailbox>, now: Instant) -> usize {
    let mut total = 0;
    while let Ok(Some(c)) = e.next_output() {
        let n = c.len();
        criterion::black_box(c);
        total += n;
        e.advance_output(n, now);
    }
    total
}

fn pipelined(c: &mut Criterion) {
    let mut g = c.benchmark_group("engine");
    let batch = "STAT\r\nLIST 3\r\nUIDL 3\r\nNOOP\r\n".repeat(250);
    g.throughput(Throughput::Elements(1000));
    g.bench_function("pipelined_1000_commands", |b| {
        let mut e = logged_in();
        let now = Instant::now();
        b.iter(|| {
            // Fed in 4 KiB pieces, as TLS records would bring it.
            for piece in batch.as_bytes().chunks(4096) {
                e.receive(piece, now);
                drain(&mut e, now);
            }
        })
    });
    g.throughput(Throughput::Bytes(50 * 1024));
    g.bench_function("retr_50k_through_engine", |b| {
        let mut e = logged_in();
        let now = Instant::now();
        b.iter(|| {
            e.receive(b"RETR 2\r\n", now);
            drain(&mut e, now)
        })
    });
    g.finish();
}

fn passwords(c: &mut Criterion) {
    let mut g = c.benchmark_group("password");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(5));
    let hash = StoredHash::new_argon2id(b"correct horse").unwrap();
    g.bench_function("argon2id_verify", |b| {
        b.iter(|| assert!(hash.verify(b"correct horse")))
    });
    let user = Address::parse("a@example.com").unwrap();
    let mut cache = VerifyCache::new(1000, Duration::from_secs(3600));
    let now = Instant::now();
    cache.insert(&user, &hash, b"correct horse", now);
    g.sample_size(100);
    g.bench_function("cache_hit", |b| {
        b.iter(|| assert!(cache.check(&user, &hash, b"correct horse", now)))
    });
    g.finish();
}

criterion_group!(benches, pipelined, passwords);
criterion_main!(benches);
