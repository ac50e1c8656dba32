//! The software vault: one generic [`SoftVault`] over a storage — in process memory
//! ([`InMemoryVault`](super::memory::InMemoryVault)) or in an encrypted directory
//! ([`FileVault`](super::file::FileVault)) — with the semantics both share: key material,
//! versions, latest-enabled resolution, soft-delete, purge protection, per-identity access
//! policies, and the [`VaultAdmin`] and [`KeyProvider`] implementations.
//!
//! The storage is sealed: the two storages are the crate's
//! ([`MemoryStorage`](super::memory::MemoryStorage), [`FileStorage`](super::file::FileStorage)),
//! and the trait they implement is private. A vault of your own implements [`KeyProvider`] and
//! [`VaultAdmin`] directly.

use core::fmt;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;

use zeroize::Zeroizing;

use super::{
    AdminCapabilities, Identity, KeyOperation, KeyProperties, KeyProvider, KeySpec, KeyType,
    Permissions, ProviderFactory, VaultAdmin, VaultProperties, WrapAlgorithm, WrappedKey,
};
use crate::crypto::{Kek, OaepHash, RsaPrivate};
use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::secret::{AesKey, SecretBytes};

/// Key material of one version.
#[derive(Clone)]
pub(crate) enum Material {
    Rsa(Arc<RsaPrivate>),
    Aes(Arc<AesKey>),
    /// An EC P-256 private scalar: held so that policies can refuse it; never used.
    #[allow(dead_code)] // held so the vault can list and refuse EC keys; never used
    Ec(Arc<Zeroizing<[u8; 32]>>),
}

impl Material {
    pub(crate) fn generate(
        spec: KeySpec,
        rng: &mut crate::provider::memory::VaultRng,
    ) -> Result<Self, ProviderError> {
        match spec {
            KeySpec::Rsa(bits @ (1024 | 2048 | 3072 | 4096)) => rng
                .generate_rsa(bits as usize)
                .map(|k| Self::Rsa(Arc::new(k)))
                .map_err(|e| ProviderError::new(K::InvalidRequest, e.to_string())),
            KeySpec::Rsa(bits) => Err(ProviderError::new(
                K::InvalidRequest,
                format!("RSA keys are 1024, 2048, 3072 or 4096 bits, not {bits}"),
            )),
            KeySpec::Aes256 => {
                let mut k = [0u8; 32];
                rng.fill(&mut k);
                Ok(Self::Aes(Arc::new(AesKey::from_bytes(k))))
            }
            KeySpec::EcP256 => {
                let mut k = Zeroizing::new([0u8; 32]);
                rng.fill(&mut *k);
                Ok(Self::Ec(Arc::new(k)))
            }
        }
    }

    pub(crate) fn key_type(&self) -> KeyType {
        match self {
            Self::Rsa(k) => KeyType::Rsa {
                bits: k.bits() as u32,
            },
            Self::Aes(_) => KeyType::Aes { bits: 256 },
            Self::Ec(_) => KeyType::Ec {
                curve: "P-256".into(),
            },
        }
    }

    pub(crate) fn operations(&self) -> Vec<KeyOperation> {
        match self {
            Self::Rsa(_) | Self::Aes(_) => vec![
                KeyOperation::WrapKey,
                KeyOperation::UnwrapKey,
                KeyOperation::Encrypt,
                KeyOperation::Decrypt,
            ],
            Self::Ec(_) => vec![KeyOperation::Sign, KeyOperation::Verify],
        }
    }

    fn check_alg(&self, alg: WrapAlgorithm) -> Result<(), ProviderError> {
        let ok = match self {
            Self::Rsa(_) => alg.is_rsa(),
            Self::Aes(_) => alg == WrapAlgorithm::A256Kw,
            Self::Ec(_) => false,
        };
        if ok {
            Ok(())
        } else {
            Err(ProviderError::new(
                K::WrongKeyType,
                format!("a {} key cannot {alg}", self.key_type()),
            ))
        }
    }

