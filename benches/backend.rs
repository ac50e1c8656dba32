//! The aws-lc backend (feature `aws-lc`) against raw aws-lc-rs, and its RSA-OAEP unwrap
//! against the RustCrypto `rsa` crate, each in one criterion group so that every ratio is read
//! from one run.
//!
//! - `awslc_<size>`: envelope seal and open (single and double encryption) against raw
//!   aws-lc-rs AES-256-GCM one-shot seal and open (a fresh output buffer each, as the
//!   envelope returns one).
//! - `rsa_oaep256_unwrap_<bits>`: unwrapping a 32-byte key wrapped with RSA-OAEP-256 —
//!   `rustcrypto_rsa_raw` is the `rsa` crate's blinded decryption (what the RustCrypto
//!   backend's wrapper runs, plus its own padding check), `byok_vault_unwrap` the in-memory
//!   vault's `unwrap_key` under this backend (the crate's wrapper over AWS-LC, inline in a
//!   seeded vault: no thread hop), `awslc_raw` aws-lc-rs's OAEP decryption alone.
//!
//! `cargo bench --features aws-lc --bench backend -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use byok::envelope::{AccountKey, PreparedKey};
use byok::provider::memory::InMemoryVault;
use byok::provider::{Identity, Permissions, VaultProperties, WrapAlgorithm};
use byok::testing::ManualClock;
use byok::{AesKey, Envelope, KeyProvider, VaultAdmin};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::DecodePrivateKey;

const SIZES: [(usize, &str); 3] = [(1 << 10, "1KiB"), (1 << 20, "1MiB"), (16 << 20, "16MiB")];

fn prepared(id: &str, byte: u8) -> PreparedKey {
    let ak = AccountKey::new(id, 1, AesKey::from_bytes([byte; 32])).expect("valid id");
    PreparedKey::new("bench-account", &ak).expect("valid account")
}

fn raw_seal(key: &LessSafeKey, pt: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pt.len() + 16);
    out.extend_from_slice(pt);
    key.seal_in_place_append_tag(
        Nonce::assume_unique_for_key([7; 12]),
        Aad::empty(),
        &mut out,
    )
    .expect("seal");
    out
}

fn raw_open(key: &LessSafeKey, ct: &[u8]) -> Vec<u8> {
    let mut out = ct.to_vec();
    let n = key
        .open_in_place(
            Nonce::assume_unique_for_key([7; 12]),
            Aad::empty(),
            &mut out,
        )
        .expect("open")
        .len();
    out.truncate(n);
    out
}

fn envelope(c: &mut Criterion) {
    let k1 = prepared("ak", 1);
    let k2 = prepared("infra", 2);
    let single = Envelope::new(&k1);
    let double = Envelope::new(&k1).with_layer2(&k2).expect("same account");
    let raw = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &[3u8; 32]).expect("key"));
    let ctx = b"bench/object-name";

    for (size, name) in SIZES {
        let pt = vec![0x5Au8; size];
        let raw_ct = raw_seal(&raw, &pt);
        let single_obj = single.seal(ctx, &pt).expect("seal");
        let double_obj = double.seal(ctx, &pt).expect("seal");

        let mut g = c.benchmark_group(format!("awslc_{name}"));
        g.throughput(Throughput::Bytes(size as u64));
        if size >= 1 << 20 {
            g.sample_size(10);
        }
        g.bench_function("raw_aws_lc_gcm_seal", |b| {
            b.iter(|| raw_seal(&raw, black_box(&pt)))
        });
        g.bench_function("raw_aws_lc_gcm_open", |b| {
            b.iter(|| raw_open(&raw, black_box(&raw_ct)))
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

/// The test keys of `tests/data/keys` (PEM).
fn key_pem(bits: u32) -> String {
    let file = match bits {
        2048 => "rsa2048-pkcs1.pem",
        3072 => "rsa3072-pkcs8.pem",
        _ => "rsa4096-pkcs8.pem",
    };
    std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/keys")
            .join(file),
    )
    .expect("test key")
}

fn rsa_unwrap(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let app = Identity::new("bench");
    for bits in [2048u32, 3072, 4096] {
        let pem = key_pem(bits);
        // A seeded vault runs the RSA operation inline (no thread hop to time).
        let vault = InMemoryVault::seeded(
            VaultProperties::new("bench.vault.example", "westeurope", "t"),
            std::sync::Arc::new(ManualClock::new(std::time::SystemTime::UNIX_EPOCH)),
            [9; 32],
        );
        let p = vault.provider(&app);
        let wrapped = rt.block_on(async {
            vault.import_rsa_pem("k", &pem).await.expect("import");
            vault
                .set_access(&app, Permissions::CMK)
                .await
                .expect("access");
            p.wrap_key("k", None, WrapAlgorithm::RsaOaep256, &[7; 32])
                .await
                .expect("wrap")
        });
        let rc = rsa::PrivateKey::from_pkcs8_pem(&pem)
            .or_else(|_| rsa::PrivateKey::from_pkcs1_pem(&pem))
            .expect("rsa key");
        let lc_key = {
            use rsa::pkcs8::EncodePrivateKey;
            let der = rc.to_pkcs8_der().expect("pkcs8");
            aws_lc_rs::rsa::OaepPrivateDecryptingKey::new(
                aws_lc_rs::rsa::PrivateDecryptingKey::from_pkcs8(der.as_bytes()).expect("key"),
            )
            .expect("oaep key")
        };

        let mut g = c.benchmark_group(format!("rsa_oaep256_unwrap_{bits}"));
        g.sample_size(20);
        g.bench_function("rustcrypto_rsa_raw", |b| {
            b.iter(|| {
                rc.decrypt_blinded(
                    &mut getrandom::SysRng,
                    rsa::Oaep::<sha2::Sha256>::new(),
                    black_box(&wrapped.ciphertext),
                )
                .expect("decrypt")
            })
        });
        g.bench_function("byok_vault_unwrap", |b| {
            b.iter(|| {
                rt.block_on(p.unwrap_key(black_box(&wrapped)))
                    .expect("unwrap")
            })
        });
        g.bench_function("awslc_raw", |b| {
            let mut out = vec![0u8; lc_key.min_output_size()];
            b.iter(|| {
                lc_key
                    .decrypt(
                        &aws_lc_rs::rsa::OAEP_SHA256_MGF1SHA256,
                        black_box(&wrapped.ciphertext),
                        &mut out,
                        None,
                    )
                    .expect("decrypt")
                    .len()
            })
        });
        g.finish();
    }
}

criterion_group!(benches, envelope, rsa_unwrap);
criterion_main!(benches);
