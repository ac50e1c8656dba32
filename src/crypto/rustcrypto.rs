//! The RustCrypto backend of the crypto core.

use core::fmt;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use aes_kw::{KwAes128, KwAes192, KwAes256, KwpAes128, KwpAes192, KwpAes256};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{BoxedUint, Oaep};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, Zeroizing};

use super::{GCM_NONCE_LEN, GCM_TAG_LEN, OaepHash, ThreadRng};
use crate::error::Error;
use crate::secret::{AesKey, SecretBytes};

/// AES-256-GCM with its key schedule computed once.
pub(crate) struct Gcm(Aes256Gcm);

impl Gcm {
    pub(crate) fn new(key: &AesKey) -> Self {
        Self(Aes256Gcm::new(key.expose_secret().into()))
    }

    /// Encrypts `buf` in place and returns the tag.
    pub(crate) fn seal_in_place(
        &self,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; GCM_TAG_LEN] {
        // Encryption only fails for inputs beyond 2^36 bytes, which the envelope's chunking
        // rules out; an error here is a bug, so fail closed.
        #[allow(clippy::expect_used)]
        let tag = self
            .0
            .encrypt_inout_detached(&Nonce::from(*nonce), aad, buf.into())
            .expect("AES-GCM input within limits");
        tag.into()
    }

    /// Encrypts `input` into `out` (same length) and returns the tag: no copy of the plaintext
    /// into the output buffer first.
    pub(crate) fn seal_to(
        &self,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        input: &[u8],
        out: &mut [u8],
    ) -> [u8; GCM_TAG_LEN] {
        // Equal lengths are the caller's contract and inputs are far below 2^36 bytes; an error
        // here is a bug, so fail closed.
        #[allow(clippy::expect_used)]
        let buf = aes_gcm::aead::inout::InOutBuf::new(input, out).expect("equal lengths");
        #[allow(clippy::expect_used)]
        let tag = self
            .0
            .encrypt_inout_detached(&Nonce::from(*nonce), aad, buf)
            .expect("AES-GCM input within limits");
        tag.into()
    }

    /// Decrypts `buf` in place after checking `tag`. On failure `buf` is wiped.
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; GCM_TAG_LEN],
    ) -> Result<(), Error> {
        let tag = Tag::from(*tag);
        self.0
            .decrypt_inout_detached(&Nonce::from(*nonce), aad, (&mut *buf).into(), &tag)
            .map_err(|_| {
                buf.zeroize();
                Error::Decryption
            })
    }

    /// One-shot seal: returns `ciphertext || tag`.
    pub(crate) fn seal(&self, nonce: &[u8; GCM_NONCE_LEN], aad: &[u8], pt: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(pt.len() + GCM_TAG_LEN);
        out.extend_from_slice(pt);
        let tag = self.seal_in_place(nonce, aad, &mut out);
        out.extend_from_slice(&tag);
        out
    }

    /// One-shot open of `ciphertext || tag`. Returns nothing on failure.
    pub(crate) fn open(
        &self,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, Error> {
        let body_len = ct.len().checked_sub(GCM_TAG_LEN).ok_or(Error::Decryption)?;
        let (body, tag) = ct.split_at(body_len);
        let mut tag_arr = [0u8; GCM_TAG_LEN];
        tag_arr.copy_from_slice(tag);
        let mut out = Zeroizing::new(body.to_vec());
        self.open_in_place(nonce, aad, &mut out, &tag_arr)?;
        Ok(out)
    }
}

/// A key-encryption key for AES key wrap (RFC 3394) and with padding (RFC 5649).
///
/// The crate only ever uses 256-bit KEKs; 128- and 192-bit ones exist so that the full
/// Wycheproof suites run through this wrapper.
pub(crate) enum Kek {
    A128(KwAes128, KwpAes128),
    A192(KwAes192, KwpAes192),
    A256(KwAes256, KwpAes256),
}

impl Kek {
    pub(crate) fn new(key: &AesKey) -> Self {
        let k = key.expose_secret();
        Self::A256(KwAes256::new(k.into()), KwpAes256::new(k.into()))
    }

