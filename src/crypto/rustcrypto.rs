//! The RustCrypto backend of the crypto core.

// The core offers every primitive the format and providers may need (RFC 5649 KWP, 128- and
// 192-bit KEKs, one-shot GCM), all checked by Wycheproof; not each has a non-test caller yet.
#![cfg_attr(any(not(test), feature = "aws-lc"), allow(dead_code))]
// Under the aws-lc backend this module serves `awslc.rs` only (PEM parsing, seeded key
// generation, Argon2id, 192-bit key wrap), so its public `RsaPublic` is not re-exported.
#![cfg_attr(feature = "aws-lc", allow(unreachable_pub))]

use core::fmt;

use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use aes_kw::aes::{Aes128, Aes192, Aes256};
use aes_kw::{AesKw, AesKwp, InnerInit};
use rsa::pkcs1::{DecodeRsaPrivateKey, DecodeRsaPublicKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use rsa::{BoxedUint, Oaep};
use sha2::{Digest, Sha256};
use subtle::{ConditionallySelectable, ConstantTimeEq};
use zeroize::{Zeroize, Zeroizing};

use super::{GCM_NONCE_LEN, GCM_TAG_LEN, OaepHash, OsRng, kw32};
use crate::error::Error;
use crate::secret::{AesKey, SecretBytes};

/// Fills `out` from the operating system's CSPRNG (`getrandom(2)` on Linux): no state in this
/// process, so nothing a forked child could repeat.
pub(crate) fn os_random(out: &mut [u8]) {
    // The OS RNG failing is unrecoverable for a crypto library: continuing would produce
    // predictable keys.
    #[allow(clippy::expect_used)]
    getrandom::fill(out).expect("the operating system random number generator failed");
}

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
}

/// A key-encryption key for AES key wrap (RFC 3394) and with padding (RFC 5649).
///
/// The crate only ever uses 256-bit KEKs; 128- and 192-bit ones exist so that the full
/// Wycheproof suites run through this wrapper. The one key schedule serves both modes: the
/// 32-byte hot path runs in [`super::kw32`], every other call through `aes-kw`.
#[allow(clippy::large_enum_variant)] // built once per key; boxing would add an allocation
pub(crate) enum Kek {
    A128(Aes128),
    A192(Aes192),
    A256(Aes256),
}

/// Runs `$body` with `$c` bound to the KEK's cipher, whatever its size.
macro_rules! with_cipher {
    ($kek:expr, |$c:ident| $body:expr) => {
        match $kek {
            Kek::A128($c) => $body,
            Kek::A192($c) => $body,
            Kek::A256($c) => $body,
        }
    };
}

impl Kek {
    pub(crate) fn new(key: &AesKey) -> Self {
        Self::A256(Aes256::new(key.expose_secret().into()))
    }

    /// A KEK of 16, 24 or 32 bytes.
    pub(crate) fn from_slice(key: &[u8]) -> Result<Self, Error> {
        Ok(match key.len() {
            16 => Self::A128(Aes128::new_from_slice(key).map_err(|_| bad_kek())?),
            24 => Self::A192(Aes192::new_from_slice(key).map_err(|_| bad_kek())?),
            32 => Self::A256(Aes256::new_from_slice(key).map_err(|_| bad_kek())?),
            _ => return Err(bad_kek()),
        })
    }

    /// RFC 3394 wrap. The key must be a non-zero multiple of 8 bytes, at least 16.
    pub(crate) fn wrap(&self, key: &[u8]) -> Result<Vec<u8>, Error> {
        if key.len() < 16 || !key.len().is_multiple_of(8) {
            return Err(Error::InvalidInput(format!(
                "AES key wrap (RFC 3394) needs a multiple of 8 bytes, at least 16; got {}",
                key.len()
            )));
        }
        let mut out = vec![0u8; key.len() + 8];
        with_cipher!(self, |c| AesKw::inner_init(c.clone())
            .wrap_key(key, &mut out)
            .map(|_| ()))
        .map_err(|e| Error::InvalidInput(format!("AES key wrap: {e}")))?;
        Ok(out)
    }

    /// RFC 3394 wrap of a 32-byte key into a fixed array (the envelope's hot path).
    pub(crate) fn wrap_32(&self, key: &[u8; 32]) -> [u8; 40] {
        let [w] = self.wrap_32_many(core::array::from_ref(key));
        w
    }

    /// RFC 3394 wraps of `K` 32-byte keys, interleaved so that their AES calls overlap: eight
    /// cost about 1.4 times one.
    pub(crate) fn wrap_32_many<const K: usize>(&self, keys: &[[u8; 32]; K]) -> [[u8; 40]; K] {
        with_cipher!(self, |c| kw32::wrap_many(c, keys))
    }

