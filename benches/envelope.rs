//! Envelope throughput against raw AES-256-GCM of the same crate, one group per object size
//! so that every ratio is read from one run.
//!
//! `cargo bench --bench envelope -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use byok::envelope::{AccountKey, PreparedKey};
use byok::{AesKey, Envelope};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const SIZES: [(usize, &str); 4] = [
    (1 << 10, "1KiB"),
    (64 << 10, "64KiB"),
    (1 << 20, "1MiB"),
    (16 << 20, "16MiB"),
];

fn prepared(id: &str, byte: u8) -> PreparedKey {
    let ak = AccountKey::new(id, 1, AesKey::from_bytes([byte; 32])).expect("valid id");
    PreparedKey::new("bench-account", &ak).expect("valid account")
}

fn bench(c: &mut Criterion) {
    let k1 = prepared("ak", 1);
    let k2 = prepared("infra", 2);
    let single = Envelope::new(&k1);
    let double = Envelope::new(&k1).with_layer2(&k2).expect("same account");
    let raw = Aes256Gcm::new(&[3u8; 32].into());
    let nonce = Nonce::from([7u8; 12]);
    let ctx = b"bench/object-name";

    for (size, name) in SIZES {
        let pt = vec![0x5Au8; size];
        let raw_ct = raw.encrypt(&nonce, pt.as_slice()).expect("seal");
        let single_obj = single.seal(ctx, &pt).expect("seal");
        let double_obj = double.seal(ctx, &pt).expect("seal");

        let mut g = c.benchmark_group(name);
        g.throughput(Throughput::Bytes(size as u64));
        if size >= 1 << 20 {
            g.sample_size(10);
        }
        g.bench_function("raw_aes_gcm_seal", |b| {
            b.iter(|| raw.encrypt(&nonce, black_box(pt.as_slice())))
        });
        g.bench_function("raw_aes_gcm_open", |b| {
            b.iter(|| raw.decrypt(&nonce, black_box(raw_ct.as_slice())))
        });
        g.bench_function("single_seal", |b| {
            b.iter(|| single.seal(ctx, black_box(&pt)))
        });
        g.bench_function("single_open", |b| {
            b.iter(|| single.open(ctx, black_box(&single_obj)))
        });
        g.bench_function("double_seal", |b| {
            b.iter(|| double.seal(ctx, black_box(&pt)))
        });
        g.bench_function("double_open", |b| {
            b.iter(|| double.open(ctx, black_box(&double_obj)))
        });
        g.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
