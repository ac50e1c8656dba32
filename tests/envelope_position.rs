//! Every reading API starts at the position it is given and stays inside the object: objects
//! after a prefix, between other objects, on sources that refuse to seek; tampering at each
//! chunk releases only authenticated bytes; the two-phase open; errors out of streams.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{self, Cursor, Read, Seek, SeekFrom};

use byok::envelope::{AccountKey, Bounded, FormatError, OpenHeader, PreparedKey};
use byok::{AesKey, Envelope, Error, Policy};
use common::{World, class};

const CHUNK: usize = 64;

fn key(id: &str, version: u32, byte: u8) -> PreparedKey {
    let ak = AccountKey::new(id, version, AesKey::from_bytes([byte; 32])).unwrap();
    PreparedKey::new("tenant-a", &ak).unwrap()
}

fn data(n: usize, salt: u8) -> Vec<u8> {
    (0..n).map(|i| (i * 31 + 7) as u8 ^ salt).collect()
}

/// A reader over bytes that fails every seek (a request body, a pipe).
struct NoSeek<'a>(&'a [u8]);

impl Read for NoSeek<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf)
    }
}

impl Seek for NoSeek<'_> {
    fn seek(&mut self, _: SeekFrom) -> io::Result<u64> {
        Err(io::Error::new(io::ErrorKind::Unsupported, "cannot seek"))
    }
}

/// `prefix || A || B || C` with B (the object under test, `b_pt`) at a non-zero offset between
/// two other objects of the same keys and context.
struct Layout {
    file: Vec<u8>,
    b_at: usize,
    b_len: usize,
    b_pt: Vec<u8>,
}

fn layout(env: &Envelope<'_>, b_size: usize) -> Layout {
    let a_pt = data(700, 0xA5);
    let b_pt = data(b_size, 0x3C);
    let c_pt = data(300, 0x0F);
    let mut file = vec![0xEE; 16];
    file.extend(env.seal(b"ctx", &a_pt).unwrap());
    let b_at = file.len();
    let b = env.seal(b"ctx", &b_pt).unwrap();
    file.extend_from_slice(&b);
    file.extend(env.seal(b"ctx", &c_pt).unwrap());
    Layout {
        file,
        b_at,
        b_len: b.len(),
        b_pt,
    }
}

fn envelopes<'k>(k1: &'k PreparedKey, k2: &'k PreparedKey) -> [Envelope<'k>; 2] {
    let single = Envelope::new(k1).with_chunk_size(CHUNK).unwrap();
    [single, single.with_layer2(k2).unwrap()]
}

/// Reads until the end or the first error; the bytes released and the error.
fn drain<R: Read>(mut r: R) -> (Vec<u8>, Option<Error>) {
    let mut out = Vec::new();
    let mut buf = [0u8; 37];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return (out, None),
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => return (out, Some(Error::from_io(e))),
        }
    }
}

#[test]
fn streaming_readers_start_where_they_are_given_and_stay_in_the_object() {
    let (k1, k2) = (key("ak", 1, 1), key("ik", 1, 2));
    for env in envelopes(&k1, &k2) {
        for size in [0, 1, CHUNK, 3 * CHUNK, 3 * CHUNK + 5] {
            let l = layout(&env, size);
            let object = &l.file[l.b_at..l.b_at + l.b_len];

            // Between two objects, bounded by its length: a seekable and a non-seekable source.
            let mut cur = Cursor::new(&l.file);
            cur.set_position(l.b_at as u64);
            let r = env
                .open_reader(b"ctx", (&mut cur).take(l.b_len as u64))
                .unwrap();
            assert_eq!(drain(r).0, l.b_pt, "size {size}");
            assert_eq!(
                cur.position(),
                (l.b_at + l.b_len) as u64,
                "read past the object"
            );

            let (got, err) = drain(
                env.open_reader(b"ctx", NoSeek(&l.file[l.b_at..]).take(l.b_len as u64))
                    .unwrap(),
            );
            assert!(err.is_none());
            assert_eq!(got, l.b_pt);

            // After a 16-byte prefix and another object, nothing after it: no bound needed.
            let mut tail = l.file[..l.b_at].to_vec();
            tail.extend_from_slice(object);
            let mut cur = Cursor::new(&tail);
            cur.set_position(l.b_at as u64);
            let (got, err) = drain(env.open_reader(b"ctx", cur).unwrap());
            assert!(err.is_none());
            assert_eq!(got, l.b_pt);

            // Two-phase: the header is read once and exactly.
            let mut cur = Cursor::new(&l.file);
            cur.set_position(l.b_at as u64);
            let h = OpenHeader::read(&mut cur).unwrap();
            let hlen = h.header_bytes().len();
            assert_eq!(h.info().account_id, "tenant-a");
            let cur = h.into_inner();
            assert_eq!(cur.position(), (l.b_at + hlen) as u64);
            let h = OpenHeader::read(Cursor::new(object)).unwrap();
            let (got, err) = drain(h.open(&env, b"ctx").unwrap());
            assert!(err.is_none());
            assert_eq!(got, l.b_pt);
        }
    }
}

