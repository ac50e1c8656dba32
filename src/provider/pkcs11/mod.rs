//! A [`KeyProvider`] over a PKCS#11 token (an HSM; SoftHSM2 in the tests), feature `pkcs11`.
//!
//! Conventions (see `docs/PKCS11.md`): a key version is an RSA (or EC) key pair, or an AES
//! secret key, whose objects carry `CKA_LABEL` = key name and `CKA_ID` = version as ASCII
//! decimal (`"1"`, `"2"`, …); "latest" is the highest version whose private (or secret) key has
//! `CKA_DECRYPT = true`; disabling a version clears `CKA_DECRYPT`/`CKA_UNWRAP` on the private
//! key and `CKA_ENCRYPT`/`CKA_WRAP` on the public key; deleting a key destroys its objects (no
//! soft-delete). RSA unwrap runs on the token (`C_Decrypt` with `CKM_RSA_PKCS_OAEP`) and wrap
//! uses the public key in software; `A256KW` runs on the token both ways (`CKM_AES_KEY_WRAP`).
//!
//! | file | concern |
//! | --- | --- |
//! | `config.rs` | [`Pkcs11Config`] |
//! | `mod.rs` | [`Pkcs11Provider`]: connection, the blocking pool hand-off, [`KeyProvider`] |
//! | `versions.rs` | the version model (objects → versions, latest, properties) |
//! | `wrapping.rs` | RSA-OAEP and AES key wrap on the token |
//! | `templates.rs` | key generation and import templates |
//! | `admin.rs` | [`VaultAdmin`] and the provider per identity |
//! | `token.rs` | sessions, login, error mapping (the calls run on the crate's blocking pool, `src/blocking.rs`) |

mod admin;
mod config;
mod templates;
mod token;
mod versions;
mod wrapping;

use core::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use async_trait::async_trait;
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{
    Attribute, AttributeType, KeyType as P11KeyType, ObjectClass, ObjectHandle,
};
use cryptoki::session::Session;

use self::token::{Fail, Token};
use super::{
    AdminCapabilities, Identity, KeyOperation, KeyProperties, KeyProvider, KeySpec, KeyType,
    Permissions, VaultAdmin, VaultProperties, WrapAlgorithm, WrappedKey,
};
use crate::blocking::BlockingPool;
use crate::crypto::{OaepHash, RsaPrivate, RsaPublic};
use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::secret::{SecretBytes, SecretString};

pub use self::config::Pkcs11Config;
use self::templates::Gen;
use self::versions::VersionInfo;

/// Keys on a PKCS#11 token: a [`KeyProvider`] (unwrap on the token, RSA wrap with the public
/// key) and the [`VaultAdmin`] surface (generate RSA/AES/EC, import RSA, rotate, disable,
/// destroy).
///
/// The token login is the identity: there are no per-identity access policies, and
/// [`ProviderFactory::provider_for`](crate::provider::ProviderFactory::provider_for) returns a provider sharing this login. Clones share the same
/// sessions and worker threads.
#[derive(Clone)]
pub struct Pkcs11Provider {
    inner: Arc<Inner>,
}

struct Inner {
    config: Pkcs11Config,
    props: VaultProperties,
    pool: BlockingPool,
    token: Token,
    /// Serialises this process's admin changes (version numbers are picked by reading).
    admin: Mutex<()>,
}

impl fmt::Debug for Pkcs11Provider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pkcs11Provider")
            .field("config", &self.inner.config)
            .field("host", &self.inner.props.host)
            .finish_non_exhaustive()
    }
}

impl Pkcs11Provider {
    /// Loads the module (once per process and path; `C_Initialize` tolerates an earlier
    /// initialisation and nothing ever calls `C_Finalize`), selects the token by label, checks
    /// that it offers `CKM_RSA_PKCS_OAEP` and RSA key generation, and logs in. Runs on the
    /// provider's own threads, never on the caller's executor.
    ///
    /// # Errors
    /// `Forbidden` for a wrong or locked PIN; `InvalidRequest` when another component of the
    /// process is already logged in to the token and
    /// [`Pkcs11Config::accept_existing_login`] is off; `VaultNotFound` when no
    /// initialised token has the label; `Unsupported` when the token lacks the mechanisms; `Unavailable` when the module
    /// cannot be loaded or the device fails.
    pub async fn connect(config: Pkcs11Config) -> Result<Self, ProviderError> {
        let pool = BlockingPool::new("PKCS#11", config.threads)?;
        let (module, label, pin, accept) = (
            config.module.clone(),
            config.token_label.clone(),
            config.pin.clone(),
            config.accept_existing_login,
        );
        let token = pool
            .run(move || Token::connect(&module, &label, &pin, accept))
            .await?;
        Ok(Self {
            inner: Arc::new(Inner {
                props: config.reported_properties(),
                config,
                pool,
                token,
                admin: Mutex::new(()),
            }),
        })
    }

    /// The OAEP hash setting.
    pub fn oaep_hash(&self) -> OaepHash {
        self.inner.config.oaep_hash
    }

    /// Number of worker threads that run the PKCS#11 calls.
    pub fn threads(&self) -> usize {
        self.inner.pool.threads()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, ProviderError> + Send + 'static,
    ) -> Result<T, ProviderError> {
        let inner = Arc::clone(&self.inner);
        let pending = self.inner.pool.run(move || f(&inner));
        pending.await
    }
}

#[async_trait]
impl KeyProvider for Pkcs11Provider {
    async fn vault_properties(&self) -> Result<VaultProperties, ProviderError> {
        Ok(self.inner.props.clone())
    }

    async fn key_properties(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyProperties, ProviderError> {
        let (name, version) = (name.to_owned(), version.map(str::to_owned));
        self.blocking(move |i| {
            i.token
                .with_session(&format!("properties of key {name}"), |s| {
                    let v = i.resolve(s, &name, version.as_deref())?;
                    i.properties(s, &name, &v)
                })
        })
        .await
    }

    async fn wrap_key(
        &self,
        name: &str,
        version: Option<&str>,
        algorithm: WrapAlgorithm,
        key: &[u8],
    ) -> Result<WrappedKey, ProviderError> {
        let (name, version) = (name.to_owned(), version.map(str::to_owned));
        let key = SecretBytes::new(key.to_vec());
        self.blocking(move |i| i.wrap(&name, version.as_deref(), algorithm, key.expose_secret()))
            .await
    }

    async fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<SecretBytes, ProviderError> {
        let w = wrapped.clone();
        self.blocking(move |i| i.unwrap(&w)).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::versions::parse_version;
    use super::*;

    #[test]
    fn versions_are_canonical_decimals() {
        assert_eq!(parse_version(b"1"), Some(1));
        assert_eq!(parse_version(b"42"), Some(42));
        for bad in [
            &b""[..],
            b"01",
            b"-1",
            b"1a",
            b"\x01",
            b"99999999999999999999999",
        ] {
            assert_eq!(parse_version(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_pin() {
        let c = Pkcs11Config::new("/x.so", "Label 1", SecretString::new("pin-1234-secret"));
        let s = format!("{c:?}");
        assert!(!s.contains("pin-1234-secret"), "{s}");
        assert_eq!(c.reported_properties().host, "label-1.pkcs11.local");
        assert!(!c.reported_properties().soft_delete);
    }
}
