//! Storage: durable appends (group commit on and off, 1/8/64 appenders),
//! snapshot open of 10 and 10,000 messages, and message slice lookup.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pop3sd_storage::{Address, PreparedMessage, Store, StoreOptions};

fn message(i: usize) -> Vec<u8> {
    let mut m = format!("Subject: bench {i}\r\n\r\n").into_bytes();
    m.resize(2048, b'x');
    m
}

fn append(c: &mut Criterion) {
    let mut g = c.benchmark_group("append_fsync");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(8));
    for group_commit in [true, false] {
        for threads in [1usize, 8, 64] {
            let per_thread = (128 / threads).max(2);
            let total = per_thread * threads;
            g.throughput(Throughput::Elements(total as u64));
            let name = if group_commit {
                "group_commit"
            } else {
                "one_fsync_each"
            };
            g.bench_with_input(BenchmarkId::new(name, threads), &threads, |b, &threads| {
                let dir = tempfile::tempdir().unwrap();
                let store = Store::open(
                    dir.path(),
                    StoreOptions {
                        group_commit,
                        ..StoreOptions::default()
                    },
                )
                .unwrap();
                let md = Arc::new(
                    store
                        .create_maildrop(&Address::parse("bench@example.com").unwrap())
                        .unwrap(),
                );
                let msgs: Arc<Vec<PreparedMessage>> = Arc::new(
                    (0..per_thread)
                        .map(|i| PreparedMessage::from_raw(&message(i)))
                        .collect(),
                );
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let hs: Vec<_> = (0..threads)
                            .map(|_| {
                                let md = md.clone();
                                let msgs = msgs.clone();
                                std::thread::spawn(move || {
                                    for m in msgs.iter() {
                                        md.append(m.clone()).unwrap();
                                    }
                                })
                            })
                            .collect();
                        for h in hs {
                            h.join().unwrap();
                        }
                    }
                    start.elapsed()
                });
            });
        }
    }
    g.finish();
}

fn open_and_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("snapshot");
    for n in [10usize, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
        let md = store
            .create_maildrop(&Address::parse("bench@example.com").unwrap())
            .unwrap();
        let batch: Vec<PreparedMessage> = (0..n)
            .map(|i| PreparedMessage::from_raw(&message(i)))
            .collect();
        for r in md.append_batch(batch) {
            r.unwrap();
        }
        g.bench_function(BenchmarkId::new("open", n), |b| {
            b.iter(|| {
                let s = md.open_session().unwrap();
                criterion::black_box(s.snapshot().len());
            })
        });
        let session = md.open_session().unwrap();
        let snap = session.snapshot();
        snap.wire(0).unwrap();
        let mut i = 0usize;
        g.bench_function(BenchmarkId::new("slice_lookup", n), |b| {
            b.iter(|| {
                i = (i + 7919) % n;
                criterion::black_box(snap.wire(i).unwrap().len())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, append, open_and_lookup);
criterion_main!(benches);