#[test]
fn an_unbounded_reader_with_more_after_the_object_never_releases_foreign_bytes() {
    let (k1, k2) = (key("ak", 1, 1), key("ik", 1, 2));
    for env in envelopes(&k1, &k2) {
        let l = layout(&env, 3 * CHUNK + 5);
        let mut cur = Cursor::new(&l.file);
        cur.set_position(l.b_at as u64);
        let (got, err) = drain(env.open_reader(b"ctx", cur).unwrap());
        assert!(matches!(err, Some(Error::Decryption)), "{err:?}");
        assert!(l.b_pt.starts_with(&got));
    }
}

#[test]
fn ranged_reads_start_where_they_are_given_and_stay_in_the_object() {
    let (k1, k2) = (key("ak", 1, 1), key("ik", 1, 2));
    for env in envelopes(&k1, &k2) {
        let size = 5 * CHUNK + 9;
        let l = layout(&env, size);
        let mut cur = Cursor::new(&l.file);
        cur.set_position(l.b_at as u64);
        let mut view = Bounded::new(cur, l.b_len as u64).unwrap();
        for (a, b) in [
            (0, 1),
            (0, size),
            (CHUNK - 1, CHUNK + 1),
            (size - 3, size),
            (7, 7),
        ] {
            view.seek(SeekFrom::Start(0)).unwrap();
            let got = env
                .open_range(b"ctx", &mut view, a as u64..b as u64)
                .unwrap();
            assert_eq!(got, &l.b_pt[a..b], "{a}..{b}");
        }
        view.seek(SeekFrom::Start(0)).unwrap();
        let e = env
            .open_range(b"ctx", &mut view, 0..size as u64 + 1)
            .unwrap_err();
        assert!(matches!(Error::from_io(e), Error::InvalidInput(_)));

        // Object after a prefix and another object, to the end of the input.
        let tail = l.file[..l.b_at + l.b_len].to_vec();
        let mut cur = Cursor::new(&tail);
        cur.set_position(l.b_at as u64);
        let got = env.open_range(b"ctx", &mut cur, 3..size as u64).unwrap();
        assert_eq!(got, &l.b_pt[3..]);

        // Unbounded with an object after it: only authenticated bytes of B, or an error.
        for (a, b) in [(0, 10), (size - 3, size)] {
            let mut cur = Cursor::new(&l.file);
            cur.set_position(l.b_at as u64);
            match env.open_range(b"ctx", &mut cur, a as u64..b as u64) {
                Ok(got) => assert_eq!(got, &l.b_pt[a..b]),
                Err(e) => assert!(matches!(Error::from_io(e), Error::Decryption)),
            }
        }
    }
}

