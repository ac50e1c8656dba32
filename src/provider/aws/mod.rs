//! An AWS KMS [`KeyProvider`]: customer keys are RSA KMS keys (`RSA_2048`, `RSA_3072`,
//! `RSA_4096`, key usage `ENCRYPT_DECRYPT`) in the tenant's AWS account.
//!
//! - **Unwrap** is KMS `Decrypt` with `RSAES_OAEP_SHA_256` (`RSA-OAEP-256`) or
//!   `RSAES_OAEP_SHA_1` (`RSA-OAEP`) on the exact key that wrapped (its key ARN).
//! - **Wrap** is local RSA-OAEP (RFC 8017 section 7.1) with the key's public half from
//!   `GetPublicKey` (cached per key id: a KMS key's public key never changes), after a
//!   `DescribeKey` that checks the key's state and usage — the secret never leaves the
//!   process, and the service needs `kms:GetPublicKey` instead of `kms:Encrypt`.
//! - **Key state** comes from `DescribeKey`: `Enabled`; `Disabled` → `KeyDisabled`;
//!   `PendingDeletion` → `KeyDeleted`; unknown key or alias → `KeyNotFound`;
//!   `AccessDeniedException` → `Forbidden` (definitive kinds); throttling, 5xx, timeouts and
//!   failures of the service's own credentials → transient kinds.
//! - **Versions**: AWS KMS has none for RSA keys. A key ARN is its own only version; an
//!   alias is the rotation handle — pointing the alias at a new key is the next "version",
//!   and an account that names the alias without a version re-wraps under the new key on
//!   its next refresh. See `docs/AWS_KMS.md`.
//!
//! Requests are KMS's JSON API (`awsJson1_1`) signed with AWS Signature Version 4 by
//! `aws-sigv4`, sent with reqwest + rustls on the caller's tokio runtime (nothing embedded).

use core::fmt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use aws_credential_types::provider::{ProvideCredentials, SharedCredentialsProvider};
use base64ct::{Base64, Encoding as _};

use crate::crypto::{OaepHash, RsaPublic};
use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::provider::retry::RetryPolicy;
use crate::provider::{
    KeyOperation, KeyProperties, KeyProvider, KeyType, VaultProperties, WrapAlgorithm, WrappedKey,
};
use crate::secret::SecretBytes;
use crate::{Error, KeyId, KeyIdKind};

mod admin;
mod credentials;
mod http;
mod wire;

#[cfg(test)]
mod tests;

pub use admin::AwsKmsAdmin;
/// The credential types of the AWS SDKs (`Credentials`, `provider::ProvideCredentials`),
/// re-exported so that a credential source is built against the version byok uses.
pub use aws_credential_types;
pub use credentials::EnvironmentCredentials;

use http::{Action, Connection};
use wire::{DecryptRequest, DecryptResponse, DescribeKeyResponse, KeyIdRequest, KeyMetadata};

/// Where and how to reach AWS KMS for one account and region (one "vault"): the vault ARN,
/// the credential source, the endpoint, timeouts and retries.
///
/// ```
/// # fn main() -> Result<(), byok::Error> {
/// use byok::provider::aws::{AwsKmsConfig, EnvironmentCredentials};
/// let config = AwsKmsConfig::new("arn:aws:kms:eu-west-1:111122223333", EnvironmentCredentials::new())?
///     .request_timeout(std::time::Duration::from_secs(5));
/// assert_eq!(config.vault(), "arn:aws:kms:eu-west-1:111122223333");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AwsKmsConfig {
    vault: String,
    region: String,
    account: String,
    endpoint: String,
    credentials: SharedCredentialsProvider,
    allow_insecure_http: bool,
    ca_pem: Option<String>,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryPolicy,
    deletion_window_days: u32,
}

impl fmt::Debug for AwsKmsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsKmsConfig")
            .field("vault", &self.vault)
            .field("endpoint", &self.endpoint)
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("deletion_window_days", &self.deletion_window_days)
            .finish_non_exhaustive()
    }
}

