//! Unit tests of the crypto core's wrappers: round trips, every rejection path with the error
//! kind it must produce, RFC known answers, key import, and secrecy of `Debug`.
//!
//! The Wycheproof suites live next door in `wycheproof_tests.rs`.

use std::collections::HashSet;
use std::sync::OnceLock;

use rand_core::TryRng;

use super::{
    GCM_NONCE_LEN, GCM_TAG_LEN, Gcm, Kek, OaepHash, OsRng, RsaPrivate, RsaPublic, SeededRng,
    fill_random, hkdf_sha256, hmac_sha256, sha256,
};
use crate::error::Error;
use crate::secret::AesKey;
use crate::util::{hex, unhex};

fn h(s: &str) -> Vec<u8> {
    unhex(s).expect("test constant is hex")
}

fn is_decryption<T>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::Decryption))
}

fn is_invalid_input<T>(r: &Result<T, Error>) -> bool {
    matches!(r, Err(Error::InvalidInput(_)))
}

// ---------------------------------------------------------------------------------------------
// AES-256-GCM
// ---------------------------------------------------------------------------------------------

const NONCE: [u8; GCM_NONCE_LEN] = [0x11; GCM_NONCE_LEN];
const AAD: &[u8] = b"byok header v1";

fn gcm(byte: u8) -> Gcm {
    Gcm::new(&AesKey::from_bytes([byte; 32]))
}

/// Asserts that `ct_tag` does not open, through both APIs: the one-shot one returns
/// `Error::Decryption`, the in-place one returns `Error::Decryption` and wipes the buffer.
fn assert_gcm_rejects(g: &Gcm, nonce: &[u8; GCM_NONCE_LEN], aad: &[u8], ct_tag: &[u8]) {
    let r = g.open(nonce, aad, ct_tag);
    assert!(is_decryption(&r), "open: {:?}", r.map(|_| "Ok"));

    let Some(body_len) = ct_tag.len().checked_sub(GCM_TAG_LEN) else {
        return;
    };
    let (body, tag) = ct_tag.split_at(body_len);
    let tag: [u8; GCM_TAG_LEN] = tag.try_into().expect("16-byte tag");
    let mut buf = body.to_vec();
    let r = g.open_in_place(nonce, aad, &mut buf, &tag);
    assert!(is_decryption(&r), "open_in_place: {r:?}");
    assert!(
        buf.iter().all(|&b| b == 0),
        "open_in_place failed without wiping the buffer"
    );
}

#[test]
fn gcm_round_trip_one_shot_and_in_place() {
    let g = gcm(7);
    for len in [0usize, 1, 15, 16, 17, 64, 1000] {
        let pt: Vec<u8> = (0..len).map(|i| (i * 31 + 5) as u8).collect();
        let sealed = g.seal(&NONCE, AAD, &pt);
        assert_eq!(sealed.len(), len + GCM_TAG_LEN);
        if len > 0 {
            assert_ne!(&sealed[..len], &pt[..], "ciphertext equals plaintext");
        }

        // In place gives the same bytes as one-shot.
        let mut buf = pt.clone();
        let tag = g.seal_in_place(&NONCE, AAD, &mut buf);
        assert_eq!(&sealed[..len], &buf[..]);
        assert_eq!(&sealed[len..], &tag[..]);

        let opened = g.open(&NONCE, AAD, &sealed).expect("open");
        assert_eq!(opened.as_slice(), &pt[..]);
        g.open_in_place(&NONCE, AAD, &mut buf, &tag)
            .expect("open_in_place");
        assert_eq!(buf, pt);
    }
}

#[test]
fn gcm_is_deterministic_per_nonce_and_differs_across_nonces() {
    let g = gcm(7);
    let a = g.seal(&NONCE, AAD, b"same message");
    assert_eq!(a, g.seal(&NONCE, AAD, b"same message"));
    assert_ne!(a, g.seal(&[0x12; GCM_NONCE_LEN], AAD, b"same message"));
    assert_ne!(a, g.seal(&NONCE, b"other aad", b"same message"));
}

#[test]
fn gcm_rejects_wrong_key_nonce_aad_and_tag() {
    let g = gcm(7);
    let pt = b"a data key of some sort, 32 byte";
    let sealed = g.seal(&NONCE, AAD, pt);

    assert_gcm_rejects(&gcm(8), &NONCE, AAD, &sealed);
    assert_gcm_rejects(&g, &[0x12; GCM_NONCE_LEN], AAD, &sealed);
    assert_gcm_rejects(&g, &NONCE, b"byok header v2", &sealed);
    assert_gcm_rejects(&g, &NONCE, b"", &sealed);

    let mut wrong_tag = sealed.clone();
    let n = wrong_tag.len();
    wrong_tag[n - GCM_TAG_LEN..].copy_from_slice(&[0u8; GCM_TAG_LEN]);
    assert_gcm_rejects(&g, &NONCE, AAD, &wrong_tag);

    // Truncations: a dropped tag byte, a dropped body byte, nothing but a partial tag.
    assert_gcm_rejects(&g, &NONCE, AAD, &sealed[..n - 1]);
    assert_gcm_rejects(&g, &NONCE, AAD, &sealed[1..]);
    for len in 0..GCM_TAG_LEN {
        assert!(is_decryption(&g.open(&NONCE, AAD, &sealed[..len])));
    }
    // An appended byte.
    let mut longer = sealed.clone();
    longer.push(0);
    assert_gcm_rejects(&g, &NONCE, AAD, &longer);
}

