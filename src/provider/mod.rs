//! Where keys live: the [`KeyProvider`] seam between the crate and a vault, HSM or KMS, the
//! [`VaultAdmin`] surface the bundled providers implement (the vault owner's side, for tests
//! and examples), [`ProviderFactory`] (a provider per identity) and the [`KeyResolver`] that
//! takes an account's key to its provider ([`VaultDirectory`]).
//!
//! The bundled providers, one module each:
//!
//! | module | backend | feature |
//! | --- | --- | --- |
//! | [`memory`] | a software vault in process memory (the demo default) | — |
//! | [`file`](mod@file) | a software vault in an encrypted directory (unix) | — |
//! | `pkcs11` | a PKCS#11 token (HSM); `docs/PKCS11.md` | `pkcs11` |
//! | `transit` | Vault / OpenBao Transit over HTTPS; `docs/TRANSIT.md` | `transit` |
//! | `aws` | AWS KMS (RSA keys, SigV4 over HTTPS); `docs/AWS_KMS.md` | `aws-kms` |
//! | `azure` | Azure Key Vault (Microsoft's SDK; tested against a contract server); `docs/AZURE_KEY_VAULT.md` | `azure` |
//!
//! The in-memory and file vaults are one generic software vault ([`soft::SoftVault`]) over two
//! storages. The conformance suite every provider passes is `byok::testing::provider_conformance`.

use core::fmt;
use core::str::FromStr;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::{Error, ProviderError};
use crate::secret::SecretBytes;

#[cfg(feature = "aws-kms")]
#[cfg_attr(docsrs, doc(cfg(feature = "aws-kms")))]
pub mod aws;
#[cfg(feature = "azure")]
#[cfg_attr(docsrs, doc(cfg(feature = "azure")))]
pub mod azure;
#[cfg(any(test, feature = "testing"))]
pub(crate) mod conformance;
mod directory;
#[cfg(any(test, feature = "testing"))]
pub(crate) mod fault;
#[cfg(unix)]
#[cfg_attr(docsrs, doc(cfg(unix)))]
pub mod file;
#[cfg(any(feature = "transit", feature = "aws-kms"))]
mod http;
pub mod memory;
#[cfg(feature = "pkcs11")]
#[cfg_attr(docsrs, doc(cfg(feature = "pkcs11")))]
pub mod pkcs11;
#[cfg(any(feature = "transit", feature = "aws-kms", feature = "azure"))]
mod retry;
pub mod soft;
#[cfg(feature = "transit")]
#[cfg_attr(docsrs, doc(cfg(feature = "transit")))]
pub mod transit;

pub use crate::crypto::{OaepHash, RsaPublic};
pub use directory::{KeyResolver, VaultDirectory};
#[cfg(any(feature = "transit", feature = "aws-kms", feature = "azure"))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "transit", feature = "aws-kms", feature = "azure")))
)]
pub use retry::RetryPolicy;

/// Refuses key names a [`crate::KeyId`] cannot carry (every provider creates only those).
pub(crate) fn check_name(name: &str) -> Result<(), ProviderError> {
    crate::key_id::check_name(name).map_err(|reason| {
        ProviderError::new(
            crate::ProviderErrorKind::InvalidRequest,
            format!("{name:?} is not a key name: {reason}"),
        )
    })
}

/// Longest secret a provider wraps (account keys are 32 bytes).
pub(crate) const MAX_WRAP_INPUT: usize = 512;

/// Refuses an empty or oversized secret before any provider work.
pub(crate) fn check_wrap_input(key: &[u8]) -> Result<(), ProviderError> {
    if key.is_empty() || key.len() > MAX_WRAP_INPUT {
        return Err(ProviderError::new(
            crate::ProviderErrorKind::InvalidRequest,
            format!("a wrapped secret is 1 to {MAX_WRAP_INPUT} bytes"),
        ));
    }
    Ok(())
}