    pub(crate) fn wrap(&self, alg: WrapAlgorithm, pt: &[u8]) -> Result<Vec<u8>, ProviderError> {
        self.check_alg(alg)?;
        crate::provider::check_wrap_input(pt)?;
        let r = match self {
            Self::Rsa(k) => k.public().encrypt_oaep(oaep_hash(alg), pt, b""),
            Self::Aes(k) => Kek::new(k).wrap(pt),
            Self::Ec(_) => unreachable_ec(),
        };
        r.map_err(|e| ProviderError::new(K::InvalidRequest, e.to_string()))
    }

    pub(crate) fn unwrap(
        &self,
        alg: WrapAlgorithm,
        ct: &[u8],
    ) -> Result<SecretBytes, ProviderError> {
        self.check_alg(alg)?;
        let r = match self {
            Self::Rsa(k) => k.decrypt_oaep(oaep_hash(alg), ct, b""),
            Self::Aes(k) => Kek::new(k).unwrap(ct),
            Self::Ec(_) => unreachable_ec(),
        };
        r.map_err(|_| ProviderError::new(K::UnwrapFailed, "the wrapped key did not unwrap"))
    }
}

fn unreachable_ec<T>() -> Result<T, crate::Error> {
    Err(crate::Error::UnsupportedAlgorithm("EC key wrapping".into()))
}

fn oaep_hash(alg: WrapAlgorithm) -> OaepHash {
    if alg == WrapAlgorithm::RsaOaep {
        OaepHash::Sha1
    } else {
        OaepHash::Sha256
    }
}

/// One version of a key.
#[derive(Clone)]
pub(crate) struct Version {
    pub(crate) version: String,
    pub(crate) material: Material,
    pub(crate) enabled: bool,
    pub(crate) created: SystemTime,
}

/// A key: its versions (oldest first) and its deletion state.
#[derive(Clone, Default)]
pub(crate) struct KeyEntry {
    pub(crate) versions: Vec<Version>,
    pub(crate) deleted_at: Option<SystemTime>,
    /// Next version counter.
    pub(crate) next: u64,
}

/// The whole state of a software vault.
#[derive(Clone)]
pub(crate) struct VaultState {
    pub(crate) props: VaultProperties,
    pub(crate) keys: BTreeMap<String, KeyEntry>,
    pub(crate) access: BTreeMap<Identity, Permissions>,
}

/// Which permission an operation needs.
#[derive(Clone, Copy)]
pub(crate) enum Need {
    Get,
    Wrap,
    Unwrap,
}

impl VaultState {
    pub(crate) fn new(props: VaultProperties) -> Self {
        Self {
            props,
            keys: BTreeMap::new(),
            access: BTreeMap::new(),
        }
    }

    pub(crate) fn authorize(&self, who: &Identity, need: Need) -> Result<(), ProviderError> {
        let Some(p) = self.access.get(who) else {
            return Err(ProviderError::new(
                K::Forbidden,
                format!(
                    "identity {who} has no access policy on vault {}",
                    self.props.host
                ),
            ));
        };
        let (ok, name) = match need {
            Need::Get => (p.get, "get"),
            Need::Wrap => (p.wrap_key, "wrapKey"),
            Need::Unwrap => (p.unwrap_key, "unwrapKey"),
        };
        if ok {
            Ok(())
        } else {
            Err(ProviderError::new(
                K::Forbidden,
                format!("identity {who} lacks the {name} permission"),
            ))
        }
    }

    /// The live (not deleted) key `name`.
    pub(crate) fn live(&self, name: &str) -> Result<&KeyEntry, ProviderError> {
        let name = &fold(name);
        match self.keys.get(name) {
            None => Err(not_found(name)),
            Some(e) if e.deleted_at.is_some() => Err(ProviderError::new(
                K::KeyDeleted,
                format!("key {name} is deleted"),
            )),
            Some(e) => Ok(e),
        }
    }

    pub(crate) fn live_mut(&mut self, name: &str) -> Result<&mut KeyEntry, ProviderError> {
        let name = &fold(name);
        self.live(name)?;
        self.keys.get_mut(name).ok_or_else(|| not_found(name))
    }

