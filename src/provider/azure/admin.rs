//! The vault owner's side of Azure Key Vault (create, new version, enable/disable, delete,
//! recover, purge, import), for tests and examples.

use core::fmt;
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use azure_core::http::{ClientMethodOptions, RequestContent};
use azure_security_keyvault_keys::models::{
    CreateKeyParameters, CurveName, ImportKeyParameters, JsonWebKey, KeyAttributes,
    KeyClientUpdateKeyPropertiesOptions, KeyType as AzKeyType, UpdateKeyPropertiesParameters,
};
use zeroize::Zeroize;

use super::errors::Op;
use super::{AzureCredential, AzureKeyVaultConfig, AzureKeyVaultProvider, Connection};
use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::provider::{
    AdminCapabilities, Identity, KeyProperties, KeyProvider, KeySpec, Permissions, VaultAdmin,
};

/// The credential an identity acts with, for [`AzureKeyVaultAdmin::provider_for`].
type IdentityCredentials = Arc<dyn Fn(&Identity) -> AzureCredential + Send + Sync>;

/// [`VaultAdmin`] over Azure Key Vault's data plane, acting as the vault owner (an identity
/// with the key permissions create, get, list, update, import, delete, recover and purge — the
/// built-in role "Key Vault Crypto Officer").
///
/// What Key Vault's data plane cannot do is declared in [`VaultAdmin::capabilities`]:
/// - **access policies**: access policies and RBAC role assignments are Azure Resource
///   Manager operations (`Microsoft.KeyVault/vaults/accessPolicies`,
///   `Microsoft.Authorization/roleAssignments`), not Key Vault REST calls; `set_access` and
///   `remove_identity` answer `Unsupported`;
/// - **AES keys** (`A256KW`): vaults hold RSA and EC keys; `oct` keys exist only in Managed HSM.
pub struct AzureKeyVaultAdmin {
    conn: Arc<Connection>,
    config: AzureKeyVaultConfig,
    identities: Option<IdentityCredentials>,
}

impl fmt::Debug for AzureKeyVaultAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AzureKeyVaultAdmin")
            .field("conn", &self.conn)
            .finish_non_exhaustive()
    }
}

impl AzureKeyVaultAdmin {
    /// The owner's view of the vault in `config`.
    ///
    /// # Errors
    /// As [`AzureKeyVaultProvider::new`].
    pub fn new(config: AzureKeyVaultConfig) -> Result<Self, ProviderError> {
        Ok(Self {
            conn: Arc::new(config.connect()?),
            config,
            identities: None,
        })
    }

    /// How [`ProviderFactory::provider_for`](crate::provider::ProviderFactory::provider_for) obtains an identity's credential (by default every
    /// identity's provider uses the owner's credential: the vault has no way to mint one).
    pub fn with_identity_credentials(
        mut self,
        f: impl Fn(&Identity) -> AzureCredential + Send + Sync + 'static,
    ) -> Self {
        self.identities = Some(Arc::new(f));
        self
    }

    /// The owner's own provider.
    ///
    /// # Errors
    /// As [`AzureKeyVaultProvider::new`].
    pub fn owner_provider(&self) -> Result<AzureKeyVaultProvider, ProviderError> {
        AzureKeyVaultProvider::new(self.config.clone())
    }

    async fn create(
        &self,
        name: &str,
        p: CreateKeyParameters,
    ) -> Result<KeyProperties, ProviderError> {
        let key = self
            .conn
            .call_once(&format!("create key {name}"), Op::Key, || async {
                self.conn
                    .client
                    .create_key(name, RequestContent::try_from(p.clone())?, None)
                    .await?
                    .into_model()
            })
            .await?;
        self.conn.properties(&key)
    }