/// The type and size of a key held in a vault.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeyType {
    /// An RSA key pair with a modulus of `bits` bits.
    Rsa {
        /// Modulus size.
        bits: u32,
    },
    /// An elliptic-curve key pair (held, never used for wrapping by this crate).
    Ec {
        /// Curve name, e.g. `P-256`.
        curve: String,
    },
    /// A symmetric AES key of `bits` bits (platform-owned keys; `A256KW`).
    Aes {
        /// Key size.
        bits: u32,
    },
}

impl fmt::Display for KeyType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyType::Rsa { bits } => write!(f, "RSA {bits}"),
            KeyType::Ec { curve } => write!(f, "EC {curve}"),
            KeyType::Aes { bits } => write!(f, "AES {bits}"),
        }
    }
}

/// What to create in a vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum KeySpec {
    /// An RSA key pair of 1024 (only so that policies can prove it is refused), 2048, 3072 or
    /// 4096 bits.
    Rsa(u32),
    /// An AES-256 key.
    Aes256,
    /// An EC P-256 key pair.
    EcP256,
}

/// An operation a key version permits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KeyOperation {
    /// Wrap a key with it.
    WrapKey,
    /// Unwrap a key with it.
    UnwrapKey,
    /// Encrypt data with it.
    Encrypt,
    /// Decrypt data with it.
    Decrypt,
    /// Sign with it.
    Sign,
    /// Verify with it.
    Verify,
}

/// Properties of one key version, as a vault reports them.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct KeyProperties {
    /// The vault host the key lives in.
    pub vault: String,
    /// Key name.
    pub name: String,
    /// The resolved version (never "latest").
    pub version: String,
    /// Type and size.
    pub key_type: KeyType,
    /// Whether this version may be used.
    pub enabled: bool,
    /// Operations this version permits.
    pub operations: Vec<KeyOperation>,
    /// When the version was created.
    pub created: SystemTime,
    /// The public half of an RSA version, where the vault discloses it.
    pub public_key: Option<RsaPublic>,
}

impl KeyProperties {
    /// The versioned [`crate::KeyId`] of this key version.
    ///
    /// # Errors
    /// [`Error::InvalidKeyId`] if the provider reports names a `KeyId` cannot carry.
    pub fn key_id(&self) -> Result<crate::KeyId, Error> {
        crate::KeyId::new(&self.vault, &self.name, Some(&self.version))
    }
}

/// A key-wrapping algorithm, by its Key Vault / JWA name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
#[non_exhaustive]
pub enum WrapAlgorithm {
    /// RSA-OAEP with SHA-256 and MGF1-SHA-256 (`RSA-OAEP-256`). The default for customer keys.
    RsaOaep256,
    /// RSA-OAEP with SHA-1 and MGF1-SHA-1 (`RSA-OAEP`), for HSM tokens without SHA-256 OAEP.
    RsaOaep,
    /// AES key wrap (RFC 3394) under an AES-256 key (`A256KW`), for platform-owned keys.
    A256Kw,
}

impl WrapAlgorithm {
    /// The algorithm's name as vaults spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RsaOaep256 => "RSA-OAEP-256",
            Self::RsaOaep => "RSA-OAEP",
            Self::A256Kw => "A256KW",
        }
    }

    /// Whether the algorithm needs an RSA key.
    pub fn is_rsa(self) -> bool {
        matches!(self, Self::RsaOaep256 | Self::RsaOaep)
    }
}

impl fmt::Display for WrapAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for WrapAlgorithm {
    type Err = Error;

    /// Parses a name; `RSA1_5` (PKCS#1 v1.5 encryption, Bleichenbacher-prone) is refused.
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "RSA-OAEP-256" => Ok(Self::RsaOaep256),
            "RSA-OAEP" => Ok(Self::RsaOaep),
            "A256KW" => Ok(Self::A256Kw),
            _ => Err(Error::UnsupportedAlgorithm(s.to_owned())),
        }
    }
}

impl TryFrom<String> for WrapAlgorithm {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        s.parse()
    }
}

impl From<WrapAlgorithm> for String {
    fn from(a: WrapAlgorithm) -> String {
        a.as_str().to_owned()
    }
}

