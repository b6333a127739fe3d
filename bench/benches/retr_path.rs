//! RETR's data path: pop3sd's (the memory-mapped wire form copied once
//! into the output buffer and sealed there by pop3sd's record layer)
//! against rustls's unbuffered API on the same slices (which copies each
//! record into a buffer of its own, seals it and copies it out), and the
//! naive path (read the message into a Vec, write it through rustls's
//! buffered writer).

use std::io::Write;
use std::os::unix::fs::FileExt;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use pop3sd::tls::record_layer::RecordLayer;
use pop3sd_bench::{buffered_pair, unbuffered_pair, TestPki};
use pop3sd_storage::{Address, PreparedMessage, Store, StoreOptions};
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};

fn retr(c: &mut Criterion) {
    let pki = TestPki::new();
    let server = pki.server_config(true);
    let client = pki.client_config();
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let md = store
        .create_maildrop(&Address::parse("bench@example.com").unwrap())
        .unwrap();
    let mut g = c.benchmark_group("retr_path");
    for size in [50 * 1024usize, 1024 * 1024] {
        let mut raw = b"Subject: big\r\n\r\n".to_vec();
        while raw.len() < size {
            raw.extend_from_slice(
                b".a line that needs stuffing, then more text to fill it up..........\r\n",
            );
        }
        md.append(PreparedMessage::from_raw(&raw)).unwrap();
    }
    let session = md.open_session().unwrap();
    let snap = session.snapshot();
    for (i, size) in [(0usize, "50KiB"), (1, "1MiB")] {
        let wire = snap.wire(i).unwrap();
        g.throughput(Throughput::Bytes(wire.len() as u64));

        // pop3sd: seal 16 KiB slices of the map into an initialized buffer.
        let (_c, s) = unbuffered_pair(&server, &client);
        let mut records = RecordLayer::take_over(s).unwrap();
        let mut out = vec![0u8; 4 * (16384 + 64)];
        g.bench_function(BenchmarkId::new("mmap_record_layer", size), |b| {
            b.iter(|| {
                let mut filled = 0;
                for chunk in wire.chunks(16384) {
                    if out.len() - filled < records.sealed_len(chunk.len()) {
                        criterion::black_box(&out[..filled]); // the socket write
                        filled = 0;
                    }
                    filled += records.seal(chunk, &mut out[filled..]).unwrap();
                }
                criterion::black_box(&out[..filled]);
            })
        });

        // rustls's unbuffered API on the same slices.
        let (_c, mut s) = unbuffered_pair(&server, &client);
        let mut out = vec![0u8; 4 * (16384 + 64)];
        g.bench_function(BenchmarkId::new("mmap_unbuffered_encrypt", size), |b| {
            b.iter(|| {
                let UnbufferedStatus { state, .. } = s.process_tls_records(&mut []);
                let Ok(ConnectionState::WriteTraffic(mut wt)) = state else {
                    panic!("not ready to write")
                };
                let mut filled = 0;
                for chunk in wire.chunks(16384) {
                    if out.len() - filled < chunk.len() + 64 {
                        criterion::black_box(&out[..filled]); // the socket write
                        filled = 0;
                    }
                    filled += wt.encrypt(chunk, &mut out[filled..]).unwrap();
                }
                criterion::black_box(&out[..filled]);
            })
        });

        // Naive: read into a Vec, then the buffered writer.
        let seg = std::fs::File::open(md.dir().join("seg-00000001")).unwrap();
        let offset = (wire.as_ptr() as usize - snap.wire(0).unwrap().as_ptr() as usize) as u64 + 32;
        let (_c, mut s) = buffered_pair(&server, &client);
        let mut sink = Vec::with_capacity(2 * wire.len());
        g.bench_function(BenchmarkId::new("read_vec_buffered_writer", size), |b| {
            b.iter(|| {
                let mut v = vec![0u8; wire.len()];
                seg.read_exact_at(&mut v, offset).unwrap();
                // rustls buffers at most 64 KiB: write, drain, repeat, as a server loop does.
                let mut off = 0;
                while off < v.len() {
                    off += s.writer().write(&v[off..]).unwrap();
                    sink.clear();
                    while s.wants_write() {
                        s.write_tls(&mut sink).unwrap();
                    }
                    criterion::black_box(sink.len());
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, retr);
criterion_main!(benches);