#[test]
fn gcm_rejects_every_single_bit_flip() {
    let g = gcm(7);
    let sealed = g.seal(&NONCE, AAD, b"short");
    assert_eq!(sealed.len(), 5 + GCM_TAG_LEN);
    for bit in 0..sealed.len() * 8 {
        let mut flipped = sealed.clone();
        flipped[bit / 8] ^= 1 << (bit % 8);
        assert_gcm_rejects(&g, &NONCE, AAD, &flipped);
    }
    // The untouched original still opens.
    assert_eq!(
        g.open(&NONCE, AAD, &sealed).expect("open").as_slice(),
        b"short"
    );
}

// ---------------------------------------------------------------------------------------------
// AES key wrap: RFC 3394 (KW) and RFC 5649 (KWP)
// ---------------------------------------------------------------------------------------------

/// One KEK of each size (the 32-byte one built both ways).
fn keks() -> Vec<(&'static str, Kek)> {
    let k32 = [0x42u8; 32];
    vec![
        (
            "AES-128",
            Kek::from_slice(&[0x40; 16]).expect("16-byte KEK"),
        ),
        (
            "AES-192",
            Kek::from_slice(&[0x41; 24]).expect("24-byte KEK"),
        ),
        ("AES-256", Kek::from_slice(&k32).expect("32-byte KEK")),
        ("AES-256 (new)", Kek::new(&AesKey::from_bytes(k32))),
    ]
}

fn key_material(len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(37) ^ 0xa5)
        .collect()
}

#[test]
fn kek_new_and_from_slice_agree() {
    let a = Kek::new(&AesKey::from_bytes([9; 32]));
    let b = Kek::from_slice(&[9; 32]).expect("32-byte KEK");
    let key = key_material(32);
    assert_eq!(a.wrap(&key).expect("wrap"), b.wrap(&key).expect("wrap"));
    assert_eq!(
        a.wrap_padded(&key).expect("wrap"),
        b.wrap_padded(&key).expect("wrap")
    );
}

#[test]
fn kek_from_slice_refuses_other_sizes() {
    for len in [0usize, 1, 8, 15, 17, 23, 25, 31, 33, 48, 64] {
        assert!(is_invalid_input(&Kek::from_slice(&vec![0u8; len])), "{len}");
    }
}

#[test]
fn kw_rfc3394_known_answer() {
    // RFC 3394 §4.6: 256 bits of key data with a 256-bit KEK.
    let kek = Kek::from_slice(&h(
        "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
    ))
    .expect("KEK");
    let key = h("00112233445566778899aabbccddeeff000102030405060708090a0b0c0d0e0f");
    let wrapped =
        h("28c9f404c4b810f4cbccb35cfb87f8263f5786e2d80ed326cbc7f0e71a99f43bfb988b9b7a02dd21");
    assert_eq!(kek.wrap(&key).expect("wrap"), wrapped);
    let key32: [u8; 32] = key[..].try_into().expect("32 bytes");
    assert_eq!(kek.wrap_32(&key32)[..], wrapped[..]);
    assert_eq!(
        kek.unwrap(&wrapped).expect("unwrap").expose_secret(),
        &key[..]
    );
}

#[test]
fn kwp_rfc5649_known_answers() {
    // RFC 5649 §6: a 192-bit KEK wrapping 20 and 7 bytes.
    let kek = Kek::from_slice(&h("5840df6e29b02af1ab493b705bf16ea1ae8338f4dcc176a8")).expect("KEK");
    for (key, wrapped) in [
        (
            "c37b7e6492584340bed12207808941155068f738",
            "138bdeaa9b8fa7fc61f97742e72248ee5ae6ae5360d1ae6a5f54f373fa543b6a",
        ),
        ("466f7250617369", "afbeb0f07dfbf5419200f2ccb50bb24f"),
    ] {
        assert_eq!(kek.wrap_padded(&h(key)).expect("wrap"), h(wrapped));
        assert_eq!(
            kek.unwrap_padded(&h(wrapped))
                .expect("unwrap")
                .expose_secret(),
            &h(key)[..]
        );
    }
}

#[test]
fn kwp_round_trips_1_to_64_bytes() {
    for (name, kek) in keks() {
        for len in 1..=64 {
            let key = key_material(len);
            let wrapped = kek.wrap_padded(&key).expect("wrap_padded");
            assert_eq!(wrapped.len(), len.div_ceil(8) * 8 + 8, "{name} {len}");
            let back = kek.unwrap_padded(&wrapped).expect("unwrap_padded");
            assert_eq!(back.expose_secret(), &key[..], "{name} {len}");
        }
    }
}

#[test]
fn kw_round_trips_16_to_64_bytes_and_wrap_32_agrees() {
    for (name, kek) in keks() {
        for len in (16..=64).step_by(8) {
            let key = key_material(len);
            let wrapped = kek.wrap(&key).expect("wrap");
            assert_eq!(wrapped.len(), len + 8, "{name} {len}");
            let back = kek.unwrap(&wrapped).expect("unwrap");
            assert_eq!(back.expose_secret(), &key[..], "{name} {len}");
        }
        for fill in [0u8, 0x5a, 0xff] {
            let key = [fill; 32];
            assert_eq!(
                kek.wrap_32(&key)[..],
                kek.wrap(&key).expect("wrap")[..],
                "{name}"
            );
        }
        let key: [u8; 32] = key_material(32)[..].try_into().expect("32 bytes");
        assert_eq!(kek.wrap_32(&key)[..], kek.wrap(&key).expect("wrap")[..]);
    }
}

