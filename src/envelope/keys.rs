//! Account keys as this layer receives them, and their prepared (scheduled) form.

use core::fmt;

use super::format::MAX_ID_LEN;
use crate::crypto::{Gcm, Kek, hkdf_sha256};
use crate::error::Error;
use crate::secret::AesKey;

/// An account-level key as the account layer hands it over: the key's id, its version and
/// the unwrapped AES-256 key.
///
/// The same type serves both layers: the account key (layer 1) and, for double encryption,
/// the infrastructure account key (layer 2), which must be an independent key.
pub struct AccountKey {
    id: String,
    version: u32,
    key: AesKey,
}

impl AccountKey {
    /// An account key with id `id` (1 to 255 bytes of UTF-8) and version `version`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `id` is empty or longer than 255 bytes.
    pub fn new(id: impl Into<String>, version: u32, key: AesKey) -> Result<Self, Error> {
        let id = id.into();
        check_id("key id", &id)?;
        Ok(Self { id, version, key })
    }

    /// The key's id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The key's version.
    pub fn version(&self) -> u32 {
        self.version
    }
}

impl fmt::Debug for AccountKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountKey")
            .field("id", &self.id)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

pub(crate) fn check_id(what: &str, id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > MAX_ID_LEN {
        return Err(Error::InvalidInput(format!(
            "{what} must be 1 to {MAX_ID_LEN} bytes, got {}",
            id.len()
        )));
    }
    Ok(())
}

/// Salt of the HKDF that derives the sealed-field key from an account key.
const FIELD_KDF_SALT: &[u8] = b"byok sealed fields v1";

/// An account key ready for use: the AES key-wrap schedule and the sealed-field key are
/// computed once, so sealing an object costs one key wrap and no key schedule of the account
/// key. Build it when the account key is unwrapped and cache it with the account.
pub struct PreparedKey {
    account_id: String,
    key_id: String,
    key_version: u32,
    pub(crate) kek: Kek,
    pub(crate) fields: Gcm,
}

impl PreparedKey {
    /// Prepares `key` for the account `account_id` (1 to 255 bytes of UTF-8).
    ///
    /// # Errors
    /// [`Error::InvalidInput`] if `account_id` is empty or longer than 255 bytes.
    pub fn new(account_id: &str, key: &AccountKey) -> Result<Self, Error> {
        check_id("account id", account_id)?;
        let mut fk = [0u8; 32];
        hkdf_sha256(
            FIELD_KDF_SALT,
            key.key.expose_secret(),
            &[
                &[account_id.len() as u8],
                account_id.as_bytes(),
                &key.version.to_be_bytes(),
            ],
            &mut fk,
        );
        let field_key = AesKey::from_bytes(fk);
        fk.fill(0);
        Ok(Self {
            account_id: account_id.to_owned(),
            key_id: key.id.clone(),
            key_version: key.version,
            kek: Kek::new(&key.key),
            fields: Gcm::new(&field_key),
        })
    }

    /// The account this key belongs to.
    pub fn account_id(&self) -> &str {
        &self.account_id
    }

    /// The key's id.
    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The key's version.
    pub fn key_version(&self) -> u32 {
        self.key_version
    }
}

impl fmt::Debug for PreparedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreparedKey")
            .field("account_id", &self.account_id)
            .field("key_id", &self.key_id)
            .field("key_version", &self.key_version)
            .finish_non_exhaustive()
    }
}
