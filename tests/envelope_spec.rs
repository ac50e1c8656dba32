//! A second, independent reader written from `docs/FORMAT.md` with the RustCrypto crates
//! directly (not through byok), run on the golden files: the specification and the
//! implementation agree byte for byte.

#![allow(clippy::unwrap_used)]

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use aes_kw::KwAes256;
use sha2::{Digest, Sha256};

const AK: [u8; 32] = [0x11; 32];
const IK: [u8; 32] = [0x22; 32];
const CTX: &[u8] = b"golden";

fn be16(b: &[u8]) -> usize {
    usize::from(u16::from_be_bytes([b[0], b[1]]))
}

/// Returns (key id, version, data key, commitment) and advances `at`.
fn layer(h: &[u8], at: &mut usize, kek: &[u8; 32], l: u8) -> ([u8; 32], [u8; 7]) {
    let k = usize::from(h[*at]);
    *at += 1 + k + 4;
    let wrapped = &h[*at..*at + 40];
    let commitment = &h[*at + 40..*at + 72];
    *at += 72;
    let mut dk = [0u8; 32];
    KwAes256::new(kek.into())
        .unwrap_key(wrapped, &mut dk)
        .unwrap();
    let c: [u8; 32] = Sha256::new()
        .chain_update(1u32.to_be_bytes())
        .chain_update(dk)
        .chain_update(b"byok envelope v1")
        .chain_update([l])
        .chain_update(CTX)
        .finalize()
        .into();
    assert_eq!(c, commitment);
    let mut prefix = [0u8; 7];
    prefix.copy_from_slice(&c[..7]);
    (dk, prefix)
}

fn nonce(prefix: &[u8; 7], i: u32, last: bool) -> aes_gcm::Nonce<aes_gcm::aead::consts::U12> {
    let mut n = [0u8; 12];
    n[..7].copy_from_slice(prefix);
    n[7..11].copy_from_slice(&i.to_be_bytes());
    n[11] = u8::from(last);
    Nonce::from(n)
}

fn spec_open(obj: &[u8]) -> Vec<u8> {
    assert_eq!(&obj[..4], b"BYOK");
    assert_eq!(obj[4], 1);
    let two = obj[5] == 1;
    assert_eq!(obj[6], 1);
    let c = 1usize << obj[7];
    let hl = be16(&obj[8..10]);
    let h = &obj[..hl];
    let mut at = 10 + 1 + usize::from(h[10]);
    let (dk1, p1) = layer(h, &mut at, &AK, 1);
    let l2 = two.then(|| layer(h, &mut at, &IK, 2));
    assert_eq!(at, hl);
    let t = if two { 32 } else { 16 };
    let body = &obj[hl..];
    let n = body.len().div_ceil(c + t);
    let g1 = Aes256Gcm::new(&dk1.into());
    let mut out = Vec::new();
    for (i, chunk) in body.chunks(c + t).enumerate() {
        let last = i == n - 1;
        let mut x = chunk.to_vec();
        if let Some((dk2, p2)) = &l2 {
            let g2 = Aes256Gcm::new(&(*dk2).into());
            x = g2
                .decrypt(&nonce(p2, i as u32, last), Payload { msg: &x, aad: h })
                .unwrap();
        }
        out.extend(
            g1.decrypt(&nonce(&p1, i as u32, last), Payload { msg: &x, aad: h })
                .unwrap(),
        );
    }
    out
}

#[test]
fn golden_files_open_with_an_independent_reader() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let expect = |n: usize| (0..n).map(|i| (i * 31 + 7) as u8).collect::<Vec<u8>>();
    let cases: [(&str, Vec<u8>); 5] = [
        (
            "envelope_v1_small.bin",
            b"The quick brown fox jumps over the lazy dog.".to_vec(),
        ),
        ("envelope_v1_large.bin", expect(3 * 1024 + 500)),
        ("envelope_v1_empty.bin", Vec::new()),
        ("envelope_v1_double.bin", expect(2 * 1024 + 100)),
        ("envelope_v1_double_empty.bin", Vec::new()),
    ];
    for (file, pt) in cases {
        let obj = std::fs::read(dir.join(file)).unwrap();
        assert_eq!(spec_open(&obj), pt, "{file}");
    }
    // Sealed field (section 3).
    let sealed = std::fs::read(dir.join("field_v1.bin")).unwrap();
    assert_eq!(sealed[0], 1);
    let version = &sealed[1..5];
    let mut fk = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(b"byok sealed fields v1"), &AK)
        .expand_multi_info(&[&[11], b"acct-golden", version], &mut fk)
        .unwrap();
    let mut aad = vec![1u8];
    aad.extend_from_slice(version);
    aad.push(11);
    aad.extend_from_slice(b"acct-golden");
    aad.extend_from_slice(b"contentKeyPolicy/7/option/0");
    let value = Aes256Gcm::new(&fk.into())
        .decrypt(
            &aes_gcm::Nonce::<aes_gcm::aead::consts::U12>::try_from(&sealed[5..17]).unwrap(),
            Payload {
                msg: &sealed[17..],
                aad: &aad,
            },
        )
        .unwrap();
    assert!(value.starts_with(br#"{"tokenValidationKey""#));
}
