//! Envelope behaviour: one-shot, streaming and ranged opens agree; inspection; sealed fields.

#![allow(clippy::unwrap_used)]

use std::io::{Cursor, Read, Seek, SeekFrom, Write};

use byok::envelope::{AccountKey, FormatError, PreparedKey};
use byok::{AesKey, Envelope, Error};

fn key(account: &str, id: &str, version: u32, byte: u8) -> PreparedKey {
    let ak = AccountKey::new(id, version, AesKey::from_bytes([byte; 32])).unwrap();
    PreparedKey::new(account, &ak).unwrap()
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + 7) as u8).collect()
}

fn inner_error(e: &std::io::Error) -> &Error {
    e.get_ref()
        .and_then(|e| e.downcast_ref::<Error>())
        .unwrap_or_else(|| panic!("not a byok error: {e:?}"))
}

/// Seals with the streaming writer, writing `pt` in pieces of `piece` bytes.
fn seal_streaming(env: &Envelope<'_>, ctx: &[u8], pt: &[u8], piece: usize) -> Vec<u8> {
    let mut w = env.seal_writer(ctx, Vec::new()).unwrap();
    for p in pt.chunks(piece.max(1)) {
        w.write_all(p).unwrap();
    }
    w.finish().unwrap()
}

fn open_streaming(
    env: &Envelope<'_>,
    ctx: &[u8],
    obj: &[u8],
    piece: usize,
) -> Result<Vec<u8>, Error> {
    let mut r = env.open_reader(ctx, obj).map_err(|e| clone_err(&e))?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; piece];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(out),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return Err(clone_err(&e)),
        }
    }
}