    /// Resolves `version` (latest enabled when `None`) without checking `enabled`.
    pub(crate) fn resolve(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<&Version, ProviderError> {
        let e = self.live(name)?;
        match version {
            Some(v) => e.versions.iter().find(|x| x.version == v).ok_or_else(|| {
                ProviderError::new(K::KeyNotFound, format!("key {name} has no version {v}"))
            }),
            None => e.versions.iter().rev().find(|x| x.enabled).ok_or_else(|| {
                ProviderError::new(K::KeyDisabled, format!("key {name} has no enabled version"))
            }),
        }
    }

    /// Resolves and requires the version to be enabled.
    pub(crate) fn usable(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<&Version, ProviderError> {
        let v = self.resolve(name, version)?;
        if v.enabled {
            Ok(v)
        } else {
            Err(ProviderError::new(
                K::KeyDisabled,
                format!("version {} of key {name} is disabled", v.version),
            ))
        }
    }

    pub(crate) fn properties(&self, name: &str, v: &Version) -> KeyProperties {
        let name = &fold(name);
        KeyProperties {
            vault: self.props.host.clone(),
            name: name.to_owned(),
            version: v.version.clone(),
            key_type: v.material.key_type(),
            enabled: v.enabled,
            operations: v.material.operations(),
            created: v.created,
            public_key: match &v.material {
                Material::Rsa(k) => Some(k.public()),
                _ => None,
            },
        }
    }

    pub(crate) fn wrap(
        &self,
        who: &Identity,
        name: &str,
        version: Option<&str>,
        alg: WrapAlgorithm,
        pt: &[u8],
    ) -> Result<WrappedKey, ProviderError> {
        self.authorize(who, Need::Wrap)?;
        let v = self.usable(name, version)?;
        Ok(WrappedKey {
            key_name: fold(name),
            key_version: v.version.clone(),
            algorithm: alg,
            ciphertext: v.material.wrap(alg, pt)?,
        })
    }

    /// Checks access and returns the material to unwrap with (the caller runs the RSA
    /// operation outside any lock).
    pub(crate) fn unwrap_material(
        &self,
        who: &Identity,
        wrapped: &WrappedKey,
    ) -> Result<Material, ProviderError> {
        self.authorize(who, Need::Unwrap)?;
        Ok(self
            .usable(&wrapped.key_name, Some(&wrapped.key_version))?
            .material
            .clone())
    }

    /// Adds `material` as the newest version of `name` (creating the key when `create`).
    pub(crate) fn add_version(
        &mut self,
        name: &str,
        material: Material,
        now: SystemTime,
        create: bool,
    ) -> Result<KeyProperties, ProviderError> {
        crate::provider::check_name(name)?;
        let name = &fold(name);
        let entry = match self.keys.get_mut(name) {
            Some(e) if e.deleted_at.is_some() => {
                return Err(ProviderError::new(
                    K::Conflict,
                    format!("key {name} is soft-deleted: recover or purge it first"),
                ));
            }
            Some(_) if create => {
                return Err(ProviderError::new(
                    K::Conflict,
                    format!("key {name} already exists"),
                ));
            }
            Some(e) => e,
            None => self.keys.entry(name.to_owned()).or_default(),
        };
        entry.next += 1;
        let v = Version {
            version: entry.next.to_string(),
            material,
            enabled: true,
            created: now,
        };
        entry.versions.push(v);
        let v = entry
            .versions
            .last()
            .cloned()
            .ok_or_else(|| not_found(name))?;
        Ok(self.properties(name, &v))
    }

    pub(crate) fn set_enabled(
        &mut self,
        name: &str,
        version: &str,
        enabled: bool,
    ) -> Result<(), ProviderError> {
        let e = self.live_mut(name)?;
        let v = e
            .versions
            .iter_mut()
            .find(|x| x.version == version)
            .ok_or_else(|| {
                ProviderError::new(
                    K::KeyNotFound,
                    format!("key {name} has no version {version}"),
                )
            })?;
        v.enabled = enabled;
        Ok(())
    }

    pub(crate) fn delete(&mut self, name: &str, now: SystemTime) -> Result<(), ProviderError> {
        let name = &fold(name);
        let soft = self.props.soft_delete;
        let e = self.live_mut(name)?;
        if soft {
            e.deleted_at = Some(now);
        } else {
            self.keys.remove(name);
        }
        Ok(())
    }

    pub(crate) fn recover(&mut self, name: &str) -> Result<(), ProviderError> {
        let name = &fold(name);
        match self.keys.get_mut(name) {
            Some(e) if e.deleted_at.is_some() => {
                e.deleted_at = None;
                Ok(())
            }
            _ => Err(ProviderError::new(
                K::KeyNotFound,
                format!("no deleted key {name} to recover"),
            )),
        }
    }

    pub(crate) fn purge(&mut self, name: &str, now: SystemTime) -> Result<(), ProviderError> {
        let name = &fold(name);
        let retention = Duration::from_secs(u64::from(self.props.retention_days) * 86_400);
        match self.keys.get(name) {
            Some(KeyEntry {
                deleted_at: Some(at),
                ..
            }) => {
                if self.props.purge_protection && now < *at + retention {
                    return Err(ProviderError::new(
                        K::Conflict,
                        format!(
                            "purge protection holds key {name} until its {}-day retention ends",
                            self.props.retention_days
                        ),
                    ));
                }
                self.keys.remove(name);
                Ok(())
            }
            _ => Err(ProviderError::new(
                K::KeyNotFound,
                format!("no deleted key {name} to purge"),
            )),
        }
    }
}

/// One change to a software vault's state, applied by [`VaultState::apply`]. Both software
/// vaults go through this: the in-memory vault applies it under its lock, the file vault
/// applies it to a freshly loaded copy under the cross-process lock and persists the result.
pub(crate) enum Change {
    /// A new version of `name` (a new key when `create`).
    AddVersion {
        name: String,
        material: Material,
        now: SystemTime,
        create: bool,
    },
    SetEnabled {
        name: String,
        version: String,
        enabled: bool,
    },
    Delete {
        name: String,
        now: SystemTime,
    },
    Recover {
        name: String,
    },
    Purge {
        name: String,
        now: SystemTime,
    },
    SetAccess {
        identity: Identity,
        permissions: Permissions,
    },
    RemoveIdentity {
        identity: Identity,
    },
}

impl VaultState {
    /// Applies `change`; returns the new version's properties for `AddVersion`. On error the
    /// state is unchanged.
    pub(crate) fn apply(&mut self, change: Change) -> Result<Option<KeyProperties>, ProviderError> {
        match change {
            Change::AddVersion {
                name,
                material,
                now,
                create,
            } => self.add_version(&name, material, now, create).map(Some),
            Change::SetEnabled {
                name,
                version,
                enabled,
            } => self.set_enabled(&name, &version, enabled).map(|()| None),
            Change::Delete { name, now } => self.delete(&name, now).map(|()| None),
            Change::Recover { name } => self.recover(&name).map(|()| None),
            Change::Purge { name, now } => self.purge(&name, now).map(|()| None),
            Change::SetAccess {
                identity,
                permissions,
            } => {
                self.access.insert(identity, permissions);
                Ok(None)
            }
            Change::RemoveIdentity { identity } => {
                self.access.remove(&identity);
                Ok(None)
            }
        }
    }

    /// Refuses a name that is taken (also while soft-deleted), before a key is generated.
    pub(crate) fn check_free(&self, name: &str) -> Result<(), ProviderError> {
        let name = &fold(name);
        if self.keys.contains_key(name) {
            Err(ProviderError::new(
                K::Conflict,
                format!("key {name} already exists"),
            ))
        } else {
            Ok(())
        }
    }

    /// What a rotation of the live key `name` generates: the type of its newest version.
    pub(crate) fn rotation_spec(&self, name: &str) -> Result<KeySpec, ProviderError> {
        let e = self.live(name)?;
        Ok(match e.versions.last().map(|v| v.material.key_type()) {
            Some(KeyType::Rsa { bits }) => KeySpec::Rsa(bits),
            Some(KeyType::Ec { .. }) => KeySpec::EcP256,
            _ => KeySpec::Aes256,
        })
    }

    /// All versions of the live key `name`, oldest first.
    pub(crate) fn list_versions(&self, name: &str) -> Result<Vec<KeyProperties>, ProviderError> {
        let e = self.live(name)?;
        Ok(e.versions
            .iter()
            .map(|v| self.properties(name, v))
            .collect())
    }

    /// Properties of `name` at `version` (latest enabled when `None`) as `who` sees them.
    pub(crate) fn key_properties(
        &self,
        who: &Identity,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyProperties, ProviderError> {
        self.authorize(who, Need::Get)?;
        let v = self.resolve(name, version)?;
        Ok(self.properties(name, v))
    }
}

/// Key names are case-insensitive (as in Azure Key Vault, and as [`crate::KeyId`] keeps
/// them): the state holds and reports them in lower case, and every lookup folds its argument.
fn fold(name: &str) -> String {
    name.to_ascii_lowercase()
}

fn not_found(name: &str) -> ProviderError {
    ProviderError::new(K::KeyNotFound, format!("key {name} not found"))
}

/// A software key vault over a storage `S`: RSA 2048/3072/4096, AES-256 and EC keys with
/// versions, enable/disable, soft-delete with recover and purge protection, and per-identity
/// access policies. Use it through its two aliases,
/// [`InMemoryVault`](super::memory::InMemoryVault) and [`FileVault`](super::file::FileVault).
///
/// Clones share the same vault. The handle itself is the vault *owner* ([`VaultAdmin`]);
/// [`provider`](Self::provider) gives a [`KeyProvider`] that acts as one identity and is
/// subject to its access policy.
pub struct SoftVault<S> {
    pub(crate) inner: Arc<S>,
}

impl<S> Clone for SoftVault<S> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

/// A [`KeyProvider`] acting as one identity on a [`SoftVault`]
/// ([`InMemoryProvider`](super::memory::InMemoryProvider),
/// [`FileProvider`](super::file::FileProvider)).
pub struct SoftProvider<S> {
    vault: SoftVault<S>,
    identity: Identity,
}

impl<S> Clone for SoftProvider<S> {
    fn clone(&self) -> Self {
        Self {
            vault: self.vault.clone(),
            identity: self.identity.clone(),
        }
    }
}

impl<S> fmt::Debug for SoftProvider<S>
where
    SoftVault<S>: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SoftProvider")
            .field("vault", &self.vault)
            .field("identity", &self.identity)
            .finish()
    }
}

impl<S> SoftProvider<S> {
    /// The identity this provider acts as.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }
}

/// Where a software vault keeps its state (sealed: `MemoryStorage` and `FileStorage` are the
/// only ones).
pub(crate) trait Storage: sealed::Backend + Send + Sync + 'static {}

pub(crate) mod sealed {
    use std::time::SystemTime;