    /// RFC 3394 unwrap. Any failure is the opaque [`Error::Decryption`].
    pub(crate) fn unwrap(&self, wrapped: &[u8]) -> Result<SecretBytes, Error> {
        if wrapped.len() < 24 || !wrapped.len().is_multiple_of(8) {
            return Err(Error::Decryption);
        }
        let mut out = Zeroizing::new(vec![0u8; wrapped.len() - 8]);
        with_cipher!(self, |c| AesKw::inner_init(c.clone())
            .unwrap_key(wrapped, &mut out)
            .map(|_| ()))
        .map_err(|_| Error::Decryption)?;
        Ok(SecretBytes::from(out))
    }

    /// RFC 3394 unwrap of a 40-byte blob into a 32-byte key (the envelope's hot path: no
    /// heap allocation). Any failure is the opaque [`Error::Decryption`].
    pub(crate) fn unwrap_32(&self, wrapped: &[u8; 40]) -> Result<AesKey, Error> {
        let mut out = Zeroizing::new([0u8; 32]);
        if !with_cipher!(self, |c| kw32::unwrap(c, wrapped, &mut out)) {
            return Err(Error::Decryption);
        }
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
        let n = with_cipher!(self, |c| AesKwp::inner_init(c.clone())
            .wrap_key(key, &mut out)
            .map(|s| s.len()))
        .map_err(|e| Error::InvalidInput(format!("AES key wrap with padding: {e}")))?;
        out.truncate(n);
        Ok(out)
    }

    /// RFC 5649 unwrap. Any failure is the opaque [`Error::Decryption`].
    pub(crate) fn unwrap_padded(&self, wrapped: &[u8]) -> Result<SecretBytes, Error> {
        if wrapped.len() < 16 || !wrapped.len().is_multiple_of(8) {
            return Err(Error::Decryption);
        }
        let mut out = Zeroizing::new(vec![0u8; wrapped.len() - 8]);
        let n = with_cipher!(self, |c| AesKwp::inner_init(c.clone())
            .unwrap_key(wrapped, &mut out)
            .map(|s| s.len()))
        .map_err(|_| Error::Decryption)?;
        out.truncate(n);
        Ok(SecretBytes::from(out))
    }
}

fn bad_kek() -> Error {
    Error::InvalidInput("an AES key-encryption key is 16, 24 or 32 bytes".into())
}

/// XORs MGF1(`seed`, `out.len()`) (RFC 8017 §B.2.1) with hash `D` into `out`.
fn mgf1_xor<D: Digest>(out: &mut [u8], seed: &[u8]) {
    for (counter, chunk) in (0u32..).zip(out.chunks_mut(<D as Digest>::output_size())) {
        let mut h = D::new();
        h.update(seed);
        h.update(counter.to_be_bytes());
        let mask = h.finalize();
        for (o, m) in chunk.iter_mut().zip(mask.iter()) {
            *o ^= m;
        }
    }
}

/// Argon2id (RFC 9106, version 0x13) of `password` with `salt` into `out`, with memory
/// `m_kib` KiB, `t` passes and `p` lanes.
pub(crate) fn argon2id(
    password: &[u8],
    salt: &[u8],
    (m_kib, t, p): (u32, u32, u32),
    out: &mut [u8; 32],
) -> Result<(), Error> {
    let params = argon2::Params::new(m_kib, t, p, Some(32))
        .map_err(|e| Error::InvalidInput(format!("Argon2id parameters: {e}")))?;
    argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params)
        .hash_password_into(password, salt, out)
        .map_err(|e| Error::InvalidInput(format!("Argon2id: {e}")))
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
pub(crate) struct RsaPrivate(rsa::PrivateKey);

/// An RSA public key.
#[derive(Clone, PartialEq, Eq)]
pub struct RsaPublic(rsa::PublicKey);

impl RsaPrivate {
    /// Generates a key of `bits` bits (1024, 2048, 3072 or 4096 are what vaults offer) from
    /// the OS CSPRNG.
    pub(crate) fn generate(bits: usize) -> Result<Self, Error> {
        Self::generate_with(&mut OsRng, bits)
    }

