//! Object encryption: the versioned envelope (format version 1).
//!
//! An object is `header || chunk 0 || chunk 1 || …`. The header names the account, the
//! account key (id and version) that wraps the object's fresh data key, and — for double
//! encryption — the second layer's key; it carries the wrapped data keys and their key
//! commitments. The body is the plaintext in fixed-size chunks, each sealed with AES-256-GCM
//! in the STREAM construction (see `stream.rs`) with the exact header bytes as associated
//! data; with a second layer each chunk's layer-1 ciphertext and tag are sealed again under
//! the layer-2 data key. `docs/FORMAT.md` specifies the format byte by byte.

#[cfg(feature = "tokio")]
mod async_io;
mod fields;
mod format;
#[cfg(fuzzing)]
pub(crate) mod fuzzing;
mod keys;
mod stream;
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::Range;

#[cfg(feature = "tokio")]
pub use async_io::{AsyncOpenReader, AsyncSealWriter};
pub use fields::{MAX_FIELD_LEN, field_key_version};
pub use format::{FormatError, HeaderInfo, LayerKeyInfo, MAX_HEADER_LEN};
pub(crate) use format::{Header as ParsedHeader, parse as parse_header};
pub use keys::{AccountKey, PreparedKey};
pub(crate) use keys::{Liveness, Revoked};
pub use stream::{OpenReader, SealWriter};

use format::{DEFAULT_CHUNK_EXP, Header, LayerFields, MAX_CHUNK_EXP, MIN_CHUNK_EXP};
use stream::{
    Ciphers, LayerCipher, LayerCiphers, LayerKey, io_err, new_layer, read_exact_or, read_header,
    recover_keys,
};

use crate::error::Error;

/// Seals and opens objects for one account: the account key (layer 1), optionally an
/// independent infrastructure account key (layer 2, double encryption), and the chunk size.
///
/// Cheap to build and `Copy`: it borrows the [`PreparedKey`]s that the account layer caches.
///
/// ```
/// use byok::{AesKey, Envelope};
/// use byok::envelope::{AccountKey, PreparedKey};
/// let key = PreparedKey::new("tenant-a", &AccountKey::new("ak", 1, AesKey::generate())?)?;
/// let env = Envelope::new(&key);
/// let object = env.seal(b"videos/intro.mp4", b"hello")?;
/// assert_eq!(env.open(b"videos/intro.mp4", &object)?, b"hello");
/// assert_eq!(byok::envelope::inspect(&object)?.account_id, "tenant-a");
/// # Ok::<(), byok::Error>(())
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Envelope<'k> {
    layer1: &'k PreparedKey,
    layer2: Option<&'k PreparedKey>,
    chunk_exp: u8,
}

/// How the body of an object of `body_len` bytes splits into chunks.
struct Layout {
    chunks: u64,
    full: u64,
    last_len: u64,
    plaintext_len: u64,
}

impl Layout {
    fn of(body_len: u64, chunk_exp: u8, overhead: usize) -> Result<Self, Error> {
        let overhead = overhead as u64;
        let full = (1u64 << chunk_exp) + overhead;
        if body_len == 0 {
            return Err(Error::Decryption);
        }
        let chunks = (body_len - 1) / full + 1;
        let last_len = body_len - (chunks - 1) * full;
        // Every chunk has its tags; only the first chunk (of an empty object) may be empty;
        // the counter is 32 bits.
        if last_len < overhead
            || (last_len == overhead && chunks > 1)
            || chunks - 1 > u64::from(u32::MAX)
        {
            return Err(Error::Decryption);
        }
        Ok(Self {
            chunks,
            full,
            last_len,
            plaintext_len: body_len - chunks * overhead,
        })
    }
}

impl<'k> Envelope<'k> {
    /// Single-layer envelopes under `key`, with 64 KiB chunks.
    pub fn new(key: &'k PreparedKey) -> Self {
        Self {
            layer1: key,
            layer2: None,
            chunk_exp: DEFAULT_CHUNK_EXP,
        }
    }

