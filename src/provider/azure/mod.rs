//! The Azure Key Vault key provider (feature `azure`), on Microsoft's SDK crates
//! (`azure_security_keyvault_keys`, `azure_identity`, `azure_core` 1.x).
//!
//! - **Key properties** — `GET /keys/{name}[/{version}]`; with no version, the newest
//!   *enabled* version: the vault's current version if it is enabled, otherwise the enabled
//!   version with the latest `created` time from `GET /keys/{name}/versions`.
//! - **Key wrap** — `POST /keys/{name}/{version}/wrapkey` and `…/unwrapkey` with `RSA-OAEP-256`
//!   or `RSA-OAEP` on an exact key version (REST API 2025-07-01, the SDK's default:
//!   <https://learn.microsoft.com/rest/api/keyvault/keys/wrap-key/wrap-key>,
//!   <https://learn.microsoft.com/rest/api/keyvault/keys/unwrap-key/unwrap-key>). The
//!   identity needs the `get`, `wrapKey` and `unwrapKey` key permissions (the built-in role
//!   "Key Vault Crypto Service Encryption User", or an access policy with those three).
//! - **Deleted keys** — Key Vault answers `404 KeyNotFound` for a soft-deleted key; the
//!   provider then asks `GET /deletedkeys/{name}` and reports `KeyDeleted` when the key is
//!   in the recycle bin (recoverable), `KeyNotFound` otherwise.
//! - **Errors** — every SDK failure is classified (see `errors.rs`): 403 → `Forbidden`
//!   (`KeyDisabled` for a disabled, expired or not-yet-valid key), 404 → `KeyNotFound` /
//!   `KeyDeleted`, 400 on unwrap → `UnwrapFailed`, 429 → `Throttled`, 5xx → `Unavailable`,
//!   timeouts → `Timeout`, connection failures → `Unavailable`, a refused token (401) or a
//!   failing Entra ID credential → `Unavailable` (the service's own credential is never the
//!   tenant's revocation).
//! - **Retries and time bounds** — the SDK's own retry policy is switched off; this provider
//!   retries transient failures itself within [`RetryPolicy`] (honouring `Retry-After` up to
//!   its cap), every HTTP exchange is bounded by the request timeout, and the TCP/TLS connect
//!   by the connect timeout. So a dead vault fails in `attempts × connect timeout` plus the
//!   backoff, not the SDK's default of more than a minute.
//! - **Transport** — the SDK's HTTP client is replaced by this crate's reqwest 0.12 / rustls
//!   (*ring*) client (`transport.rs`); the environment's proxy variables are ignored unless
//!   [`AzureKeyVaultConfig::proxy`] names one. No runtime is embedded: futures run on the
//!   caller's tokio runtime.

use core::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use azure_core::credentials::{Secret, TokenCredential};
use azure_core::http::{ClientMethodOptions, ClientOptions, RequestContent, RetryOptions};
use azure_security_keyvault_keys::models::{
    EncryptionAlgorithm, Key, KeyClientGetDeletedKeyOptions, KeyClientGetKeyOptions,
    KeyClientUnwrapKeyOptions, KeyClientWrapKeyOptions, KeyOperationParameters,
    KeyType as AzKeyType,
};
use azure_security_keyvault_keys::{KeyClient, KeyClientOptions, ResourceId};

use super::{
    KeyOperation, KeyProperties, KeyProvider, KeyType, VaultProperties, WrapAlgorithm, WrappedKey,
};
use crate::crypto::RsaPublic;
use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::secret::{SecretBytes, SecretString};

mod admin;
mod errors;
mod transport;

pub use admin::AzureKeyVaultAdmin;
/// The `azure_core` version the Azure provider is built on (for
/// [`azure_core::credentials::TokenCredential`] implementations given to
/// [`AzureCredential::Token`]).
pub use azure_core;
use errors::{Op, classify};

use crate::provider::RetryPolicy;

/// A user-assigned managed identity, as Entra ID names it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ManagedIdentityId {
    /// The identity's client (application) ID.
    ClientId(String),
    /// The identity's object (principal) ID.
    ObjectId(String),
    /// The identity's Azure resource ID
    /// (`/subscriptions/…/providers/Microsoft.ManagedIdentity/userAssignedIdentities/…`).
    ResourceId(String),
}

