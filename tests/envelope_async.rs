//! The async adapters (feature `tokio`): the same bytes as the synchronous path, backpressure
//! through a small `tokio::io::duplex`, only authenticated bytes released, and the account
//! manager's async entry points — all on a current-thread runtime.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use byok::envelope::{AccountKey, PreparedKey};
use byok::{AesKey, Envelope, Error, Policy};
use common::{World, class};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

fn key(id: &str, byte: u8) -> PreparedKey {
    let ak = AccountKey::new(id, 1, AesKey::from_bytes([byte; 32])).unwrap();
    PreparedKey::new("tenant-a", &ak).unwrap()
}

fn data(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 131 + 3) as u8).collect()
}

/// An `AsyncWrite` into a `Vec` that returns `Pending` on every other call and accepts at
/// most 7 bytes at a time.
#[derive(Default)]
struct Stingy {
    out: Vec<u8>,
    tick: bool,
    pendings: usize,
}

impl AsyncWrite for Stingy {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.tick = !self.tick;
        if self.tick {
            self.pendings += 1;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = buf.len().min(7);
        self.out.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// An `AsyncRead` over bytes handing out at most 5 bytes per call, `Pending` every other call.
struct Trickle<'a> {
    rest: &'a [u8],
    tick: bool,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.tick = !self.tick;
        if self.tick {
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        let n = self.rest.len().min(5).min(buf.remaining());
        buf.put_slice(&self.rest[..n]);
        self.rest = &self.rest[n..];
        Poll::Ready(Ok(()))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn async_and_sync_paths_agree_both_ways() {
    let (k1, k2) = (key("ak", 1), key("ik", 2));
    let single = Envelope::new(&k1).with_chunk_size(64).unwrap();
    for env in [single, single.with_layer2(&k2).unwrap()] {
        for size in [0, 1, 63, 64, 65, 200, 64 * 5] {
            let pt = data(size);
            // Async seal through a writer that pushes back; sync open.
            let mut w = env.seal_async_writer(b"ctx", Stingy::default()).unwrap();
            for piece in pt.chunks(13) {
                w.write_all(piece).await.unwrap();
            }
            w.shutdown().await.unwrap();
            let sink = w.into_inner();
            assert!(sink.pendings > 0);
            let obj = sink.out;
            assert_eq!(env.open(b"ctx", &obj).unwrap(), pt, "size {size}");

            // Sync seal; async open through a trickling reader.
            let mut sw = env.seal_writer(b"ctx", Vec::new()).unwrap();
            sw.write_all(&pt).unwrap();
            let obj = sw.finish().unwrap();
            let r = env
                .open_async_reader(
                    b"ctx",
                    Trickle {
                        rest: &obj,
                        tick: false,
                    },
                )
                .await
                .unwrap();
            let mut got = Vec::new();
            Box::pin(r).read_to_end(&mut got).await.unwrap();
            assert_eq!(got, pt);
            let mut sync_got = Vec::new();
            env.open_reader(b"ctx", obj.as_slice())
                .unwrap()
                .read_to_end(&mut sync_got)
                .unwrap();
            assert_eq!(sync_got, got);
        }
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_small_duplex_carries_a_large_object_with_backpressure() {
    let k = key("ak", 1);
    let env = Envelope::new(&k);
    let pt = data(3 * 65536 + 1234);
    // 1 KiB of pipe for a 64 KiB-chunk object: the writer must wait for the reader.
    let (a, b) = tokio::io::duplex(1024);
    let writer = async {
        let mut w = env.seal_async_writer(b"ctx", a).unwrap();
        w.write_all(&pt).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let reader = async {
        let mut r = env.open_async_reader(b"ctx", b).await.unwrap();
        let mut got = Vec::new();
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::join!(writer, reader);
    assert_eq!(got, pt);
}

#[tokio::test(flavor = "current_thread")]
async fn async_opening_releases_only_authenticated_chunks() {
    let k = key("ak", 1);
    let env = Envelope::new(&k).with_chunk_size(64).unwrap();
    let pt = data(64 * 4 + 10);
    let obj = env.seal(b"ctx", &pt).unwrap();
    let hlen = obj.len() - (pt.len() + 5 * 16);
    for chunk in 0..5 {
        let mut bad = obj.clone();
        bad[hlen + chunk * 80 + 3] ^= 0x10;
        let mut r = env.open_async_reader(b"ctx", bad.as_slice()).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 17];
        let err = loop {
            match r.read(&mut buf).await {
                Ok(0) => panic!("tampering at chunk {chunk} undetected"),
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) => break Error::from_io(e),
            }
        };
        assert!(matches!(err, Error::Decryption));
        assert_eq!(got, &pt[..chunk * 64]);
    }
    // Truncated at a chunk boundary.
    let cut = &obj[..hlen + 2 * 80];
    let mut r = env.open_async_reader(b"ctx", cut).await.unwrap();
    let e = r.read_to_end(&mut Vec::new()).await.unwrap_err();
    assert!(matches!(Error::from_io(e), Error::Decryption));
}

#[tokio::test(flavor = "current_thread")]
async fn account_manager_streams_async_without_blocking() {
    let w = World::new().await;
    let id = w.platform_account("async", Policy::video_analyzer()).await;
    let blob = class("blob");
    let pt = data(300_000);
    let (a, b) = tokio::io::duplex(4096);
    let writer = async {
        let mut s = w
            .manager
            .encrypt_async_writer(&id, &blob, b"o", a)
            .await
            .unwrap();
        s.write_all(&pt).await.unwrap();
        s.shutdown().await.unwrap();
    };
    let reader = async {
        let mut stored = Vec::new();
        let mut b = b;
        b.read_to_end(&mut stored).await.unwrap();
        stored
    };
    let ((), stored) = tokio::join!(writer, reader);
    assert_eq!(w.manager.decrypt(&id, b"o", &stored).await.unwrap(), pt);

    // After a prefix, bounded, from an async source.
    let mut file = vec![9u8; 16];
    file.extend_from_slice(&stored);
    file.extend_from_slice(&stored);
    let src = AsyncReadExt::take(&file[16..], stored.len() as u64);
    let mut r = w
        .manager
        .decrypt_async_reader(&id, b"o", src)
        .await
        .unwrap();
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, pt);
    assert!(matches!(
        w.manager
            .decrypt_async_reader(&id, b"other", &stored[..])
            .await,
        Err(Error::Decryption)
    ));
}

/// An `AsyncWrite` that is never ready.
struct Stalled;

impl AsyncWrite for Stalled {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Poll::Pending
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Pending
    }
}

#[test]
fn the_sealer_is_pending_while_its_inner_writer_is() {
    let k = key("ak", 1);
    let env = Envelope::new(&k).with_chunk_size(64).unwrap();
    let mut w = env.seal_async_writer(b"ctx", Stalled).unwrap();
    let mut cx = Context::from_waker(std::task::Waker::noop());
    // The header cannot go out: nothing is accepted, however much is offered.
    for _ in 0..3 {
        assert!(
            Pin::new(&mut w)
                .poll_write(&mut cx, &[0u8; 1000])
                .is_pending()
        );
    }
    assert!(Pin::new(&mut w).poll_flush(&mut cx).is_pending());
    assert!(Pin::new(&mut w).poll_shutdown(&mut cx).is_pending());
}