    use super::{Change, Material, SoftVault, VaultState};
    use crate::error::ProviderError;
    use crate::provider::{KeyProperties, KeySpec};

    /// How a storage reads the current state and commits a change: the in-memory and file
    /// vaults differ only here.
    pub(crate) trait Backend: Sized {
        /// Whether [`commit`](Self::commit) blocks (file I/O and fsync): then changes run on
        /// the crate's blocking pool; otherwise on the caller's task (a lock and a map update).
        const COMMIT_BLOCKS: bool;

        /// Whether blocking work runs on the caller's task anyway: a deterministic test vault
        /// (fixed RNG seed), whose schedules must replay exactly, without thread hops.
        fn runs_inline(_vault: &SoftVault<Self>) -> bool {
            false
        }

        /// Runs `f` on the current state (reloaded first where another process may have
        /// changed it).
        fn with_state<T>(
            vault: &SoftVault<Self>,
            f: impl FnOnce(&VaultState) -> Result<T, ProviderError>,
        ) -> Result<T, ProviderError>;

        /// Applies `change` durably (acknowledged only once it is stored).
        fn commit(
            vault: &SoftVault<Self>,
            change: Change,
        ) -> Result<Option<KeyProperties>, ProviderError>;

        /// Generates key material (outside any state lock: RSA 4096 takes a while).
        fn generate(vault: &SoftVault<Self>, spec: KeySpec) -> Result<Material, ProviderError>;