impl AwsKmsConfig {
    /// KMS in the account and region of `vault` (`arn:<partition>:kms:<region>:<account>`,
    /// what [`KeyId::vault`] gives for an AWS key), signed with credentials from
    /// `credentials`: any `aws_credential_types` source — [`EnvironmentCredentials`], static
    /// `aws_credential_types::Credentials`, or `aws-config`'s default chain (profiles, web
    /// identity, SSO, container and instance metadata).
    ///
    /// The endpoint is `https://kms.<region>.amazonaws.com` (`.amazonaws.com.cn` in
    /// `aws-cn`); set another with [`endpoint`](Self::endpoint) (FIPS, VPC endpoints,
    /// LocalStack). Defaults: connect timeout 3 s, request timeout 10 s, two retries of
    /// transient failures ([`RetryPolicy::default`]), deletion window 30 days (AWS's
    /// default for `ScheduleKeyDeletion`).
    ///
    /// # Errors
    /// [`Error::InvalidKeyId`] if `vault` is not an AWS KMS vault ARN.
    pub fn new(vault: &str, credentials: impl ProvideCredentials + 'static) -> Result<Self, Error> {
        // A probe key id through the one normalisation place.
        let probe = KeyId::new(vault, "alias/probe", None)?;
        if probe.kind() != KeyIdKind::AwsAliasArn {
            return Err(Error::InvalidKeyId {
                input: vault.to_owned(),
                reason: "an AWS KMS vault is arn:<partition>:kms:<region>:<account>",
            });
        }
        let vault = probe.vault().to_owned();
        let parts: Vec<&str> = vault.split(':').collect();
        let (partition, region, account) = (parts[1], parts[3], parts[4]);
        let suffix = if partition == "aws-cn" {
            "amazonaws.com.cn"
        } else {
            "amazonaws.com"
        };
        Ok(Self {
            endpoint: format!("https://kms.{region}.{suffix}/"),
            region: region.to_owned(),
            account: account.to_owned(),
            vault,
            credentials: SharedCredentialsProvider::new(credentials),
            allow_insecure_http: false,
            ca_pem: None,
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            deletion_window_days: 30,
        })
    }

    /// The vault ARN (`arn:<partition>:kms:<region>:<account>`).
    pub fn vault(&self) -> &str {
        &self.vault
    }

    /// Another endpoint URL (a FIPS or VPC endpoint, LocalStack). `http://` endpoints are
    /// refused unless [`allow_insecure_http`](Self::allow_insecure_http) is set.
    pub fn endpoint(mut self, url: &str) -> Self {
        self.endpoint = if url.ends_with('/') {
            url.to_owned()
        } else {
            format!("{url}/")
        };
        self
    }

    /// Allows a plain `http://` endpoint (tests against a local emulator only).
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.allow_insecure_http = allow;
        self
    }

    /// Trusts the CA certificates in `pem` in addition to the built-in roots (an emulator
    /// with its own certificate).
    pub fn ca_pem(mut self, pem: &str) -> Self {
        self.ca_pem = Some(pem.to_owned());
        self
    }

    /// Time to establish a connection.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Time for one whole request (per attempt).
    pub fn request_timeout(mut self, d: Duration) -> Self {
        self.request_timeout = d;
        self
    }

    /// Retries of transient failures.
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// The `PendingWindowInDays` that [`AwsKmsAdmin::delete_key`](crate::VaultAdmin::delete_key)
    /// asks for (clamped to 7..=30, the range `ScheduleKeyDeletion` accepts), also reported
    /// as the vault's retention.
    pub fn deletion_window_days(mut self, days: u32) -> Self {
        self.deletion_window_days = days.clamp(7, 30);
        self
    }

    fn connect(&self) -> Result<Connection, ProviderError> {
        let bad = |m: String| ProviderError::new(K::InvalidRequest, m);
        let lower = self.endpoint.to_ascii_lowercase();
        if !(lower.starts_with("https://")
            || self.allow_insecure_http && lower.starts_with("http://"))
        {
            return Err(bad(format!(
                "the AWS KMS endpoint {} is not https:// (allow_insecure_http is off)",
                self.endpoint
            )));
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .no_proxy()
            .user_agent(concat!("byok/", env!("CARGO_PKG_VERSION")));
        if let Some(pem) = &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| bad(format!("the CA PEM does not parse: {e}")))?;
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| bad(format!("building the HTTP client: {e}")))?;
        Ok(Connection {
            http,
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            credentials: self.credentials.clone(),
            retry: self.retry,
        })
    }
}