    /// Adds the second layer (double encryption) under the infrastructure account key `key`.
    /// Objects sealed by the result have both layers; opening accepts objects with or without
    /// the second layer (the header, which is authenticated, says which).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `key` belongs to another account than the layer-1 key, or
    /// is the layer-1 key itself (the same handle, the same key id and version, or the same
    /// key material under another name): double encryption needs two independent keys.
    pub fn with_layer2(self, key: &'k PreparedKey) -> Result<Self, Error> {
        if key.account_id() != self.layer1.account_id() {
            return Err(Error::InvalidInput(
                "the layer-2 key belongs to another account".into(),
            ));
        }
        if key.same_key(self.layer1) {
            return Err(Error::InvalidInput(
                "the layer-2 key is the layer-1 key: double encryption needs two independent keys"
                    .into(),
            ));
        }
        Ok(Self {
            layer2: Some(key),
            ..self
        })
    }

    /// Sets the plaintext chunk size for sealing (opening reads it from the header).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] unless `bytes` is a power of two from 64 bytes to 16 MiB.
    pub fn with_chunk_size(self, bytes: usize) -> Result<Self, Error> {
        let exp = bytes.trailing_zeros();
        if !bytes.is_power_of_two()
            || exp < u32::from(MIN_CHUNK_EXP)
            || exp > u32::from(MAX_CHUNK_EXP)
        {
            return Err(Error::InvalidInput(format!(
                "chunk size must be a power of two from 64 bytes to 16 MiB, got {bytes}"
            )));
        }
        Ok(Self {
            chunk_exp: exp as u8,
            ..self
        })
    }

    /// The plaintext chunk size used for sealing.
    pub fn chunk_size(&self) -> usize {
        1 << self.chunk_exp
    }

    /// The length of the headers this envelope writes.
    fn header_len(&self) -> usize {
        let layer = |k: &PreparedKey| format::LAYER_FIXED_LEN + k.key_id().len();
        format::FIXED_LEN
            + 1
            + self.layer1.account_id().len()
            + layer(self.layer1)
            + self.layer2.map_or(0, layer)
    }

    /// Fresh data keys for a new object, and its header (appended to `out`).
    fn begin(&self, context: &[u8], out: &mut Vec<u8>) -> (LayerKey, Option<LayerKey>) {
        let (k1, w1, c1) = new_layer(self.layer1, 1, context);
        let f1 = LayerFields {
            key_id: self.layer1.key_id(),
            key_version: self.layer1.key_version(),
            wrapped: &w1,
            commitment: &c1,
        };
        let Some(key2) = self.layer2 else {
            format::write(out, self.chunk_exp, self.layer1.account_id(), &f1, None);
            return (k1, None);
        };
        let (k2, w2, c2) = new_layer(key2, 2, context);
        let f2 = LayerFields {
            key_id: key2.key_id(),
            key_version: key2.key_version(),
            wrapped: &w2,
            commitment: &c2,
        };
        let account = self.layer1.account_id();
        format::write(out, self.chunk_exp, account, &f1, Some(&f2));
        (k1, Some(k2))
    }