    /// A KEK of 16, 24 or 32 bytes.
    pub(crate) fn from_slice(key: &[u8]) -> Result<Self, Error> {
        Ok(match key.len() {
            16 => Self::A128(
                KwAes128::new_from_slice(key).map_err(|_| bad_kek())?,
                KwpAes128::new_from_slice(key).map_err(|_| bad_kek())?,
            ),
            24 => Self::A192(
                KwAes192::new_from_slice(key).map_err(|_| bad_kek())?,
                KwpAes192::new_from_slice(key).map_err(|_| bad_kek())?,
            ),
            32 => Self::A256(
                KwAes256::new_from_slice(key).map_err(|_| bad_kek())?,
                KwpAes256::new_from_slice(key).map_err(|_| bad_kek())?,
            ),
            _ => return Err(bad_kek()),
        })
    }

    /// RFC 3394 wrap. The key must be a non-zero multiple of 8 bytes, at least 16.
    pub(crate) fn wrap(&self, key: &[u8]) -> Result<Vec<u8>, Error> {
        if key.len() < 16 || key.len() % 8 != 0 {
            return Err(Error::InvalidInput(format!(
                "AES key wrap (RFC 3394) needs a multiple of 8 bytes, at least 16; got {}",
                key.len()
            )));
        }
        let mut out = vec![0u8; key.len() + 8];
        let r = match self {
            Self::A128(kw, _) => kw.wrap_key(key, &mut out).map(|_| ()),
            Self::A192(kw, _) => kw.wrap_key(key, &mut out).map(|_| ()),
            Self::A256(kw, _) => kw.wrap_key(key, &mut out).map(|_| ()),
        };
        r.map_err(|e| Error::InvalidInput(format!("AES key wrap: {e}")))?;
        Ok(out)
    }

    /// RFC 3394 wrap of a 32-byte key into a fixed array (the envelope's hot path).
    pub(crate) fn wrap_32(&self, key: &[u8; 32]) -> [u8; 40] {
        let mut out = [0u8; 40];
        // Length is fixed and valid: 32 is a multiple of 8 and `out` is 40 bytes.
        let r = match self {
            Self::A128(kw, _) => kw.wrap_key(key, &mut out).map(|_| ()),
            Self::A192(kw, _) => kw.wrap_key(key, &mut out).map(|_| ()),
            Self::A256(kw, _) => kw.wrap_key(key, &mut out).map(|_| ()),
        };
        debug_assert!(r.is_ok());
        out
    }

    /// RFC 3394 unwrap. Any failure is the opaque [`Error::Decryption`].
    pub(crate) fn unwrap(&self, wrapped: &[u8]) -> Result<SecretBytes, Error> {
        if wrapped.len() < 24 || wrapped.len() % 8 != 0 {
            return Err(Error::Decryption);
        }
        let mut out = Zeroizing::new(vec![0u8; wrapped.len() - 8]);
        let r = match self {
            Self::A128(kw, _) => kw.unwrap_key(wrapped, &mut out).map(|_| ()),
            Self::A192(kw, _) => kw.unwrap_key(wrapped, &mut out).map(|_| ()),
            Self::A256(kw, _) => kw.unwrap_key(wrapped, &mut out).map(|_| ()),
        };
        r.map_err(|_| Error::Decryption)?;
        Ok(SecretBytes::from(out))
    }

    /// RFC 3394 unwrap of a 40-byte blob into a 32-byte key (the envelope's hot path: no
    /// heap allocation). Any failure is the opaque [`Error::Decryption`].
    pub(crate) fn unwrap_32(&self, wrapped: &[u8; 40]) -> Result<AesKey, Error> {
        let mut out = Zeroizing::new([0u8; 32]);
        let r = match self {
            Self::A128(kw, _) => kw.unwrap_key(wrapped, &mut out[..]).map(|_| ()),
            Self::A192(kw, _) => kw.unwrap_key(wrapped, &mut out[..]).map(|_| ()),
            Self::A256(kw, _) => kw.unwrap_key(wrapped, &mut out[..]).map(|_| ()),
        };
        r.map_err(|_| Error::Decryption)?;
        Ok(AesKey::from_bytes(*out))
    }

    /// RFC 5649 wrap (any length from 1 byte).
    pub(crate) fn wrap_padded(&self, key: &[u8]) -> Result<Vec<u8>, Error> {
        if key.is_empty() || key.len() > u32::MAX as usize {
            return Err(Error::InvalidInput(
                "AES key wrap with padding needs 1 to 2^32-1 bytes".into(),
            ));
        }
        let mut out = vec![0u8; key.len().div_ceil(8) * 8 + 8];
        let r = match self {
            Self::A128(_, kwp) => kwp.wrap_key(key, &mut out).map(|s| s.len()),
            Self::A192(_, kwp) => kwp.wrap_key(key, &mut out).map(|s| s.len()),
            Self::A256(_, kwp) => kwp.wrap_key(key, &mut out).map(|s| s.len()),
        };
        let n = r.map_err(|e| Error::InvalidInput(format!("AES key wrap with padding: {e}")))?;
        out.truncate(n);
        Ok(out)
    }

