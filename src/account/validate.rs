//! Validation of customer keys against a policy, and wrapping an account-level key under a
//! key source with proof (the wrapping is unwrapped before anything uses it).

use std::sync::Arc;

use super::policy::Policy;
use super::record::{AccountId, KeyRole, KeySource, WrappedAccountKey};
use super::{AccountManager, Slot};
use crate::audit::{AuditAction, AuditOutcome};
use crate::error::{Error, PolicyViolation, ProviderError, ProviderErrorKind};
use crate::key_id::KeyId;
use crate::provider::{Identity, KeyProperties, KeyProvider, KeyType, WrapAlgorithm, WrappedKey};
use crate::secret::AesKey;

/// Who a key is being configured for (the parts of an account that validation needs).
#[derive(Clone, Copy)]
pub(crate) struct Ctx<'a> {
    pub(crate) id: &'a AccountId,
    pub(crate) policy: &'a Policy,
    pub(crate) region: &'a str,
    pub(crate) tenant: &'a str,
}

impl AccountManager {
    /// Validates a customer key against `policy` and the account's region and tenant, and
    /// returns its provider and (latest or pinned) properties.
    pub(crate) async fn validate_customer_key(
        &self,
        policy: &Policy,
        region: &str,
        tenant: &str,
        key: &KeyId,
        identity: &Identity,
    ) -> Result<(Arc<dyn KeyProvider>, Option<KeyProperties>), Error> {
        let violation = |v| Error::Policy {
            policy: policy.name.clone(),
            violation: v,
        };
        let provider = self.inner.resolver.provider(key.vault(), identity).await?;
        let vp = provider.vault_properties().await?;
        if policy.require_soft_delete && !vp.soft_delete {
            return Err(violation(PolicyViolation::SoftDeleteRequired));
        }
        if policy.require_purge_protection && !vp.purge_protection {
            return Err(violation(PolicyViolation::PurgeProtectionRequired));
        }
        if policy.require_same_region && !vp.region.eq_ignore_ascii_case(region) {
            return Err(violation(PolicyViolation::RegionMismatch {
                vault: vp.region.clone(),
                account: region.to_owned(),
            }));
        }
        if policy.require_same_tenant && vp.tenant != tenant {
            return Err(violation(PolicyViolation::TenantMismatch {
                vault: vp.tenant.clone(),
                account: tenant.to_owned(),
            }));
        }
        if !policy.required_permissions.get {
            return Ok((provider, None));
        }
        let props = match provider.key_properties(key.name(), key.version()).await {
            Err(e) if e.kind() == ProviderErrorKind::Forbidden => {
                return Err(violation(PolicyViolation::MissingPermission("get")));
            }
            other => other?,
        };
        match props.key_type {
            KeyType::Rsa { bits } if policy.allowed_rsa_bits.contains(&bits) => {}
            KeyType::Rsa { bits } => {
                return Err(violation(PolicyViolation::KeySize {
                    bits,
                    allowed: policy.allowed_rsa_bits.iter().copied().collect(),
                }));
            }
            ref other => {
                return Err(violation(PolicyViolation::KeyType {
                    found: other.to_string(),
                }));
            }
        }
        if !props.enabled {
            return Err(ProviderError::new(
                ProviderErrorKind::KeyDisabled,
                format!(
                    "version {} of key {} is disabled",
                    props.version, props.name
                ),
            )
            .into());
        }
        Ok((provider, Some(props)))
    }

    /// Wraps `key` with (`provider`, name, version) and proves the wrapping by unwrapping it
    /// before anything uses it. Permission failures become policy violations naming the
    /// permission.
    pub(crate) async fn wrap_verified(
        &self,
        policy: &Policy,
        provider: &Arc<dyn KeyProvider>,
        name: &str,
        version: Option<&str>,
        algorithm: WrapAlgorithm,
        key: &AesKey,
    ) -> Result<WrappedKey, Error> {
        wrap_and_prove(provider, name, version, algorithm, key)
            .await
            .map_err(|(e, op)| match e.kind() {
                ProviderErrorKind::Forbidden => Error::Policy {
                    policy: policy.name.clone(),
                    violation: PolicyViolation::MissingPermission(op),
                },
                _ => Error::Provider(e),
            })
    }

    /// Wraps `key` under the account's key source; returns the wrapping and the source to
    /// record (a versionless key is pinned when the policy does not follow the latest version).
    pub(crate) async fn wrap_under_source(
        &self,
        acct: Ctx<'_>,
        source: &KeySource,
        key: &AesKey,
        key_id: &str,
    ) -> Result<(WrappedAccountKey, KeySource), Error> {
        let Ctx {
            id,
            policy,
            region,
            tenant,
        } = acct;
        match source {
            KeySource::Platform => Ok((
                self.wrap_platform(Slot::Account, key, key_id.to_owned())
                    .await?,
                KeySource::Platform,
            )),
            KeySource::Customer { key: kid, identity } => {
                let (provider, _props) = self
                    .validate_customer_key(policy, region, tenant, kid, identity)
                    .await?;
                let w = self
                    .wrap_verified(
                        policy,
                        &provider,
                        kid.name(),
                        kid.version(),
                        self.inner.customer_algorithm,
                        key,
                    )
                    .await?;
                let wrapped = WrappedAccountKey::new(key_id, KeyRole::Customer, kid.vault(), w);
                self.emit(
                    id,
                    Some(identity),
                    Some(Self::audit_key(&wrapped)),
                    AuditAction::Wrap,
                    AuditOutcome::Success,
                );
                let recorded = if kid.version().is_none() && !policy.follow_latest_version {
                    kid.with_version(&wrapped.wrapped.key_version)?
                } else {
                    kid.clone()
                };
                Ok((wrapped, KeySource::customer(recorded, identity.clone())))
            }
        }
    }

    pub(crate) async fn wrap_platform(
        &self,
        slot: Slot,
        key: &AesKey,
        key_id: String,
    ) -> Result<WrappedAccountKey, Error> {
        let pk = self.platform_for(slot)?;
        // The service's own key: any failure is the service's, never the tenant's policy.
        let w = wrap_and_prove(&pk.provider, &pk.name, None, pk.algorithm, key)
            .await
            .map_err(|(e, _)| Error::PlatformKey(e))?;
        Ok(WrappedAccountKey::new(
            &key_id,
            pk.role,
            pk.role.as_str(),
            w,
        ))
    }
}

/// Wraps `key` with (`provider`, name, version) and unwraps the result to prove it. A failure
/// comes with the permission of the step that failed (`wrapKey` or `unwrapKey`).
async fn wrap_and_prove(
    provider: &Arc<dyn KeyProvider>,
    name: &str,
    version: Option<&str>,
    algorithm: WrapAlgorithm,
    key: &AesKey,
) -> Result<WrappedKey, (ProviderError, &'static str)> {
    let w = provider
        .wrap_key(name, version, algorithm, key.expose_secret())
        .await
        .map_err(|e| (e, "wrapKey"))?;
    let back = provider
        .unwrap_key(&w)
        .await
        .map_err(|e| (e, "unwrapKey"))?;
    if !crate::crypto::ct_eq(back.expose_secret(), key.expose_secret()) {
        let e = ProviderError::new(
            ProviderErrorKind::UnwrapFailed,
            "the provider's new wrapping did not unwrap to the account key",
        );
        return Err((e, "unwrapKey"));
    }
    Ok(w)
}