    /// Seals `plaintext` as one object bound to `context` (object name, tenant, … — the same
    /// bytes must be given to open it; they are not stored).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the object would exceed 2^32 chunks.
    pub fn seal(&self, context: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, Error> {
        self.check_live()?;
        let chunk = self.chunk_size();
        let chunks = plaintext.len().div_ceil(chunk).max(1);
        if chunks - 1 > u32::MAX as usize {
            return Err(Error::InvalidInput(
                "object too large: more than 2^32 chunks".into(),
            ));
        }
        let tags = if self.layer2.is_some() { 32 } else { 16 };
        let mut out = Vec::with_capacity(self.header_len() + plaintext.len() + chunks * tags);
        let (k1, k2) = self.begin(context, &mut out);
        // The cipher states are built here, where they stay.
        let l1 = LayerCipher::new(&k1.0, &k1.1);
        let l2 = k2.as_ref().map(|k| LayerCipher::new(&k.0, &k.1));
        let ciphers = Ciphers {
            l1: &l1,
            l2: l2.as_ref(),
        };
        let h = out.len();
        let mut index = 0u32;
        let mut rest = plaintext;
        loop {
            let n = rest.len().min(chunk);
            let last = n == rest.len();
            ciphers.seal_chunk_from(index, last, &rest[..n], &mut out, h);
            if last {
                break;
            }
            rest = &rest[n..];
            index += 1;
        }
        Ok(out)
    }

    fn recover(
        &self,
        header: &Header<'_>,
        context: &[u8],
    ) -> Result<(LayerKey, Option<LayerKey>), Error> {
        self.check_live()?;
        recover_keys(header, self.layer1, self.layer2, context)
    }

    /// `Ok` unless the account layer revoked one of the keys (see [`PreparedKey`]).
    fn check_live(&self) -> Result<(), Error> {
        self.layer1.check_live()?;
        match self.layer2 {
            Some(k) => k.check_live(),
            None => Ok(()),
        }
    }

    /// The revocation flags every stream of this envelope checks per chunk.
    fn liveness(&self) -> Vec<Liveness> {
        let mut v = vec![self.layer1.liveness().clone()];
        v.extend(self.layer2.map(|k| k.liveness().clone()));
        v
    }

    /// Opens an object sealed with `context`. Returns the plaintext only if every chunk
    /// authenticated.
    ///
    /// # Errors
    /// [`Error::Decryption`] — the one opaque failure — if the object is malformed, truncated,
    /// extended or altered in any way, was sealed with another context, belongs to another
    /// account, or needs a key this envelope lacks (use [`inspect`] to see which key an
    /// object needs).
    pub fn open(&self, context: &[u8], object: &[u8]) -> Result<Vec<u8>, Error> {
        let header = format::parse(object).map_err(|_| Error::Decryption)?;
        self.open_parsed(context, object, &header)
    }

    /// [`open`](Self::open) with the header already parsed from `object`.
    pub(crate) fn open_parsed(
        &self,
        context: &[u8],
        object: &[u8],
        header: &Header<'_>,
    ) -> Result<Vec<u8>, Error> {
        let (k1, k2) = self.recover(header, context)?;
        let l1 = LayerCipher::new(&k1.0, &k1.1);
        let l2 = k2.as_ref().map(|k| LayerCipher::new(&k.0, &k.1));
        let ciphers = Ciphers {
            l1: &l1,
            l2: l2.as_ref(),
        };
        let aad = header.raw;
        let body = &object[aad.len()..];
        let layout = Layout::of(body.len() as u64, header.chunk_exp, ciphers.overhead())?;
        let full = layout.full as usize;
        let mut out = Vec::with_capacity(layout.plaintext_len as usize + ciphers.overhead());
        for (i, chunk) in body.chunks(full).enumerate() {
            let last = i as u64 == layout.chunks - 1;
            let start = out.len();
            out.extend_from_slice(chunk);
            if let Err(e) = ciphers.open_chunk(i as u32, last, aad, &mut out, start) {
                wipe(&mut out);
                return Err(e);
            }
        }
        Ok(out)
    }

    /// A streaming sealer writing one object bound to `context` into `inner`. The header is
    /// written at once; call [`SealWriter::finish`] at the end.
    ///
    /// # Errors
    /// Any error of `inner` while writing the header.
    pub fn seal_writer<W: Write>(&self, context: &[u8], inner: W) -> io::Result<SealWriter<W>> {
        let (header, ciphers) = self.start_stream(context).map_err(io_err)?;
        SealWriter::start(inner, header, ciphers, self.chunk_size())
    }

    /// A new object's header and its ciphers, for the streaming sealers.
    fn start_stream(&self, context: &[u8]) -> Result<(Vec<u8>, LayerCiphers), Error> {
        self.check_live()?;
        let mut header = Vec::with_capacity(self.header_len());
        let ciphers = LayerCiphers::new(&self.begin(context, &mut header), self.liveness());
        Ok((header, ciphers))
    }

    /// A streaming opener reading one object bound to `context` from `inner`, from its
    /// current position. The header is read and checked (keys, commitment) at once. The
    /// object extends to the end of `inner` (the format stores no length: a short final
    /// chunk is only recognised by the input ending); to read one object out of a longer
    /// stream, bound it: `inner.take(object_len)`. [`OpenHeader`] is the same in two phases
    /// (read the header, find the keys, then open).
    ///
    /// # Errors
    /// Any error of `inner`; an `InvalidData` error carrying [`Error::Decryption`] if the
    /// header is malformed or does not match the keys and context.
    pub fn open_reader<R: Read>(&self, context: &[u8], inner: R) -> io::Result<OpenReader<R>> {
        OpenHeader::read(inner)
            .map_err(opaque_header_error)
            .and_then(|h| h.open(self, context))
            .map_err(io_err)
    }

    /// Opens plaintext bytes `range` of the object that starts at the current position of
    /// `src` and extends to its end, reading and authenticating only the header and the
    /// chunks that cover the range (and seeking to the end once, to learn the object's
    /// length). Nothing before the starting position is read. For an object followed by
    /// other data (objects back to back in one file), give its extent with [`Bounded`]: the
    /// format stores no length, so the input's end is the object's end.
    ///
    /// Only those chunks are authenticated: damage elsewhere in the object is not detected
    /// by a ranged read. If `src` holds more than the object, the chunk positions and last
    /// flags come out wrong and the read fails ([`Error::Decryption`]); it never returns
    /// unauthenticated bytes.
    ///
    /// # Errors
    /// Any error of `src`; an `InvalidData` error carrying [`Error::Decryption`] if the header
    /// or a covering chunk fails to authenticate; an `InvalidInput` error carrying
    /// [`Error::InvalidInput`] if the range is reversed or ends past the plaintext.
    pub fn open_range<R: Read + Seek>(
        &self,
        context: &[u8],
        mut src: R,
        range: Range<u64>,
    ) -> io::Result<Vec<u8>> {
        let base = src.stream_position()?;
        let header = read_header(&mut src)?;
        let parsed = format::parse(&header).map_err(|_| io_err(Error::Decryption))?;
        let owned = LayerCiphers::new(
            &self.recover(&parsed, context).map_err(io_err)?,
            self.liveness(),
        );
        let ciphers = owned.view();
        let end = src.seek(SeekFrom::End(0))?;
        let body_start = base + header.len() as u64;
        let body_len = end
            .checked_sub(body_start)
            .ok_or_else(|| io_err(Error::Decryption))?;
        let layout = Layout::of(body_len, parsed.chunk_exp, ciphers.overhead()).map_err(io_err)?;
        if range.start > range.end || range.end > layout.plaintext_len {
            return Err(io_err(Error::InvalidInput(format!(
                "range {}..{} outside the object's {} bytes",
                range.start, range.end, layout.plaintext_len
            ))));
        }
        let mut out = Vec::new();
        if range.is_empty() {
            return Ok(out);
        }
        let chunk = 1u64 << parsed.chunk_exp;
        let mut buf = Vec::new();
        for i in range.start / chunk..=(range.end - 1) / chunk {
            let last = i == layout.chunks - 1;
            let len = if last { layout.last_len } else { layout.full };
            src.seek(SeekFrom::Start(body_start + i * layout.full))?;
            buf.clear();
            buf.resize(len as usize, 0);
            read_exact_or(&mut src, &mut buf, Error::Decryption)?;
            owned.check_live().map_err(io_err)?;
            ciphers
                .open_chunk(i as u32, last, &header, &mut buf, 0)
                .map_err(io_err)?;
            let lo = range.start.max(i * chunk) - i * chunk;
            let hi = range.end.min((i + 1) * chunk) - i * chunk;
            out.extend_from_slice(&buf[lo as usize..hi as usize]);
        }
        Ok(out)
    }
}

fn wipe(buf: &mut Vec<u8>) {
    use zeroize::Zeroize;
    buf.zeroize();
}

/// Reads an object's header without any key: which account, account key and layer-2 key
/// (with versions) it uses, and its format version. `bytes` may be the whole object or any
/// prefix of at least the header ([`MAX_HEADER_LEN`] bytes always suffice).
///
/// # Errors
/// [`Error::Format`] with the [`FormatError`] that says why the bytes are not a header this
/// version reads (bad magic, unknown version, a limit exceeded, truncated, …).
pub fn inspect(bytes: &[u8]) -> Result<HeaderInfo, Error> {
    Ok(HeaderInfo::from(&format::parse(bytes)?))
}

/// [`inspect`] on a reader: reads the object's header (and nothing more) from `r`.
///
/// # Errors
/// Any error of `r`; an `InvalidData` error carrying [`Error::Format`] if the bytes are not a
/// header this version reads (a premature end is [`FormatError::Truncated`]).
pub fn inspect_reader<R: Read>(r: R) -> io::Result<HeaderInfo> {
    OpenHeader::read(r).map(|h| h.info).map_err(io_err)
}

/// Reads into `buf` until it is full or the input ends; the number of bytes read.
fn read_up_to<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, Error> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::Io(e)),
        }
    }
    Ok(got)
}