    /// Generates a key of `bits` bits from `rng` (deterministic for a seeded RNG).
    pub(crate) fn generate_with<R: rand_core::TryCryptoRng + ?Sized>(
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
                Error::InvalidInput("not an RSA private key in PKCS#8 or PKCS#1 PEM form".into())
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
    pub(crate) fn public(&self) -> RsaPublic {
        RsaPublic(self.0.to_public_key())
    }

    /// Modulus size in bits.
    pub(crate) fn bits(&self) -> usize {
        self.0.size() * 8
    }

    /// The big-endian components `[n, e, d, p, q, d mod (p-1), d mod (q-1), q^-1 mod p]` in
    /// wiping buffers (what a PKCS#11 token needs to import the key). `None` for a key with
    /// more than two primes or without precomputed CRT values.
    #[cfg(any(feature = "pkcs11", feature = "azure"))]
    pub(crate) fn crt_components(&self) -> Option<[Zeroizing<Vec<u8>>; 8]> {
        use rsa::traits::PrivateKeyParts;
        let b = |x: &BoxedUint| Zeroizing::new(x.to_be_bytes_trimmed_vartime().into_vec());
        let primes = self.0.primes();
        if primes.len() != 2 {
            return None;
        }
        let qinv = self.0.crt_coefficient()?;
        Some([
            b(self.0.n().as_ref()),
            b(self.0.e()),
            b(self.0.d()),
            b(primes[0].as_ref()),
            b(primes[1].as_ref()),
            b(self.0.dp()?),
            b(self.0.dq()?),
            b(&qinv),
        ])
    }

    /// RSA-OAEP decryption (RFC 8017 §7.1.2) with the label `label` (empty for key
    /// wrapping). Blinded. Any failure is the opaque [`Error::Decryption`].
    ///
    /// The RSA primitive comes from the `rsa` crate (blinded, with the CRT fault check); the
    /// OAEP decoding is ours because `rsa` 0.10 ignores the leading octet `Y` of the encoded
    /// message, which RFC 8017 step 3.g requires to be zero (Wycheproof tcId 23). Every check
    /// is constant-time and they are combined before the single branch.
    pub(crate) fn decrypt_oaep(
        &self,
        hash: OaepHash,
        ct: &[u8],
        label: &[u8],
    ) -> Result<SecretBytes, Error> {
        match hash {
            OaepHash::Sha256 => self.decrypt_oaep_with::<Sha256>(ct, label),
            OaepHash::Sha1 => self.decrypt_oaep_with::<sha1::Sha1>(ct, label),
        }
    }

    fn decrypt_oaep_with<D: Digest>(&self, ct: &[u8], label: &[u8]) -> Result<SecretBytes, Error> {
        let k = self.0.size();
        let h_len = <D as Digest>::output_size();
        if ct.len() != k || k < 2 * h_len + 2 {
            return Err(Error::Decryption);
        }
        let c = BoxedUint::from_be_slice(ct, self.0.n_bits_precision())
            .map_err(|_| Error::Decryption)?;
        let m = rsa::hazmat::rsa_decrypt_and_check(&self.0, Some(&mut OsRng), &c)
            .map_err(|_| Error::Decryption)?;
        let m = Zeroizing::new(m);
        let bytes = Zeroizing::new(m.to_be_bytes());
        let excess = bytes.len().checked_sub(k).ok_or(Error::Decryption)?;
        let mut em = Zeroizing::new(bytes[excess..].to_vec());
        let (y, rest) = em.split_at_mut(1);
        let (seed, db) = rest.split_at_mut(h_len);
        mgf1_xor::<D>(seed, db); // seed = maskedSeed ^ MGF(maskedDB)
        mgf1_xor::<D>(db, seed); // DB = maskedDB ^ MGF(seed)
        let l_hash = D::digest(label);
        let mut valid = y[0].ct_eq(&0) & db[..h_len].ct_eq(l_hash.as_slice());
        // DB = lHash || PS (zero or more 0x00) || 0x01 || M
        let mut looking = subtle::Choice::from(1);
        let mut index = 0u32;
        let mut bad_padding = subtle::Choice::from(0);
        for (i, b) in db[h_len..].iter().enumerate() {
            let is0 = b.ct_eq(&0);
            let is1 = b.ct_eq(&1);
            index.conditional_assign(&(i as u32), looking & is1);
            bad_padding |= looking & !is0 & !is1;
            looking &= !is1;
        }
        valid &= !bad_padding & !looking;
        if !bool::from(valid) {
            return Err(Error::Decryption);
        }
        Ok(SecretBytes::new(db[h_len + index as usize + 1..].to_vec()))
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

    /// Encodes as SPKI DER.
    #[cfg_attr(not(feature = "aws-lc"), allow(dead_code))] // the aws-lc backend's input
    pub(crate) fn to_spki_der(&self) -> Vec<u8> {
        // Encoding a valid key cannot fail.
        self.0
            .to_public_key_der()
            .map(|d| d.into_vec())
            .unwrap_or_default()
    }

    /// Encodes as SPKI PEM (`BEGIN PUBLIC KEY`).
    pub fn to_pem(&self) -> String {
        // Encoding a valid key into PEM cannot fail.
        self.0.to_public_key_pem(LineEnding::LF).unwrap_or_default()
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
        let mut rng = OsRng;
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
