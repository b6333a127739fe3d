//! The hardware ceiling on this machine: the cost of one TLS server
//! handshake (full, in memory; and its main primitives, X25519 and an ECDSA
//! P-256 signature), and record encryption by rustls and by pop3sd's record
//! layer against raw ring AES-GCM on the same buffer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use pop3sd::tls::record_layer::RecordLayer;
use pop3sd_bench::TestPki;
use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::agreement;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use rustls::pki_types::ServerName;
use rustls::{ClientConfig, ClientConnection, ServerConnection};

/// A full handshake in memory; only the server's calls are timed.
fn server_handshake_cost(
    pki: &TestPki,
    tls13: bool,
    client: &Arc<ClientConfig>,
    iters: u64,
) -> Duration {
    let server = pki.server_config(tls13);
    let mut spent = Duration::ZERO;
    for _ in 0..iters {
        let mut c = ClientConnection::new(
            client.clone(),
            ServerName::try_from("pop.example.test").unwrap(),
        )
        .unwrap();
        let t = Instant::now();
        let mut s = ServerConnection::new(server.clone()).unwrap();
        spent += t.elapsed();
        let mut buf = Vec::new();
        while c.is_handshaking() || s.is_handshaking() {
            buf.clear();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let t = Instant::now();
            let mut rd = buf.as_slice();
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets().unwrap();
            let mut out = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut out).unwrap();
            }
            spent += t.elapsed();
            let mut rd = out.as_slice();
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets().unwrap();
        }
    }
    spent
}

fn handshake(c: &mut Criterion) {
    let pki = TestPki::new();
    let mut g = c.benchmark_group("handshake");
    let client = pki.client_config();
    // With pop3sd's preference: TLS13_AES_128_GCM_SHA256.
    g.bench_function("server_full_tls13_ecdsa_p256", |b| {
        b.iter_custom(|n| server_handshake_cost(&pki, true, &client, n))
    });
    // A client offering only TLS13_AES_256_GCM_SHA384: its key schedule and
    // transcript use SHA-384, which this kind of CPU does not accelerate
    // (SHA-256 it does), so the same handshake costs more. A load test run
    // with that suite is held to this figure.
    let aes256 =
        pki.client_config_with_suite(rustls::crypto::ring::cipher_suite::TLS13_AES_256_GCM_SHA384);
    g.bench_function("server_full_tls13_ecdsa_p256_aes256", |b| {
        b.iter_custom(|n| server_handshake_cost(&pki, true, &aes256, n))
    });
    g.bench_function("server_full_tls12_ecdsa_p256", |b| {
        b.iter_custom(|n| server_handshake_cost(&pki, false, &client, n))
    });
    let rng = SystemRandom::new();
    // The server's half of each key exchange a client may offer (which one
    // is used is the client's choice: it sends a key share for its
    // favourite, X25519 for nearly all).
    for (name, alg) in [
        ("x25519_keygen_and_agree", &agreement::X25519),
        ("p256_keygen_and_agree", &agreement::ECDH_P256),
    ] {
        g.bench_function(name, |b| {
            let peer = agreement::EphemeralPrivateKey::generate(alg, &rng).unwrap();
            let peer_pub = peer.compute_public_key().unwrap();
            b.iter(|| {
                let k = agreement::EphemeralPrivateKey::generate(alg, &rng).unwrap();
                let _ = k.compute_public_key().unwrap();
                agreement::agree_ephemeral(
                    k,
                    &agreement::UnparsedPublicKey::new(alg, peer_pub.as_ref()),
                    |s| criterion::black_box(s.len()),
                )
                .unwrap()
            })
        });
    }
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
    let key =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    g.bench_function("ecdsa_p256_sign", |b| {
        b.iter(|| key.sign(&rng, b"transcript hash goes here").unwrap())
    });
    g.finish();
}

fn records(c: &mut Criterion) {
    let mut g = c.benchmark_group("record_encrypt_16k");
    g.throughput(Throughput::Bytes(16384));
    let plain = vec![0x61u8; 16384];
    for (name, alg, keylen) in [
        ("aes128gcm", &aead::AES_128_GCM, 16),
        ("aes256gcm", &aead::AES_256_GCM, 32),
    ] {
        let key = LessSafeKey::new(UnboundKey::new(alg, &vec![7u8; keylen]).unwrap());
        let mut buf = plain.clone();
        let mut seq = 0u64;
        g.bench_function(BenchmarkId::new("ring_seal_in_place", name), |b| {
            b.iter(|| {
                seq += 1;
                let mut nonce = [0u8; 12];
                nonce[4..].copy_from_slice(&seq.to_be_bytes());
                key.seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::empty(),
                    &mut buf,
                )
                .unwrap()
            })
        });
    }
    // rustls: one 16 KiB record (copy into the buffer, header, seal) with the
    // suite a TLS 1.3 client negotiates by default with ring (AES-256-GCM first).
    let pki = TestPki::new();
    let (_c, mut s) = pop3sd_bench::unbuffered_pair(&pki.server_config(true), &pki.client_config());
    let mut out = vec![0u8; 16384 + 64];
    g.bench_function("rustls_unbuffered_encrypt_tls13", |b| {
        b.iter(|| {
            let rustls::unbuffered::UnbufferedStatus { state, .. } = s.process_tls_records(&mut []);
            let Ok(rustls::unbuffered::ConnectionState::WriteTraffic(mut wt)) = state else {
                panic!("not ready")
            };
            criterion::black_box(wt.encrypt(&plain, &mut out).unwrap())
        })
    });
    // pop3sd's record layer on the same kind of connection.
    let (_c, s) = pop3sd_bench::unbuffered_pair(&pki.server_config(true), &pki.client_config());
    let mut records = RecordLayer::take_over(s).unwrap();
    g.bench_function("pop3sd_record_layer_tls13", |b| {
        b.iter(|| criterion::black_box(records.seal(&plain, &mut out).unwrap()))
    });
    g.finish();
}

/// What handing a connection from rustls to the record layer costs, once
/// per connection.
fn handover(c: &mut Criterion) {
    let pki = TestPki::new();
    let (server, client) = (pki.server_config(true), pki.client_config());
    let mut g = c.benchmark_group("handshake");
    g.bench_function("record_layer_handover_tls13", |b| {
        b.iter_batched(
            || pop3sd_bench::unbuffered_pair(&server, &client).1,
            |s| criterion::black_box(RecordLayer::take_over(s).unwrap()),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, handshake, records, handover);
criterion_main!(benches);