/// A secret wrapped by a vault key, with the exact key version and algorithm that wrapped it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct WrappedKey {
    /// Name of the wrapping key.
    pub key_name: String,
    /// The exact version that wrapped it.
    pub key_version: String,
    /// The algorithm used.
    pub algorithm: WrapAlgorithm,
    /// The wrapped bytes.
    #[serde(with = "hex_bytes")]
    pub ciphertext: Vec<u8>,
}

impl WrappedKey {
    /// `ciphertext` wrapped by version `key_version` of key `key_name` with `algorithm` (what a
    /// [`KeyProvider::wrap_key`] returns).
    pub fn new(
        key_name: impl Into<String>,
        key_version: impl Into<String>,
        algorithm: WrapAlgorithm,
        ciphertext: Vec<u8>,
    ) -> Self {
        Self {
            key_name: key_name.into(),
            key_version: key_version.into(),
            algorithm,
            ciphertext,
        }
    }
}

mod hex_bytes {
    use serde::{Deserialize, Deserializer, Serializer, de::Error as _};

    pub(crate) fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::util::hex(b))
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        crate::util::unhex(&s).ok_or_else(|| D::Error::custom("invalid hex"))
    }
}

/// Properties of a vault, checked by policies before a key is accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct VaultProperties {
    /// The vault's host name (the host of its key identifiers).
    pub host: String,
    /// Whether deleted keys are kept recoverable for `retention_days`.
    pub soft_delete: bool,
    /// Days a soft-deleted key stays recoverable.
    pub retention_days: u32,
    /// Whether a soft-deleted key cannot be purged before the retention ends.
    pub purge_protection: bool,
    /// The region the vault is in.
    pub region: String,
    /// The directory tenant that owns the vault.
    pub tenant: String,
}

impl VaultProperties {
    /// Properties for a vault at `host` (normalised like [`crate::KeyId::vault`]) with soft-delete (90 days) and purge protection on, in
    /// region `region` and tenant `tenant`.
    pub fn new(host: &str, region: &str, tenant: &str) -> Self {
        Self {
            host: crate::key_id::canonical_vault(host),
            soft_delete: true,
            retention_days: 90,
            purge_protection: true,
            region: region.to_owned(),
            tenant: tenant.to_owned(),
        }
    }

    /// The same properties with soft-delete and purge protection set.
    pub fn protection(mut self, soft_delete: bool, purge_protection: bool) -> Self {
        self.soft_delete = soft_delete;
        self.purge_protection = purge_protection;
        self
    }
}

/// The name an application or service uses to reach a vault (a managed identity, a token
/// holder, an HSM login).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Identity(String);

impl Identity {
    /// An identity called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self(name.into())
    }

    /// The identity's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Key permissions of an identity on a vault, as in a Key Vault access policy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Permissions {
    /// Read key properties (`get`).
    pub get: bool,
    /// Wrap with the key (`wrapKey`).
    pub wrap_key: bool,
    /// Unwrap with the key (`unwrapKey`).
    pub unwrap_key: bool,
}

impl Permissions {
    /// The permissions `get`, `wrapKey` and `unwrapKey` as given.
    pub const fn new(get: bool, wrap_key: bool, unwrap_key: bool) -> Self {
        Self {
            get,
            wrap_key,
            unwrap_key,
        }
    }

    /// `get`, `wrapKey` and `unwrapKey`: exactly what a customer-managed key needs.
    pub const CMK: Self = Self {
        get: true,
        wrap_key: true,
        unwrap_key: true,
    };
    /// No permission at all.
    pub const NONE: Self = Self {
        get: false,
        wrap_key: false,
        unwrap_key: false,
    };
}

