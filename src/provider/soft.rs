//! Software key material and the vault semantics shared by the software vaults (in-memory
//! now, file-backed later): versions, latest-enabled resolution, soft-delete, purge
//! protection and per-identity access policies.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use zeroize::Zeroizing;

use super::{
    Identity, KeyOperation, KeyProperties, KeySpec, KeyType, Permissions, VaultProperties,
    WrapAlgorithm, WrappedKey,
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

/// A software vault's storage: how to read the current state and commit a change. The
/// in-memory and file vaults differ only here; [`soft_vault_impls!`] gives both the same
/// [`super::VaultAdmin`] and [`super::KeyProvider`] behaviour on top of it.
pub(crate) trait SoftVault {
    /// Whether [`commit`](Self::commit) blocks (file I/O and fsync): then changes run on the
    /// crate's blocking pool; otherwise on the caller's task (a lock and a map update).
    const COMMIT_BLOCKS: bool;

    /// Whether blocking work runs on the caller's task anyway: a deterministic test vault
    /// (fixed RNG seed), whose schedules must replay exactly, without thread hops.
    fn runs_inline(&self) -> bool {
        false
    }

    /// Runs `f` on the current state (reloaded first where another process may have changed
    /// it).
    fn with_state<T>(
        &self,
        f: impl FnOnce(&VaultState) -> Result<T, ProviderError>,
    ) -> Result<T, ProviderError>;

    /// Applies `change` durably (acknowledged only once it is stored).
    fn commit(&self, change: Change) -> Result<Option<KeyProperties>, ProviderError>;

    /// Generates key material (outside any state lock: RSA 4096 takes a while).
    fn generate(&self, spec: KeySpec) -> Result<Material, ProviderError>;

    /// The vault's clock.
    fn now(&self) -> SystemTime;

    /// Applies a change whose result is not needed.
    fn apply(&self, change: Change) -> Result<(), ProviderError> {
        self.commit(change).map(|_| ())
    }

    /// Adds `material` as the newest version of `name` (a new key when `create`).
    fn add_version(
        &self,
        name: &str,
        material: Material,
        create: bool,
    ) -> Result<KeyProperties, ProviderError> {
        self.commit(Change::AddVersion {
            name: name.to_owned(),
            material,
            now: self.now(),
            create,
        })?
        .ok_or_else(|| ProviderError::new(K::InvalidRequest, "no version was added"))
    }
}

/// Runs `f` with a handle on `vault` on the crate's blocking pool
/// ([`crate::blocking::spawn`]), off the caller's executor.
async fn off_executor<V, T, F>(vault: &V, f: F) -> Result<T, ProviderError>
where
    V: SoftVault + Clone + Send + 'static,
    T: Send + 'static,
    F: FnOnce(&V) -> Result<T, ProviderError> + Send + 'static,
{
    if vault.runs_inline() {
        return f(vault);
    }
    let vault = vault.clone();
    crate::blocking::spawn(move || f(&vault)).await
}

// The operations of `soft_vault_impls!` that do blocking work (key generation, RSA private-key
// operations, fsync) run it on the blocking pool through these functions.

/// `VaultAdmin::create_key`: generation (RSA 4096 takes seconds) and the commit on the pool.
pub(crate) async fn create_key<V>(
    vault: &V,
    name: &str,
    spec: KeySpec,
) -> Result<KeyProperties, ProviderError>
where
    V: SoftVault + Clone + Send + 'static,
{
    // Refuse a taken name before spending time on generation (checked again when the change
    // is applied).
    vault.with_state(|s| s.check_free(name))?;
    let name = name.to_owned();
    off_executor(vault, move |v| {
        let m = v.generate(spec)?;
        v.add_version(&name, m, true)
    })
    .await
}

/// `VaultAdmin::rotate_key`: generation and the commit on the pool.
pub(crate) async fn rotate_key<V>(vault: &V, name: &str) -> Result<KeyProperties, ProviderError>
where
    V: SoftVault + Clone + Send + 'static,
{
    let spec = vault.with_state(|s| s.rotation_spec(name))?;
    let name = name.to_owned();
    off_executor(vault, move |v| {
        let m = v.generate(spec)?;
        v.add_version(&name, m, false)
    })
    .await
}

/// `VaultAdmin::import_rsa_pem`: parsing (with the key's consistency check) and the commit on
/// the pool.
pub(crate) async fn import_rsa_pem<V>(
    vault: &V,
    name: &str,
    pem: &str,
) -> Result<KeyProperties, ProviderError>
where
    V: SoftVault + Clone + Send + 'static,
{
    let (name, pem) = (name.to_owned(), Zeroizing::new(pem.to_owned()));
    off_executor(vault, move |v| {
        let key = RsaPrivate::from_pem(&pem)
            .map_err(|e| ProviderError::new(K::InvalidRequest, e.to_string()))?;
        v.add_version(&name, Material::Rsa(Arc::new(key)), false)
    })
    .await
}

/// Applies an administrative change: on the pool when the vault's commit blocks.
pub(crate) async fn apply<V>(vault: &V, change: Change) -> Result<(), ProviderError>
where
    V: SoftVault + Clone + Send + 'static,
{
    if V::COMMIT_BLOCKS {
        off_executor(vault, move |v| v.apply(change)).await
    } else {
        vault.apply(change)
    }
}

/// `KeyProvider::unwrap_key`: the access check on the caller's task, an RSA private-key
/// operation on the pool (milliseconds), an AES unwrap (a microsecond) in place.
pub(crate) async fn unwrap_key<V>(
    vault: &V,
    identity: &Identity,
    wrapped: &WrappedKey,
) -> Result<SecretBytes, ProviderError>
where
    V: SoftVault,
{
    let material = vault.with_state(|s| s.unwrap_material(identity, wrapped))?;
    // The private-key operation runs without holding any lock.
    match material {
        Material::Rsa(_) if !vault.runs_inline() => {
            let (alg, ct) = (wrapped.algorithm, wrapped.ciphertext.clone());
            crate::blocking::spawn(move || material.unwrap(alg, &ct)).await
        }
        _ => material.unwrap(wrapped.algorithm, &wrapped.ciphertext),
    }
}

/// `VaultAdmin` for a software vault type `$vault` (a [`SoftVault`] with a
/// `provider(&Identity) -> $provider` method) and `KeyProvider` for `$provider` (a struct with
/// `vault: $vault` and `identity: Identity` fields).
macro_rules! soft_vault_impls {
    ($vault:ty, $provider:ty) => {
        #[async_trait::async_trait]
        impl $crate::provider::VaultAdmin for $vault {
            fn capabilities(&self) -> $crate::provider::AdminCapabilities {
                $crate::provider::AdminCapabilities::ALL
            }

            async fn create_key(
                &self,
                name: &str,
                spec: $crate::provider::KeySpec,
            ) -> Result<$crate::provider::KeyProperties, $crate::ProviderError> {
                $crate::provider::soft::create_key(self, name, spec).await
            }

            async fn import_rsa_pem(
                &self,
                name: &str,
                pem: &str,
            ) -> Result<$crate::provider::KeyProperties, $crate::ProviderError> {
                $crate::provider::soft::import_rsa_pem(self, name, pem).await
            }

            async fn rotate_key(
                &self,
                name: &str,
            ) -> Result<$crate::provider::KeyProperties, $crate::ProviderError> {
                $crate::provider::soft::rotate_key(self, name).await
            }

            async fn list_versions(
                &self,
                name: &str,
            ) -> Result<Vec<$crate::provider::KeyProperties>, $crate::ProviderError> {
                use $crate::provider::soft::SoftVault as _;
                self.with_state(|s| s.list_versions(name))
            }

            async fn set_enabled(
                &self,
                name: &str,
                version: &str,
                enabled: bool,
            ) -> Result<(), $crate::ProviderError> {
                $crate::provider::soft::apply(
                    self,
                    $crate::provider::soft::Change::SetEnabled {
                        name: name.to_owned(),
                        version: version.to_owned(),
                        enabled,
                    },
                )
                .await
            }

            async fn delete_key(&self, name: &str) -> Result<(), $crate::ProviderError> {
                $crate::provider::soft::apply(
                    self,
                    $crate::provider::soft::Change::Delete {
                        name: name.to_owned(),
                        now: $crate::provider::soft::SoftVault::now(self),
                    },
                )
                .await
            }

            async fn recover_key(&self, name: &str) -> Result<(), $crate::ProviderError> {
                $crate::provider::soft::apply(
                    self,
                    $crate::provider::soft::Change::Recover {
                        name: name.to_owned(),
                    },
                )
                .await
            }

            async fn purge_key(&self, name: &str) -> Result<(), $crate::ProviderError> {
                $crate::provider::soft::apply(
                    self,
                    $crate::provider::soft::Change::Purge {
                        name: name.to_owned(),
                        now: $crate::provider::soft::SoftVault::now(self),
                    },
                )
                .await
            }

            async fn set_access(
                &self,
                identity: &$crate::provider::Identity,
                permissions: $crate::provider::Permissions,
            ) -> Result<(), $crate::ProviderError> {
                $crate::provider::soft::apply(
                    self,
                    $crate::provider::soft::Change::SetAccess {
                        identity: identity.clone(),
                        permissions,
                    },
                )
                .await
            }

            async fn remove_identity(
                &self,
                identity: &$crate::provider::Identity,
            ) -> Result<(), $crate::ProviderError> {
                $crate::provider::soft::apply(
                    self,
                    $crate::provider::soft::Change::RemoveIdentity {
                        identity: identity.clone(),
                    },
                )
                .await
            }

            async fn provider_for(
                &self,
                identity: &$crate::provider::Identity,
            ) -> Result<std::sync::Arc<dyn $crate::provider::KeyProvider>, $crate::ProviderError>
            {
                Ok(std::sync::Arc::new(self.provider(identity)))
            }
        }

        #[async_trait::async_trait]
        impl $crate::provider::KeyProvider for $provider {
            async fn vault_properties(
                &self,
            ) -> Result<$crate::provider::VaultProperties, $crate::ProviderError> {
                use $crate::provider::soft::SoftVault as _;
                self.vault.with_state(|s| Ok(s.props.clone()))
            }

            async fn key_properties(
                &self,
                name: &str,
                version: Option<&str>,
            ) -> Result<$crate::provider::KeyProperties, $crate::ProviderError> {
                use $crate::provider::soft::SoftVault as _;
                self.vault
                    .with_state(|s| s.key_properties(&self.identity, name, version))
            }

            async fn wrap_key(
                &self,
                name: &str,
                version: Option<&str>,
                algorithm: $crate::provider::WrapAlgorithm,
                key: &[u8],
            ) -> Result<$crate::provider::WrappedKey, $crate::ProviderError> {
                use $crate::provider::soft::SoftVault as _;
                self.vault
                    .with_state(|s| s.wrap(&self.identity, name, version, algorithm, key))
            }

            async fn unwrap_key(
                &self,
                wrapped: &$crate::provider::WrappedKey,
            ) -> Result<$crate::SecretBytes, $crate::ProviderError> {
                $crate::provider::soft::unwrap_key(&self.vault, &self.identity, wrapped).await
            }
        }
    };
}
pub(crate) use soft_vault_impls;