#[test]
fn tampering_at_each_chunk_releases_only_authenticated_bytes() {
    let (k1, k2) = (key("ak", 1, 1), key("ik", 1, 2));
    for env in envelopes(&k1, &k2) {
        let size = 4 * CHUNK + 11;
        let l = layout(&env, size);
        let hlen = OpenHeader::read(&l.file[l.b_at..])
            .unwrap()
            .header_bytes()
            .len();
        let tags = (l.b_len - hlen - size) / 5;
        let stride = CHUNK + tags;
        for chunk in 0..5 {
            for at in [0, stride / 2, stride - 1] {
                let off = l.b_at + hlen + chunk * stride + at;
                if off >= l.b_at + l.b_len {
                    continue;
                }
                let mut file = l.file.clone();
                file[off] ^= 0x40;
                let obj = &file[l.b_at..l.b_at + l.b_len];
                let (got, err) = drain(env.open_reader(b"ctx", obj).unwrap());
                assert!(matches!(err, Some(Error::Decryption)), "{err:?}");
                assert_eq!(got, &l.b_pt[..chunk * CHUNK], "chunk {chunk}");

                let mut view = Bounded::new(Cursor::new(obj), obj.len() as u64).unwrap();
                let lo = (chunk * CHUNK) as u64;
                let e = env.open_range(b"ctx", &mut view, lo..lo + 1).unwrap_err();
                assert!(matches!(Error::from_io(e), Error::Decryption));
                let other = ((chunk + 1) % 5 * CHUNK) as u64;
                view.seek(SeekFrom::Start(0)).unwrap();
                let got = env.open_range(b"ctx", &mut view, other..other + 1).unwrap();
                assert_eq!(got, &l.b_pt[other as usize..other as usize + 1]);
            }
        }
    }
}

#[test]
fn bounded_views_seek_relative_to_their_start() {
    let bytes: Vec<u8> = (0..100).collect();
    let mut cur = Cursor::new(&bytes);
    cur.set_position(10);
    let mut v = Bounded::new(cur, 20).unwrap();
    let mut all = Vec::new();
    v.read_to_end(&mut all).unwrap();
    assert_eq!(all, &bytes[10..30]);
    assert_eq!(v.seek(SeekFrom::End(-5)).unwrap(), 15);
    let mut b = [0u8; 10];
    assert_eq!(v.read(&mut b).unwrap(), 5);
    assert_eq!(&b[..5], &bytes[25..30]);
    assert!(v.seek(SeekFrom::Current(-100)).is_err());
}

#[test]
fn header_errors_are_typed_before_keys_and_opaque_after() {
    let k = key("ak", 1, 1);
    let env = Envelope::new(&k);
    let obj = env.seal(b"ctx", b"hello").unwrap();
    assert!(matches!(
        OpenHeader::read(&obj[..20]),
        Err(Error::Format(FormatError::Truncated))
    ));
    assert!(matches!(
        OpenHeader::read(&b"NOPE, not an object"[..]),
        Err(Error::Format(FormatError::BadMagic))
    ));
    let h = OpenHeader::read(obj.as_slice()).unwrap();
    assert!(matches!(h.open(&env, b"other"), Err(Error::Decryption)));

    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::ConnectionReset, "gone"))
        }
    }
    let e = OpenHeader::read(Broken).unwrap_err();
    assert!(matches!(&e, Error::Io(io) if io.kind() == io::ErrorKind::ConnectionReset));
    assert_eq!(e.http_status(), 500);
    let e = env.open_reader(b"ctx", Broken).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::ConnectionReset);
    assert!(matches!(Error::from_io(e), Error::Io(_)));
}

#[test]
fn stream_errors_convert_back_without_downcasting() {
    let k = key("ak", 1, 1);
    let env = Envelope::new(&k);
    let mut obj = env.seal(b"ctx", b"hello").unwrap();
    let n = obj.len();
    obj[n - 1] ^= 1;
    let mut r = env.open_reader(b"ctx", obj.as_slice()).unwrap();
    let e = r.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    assert!(matches!(Error::from_io(e), Error::Decryption));
    let plain = io::Error::new(io::ErrorKind::BrokenPipe, "pipe");
    let e: Error = plain.into();
    assert!(matches!(&e, Error::Io(io) if io.kind() == io::ErrorKind::BrokenPipe));
    assert!(std::error::Error::source(&e).is_some());
}

#[test]
fn layer2_refuses_the_layer1_key() {
    let k1 = key("ak", 1, 1);
    let same_id = key("ak", 1, 9);
    let same_material = key("other-name", 7, 1);
    let k2 = key("ik", 1, 2);
    let env = Envelope::new(&k1);
    for bad in [&k1, &same_id, &same_material] {
        assert!(matches!(env.with_layer2(bad), Err(Error::InvalidInput(_))));
    }
    assert!(env.with_layer2(&k2).is_ok());
}