/// Where the provider's Microsoft Entra ID token comes from.
///
/// In the seed documents the customer grants a **user-assigned managed identity** access to
/// the key: that identity is the identity of an account ([`Self::user_assigned`]).
#[derive(Clone)]
#[non_exhaustive]
pub enum AzureCredential {
    /// Any `azure_core` credential the caller built (e.g. `azure_identity`'s developer tools
    /// credential, a certificate credential).
    Token(Arc<dyn TokenCredential>),
    /// The managed identity of the host (App Service, Functions, VM/VMSS IMDS, AKS): the
    /// system-assigned one (`None`) or a user-assigned one.
    ManagedIdentity(Option<ManagedIdentityId>),
    /// An app registration's client secret (`client_credentials` grant against
    /// `{authority}/{tenant}/oauth2/v2.0/token`).
    ClientSecret {
        /// Directory (tenant) ID.
        tenant_id: String,
        /// Application (client) ID.
        client_id: String,
        /// The client secret.
        secret: SecretString,
    },
    /// Workload identity federation (AKS): a federated token file exchanged for an Entra ID
    /// token. Each `None` is read from the environment the AKS webhook sets
    /// (`AZURE_TENANT_ID`, `AZURE_CLIENT_ID`, `AZURE_FEDERATED_TOKEN_FILE`).
    WorkloadIdentity {
        /// Directory (tenant) ID.
        tenant_id: Option<String>,
        /// Application (client) ID.
        client_id: Option<String>,
        /// Path of the federated token file.
        token_file: Option<PathBuf>,
    },
}

impl AzureCredential {
    /// The host's system-assigned managed identity.
    pub fn system_assigned() -> Self {
        Self::ManagedIdentity(None)
    }

    /// A user-assigned managed identity.
    pub fn user_assigned(id: ManagedIdentityId) -> Self {
        Self::ManagedIdentity(Some(id))
    }

    /// An app registration's client secret.
    pub fn client_secret(tenant_id: &str, client_id: &str, secret: SecretString) -> Self {
        Self::ClientSecret {
            tenant_id: tenant_id.to_owned(),
            client_id: client_id.to_owned(),
            secret,
        }
    }

    /// Workload identity with everything from the environment.
    pub fn workload_identity() -> Self {
        Self::WorkloadIdentity {
            tenant_id: None,
            client_id: None,
            token_file: None,
        }
    }
}

impl fmt::Debug for AzureCredential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Token(_) => f.write_str("Token(…)"),
            Self::ManagedIdentity(id) => f.debug_tuple("ManagedIdentity").field(id).finish(),
            Self::ClientSecret {
                tenant_id,
                client_id,
                ..
            } => f
                .debug_struct("ClientSecret")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .finish_non_exhaustive(),
            Self::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => f
                .debug_struct("WorkloadIdentity")
                .field("tenant_id", tenant_id)
                .field("client_id", client_id)
                .field("token_file", token_file)
                .finish(),
        }
    }
}

/// Where vault properties come from: Key Vault's data plane has no "get vault" operation
/// (soft-delete and purge protection are Azure Resource Manager properties), but every key
/// carries the vault's `recoveryLevel` and `recoverableDays`.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Protection {
    /// Declared by the operator (from the ARM template or portal).
    Declared {
        soft_delete: bool,
        purge_protection: bool,
        retention_days: u32,
    },
    /// Read from the `recoveryLevel` of this key's current version.
    FromKey(String),
}

/// How to reach one Azure Key Vault: vault URL, credential, TLS, timeouts, retries.
///
/// ```no_run
/// # async fn f() -> Result<(), byok::ProviderError> {
/// use byok::KeyProvider;
/// use byok::provider::azure::{AzureCredential, AzureKeyVaultConfig, AzureKeyVaultProvider, ManagedIdentityId};
/// let config = AzureKeyVaultConfig::new(
///     "https://contoso.vault.azure.net",
///     AzureCredential::user_assigned(ManagedIdentityId::ClientId("1f0e…".into())),
/// )
/// .protection_from_key("tenant-a")
/// .location("westeurope", "72f988bf-…")
/// .request_timeout(std::time::Duration::from_secs(5));
/// let provider = AzureKeyVaultProvider::new(config)?;
/// let props = provider.key_properties("tenant-a", None).await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct AzureKeyVaultConfig {
    vault_url: String,
    credential: AzureCredential,
    authority_host: Option<String>,
    ca_pem: Option<String>,
    built_in_roots: bool,
    proxy: Option<String>,
    resolve: Vec<(String, SocketAddr)>,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryPolicy,
    protection: Protection,
    region: String,
    tenant: String,
}

impl AzureKeyVaultConfig {
    /// A vault at `vault_url` (`https://<name>.vault.azure.net`, as the portal shows it)
    /// reached with `credential`. Defaults: the public web PKI roots, no proxy, 5 s connect
    /// and 10 s request timeouts, [`RetryPolicy::default`], soft-delete declared on with 90
    /// days' retention (Azure no longer lets a vault turn it off) and purge protection
    /// declared off until [`Self::protection`] or [`Self::protection_from_key`] says
    /// otherwise.
    pub fn new(vault_url: &str, credential: AzureCredential) -> Self {
        Self {
            vault_url: vault_url.trim_end_matches('/').to_owned(),
            credential,
            authority_host: None,
            ca_pem: None,
            built_in_roots: true,
            proxy: None,
            resolve: Vec::new(),
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            retry: RetryPolicy::default(),
            protection: Protection::Declared {
                soft_delete: true,
                purge_protection: false,
                retention_days: 90,
            },
            region: String::new(),
            tenant: String::new(),
        }
    }