/// The first phase of a two-phase open: an object's header, read (once, and nothing after
/// it) from any [`Read`] — no `Seek` needed — with the reader positioned at the first chunk.
///
/// [`info`](Self::info) says which account and keys the object needs (no key involved);
/// [`open`](Self::open) then opens the body from the same reader with an [`Envelope`] over
/// those keys. With the account layer:
///
/// ```
/// # async fn demo<R: std::io::Read>(m: &byok::AccountManager, id: &byok::AccountId, body: R)
/// # -> Result<(), byok::Error> {
/// use std::io::Read;
/// let header = byok::envelope::OpenHeader::read(body)?;
/// let keys = m.keys_for_reading(id, header.info()).await?;
/// let mut plaintext = header.open(&keys.envelope()?, b"object name")?;
/// let mut out = Vec::new();
/// plaintext.read_to_end(&mut out).map_err(byok::Error::from_io)?;
/// # Ok(()) }
/// ```
///
/// ([`AccountManager::decrypt_reader`](crate::AccountManager::decrypt_reader) does exactly
/// this.)
pub struct OpenHeader<R> {
    inner: R,
    header: Vec<u8>,
    info: HeaderInfo,
}

impl<R: Read> OpenHeader<R> {
    /// Reads and parses the header at the current position of `inner` (exactly the header's
    /// bytes are consumed).
    ///
    /// # Errors
    /// [`Error::Io`] for an error of `inner`; [`Error::Format`] with the [`FormatError`] that
    /// says why the bytes are not a header this version reads (a premature end is
    /// [`FormatError::Truncated`]).
    pub fn read(mut inner: R) -> Result<Self, Error> {
        let mut fixed = [0u8; format::FIXED_LEN];
        let got = read_up_to(&mut inner, &mut fixed)?;
        let fixed_info = format::parse_fixed(&fixed[..got])?;
        let mut header = Vec::with_capacity(fixed_info.header_len);
        header.extend_from_slice(&fixed);
        header.resize(fixed_info.header_len, 0);
        let rest = read_up_to(&mut inner, &mut header[format::FIXED_LEN..])?;
        Self::parsed(inner, header, format::FIXED_LEN + rest)
    }

