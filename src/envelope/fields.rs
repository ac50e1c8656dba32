//! Sealed fields: small values (access policies, resource metadata, input URLs, token keys)
//! sealed under a subkey of the account key and bound to the account and a field context.
//!
//! Version 2 (written): `0x02 || account-key version (u32 BE) || salt (16) || nonce (12) ||
//! ciphertext || tag (16)`, each value under its own key `SK = HKDF-SHA-256(salt, FK,
//! "byok sealed field v2")`, so no key ever sees more than one value and the 2^32 limit of NIST
//! SP 800-38D on random nonces per key holds by construction. Version 1 (still opened):
//! `0x01 || version || nonce (12) || ciphertext || tag`, under `FK` directly.
//!
//! `FK = HKDF-SHA-256(salt = "byok sealed fields v1", ikm = account key, info = len(account id)
//! || account id || key version)`; the associated data is `format byte || key version ||
//! len(account id) || account id || field context`. See `docs/FORMAT.md` §3.

use zeroize::Zeroize;

use super::keys::PreparedKey;
use crate::crypto::{GCM_NONCE_LEN, GCM_TAG_LEN, Gcm, fill_random, hkdf_sha256};
use crate::error::Error;
use crate::secret::AesKey;

const FIELD_V1: u8 = 1;
const FIELD_V2: u8 = 2;
/// Bytes of the per-value salt of a version-2 field.
const SALT_LEN: usize = 16;
const V1_HEADER_LEN: usize = 1 + 4 + GCM_NONCE_LEN;
const V2_HEADER_LEN: usize = 1 + 4 + SALT_LEN + GCM_NONCE_LEN;
const V2_KDF_INFO: &[u8] = b"byok sealed field v2";
/// The largest value [`PreparedKey::seal_field`] accepts (1 MiB): fields are small.
pub const MAX_FIELD_LEN: usize = 1 << 20;

fn aad(format: u8, key: &PreparedKey, version: u32, context: &[u8]) -> Vec<u8> {
    let account = key.account_id().as_bytes();
    let mut aad = Vec::with_capacity(6 + account.len() + context.len());
    aad.push(format);
    aad.extend_from_slice(&version.to_be_bytes());
    aad.push(account.len() as u8);
    aad.extend_from_slice(account);
    aad.extend_from_slice(context);
    aad
}

/// The key of one version-2 value.
fn value_key(fk: &AesKey, salt: &[u8]) -> Gcm {
    let mut k = [0u8; 32];
    hkdf_sha256(salt, fk.expose_secret(), &[V2_KDF_INFO], &mut k);
    let key = AesKey::from_bytes(k);
    k.zeroize();
    Gcm::new(&key)
}

