//! The aws-lc-rs backend of the crypto core (feature `aws-lc`): the same items as
//! `rustcrypto.rs`, with the primitives from AWS-LC.
//!
//! What runs where:
//! - AES-256-GCM, RSA-OAEP (SHA-1 and SHA-256, constant time, blinded), RSA key generation,
//!   PKCS#8 import and export, HKDF-SHA-256, HMAC-SHA-256, SHA-256 and random bytes: AWS-LC.
//! - AES key wrap (RFC 3394) and with padding (RFC 5649) of any length: AWS-LC for 128- and
//!   256-bit KEKs. The 32-byte-key hot path (`wrap_32`, `wrap_32_many`, `unwrap_32`) stays on
//!   [`super::kw32`] over the RustCrypto AES block cipher: AWS-LC's key-wrap API consumes its
//!   key and has no batch call, and measured on the CI machine kind the batched wrap of eight
//!   32-byte keys took 1.1 µs here against 7 µs through AWS-LC. AWS-LC offers no 192-bit
//!   key wrap; such KEKs (never used by the crate, only by the Wycheproof suite) stay on
//!   RustCrypto.
//! - PEM and PKCS#1 decoding, and the deterministic key generation of seeded test vaults: the
//!   RustCrypto `rsa` crate, whose keys are then handed to AWS-LC as PKCS#8.
//! - Argon2id: RustCrypto's `argon2` (AWS-LC has none).
//!
//! AWS-LC refuses RSA keys under 2048 bits. Such a key (the vaults can create a 1024-bit one
//! so that policies can prove they refuse it) is still held, reported and exported, but every
//! private- and public-key operation with it fails with [`Error::InvalidInput`].

#![cfg_attr(not(test), allow(dead_code))]

use core::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::key_wrap::{AES_128, AES_256, AesKek, KeyWrap, KeyWrapPadded};
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepAlgorithm, OaepPrivateDecryptingKey,
    OaepPublicEncryptingKey, PrivateDecryptingKey, PublicEncryptingKey,
};
use zeroize::{Zeroize, Zeroizing};

use super::{GCM_NONCE_LEN, GCM_TAG_LEN, OaepHash, rustcrypto};
use crate::error::Error;
use crate::secret::{AesKey, SecretBytes};

pub(crate) use rustcrypto::argon2id;

/// Fills `out` from AWS-LC's CSPRNG (`RAND_bytes`: a per-thread DRBG seeded from the OS, which
/// AWS-LC itself reseeds after `fork`, detected by `MADV_WIPEONFORK` memory, not by pid).
pub(crate) fn os_random(out: &mut [u8]) {
    // The RNG failing is unrecoverable for a crypto library: continuing would produce
    // predictable keys.
    #[allow(clippy::expect_used)]
    aws_lc_rs::rand::fill(out).expect("the AWS-LC random number generator failed");
}

/// AES-256-GCM with its key schedule computed once.
pub(crate) struct Gcm(LessSafeKey);

impl Gcm {
    pub(crate) fn new(key: &AesKey) -> Self {
        // A 32-byte key always fits AES-256-GCM.
        #[allow(clippy::expect_used)]
        let k = UnboundKey::new(&AES_256_GCM, key.expose_secret()).expect("32-byte AES key");
        Self(LessSafeKey::new(k))
    }

