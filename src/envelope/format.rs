//! The wire format, version 1: the header's read and write halves.
//!
//! Parsing is total: any byte string gives a [`Header`] or a typed [`FormatError`], never a
//! panic, and every length is checked against a fixed limit before anything is allocated.
//! Writing the fields of a parsed header reproduces exactly the bytes that were parsed (the
//! AEAD binds those bytes, not a re-encoding). `docs/FORMAT.md` is the byte-by-byte
//! specification.

use core::fmt;

/// The four magic bytes every envelope starts with.
pub(crate) const MAGIC: [u8; 4] = *b"BYOK";
/// The only format version this crate writes and reads.
pub(crate) const VERSION_1: u8 = 1;
/// Suite 1: AES-256-GCM chunks, AES-KW (RFC 3394) data-key wrap, SHA-256 (SP 800-56C
/// one-step KDF) commitment.
pub(crate) const SUITE_1: u8 = 1;
/// Flag bit: the object has a second (double-encryption) layer.
pub(crate) const FLAG_LAYER2: u8 = 0x01;
/// Magic, version, flags, suite, chunk exponent, header length.
pub(crate) const FIXED_LEN: usize = 10;
/// The longest header a version-1 object can have; a header that claims more is refused
/// before anything is allocated. Reading this many bytes always suffices for [`inspect`].
///
/// [`inspect`]: crate::envelope::inspect
pub const MAX_HEADER_LEN: usize = 1024;
/// Smallest chunk: 2^6 = 64 bytes of plaintext.
pub(crate) const MIN_CHUNK_EXP: u8 = 6;
/// Largest chunk: 2^24 = 16 MiB of plaintext.
pub(crate) const MAX_CHUNK_EXP: u8 = 24;
/// Default chunk: 2^16 = 64 KiB of plaintext.
pub(crate) const DEFAULT_CHUNK_EXP: u8 = 16;
/// An AES-KW-wrapped 256-bit data key.
pub(crate) const WRAPPED_LEN: usize = 40;
/// The key-commitment value.
pub(crate) const COMMIT_LEN: usize = 32;
/// Longest account id or key id, in bytes.
pub(crate) const MAX_ID_LEN: usize = 255;
/// Per layer: id length byte, key version, wrapped key, commitment (plus the id itself).
pub(crate) const LAYER_FIXED_LEN: usize = 1 + 4 + WRAPPED_LEN + COMMIT_LEN;
/// The shortest possible header: one-byte account id and key id, one layer.
pub(crate) const MIN_HEADER_LEN: usize = FIXED_LEN + 1 + 1 + LAYER_FIXED_LEN + 1;

/// Why bytes are not a header this version can read. These are returned by [`inspect`]
/// (operators need to know *why*); opening an object never returns them — every failure to
/// open untrusted bytes is the opaque [`Error::Decryption`](crate::Error::Decryption).
///
/// [`inspect`]: crate::envelope::inspect
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum FormatError {
    /// The bytes do not start with the envelope's magic (`BYOK`).
    BadMagic,
    /// A format version this crate does not know (written by a newer version, or corrupt).
    UnknownVersion(u8),
    /// An algorithm suite this crate does not know.
    UnknownSuite(u8),
    /// Flag bits that version 1 reserves are set.
    ReservedFlags(u8),
    /// The chunk-size exponent is outside 6..=24 (64 bytes to 16 MiB).
    ChunkSize(u8),
    /// The header claims a length over [`MAX_HEADER_LEN`] or under the minimum.
    HeaderTooLong(usize),
    /// The header's declared length disagrees with its fields.
    LengthMismatch,
    /// The input ends inside the header.
    Truncated,
    /// A field is malformed (an empty or non-UTF-8 identifier); the name says which.
    InvalidField(&'static str),
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadMagic => f.write_str("not a byok envelope (bad magic bytes)"),
            Self::UnknownVersion(v) => write!(f, "unknown envelope format version {v}"),
            Self::UnknownSuite(s) => write!(f, "unknown algorithm suite {s}"),
            Self::ReservedFlags(b) => write!(f, "reserved flag bits set ({b:#04x})"),
            Self::ChunkSize(e) => write!(
                f,
                "chunk size 2^{e} outside 2^{MIN_CHUNK_EXP}..=2^{MAX_CHUNK_EXP} bytes"
            ),
            Self::HeaderTooLong(n) => write!(
                f,
                "header length {n} outside {MIN_HEADER_LEN}..={MAX_HEADER_LEN} bytes"
            ),
            Self::LengthMismatch => f.write_str("header length disagrees with its fields"),
            Self::Truncated => f.write_str("truncated header"),
            Self::InvalidField(name) => write!(f, "invalid {name} in header"),
        }
    }
}