    /// RFC 5649 unwrap. Any failure is the opaque [`Error::Decryption`].
    pub(crate) fn unwrap_padded(&self, wrapped: &[u8]) -> Result<SecretBytes, Error> {
        if wrapped.len() < 16 || wrapped.len() % 8 != 0 {
            return Err(Error::Decryption);
        }
        let mut out = Zeroizing::new(vec![0u8; wrapped.len() - 8]);
        let r = match self {
            Self::A128(_, kwp) => kwp.unwrap_key(wrapped, &mut out).map(|s| s.len()),
            Self::A192(_, kwp) => kwp.unwrap_key(wrapped, &mut out).map(|s| s.len()),
            Self::A256(_, kwp) => kwp.unwrap_key(wrapped, &mut out).map(|s| s.len()),
        };
        let n = r.map_err(|_| Error::Decryption)?;
        out.truncate(n);
        Ok(SecretBytes::from(out))
    }
}

fn bad_kek() -> Error {
    Error::InvalidInput("an AES key-encryption key is 16, 24 or 32 bytes".into())
}

/// HKDF-SHA-256 (RFC 5869) into `out`.
pub(crate) fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) {
    let hk = hkdf::Hkdf::<Sha256>::new(Some(salt), ikm);
    // Output lengths used by the crate are at most 64 bytes, far below 255 * 32.
    let r = hk.expand_multi_info(info, out);
    debug_assert!(r.is_ok());
}

/// HMAC-SHA-256, built from HKDF's extract step (HKDF-Extract(salt=key, ikm=msg) is
/// HMAC(key, msg) by definition, RFC 5869 §2.2).
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut ext = hkdf::HkdfExtract::<Sha256>::new(Some(key));
    ext.input_ikm(msg);
    let (prk, _) = ext.finalize();
    prk.into()
}

/// SHA-256 of the concatenation of `parts` (no copy into one buffer).
pub(crate) fn sha256_parts(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// An RSA private key held in software. Decryption is always blinded.
pub struct RsaPrivate(rsa::PrivateKey);

/// An RSA public key.
#[derive(Clone, PartialEq, Eq)]
pub struct RsaPublic(rsa::PublicKey);

impl RsaPrivate {
    /// Generates a key of `bits` bits (2048, 3072 or 4096 are what vaults offer).
    pub(crate) fn generate<R: rand_core::TryCryptoRng + ?Sized>(
        rng: &mut R,
        bits: usize,
    ) -> Result<Self, Error> {
        rsa::PrivateKey::new(rng, bits)
            .map(Self)
            .map_err(|e| Error::InvalidInput(format!("RSA key generation: {e}")))
    }

    /// Parses a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`, what `openssl genrsa -traditional` writes).
    pub(crate) fn from_pem(pem: &str) -> Result<Self, Error> {
        let key = rsa::PrivateKey::from_pkcs8_pem(pem)
            .or_else(|_| rsa::PrivateKey::from_pkcs1_pem(pem))
            .map_err(|_| {
                Error::InvalidInput(
                    "not an RSA private key in PKCS#8 or PKCS#1 PEM form".into(),
                )
            })?;
        key.validate()
            .map_err(|e| Error::InvalidInput(format!("invalid RSA private key: {e}")))?;
        Ok(Self(key))
    }

    /// Parses a DER PKCS#8 private key.
    pub(crate) fn from_pkcs8_der(der: &[u8]) -> Result<Self, Error> {
        rsa::PrivateKey::from_pkcs8_der(der)
            .map(Self)
            .map_err(|_| Error::InvalidInput("not an RSA private key in PKCS#8 DER form".into()))
    }

    /// Encodes the private key as PKCS#8 DER, in a wiping buffer.
    pub(crate) fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        use rsa::pkcs8::EncodePrivateKey;
        self.0
            .to_pkcs8_der()
            .map(|doc| Zeroizing::new(doc.as_bytes().to_vec()))
            .map_err(|e| Error::InvalidInput(format!("PKCS#8 encoding: {e}")))
    }

    /// The public half.
    pub fn public(&self) -> RsaPublic {
        RsaPublic(self.0.to_public_key())
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.0.size() * 8
    }

    /// RSA-OAEP decryption with the label `label` (empty for key wrapping). Blinded.
    /// Any failure is the opaque [`Error::Decryption`].
    pub(crate) fn decrypt_oaep(
        &self,
        hash: OaepHash,
        ct: &[u8],
        label: &[u8],
    ) -> Result<SecretBytes, Error> {
        let mut rng = ThreadRng;
        let r = match (hash, label.is_empty()) {
            (OaepHash::Sha256, true) => self.0.decrypt_blinded(&mut rng, Oaep::<Sha256>::new(), ct),
            (OaepHash::Sha256, false) => {
                self.0
                    .decrypt_blinded(&mut rng, Oaep::<Sha256>::new_with_label(label), ct)
            }
            (OaepHash::Sha1, true) => {
                self.0
                    .decrypt_blinded(&mut rng, Oaep::<sha1::Sha1>::new(), ct)
            }
            (OaepHash::Sha1, false) => self.0.decrypt_blinded(
                &mut rng,
                Oaep::<sha1::Sha1>::new_with_label(label),
                ct,
            ),
        };
        r.map(SecretBytes::new).map_err(|_| Error::Decryption)
    }
}