    /// The second phase: checks the header against `envelope`'s keys and `context` (key ids
    /// and versions, data-key unwrap, key commitment) and returns the streaming opener of the
    /// body, which reads from the same reader to its end (bound it with [`Read::take`] if
    /// more follows the object).
    ///
    /// # Errors
    /// [`Error::Decryption`] if the header does not match the keys and context;
    /// [`Error::KeyInaccessible`] / [`Error::AccountNotFound`] if the account layer revoked
    /// a key.
    pub fn open(self, envelope: &Envelope<'_>, context: &[u8]) -> Result<OpenReader<R>, Error> {
        let (inner, header, ciphers, chunk_size) = self.keyed(envelope, context)?;
        Ok(OpenReader::start(inner, header, ciphers, chunk_size))
    }
}

impl<R> OpenHeader<R> {
    /// Which account, account key and layer-2 key the object needs (unauthenticated until
    /// [`open`](Self::open) succeeds).
    pub fn info(&self) -> &HeaderInfo {
        &self.info
    }

    /// The header's exact bytes.
    pub fn header_bytes(&self) -> &[u8] {
        &self.header
    }

    /// The reader, positioned at the object's first chunk.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Checks a header of which `got` bytes were read.
    fn parsed(inner: R, header: Vec<u8>, got: usize) -> Result<Self, Error> {
        if got < header.len() {
            return Err(Error::Format(FormatError::Truncated));
        }
        let info = HeaderInfo::from(&format::parse(&header)?);
        Ok(Self {
            inner,
            header,
            info,
        })
    }