#[test]
fn kw32_fast_path_agrees_with_aes_kw() {
    // `wrap_32`, `wrap_32_many` and `unwrap_32` run in `kw32`; `wrap` / `unwrap` in `aes-kw`.
    for (name, kek) in keks() {
        let keys: [[u8; 32]; 8] =
            core::array::from_fn(|i| core::array::from_fn(|j| (i * 32 + j) as u8 ^ 0x3c));
        let many = kek.wrap_32_many(&keys);
        for (key, wrapped) in keys.iter().zip(&many) {
            assert_eq!(wrapped[..], kek.wrap(key).expect("wrap")[..], "{name}");
            assert_eq!(*wrapped, kek.wrap_32(key), "{name}");
            let back = kek.unwrap_32(wrapped).expect("unwrap_32");
            assert_eq!(back.expose_secret(), key, "{name}");
        }
        let three: [[u8; 32]; 3] = [keys[5], keys[0], keys[7]];
        assert_eq!(
            kek.wrap_32_many(&three),
            [many[5], many[0], many[7]],
            "{name}"
        );
    }
}

#[test]
fn unwrap_32_rejects_every_bit_flip_and_the_wrong_kek() {
    let kek = Kek::new(&AesKey::from_bytes([1; 32]));
    let other = Kek::new(&AesKey::from_bytes([2; 32]));
    let key: [u8; 32] = key_material(32)[..].try_into().expect("32 bytes");
    let wrapped = kek.wrap_32(&key);
    assert!(matches!(other.unwrap_32(&wrapped), Err(Error::Decryption)));
    for bit in 0..wrapped.len() * 8 {
        let mut bad = wrapped;
        bad[bit / 8] ^= 1 << (bit % 8);
        assert!(
            matches!(kek.unwrap_32(&bad), Err(Error::Decryption)),
            "bit {bit}"
        );
        assert!(is_decryption(&kek.unwrap(&bad)), "bit {bit}");
    }
}

#[test]
fn wrap_refuses_lengths_outside_the_contract() {
    for (name, kek) in keks() {
        for len in 0..=72usize {
            let r = kek.wrap(&key_material(len));
            if len >= 16 && len.is_multiple_of(8) {
                assert!(r.is_ok(), "{name} KW {len}");
            } else {
                assert!(
                    is_invalid_input(&r),
                    "{name} KW {len}: {:?}",
                    r.map(|_| "Ok")
                );
            }
        }
        assert!(is_invalid_input(&kek.wrap_padded(&[])), "{name} KWP 0");
    }
}

#[test]
fn unwrap_refuses_impossible_lengths_as_decryption() {
    for (name, kek) in keks() {
        for len in 0..=80usize {
            let data = key_material(len);
            if len < 24 || !len.is_multiple_of(8) {
                assert!(is_decryption(&kek.unwrap(&data)), "{name} KW {len}");
            }
            if len < 16 || !len.is_multiple_of(8) {
                assert!(is_decryption(&kek.unwrap_padded(&data)), "{name} KWP {len}");
            }
        }
    }
}

#[test]
fn unwrap_rejects_wrong_kek_tampering_and_mode_confusion() {
    let kek = Kek::new(&AesKey::from_bytes([1; 32]));
    let other = Kek::new(&AesKey::from_bytes([2; 32]));
    let key = key_material(32);
    let kw = kek.wrap(&key).expect("wrap");
    let kwp = kek.wrap_padded(&key).expect("wrap_padded");

    assert!(is_decryption(&other.unwrap(&kw)));
    assert!(is_decryption(&other.unwrap_padded(&kwp)));
    // The two modes use different integrity values: neither accepts the other's output.
    assert!(is_decryption(&kek.unwrap_padded(&kw)));
    assert!(is_decryption(&kek.unwrap(&kwp)));

    for bit in 0..kw.len() * 8 {
        let mut t = kw.clone();
        t[bit / 8] ^= 1 << (bit % 8);
        assert!(is_decryption(&kek.unwrap(&t)), "KW bit {bit}");
        let mut t = kwp.clone();
        t[bit / 8] ^= 1 << (bit % 8);
        assert!(is_decryption(&kek.unwrap_padded(&t)), "KWP bit {bit}");
    }
    // Truncated and extended by one semiblock.
    assert!(is_decryption(&kek.unwrap(&kw[..kw.len() - 8])));
    assert!(is_decryption(&kek.unwrap(&[&kw[..], &[0u8; 8]].concat())));
    assert!(is_decryption(&kek.unwrap_padded(&kwp[..kwp.len() - 8])));
    assert!(is_decryption(
        &kek.unwrap_padded(&[&kwp[..], &[0u8; 8]].concat())
    ));
}

// ---------------------------------------------------------------------------------------------
// RSA-OAEP
// ---------------------------------------------------------------------------------------------

/// The one freshly generated 2048-bit key of this test binary (generation is slow).
fn rsa_key() -> &'static RsaPrivate {
    static KEY: OnceLock<RsaPrivate> = OnceLock::new();
    KEY.get_or_init(|| RsaPrivate::generate(2048).expect("RSA key generation"))
}

/// Largest OAEP message for a 2048-bit key: k - 2·hLen - 2.
fn max_len(hash: OaepHash) -> usize {
    let h_len = match hash {
        OaepHash::Sha1 => 20,
        OaepHash::Sha256 => 32,
    };
    256 - 2 * h_len - 2
}

#[test]
fn rsa_generated_key_shape() {
    let key = rsa_key();
    assert_eq!(key.bits(), 2048);
    assert_eq!(key.public().bits(), 2048);
    assert_eq!(key.public().exponent(), vec![0x01, 0x00, 0x01]);
    assert_eq!(key.public().modulus().len(), 256);
}