#[tokio::test]
async fn decrypt_reader_starts_at_the_given_position_on_any_reader() {
    let w = World::new().await;
    let id = w.platform_account("pos", Policy::video_analyzer()).await;
    let blob = class("blob");
    let a_pt = data(200_000, 1);
    let b_pt = data(150_000, 2);
    let a = w.manager.encrypt(&id, &blob, b"o", &a_pt).await.unwrap();
    let b = w.manager.encrypt(&id, &blob, b"o", &b_pt).await.unwrap();
    let mut file = vec![0u8; 16];
    file.extend_from_slice(&a);
    let b_at = file.len();
    file.extend_from_slice(&b);
    file.extend_from_slice(&a);

    // After a 16-byte prefix: the object alone, seekable.
    let mut prefixed = vec![0u8; 16];
    prefixed.extend_from_slice(&b);
    let mut cur = Cursor::new(&prefixed);
    cur.set_position(16);
    let r = w.manager.decrypt_reader(&id, b"o", cur).await.unwrap();
    assert_eq!(drain(r).0, b_pt);

    // Back to back, positioned at the second object: its plaintext, never the first's.
    let mut cur = Cursor::new(&file[..b_at + b.len()]);
    cur.set_position(b_at as u64);
    let (got, err) = drain(w.manager.decrypt_reader(&id, b"o", cur).await.unwrap());
    assert!(err.is_none());
    assert_eq!(got, b_pt);
    assert_ne!(&got[..100], &a_pt[..100]);

    // Between two objects, bounded; a source that refuses to seek.
    let src = NoSeek(&file[b_at..]).take(b.len() as u64);
    let (got, err) = drain(w.manager.decrypt_reader(&id, b"o", src).await.unwrap());
    assert!(err.is_none());
    assert_eq!(got, b_pt);

    // Tampering in the second chunk: only the first chunk (authenticated) comes out.
    let mut bad = b.clone();
    let hlen = OpenHeader::read(b.as_slice()).unwrap().header_bytes().len();
    let tags = if byok::envelope::inspect(&b).unwrap().layer2_key.is_some() {
        32
    } else {
        16
    };
    bad[hlen + 65536 + tags + 100] ^= 1;
    let (got, err) = drain(
        w.manager
            .decrypt_reader(&id, b"o", NoSeek(&bad))
            .await
            .unwrap(),
    );
    assert!(matches!(err, Some(Error::Decryption)));
    assert_eq!(got, &b_pt[..65536]);
}

#[test]
fn the_opener_seeks_by_chunk_on_seekable_sources() {
    let (k1, k2) = (key("ak", 1, 1), key("ik", 1, 2));
    for env in envelopes(&k1, &k2) {
        for size in [0, 1, CHUNK, 5 * CHUNK, 5 * CHUNK + 9] {
            let l = layout(&env, size);
            let mut cur = Cursor::new(&l.file);
            cur.set_position(l.b_at as u64);
            let view = Bounded::new(cur, l.b_len as u64).unwrap();
            let mut r = env.open_reader(b"ctx", view).unwrap();
            assert_eq!(r.plaintext_len().unwrap(), size as u64);
            let mut targets = vec![0, size / 2, size, size.saturating_sub(1), 3, CHUNK + 1];
            targets.retain(|&t| t <= size);
            for t in targets {
                assert_eq!(r.seek(SeekFrom::Start(t as u64)).unwrap(), t as u64);
                let mut rest = Vec::new();
                r.read_to_end(&mut rest).unwrap();
                assert_eq!(rest, &l.b_pt[t..], "size {size} from {t}");
            }
            assert_eq!(r.seek(SeekFrom::End(0)).unwrap(), size as u64);
            if size > 2 {
                r.seek(SeekFrom::End(-2)).unwrap();
                assert_eq!(r.seek(SeekFrom::Current(1)).unwrap(), size as u64 - 1);
                let mut one = Vec::new();
                r.read_to_end(&mut one).unwrap();
                assert_eq!(one, &l.b_pt[size - 1..]);
            }
            let e = r.seek(SeekFrom::Start(size as u64 + 1)).unwrap_err();
            assert!(matches!(Error::from_io(e), Error::InvalidInput(_)));
        }
    }
}