        /// The vault's clock.
        fn now(vault: &SoftVault<Self>) -> SystemTime;
    }
}

impl<S> SoftVault<S> {
    /// A provider acting as `identity`.
    pub fn provider(&self, identity: &Identity) -> SoftProvider<S> {
        SoftProvider {
            vault: self.clone(),
            identity: identity.clone(),
        }
    }
}

/// The parts every operation shares, over the storage's [`sealed::Backend`].
struct Ops<'a, S>(&'a SoftVault<S>);

impl<S: Storage> Ops<'_, S> {
    /// Runs `f` on the crate's blocking pool ([`crate::blocking::spawn`]), off the caller's
    /// executor — or in place for a vault that [runs inline](sealed::Backend::runs_inline).
    async fn off_executor<T, F>(&self, f: F) -> Result<T, ProviderError>
    where
        T: Send + 'static,
        F: FnOnce(Ops<'_, S>) -> Result<T, ProviderError> + Send + 'static,
    {
        if S::runs_inline(self.0) {
            return f(Ops(self.0));
        }
        let vault = self.0.clone();
        crate::blocking::spawn(move || f(Ops(&vault))).await
    }

    /// Applies an administrative change: on the pool when the storage's commit blocks.
    async fn apply_change(&self, change: Change) -> Result<(), ProviderError> {
        if S::COMMIT_BLOCKS {
            self.off_executor(move |ops| ops.apply(change)).await
        } else {
            self.apply(change)
        }
    }

    fn with_state<T>(
        &self,
        f: impl FnOnce(&VaultState) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        S::with_state(self.0, f)
    }

    fn now(&self) -> SystemTime {
        S::now(self.0)
    }

    fn generate(&self, spec: KeySpec) -> Result<Material, ProviderError> {
        S::generate(self.0, spec)
    }

    /// Applies a change whose result is not needed.
    fn apply(&self, change: Change) -> Result<(), ProviderError> {
        S::commit(self.0, change).map(|_| ())
    }

    /// Adds `material` as the newest version of `name` (a new key when `create`).
    fn add_version(
        &self,
        name: &str,
        material: Material,
        create: bool,
    ) -> Result<KeyProperties, ProviderError> {
        S::commit(
            self.0,
            Change::AddVersion {
                name: name.to_owned(),
                material,
                now: self.now(),
                create,
            },
        )?
        .ok_or_else(|| ProviderError::new(K::InvalidRequest, "no version was added"))
    }
}