#[test]
fn rsa_oaep_round_trip_both_hashes() {
    let key = rsa_key();
    let public = key.public();
    for hash in [OaepHash::Sha1, OaepHash::Sha256] {
        for label in [&b""[..], b"tenant-42/account-key"] {
            for len in [0, 1, 32, max_len(hash)] {
                let pt = key_material(len);
                let ct = public.encrypt_oaep(hash, &pt, label).expect("encrypt");
                assert_eq!(ct.len(), 256);
                let back = key.decrypt_oaep(hash, &ct, label).expect("decrypt");
                assert_eq!(back.expose_secret(), &pt[..], "{hash:?} {len}");
            }
        }
        // Randomized: the same message encrypts differently every time.
        let a = public.encrypt_oaep(hash, b"k", b"").expect("encrypt");
        let b = public.encrypt_oaep(hash, b"k", b"").expect("encrypt");
        assert_ne!(a, b);
    }
}

#[test]
fn rsa_oaep_wrong_hash_or_label_is_decryption() {
    let key = rsa_key();
    let public = key.public();
    let pt = key_material(32);

    let ct256 = public
        .encrypt_oaep(OaepHash::Sha256, &pt, b"")
        .expect("encrypt");
    assert!(is_decryption(&key.decrypt_oaep(
        OaepHash::Sha1,
        &ct256,
        b""
    )));
    assert!(is_decryption(&key.decrypt_oaep(
        OaepHash::Sha256,
        &ct256,
        b"x"
    )));

    let ct1 = public
        .encrypt_oaep(OaepHash::Sha1, &pt, b"label")
        .expect("encrypt");
    assert!(is_decryption(&key.decrypt_oaep(
        OaepHash::Sha256,
        &ct1,
        b"label"
    )));
    assert!(is_decryption(&key.decrypt_oaep(OaepHash::Sha1, &ct1, b"")));
    assert!(is_decryption(&key.decrypt_oaep(
        OaepHash::Sha1,
        &ct1,
        b"Label"
    )));
    assert!(key.decrypt_oaep(OaepHash::Sha1, &ct1, b"label").is_ok());
}

#[test]
fn rsa_oaep_malformed_ciphertext_is_decryption() {
    let key = rsa_key();
    let ct = key
        .public()
        .encrypt_oaep(OaepHash::Sha256, b"secret", b"")
        .expect("encrypt");
    let bad: Vec<Vec<u8>> = vec![
        Vec::new(),
        ct[..255].to_vec(),
        [&ct[..], &[0u8]].concat(),
        [&[0u8][..], &ct[..]].concat(),
        vec![0xff; 256], // larger than the modulus
        vec![0x00; 256],
        {
            let mut t = ct.clone();
            t[100] ^= 0x01;
            t
        },
    ];
    for (i, c) in bad.iter().enumerate() {
        let r = key.decrypt_oaep(OaepHash::Sha256, c, b"");
        assert!(is_decryption(&r), "case {i}: {r:?}");
    }
}

#[test]
fn rsa_oaep_message_too_long_is_invalid_input() {
    let public = rsa_key().public();
    for hash in [OaepHash::Sha1, OaepHash::Sha256] {
        let r = public.encrypt_oaep(hash, &key_material(max_len(hash) + 1), b"");
        assert!(is_invalid_input(&r), "{hash:?}: {:?}", r.map(|_| "Ok"));
        let r = public.encrypt_oaep(hash, &key_material(1000), b"l");
        assert!(is_invalid_input(&r), "{hash:?}");
    }
}

#[test]
fn rsa_public_from_components_and_pem_round_trip() {
    let key = rsa_key();
    let public = key.public();

    let rebuilt =
        RsaPublic::from_components(&public.modulus(), &public.exponent()).expect("from_components");
    assert_eq!(rebuilt, public);
    // Leading zero bytes (as some HSMs report) do not change the key.
    let padded_n = [&[0u8, 0][..], &public.modulus()].concat();
    assert_eq!(
        RsaPublic::from_components(&padded_n, &[0, 1, 0, 1]).expect("from_components"),
        public
    );
    let ct = rebuilt
        .encrypt_oaep(OaepHash::Sha256, b"via components", b"")
        .expect("encrypt");
    assert_eq!(
        key.decrypt_oaep(OaepHash::Sha256, &ct, b"")
            .expect("decrypt")
            .expose_secret(),
        b"via components"
    );

    let pem = public.to_pem();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    assert!(pem.ends_with("-----END PUBLIC KEY-----\n"), "{pem}");
    assert_eq!(RsaPublic::from_pem(&pem).expect("from_pem"), public);
}

#[test]
fn rsa_public_from_components_refuses_garbage() {
    let n = rsa_key().public().modulus();
    for (what, n, e) in [
        ("empty", &[][..], &[1u8, 0, 1][..]),
        ("tiny modulus", &[0xc5u8][..], &[3u8][..]),
        ("exponent 1", &n[..], &[1u8][..]),
        ("exponent 0", &n[..], &[][..]),
    ] {
        assert!(
            is_invalid_input(&RsaPublic::from_components(n, e)),
            "{what}"
        );
    }
}

#[test]
fn rsa_private_pkcs8_der_round_trip() {
    let key = rsa_key();
    let der = key.to_pkcs8_der().expect("to_pkcs8_der");
    let back = RsaPrivate::from_pkcs8_der(&der).expect("from_pkcs8_der");
    assert_eq!(back.public(), key.public());
    assert!(is_invalid_input(&RsaPrivate::from_pkcs8_der(
        &der[..der.len() - 1]
    )));
    assert!(is_invalid_input(&RsaPrivate::from_pkcs8_der(b"")));
    assert!(is_invalid_input(&RsaPrivate::from_pkcs8_der(&[
        0x30, 0x03, 1, 2, 3
    ])));
}