    /// Encrypts `buf` in place and returns the tag.
    pub(crate) fn seal_in_place(
        &self,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
    ) -> [u8; GCM_TAG_LEN] {
        // Sealing only fails for inputs beyond 2^36 bytes, which the envelope's chunking rules
        // out; an error here is a bug, so fail closed.
        #[allow(clippy::expect_used)]
        let tag = self
            .0
            .seal_in_place_separate_tag(Nonce::assume_unique_for_key(*nonce), Aad::from(aad), buf)
            .expect("AES-GCM input within limits");
        let mut out = [0u8; GCM_TAG_LEN];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Encrypts `input` into `out` (same length) and returns the tag, without copying the
    /// plaintext into the output first.
    pub(crate) fn seal_to(
        &self,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        input: &[u8],
        out: &mut [u8],
    ) -> [u8; GCM_TAG_LEN] {
        let mut tag = [0u8; GCM_TAG_LEN];
        // Equal lengths are the caller's contract and inputs are far below 2^36 bytes; an error
        // here is a bug, so fail closed.
        #[allow(clippy::expect_used)]
        self.0
            .seal_out_of_place_scatter(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(aad),
                input,
                out,
                &[],
                &mut tag,
            )
            .expect("AES-GCM: equal lengths, input within limits");
        tag
    }

    /// Decrypts `buf` in place after checking `tag`. On failure `buf` is wiped.
    pub(crate) fn open_in_place(
        &self,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        buf: &mut [u8],
        tag: &[u8; GCM_TAG_LEN],
    ) -> Result<(), Error> {
        match self.0.open_in_place_separate_tag(
            Nonce::assume_unique_for_key(*nonce),
            Aad::from(aad),
            tag,
            buf,
        ) {
            Ok(_) => Ok(()),
            Err(_) => {
                buf.zeroize();
                Err(Error::Decryption)
            }
        }
    }
}

/// A key-encryption key for AES key wrap (RFC 3394) and with padding (RFC 5649).
///
/// `rc` serves the 32-byte hot path ([`super::kw32`]) and 192-bit KEKs; `lc` holds the key
/// bytes for AWS-LC, whose key-wrap object is consumed by each call and so is built per call.
pub(crate) struct Kek {
    rc: rustcrypto::Kek,
    lc: Option<Zeroizing<Vec<u8>>>,
}

impl Kek {
    pub(crate) fn new(key: &AesKey) -> Self {
        Self {
            rc: rustcrypto::Kek::new(key),
            lc: Some(Zeroizing::new(key.expose_secret().to_vec())),
        }
    }

    /// A KEK of 16, 24 or 32 bytes.
    pub(crate) fn from_slice(key: &[u8]) -> Result<Self, Error> {
        Ok(Self {
            rc: rustcrypto::Kek::from_slice(key)?,
            lc: matches!(key.len(), 16 | 32).then(|| Zeroizing::new(key.to_vec())),
        })
    }

    /// AWS-LC's key-wrap object for this KEK, or `None` for a 192-bit KEK.
    fn lc(&self) -> Option<AesKek> {
        let key = self.lc.as_ref()?;
        let cipher = if key.len() == 16 { &AES_128 } else { &AES_256 };
        AesKek::new(cipher, key).ok()
    }

    /// RFC 3394 wrap. The key must be a multiple of 8 bytes, at least 16.
    pub(crate) fn wrap(&self, key: &[u8]) -> Result<Vec<u8>, Error> {
        let Some(kek) = self.lc() else {
            return self.rc.wrap(key);
        };
        if key.len() < 16 || !key.len().is_multiple_of(8) {
            return Err(Error::InvalidInput(format!(
                "AES key wrap (RFC 3394) needs a multiple of 8 bytes, at least 16; got {}",
                key.len()
            )));
        }
        let mut out = vec![0u8; key.len() + 8];
        let n = kek
            .wrap(key, &mut out)
            .map_err(|_| Error::InvalidInput("AES key wrap: refused by AWS-LC".into()))?
            .len();
        out.truncate(n);
        Ok(out)
    }

    /// RFC 3394 wrap of a 32-byte key into a fixed array (the envelope's hot path).
    pub(crate) fn wrap_32(&self, key: &[u8; 32]) -> [u8; 40] {
        self.rc.wrap_32(key)
    }

    /// RFC 3394 wraps of `K` 32-byte keys, their AES calls interleaved.
    pub(crate) fn wrap_32_many<const K: usize>(&self, keys: &[[u8; 32]; K]) -> [[u8; 40]; K] {
        self.rc.wrap_32_many(keys)
    }

    /// RFC 3394 unwrap. Any failure is the opaque [`Error::Decryption`].
    pub(crate) fn unwrap(&self, wrapped: &[u8]) -> Result<SecretBytes, Error> {
        let Some(kek) = self.lc() else {
            return self.rc.unwrap(wrapped);
        };
        if wrapped.len() < 24 || !wrapped.len().is_multiple_of(8) {
            return Err(Error::Decryption);
        }
        let mut out = Zeroizing::new(vec![0u8; wrapped.len() - 8]);
        let n = kek
            .unwrap(wrapped, &mut out)
            .map_err(|_| Error::Decryption)?
            .len();
        out.truncate(n);
        Ok(SecretBytes::from(out))
    }

    /// RFC 3394 unwrap of a 40-byte blob into a 32-byte key (no heap allocation). Any failure
    /// is the opaque [`Error::Decryption`].
    pub(crate) fn unwrap_32(&self, wrapped: &[u8; 40]) -> Result<AesKey, Error> {
        self.rc.unwrap_32(wrapped)
    }