impl std::error::Error for FormatError {}

/// One layer's fields in a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LayerFields<'a> {
    pub(crate) key_id: &'a str,
    pub(crate) key_version: u32,
    pub(crate) wrapped: &'a [u8; WRAPPED_LEN],
    pub(crate) commitment: &'a [u8; COMMIT_LEN],
}

/// A parsed version-1 header, borrowing the bytes it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Header<'a> {
    /// The exact header bytes as read (the AEAD's associated data).
    pub(crate) raw: &'a [u8],
    pub(crate) chunk_exp: u8,
    pub(crate) account_id: &'a str,
    pub(crate) layer1: LayerFields<'a>,
    pub(crate) layer2: Option<LayerFields<'a>>,
}

/// What the fixed first [`FIXED_LEN`] bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fixed {
    pub(crate) flags: u8,
    pub(crate) chunk_exp: u8,
    pub(crate) header_len: usize,
}

/// Validates the fixed prefix. `bytes` may be longer than [`FIXED_LEN`].
pub(crate) fn parse_fixed(bytes: &[u8]) -> Result<Fixed, FormatError> {
    // The magic and version are checked first, on whatever prefix there is, so that a short
    // input from another format or version is reported as such rather than as truncated.
    let magic_len = bytes.len().min(MAGIC.len());
    if bytes[..magic_len] != MAGIC[..magic_len] {
        return Err(FormatError::BadMagic);
    }
    let Some(fixed) = bytes.get(..FIXED_LEN) else {
        if let Some(&v) = bytes.get(4)
            && v != VERSION_1
        {
            return Err(FormatError::UnknownVersion(v));
        }
        return Err(FormatError::Truncated);
    };
    let version = fixed[4];
    if version != VERSION_1 {
        return Err(FormatError::UnknownVersion(version));
    }
    let flags = fixed[5];
    if flags & !FLAG_LAYER2 != 0 {
        return Err(FormatError::ReservedFlags(flags));
    }
    let suite = fixed[6];
    if suite != SUITE_1 {
        return Err(FormatError::UnknownSuite(suite));
    }
    let chunk_exp = fixed[7];
    if !(MIN_CHUNK_EXP..=MAX_CHUNK_EXP).contains(&chunk_exp) {
        return Err(FormatError::ChunkSize(chunk_exp));
    }
    let header_len = usize::from(u16::from_be_bytes([fixed[8], fixed[9]]));
    if !(MIN_HEADER_LEN..=MAX_HEADER_LEN).contains(&header_len) {
        return Err(FormatError::HeaderTooLong(header_len));
    }
    Ok(Fixed {
        flags,
        chunk_exp,
        header_len,
    })
}

/// A bounds-checked cursor over the header bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FormatError> {
        if n > self.bytes.len() {
            return Err(FormatError::LengthMismatch);
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn take_array<const N: usize>(&mut self) -> Result<&'a [u8; N], FormatError> {
        self.take(N)?
            .try_into()
            .map_err(|_| FormatError::LengthMismatch)
    }

    fn u8(&mut self) -> Result<u8, FormatError> {
        Ok(self.take_array::<1>()?[0])
    }

    fn u32(&mut self) -> Result<u32, FormatError> {
        Ok(u32::from_be_bytes(*self.take_array::<4>()?))
    }

    fn id(&mut self, name: &'static str) -> Result<&'a str, FormatError> {
        let len = usize::from(self.u8()?);
        if len == 0 {
            return Err(FormatError::InvalidField(name));
        }
        core::str::from_utf8(self.take(len)?).map_err(|_| FormatError::InvalidField(name))
    }

    fn layer(&mut self, name: &'static str) -> Result<LayerFields<'a>, FormatError> {
        Ok(LayerFields {
            key_id: self.id(name)?,
            key_version: self.u32()?,
            wrapped: self.take_array()?,
            commitment: self.take_array()?,
        })
    }
}

/// Parses the header at the start of `bytes` (which may continue with the body).
pub(crate) fn parse(bytes: &[u8]) -> Result<Header<'_>, FormatError> {
    let fixed = parse_fixed(bytes)?;
    let raw = bytes
        .get(..fixed.header_len)
        .ok_or(FormatError::Truncated)?;
    let mut c = Cursor {
        bytes: &raw[FIXED_LEN..],
    };
    let account_id = c.id("account id")?;
    let layer1 = c.layer("account-key id")?;
    let layer2 = if fixed.flags & FLAG_LAYER2 != 0 {
        Some(c.layer("layer-2 key id")?)
    } else {
        None
    };
    if !c.bytes.is_empty() {
        return Err(FormatError::LengthMismatch);
    }
    Ok(Header {
        raw,
        chunk_exp: fixed.chunk_exp,
        account_id,
        layer1,
        layer2,
    })
}