#[async_trait]
impl<S: Storage> VaultAdmin for SoftVault<S>
where
    Self: fmt::Debug,
{
    fn capabilities(&self) -> AdminCapabilities {
        AdminCapabilities::ALL
    }

    async fn create_key(&self, name: &str, spec: KeySpec) -> Result<KeyProperties, ProviderError> {
        // Refuse a taken name before spending time on generation (checked again when the
        // change is applied). Generation (RSA 4096 takes seconds) and the commit run on the
        // blocking pool.
        Ops(self).with_state(|s| s.check_free(name))?;
        let name = name.to_owned();
        Ops(self)
            .off_executor(move |ops| {
                let m = ops.generate(spec)?;
                ops.add_version(&name, m, true)
            })
            .await
    }

    async fn import_rsa_pem(&self, name: &str, pem: &str) -> Result<KeyProperties, ProviderError> {
        // Parsing (with the key's consistency check) and the commit on the pool.
        let (name, pem) = (name.to_owned(), Zeroizing::new(pem.to_owned()));
        Ops(self)
            .off_executor(move |ops| {
                let key = RsaPrivate::from_pem(&pem)
                    .map_err(|e| ProviderError::new(K::InvalidRequest, e.to_string()))?;
                ops.add_version(&name, Material::Rsa(Arc::new(key)), false)
            })
            .await
    }

    async fn rotate_key(&self, name: &str) -> Result<KeyProperties, ProviderError> {
        let spec = Ops(self).with_state(|s| s.rotation_spec(name))?;
        let name = name.to_owned();
        Ops(self)
            .off_executor(move |ops| {
                let m = ops.generate(spec)?;
                ops.add_version(&name, m, false)
            })
            .await
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<KeyProperties>, ProviderError> {
        Ops(self).with_state(|s| s.list_versions(name))
    }

    async fn set_enabled(
        &self,
        name: &str,
        version: &str,
        enabled: bool,
    ) -> Result<(), ProviderError> {
        Ops(self)
            .apply_change(Change::SetEnabled {
                name: name.to_owned(),
                version: version.to_owned(),
                enabled,
            })
            .await
    }

    async fn delete_key(&self, name: &str) -> Result<(), ProviderError> {
        Ops(self)
            .apply_change(Change::Delete {
                name: name.to_owned(),
                now: Ops(self).now(),
            })
            .await
    }

    async fn recover_key(&self, name: &str) -> Result<(), ProviderError> {
        Ops(self)
            .apply_change(Change::Recover {
                name: name.to_owned(),
            })
            .await
    }

    async fn purge_key(&self, name: &str) -> Result<(), ProviderError> {
        Ops(self)
            .apply_change(Change::Purge {
                name: name.to_owned(),
                now: Ops(self).now(),
            })
            .await
    }

    async fn set_access(
        &self,
        identity: &Identity,
        permissions: Permissions,
    ) -> Result<(), ProviderError> {
        Ops(self)
            .apply_change(Change::SetAccess {
                identity: identity.clone(),
                permissions,
            })
            .await
    }

    async fn remove_identity(&self, identity: &Identity) -> Result<(), ProviderError> {
        Ops(self)
            .apply_change(Change::RemoveIdentity {
                identity: identity.clone(),
            })
            .await
    }
}

#[async_trait]
impl<S: Storage> ProviderFactory for SoftVault<S>
where
    Self: fmt::Debug,
{
    async fn provider_for(
        &self,
        identity: &Identity,
    ) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        Ok(Arc::new(self.provider(identity)))
    }
}