#[test]
fn rsa_debug_shows_no_key_material() {
    let key = rsa_key();
    let dbg = format!("{key:?}");
    assert_eq!(dbg, "RsaPrivate { bits: 2048, .. }");
    let alt = format!("{key:#?}");
    let n_hex = hex(&key.public().modulus());
    assert!(!alt.contains(&n_hex[..16]), "{alt}");
    assert!(alt.len() < 64, "{alt}");
    assert_eq!(format!("{:?}", key.public()), "RsaPublic { bits: 2048 }");
}

// Fixed test keys, generated once with OpenSSL 3.0 for these tests and never used elsewhere:
//   openssl genrsa -traditional -out pkcs1.pem 2048
//   openssl pkcs8 -topk8 -nocrypt -in pkcs1.pem -out pkcs8.pem
//   openssl rsa -in pkcs1.pem -pubout                    (SPKI)
//   openssl rsa -in pkcs1.pem -RSAPublicKey_out          (PKCS#1 public)
//   openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256
// The two ciphertexts were made by OpenSSL (`openssl pkeyutl -encrypt -pubin -inkey spki.pem
// -pkeyopt rsa_padding_mode:oaep ...`), so decrypting them checks interoperability.

const PKCS8_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQDxUEpTBUdbUxl7
+i2EBfBrMwbq6EFjXIxEk9cDwc68TJc8smU63yKBeRySrphQFHrNy/Z/FEcuP2zt
lpwrFKQIDV0Kw7rjw/8VrscqQLxDBjJWzhrzMvKts8Nfu4FkAeYkMcUkhLUMWbu3
BWG6qlt5hNc0lcGO6ptWeLFKsqFbygiW84VSxL+6h4D4XH9EL6dUBvoV+3svBtgx
f1cXsGVV4iIZE1AMOprVkH/FLljL43dJ9XP/bGbD6Tf+Q2pyQ3l9h/SK78DbwdMr
cLG3oxmcWMV7K2BMT3dDAm1SOU+8snX6IoOEMEW9ldNNmKrPPtxnzi6JX+WulJeG
JiYbBlPJAgMBAAECggEAAyp0SSsgmidTUPkxo5cPhgaDD235MqL45krsEe0XB7PN
CE4HrjUAdG34yh4EhUjEKi2Zd/tq/3reny4qnGrpR9TuDNllGv5xUFEM+kYjuiY2
CZsWBy1apJz/Fzh5ZyJFE8yRMKxq3Xo9ZauqR4XF4gie6VOSziD65VCQyeE2pPgR
bSPUhxw/7PxVeIHFwJdpPBnZxG8alFCggPjM+rHytLZlxGBVg98veVA14nDXTYoX
mpTECCBMGKXGh0DgHYW15JHgDtuKFoWk+HNSX3Sk+q634AN4Y9uK8GTV5Kvd6bmI
WqGj57hCWCjpwVAiMdjRNA3tAYqbc9eOL58ZO9WBIQKBgQD5/A3VcoLjYO+bY1Q1
BydVmcPJ/Bv2WUKrRYt5L8kkoYQ3Ln37tT3+99APADvNXHDix7vEZRRstJkF8nAW
w1sxp0UuIJ/3tnyHfbs4LpKFsNSSxP5CjkRNvRW2nEFpJ5kH2FmzW05dp4L5Um99
6/CXIgCN3KurORRRZBYAeNu9KQKBgQD3HtJh/uq/KaprcRs4DepC6T5msKVLBZ4E
xVp3qxw4FYm0cknVWgQiu73GvF6kFavHe8A/Bl1rO3rep/j7NWEd1VAGIDGBl/uX
2T3iAu/rZbhDBMcaypTUzu1ijuLY5WIOkYpTOOZBIvYbZ9WRe4AUG7hx4ErHO9j4
IgDOedAVoQKBgGtn7pGs96u2NHyw+rcl8bKHtGWOWn1H8Ksh4EEbVPLWKraC1UJW
puJrmws28HrVovLtGjHRtCrYlX7GoX5GRWJaGhEtl02ZLHwSe2QyLmYeidbdqNjz
w0kbWr7w9/G0P73tKO0058C5fj6dOqYBv4dP5qkNDP0uMxqdRA7D3rWxAoGAaOWp
cjWOGeUq1P6nCi1F8m8lsNts3qKcx/OqCkAU822ZDYKx+qGCPegpj3GoTshwKXZL
TbV69CjEaD0vABtRhSNmG6OQwCzufC+YCBctFmQQSkp95c52TLslov96JY2BCSQY
bmkpvB6GD24NBvtAi8iUi6oks9ugpvtwEjU88eECgYEA8wkMleeor2uxmxy3KXUJ
PeBt9O7SoeyWH/O+oghseVL9hVkLe3aZksgOKh/3Vl1ZNrC8WX2ODqWvXQp4RCuu
n7klaCbh5+Axf/xImNV3zaLqMLjafzMXcqwT32H6L/eXdMYQhHTuQ7xu7kXvN7kI
q+gkvRzV3bpsAujL8LSnxr8=
-----END PRIVATE KEY-----
";