    /// The Entra ID authority host for client-secret and workload-identity credentials
    /// (default `https://login.microsoftonline.com`; e.g. `https://login.microsoftonline.us`
    /// for Azure Government).
    pub fn authority_host(mut self, url: &str) -> Self {
        self.authority_host = Some(url.to_owned());
        self
    }

    /// Trusts the CA certificates in `pem` (in addition to the public roots unless
    /// [`Self::only_given_ca`]).
    pub fn ca_pem(mut self, pem: &str) -> Self {
        self.ca_pem = Some(pem.to_owned());
        self
    }

    /// Trusts only the CA given with [`Self::ca_pem`], not the public web PKI roots.
    pub fn only_given_ca(mut self) -> Self {
        self.built_in_roots = false;
        self
    }

    /// Sends every vault request, and the credential's HTTPS requests, through this HTTP(S)
    /// proxy; the managed identity endpoints (plain HTTP on the host or link-local) never go
    /// through it. The environment's proxy variables are never used.
    pub fn proxy(mut self, url: &str) -> Self {
        self.proxy = Some(url.to_owned());
        self
    }

    /// Connects to `addr` for host `host` instead of asking DNS (a private endpoint without
    /// private DNS; the contract tests' loopback server). TLS still verifies `host`.
    pub fn resolve(mut self, host: &str, addr: SocketAddr) -> Self {
        self.resolve.push((host.to_owned(), addr));
        self
    }

    /// Longest TCP + TLS connect (default 5 s).
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Longest single HTTP exchange, connect included (default 10 s).
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Retries of transient failures (default [`RetryPolicy::default`]).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Declares the vault's soft-delete (with its retention in days) and purge protection, as
    /// Azure Resource Manager shows them (`enableSoftDelete`, `softDeleteRetentionInDays`,
    /// `enablePurgeProtection`).
    pub fn protection(
        mut self,
        soft_delete: bool,
        retention_days: u32,
        purge_protection: bool,
    ) -> Self {
        self.protection = Protection::Declared {
            soft_delete,
            purge_protection,
            retention_days,
        };
        self
    }

    /// Reads soft-delete and purge protection from the `recoveryLevel` and `recoverableDays`
    /// attributes of key `name` (its current version) on every
    /// [`KeyProvider::vault_properties`] call: `Purgeable` = no soft-delete;
    /// `…Recoverable+Purgeable` = soft-delete without purge protection; `…Recoverable` and
    /// `…Recoverable+ProtectedSubscription` = purge protection
    /// (<https://learn.microsoft.com/rest/api/keyvault/keys/get-key/get-key#deletionrecoverylevel>).
    pub fn protection_from_key(mut self, name: &str) -> Self {
        self.protection = Protection::FromKey(name.to_owned());
        self
    }

    /// Region and tenant reported in [`VaultProperties`] (both empty by default).
    pub fn location(mut self, region: &str, tenant: &str) -> Self {
        self.region = region.to_owned();
        self.tenant = tenant.to_owned();
        self
    }