    /// RFC 5649 wrap (any length from 1 byte).
    pub(crate) fn wrap_padded(&self, key: &[u8]) -> Result<Vec<u8>, Error> {
        let Some(kek) = self.lc() else {
            return self.rc.wrap_padded(key);
        };
        if key.is_empty() || key.len() > u32::MAX as usize {
            return Err(Error::InvalidInput(
                "AES key wrap with padding needs 1 to 2^32-1 bytes".into(),
            ));
        }
        let mut out = vec![0u8; key.len().div_ceil(8) * 8 + 8];
        let n = kek
            .wrap_with_padding(key, &mut out)
            .map_err(|_| {
                Error::InvalidInput("AES key wrap with padding: refused by AWS-LC".into())
            })?
            .len();
        out.truncate(n);
        Ok(out)
    }

    /// RFC 5649 unwrap. Any failure is the opaque [`Error::Decryption`].
    pub(crate) fn unwrap_padded(&self, wrapped: &[u8]) -> Result<SecretBytes, Error> {
        let Some(kek) = self.lc() else {
            return self.rc.unwrap_padded(wrapped);
        };
        if wrapped.len() < 16 || !wrapped.len().is_multiple_of(8) {
            return Err(Error::Decryption);
        }
        let mut out = Zeroizing::new(vec![0u8; wrapped.len() - 8]);
        let n = kek
            .unwrap_with_padding(wrapped, &mut out)
            .map_err(|_| Error::Decryption)?
            .len();
        out.truncate(n);
        Ok(SecretBytes::from(out))
    }
}

/// An HKDF output length (what aws-lc-rs's `expand` takes).
struct Len(usize);

impl aws_lc_rs::hkdf::KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-SHA-256 (RFC 5869) into `out`.
pub(crate) fn hkdf_sha256(salt: &[u8], ikm: &[u8], info: &[&[u8]], out: &mut [u8]) {
    use aws_lc_rs::hkdf::{HKDF_SHA256, Salt};
    let prk = Salt::new(HKDF_SHA256, salt).extract(ikm);
    // Output lengths used by the crate are at most 64 bytes, far below 255 * 32.
    let r = prk
        .expand(info, Len(out.len()))
        .and_then(|okm| okm.fill(out));
    debug_assert!(r.is_ok());
}

/// HMAC-SHA-256 (RFC 2104).
pub(crate) fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    use aws_lc_rs::hmac;
    let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), msg);
    let mut out = [0u8; 32];
    out.copy_from_slice(tag.as_ref());
    out
}

/// SHA-256 of the concatenation of `parts` (no copy into one buffer).
pub(crate) fn sha256_parts(parts: &[&[u8]]) -> [u8; 32] {
    use aws_lc_rs::digest;
    let mut h = digest::Context::new(&digest::SHA256);
    for p in parts {
        h.update(p);
    }
    let mut out = [0u8; 32];
    out.copy_from_slice(h.finish().as_ref());
    out
}

/// SHA-256 of `data`.
pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    sha256_parts(&[data])
}

fn undersized() -> Error {
    Error::InvalidInput("the aws-lc backend refuses RSA keys under 2048 bits".into())
}

fn oaep_alg(hash: OaepHash) -> &'static OaepAlgorithm {
    match hash {
        OaepHash::Sha1 => &OAEP_SHA1_MGF1SHA1,
        OaepHash::Sha256 => &OAEP_SHA256_MGF1SHA256,
    }
}

/// An RSA private key. Decryption is constant time and blinded (AWS-LC).
pub(crate) struct RsaPrivate {
    /// `None` for a key under 2048 bits, which AWS-LC refuses.
    lc: Option<PrivateDecryptingKey>,
    /// The key as parsed by RustCrypto: kept only for keys AWS-LC refuses, so that they can be
    /// reported and exported.
    small: Option<rustcrypto::RsaPrivate>,
    public: RsaPublic,
}

impl RsaPrivate {
    fn from_lc(key: PrivateDecryptingKey) -> Result<Self, Error> {
        let spki = key
            .public_key()
            .as_der()
            .map_err(|_| Error::InvalidInput("RSA public key encoding".into()))?;
        let public = RsaPublic::from_spki_der(spki.as_ref())?;
        Ok(Self {
            lc: Some(key),
            small: None,
            public,
        })
    }

