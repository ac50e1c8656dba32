//! The key owner's side of AWS KMS, for tests and examples: create RSA keys behind aliases,
//! rotate by moving the alias to a new key, disable/enable, schedule and cancel deletion.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::http::Action;
use super::wire::{AliasRequest, CreateKeyRequest, KeyIdRequest, ScheduleDeletionRequest};
use super::{AwsKmsConfig, AwsKmsProvider};
use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::provider::{
    AdminCapabilities, Identity, KeyProperties, KeyProvider, KeySpec, Permissions, VaultAdmin,
};

/// Vault administration on AWS KMS with the key owner's credentials ([`VaultAdmin`]).
///
/// A key `name` is the alias `alias/<name>`: [`create_key`](VaultAdmin::create_key) creates a
/// KMS key and the alias; [`rotate_key`](VaultAdmin::rotate_key) creates a new key of the same
/// spec and moves the alias to it (AWS does not rotate RSA keys; the new key is the next
/// version). [`list_versions`](VaultAdmin::list_versions) lists the keys this admin put behind
/// the alias (AWS keeps no alias history), [`set_enabled`](VaultAdmin::set_enabled) is
/// `EnableKey`/`DisableKey` of one key, [`delete_key`](VaultAdmin::delete_key) schedules every
/// such key for deletion, [`recover_key`](VaultAdmin::recover_key) cancels it and re-enables
/// the keys (AWS leaves a cancelled key disabled), and [`purge_key`](VaultAdmin::purge_key) is
/// always refused (`Conflict`): AWS deletes a key only when its waiting period ends.
///
/// Access is IAM and key policies, managed outside byok: [`set_access`](VaultAdmin::set_access)
/// and [`remove_identity`](VaultAdmin::remove_identity) are `Unsupported`, and
/// [`provider_for`](crate::provider::ProviderFactory::provider_for) gives a provider with the admin's own
/// credentials whatever the identity.
#[derive(Debug, Clone)]
pub struct AwsKmsAdmin {
    provider: AwsKmsProvider,
    versions: Arc<Mutex<HashMap<String, Vec<String>>>>,
}

