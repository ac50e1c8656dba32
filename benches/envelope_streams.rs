//! Streaming throughput at 16 MiB: the synchronous `SealWriter` / `OpenReader` against the
//! async adapters (feature `tokio`, on a current-thread runtime) in one group, so the ratio is
//! read from one run. Both write and read in 64 KiB pieces to and from memory.
//!
//! `cargo bench --features tokio --bench envelope_streams -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::io::{Read, Write};

use byok::envelope::{AccountKey, PreparedKey};
use byok::{AesKey, Envelope};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SIZE: usize = 16 << 20;
const PIECE: usize = 64 << 10;

fn bench(c: &mut Criterion) {
    let ak = AccountKey::new("ak", 1, AesKey::from_bytes([1; 32])).expect("valid id");
    let k = PreparedKey::new("bench-account", &ak).expect("valid account");
    let env = Envelope::new(&k);
    let ctx = b"bench/object-name";
    let pt = vec![0x5Au8; SIZE];
    let obj = env.seal(ctx, &pt).expect("seal");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");

    let mut g = c.benchmark_group("stream_16MiB");
    g.throughput(Throughput::Bytes(SIZE as u64));
    g.sample_size(10);
    g.bench_function("sync_seal", |b| {
        b.iter(|| {
            let mut w = env
                .seal_writer(ctx, Vec::with_capacity(obj.len()))
                .expect("writer");
            for p in pt.chunks(PIECE) {
                w.write_all(black_box(p)).expect("write");
            }
            w.finish().expect("finish")
        })
    });
    g.bench_function("async_seal", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut w = env
                    .seal_async_writer(ctx, Vec::with_capacity(obj.len()))
                    .expect("writer");
                for p in pt.chunks(PIECE) {
                    w.write_all(black_box(p)).await.expect("write");
                }
                w.shutdown().await.expect("finish");
                w.into_inner()
            })
        })
    });
    g.bench_function("sync_open", |b| {
        let mut buf = vec![0u8; PIECE];
        b.iter(|| {
            let mut r = env.open_reader(ctx, obj.as_slice()).expect("reader");
            let mut n = 0;
            loop {
                match r.read(&mut buf).expect("read") {
                    0 => break n,
                    k => n += black_box(k),
                }
            }
        })
    });
    g.bench_function("async_open", |b| {
        let mut buf = vec![0u8; PIECE];
        b.iter(|| {
            rt.block_on(async {
                let mut r = env
                    .open_async_reader(ctx, obj.as_slice())
                    .await
                    .expect("reader");
                let mut n = 0;
                loop {
                    match r.read(&mut buf).await.expect("read") {
                        0 => break n,
                        k => n += black_box(k),
                    }
                }
            })
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