/// The encoded length of a header with these fields.
pub(crate) fn encoded_len(
    account_id: &str,
    layer1: &LayerFields<'_>,
    layer2: Option<&LayerFields<'_>>,
) -> usize {
    FIXED_LEN
        + 1
        + account_id.len()
        + LAYER_FIXED_LEN
        + layer1.key_id.len()
        + layer2.map_or(0, |l| LAYER_FIXED_LEN + l.key_id.len())
}

/// Appends the header to `out`. The identifiers must be 1..=255 bytes (the key types
/// guarantee it), which bounds the header below [`MAX_HEADER_LEN`].
pub(crate) fn write(
    out: &mut Vec<u8>,
    chunk_exp: u8,
    account_id: &str,
    layer1: &LayerFields<'_>,
    layer2: Option<&LayerFields<'_>>,
) {
    let len = encoded_len(account_id, layer1, layer2);
    debug_assert!(len <= MAX_HEADER_LEN);
    let flags = if layer2.is_some() { FLAG_LAYER2 } else { 0 };
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&[VERSION_1, flags, SUITE_1, chunk_exp]);
    out.extend_from_slice(&(len as u16).to_be_bytes());
    put_id(out, account_id);
    put_layer(out, layer1);
    if let Some(l2) = layer2 {
        put_layer(out, l2);
    }
}

fn put_id(out: &mut Vec<u8>, id: &str) {
    debug_assert!((1..=MAX_ID_LEN).contains(&id.len()));
    out.push(id.len() as u8);
    out.extend_from_slice(id.as_bytes());
}

fn put_layer(out: &mut Vec<u8>, l: &LayerFields<'_>) {
    put_id(out, l.key_id);
    out.extend_from_slice(&l.key_version.to_be_bytes());
    out.extend_from_slice(l.wrapped);
    out.extend_from_slice(l.commitment);
}

#[cfg(any(test, fuzzing))]
impl Header<'_> {
    /// Re-encodes the parsed fields (the write half of the round trip).
    pub(crate) fn write_to(&self, out: &mut Vec<u8>) {
        write(
            out,
            self.chunk_exp,
            self.account_id,
            &self.layer1,
            self.layer2.as_ref(),
        );
    }
}

/// Identifies the key that protects one layer of an object.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct LayerKeyInfo {
    /// The key's id (the account-key id for layer 1, the infrastructure account key's id for
    /// layer 2).
    pub id: String,
    /// The key's version.
    pub version: u32,
}

/// What an object's header says, read without any key (see [`inspect`](crate::envelope::inspect)).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct HeaderInfo {
    /// The envelope format version (1).
    pub format_version: u8,
    /// The account the object belongs to.
    pub account_id: String,
    /// The account key that wraps the layer-1 data key.
    pub account_key: LayerKeyInfo,
    /// The infrastructure account key that wraps the layer-2 data key, if the object is
    /// double-encrypted.
    pub layer2_key: Option<LayerKeyInfo>,
    /// Plaintext bytes per chunk.
    pub chunk_size: usize,
    /// Length of the header in bytes (the body starts there).
    pub header_len: usize,
}

impl From<&Header<'_>> for HeaderInfo {
    fn from(h: &Header<'_>) -> Self {
        let layer = |l: &LayerFields<'_>| LayerKeyInfo {
            id: l.key_id.to_owned(),
            version: l.key_version,
        };
        Self {
            format_version: VERSION_1,
            account_id: h.account_id.to_owned(),
            account_key: layer(&h.layer1),
            layer2_key: h.layer2.as_ref().map(layer),
            chunk_size: 1 << h.chunk_exp,
            header_len: h.raw.len(),
        }
    }
}
