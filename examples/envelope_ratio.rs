//! Throughput ratios of the envelope against raw AES-256-GCM (same crate), measured
//! *interleaved* (raw and envelope alternate in short rounds, the fastest round of each is
//! kept), which is robust on a shared, loaded machine. The criterion bench
//! (`benches/envelope.rs`) is the reference; this is a cross-check.
//!
//! `cargo run --release --example envelope_ratio [rounds]`

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use byok::envelope::{AccountKey, PreparedKey};
use byok::{AesKey, Envelope};

fn time<F: FnMut()>(iters: u32, mut f: F) -> Duration {
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    t.elapsed() / iters
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let rounds: u32 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(200);
    let prep = |id: &str, b| -> Result<PreparedKey, byok::Error> {
        PreparedKey::new(
            "bench-account",
            &AccountKey::new(id, 1, AesKey::from_bytes([b; 32]))?,
        )
    };
    let (k1, k2) = (prep("ak", 1)?, prep("infra", 2)?);
    let single = Envelope::new(&k1);
    let double = single.with_layer2(&k2)?;
    let raw = Aes256Gcm::new(&[3u8; 32].into());
    let nonce = Nonce::from([7u8; 12]);
    let ctx = b"bench/object-name";
    println!("size    single seal  single open  double seal  double open   (raw seal / raw open)");
    for (size, name) in [
        (1usize << 10, "1KiB"),
        (64 << 10, "64KiB"),
        (1 << 20, "1MiB"),
        (16 << 20, "16MiB"),
    ] {
        let pt = vec![0x5Au8; size];
        let raw_ct = raw.encrypt(&nonce, pt.as_slice()).map_err(|_| "seal")?;
        let objs = [single.seal(ctx, &pt)?, double.seal(ctx, &pt)?];
        let iters = ((256 << 10) / size).clamp(1, 256) as u32;
        let rounds = if size >= 1 << 20 { rounds / 10 } else { rounds }.max(5);
        let mut best = [Duration::MAX; 6];
        for _ in 0..rounds {
            let t = [
                time(iters, || {
                    drop(black_box(raw.encrypt(&nonce, black_box(pt.as_slice()))))
                }),
                time(iters, || {
                    drop(black_box(raw.decrypt(&nonce, black_box(raw_ct.as_slice()))))
                }),
                time(iters, || drop(black_box(single.seal(ctx, black_box(&pt))))),
                time(iters, || {
                    drop(black_box(single.open(ctx, black_box(&objs[0]))))
                }),
                time(iters, || drop(black_box(double.seal(ctx, black_box(&pt))))),
                time(iters, || {
                    drop(black_box(double.open(ctx, black_box(&objs[1]))))
                }),
            ];
            for (b, t) in best.iter_mut().zip(t) {
                *b = (*b).min(t);
            }
        }
        let r = |raw: Duration, env: Duration| raw.as_secs_f64() / env.as_secs_f64();
        println!(
            "{name:6}  {:>11.3}  {:>11.3}  {:>11.3}  {:>11.3}   ({:?} / {:?})",
            r(best[0], best[2]),
            r(best[1], best[3]),
            r(best[0], best[4]),
            r(best[1], best[5]),
            best[0],
            best[1]
        );
    }
    Ok(())
}