    /// Takes a key parsed by RustCrypto: into AWS-LC when it accepts it, else held as is.
    fn from_rc(key: rustcrypto::RsaPrivate) -> Result<Self, Error> {
        if key.bits() >= 2048 {
            let der = key.to_pkcs8_der()?;
            let lc = PrivateDecryptingKey::from_pkcs8(&der)
                .map_err(|e| Error::InvalidInput(format!("RSA private key refused: {e}")))?;
            return Self::from_lc(lc);
        }
        let public = RsaPublic::from_rc(key.public());
        Ok(Self {
            lc: None,
            small: Some(key),
            public,
        })
    }

    /// Generates a key of `bits` bits from the OS CSPRNG (2048, 3072 or 4096 in AWS-LC; a
    /// 1024-bit key, which AWS-LC cannot make, by RustCrypto).
    pub(crate) fn generate(bits: usize) -> Result<Self, Error> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            8192 => KeySize::Rsa8192,
            _ => {
                return Self::from_rc(rustcrypto::RsaPrivate::generate_with(
                    &mut super::OsRng,
                    bits,
                )?);
            }
        };
        let key = PrivateDecryptingKey::generate(size)
            .map_err(|_| Error::InvalidInput(format!("RSA-{bits} key generation failed")))?;
        Self::from_lc(key)
    }

    /// Generates a key of `bits` bits from `rng` (deterministic for a seeded RNG: the key is
    /// made by RustCrypto, then handed to AWS-LC).
    pub(crate) fn generate_with<R: rand_core::TryCryptoRng + ?Sized>(
        rng: &mut R,
        bits: usize,
    ) -> Result<Self, Error> {
        Self::from_rc(rustcrypto::RsaPrivate::generate_with(rng, bits)?)
    }

    /// Parses a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`).
    pub(crate) fn from_pem(pem: &str) -> Result<Self, Error> {
        Self::from_rc(rustcrypto::RsaPrivate::from_pem(pem)?)
    }

    /// Parses a DER PKCS#8 private key.
    pub(crate) fn from_pkcs8_der(der: &[u8]) -> Result<Self, Error> {
        match PrivateDecryptingKey::from_pkcs8(der) {
            Ok(k) => Self::from_lc(k),
            // Refused: a key under 2048 bits is held as RustCrypto parsed it; anything else
            // is an error.
            Err(_) => match rustcrypto::RsaPrivate::from_pkcs8_der(der) {
                Ok(k) if k.bits() < 2048 => Self::from_rc(k),
                _ => Err(Error::InvalidInput(
                    "not an RSA private key in PKCS#8 DER form".into(),
                )),
            },
        }
    }

    /// Encodes the private key as PKCS#8 DER, in a wiping buffer.
    pub(crate) fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, Error> {
        match (&self.lc, &self.small) {
            (Some(k), _) => k
                .as_der()
                .map(|d| Zeroizing::new(d.as_ref().to_vec()))
                .map_err(|_| Error::InvalidInput("PKCS#8 encoding failed".into())),
            (None, Some(k)) => k.to_pkcs8_der(),
            (None, None) => Err(undersized()),
        }
    }

    /// The public half.
    pub(crate) fn public(&self) -> RsaPublic {
        self.public.clone()
    }

    /// Modulus size in bits.
    pub(crate) fn bits(&self) -> usize {
        self.public.bits()
    }

    /// The big-endian CRT components a PKCS#11 token needs to import the key (see the
    /// RustCrypto backend); read from the key's PKCS#8 encoding.
    #[cfg(feature = "pkcs11")]
    pub(crate) fn crt_components(&self) -> Option<[Zeroizing<Vec<u8>>; 8]> {
        let der = self.to_pkcs8_der().ok()?;
        rustcrypto::RsaPrivate::from_pkcs8_der(&der)
            .ok()?
            .crt_components()
    }

    /// RSA-OAEP decryption (RFC 8017 §7.1.2) with the label `label` (empty for key
    /// wrapping): AWS-LC's `EVP_PKEY_decrypt`, blinded, with constant-time padding checks
    /// (including the leading zero octet, step 3.g). Any failure is the opaque
    /// [`Error::Decryption`]; a key under 2048 bits gives [`Error::InvalidInput`].
    pub(crate) fn decrypt_oaep(
        &self,
        hash: OaepHash,
        ct: &[u8],
        label: &[u8],
    ) -> Result<SecretBytes, Error> {
        let key = self.lc.as_ref().ok_or_else(undersized)?;
        let key = OaepPrivateDecryptingKey::new(key.clone()).map_err(|_| Error::Decryption)?;
        let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
        let label = (!label.is_empty()).then_some(label);
        let n = key
            .decrypt(oaep_alg(hash), ct, &mut out, label)
            .map_err(|_| Error::Decryption)?
            .len();
        out.truncate(n);
        Ok(SecretBytes::from(out))
    }
}