fn clone_err(e: &std::io::Error) -> Error {
    match inner_error(e) {
        Error::Decryption => Error::Decryption,
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn one_shot_and_streaming_agree_for_every_size_and_layering() {
    let k1 = key("tenant-a", "ak", 1, 1);
    let k2 = key("tenant-a", "infra", 4, 2);
    let single = Envelope::new(&k1).with_chunk_size(64).unwrap();
    let double = single.with_layer2(&k2).unwrap();
    for env in [single, double] {
        for n in [0, 1, 15, 16, 63, 64, 65, 127, 128, 129, 300, 64 * 7] {
            let pt = data(n);
            let a = env.seal(b"obj", &pt).unwrap();
            let b = seal_streaming(&env, b"obj", &pt, 7);
            assert_eq!(a.len(), b.len(), "size {n}");
            assert_ne!(a, b, "fresh data keys per object");
            for obj in [&a, &b] {
                assert_eq!(env.open(b"obj", obj).unwrap(), pt, "size {n}");
                for piece in [1, 5, 64, 1000] {
                    assert_eq!(open_streaming(&env, b"obj", obj, piece).unwrap(), pt);
                }
            }
        }
    }
}

#[test]
fn default_chunks_and_layer_overhead() {
    let k1 = key("tenant-a", "ak", 1, 1);
    let k2 = key("tenant-a", "infra", 4, 2);
    let env = Envelope::new(&k1);
    assert_eq!(env.chunk_size(), 64 * 1024);
    let pt = data(200 * 1024 + 3);
    let obj = env.seal(b"", &pt).unwrap();
    let h = byok::envelope::inspect(&obj).unwrap().header_len;
    assert_eq!(obj.len(), h + pt.len() + 4 * 16);
    assert_eq!(env.open(b"", &obj).unwrap(), pt);
    let env2 = env.with_layer2(&k2).unwrap();
    let obj2 = env2.seal(b"", &pt).unwrap();
    let h2 = byok::envelope::inspect(&obj2).unwrap().header_len;
    assert_eq!(obj2.len(), h2 + pt.len() + 4 * 32);
    assert_eq!(env2.open(b"", &obj2).unwrap(), pt);
    // A double-layer envelope still opens single-layer objects written before.
    assert_eq!(env2.open(b"", &obj).unwrap(), pt);
}

#[test]
fn empty_object() {
    let k1 = key("t", "ak", 1, 1);
    let env = Envelope::new(&k1);
    let obj = env.seal(b"c", b"").unwrap();
    assert_eq!(env.open(b"c", &obj).unwrap(), b"");
    assert_eq!(open_streaming(&env, b"c", &obj, 10).unwrap(), b"");
    let obj = seal_streaming(&env, b"c", b"", 1);
    assert_eq!(env.open(b"c", &obj).unwrap(), b"");
    assert_eq!(env.open_range(b"c", Cursor::new(&obj), 0..0).unwrap(), b"");
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Counting<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

#[test]
fn ranged_reads_match_and_read_only_covering_chunks() {
    let k1 = key("t", "ak", 1, 1);
    let k2 = key("t", "infra", 1, 2);
    let single = Envelope::new(&k1).with_chunk_size(64).unwrap();
    for env in [single, single.with_layer2(&k2).unwrap()] {
        let pt = data(64 * 4 + 10);
        let obj = env.seal(b"r", &pt).unwrap();
        let info = byok::envelope::inspect(&obj).unwrap();
        let tags = if info.layer2_key.is_some() { 32 } else { 16 };
        let n = pt.len() as u64;
        for a in 0..=n {
            for b in a..=n {
                // Every pair near a boundary, a sample of the rest.
                let near = |x: u64| x % 64 <= 1 || x % 64 >= 63 || x == n;
                if !(near(a) || near(b)) && (a + b) % 13 != 0 {
                    continue;
                }
                let mut src = Counting {
                    inner: Cursor::new(&obj),
                    read: 0,
                };
                let got = env.open_range(b"r", &mut src, a..b).unwrap();
                assert_eq!(got, &pt[a as usize..b as usize], "{a}..{b}");
                let covering = if a == b { 0 } else { (b - 1) / 64 - a / 64 + 1 };
                assert!(
                    src.read <= info.header_len as u64 + covering * (64 + tags),
                    "{a}..{b} read {}",
                    src.read
                );
            }
        }
        // Out of range and reversed ranges are caller errors.
        let e = env
            .open_range(b"r", Cursor::new(&obj), 0..n + 1)
            .unwrap_err();
        assert!(matches!(inner_error(&e), Error::InvalidInput(_)));
        #[allow(clippy::reversed_empty_ranges)]
        let e = env.open_range(b"r", Cursor::new(&obj), 5..4).unwrap_err();
        assert!(matches!(inner_error(&e), Error::InvalidInput(_)));
        // Wrong context: the header check fails before any chunk is read.
        let e = env.open_range(b"x", Cursor::new(&obj), 0..1).unwrap_err();
        assert!(matches!(inner_error(&e), Error::Decryption));
        // An object that does not start at offset 0 of the source.
        let mut shifted = b"prefix".to_vec();
        shifted.extend_from_slice(&obj);
        let mut c = Cursor::new(&shifted);
        c.seek(SeekFrom::Start(6)).unwrap();
        assert_eq!(env.open_range(b"r", c, 60..130).unwrap(), &pt[60..130]);
    }
}

#[test]
fn inspection_without_keys() {
    let k1 = key("tenant-7", "account-key-3", 3, 1);
    let k2 = key("tenant-7", "infra-ak", 12, 2);
    let obj = Envelope::new(&k1)
        .with_layer2(&k2)
        .unwrap()
        .seal(b"", b"x")
        .unwrap();
    let info = byok::envelope::inspect(&obj).unwrap();
    assert_eq!(info.format_version, 1);
    assert_eq!(info.account_id, "tenant-7");
    assert_eq!(info.account_key.id, "account-key-3");
    assert_eq!(info.account_key.version, 3);
    let l2 = info.layer2_key.clone().unwrap();
    assert_eq!((l2.id.as_str(), l2.version), ("infra-ak", 12));
    assert_eq!(info.chunk_size, 65536);
    assert_eq!(
        byok::envelope::inspect(&obj[..info.header_len]).unwrap(),
        info
    );
    assert_eq!(
        byok::envelope::inspect_reader(Cursor::new(&obj)).unwrap(),
        info
    );

    let fmt = |r: Result<byok::envelope::HeaderInfo, Error>| match r {
        Err(Error::Format(f)) => f,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        fmt(byok::envelope::inspect(b"GIF89a...")),
        FormatError::BadMagic
    );
    assert_eq!(
        fmt(byok::envelope::inspect(&obj[..info.header_len - 1])),
        FormatError::Truncated
    );
    let mut v2 = obj.clone();
    v2[4] = 2;
    assert_eq!(
        fmt(byok::envelope::inspect(&v2)),
        FormatError::UnknownVersion(2)
    );
    let e = byok::envelope::inspect_reader(Cursor::new(&v2)).unwrap_err();
    assert!(matches!(
        inner_error(&e),
        Error::Format(FormatError::UnknownVersion(2))
    ));
    let mut huge = obj.clone();
    huge[8] = 0xFF;
    assert!(matches!(
        fmt(byok::envelope::inspect(&huge)),
        FormatError::HeaderTooLong(_)
    ));
    let e = byok::envelope::inspect_reader(Cursor::new(&obj[..20])).unwrap_err();
    assert!(matches!(
        inner_error(&e),
        Error::Format(FormatError::Truncated)
    ));
    assert_eq!(Error::Format(FormatError::BadMagic).http_status(), 500);
    // Opening never says which check failed.
    let env = Envelope::new(&k1).with_layer2(&k2).unwrap();
    assert!(matches!(env.open(b"", &v2), Err(Error::Decryption)));
}

#[test]
fn configuration_errors() {
    let a = key("a", "ak", 1, 1);
    let b = key("b", "ak", 1, 2);
    assert!(matches!(
        Envelope::new(&a).with_layer2(&b),
        Err(Error::InvalidInput(_))
    ));
    for bad in [0, 1, 32, 100, 1 << 25] {
        assert!(
            matches!(
                Envelope::new(&a).with_chunk_size(bad),
                Err(Error::InvalidInput(_))
            ),
            "{bad}"
        );
    }
    assert!(Envelope::new(&a).with_chunk_size(1 << 24).is_ok());
    assert!(matches!(
        AccountKey::new("", 1, AesKey::generate()),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        AccountKey::new("x".repeat(256), 1, AesKey::generate()),
        Err(Error::InvalidInput(_))
    ));
    let ak = AccountKey::new("ak", 1, AesKey::generate()).unwrap();
    assert!(matches!(
        PreparedKey::new("", &ak),
        Err(Error::InvalidInput(_))
    ));
    assert!(matches!(
        PreparedKey::new(&"y".repeat(256), &ak),
        Err(Error::InvalidInput(_))
    ));
    // Maximal identifiers still give a header within the limit.
    // (Two layers need two keys: another id of the same length.)
    let long = |name: &str, b| {
        let ak = AccountKey::new(name.repeat(255), u32::MAX, AesKey::from_bytes([b; 32])).unwrap();
        PreparedKey::new(&"a".repeat(255), &ak).unwrap()
    };
    let (l1, l2) = (long("k", 1), long("j", 2));
    let env = Envelope::new(&l1).with_layer2(&l2).unwrap();
    let obj = env.seal(b"", b"max").unwrap();
    assert!(byok::envelope::inspect(&obj).unwrap().header_len <= byok::envelope::MAX_HEADER_LEN);
    assert_eq!(env.open(b"", &obj).unwrap(), b"max");
    // Debug output never shows key material.
    let shown = format!("{ak:?} {l1:?} {env:?}");
    assert!(
        shown.contains("AccountKey") && !shown.contains("key: "),
        "{shown}"
    );
}

#[test]
fn sealed_fields_bind_account_field_and_version() {
    let k = key("tenant-a", "ak", 5, 1);
    let s = k
        .seal_field(b"policy/contentKey", b"{\"keys\":[1,2]}")
        .unwrap();
    assert_eq!(
        k.open_field(b"policy/contentKey", &s).unwrap(),
        b"{\"keys\":[1,2]}"
    );
    assert_eq!(byok::envelope::field_key_version(&s).unwrap(), 5);
    assert_ne!(
        s,
        k.seal_field(b"policy/contentKey", b"{\"keys\":[1,2]}")
            .unwrap()
    );
    let dec = |r: Result<Vec<u8>, Error>| assert!(matches!(r, Err(Error::Decryption)));
    dec(k.open_field(b"policy/other", &s));
    dec(k.open_field(b"", &s));
    // Same key bytes, another account; same account, another version.
    dec(key("tenant-b", "ak", 5, 1).open_field(b"policy/contentKey", &s));
    dec(key("tenant-a", "ak", 6, 1).open_field(b"policy/contentKey", &s));
    dec(key("tenant-a", "ak", 5, 9).open_field(b"policy/contentKey", &s));
    for i in 0..s.len() * 8 {
        let mut t = s.clone();
        t[i / 8] ^= 1 << (i % 8);
        dec(k.open_field(b"policy/contentKey", &t));
    }
    for n in 0..s.len() {
        dec(k.open_field(b"policy/contentKey", &s[..n]));
    }
    let empty = k.seal_field(b"f", b"").unwrap();
    assert_eq!(k.open_field(b"f", &empty).unwrap(), b"");
    assert!(matches!(
        k.seal_field(b"f", &vec![0; byok::envelope::MAX_FIELD_LEN + 1]),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn prepared_keys_can_be_shared_across_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<PreparedKey>();
    send_sync::<Envelope<'static>>();
    send_sync::<byok::envelope::SealWriter<Vec<u8>>>();
    send_sync::<byok::envelope::OpenReader<&'static [u8]>>();
    let k = std::sync::Arc::new(key("t", "ak", 1, 1));
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let k = k.clone();
            std::thread::spawn(move || {
                let env = Envelope::new(&k);
                let obj = env.seal(b"x", &data(i * 1000)).unwrap();
                env.open(b"x", &obj).unwrap() == data(i * 1000)
            })
        })
        .collect();
    assert!(handles.into_iter().all(|h| h.join().unwrap()));
}
