//! Sealed fields: small values (access policies, resource metadata, input URLs, token keys)
//! sealed under a subkey of the account key and bound to the account and a field context.
//!
//! Layout: `0x01 (version) || account-key version (u32 BE) || nonce (12) || ciphertext || tag
//! (16)`. The key is HKDF-SHA-256(salt = "byok sealed fields v1", ikm = account key,
//! info = len(account id) || account id || key version); the associated data is
//! `0x01 || key version || len(account id) || account id || field context`.

use super::keys::PreparedKey;
use crate::crypto::{GCM_NONCE_LEN, GCM_TAG_LEN, fill_random};
use crate::error::Error;

const FIELD_V1: u8 = 1;
const FIELD_HEADER_LEN: usize = 1 + 4 + GCM_NONCE_LEN;
/// The largest value [`PreparedKey::seal_field`] accepts (1 MiB): fields are small.
pub const MAX_FIELD_LEN: usize = 1 << 20;

fn aad(key: &PreparedKey, version: u32, context: &[u8]) -> Vec<u8> {
    let account = key.account_id().as_bytes();
    let mut aad = Vec::with_capacity(6 + account.len() + context.len());
    aad.push(FIELD_V1);
    aad.extend_from_slice(&version.to_be_bytes());
    aad.push(account.len() as u8);
    aad.extend_from_slice(account);
    aad.extend_from_slice(context);
    aad
}

impl PreparedKey {
    /// Seals a small value for the field `field_context` (e.g. `b"policy/contentKey/7"`).
    /// It opens only with this account's key of this version and the same context.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `value` is longer than [`MAX_FIELD_LEN`].
    pub fn seal_field(&self, field_context: &[u8], value: &[u8]) -> Result<Vec<u8>, Error> {
        self.check_live()?;
        if value.len() > MAX_FIELD_LEN {
            return Err(Error::InvalidInput(format!(
                "a sealed field holds at most {MAX_FIELD_LEN} bytes, got {}",
                value.len()
            )));
        }
        let mut nonce = [0u8; GCM_NONCE_LEN];
        fill_random(&mut nonce);
        let mut out = Vec::with_capacity(FIELD_HEADER_LEN + value.len() + GCM_TAG_LEN);
        out.push(FIELD_V1);
        out.extend_from_slice(&self.key_version().to_be_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(value);
        let tag = self.fields.seal_in_place(
            &nonce,
            &aad(self, self.key_version(), field_context),
            &mut out[FIELD_HEADER_LEN..],
        );
        out.extend_from_slice(&tag);
        Ok(out)
    }

    /// Opens a value sealed by [`seal_field`](Self::seal_field) with the same field context.
    ///
    /// # Errors
    /// [`Error::Decryption`] if the value was sealed for another field, account or key version,
    /// or was altered or truncated in any way.
    pub fn open_field(&self, field_context: &[u8], sealed: &[u8]) -> Result<Vec<u8>, Error> {
        self.check_live()?;
        if sealed.len() < FIELD_HEADER_LEN + GCM_TAG_LEN || sealed[0] != FIELD_V1 {
            return Err(Error::Decryption);
        }
        let version = field_key_version(sealed)?;
        if version != self.key_version() {
            return Err(Error::Decryption);
        }
        let mut nonce = [0u8; GCM_NONCE_LEN];
        nonce.copy_from_slice(&sealed[5..FIELD_HEADER_LEN]);
        let body_end = sealed.len() - GCM_TAG_LEN;
        let mut tag = [0u8; GCM_TAG_LEN];
        tag.copy_from_slice(&sealed[body_end..]);
        let mut out = sealed[FIELD_HEADER_LEN..body_end].to_vec();
        self.fields
            .open_in_place(&nonce, &aad(self, version, field_context), &mut out, &tag)?;
        Ok(out)
    }
}

/// The version of the account key a sealed field needs, read without any key.
///
/// # Errors
/// [`Error::Decryption`] if `sealed` is not a version-1 sealed field.
pub fn field_key_version(sealed: &[u8]) -> Result<u32, Error> {
    match sealed {
        [FIELD_V1, a, b, c, d, ..] if sealed.len() >= FIELD_HEADER_LEN + GCM_TAG_LEN => {
            Ok(u32::from_be_bytes([*a, *b, *c, *d]))
        }
        _ => Err(Error::Decryption),
    }
}
