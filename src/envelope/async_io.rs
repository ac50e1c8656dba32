//! Async adapters (feature `tokio`): the streaming sealer as a [`tokio::io::AsyncWrite`] and
//! the streaming opener as a [`tokio::io::AsyncRead`], byte for byte the format of
//! [`SealWriter`](super::SealWriter) and [`OpenReader`](super::OpenReader).
//!
//! Both are plain state machines over the caller's stream: no task, no runtime, no blocking.
//! Sealing or opening a chunk (64 KiB by default) is CPU work of tens of microseconds, done
//! inline in the poll that completes the chunk. Backpressure passes through: while the inner
//! writer returns `Pending`, so does the sealer (it holds at most one sealed chunk).

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::stream::{LayerCiphers, grow, io_err};
use super::{Envelope, OpenHeader, format};
use crate::error::Error;

/// Async streaming sealer: everything written is encrypted chunk by chunk into the inner
/// [`AsyncWrite`]. The same bytes as [`SealWriter`](super::SealWriter).
///
/// Memory use is one chunk whatever the object's size. **Shut it down** at the end
/// (`tokio::io::AsyncWriteExt::shutdown`): that writes the final chunk, flushes and shuts the
/// inner writer down. An object whose sealer was dropped without shutdown lacks its final
/// chunk and never opens (truncation is detected). The header is written with the first
/// write (or at shutdown).
///
/// Errors are `io::Error`s; [`Error::from_io`] recovers the crate's error (e.g.
/// [`Error::KeyInaccessible`] once the account layer revoked the key — every chunk checks).
#[must_use = "an object whose sealer is dropped without `shutdown` lacks its final chunk and never opens"]
pub struct AsyncSealWriter<W> {
    inner: W,
    /// The header, followed by the chunk being filled or the sealed chunk being sent.
    buf: Vec<u8>,
    header_len: usize,
    /// Start of the bytes of `buf` still to send to the inner writer, if any.
    sending: Option<usize>,
    ciphers: LayerCiphers,
    chunk_size: usize,
    index: u64,
    finished: bool,
    failed: bool,
}

impl<W: AsyncWrite + Unpin> AsyncSealWriter<W> {
    pub(crate) fn start(
        inner: W,
        mut buf: Vec<u8>,
        ciphers: LayerCiphers,
        chunk_size: usize,
    ) -> Self {
        let header_len = buf.len();
        buf.reserve_exact(chunk_size + ciphers.view().overhead());
        Self {
            inner,
            buf,
            header_len,
            sending: Some(0),
            ciphers,
            chunk_size,
            index: 0,
            finished: false,
            failed: false,
        }
    }