    /// The HTTP client for the vault (`for_vault`: HTTPS only, every request through the
    /// proxy if one is set) or for the credential (plain HTTP allowed, because the managed
    /// identity endpoints are `http://169.254.169.254` (IMDS) and `http://localhost:…` (App
    /// Service, `IDENTITY_ENDPOINT`); the proxy, if set, carries only HTTPS requests, so those
    /// local endpoints are never sent through it).
    fn http(&self, for_vault: bool) -> Result<reqwest::Client, ProviderError> {
        let bad = |what: &str, e: reqwest::Error| {
            ProviderError::new(K::InvalidRequest, format!("Azure Key Vault {what}: {e}"))
        };
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .https_only(for_vault)
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .tls_built_in_root_certs(self.built_in_roots);
        b = match &self.proxy {
            Some(p) if for_vault => b.proxy(reqwest::Proxy::all(p).map_err(|e| bad("proxy", e))?),
            Some(p) => b.proxy(reqwest::Proxy::https(p).map_err(|e| bad("proxy", e))?),
            None => b.no_proxy(),
        };
        if let Some(pem) = &self.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| bad("CA PEM", e))?
            {
                b = b.add_root_certificate(cert);
            }
        }
        for (host, addr) in &self.resolve {
            b = b.resolve(host, *addr);
        }
        b.build().map_err(|e| bad("HTTP client", e))
    }

    fn client_options(&self, http: &reqwest::Client) -> ClientOptions {
        let cloud = self.authority_host.as_ref().map(|host| {
            let mut c = azure_core::cloud::CustomConfiguration::default();
            c.authority_host = host.clone();
            Arc::new(c.into())
        });
        ClientOptions {
            transport: Some(
                transport::ReqwestTransport {
                    http: http.clone(),
                    request_timeout: self.request_timeout,
                }
                .into_transport(),
            ),
            retry: RetryOptions::none(),
            cloud,
            ..Default::default()
        }
    }

    fn credential(
        &self,
        http: &reqwest::Client,
    ) -> Result<Arc<dyn TokenCredential>, ProviderError> {
        use azure_identity as id;
        let bad = |e: azure_core::Error| {
            ProviderError::new(K::InvalidRequest, format!("Azure credential: {e}"))
        };
        Ok(match &self.credential {
            AzureCredential::Token(t) => Arc::clone(t),
            AzureCredential::ManagedIdentity(which) => {
                let o = id::ManagedIdentityCredentialOptions {
                    client_options: self.client_options(http),
                    user_assigned_id: which.as_ref().map(|w| match w {
                        ManagedIdentityId::ClientId(s) => id::UserAssignedId::ClientId(s.clone()),
                        ManagedIdentityId::ObjectId(s) => id::UserAssignedId::ObjectId(s.clone()),
                        ManagedIdentityId::ResourceId(s) => {
                            id::UserAssignedId::ResourceId(s.clone())
                        }
                    }),
                };
                id::ManagedIdentityCredential::new(Some(o)).map_err(bad)?
            }
            AzureCredential::ClientSecret {
                tenant_id,
                client_id,
                secret,
            } => {
                let o = id::ClientSecretCredentialOptions {
                    client_options: self.client_options(http),
                };
                id::ClientSecretCredential::new(
                    tenant_id,
                    client_id.clone(),
                    Secret::new(secret.expose_secret().to_owned()),
                    Some(o),
                )
                .map_err(bad)?
            }
            AzureCredential::WorkloadIdentity {
                tenant_id,
                client_id,
                token_file,
            } => {
                let o = id::WorkloadIdentityCredentialOptions {
                    credential_options: id::ClientAssertionCredentialOptions {
                        client_options: self.client_options(http),
                    },
                    tenant_id: tenant_id.clone(),
                    client_id: client_id.clone(),
                    token_file_path: token_file.clone(),
                };
                id::WorkloadIdentityCredential::new(Some(o)).map_err(bad)?
            }
        })
    }

    /// The SDK client, the vault host (`host[:port]`, as in key identifiers) and the retry
    /// policy.
    fn connect(&self) -> Result<Connection, ProviderError> {
        let url = reqwest::Url::parse(&self.vault_url).map_err(|e| {
            ProviderError::new(
                K::InvalidRequest,
                format!("{:?} is not a vault URL: {e}", self.vault_url),
            )
        })?;
        if url.scheme() != "https" || url.host_str().is_none() {
            return Err(ProviderError::new(
                K::InvalidRequest,
                format!("{:?} is not an https:// vault URL", self.vault_url),
            ));
        }
        let host = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        let http = self.http(true)?;
        let credential = self.credential(&self.http(false)?)?;
        let options = KeyClientOptions {
            client_options: self.client_options(&http),
            ..Default::default()
        };
        let client = KeyClient::new(&self.vault_url, credential, Some(options))
            .map_err(|e| ProviderError::new(K::InvalidRequest, format!("Key Vault client: {e}")))?;
        Ok(Connection {
            client,
            host: crate::key_id::canonical_vault(&host),
            retry: self.retry,
        })
    }
}