#[async_trait]
impl<S: Storage> KeyProvider for SoftProvider<S>
where
    SoftVault<S>: fmt::Debug,
{
    async fn vault_properties(&self) -> Result<VaultProperties, ProviderError> {
        Ops(&self.vault).with_state(|s| Ok(s.props.clone()))
    }

    async fn key_properties(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyProperties, ProviderError> {
        Ops(&self.vault).with_state(|s| s.key_properties(&self.identity, name, version))
    }

    async fn wrap_key(
        &self,
        name: &str,
        version: Option<&str>,
        algorithm: WrapAlgorithm,
        key: &[u8],
    ) -> Result<WrappedKey, ProviderError> {
        Ops(&self.vault).with_state(|s| s.wrap(&self.identity, name, version, algorithm, key))
    }

    async fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<SecretBytes, ProviderError> {
        let material =
            Ops(&self.vault).with_state(|s| s.unwrap_material(&self.identity, wrapped))?;
        // The private-key operation runs without holding any lock: an RSA one (milliseconds)
        // on the blocking pool, an AES unwrap (a microsecond) in place.
        match material {
            Material::Rsa(_) if !S::runs_inline(&self.vault) => {
                let (alg, ct) = (wrapped.algorithm, wrapped.ciphertext.clone());
                crate::blocking::spawn(move || material.unwrap(alg, &ct)).await
            }
            _ => material.unwrap(wrapped.algorithm, &wrapped.ciphertext),
        }
    }
}