impl fmt::Debug for RsaPrivate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPrivate")
            .field("bits", &self.bits())
            .finish_non_exhaustive()
    }
}

impl RsaPublic {
    /// Builds a public key from its big-endian modulus and exponent (what an HSM reports).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the values do not form a valid RSA public key.
    pub fn from_components(modulus: &[u8], exponent: &[u8]) -> Result<Self, Error> {
        let n = BoxedUint::from_be_slice_vartime(modulus);
        let e = BoxedUint::from_be_slice_vartime(exponent);
        rsa::PublicKey::new(n, e)
            .map(Self)
            .map_err(|e| Error::InvalidInput(format!("invalid RSA public key: {e}")))
    }

    /// Parses a PEM public key: SPKI (`BEGIN PUBLIC KEY`) or PKCS#1 (`BEGIN RSA PUBLIC KEY`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the text is not an RSA public key in either form.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        rsa::PublicKey::from_public_key_pem(pem)
            .or_else(|_| rsa::PublicKey::from_pkcs1_pem(pem))
            .map(Self)
            .map_err(|_| Error::InvalidInput("not an RSA public key in SPKI or PKCS#1 PEM".into()))
    }

    /// Parses a DER SPKI public key.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the bytes are not an RSA SPKI structure.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, Error> {
        rsa::PublicKey::from_public_key_der(der)
            .map(Self)
            .map_err(|_| Error::InvalidInput("not an RSA public key in SPKI DER".into()))
    }

    /// Encodes as SPKI PEM (`BEGIN PUBLIC KEY`).
    pub fn to_pem(&self) -> String {
        // Encoding a valid key into PEM cannot fail.
        self.0
            .to_public_key_pem(LineEnding::LF)
            .unwrap_or_default()
    }

    /// Big-endian modulus.
    pub fn modulus(&self) -> Vec<u8> {
        self.0.n().to_be_bytes_trimmed_vartime().into_vec()
    }

    /// Big-endian public exponent.
    pub fn exponent(&self) -> Vec<u8> {
        self.0.e().to_be_bytes_trimmed_vartime().into_vec()
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.0.size() * 8
    }

    /// RSA-OAEP encryption (empty label for key wrapping).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the message is too long for the key and hash.
    pub fn encrypt_oaep(&self, hash: OaepHash, pt: &[u8], label: &[u8]) -> Result<Vec<u8>, Error> {
        let mut rng = ThreadRng;
        let r = match (hash, label.is_empty()) {
            (OaepHash::Sha256, true) => self.0.encrypt(&mut rng, Oaep::<Sha256>::new(), pt),
            (OaepHash::Sha256, false) => {
                self.0
                    .encrypt(&mut rng, Oaep::<Sha256>::new_with_label(label), pt)
            }
            (OaepHash::Sha1, true) => self.0.encrypt(&mut rng, Oaep::<sha1::Sha1>::new(), pt),
            (OaepHash::Sha1, false) => {
                self.0
                    .encrypt(&mut rng, Oaep::<sha1::Sha1>::new_with_label(label), pt)
            }
        };
        r.map_err(|e| Error::InvalidInput(format!("RSA-OAEP encryption: {e}")))
    }
}

impl fmt::Debug for RsaPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPublic")
            .field("bits", &self.bits())
            .finish()
    }
}
