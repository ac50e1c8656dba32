//! Unit tests that need the envelope's internals.

use super::format::{self, FLAG_LAYER2, FormatError, LayerFields};
use super::stream::Ciphers;
use super::*;
use crate::secret::AesKey;

fn key(account: &str, id: &str, version: u32, byte: u8) -> PreparedKey {
    let ak = AccountKey::new(id, version, AesKey::from_bytes([byte; 32])).unwrap();
    PreparedKey::new(account, &ak).unwrap()
}

#[test]
fn header_round_trips_and_limits_hold() {
    let k1 = key("acct", "ak", 3, 1);
    let k2 = key("acct", "infra", 9, 2);
    for env in [
        Envelope::new(&k1),
        Envelope::new(&k1).with_layer2(&k2).unwrap(),
    ] {
        let obj = env.seal(b"ctx", b"data").unwrap();
        let h = format::parse(&obj).unwrap();
        let mut out = Vec::new();
        h.write_to(&mut out);
        assert_eq!(out, h.raw);
        assert_eq!(
            format::encoded_len(h.account_id, &h.layer1, h.layer2.as_ref()),
            h.raw.len()
        );
        // Every proper prefix of the header is a typed error, never a panic.
        for n in 0..h.raw.len() {
            let e = format::parse(&obj[..n]).unwrap_err();
            assert!(matches!(e, FormatError::Truncated), "prefix {n}: {e:?}");
        }
    }
    // Huge claimed header length: refused before allocation.
    let obj = Envelope::new(&k1).seal(b"", b"").unwrap();
    let mut bad = obj.clone();
    bad[8..10].copy_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(
        format::parse(&bad).unwrap_err(),
        FormatError::HeaderTooLong(65535)
    );
    let mut bad = obj.clone();
    bad[7] = 40;
    assert_eq!(format::parse(&bad).unwrap_err(), FormatError::ChunkSize(40));
    let mut bad = obj.clone();
    bad[4] = 2;
    assert_eq!(
        format::parse(&bad).unwrap_err(),
        FormatError::UnknownVersion(2)
    );
    assert_eq!(
        format::parse(&bad[..5]).unwrap_err(),
        FormatError::UnknownVersion(2)
    );
    let mut bad = obj.clone();
    bad[5] |= 0x80;
    assert_eq!(
        format::parse(&bad).unwrap_err(),
        FormatError::ReservedFlags(0x80)
    );
    assert_eq!(
        format::parse(b"PK\x03\x04").unwrap_err(),
        FormatError::BadMagic
    );
    assert_eq!(format::parse(b"BY").unwrap_err(), FormatError::Truncated);
}

/// An insider holding the layer-2 key strips layer 2 (decrypts it chunk by chunk and
/// rewrites the header as single-layer): layer 1 must refuse the result.
#[test]
fn stripping_layer2_with_its_key_is_detected() {
    let k1 = key("acct", "ak", 1, 1);
    let k2 = key("acct", "infra", 1, 2);
    let env2 = Envelope::new(&k1)
        .with_layer2(&k2)
        .unwrap()
        .with_chunk_size(64)
        .unwrap();
    let pt: Vec<u8> = (0..200u8).collect();
    let obj = env2.seal(b"ctx", &pt).unwrap();
    let h = format::parse(&obj).unwrap();
    let (_, k2_key) = stream::recover_keys(&h, &k1, Some(&k2), b"ctx").unwrap();
    let (dk2, p2) = k2_key.unwrap();
    let l2 = stream::LayerCipher::new(&dk2, &p2);
    let only2 = Ciphers { l1: &l2, l2: None };
    // New single-layer header with the same layer-1 fields.
    let mut stripped = Vec::new();
    format::write(&mut stripped, h.chunk_exp, h.account_id, &h.layer1, None);
    assert_eq!(stripped[5] & FLAG_LAYER2, 0);
    let body = &obj[h.raw.len()..];
    let chunks: Vec<&[u8]> = body.chunks(64 + 32).collect();
    for (i, c) in chunks.iter().enumerate() {
        let mut buf = c.to_vec();
        only2
            .open_chunk(i as u32, i == chunks.len() - 1, h.raw, &mut buf, 0)
            .unwrap();
        stripped.extend_from_slice(&buf);
    }
    let env1 = Envelope::new(&k1).with_chunk_size(64).unwrap();
    assert!(matches!(
        env1.open(b"ctx", &stripped),
        Err(Error::Decryption)
    ));
    assert!(matches!(
        env2.open(b"ctx", &stripped),
        Err(Error::Decryption)
    ));
    // Sanity: the untouched object opens.
    assert_eq!(env2.open(b"ctx", &obj).unwrap(), pt);
    let _ = LayerFields {
        key_id: "x",
        key_version: 0,
        wrapped: &[0; 40],
        commitment: &[0; 32],
    };
}

/// A header whose data key unwraps but whose commitment was replaced is refused.
#[test]
fn commitment_is_checked() {
    let k1 = key("acct", "ak", 1, 1);
    let env = Envelope::new(&k1);
    let obj = env.seal(b"", b"x").unwrap();
    let h = format::parse(&obj).unwrap();
    let mut forged = Vec::new();
    let other = [0xAA; 32];
    let l1 = LayerFields {
        commitment: &other,
        ..h.layer1
    };
    format::write(&mut forged, h.chunk_exp, h.account_id, &l1, None);
    forged.extend_from_slice(&obj[h.raw.len()..]);
    assert!(matches!(env.open(b"", &forged), Err(Error::Decryption)));
}

#[test]
fn the_opener_grows_its_buffer_with_the_data_not_the_claimed_chunk_size() {
    use std::io::Read;
    let k = PreparedKey::new("t", &AccountKey::new("ak", 1, AesKey::generate()).unwrap()).unwrap();
    let env = Envelope::new(&k).with_chunk_size(16 << 20).unwrap();
    let obj = env.seal(b"c", &[7u8; 1000]).unwrap();
    let mut r = env.open_reader(b"c", obj.as_slice()).unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    assert_eq!(out, [7u8; 1000]);
    assert!(r.buffer_capacity() <= 16 * 1024, "{}", r.buffer_capacity());

    // A full 16 MiB chunk: never more than one chunk plus its tag.
    let big = vec![3u8; 16 << 20];
    let obj = env.seal(b"c", &big).unwrap();
    let mut r = env.open_reader(b"c", obj.as_slice()).unwrap();
    let mut first = [0u8; 1];
    r.read_exact(&mut first).unwrap();
    assert!(
        r.buffer_capacity() <= (16 << 20) + 16,
        "{}",
        r.buffer_capacity()
    );
}