impl fmt::Debug for RsaPrivate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPrivate")
            .field("bits", &self.bits())
            .finish_non_exhaustive()
    }
}

/// An RSA public key: parsed and encoded by RustCrypto's `rsa` (components, PEM, SPKI),
/// encrypting in AWS-LC.
#[derive(Clone)]
pub struct RsaPublic {
    rc: rustcrypto::RsaPublic,
    /// `None` for a key AWS-LC refuses (under 2048 bits).
    lc: Option<PublicEncryptingKey>,
}

impl PartialEq for RsaPublic {
    fn eq(&self, other: &Self) -> bool {
        self.rc == other.rc
    }
}

impl Eq for RsaPublic {}

impl RsaPublic {
    fn from_rc(rc: rustcrypto::RsaPublic) -> Self {
        let lc = PublicEncryptingKey::from_der(&rc.to_spki_der()).ok();
        Self { rc, lc }
    }

    /// Builds a public key from its big-endian modulus and exponent (what an HSM reports).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the values do not form a valid RSA public key.
    pub fn from_components(modulus: &[u8], exponent: &[u8]) -> Result<Self, Error> {
        rustcrypto::RsaPublic::from_components(modulus, exponent).map(Self::from_rc)
    }

    /// Parses a PEM public key: SPKI (`BEGIN PUBLIC KEY`) or PKCS#1 (`BEGIN RSA PUBLIC KEY`).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the text is not an RSA public key in either form.
    pub fn from_pem(pem: &str) -> Result<Self, Error> {
        rustcrypto::RsaPublic::from_pem(pem).map(Self::from_rc)
    }

    /// Parses a DER SPKI public key.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the bytes are not an RSA SPKI structure.
    pub fn from_spki_der(der: &[u8]) -> Result<Self, Error> {
        rustcrypto::RsaPublic::from_spki_der(der).map(Self::from_rc)
    }

    /// Encodes as SPKI PEM (`BEGIN PUBLIC KEY`).
    pub fn to_pem(&self) -> String {
        self.rc.to_pem()
    }

    /// Big-endian modulus.
    pub fn modulus(&self) -> Vec<u8> {
        self.rc.modulus()
    }

    /// Big-endian public exponent.
    pub fn exponent(&self) -> Vec<u8> {
        self.rc.exponent()
    }

    /// Modulus size in bits.
    pub fn bits(&self) -> usize {
        self.rc.bits()
    }

    /// RSA-OAEP encryption (empty label for key wrapping), in AWS-LC.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if the message is too long for the key and hash, or AWS-LC
    /// refuses the key (under 2048 or over 8192 bits).
    pub fn encrypt_oaep(&self, hash: OaepHash, pt: &[u8], label: &[u8]) -> Result<Vec<u8>, Error> {
        let refused = || {
            Error::InvalidInput(format!(
                "the aws-lc backend refuses this {}-bit RSA public key (AWS-LC takes 2048 to \
                 8192 bits)",
                self.bits()
            ))
        };
        let key = self.lc.clone().ok_or_else(refused)?;
        let key = OaepPublicEncryptingKey::new(key).map_err(|_| refused())?;
        let alg = oaep_alg(hash);
        if pt.len() > key.max_plaintext_size(alg) {
            return Err(Error::InvalidInput(format!(
                "RSA-OAEP encryption: a {}-bit key takes at most {} bytes with {hash:?}, got {}",
                self.bits(),
                key.max_plaintext_size(alg),
                pt.len()
            )));
        }
        let mut out = vec![0u8; key.ciphertext_size()];
        let label = (!label.is_empty()).then_some(label);
        let n = key
            .encrypt(alg, pt, &mut out, label)
            .map_err(|_| Error::InvalidInput("RSA-OAEP encryption failed".into()))?
            .len();
        out.truncate(n);
        Ok(out)
    }
}

impl fmt::Debug for RsaPublic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaPublic")
            .field("bits", &self.bits())
            .finish()
    }
}
