//! Bad input: every bit flip and truncation, chunk reordering, duplication, dropping and
//! appending, header swaps and layer stripping all give the one opaque decryption error —
//! never a panic, never partial plaintext.

#![allow(clippy::unwrap_used)]

use std::io::Read;

use byok::envelope::{AccountKey, PreparedKey};
use byok::{AesKey, Envelope, Error};

fn key(account: &str, id: &str, version: u32, byte: u8) -> PreparedKey {
    let ak = AccountKey::new(id, version, AesKey::from_bytes([byte; 32])).unwrap();
    PreparedKey::new(account, &ak).unwrap()
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + 7) as u8).collect()
}

fn is_decryption(e: &std::io::Error) -> bool {
    matches!(
        e.get_ref().and_then(|e| e.downcast_ref::<Error>()),
        Some(Error::Decryption)
    )
}

/// Both APIs must refuse `obj`. Returns what the streaming reader handed out before failing.
fn refused(env: &Envelope<'_>, ctx: &[u8], obj: &[u8]) -> Vec<u8> {
    assert!(matches!(env.open(ctx, obj), Err(Error::Decryption)));
    let mut out = Vec::new();
    match env.open_reader(ctx, obj) {
        Err(e) => assert!(is_decryption(&e), "{e:?}"),
        Ok(mut r) => {
            let e = r.read_to_end(&mut out).unwrap_err();
            assert!(is_decryption(&e), "{e:?}");
            // Failed readers stay failed.
            assert!(r.read(&mut [0u8; 8]).is_err());
        }
    }
    out
}

fn envelopes<'k>(k1: &'k PreparedKey, k2: &'k PreparedKey) -> [Envelope<'k>; 2] {
    let single = Envelope::new(k1).with_chunk_size(64).unwrap();
    [single, single.with_layer2(k2).unwrap()]
}

#[test]
fn every_bit_flip_and_truncation_of_a_small_object_fails() {
    let (k1, k2) = (key("t", "ak", 1, 1), key("t", "infra", 2, 2));
    for env in envelopes(&k1, &k2) {
        for pt in [data(0), data(40), data(100)] {
            let obj = env.seal(b"ctx", &pt).unwrap();
            assert_eq!(env.open(b"ctx", &obj).unwrap(), pt);
            for bit in 0..obj.len() * 8 {
                let mut t = obj.clone();
                t[bit / 8] ^= 1 << (bit % 8);
                let leaked = refused(&env, b"ctx", &t);
                // Only chunks that authenticated may come out, and a flip in chunk 0 or the
                // header (which every chunk binds) leaves nothing.
                let h = byok::envelope::inspect(&obj).unwrap().header_len;
                if bit / 8 < h + 64 {
                    assert!(leaked.is_empty(), "bit {bit} leaked {} bytes", leaked.len());
                } else {
                    assert_eq!(leaked, pt[..leaked.len()]);
                }
            }
            for n in 0..obj.len() {
                let leaked = refused(&env, b"ctx", &obj[..n]);
                assert_eq!(leaked, pt[..leaked.len()]);
                assert!(leaked.len() < pt.len().max(1));
            }
            // Appended bytes.
            for extra in [&b"\0"[..], b"0123456789abcdef", &[0u8; 80]] {
                let mut t = obj.clone();
                t.extend_from_slice(extra);
                refused(&env, b"ctx", &t);
            }
        }
    }
}

#[test]
fn chunk_reorder_duplicate_drop_and_append_are_detected() {
    let (k1, k2) = (key("t", "ak", 1, 1), key("t", "infra", 2, 2));
    for env in envelopes(&k1, &k2) {
        let pt = data(64 * 4 + 20);
        let obj = env.seal(b"ctx", &pt).unwrap();
        let info = byok::envelope::inspect(&obj).unwrap();
        let h = info.header_len;
        let full = 64 + if info.layer2_key.is_some() { 32 } else { 16 };
        let chunks: Vec<&[u8]> = obj[h..].chunks(full).collect();
        assert_eq!(chunks.len(), 5);
        let build = |order: &[usize]| {
            let mut v = obj[..h].to_vec();
            for &i in order {
                v.extend_from_slice(chunks[i]);
            }
            v
        };
        assert_eq!(env.open(b"ctx", &build(&[0, 1, 2, 3, 4])).unwrap(), pt);
        for order in [
            &[1, 0, 2, 3, 4][..], // swap
            &[0, 2, 1, 3, 4],
            &[0, 1, 2, 4, 3],    // final chunk moved
            &[0, 1, 1, 2, 3, 4], // duplicate
            &[0, 1, 2, 3, 3, 4],
            &[0, 1, 2, 3],       // drop the final chunk (truncation at a boundary)
            &[0, 2, 3, 4],       // drop a middle chunk
            &[1, 2, 3, 4],       // drop the first chunk
            &[0, 1, 2, 3, 4, 4], // append a duplicate final chunk
            &[4],
        ] {
            let leaked = refused(&env, b"ctx", &build(order));
            assert_eq!(leaked, pt[..leaked.len()], "{order:?}");
        }
        // A chunk of another object (same keys, same position) does not fit.
        let other = env.seal(b"ctx", &pt).unwrap();
        let mut spliced = obj.clone();
        spliced[h + full..h + 2 * full].copy_from_slice(&other[h + full..h + 2 * full]);
        let leaked = refused(&env, b"ctx", &spliced);
        assert_eq!(leaked, pt[..64]);
    }
}