/// The seam between this crate and wherever keys live: a vault, an HSM, a KMS.
///
/// A provider acts as one identity against one vault; what it may do is decided by the
/// vault. Implementations classify failures with [`crate::ProviderErrorKind`] so that the
/// account lifecycle can tell a revoked key from a network blip.
///
/// Methods are async (`async-trait`), so the trait is object-safe: accounts hold an
/// `Arc<dyn KeyProvider>`. Implementations must not block the caller's executor for long
/// (network and HSM calls belong on the implementation's own blocking pool or async client).
#[async_trait]
pub trait KeyProvider: Send + Sync + fmt::Debug {
    /// Properties of the vault (soft-delete, purge protection, region, tenant).
    ///
    /// # Errors
    /// A [`ProviderError`]: transient if the vault cannot be reached, `VaultNotFound` if it is
    /// gone.
    async fn vault_properties(&self) -> Result<VaultProperties, ProviderError>;

    /// Properties of key `name` at `version`, or of its latest enabled version when `version`
    /// is `None`. Needs the `get` permission.
    ///
    /// # Errors
    /// `KeyNotFound`, `KeyDeleted`, `Forbidden` (definitive) or a transient kind.
    async fn key_properties(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyProperties, ProviderError>;

    /// Wraps the short secret `key` with key `name` at `version` (latest enabled when `None`)
    /// using `algorithm`. Needs the `wrapKey` permission. The result names the exact version.
    ///
    /// # Errors
    /// Definitive kinds when the key is missing, disabled, deleted or forbidden;
    /// `WrongKeyType` when the algorithm does not fit the key; `InvalidRequest` for a secret
    /// that is too long; transient kinds for outages.
    async fn wrap_key(
        &self,
        name: &str,
        version: Option<&str>,
        algorithm: WrapAlgorithm,
        key: &[u8],
    ) -> Result<WrappedKey, ProviderError>;

    /// Unwraps `wrapped` with the exact key version it names. Needs the `unwrapKey`
    /// permission.
    ///
    /// # Errors
    /// Definitive kinds when the key is missing, disabled, deleted or forbidden;
    /// `UnwrapFailed` when the blob is corrupted, truncated or wrapped under another key;
    /// transient kinds for outages.
    async fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<SecretBytes, ProviderError>;
}

#[async_trait]
impl<P: KeyProvider + ?Sized> KeyProvider for Arc<P> {
    async fn vault_properties(&self) -> Result<VaultProperties, ProviderError> {
        (**self).vault_properties().await
    }
    async fn key_properties(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyProperties, ProviderError> {
        (**self).key_properties(name, version).await
    }
    async fn wrap_key(
        &self,
        name: &str,
        version: Option<&str>,
        algorithm: WrapAlgorithm,
        key: &[u8],
    ) -> Result<WrappedKey, ProviderError> {
        (**self).wrap_key(name, version, algorithm, key).await
    }
    async fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<SecretBytes, ProviderError> {
        (**self).unwrap_key(wrapped).await
    }
}

/// What a vault's administration surface can do; the conformance suite skips (by
/// declaration, printed in its output) the scenarios a backend cannot express.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct AdminCapabilities {
    /// Soft-delete and recover.
    pub soft_delete: bool,
    /// Purge of a soft-deleted key (and refusal under purge protection).
    pub purge: bool,
    /// Per-identity access policies (grant, remove a permission, remove the identity).
    pub access_policies: bool,
    /// Disabling and re-enabling one version.
    pub disable_version: bool,
    /// A versionless lookup skips a disabled newest version and resolves to the newest
    /// enabled one. False where "latest" is a pointer to one key (an AWS KMS alias): a
    /// disabled target is then reported as disabled, with no fallback.
    pub latest_skips_disabled: bool,
    /// Import of an existing RSA key from PEM.
    pub import_pem: bool,
    /// Platform-owned AES-256 keys (`A256KW`).
    pub aes_keys: bool,
    /// EC keys can be created (to prove they are refused for wrapping).
    pub ec_keys: bool,
    /// The RSA-OAEP hashes the backend can unwrap with.
    pub rsa_oaep_sha256: bool,
    /// SHA-1 RSA-OAEP.
    pub rsa_oaep_sha1: bool,
}

impl AdminCapabilities {
    /// Everything supported (the software vaults).
    pub const ALL: Self = Self {
        soft_delete: true,
        purge: true,
        access_policies: true,
        disable_version: true,
        latest_skips_disabled: true,
        import_pem: true,
        aes_keys: true,
        ec_keys: true,
        rsa_oaep_sha256: true,
        rsa_oaep_sha1: true,
    };
}

/// Hands out a [`KeyProvider`] acting as one identity on a vault: what a [`KeyResolver`]
/// such as [`VaultDirectory`] needs to reach tenants' keys (no owner-level access).
#[async_trait]
pub trait ProviderFactory: Send + Sync + fmt::Debug {
    /// A provider that acts as `identity` on this vault.
    ///
    /// # Errors
    /// A backend-specific failure to set up the connection.
    async fn provider_for(
        &self,
        identity: &Identity,
    ) -> Result<Arc<dyn KeyProvider>, ProviderError>;
}

/// Vault administration: what the vault's owner does (create, rotate, disable, delete,
/// recover, purge, grant). Implemented by the bundled providers so that tests and examples can
/// play the vault owner; a service in production usually has no such access. Every admin
/// handle is also a [`ProviderFactory`] (import that trait too to call `provider_for`).
#[async_trait]
pub trait VaultAdmin: ProviderFactory {
    /// What this backend supports.
    fn capabilities(&self) -> AdminCapabilities;