    /// `Conflict` unless `name` is free (neither present nor soft-deleted).
    async fn ensure_free(&self, name: &str) -> Result<(), ProviderError> {
        match self.conn.get(name, None).await {
            Ok(_) => Err(ProviderError::new(
                K::Conflict,
                format!("key {name} already exists"),
            )),
            Err(e) if e.kind() == K::KeyDeleted => Err(ProviderError::new(
                K::Conflict,
                format!("key {name} is soft-deleted: recover or purge it first"),
            )),
            Err(e) if e.kind() == K::KeyNotFound => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn spec_parameters(spec: KeySpec) -> Result<CreateKeyParameters, ProviderError> {
    match spec {
        KeySpec::Rsa(bits) => Ok(CreateKeyParameters {
            kty: Some(AzKeyType::Rsa),
            key_size: Some(i32::try_from(bits).unwrap_or(i32::MAX)),
            ..Default::default()
        }),
        KeySpec::EcP256 => Ok(CreateKeyParameters {
            kty: Some(AzKeyType::Ec),
            curve: Some(CurveName::P256),
            ..Default::default()
        }),
        _ => Err(ProviderError::new(
            K::InvalidRequest,
            "Azure Key Vault vaults create RSA and EC keys only (AES keys are a Managed HSM \
             feature)",
        )),
    }
}

#[async_trait]
impl VaultAdmin for AzureKeyVaultAdmin {
    fn capabilities(&self) -> AdminCapabilities {
        AdminCapabilities {
            soft_delete: true,
            purge: true,
            access_policies: false,
            disable_version: true,
            latest_skips_disabled: true,
            import_pem: true,
            aes_keys: false,
            ec_keys: true,
            rsa_oaep_sha256: true,
            rsa_oaep_sha1: true,
        }
    }

    async fn create_key(&self, name: &str, spec: KeySpec) -> Result<KeyProperties, ProviderError> {
        crate::provider::check_name(name)?;
        let p = spec_parameters(spec)?;
        self.ensure_free(name).await?;
        self.create(name, p).await
    }

    async fn import_rsa_pem(&self, name: &str, pem: &str) -> Result<KeyProperties, ProviderError> {
        crate::provider::check_name(name)?;
        let bad = |why: String| ProviderError::new(K::InvalidRequest, why);
        let key = crate::crypto::RsaPrivate::from_pem(pem).map_err(|e| bad(e.to_string()))?;
        let [n, e, d, p, q, dp, dq, qi] = key
            .crt_components()
            .ok_or_else(|| bad("a two-prime RSA key with CRT values is required".into()))?;
        let mut params = ImportKeyParameters {
            key: Some(JsonWebKey {
                kty: Some(AzKeyType::Rsa),
                n: Some(n.to_vec()),
                e: Some(e.to_vec()),
                d: Some(d.to_vec()),
                p: Some(p.to_vec()),
                q: Some(q.to_vec()),
                dp: Some(dp.to_vec()),
                dq: Some(dq.to_vec()),
                qi: Some(qi.to_vec()),
                ..Default::default()
            }),
            hsm: Some(false),
            ..Default::default()
        };
        let body = zeroize::Zeroizing::new(
            serde_json::to_vec(&params).map_err(|e| bad(format!("JWK encoding: {e}")))?,
        );
        if let Some(jwk) = params.key.as_mut() {
            for part in [
                &mut jwk.d,
                &mut jwk.p,
                &mut jwk.q,
                &mut jwk.dp,
                &mut jwk.dq,
                &mut jwk.qi,
            ] {
                if let Some(v) = part.as_mut() {
                    v.zeroize();
                }
            }
        }
        let k = self
            .conn
            .call_once(&format!("import key {name}"), Op::Key, || async {
                let content: RequestContent<ImportKeyParameters> =
                    azure_core::Bytes::copy_from_slice(&body).into();
                self.conn
                    .client
                    .import_key(name, content, None)
                    .await?
                    .into_model()
            })
            .await?;
        self.conn.properties(&k)
    }

    async fn rotate_key(&self, name: &str) -> Result<KeyProperties, ProviderError> {
        crate::provider::check_name(name)?;
        let current = self.conn.get(name, None).await?;
        let jwk = current.key.unwrap_or_default();
        let p = match jwk.kty {
            Some(AzKeyType::Ec | AzKeyType::EcHsm) => CreateKeyParameters {
                kty: jwk.kty.clone(),
                curve: jwk.crv.clone(),
                ..Default::default()
            },
            _ => CreateKeyParameters {
                kty: jwk.kty.clone(),
                key_size: jwk.n.as_ref().map(|n| {
                    let lead = n.iter().take_while(|b| **b == 0).count();
                    i32::try_from((n.len() - lead) * 8).unwrap_or(i32::MAX)
                }),
                ..Default::default()
            },
        };
        self.create(name, p).await
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<KeyProperties>, ProviderError> {
        crate::provider::check_name(name)?;
        let mut out = Vec::new();
        for v in self.conn.versions(name).await? {
            let Some(version) = v
                .kid
                .as_deref()
                .and_then(|k| k.parse::<azure_security_keyvault_keys::ResourceId>().ok())
                .and_then(|id| id.version)
            else {
                continue;
            };
            out.push(
                self.conn
                    .properties(&self.conn.get(name, Some(&version)).await?)?,
            );
        }
        out.sort_by_key(|p| p.created.duration_since(SystemTime::UNIX_EPOCH).ok());
        Ok(out)
    }

    async fn set_enabled(
        &self,
        name: &str,
        version: &str,
        enabled: bool,
    ) -> Result<(), ProviderError> {
        crate::provider::check_name(name)?;
        let r = self
            .conn
            .call(&format!("update key {name}/{version}"), Op::Key, || async {
                let p = UpdateKeyPropertiesParameters {
                    key_attributes: Some(KeyAttributes {
                        enabled: Some(enabled),
                        ..Default::default()
                    }),
                    ..Default::default()
                };
                let o = KeyClientUpdateKeyPropertiesOptions {
                    key_version: Some(version.to_owned()),
                    method_options: ClientMethodOptions::default(),
                };
                self.conn
                    .client
                    .update_key_properties(name, RequestContent::try_from(p)?, Some(o))
                    .await
                    .map(|_| ())
            })
            .await;
        self.conn.refine_not_found(name, r).await
    }

    async fn delete_key(&self, name: &str) -> Result<(), ProviderError> {
        crate::provider::check_name(name)?;
        self.conn
            .call(&format!("delete key {name}"), Op::Key, || async {
                self.conn.client.delete_key(name, None).await.map(|_| ())
            })
            .await
    }

    async fn recover_key(&self, name: &str) -> Result<(), ProviderError> {
        crate::provider::check_name(name)?;
        self.conn
            .call(&format!("recover key {name}"), Op::Key, || async {
                self.conn
                    .client
                    .recover_deleted_key(name, None)
                    .await
                    .map(|_| ())
            })
            .await
    }

    async fn purge_key(&self, name: &str) -> Result<(), ProviderError> {
        crate::provider::check_name(name)?;
        let deleted = self
            .conn
            .call(&format!("get deleted key {name}"), Op::Key, || async {
                self.conn
                    .client
                    .get_deleted_key(name, None)
                    .await?
                    .into_model()
            })
            .await?;
        // Purge protection shows in the recovery level: `Recoverable`,
        // `Recoverable+ProtectedSubscription` and their `CustomizedRecoverable` forms are not
        // purgeable (the REST reference's DeletionRecoveryLevel).
        let level = deleted
            .attributes
            .and_then(|a| a.recovery_level)
            .map(|l| l.to_string())
            .unwrap_or_default();
        if !level.is_empty() && !level.contains("Purgeable") {
            return Err(ProviderError::new(
                K::Conflict,
                format!("key {name}: purge protection holds it (recovery level {level})"),
            ));
        }
        self.conn
            .call(&format!("purge key {name}"), Op::Key, || async {
                self.conn
                    .client
                    .purge_deleted_key(name, None)
                    .await
                    .map(|_| ())
            })
            .await
            .map_err(|e| {
                if e.kind() == K::Forbidden
                    && e.message()
                        .to_ascii_lowercase()
                        .contains("purge protection")
                {
                    ProviderError::new(K::Conflict, e.message().to_owned())
                } else {
                    e
                }
            })
    }

    async fn set_access(
        &self,
        _identity: &Identity,
        _permissions: Permissions,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::new(
            K::Unsupported,
            "Key Vault access policies and RBAC role assignments are Azure Resource Manager \
             operations, not Key Vault data-plane calls",
        ))
    }

    async fn remove_identity(&self, _identity: &Identity) -> Result<(), ProviderError> {
        self.set_access(_identity, Permissions::NONE).await
    }
}

/// A provider per identity: the admin's configuration with the identity's credential (from
/// the identity map given to the admin, else the admin's own).
#[async_trait]
impl crate::provider::ProviderFactory for AzureKeyVaultAdmin {
    async fn provider_for(
        &self,
        identity: &Identity,
    ) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        let mut config = self.config.clone();
        if let Some(f) = &self.identities {
            config.credential = f(identity);
        }
        Ok(Arc::new(AzureKeyVaultProvider::new(config)?))
    }
}