    /// Sends what is pending; `Ready(Ok)` once nothing is.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while let Some(from) = self.sending {
            if from == self.buf.len() {
                self.buf.truncate(self.header_len);
                self.sending = None;
                break;
            }
            match ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[from..])) {
                Ok(0) => {
                    self.failed = true;
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                Ok(n) => self.sending = Some(from + n),
                Err(e) => {
                    self.failed = true;
                    return Poll::Ready(Err(e));
                }
            }
        }
        Poll::Ready(Ok(()))
    }

    /// Seals the chunk in the buffer and queues it for sending.
    fn seal(&mut self, last: bool) -> io::Result<()> {
        let index = u32::try_from(self.index).map_err(|_| {
            io_err(Error::InvalidInput(
                "object too large: more than 2^32 chunks".into(),
            ))
        })?;
        self.ciphers.check_live().map_err(io_err)?;
        let h = self.header_len;
        self.ciphers
            .view()
            .seal_chunk(index, last, &mut self.buf, h, h);
        self.sending = Some(h);
        self.index += 1;
        Ok(())
    }

    fn check(&self) -> io::Result<()> {
        if self.failed {
            Err(io::Error::other(
                "a previous write to the inner writer failed",
            ))
        } else if self.finished {
            Err(io::Error::other("the object was already finished"))
        } else {
            Ok(())
        }
    }

    /// The inner writer (after shutdown, the complete object was written to it).
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// A reference to the inner writer.
    pub fn get_ref(&self) -> &W {
        &self.inner
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for AsyncSealWriter<W> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.check()?;
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            ready!(this.poll_send(cx))?;
            let filled = this.buf.len() - this.header_len;
            // A full chunk is only sealed once more data arrives: it may be the last one.
            if filled == this.chunk_size {
                this.seal(false)?;
                continue;
            }
            let n = (this.chunk_size - filled).min(data.len());
            this.buf.extend_from_slice(&data[..n]);
            return Poll::Ready(Ok(n));
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed {
            this.check()?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.failed {
            this.check()?;
        }
        ready!(this.poll_send(cx))?;
        if !this.finished {
            this.seal(true)?;
            this.finished = true;
            ready!(this.poll_send(cx))?;
        }
        ready!(Pin::new(&mut this.inner).poll_flush(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

impl<W> core::fmt::Debug for AsyncSealWriter<W> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AsyncSealWriter")
            .field("chunk_size", &self.chunk_size)
            .field("chunks_sealed", &self.index)
            .finish_non_exhaustive()
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Reading a chunk's ciphertext (`filled` bytes so far).
    Filling,
    /// The chunk is full: one more byte tells whether it is the last.
    Peeking,
    /// Handing out an authenticated chunk's plaintext.
    Serving,
    Done,
    Failed,
}

/// Async streaming opener: reads an object from the inner [`AsyncRead`] and yields its
/// plaintext, with the guarantees of [`OpenReader`](super::OpenReader): a chunk's plaintext
/// only after it authenticated, the end only after the final chunk authenticated, memory
/// bounded by one chunk plus its tags (grown with the data actually read). The object extends
/// to the end of the inner reader (bound it with `tokio::io::AsyncReadExt::take` if more
/// follows). Failures are `io::Error`s; [`Error::from_io`] recovers the crate's error.
pub struct AsyncOpenReader<R> {
    inner: R,
    header: Vec<u8>,
    ciphers: LayerCiphers,
    chunk_size: usize,
    /// Ciphertext being read (`buf[..filled]`; the rest is zeroed room), then plaintext.
    buf: Vec<u8>,
    filled: usize,
    pos: usize,
    index: u64,
    carry: Option<u8>,
    state: State,
}

impl<R: AsyncRead + Unpin> AsyncOpenReader<R> {
    fn full(&self) -> usize {
        self.chunk_size + self.ciphers.view().overhead()
    }

    /// Drives the current chunk to its plaintext (`Serving`) or to the end.
    fn poll_chunk(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let full = self.full();
        if self.state == State::Filling {
            while self.filled < full {
                if self.filled == self.buf.len() {
                    grow(&mut self.buf, full);
                }
                let mut rb = ReadBuf::new(&mut self.buf[self.filled..]);
                ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
                let n = rb.filled().len();
                if n == 0 {
                    break;
                }
                self.filled += n;
            }
            self.state = State::Peeking;
        }
        let last = if self.filled < full {
            true
        } else {
            let mut one = [0u8; 1];
            let mut rb = ReadBuf::new(&mut one);
            ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
            if rb.filled().is_empty() {
                true
            } else {
                self.carry = Some(one[0]);
                false
            }
        };
        self.buf.truncate(self.filled);
        let index = u32::try_from(self.index).map_err(|_| io_err(Error::Decryption))?;
        self.ciphers.check_live().map_err(io_err)?;
        let overhead = self.ciphers.view().overhead();
        if last && index > 0 && self.buf.len() <= overhead {
            return Poll::Ready(Err(io_err(Error::Decryption)));
        }
        self.ciphers
            .view()
            .open_chunk(index, last, &self.header, &mut self.buf, 0)
            .map_err(io_err)?;
        self.index += 1;
        self.pos = 0;
        self.state = if last { State::Done } else { State::Serving };
        Poll::Ready(Ok(()))
    }

    /// Starts the next chunk (with the byte peeked after the previous one).
    fn next(&mut self) {
        self.buf.clear();
        self.filled = 0;
        self.pos = 0;
        if let Some(b) = self.carry.take() {
            self.buf.push(b);
            self.filled = 1;
        }
        self.state = State::Filling;
    }

    /// Returns the inner reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for AsyncOpenReader<R> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if matches!(this.state, State::Serving | State::Done) && this.pos < this.buf.len() {
                let n = (this.buf.len() - this.pos).min(out.remaining());
                out.put_slice(&this.buf[this.pos..this.pos + n]);
                this.pos += n;
                return Poll::Ready(Ok(()));
            }
            match this.state {
                State::Done => return Poll::Ready(Ok(())),
                State::Failed => return Poll::Ready(Err(io_err(Error::Decryption))),
                State::Serving => this.next(),
                State::Filling | State::Peeking => {
                    if let Err(e) = ready!(this.poll_chunk(cx)) {
                        this.state = State::Failed;
                        this.buf.clear();
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
    }
}

impl<R> core::fmt::Debug for AsyncOpenReader<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AsyncOpenReader")
            .field("chunk_size", &self.chunk_size)
            .field("chunks_read", &self.index)
            .finish_non_exhaustive()
    }
}

/// Reads into `buf` until it is full or the input ends; the number of bytes read.
async fn read_up_to<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<usize, Error> {
    let mut got = 0;
    while got < buf.len() {
        let n = poll_fn(|cx| {
            let mut rb = ReadBuf::new(&mut buf[got..]);
            Pin::new(&mut *r)
                .poll_read(cx, &mut rb)
                .map_ok(|()| rb.filled().len())
        })
        .await
        .map_err(Error::Io)?;
        if n == 0 {
            break;
        }
        got += n;
    }
    Ok(got)
}

impl<R: AsyncRead + Unpin> OpenHeader<R> {
    /// [`read`](Self::read) from an [`AsyncRead`] (feature `tokio`): exactly the header's
    /// bytes are consumed.
    ///
    /// # Errors
    /// As [`read`](Self::read).
    pub async fn read_async(mut inner: R) -> Result<Self, Error> {
        let mut fixed = [0u8; format::FIXED_LEN];
        let got = read_up_to(&mut inner, &mut fixed).await?;
        let fixed_info = format::parse_fixed(&fixed[..got])?;
        let mut header = Vec::with_capacity(fixed_info.header_len);
        header.extend_from_slice(&fixed);
        header.resize(fixed_info.header_len, 0);
        let rest = read_up_to(&mut inner, &mut header[format::FIXED_LEN..]).await?;
        Self::parsed(inner, header, format::FIXED_LEN + rest)
    }

    /// [`open`](Self::open) for an [`AsyncRead`] (feature `tokio`): the async opener of the
    /// body.
    ///
    /// # Errors
    /// As [`open`](Self::open).
    pub fn open_async(
        self,
        envelope: &Envelope<'_>,
        context: &[u8],
    ) -> Result<AsyncOpenReader<R>, Error> {
        let (inner, header, ciphers, chunk_size) = self.keyed(envelope, context)?;
        Ok(AsyncOpenReader {
            inner,
            header,
            ciphers,
            chunk_size,
            buf: Vec::new(),
            filled: 0,
            pos: 0,
            index: 0,
            carry: None,
            state: State::Filling,
        })
    }
}

impl Envelope<'_> {
    /// The async streaming sealer (feature `tokio`) of one object bound to `context`, into
    /// `inner`: the same bytes as [`seal_writer`](Self::seal_writer). Nothing is written
    /// before the first write; shut it down at the end.
    ///
    /// # Errors
    /// [`Error::KeyInaccessible`] / [`Error::AccountNotFound`] if the account layer revoked a
    /// key.
    pub fn seal_async_writer<W: AsyncWrite + Unpin>(
        &self,
        context: &[u8],
        inner: W,
    ) -> Result<AsyncSealWriter<W>, Error> {
        let (header, ciphers) = self.start_stream(context)?;
        Ok(AsyncSealWriter::start(
            inner,
            header,
            ciphers,
            self.chunk_size(),
        ))
    }

    /// The async streaming opener (feature `tokio`) of the object bound to `context` at the
    /// current position of `inner` (to its end): [`OpenHeader::read_async`] then
    /// [`OpenHeader::open_async`].
    ///
    /// # Errors
    /// [`Error::Io`] for an error of `inner`; [`Error::Decryption`] if the header is
    /// malformed or does not match the keys and context.
    pub async fn open_async_reader<R: AsyncRead + Unpin>(
        &self,
        context: &[u8],
        inner: R,
    ) -> Result<AsyncOpenReader<R>, Error> {
        OpenHeader::read_async(inner)
            .await
            .map_err(super::opaque_header_error)?
            .open_async(self, context)
    }
}