/// The SDK client with its vault host and retry policy (shared by provider and admin).
struct Connection {
    client: KeyClient,
    host: String,
    retry: RetryPolicy,
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("host", &self.host)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl Connection {
    /// Runs `f` (one SDK call) with bounded retries of transient failures.
    async fn call<T, F, Fut>(&self, what: &str, op: Op, f: F) -> Result<T, ProviderError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = azure_core::Result<T>>,
    {
        self.call_retrying(true, what, op, f).await
    }

    /// Runs `f` once: for calls that are not idempotent (a create or import after a timeout
    /// may have added a version already).
    async fn call_once<T, F, Fut>(&self, what: &str, op: Op, f: F) -> Result<T, ProviderError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = azure_core::Result<T>>,
    {
        self.call_retrying(false, what, op, f).await
    }

    async fn call_retrying<T, F, Fut>(
        &self,
        retry: bool,
        what: &str,
        op: Op,
        f: F,
    ) -> Result<T, ProviderError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = azure_core::Result<T>>,
    {
        self.retry
            .run(retry, || async {
                f().await.map_err(|e| {
                    let (failure, retry_after) = classify(what, op, &e);
                    (failure.with_source(e), retry_after)
                })
            })
            .await
    }

    /// `GET /keys/{name}[/{version}]`.
    async fn get(&self, name: &str, version: Option<&str>) -> Result<Key, ProviderError> {
        let what = format!("get key {name}/{}", version.unwrap_or(""));
        let r = self
            .call(&what, Op::Key, || async {
                let o = KeyClientGetKeyOptions {
                    key_version: version.map(str::to_owned),
                    method_options: ClientMethodOptions::default(),
                };
                self.client.get_key(name, Some(o)).await?.into_model()
            })
            .await;
        self.refine_not_found(name, r).await
    }

    /// A `KeyNotFound` becomes `KeyDeleted` when the key is in the vault's recycle bin.
    async fn refine_not_found<T>(
        &self,
        name: &str,
        r: Result<T, ProviderError>,
    ) -> Result<T, ProviderError> {
        match r {
            Err(e) if e.kind() == K::KeyNotFound => {
                let deleted = self
                    .call("get deleted key", Op::Key, || async {
                        self.client
                            .get_deleted_key(name, None::<KeyClientGetDeletedKeyOptions<'_>>)
                            .await?
                            .into_model()
                    })
                    .await;
                match deleted {
                    Ok(d) => {
                        let purge = d
                            .scheduled_purge_date
                            .map(|t| format!(", purged on {t}"))
                            .unwrap_or_default();
                        Err(ProviderError::new(
                            K::KeyDeleted,
                            format!(
                                "{}; the key is soft-deleted (recoverable{purge})",
                                e.message()
                            ),
                        ))
                    }
                    Err(_) => Err(e),
                }
            }
            other => other,
        }
    }

    /// The properties of `key` as this crate names them.
    fn properties(&self, key: &Key) -> Result<KeyProperties, ProviderError> {
        key_properties(&self.host, key)
    }

    /// All versions of `name` (`GET /keys/{name}/versions`, every page), as the SDK lists them.
    async fn versions(
        &self,
        name: &str,
    ) -> Result<Vec<azure_security_keyvault_keys::models::KeyProperties>, ProviderError> {
        use futures_core::Stream;
        let r = self
            .call("list key versions", Op::Key, || async {
                let mut pager = Box::pin(self.client.list_key_properties_versions(name, None)?);
                let mut out = Vec::new();
                while let Some(item) = std::future::poll_fn(|cx| pager.as_mut().poll_next(cx)).await
                {
                    out.push(item?);
                }
                Ok(out)
            })
            .await;
        self.refine_not_found(name, r).await
    }

    /// The newest enabled version of `name`.
    async fn latest_enabled(&self, name: &str) -> Result<KeyProperties, ProviderError> {
        let current = self.properties(&self.get(name, None).await?)?;
        if current.enabled {
            return Ok(current);
        }
        let now = SystemTime::now();
        let newest = self
            .versions(name)
            .await?
            .into_iter()
            .filter_map(|v| {
                let a = v.attributes?;
                let ok = a.enabled == Some(true)
                    && a.not_before.is_none_or(|t| SystemTime::from(t) <= now)
                    && a.expires.is_none_or(|t| SystemTime::from(t) > now);
                let version = v.kid?.parse::<ResourceId>().ok()?.version?;
                ok.then(|| (a.created.map(SystemTime::from), version))
            })
            .max_by(|a, b| a.0.cmp(&b.0));
        match newest {
            Some((_, v)) => self.properties(&self.get(name, Some(&v)).await?),
            None => Err(ProviderError::new(
                K::KeyDisabled,
                format!("key {name}: no version is enabled"),
            )),
        }
    }
}

/// The properties of a key bundle (`KeyBundle` of the REST reference) of vault `host`.
fn key_properties(host: &str, key: &Key) -> Result<KeyProperties, ProviderError> {
    let malformed =
        |why: &str| ProviderError::new(K::Unavailable, format!("malformed Key Vault key: {why}"));
    let jwk = key.key.as_ref().ok_or_else(|| malformed("no key"))?;
    let kid = jwk.kid.as_deref().ok_or_else(|| malformed("no kid"))?;
    let id: ResourceId = kid.parse().map_err(|_| malformed("kid is not a key URI"))?;
    let version = id
        .version
        .clone()
        .ok_or_else(|| malformed("kid has no version"))?;
    let (key_type, public_key) = match jwk.kty.as_ref() {
        Some(AzKeyType::Rsa | AzKeyType::RsaHsm) => {
            let n = jwk
                .n
                .as_deref()
                .ok_or_else(|| malformed("RSA key without n"))?;
            let e = jwk
                .e
                .as_deref()
                .ok_or_else(|| malformed("RSA key without e"))?;
            let pk = RsaPublic::from_components(n, e)
                .map_err(|_| malformed("invalid RSA public key"))?;
            (
                KeyType::Rsa {
                    bits: u32::try_from(pk.bits()).unwrap_or(0),
                },
                Some(pk),
            )
        }
        Some(AzKeyType::Ec | AzKeyType::EcHsm) => (
            KeyType::Ec {
                curve: jwk.crv.as_ref().map(|c| c.to_string()).unwrap_or_default(),
            },
            None,
        ),
        Some(AzKeyType::Oct | AzKeyType::OctHsm) => (KeyType::Aes { bits: 256 }, None),
        Some(other) => return Err(malformed(&format!("unknown key type {other}"))),
        None => return Err(malformed("no kty")),
    };
    let attrs = key.attributes.as_ref();
    let now = SystemTime::now();
    let within = attrs.is_none_or(|a| {
        a.not_before.is_none_or(|t| SystemTime::from(t) <= now)
            && a.expires.is_none_or(|t| SystemTime::from(t) > now)
    });
    let enabled = attrs.and_then(|a| a.enabled).unwrap_or(false) && within;
    let operations = jwk
        .key_ops
        .iter()
        .flatten()
        .filter_map(|op| match op.as_str() {
            "wrapKey" => Some(KeyOperation::WrapKey),
            "unwrapKey" => Some(KeyOperation::UnwrapKey),
            "encrypt" => Some(KeyOperation::Encrypt),
            "decrypt" => Some(KeyOperation::Decrypt),
            "sign" => Some(KeyOperation::Sign),
            "verify" => Some(KeyOperation::Verify),
            _ => None,
        })
        .collect();
    let created = attrs
        .and_then(|a| a.created)
        .map(SystemTime::from)
        .unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(KeyProperties {
        vault: host.to_owned(),
        name: id.name.to_ascii_lowercase(),
        version,
        key_type,
        enabled,
        operations,
        created,
        public_key,
    })
}

fn sdk_algorithm(a: WrapAlgorithm) -> Result<EncryptionAlgorithm, ProviderError> {
    match a {
        WrapAlgorithm::RsaOaep256 => Ok(EncryptionAlgorithm::RsaOaep256),
        WrapAlgorithm::RsaOaep => Ok(EncryptionAlgorithm::RsaOaep),
        WrapAlgorithm::A256Kw => Err(ProviderError::new(
            K::WrongKeyType,
            "A256KW needs an AES key; Azure Key Vault vaults hold RSA and EC keys only (AES keys \
             are a Managed HSM feature this provider does not use)",
        )),
    }
}

/// A [`KeyProvider`] over one Azure Key Vault, acting as one Entra ID identity.
#[derive(Clone, Debug)]
pub struct AzureKeyVaultProvider {
    conn: Arc<Connection>,
    protection: Protection,
    region: String,
    tenant: String,
}

impl AzureKeyVaultProvider {
    /// A provider for the vault and identity of `config`. Nothing is contacted until the
    /// first call.
    ///
    /// # Errors
    /// `InvalidRequest` for a vault URL that is not `https://`, an unreadable CA PEM or proxy
    /// URL, or a credential the SDK refuses (e.g. an empty client secret, a malformed tenant).
    pub fn new(config: AzureKeyVaultConfig) -> Result<Self, ProviderError> {
        Ok(Self {
            conn: Arc::new(config.connect()?),
            protection: config.protection,
            region: config.region,
            tenant: config.tenant,
        })
    }

    /// The vault host (`host[:port]`) as it appears in [`crate::KeyId`]s.
    pub fn vault_host(&self) -> &str {
        &self.conn.host
    }

    /// One `wrapkey` call on `version` (the vault's current version when `None`); returns the
    /// version that wrapped (from the answer's `kid`) and the wrapped bytes.
    async fn wrap_once(
        &self,
        name: &str,
        version: Option<&str>,
        alg: &EncryptionAlgorithm,
        key: &[u8],
    ) -> Result<(String, Vec<u8>), ProviderError> {
        let what = format!("wrapkey {name}/{}", version.unwrap_or(""));
        let r = self
            .conn
            .call(&what, Op::Wrap, || async {
                let params = KeyOperationParameters {
                    algorithm: Some(alg.clone()),
                    value: Some(key.to_vec()),
                    ..Default::default()
                };
                let o = KeyClientWrapKeyOptions {
                    key_version: version.map(str::to_owned),
                    method_options: ClientMethodOptions::default(),
                };
                self.conn
                    .client
                    .wrap_key(name, RequestContent::try_from(params)?, Some(o))
                    .await?
                    .into_model()
            })
            .await;
        let r = match self.conn.refine_not_found(name, r).await {
            Ok(r) => r,
            Err(e) => {
                return Err(self
                    .refine_bad_request(name, version.unwrap_or(""), e)
                    .await);
            }
        };
        let ciphertext = r
            .result
            .filter(|c| !c.is_empty())
            .ok_or_else(|| ProviderError::new(K::Unavailable, "wrapkey answer without a value"))?;
        let answered = r
            .kid
            .as_deref()
            .and_then(|kid| kid.parse::<ResourceId>().ok())
            .and_then(|id| id.version);
        match (answered, version) {
            (Some(a), Some(v)) if a != v => Err(ProviderError::new(
                K::Unavailable,
                format!("wrapkey on version {v} answered for version {a}"),
            )),
            (Some(a), _) => Ok((a, ciphertext)),
            (None, Some(v)) => Ok((v.to_owned(), ciphertext)),
            (None, None) => Err(ProviderError::new(
                K::Unavailable,
                "wrapkey answer does not name the key version (no kid)",
            )),
        }
    }

    /// A `400` from wrap or unwrap: `WrongKeyType` when the key version is not RSA (Key
    /// Vault's message for that is not a stable contract, its `kty` is).
    async fn refine_bad_request(
        &self,
        name: &str,
        version: &str,
        e: ProviderError,
    ) -> ProviderError {
        if !matches!(e.kind(), K::InvalidRequest | K::UnwrapFailed) {
            return e;
        }
        match self
            .conn
            .get(name, Some(version).filter(|v| !v.is_empty()))
            .await
        {
            Ok(k) => match self.conn.properties(&k) {
                Ok(p) if !matches!(p.key_type, KeyType::Rsa { .. }) => ProviderError::new(
                    K::WrongKeyType,
                    format!(
                        "key {name}/{version} is {}, not RSA: {}",
                        p.key_type,
                        e.message()
                    ),
                ),
                _ => e,
            },
            Err(_) => e,
        }
    }
}

#[async_trait]
impl KeyProvider for AzureKeyVaultProvider {
    async fn vault_properties(&self) -> Result<VaultProperties, ProviderError> {
        let mut p = VaultProperties::new(&self.conn.host, &self.region, &self.tenant);
        match &self.protection {
            Protection::Declared {
                soft_delete,
                purge_protection,
                retention_days,
            } => {
                p = p.protection(*soft_delete, *purge_protection);
                p.retention_days = if *soft_delete { *retention_days } else { 0 };
            }
            Protection::FromKey(name) => {
                let key = self.conn.get(name, None).await?;
                let a = key.attributes.unwrap_or_default();
                let level = a.recovery_level.map(|l| l.to_string()).unwrap_or_default();
                let soft_delete = level.contains("Recoverable");
                let purge_protection = soft_delete && !level.contains("Purgeable");
                p = p.protection(soft_delete, purge_protection);
                p.retention_days = if soft_delete {
                    a.recoverable_days
                        .and_then(|d| u32::try_from(d).ok())
                        .unwrap_or(90)
                } else {
                    0
                };
            }
        }
        Ok(p)
    }

    async fn key_properties(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyProperties, ProviderError> {
        super::check_name(name)?;
        match version {
            Some(v) => self.conn.properties(&self.conn.get(name, Some(v)).await?),
            None => self.conn.latest_enabled(name).await,
        }
    }

    async fn wrap_key(
        &self,
        name: &str,
        version: Option<&str>,
        algorithm: WrapAlgorithm,
        key: &[u8],
    ) -> Result<WrappedKey, ProviderError> {
        super::check_name(name)?;
        super::check_wrap_input(key)?;
        let alg = sdk_algorithm(algorithm)?;
        let pinned = match version {
            Some(v) => v.to_owned(),
            // The vault's current version, with only the wrapKey permission (Key Vault wraps
            // with it when the path has no version); when that version is disabled, the newest
            // enabled one (which needs `get` to find).
            None => match self.wrap_once(name, None, &alg, key).await {
                Err(e) if e.kind() == K::KeyDisabled => {
                    match self.conn.latest_enabled(name).await {
                        Ok(p) => p.version,
                        Err(_) => return Err(e),
                    }
                }
                other => {
                    return other.map(|(version, ciphertext)| WrappedKey {
                        key_name: name.to_owned(),
                        key_version: version,
                        algorithm,
                        ciphertext,
                    });
                }
            },
        };
        let (version, ciphertext) = self.wrap_once(name, Some(&pinned), &alg, key).await?;
        Ok(WrappedKey {
            key_name: name.to_owned(),
            key_version: version,
            algorithm,
            ciphertext,
        })
    }

    async fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<SecretBytes, ProviderError> {
        let name = wrapped.key_name.as_str();
        let version = wrapped.key_version.as_str();
        super::check_name(name)?;
        let alg = sdk_algorithm(wrapped.algorithm)?;
        if version.is_empty() {
            return Err(ProviderError::new(
                K::InvalidRequest,
                "a wrapped key must name its key version",
            ));
        }
        if wrapped.ciphertext.is_empty() {
            return Err(ProviderError::new(K::UnwrapFailed, "empty wrapped key"));
        }
        let what = format!("unwrapkey {name}/{version}");
        let r = self
            .conn
            .call(&what, Op::Unwrap, || async {
                let params = KeyOperationParameters {
                    algorithm: Some(alg.clone()),
                    value: Some(wrapped.ciphertext.clone()),
                    ..Default::default()
                };
                self.conn
                    .client
                    .unwrap_key(
                        name,
                        version,
                        RequestContent::try_from(params)?,
                        None::<KeyClientUnwrapKeyOptions<'_>>,
                    )
                    .await?
                    .into_model()
            })
            .await;
        let r = match self.conn.refine_not_found(name, r).await {
            Ok(r) => r,
            Err(e) => return Err(self.refine_bad_request(name, version, e).await),
        };
        match r.result {
            Some(secret) if !secret.is_empty() => Ok(SecretBytes::new(secret)),
            _ => Err(ProviderError::new(
                K::Unavailable,
                "unwrapkey answer without a value",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The "Get key" example of the REST reference
    /// (<https://learn.microsoft.com/rest/api/keyvault/keys/get-key/get-key#examples>), parsed
    /// by the SDK's model and read by this provider.
    #[test]
    fn the_published_get_key_example_reads_as_an_rsa_2048_key_version() {
        let body = include_str!("../../../tests/azure_support/fixtures/get-key.json");
        let key: Key = serde_json::from_str(body).expect("SDK model");
        let p = key_properties("myvault.vault.azure.net", &key).expect("properties");
        assert_eq!(p.name, "createsoftkeytest");
        assert_eq!(p.version, "78deebed173b48e48f55abf87ed4cf71");
        assert_eq!(p.key_type, KeyType::Rsa { bits: 2048 });
        assert!(p.enabled);
        assert_eq!(
            p.created,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_493_942_451)
        );
        assert!(p.operations.contains(&KeyOperation::WrapKey));
        assert!(p.operations.contains(&KeyOperation::UnwrapKey));
        assert_eq!(
            p.public_key.as_ref().expect("public key").exponent(),
            vec![1, 0, 1]
        );
        let id = p.key_id().expect("key id");
        assert_eq!(
            id.to_string(),
            "https://myvault.vault.azure.net/keys/createsoftkeytest/78deebed173b48e48f55abf87ed4cf71"
        );
    }

    #[test]
    fn a_disabled_or_expired_version_is_not_enabled() {
        let body = include_str!("../../../tests/azure_support/fixtures/get-key.json");
        let mut key: Key = serde_json::from_str(body).expect("SDK model");
        key.attributes.as_mut().expect("attributes").enabled = Some(false);
        assert!(!key_properties("v", &key).expect("properties").enabled);
        let mut key: Key = serde_json::from_str(body).expect("SDK model");
        key.attributes.as_mut().expect("attributes").expires =
            Some(azure_core::time::OffsetDateTime::UNIX_EPOCH);
        assert!(!key_properties("v", &key).expect("properties").enabled);
    }

    #[test]
    fn debug_never_prints_the_client_secret_and_only_https_vaults_are_accepted() {
        let secret = "hunter2-client-secret";
        let config = AzureKeyVaultConfig::new(
            "https://contoso.vault.azure.net/",
            AzureCredential::client_secret(
                "tenant",
                "client",
                SecretString::new(secret.to_owned()),
            ),
        );
        let shown = format!("{config:?}");
        assert!(!shown.contains(secret), "{shown}");
        assert!(shown.contains("client"), "{shown}");
        let p = AzureKeyVaultProvider::new(config).expect("provider");
        assert_eq!(p.vault_host(), "contoso.vault.azure.net");
        assert!(!format!("{p:?}").contains(secret));
        let e = AzureKeyVaultProvider::new(AzureKeyVaultConfig::new(
            "http://contoso.vault.azure.net",
            AzureCredential::system_assigned(),
        ))
        .expect_err("plain http");
        assert_eq!(e.kind(), K::InvalidRequest);
    }

    #[test]
    fn a256kw_is_refused_before_any_request() {
        assert_eq!(
            sdk_algorithm(WrapAlgorithm::A256Kw)
                .map(|_| ())
                .map_err(|e| e.kind()),
            Err(K::WrongKeyType)
        );
        assert_eq!(
            sdk_algorithm(WrapAlgorithm::RsaOaep256).ok(),
            Some(EncryptionAlgorithm::RsaOaep256)
        );
    }
}