const PKCS1_PEM: &str = "-----BEGIN RSA PRIVATE KEY-----
MIIEowIBAAKCAQEA8VBKUwVHW1MZe/othAXwazMG6uhBY1yMRJPXA8HOvEyXPLJl
Ot8igXkckq6YUBR6zcv2fxRHLj9s7ZacKxSkCA1dCsO648P/Fa7HKkC8QwYyVs4a
8zLyrbPDX7uBZAHmJDHFJIS1DFm7twVhuqpbeYTXNJXBjuqbVnixSrKhW8oIlvOF
UsS/uoeA+Fx/RC+nVAb6Fft7LwbYMX9XF7BlVeIiGRNQDDqa1ZB/xS5Yy+N3SfVz
/2xmw+k3/kNqckN5fYf0iu/A28HTK3Cxt6MZnFjFeytgTE93QwJtUjlPvLJ1+iKD
hDBFvZXTTZiqzz7cZ84uiV/lrpSXhiYmGwZTyQIDAQABAoIBAAMqdEkrIJonU1D5
MaOXD4YGgw9t+TKi+OZK7BHtFwezzQhOB641AHRt+MoeBIVIxCotmXf7av963p8u
Kpxq6UfU7gzZZRr+cVBRDPpGI7omNgmbFgctWqSc/xc4eWciRRPMkTCsat16PWWr
qkeFxeIInulTks4g+uVQkMnhNqT4EW0j1IccP+z8VXiBxcCXaTwZ2cRvGpRQoID4
zPqx8rS2ZcRgVYPfL3lQNeJw102KF5qUxAggTBilxodA4B2FteSR4A7bihaFpPhz
Ul90pPqut+ADeGPbivBk1eSr3em5iFqho+e4Qlgo6cFQIjHY0TQN7QGKm3PXji+f
GTvVgSECgYEA+fwN1XKC42Dvm2NUNQcnVZnDyfwb9llCq0WLeS/JJKGENy59+7U9
/vfQDwA7zVxw4se7xGUUbLSZBfJwFsNbMadFLiCf97Z8h327OC6ShbDUksT+Qo5E
Tb0VtpxBaSeZB9hZs1tOXaeC+VJvfevwlyIAjdyrqzkUUWQWAHjbvSkCgYEA9x7S
Yf7qvymqa3EbOA3qQuk+ZrClSwWeBMVad6scOBWJtHJJ1VoEIru9xrxepBWrx3vA
PwZdazt63qf4+zVhHdVQBiAxgZf7l9k94gLv62W4QwTHGsqU1M7tYo7i2OViDpGK
UzjmQSL2G2fVkXuAFBu4ceBKxzvY+CIAznnQFaECgYBrZ+6RrPertjR8sPq3JfGy
h7Rljlp9R/CrIeBBG1Ty1iq2gtVCVqbia5sLNvB61aLy7Rox0bQq2JV+xqF+RkVi
WhoRLZdNmSx8EntkMi5mHonW3ajY88NJG1q+8PfxtD+97SjtNOfAuX4+nTqmAb+H
T+apDQz9LjManUQOw961sQKBgGjlqXI1jhnlKtT+pwotRfJvJbDbbN6inMfzqgpA
FPNtmQ2Csfqhgj3oKY9xqE7IcCl2S021evQoxGg9LwAbUYUjZhujkMAs7nwvmAgX
LRZkEEpKfeXOdky7JaL/eiWNgQkkGG5pKbwehg9uDQb7QIvIlIuqJLPboKb7cBI1
PPHhAoGBAPMJDJXnqK9rsZsctyl1CT3gbfTu0qHslh/zvqIIbHlS/YVZC3t2mZLI
Diof91ZdWTawvFl9jg6lr10KeEQrrp+5JWgm4efgMX/8SJjVd82i6jC42n8zF3Ks
E99h+i/3l3TGEIR07kO8bu5F7ze5CKvoJL0c1d26bALoy/C0p8a/
-----END RSA PRIVATE KEY-----
";

const SPKI_PEM: &str = "-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA8VBKUwVHW1MZe/othAXw
azMG6uhBY1yMRJPXA8HOvEyXPLJlOt8igXkckq6YUBR6zcv2fxRHLj9s7ZacKxSk
CA1dCsO648P/Fa7HKkC8QwYyVs4a8zLyrbPDX7uBZAHmJDHFJIS1DFm7twVhuqpb
eYTXNJXBjuqbVnixSrKhW8oIlvOFUsS/uoeA+Fx/RC+nVAb6Fft7LwbYMX9XF7Bl
VeIiGRNQDDqa1ZB/xS5Yy+N3SfVz/2xmw+k3/kNqckN5fYf0iu/A28HTK3Cxt6MZ
nFjFeytgTE93QwJtUjlPvLJ1+iKDhDBFvZXTTZiqzz7cZ84uiV/lrpSXhiYmGwZT
yQIDAQAB
-----END PUBLIC KEY-----
";

const PKCS1_PUBLIC_PEM: &str = "-----BEGIN RSA PUBLIC KEY-----
MIIBCgKCAQEA8VBKUwVHW1MZe/othAXwazMG6uhBY1yMRJPXA8HOvEyXPLJlOt8i
gXkckq6YUBR6zcv2fxRHLj9s7ZacKxSkCA1dCsO648P/Fa7HKkC8QwYyVs4a8zLy
rbPDX7uBZAHmJDHFJIS1DFm7twVhuqpbeYTXNJXBjuqbVnixSrKhW8oIlvOFUsS/
uoeA+Fx/RC+nVAb6Fft7LwbYMX9XF7BlVeIiGRNQDDqa1ZB/xS5Yy+N3SfVz/2xm
w+k3/kNqckN5fYf0iu/A28HTK3Cxt6MZnFjFeytgTE93QwJtUjlPvLJ1+iKDhDBF
vZXTTZiqzz7cZ84uiV/lrpSXhiYmGwZTyQIDAQAB
-----END RSA PUBLIC KEY-----
";