impl PreparedKey {
    /// Seals a small value for the field `field_context` (e.g. `b"policy/contentKey/7"`).
    /// It opens only with this account's key of this version and the same context. Each value
    /// gets its own key (derived from a random 128-bit salt), so any number of values can be
    /// sealed under one account key.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `value` is longer than [`MAX_FIELD_LEN`];
    /// [`Error::KeyInaccessible`] / [`Error::AccountNotFound`] if the account layer revoked
    /// this key.
    pub fn seal_field(&self, field_context: &[u8], value: &[u8]) -> Result<Vec<u8>, Error> {
        self.check_live()?;
        if value.len() > MAX_FIELD_LEN {
            return Err(Error::InvalidInput(format!(
                "a sealed field holds at most {MAX_FIELD_LEN} bytes, got {}",
                value.len()
            )));
        }
        let mut random = [0u8; SALT_LEN + GCM_NONCE_LEN];
        fill_random(&mut random);
        let (salt, nonce) = random.split_at(SALT_LEN);
        let mut out = Vec::with_capacity(V2_HEADER_LEN + value.len() + GCM_TAG_LEN);
        out.push(FIELD_V2);
        out.extend_from_slice(&self.key_version().to_be_bytes());
        out.extend_from_slice(&random);
        out.extend_from_slice(value);
        let mut n = [0u8; GCM_NONCE_LEN];
        n.copy_from_slice(nonce);
        let tag = value_key(&self.field_key, salt).seal_in_place(
            &n,
            &aad(FIELD_V2, self, self.key_version(), field_context),
            &mut out[V2_HEADER_LEN..],
        );
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a value sealed by [`seal_field`](Self::seal_field) (format 2, or format 1 of
    /// earlier versions of this crate) with the same field context.
    ///
    /// # Errors
    /// [`Error::Decryption`] if the value was sealed for another field, account or key version,
    /// or was altered or truncated in any way; [`Error::KeyInaccessible`] /
    /// [`Error::AccountNotFound`] if the account layer revoked this key.
    pub fn open_field(&self, field_context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Error> {
        self.check_live()?;
        let version = field_key_version(sealed)?;
        if version != self.key_version() {
            return Err(Error::Decryption);
        }
        let format = sealed[0];
        let header = if format == FIELD_V2 {
            V2_HEADER_LEN
        } else {
            V1_HEADER_LEN
        };
        let mut nonce = [0u8; GCM_NONCE_LEN];
        nonce.copy_from_slice(&sealed[header - GCM_NONCE_LEN..header]);
        let body_end = sealed.len() - GCM_TAG_LEN;
        let mut tag = [0u8; GCM_TAG_LEN];
        tag.copy_from_slice(&sealed[body_end..]);
        let mut out = sealed[header..body_end].to_vec();
        let aad = aad(format, self, version, field_context);
        if format == FIELD_V2 {
            value_key(&self.field_key, &sealed[5..5 + SALT_LEN])
                .open_in_place(&nonce, &aad, &mut out, &tag)?;
        } else {
            self.fields.open_in_place(&nonce, &aad, &mut out, &tag)?;
        }
        Ok(out)
    }
}

/// The version of the account key a sealed field needs, read without any key.
///
/// # Errors
/// [`Error::Decryption`] if `sealed` is not a sealed field of a format this version reads.
pub fn field_key_version(sealed: &[u8]) -> Result<u32, Error> {
    let min = match sealed.first() {
        Some(&FIELD_V1) => V1_HEADER_LEN,
        Some(&FIELD_V2) => V2_HEADER_LEN,
        _ => return Err(Error::Decryption),
    };
    match sealed {
        [_, a, b, c, d, ..] if sealed.len() >= min + GCM_TAG_LEN => {
            Ok(u32::from_be_bytes([*a, *b, *c, *d]))
        }
        _ => Err(Error::Decryption),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::envelope::AccountKey;

    #[test]
    fn every_value_is_sealed_under_its_own_key() {
        let ak = AccountKey::new("ak", 3, AesKey::from_bytes([5; 32])).unwrap();
        let k = PreparedKey::new("acct", &ak).unwrap();
        let mut salts = HashSet::new();
        for _ in 0..10_000 {
            let s = k.seal_field(b"f", b"same value").unwrap();
            assert_eq!(s[0], FIELD_V2);
            assert_eq!(s.len(), V2_HEADER_LEN + 10 + GCM_TAG_LEN);
            assert!(salts.insert(s[5..5 + SALT_LEN].to_vec()), "a salt repeated");
            assert_eq!(k.open_field(b"f", &s).unwrap(), b"same value");
        }
        // A version-2 value under the field key itself (as version 1 seals) does not open:
        // the per-value key is not optional.
        let s = k.seal_field(b"f", b"v").unwrap();
        let mut body = s[V2_HEADER_LEN..s.len() - GCM_TAG_LEN].to_vec();
        let mut nonce = [0u8; GCM_NONCE_LEN];
        nonce.copy_from_slice(&s[V2_HEADER_LEN - GCM_NONCE_LEN..V2_HEADER_LEN]);
        let mut tag = [0u8; GCM_TAG_LEN];
        tag.copy_from_slice(&s[s.len() - GCM_TAG_LEN..]);
        assert!(
            k.fields
                .open_in_place(&nonce, &aad(FIELD_V2, &k, 3, b"f"), &mut body, &tag)
                .is_err()
        );
    }
}
