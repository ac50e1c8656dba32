//! The crypto core: the only module that calls cryptographic primitives.
//!
//! Everything above this module (envelope, providers, accounts) uses the small types here —
//! [`Gcm`], [`Kek`], [`RsaPrivate`], [`RsaPublic`], [`hkdf_sha256`], [`fill_random`] — and never a
//! cryptographic crate directly.
//!
//! # Backends
//!
//! Two backends provide the same items; the choice is made at compile time:
//!
//! - `rustcrypto.rs` (the default): RustCrypto's `aes-gcm`, `aes-kw`, `rsa`, `sha2`, `hkdf`,
//!   with randomness from the OS (`getrandom(2)`). The stack the crate was specified on.
//! - `awslc.rs` (feature `aws-lc`): aws-lc-rs, i.e. AWS-LC — faster AES-GCM (AVX2/AVX-512
//!   code paths) and constant-time, blinded RSA-OAEP without the `rsa` crate's open timing
//!   advisory (RUSTSEC-2023-0071, "Marvin"); randomness from AWS-LC's fork-safe DRBG. It
//!   refuses RSA keys under 2048 bits, and is not built in FIPS mode (`docs/SECURITY.md`).
//!
//! Both read and write the same bytes: objects, wrapped keys and vault files written under one
//! backend open under the other (`tests/cross_backend.rs`). The 32-byte AES key-wrap fast path
//! (`kw32.rs`) serves both. The RustCrypto module is compiled (and linted) in both builds,
//! because the aws-lc backend reuses its PEM parsing, its deterministic key generation for
//! seeded test vaults and its Argon2id.

mod ct;
mod kw32;
mod record;
mod rng;
mod rustcrypto;

#[cfg(feature = "aws-lc")]
mod awslc;

#[cfg(feature = "aws-lc")]
use awslc as backend;
#[cfg(not(feature = "aws-lc"))]
use rustcrypto as backend;

pub use backend::RsaPublic;
#[allow(unused_imports)] // used by optional providers
pub(crate) use backend::{
    Gcm, Kek, RsaPrivate, argon2id, hkdf_sha256, hmac_sha256, sha256, sha256_parts,
};
pub(crate) use ct::{ct_eq, ct_eq_32};
#[cfg_attr(not(unix), allow(unused_imports))] // the file vault is unix-only
pub(crate) use record::{check_value, checksum, open_record, seal_record};
pub(crate) use rng::{ForkGuard, OsRng, SeededRng, fill_random, fork_guard, warm_up};

/// The name of the compiled crypto backend: `"aws-lc"` or `"rustcrypto"`.
pub const BACKEND: &str = if cfg!(feature = "aws-lc") {
    "aws-lc"
} else {
    "rustcrypto"
};

/// Length of an AES-GCM nonce (96 bits).
pub(crate) const GCM_NONCE_LEN: usize = 12;
/// Length of an AES-GCM tag (128 bits).
pub(crate) const GCM_TAG_LEN: usize = 16;

/// The hash used by RSA-OAEP (for both the label hash and MGF1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OaepHash {
    /// SHA-1, for the `RSA-OAEP` algorithm (HSM tokens without SHA-256 OAEP).
    Sha1,
    /// SHA-256, for the `RSA-OAEP-256` algorithm (the default).
    Sha256,
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod wycheproof_tests;

/// The one-shot forms, the same for both backends over their in-place seal and open.
impl Gcm {
    /// One-shot seal: returns `ciphertext || tag`.
    pub(crate) fn seal(&self, nonce: &[u8; GCM_NONCE_LEN], aad: &[u8], pt: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(pt.len() + GCM_TAG_LEN);
        out.extend_from_slice(pt);
        let tag = self.seal_in_place(nonce, aad, &mut out);
        out.extend_from_slice(&tag);
        out
    }

    /// One-shot open of `ciphertext || tag`.
    ///
    /// # Errors
    /// [`crate::Error::Decryption`] for input shorter than a tag or that does not authenticate.
    pub(crate) fn open(
        &self,
        nonce: &[u8; GCM_NONCE_LEN],
        aad: &[u8],
        ct: &[u8],
    ) -> Result<zeroize::Zeroizing<Vec<u8>>, crate::Error> {
        let body_len = ct
            .len()
            .checked_sub(GCM_TAG_LEN)
            .ok_or(crate::Error::Decryption)?;
        let (body, tag) = ct.split_at(body_len);
        let mut tag_arr = [0u8; GCM_TAG_LEN];
        tag_arr.copy_from_slice(tag);
        let mut out = zeroize::Zeroizing::new(body.to_vec());
        self.open_in_place(nonce, aad, &mut out, &tag_arr)?;
        Ok(out)
    }
}