    /// The reader, the header bytes, the body's ciphers and the chunk size, after the keys
    /// and commitments checked.
    fn keyed(
        self,
        envelope: &Envelope<'_>,
        context: &[u8],
    ) -> Result<(R, Vec<u8>, LayerCiphers, usize), Error> {
        let parsed = format::parse(&self.header).map_err(|_| Error::Decryption)?;
        let chunk_size = 1usize << parsed.chunk_exp;
        let ciphers = LayerCiphers::new(&envelope.recover(&parsed, context)?, envelope.liveness());
        Ok((self.inner, self.header, ciphers, chunk_size))
    }
}

/// A header that failed to read, as the opening APIs report it: I/O errors as they are,
/// anything else the opaque [`Error::Decryption`].
pub(crate) fn opaque_header_error(e: Error) -> Error {
    match e {
        Error::Io(e) => Error::Io(e),
        _ => Error::Decryption,
    }
}

impl<R> core::fmt::Debug for OpenHeader<R> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("OpenHeader")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// A `Read + Seek` view of `len` bytes of `inner`, starting at its current position: hands
/// one object out of a larger file (objects back to back, a container with an index) to the
/// reading APIs, which take an object to extend to the end of their input (the format stores
/// no length). [`Read::take`] does the same for the streaming readers; this one also seeks
/// (for [`Envelope::open_range`]). Positions are relative to the view: `SeekFrom::Start(0)`
/// is the object's first byte, `SeekFrom::End(0)` just after its last.
#[derive(Debug)]
pub struct Bounded<R> {
    inner: R,
    start: u64,
    len: u64,
    pos: u64,
}

impl<R: Seek> Bounded<R> {
    /// The `len` bytes of `inner` from its current position.
    ///
    /// # Errors
    /// Any error of `inner` telling its position.
    pub fn new(mut inner: R, len: u64) -> io::Result<Self> {
        let start = inner.stream_position()?;
        Ok(Self {
            inner,
            start,
            len,
            pos: 0,
        })
    }

    /// Returns the inner reader (positioned wherever the view last read or sought).
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
        if n == 0 {
            return Ok(0);
        }
        let got = self.inner.read(&mut buf[..n])?;
        self.pos += got as u64;
        Ok(got)
    }
}

impl<R: Seek> Seek for Bounded<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let target = match to {
            SeekFrom::Start(n) => Some(n),
            SeekFrom::End(d) => self.len.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let target = target.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before the start of the view",
            )
        })?;
        let abs = self.start.checked_add(target).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "seek position overflows")
        })?;
        self.inner.seek(SeekFrom::Start(abs))?;
        self.pos = target;
        Ok(target)
    }
}