impl AwsKmsAdmin {
    /// An admin acting with `config`'s credentials. Makes no request.
    ///
    /// # Errors
    /// As [`AwsKmsProvider::new`].
    pub fn new(config: AwsKmsConfig) -> Result<Self, ProviderError> {
        Ok(Self {
            provider: AwsKmsProvider::new(config)?,
            versions: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    /// The provider with the admin's credentials.
    pub fn provider(&self) -> &AwsKmsProvider {
        &self.provider
    }

    fn alias(name: &str) -> Result<String, ProviderError> {
        let bare = name.strip_prefix("alias/").unwrap_or(name);
        let id = crate::KeyId::new("arn:aws:kms:us-east-1:000000000000", bare, None)
            .map_err(|e| ProviderError::new(K::InvalidRequest, e.to_string()))?;
        if id.kind() != crate::KeyIdKind::AwsAliasArn {
            return Err(ProviderError::new(
                K::InvalidRequest,
                format!("{name:?} is a key id; the admin names keys by alias"),
            ));
        }
        Ok(id.name().to_owned())
    }

    fn alias_arn(&self, name: &str) -> Result<String, ProviderError> {
        Ok(format!("{}:{}", self.provider.vault(), Self::alias(name)?))
    }

    fn key_arn(&self, key_id: &str) -> String {
        format!("{}:key/{key_id}", self.provider.vault())
    }

    fn known(&self, alias: &str) -> Vec<String> {
        self.versions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(alias)
            .cloned()
            .unwrap_or_default()
    }

    fn remember(&self, alias: &str, key_id: &str) {
        let mut v = self.versions.lock().unwrap_or_else(|p| p.into_inner());
        let list = v.entry(alias.to_owned()).or_default();
        if !list.iter().any(|k| k == key_id) {
            list.push(key_id.to_owned());
        }
    }

    /// The key ids behind `name`: the remembered ones, or the alias's current target.
    async fn keys_of(&self, name: &str) -> Result<Vec<String>, ProviderError> {
        let alias = Self::alias(name)?;
        let target = self.provider.describe(&self.alias_arn(name)?).await?.key_id;
        self.remember(&alias, &target);
        Ok(self.known(&alias))
    }

    async fn new_key(&self, spec: KeySpec, alias: &str) -> Result<String, ProviderError> {
        let (key_spec, usage) = match spec {
            KeySpec::Rsa(2048) => ("RSA_2048", "ENCRYPT_DECRYPT"),
            KeySpec::Rsa(3072) => ("RSA_3072", "ENCRYPT_DECRYPT"),
            KeySpec::Rsa(4096) => ("RSA_4096", "ENCRYPT_DECRYPT"),
            KeySpec::EcP256 => ("ECC_NIST_P256", "SIGN_VERIFY"),
            other => {
                return Err(ProviderError::new(
                    K::InvalidRequest,
                    format!("AWS KMS has no {other:?} key for byok (RSA 2048/3072/4096, EC P-256)"),
                ));
            }
        };
        let description = format!("byok customer key {alias}");
        let ans = self
            .provider
            .conn()
            .call(
                Action::CreateKey,
                &CreateKeyRequest {
                    key_spec,
                    key_usage: usage,
                    description: &description,
                },
            )
            .await?;
        Ok(ans
            .json::<super::wire::DescribeKeyResponse>(Action::CreateKey.name())?
            .key_metadata
            .key_id)
    }

    async fn call_key(&self, action: Action, key_id: &str) -> Result<(), ProviderError> {
        let arn = self.key_arn(key_id);
        self.provider
            .conn()
            .call(action, &KeyIdRequest { key_id: &arn })
            .await
            .map(drop)
    }

    fn spec_of(props: &KeyProperties) -> KeySpec {
        match props.key_type {
            crate::provider::KeyType::Rsa { bits } => KeySpec::Rsa(bits),
            _ => KeySpec::EcP256,
        }
    }
}

#[async_trait]
impl VaultAdmin for AwsKmsAdmin {
    fn capabilities(&self) -> AdminCapabilities {
        AdminCapabilities {
            // ScheduleKeyDeletion / CancelKeyDeletion.
            soft_delete: true,
            // Purge is always refused: the scenario checks that refusal.
            purge: true,
            // IAM and key policies are the account owner's, outside byok.
            access_policies: false,
            // EnableKey / DisableKey of one key (= one version).
            disable_version: true,
            // An alias points at one key: a disabled target has no fallback.
            latest_skips_disabled: false,
            // AWS imports RSA material only through wrapped ImportKeyMaterial, not PEM.
            import_pem: false,
            // KMS's symmetric keys do not do A256KW (RFC 3394).
            aes_keys: false,
            ec_keys: true,
            rsa_oaep_sha256: true,
            rsa_oaep_sha1: true,
        }
    }

    async fn create_key(&self, name: &str, spec: KeySpec) -> Result<KeyProperties, ProviderError> {
        let alias = Self::alias(name)?;
        let key_id = self.new_key(spec, &alias).await?;
        let created = self
            .provider
            .conn()
            .call(
                Action::CreateAlias,
                &AliasRequest {
                    alias_name: &alias,
                    target_key_id: &key_id,
                },
            )
            .await;
        if let Err(e) = created {
            // Do not leave an unnamed key behind (best effort; the error is the alias's).
            let arn = self.key_arn(&key_id);
            let _ = self
                .provider
                .conn()
                .call(
                    Action::ScheduleKeyDeletion,
                    &ScheduleDeletionRequest {
                        key_id: &arn,
                        pending_window_in_days: 7,
                    },
                )
                .await;
            return Err(e);
        }
        self.remember(&alias, &key_id);
        self.provider.key_properties(name, Some(&key_id)).await
    }

    async fn import_rsa_pem(
        &self,
        _name: &str,
        _pem: &str,
    ) -> Result<KeyProperties, ProviderError> {
        Err(ProviderError::new(
            K::Unsupported,
            "AWS KMS imports RSA key material only wrapped for an import token \
             (GetParametersForImport / ImportKeyMaterial), not as PEM",
        ))
    }

    async fn rotate_key(&self, name: &str) -> Result<KeyProperties, ProviderError> {
        let alias = Self::alias(name)?;
        let current = self.provider.key_properties(name, None).await?;
        let key_id = self.new_key(Self::spec_of(&current), &alias).await?;
        self.provider
            .conn()
            .call(
                Action::UpdateAlias,
                &AliasRequest {
                    alias_name: &alias,
                    target_key_id: &key_id,
                },
            )
            .await?;
        self.remember(&alias, &current.version);
        self.remember(&alias, &key_id);
        self.provider.key_properties(name, Some(&key_id)).await
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<KeyProperties>, ProviderError> {
        let mut out = Vec::new();
        for key_id in self.keys_of(name).await? {
            out.push(self.provider.key_properties(name, Some(&key_id)).await?);
        }
        Ok(out)
    }

    async fn set_enabled(
        &self,
        _name: &str,
        version: &str,
        enabled: bool,
    ) -> Result<(), ProviderError> {
        let action = if enabled {
            Action::EnableKey
        } else {
            Action::DisableKey
        };
        self.call_key(action, version).await
    }

    async fn delete_key(&self, name: &str) -> Result<(), ProviderError> {
        let days = self.provider.config().deletion_window_days;
        for key_id in self.keys_of(name).await? {
            let arn = self.key_arn(&key_id);
            let r = self
                .provider
                .conn()
                .call(
                    Action::ScheduleKeyDeletion,
                    &ScheduleDeletionRequest {
                        key_id: &arn,
                        pending_window_in_days: days,
                    },
                )
                .await;
            match r {
                Ok(_) => {}
                // Already pending deletion.
                Err(e) if e.kind() == K::KeyDeleted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    async fn recover_key(&self, name: &str) -> Result<(), ProviderError> {
        // DescribeKey answers through the alias while its key is pending deletion, so only a
        // missing alias fails here (KeyNotFound).
        for key_id in self.keys_of(name).await? {
            self.call_key(Action::CancelKeyDeletion, &key_id).await?;
            // AWS leaves a key whose deletion was cancelled disabled.
            self.call_key(Action::EnableKey, &key_id).await?;
        }
        Ok(())
    }

    async fn purge_key(&self, name: &str) -> Result<(), ProviderError> {
        let m = self.provider.describe(&self.alias_arn(name)?).await?;
        if m.key_state.as_deref() == Some("PendingDeletion") {
            Err(ProviderError::new(
                K::Conflict,
                format!(
                    "the AWS KMS key {} is deleted only when its waiting period (7 to 30 \
                     days) ends; it cannot be purged sooner",
                    m.key_id
                ),
            ))
        } else {
            Err(ProviderError::new(
                K::KeyNotFound,
                format!("the AWS KMS key {} is not pending deletion", m.key_id),
            ))
        }
    }

    async fn set_access(
        &self,
        _identity: &Identity,
        _permissions: Permissions,
    ) -> Result<(), ProviderError> {
        Err(ProviderError::new(
            K::Unsupported,
            "AWS KMS access is IAM and key policies (kms:DescribeKey, kms:GetPublicKey, \
             kms:Decrypt), managed in the tenant's account, not by byok",
        ))
    }

    async fn remove_identity(&self, identity: &Identity) -> Result<(), ProviderError> {
        self.set_access(identity, Permissions::NONE).await
    }
}

/// Access is IAM and key policy, outside byok: every identity gets the admin's provider.
#[async_trait]
impl crate::provider::ProviderFactory for AwsKmsAdmin {
    async fn provider_for(
        &self,
        _identity: &Identity,
    ) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        Ok(Arc::new(self.provider.clone()))
    }
}