/// The AWS KMS [`KeyProvider`] for one account and region (see the module documentation).
///
/// Key names are what [`KeyId::name`] gives for an AWS key: a key id, `alias/<name>`, or a
/// bare alias name. Versions are key ids. Cloning is cheap (one connection pool).
#[derive(Clone, Debug)]
pub struct AwsKmsProvider {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    conn: Connection,
    config: AwsKmsConfig,
    /// Public keys by key id (immutable for a key id).
    public_keys: Mutex<HashMap<String, RsaPublic>>,
}

impl AwsKmsProvider {
    /// A provider for `config`'s account and region. Makes no request.
    ///
    /// # Errors
    /// `InvalidRequest` for an `http://` endpoint without
    /// [`AwsKmsConfig::allow_insecure_http`], or a CA PEM that does not parse.
    pub fn new(config: AwsKmsConfig) -> Result<Self, ProviderError> {
        Ok(Self {
            inner: Arc::new(Inner {
                conn: config.connect()?,
                config,
                public_keys: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The vault ARN this provider serves (`arn:<partition>:kms:<region>:<account>`).
    pub fn vault(&self) -> &str {
        &self.inner.config.vault
    }

    fn conn(&self) -> &Connection {
        &self.inner.conn
    }

    fn config(&self) -> &AwsKmsConfig {
        &self.inner.config
    }

    /// The identifier of `name` (pinned at `version`) in this vault.
    fn key_id(&self, name: &str, version: Option<&str>) -> Result<KeyId, ProviderError> {
        KeyId::new(self.vault(), name, version).map_err(|e| match e {
            Error::InvalidKeyId { reason, .. } => ProviderError::new(
                // A version that is not a key id (or another key's id for a key ARN) names
                // no key of this name.
                if version.is_some() && KeyId::new(self.vault(), name, None).is_ok() {
                    K::KeyNotFound
                } else {
                    K::InvalidRequest
                },
                format!("{name:?} at {version:?} is not an AWS KMS key: {reason}"),
            ),
            other => ProviderError::new(K::InvalidRequest, other.to_string()),
        })
    }

    async fn describe(&self, arn: &str) -> Result<KeyMetadata, ProviderError> {
        let ans = self
            .conn()
            .call(Action::DescribeKey, &KeyIdRequest { key_id: arn })
            .await?;
        Ok(ans
            .json::<DescribeKeyResponse>(Action::DescribeKey.name())?
            .key_metadata)
    }

    async fn public_key(&self, key_arn: &str, key_id: &str) -> Result<RsaPublic, ProviderError> {
        if let Some(k) = self.cached_public_key(key_id) {
            return Ok(k);
        }
        let ans = self
            .conn()
            .call(Action::GetPublicKey, &KeyIdRequest { key_id: key_arn })
            .await?;
        let r: wire::PublicKeyResponse = ans.json(Action::GetPublicKey.name())?;
        let der = Base64::decode_vec(&r.public_key).map_err(|_| {
            ProviderError::new(
                K::Unavailable,
                "GetPublicKey returned a key that is not base64",
            )
        })?;
        let key = RsaPublic::from_spki_der(&der)
            .map_err(|e| ProviderError::new(K::WrongKeyType, format!("GetPublicKey: {e}")))?;
        self.inner
            .public_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key_id.to_owned(), key.clone());
        Ok(key)
    }

    fn cached_public_key(&self, key_id: &str) -> Option<RsaPublic> {
        self.inner
            .public_keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key_id)
            .cloned()
    }

    /// Properties from `DescribeKey` metadata, as `name` was asked for.
    fn properties(&self, name: &str, m: &KeyMetadata) -> Result<KeyProperties, ProviderError> {
        let state = m.key_state.as_deref().unwrap_or("");
        if matches!(state, "PendingDeletion" | "PendingReplicaDeletion") {
            return Err(ProviderError::new(
                K::KeyDeleted,
                format!("the AWS KMS key {} is pending deletion", m.key_id),
            ));
        }
        let spec = m.spec();
        let key_type = match spec {
            "RSA_2048" => KeyType::Rsa { bits: 2048 },
            "RSA_3072" => KeyType::Rsa { bits: 3072 },
            "RSA_4096" => KeyType::Rsa { bits: 4096 },
            "ECC_NIST_P256" => KeyType::Ec {
                curve: "P-256".into(),
            },
            "ECC_NIST_P384" => KeyType::Ec {
                curve: "P-384".into(),
            },
            "ECC_NIST_P521" => KeyType::Ec {
                curve: "P-521".into(),
            },
            "ECC_SECG_P256K1" => KeyType::Ec {
                curve: "secp256k1".into(),
            },
            "SYMMETRIC_DEFAULT" => KeyType::Aes { bits: 256 },
            other => KeyType::Ec {
                curve: other.to_owned(),
            },
        };
        let operations = match m.key_usage.as_deref() {
            Some("ENCRYPT_DECRYPT") if matches!(key_type, KeyType::Rsa { .. }) => vec![
                KeyOperation::WrapKey,
                KeyOperation::UnwrapKey,
                KeyOperation::Encrypt,
                KeyOperation::Decrypt,
            ],
            Some("ENCRYPT_DECRYPT") => vec![KeyOperation::Encrypt, KeyOperation::Decrypt],
            Some("SIGN_VERIFY") => vec![KeyOperation::Sign, KeyOperation::Verify],
            _ => Vec::new(),
        };
        let created = m
            .creation_date
            .filter(|d| d.is_finite() && *d >= 0.0)
            .map_or(SystemTime::UNIX_EPOCH, |d| {
                SystemTime::UNIX_EPOCH + Duration::from_secs_f64(d)
            });
        Ok(KeyProperties {
            vault: self.vault().to_owned(),
            name: name.to_owned(),
            version: m.key_id.clone(),
            key_type,
            enabled: state == "Enabled" || state.is_empty() && m.enabled == Some(true),
            operations,
            created,
            public_key: self.cached_public_key(&m.key_id),
        })
    }

    /// `DescribeKey` of `name` at `version` (the alias's target when `None`).
    async fn lookup(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<(KeyProperties, Vec<String>), ProviderError> {
        let id = self.key_id(name, version)?;
        let arn = id.aws_arn().unwrap_or_default();
        let m = self.describe(&arn).await?;
        let mut props = self.properties(name, &m)?;
        if matches!(props.key_type, KeyType::Rsa { .. })
            && props.operations.contains(&KeyOperation::UnwrapKey)
            && props.public_key.is_none()
        {
            let key_arn = format!("{}:key/{}", self.vault(), m.key_id);
            props.public_key = Some(self.public_key(&key_arn, &m.key_id).await?);
        }
        Ok((props, m.encryption_algorithms.unwrap_or_default()))
    }
}

/// The KMS `EncryptionAlgorithm` for a wrap algorithm (AWS KMS API Reference, `Decrypt`).
pub(super) fn kms_algorithm(alg: WrapAlgorithm) -> Result<(&'static str, OaepHash), ProviderError> {
    match alg {
        WrapAlgorithm::RsaOaep256 => Ok(("RSAES_OAEP_SHA_256", OaepHash::Sha256)),
        WrapAlgorithm::RsaOaep => Ok(("RSAES_OAEP_SHA_1", OaepHash::Sha1)),
        other => Err(ProviderError::new(
            K::WrongKeyType,
            format!("AWS KMS RSA keys cannot {other} (only RSA-OAEP-256 and RSA-OAEP)"),
        )),
    }
}

#[async_trait]
impl KeyProvider for AwsKmsProvider {
    /// Soft-delete and purge protection are what AWS KMS always does: a deleted key is
    /// only scheduled for deletion and stays recoverable (`CancelKeyDeletion`) for its
    /// waiting period of 7 to 30 days, and nothing can delete it sooner (AWS KMS Developer
    /// Guide, "Deleting AWS KMS keys"). Region and tenant (the AWS account) come from the
    /// vault ARN; no request is made.
    async fn vault_properties(&self) -> Result<VaultProperties, ProviderError> {
        let c = self.config();
        let mut p = VaultProperties::new(&c.vault, &c.region, &c.account);
        p.retention_days = c.deletion_window_days;
        Ok(p)
    }

    async fn key_properties(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyProperties, ProviderError> {
        Ok(self.lookup(name, version).await?.0)
    }

    async fn wrap_key(
        &self,
        name: &str,
        version: Option<&str>,
        algorithm: WrapAlgorithm,
        key: &[u8],
    ) -> Result<WrappedKey, ProviderError> {
        crate::provider::check_wrap_input(key)?;
        let (kms_alg, hash) = kms_algorithm(algorithm)?;
        let (props, algorithms) = self.lookup(name, version).await?;
        if !props.operations.contains(&KeyOperation::WrapKey) {
            return Err(ProviderError::new(
                K::WrongKeyType,
                format!(
                    "the AWS KMS key {} ({}) cannot {algorithm}: an RSA key with key usage \
                     ENCRYPT_DECRYPT is needed",
                    props.version, props.key_type
                ),
            ));
        }
        if !algorithms.is_empty() && !algorithms.iter().any(|a| a == kms_alg) {
            return Err(ProviderError::new(
                K::WrongKeyType,
                format!("the AWS KMS key {} does not allow {kms_alg}", props.version),
            ));
        }
        if !props.enabled {
            return Err(ProviderError::new(
                K::KeyDisabled,
                format!("the AWS KMS key {} is disabled", props.version),
            ));
        }
        let public = props
            .public_key
            .ok_or_else(|| ProviderError::new(K::Unavailable, "GetPublicKey gave no public key"))?;
        let ciphertext = public
            .encrypt_oaep(hash, key, &[])
            .map_err(|e| ProviderError::new(K::InvalidRequest, format!("RSA-OAEP: {e}")))?;
        Ok(WrappedKey {
            key_name: name.to_owned(),
            key_version: props.version,
            algorithm,
            ciphertext,
        })
    }

    async fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<SecretBytes, ProviderError> {
        let (alg, _) = kms_algorithm(wrapped.algorithm)?;
        if wrapped.ciphertext.is_empty() || wrapped.ciphertext.len() > 512 {
            return Err(ProviderError::new(
                K::UnwrapFailed,
                format!(
                    "{} bytes cannot be an RSA-OAEP block of a 2048- to 4096-bit key",
                    wrapped.ciphertext.len()
                ),
            ));
        }
        // Decrypt names the exact key that wrapped, never the alias (which may have moved).
        let id = self.key_id(&wrapped.key_name, Some(&wrapped.key_version))?;
        let arn = id.aws_arn().unwrap_or_default();
        let blob = Base64::encode_string(&wrapped.ciphertext);
        let ans = self
            .conn()
            .call(
                Action::Decrypt,
                &DecryptRequest {
                    key_id: &arn,
                    ciphertext_blob: &blob,
                    encryption_algorithm: alg,
                },
            )
            .await?;
        let r: DecryptResponse = ans.json(Action::Decrypt.name())?;
        let pt = Base64::decode_vec(&r.plaintext).map_err(|_| {
            ProviderError::new(
                K::Unavailable,
                "Decrypt returned a plaintext that is not base64",
            )
        })?;
        Ok(SecretBytes::new(pt))
    }
}