/// The SPKI above as DER (`openssl rsa -pubin -in spki.pem -outform DER`).
const SPKI_DER_HEX: &str = "30820122300d06092a864886f70d01010105000382010f003082010a0282010100\
f1504a5305475b53197bfa2d8405f06b3306eae841635c8c4493d703c1cebc4c973cb2653adf2281791c92ae985014\
7acdcbf67f14472e3f6ced969c2b14a4080d5d0ac3bae3c3ff15aec72a40bc43063256ce1af332f2adb3c35fbb8164\
01e62431c52484b50c59bbb70561baaa5b7984d73495c18eea9b5678b14ab2a15bca0896f38552c4bfba8780f85c7f\
442fa75406fa15fb7b2f06d8317f5717b06555e2221913500c3a9ad5907fc52e58cbe37749f573ff6c66c3e937fe43\
6a7243797d87f48aefc0dbc1d32b70b1b7a3199c58c57b2b604c4f7743026d52394fbcb275fa2283843045bd95d34d\
98aacf3edc67ce2e895fe5ae94978626261b0653c90203010001";

/// A P-256 private key: well-formed PKCS#8, but not RSA.
const EC_PKCS8_PEM: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg3XSHgXi8Y6NP1mum
aleAZO+IECJV1q/qTB3nxdtgIWqhRANCAASvKeMSli/2NugSDOZIQqgqLTUvIxVp
6GtSNQkXJvcFhPs/fX5hwr7XpTFM2WFoJGbR2gZscErAqzEv49CVDLvP
-----END PRIVATE KEY-----
";

/// The plaintext of both OpenSSL ciphertexts.
const OPENSSL_MSG: &[u8] = b"openssl interop key material 32B";

/// OAEP SHA-256 / MGF1-SHA-256, label "byok label".
const OPENSSL_CT_SHA256_LABEL: &str = "d5cb5c748470d47e7f3b16268f850e8012f12655b992dac92f4511890dd54839\
d440267096fbdf9a5ce41c35d88d230c18a370df8b49846e0858c94e0578b6e8dc1e5b2ed944d4145797ac906066d19c\
2944eb382c1e7d8f83d0768d59e2b7a9fece0e7c81bdc29842426eb41376369216687257117bc3a0a8594f6bf5837339\
980fa114e59980589dee56fffbffcccdbfa64ace70aeeca4a1f97a09002a6af9594444f47fb5395de14f9f13e0825c59\
d6226464e0081cc1f30b8d0ad4e463f09c61782cd421fcefbf0265618ee49b9500470dcfc24a12b7e8ccb1dd1aa03b35\
a62d782eefce3405495a4dae0c414a25941e369fbff61a0ee92f8525ced5d4db";

/// OAEP SHA-1 / MGF1-SHA-1, empty label.
const OPENSSL_CT_SHA1: &str = "ed13e8829f0ed94fd0470c0ee9d5d98aadce293b8c4e3ef15e8912c86dba8bc3\
d4b382c0b183381f87d5ef22052d4d03b16b8b75cdc4f3c54e0de4836dbcbc94105015e1d730515c47985de4ba18056d\
1e05c0f504e5705d9bcd34c131806be348b012dabf68b98e5eb6721c886e15b8e53d43cfb2bde85d71f878db0229ad89\
98841db12e7d4e2d36123bbdd7bf144726c5efcc6a4d87018b19698139ef3f463510c12373ffe6d42b104119600e8010\
6dddfae0e1b956062cf95bc8b51342cc68479b2e9000b8f3a845072754721c8930a026a38021d37787779b907ce7de67\
b88b05be74b2b7e4e731fff359666f9506ff53889046983163ff580108d4faec";

#[test]
fn rsa_pem_import_pkcs8_and_pkcs1_give_the_same_key() {
    let p8 = RsaPrivate::from_pem(PKCS8_PEM).expect("PKCS#8 PEM");
    let p1 = RsaPrivate::from_pem(PKCS1_PEM).expect("PKCS#1 PEM");
    assert_eq!(p8.bits(), 2048);
    assert_eq!(p8.public(), p1.public());

    let spki = RsaPublic::from_pem(SPKI_PEM).expect("SPKI PEM");
    let pub1 = RsaPublic::from_pem(PKCS1_PUBLIC_PEM).expect("PKCS#1 public PEM");
    let der = RsaPublic::from_spki_der(&h(SPKI_DER_HEX)).expect("SPKI DER");
    assert_eq!(spki, p8.public());
    assert_eq!(pub1, spki);
    assert_eq!(der, spki);
    // Our SPKI PEM encoding is byte-for-byte OpenSSL's.
    assert_eq!(spki.to_pem(), SPKI_PEM);

    // CRLF line endings (a PEM pasted on Windows) are accepted too.
    let crlf = PKCS8_PEM.replace('\n', "\r\n");
    assert_eq!(
        RsaPrivate::from_pem(&crlf).expect("CRLF PEM").public(),
        spki
    );
}

#[test]
fn rsa_decrypts_openssl_ciphertexts() {
    let p8 = RsaPrivate::from_pem(PKCS8_PEM).expect("PKCS#8 PEM");
    let p1 = RsaPrivate::from_pem(PKCS1_PEM).expect("PKCS#1 PEM");
    let ct256 = h(OPENSSL_CT_SHA256_LABEL);
    let ct1 = h(OPENSSL_CT_SHA1);
    for key in [&p8, &p1] {
        let pt = key
            .decrypt_oaep(OaepHash::Sha256, &ct256, b"byok label")
            .expect("SHA-256 with label");
        assert_eq!(pt.expose_secret(), OPENSSL_MSG);
        let pt = key.decrypt_oaep(OaepHash::Sha1, &ct1, b"").expect("SHA-1");
        assert_eq!(pt.expose_secret(), OPENSSL_MSG);
        assert!(is_decryption(&key.decrypt_oaep(
            OaepHash::Sha256,
            &ct256,
            b""
        )));
        assert!(is_decryption(&key.decrypt_oaep(
            OaepHash::Sha256,
            &ct1,
            b""
        )));
    }
}