#[test]
fn streaming_reader_never_releases_an_unauthenticated_chunk() {
    let (k1, k2) = (key("t", "ak", 1, 1), key("t", "infra", 2, 2));
    for env in envelopes(&k1, &k2) {
        let pt = data(64 * 4);
        let obj = env.seal(b"ctx", &pt).unwrap();
        let info = byok::envelope::inspect(&obj).unwrap();
        let full = 64 + if info.layer2_key.is_some() { 32 } else { 16 };
        // Damage the last byte of chunk 2: exactly chunks 0 and 1 come out.
        let mut t = obj.clone();
        t[info.header_len + 3 * full - 1] ^= 0x40;
        let mut r = env.open_reader(b"ctx", t.as_slice()).unwrap();
        let mut got = Vec::new();
        let mut one = [0u8; 1];
        let err = loop {
            match r.read(&mut one) {
                Ok(0) => panic!("tampered object read to the end"),
                Ok(_) => got.push(one[0]),
                Err(e) => break e,
            }
        };
        assert!(is_decryption(&err));
        assert_eq!(got, pt[..128]);
    }
}

#[test]
fn header_swaps_between_objects_and_accounts_fail() {
    let (k1, k2) = (key("t", "ak", 1, 1), key("t", "infra", 2, 2));
    for env in envelopes(&k1, &k2) {
        let a = env.seal(b"ctx", &data(100)).unwrap();
        let b = env.seal(b"ctx", &data(100)).unwrap();
        let h = byok::envelope::inspect(&a).unwrap().header_len;
        let mut swapped = a[..h].to_vec();
        swapped.extend_from_slice(&b[h..]);
        refused(&env, b"ctx", &swapped);
    }
    // Same key material and ids under another account: the header names the account.
    let other = key("u", "ak", 1, 1);
    let env_t = Envelope::new(&k1);
    let env_u = Envelope::new(&other);
    let obj = env_t.seal(b"ctx", b"secret").unwrap();
    refused(&env_u, b"ctx", &obj);
    // Rewriting the account id in the header (same length) does not help either.
    let mut renamed = obj.clone();
    let pos = 11; // account id starts after the fixed part and its length byte
    assert_eq!(renamed[pos], b't');
    renamed[pos] = b'u';
    refused(&env_u, b"ctx", &renamed);
    // Wrong context, wrong key version, wrong key bytes.
    refused(&env_t, b"other", &obj);
    refused(&Envelope::new(&key("t", "ak", 2, 1)), b"ctx", &obj);
    refused(&Envelope::new(&key("t", "ak", 1, 9)), b"ctx", &obj);
}

#[test]
fn second_layer_cannot_be_dropped_or_skipped() {
    let (k1, k2) = (key("t", "ak", 1, 1), key("t", "infra", 2, 2));
    let double = Envelope::new(&k1).with_layer2(&k2).unwrap();
    let single = Envelope::new(&k1);
    let obj = double.seal(b"ctx", &data(50)).unwrap();
    // Holding only the layer-1 key yields nothing.
    refused(&single, b"ctx", &obj);
    // A layer-2 key of another version or another key yields nothing.
    let wrong2 = key("t", "infra", 3, 2);
    refused(&single.with_layer2(&wrong2).unwrap(), b"ctx", &obj);
    // Clearing the flag and cutting the layer-2 fields out of the header.
    let info = byok::envelope::inspect(&obj).unwrap();
    let l2_len = 1 + "infra".len() + 4 + 40 + 32;
    let mut cut = obj[..info.header_len - l2_len].to_vec();
    cut[5] = 0;
    let new_len = (cut.len() as u16).to_be_bytes();
    cut[8..10].copy_from_slice(&new_len);
    assert!(byok::envelope::inspect(&cut).unwrap().layer2_key.is_none());
    cut.extend_from_slice(&obj[info.header_len..]);
    refused(&single, b"ctx", &cut);
    refused(&double, b"ctx", &cut);
    // Without the chunks' second tag, too.
    let mut cut2 = cut[..cut.len() - 16].to_vec();
    refused(&double, b"ctx", &cut2);
    cut2.truncate(byok::envelope::inspect(&cut).unwrap().header_len);
    refused(&single, b"ctx", &cut2);
}