    /// Creates key `name` with its first version.
    ///
    /// # Errors
    /// `Conflict` if the name exists (also while soft-deleted); `InvalidRequest` for an
    /// unsupported spec.
    async fn create_key(&self, name: &str, spec: KeySpec) -> Result<KeyProperties, ProviderError>;

    /// Imports an RSA private key from PEM (PKCS#8 or PKCS#1) as key `name`: a new key, or a
    /// new version of an existing one.
    ///
    /// # Errors
    /// `InvalidRequest` for text that is not an RSA private key.
    async fn import_rsa_pem(&self, name: &str, pem: &str) -> Result<KeyProperties, ProviderError>;

    /// Adds a new version of the same type (rotation) and returns it.
    ///
    /// # Errors
    /// `KeyNotFound`, `KeyDeleted`.
    async fn rotate_key(&self, name: &str) -> Result<KeyProperties, ProviderError>;

    /// All versions, oldest first.
    ///
    /// # Errors
    /// `KeyNotFound`, `KeyDeleted`.
    async fn list_versions(&self, name: &str) -> Result<Vec<KeyProperties>, ProviderError>;

    /// Enables or disables one version.
    ///
    /// # Errors
    /// `KeyNotFound` for an unknown key or version.
    async fn set_enabled(
        &self,
        name: &str,
        version: &str,
        enabled: bool,
    ) -> Result<(), ProviderError>;

    /// Deletes the key: soft-delete where the vault has it, otherwise permanently.
    ///
    /// # Errors
    /// `KeyNotFound`.
    async fn delete_key(&self, name: &str) -> Result<(), ProviderError>;

    /// Recovers a soft-deleted key.
    ///
    /// # Errors
    /// `KeyNotFound` if there is no soft-deleted key of that name.
    async fn recover_key(&self, name: &str) -> Result<(), ProviderError>;

    /// Purges a soft-deleted key for good.
    ///
    /// # Errors
    /// `Conflict` while purge protection holds it; `KeyNotFound` if it is not soft-deleted.
    async fn purge_key(&self, name: &str) -> Result<(), ProviderError>;

    /// Sets (replaces) `identity`'s permissions on the vault.
    ///
    /// # Errors
    /// `Unsupported` where the backend has no per-identity policies.
    async fn set_access(
        &self,
        identity: &Identity,
        permissions: Permissions,
    ) -> Result<(), ProviderError>;

    /// Removes `identity` altogether (its credential stops working).
    ///
    /// # Errors
    /// `Unsupported` where the backend has no identities.
    async fn remove_identity(&self, identity: &Identity) -> Result<(), ProviderError>;
}
