//! The crypto core: the only module that calls cryptographic primitives.
//!
//! Everything above this module (envelope, providers, accounts) uses the small types here —
//! [`Gcm`], [`Kek`], [`RsaPrivate`], [`RsaPublic`], [`hkdf_sha256`], [`fill_random`] — and never a
//! RustCrypto crate directly. The implementation lives in one backend module
//! (`rustcrypto.rs`); a second backend (aws-lc-rs, for speed and constant-time RSA) can be added
//! behind a feature by providing the same items.

mod ct;
mod kw32;
mod record;
mod rng;
mod rustcrypto;

pub(crate) use ct::{ct_eq, ct_eq_32};
#[cfg_attr(not(unix), allow(unused_imports))] // the file vault is unix-only
pub(crate) use record::{check_value, checksum, open_record, seal_record};
pub(crate) use rng::{SeededRng, ThreadRng, fill_random};
pub(crate) use rustcrypto::RsaPrivate;
pub use rustcrypto::RsaPublic;
pub(crate) use rustcrypto::{Gcm, Kek, argon2id, hkdf_sha256, sha256_parts};
#[allow(unused_imports)] // used by optional providers
pub(crate) use rustcrypto::{hmac_sha256, sha256};

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