#[test]
fn a_seek_authenticates_the_chunk_it_lands_in() {
    let k = key("ak", 1, 1);
    let env = Envelope::new(&k).with_chunk_size(CHUNK).unwrap();
    let pt = data(4 * CHUNK, 7);
    let mut obj = env.seal(b"ctx", &pt).unwrap();
    let hlen = obj.len() - (pt.len() + 4 * 16);
    obj[hlen + 2 * (CHUNK + 16) + 5] ^= 1;
    // Half-way through a sequential read, then a jump past the damage and back into it.
    let mut r = env.open_reader(b"ctx", Cursor::new(&obj)).unwrap();
    let mut first = vec![0u8; 10];
    r.read_exact(&mut first).unwrap();
    r.seek(SeekFrom::Start(3 * CHUNK as u64)).unwrap();
    let mut last = Vec::new();
    r.read_to_end(&mut last).unwrap();
    assert_eq!(last, &pt[3 * CHUNK..]);
    let e = r.seek(SeekFrom::Start(2 * CHUNK as u64 + 1)).unwrap_err();
    assert!(matches!(Error::from_io(e), Error::Decryption));
    assert!(r.read(&mut [0u8; 4]).is_err());
}

#[tokio::test]
async fn ranged_reads_through_the_account_manager_stream_only_the_range() {
    let w = World::new().await;
    let id = w.platform_account("range", Policy::video_analyzer()).await;
    let pt = data(300_000, 5);
    let obj = w
        .manager
        .encrypt(&id, &class("blob"), b"o", &pt)
        .await
        .unwrap();
    let mut file = vec![1u8; 16];
    file.extend_from_slice(&obj);
    let after = file.len();
    file.extend_from_slice(&obj);
    for (a, b) in [
        (0, 1),
        (65_530, 65_550),
        (299_000, 300_000),
        (10, 10),
        (0, 300_000),
    ] {
        let mut cur = Cursor::new(&file);
        cur.set_position(16);
        let view = Bounded::new(cur, (after - 16) as u64).unwrap();
        let mut r = w
            .manager
            .decrypt_range(&id, b"o", view, a as u64..b as u64)
            .await
            .unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).unwrap();
        assert_eq!(got, &pt[a..b], "{a}..{b}");
    }
    let mut cur = Cursor::new(&file[..after]);
    cur.set_position(16);
    assert!(matches!(
        w.manager.decrypt_range(&id, b"o", cur, 0..300_001).await,
        Err(Error::InvalidInput(_))
    ));
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: std::rc::Rc<std::cell::Cell<u64>>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read.set(self.read.get() + n as u64);
        Ok(n)
    }
}

impl<R: Seek> Seek for Counting<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.inner.seek(to)
    }
}

#[test]
fn inspection_and_seeking_read_only_what_they_need() {
    let k = key("ak", 1, 1);
    let env = Envelope::new(&k).with_chunk_size(CHUNK).unwrap();
    let l = layout(&env, 20 * CHUNK);
    let read = std::rc::Rc::new(std::cell::Cell::new(0));
    let mut cur = Cursor::new(&l.file);
    cur.set_position(l.b_at as u64);
    let info = byok::envelope::inspect_reader(Counting {
        inner: &mut cur,
        read: read.clone(),
    })
    .unwrap();
    assert_eq!(read.get(), info.header_len as u64);
    assert_eq!(cur.position(), (l.b_at + info.header_len) as u64);

    // A seek to chunk 17 reads the header and that chunk only.
    read.set(0);
    let mut cur = Cursor::new(&l.file);
    cur.set_position(l.b_at as u64);
    let view = Bounded::new(cur, l.b_len as u64).unwrap();
    let mut r = env
        .open_reader(
            b"ctx",
            Counting {
                inner: view,
                read: read.clone(),
            },
        )
        .unwrap();
    r.seek(SeekFrom::Start(17 * CHUNK as u64 + 3)).unwrap();
    let mut b = [0u8; 10];
    r.read_exact(&mut b).unwrap();
    assert_eq!(b, l.b_pt[17 * CHUNK + 3..17 * CHUNK + 13]);
    assert_eq!(read.get(), (info.header_len + CHUNK + 16) as u64);
}