#[test]
fn rsa_pem_garbage_is_invalid_input() {
    let truncated = &PKCS8_PEM[..PKCS8_PEM.len() / 2];
    let no_footer = PKCS8_PEM.replace("-----END PRIVATE KEY-----\n", "");
    let wrong_label = PKCS8_PEM.replace("PRIVATE KEY", "CERTIFICATE");
    // One base64 character of the modulus changed: still valid DER, but n != p*q.
    let tampered_modulus = PKCS1_PEM.replacen("8VBKUwVHW1MZe", "8VBKUwVHW1MZf", 1);
    assert_ne!(tampered_modulus, PKCS1_PEM);
    let garbage = [
        "",
        "garbage",
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "-----BEGIN RSA PRIVATE KEY-----\n!!!!\n-----END RSA PRIVATE KEY-----\n",
        truncated,
        &no_footer,
        &wrong_label,
        &tampered_modulus,
        EC_PKCS8_PEM,
        SPKI_PEM,
        PKCS1_PUBLIC_PEM,
    ];
    for (i, pem) in garbage.iter().enumerate() {
        let r = RsaPrivate::from_pem(pem);
        assert!(is_invalid_input(&r), "private case {i}: {r:?}");
    }
    for (i, pem) in ["", "garbage", PKCS8_PEM, PKCS1_PEM, EC_PKCS8_PEM, truncated]
        .iter()
        .enumerate()
    {
        let r = RsaPublic::from_pem(pem);
        assert!(is_invalid_input(&r), "public case {i}: {r:?}");
    }
    let der = h(SPKI_DER_HEX);
    assert!(is_invalid_input(&RsaPublic::from_spki_der(
        &der[..der.len() - 1]
    )));
    assert!(is_invalid_input(&RsaPublic::from_spki_der(b"")));
}

// ---------------------------------------------------------------------------------------------
// Hashes and KDF: RFC known answers
// ---------------------------------------------------------------------------------------------

#[test]
fn sha256_known_answer() {
    // FIPS 180-2, appendix B.1.
    assert_eq!(
        hex(&sha256(b"abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
}

#[test]
fn hmac_sha256_rfc4231() {
    // Test case 1.
    assert_eq!(
        hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
    );
    // Test case 2: a key shorter than the output.
    assert_eq!(
        hex(&hmac_sha256(b"Jefe", b"what do ya want for nothing?")),
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    );
    // Test case 6: a key longer than the block, which HMAC must hash first.
    assert_eq!(
        hex(&hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First"
        )),
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
    );
}

#[test]
fn hkdf_sha256_rfc5869_case_1() {
    let ikm = [0x0b; 22];
    let salt = h("000102030405060708090a0b0c");
    let info = h("f0f1f2f3f4f5f6f7f8f9");
    let okm =
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865";

    let mut out = [0u8; 42];
    hkdf_sha256(&salt, &ikm, &[&info], &mut out);
    assert_eq!(hex(&out), okm);

    // `info` given in pieces is their concatenation.
    let mut pieces = [0u8; 42];
    hkdf_sha256(&salt, &ikm, &[&info[..3], &[], &info[3..]], &mut pieces);
    assert_eq!(pieces, out);

    // The extract step is HMAC(salt, IKM): the RFC's PRK.
    assert_eq!(
        hex(&hmac_sha256(&salt, &ikm)),
        "077709362c2e32df0ddc3f0dc47bba6390b6c73bb50f9c3122ec844ad7c2b3e5"
    );

    // A shorter output is a prefix.
    let mut short = [0u8; 16];
    hkdf_sha256(&salt, &ikm, &[&info], &mut short);
    assert_eq!(short[..], out[..16]);
}

// ---------------------------------------------------------------------------------------------
// Randomness
// ---------------------------------------------------------------------------------------------

#[test]
fn fill_random_differs_across_calls() {
    let mut seen = HashSet::new();
    for _ in 0..64 {
        let mut b = [0u8; 32];
        fill_random(&mut b);
        assert_ne!(b, [0u8; 32]);
        assert!(seen.insert(b), "fill_random repeated a 32-byte output");
    }
    fill_random(&mut []);
}

#[test]
fn fill_random_differs_across_threads() {
    let mut first = [0u8; 32];
    fill_random(&mut first);
    let outputs: Vec<[u8; 32]> = (0..8)
        .map(|_| {
            std::thread::spawn(|| {
                let mut b = [0u8; 32];
                fill_random(&mut b);
                b
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    let mut seen = HashSet::from([first]);
    for b in outputs {
        assert!(seen.insert(b), "two threads drew the same bytes");
    }
    assert_eq!(seen.len(), 9);
}

#[test]
fn thread_rng_and_seeded_rng() {
    let mut t = OsRng;
    let a = t.try_next_u64().expect("infallible");
    let b = t.try_next_u64().expect("infallible");
    assert_ne!(a, b);

    let draw = |seed: [u8; 32]| {
        let mut r = SeededRng::new(seed);
        let mut buf = [0u8; 48];
        r.try_fill_bytes(&mut buf).expect("infallible");
        buf
    };
    assert_eq!(draw([1; 32]), draw([1; 32]));
    assert_ne!(draw([1; 32]), draw([2; 32]));
}

#[test]
fn a_fork_guard_reports_no_fork_in_the_same_process() {
    let mut g = super::fork_guard();
    assert!(!g.detected_fork());
    // The atfork flavour, not the pid comparison that misses PID-namespace forks.
    #[cfg(unix)]
    assert_eq!(g.flavor(), forkguard::Flavor::Atfork);
}
