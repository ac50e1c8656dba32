//! A [`KeyProvider`] for the Vault / OpenBao Transit secrets engine (feature `transit`).
//!
//! The provider speaks the Transit HTTP API with an async `reqwest` client (rustls with the
//! *ring* provider) on the caller's tokio runtime; nothing here spawns or embeds a runtime.
//! See `docs/TRANSIT.md` for setting up a mount, the token policy and the version mapping.
//!
//! * Key identity: the vault host is the server address's `host[:port]` (or
//!   [`TransitConfig::vault_host`]); versions are Transit's integers as strings (`"1"`, `"2"`).
//! * Wrapping goes through `POST <mount>/encrypt/<name>` with `key_version` pinned;
//!   [`WrappedKey::ciphertext`] holds the **raw bytes** of the Transit ciphertext (the base64
//!   body of `vault:v<N>:…`, i.e. the bare RSA-OAEP-SHA-256 block for RSA keys, nonce ‖
//!   AES-GCM ciphertext ‖ tag for AES keys), and [`WrappedKey::key_version`] holds `N`.
//!   Unwrapping rebuilds `vault:v<N>:<base64>` from the record and calls `decrypt`, so an
//!   RSA block made locally with the version's public key ([`crate::provider::RsaPublic::encrypt_oaep`]
//!   with SHA-256 and an empty label) unwraps on the server too.
//! * Disabled means "below `min_decryption_version`"; soft-deleted (OpenBao) means
//!   `KeyDeleted`.

use core::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;

use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::provider::{KeyProperties, KeyProvider, VaultProperties, WrapAlgorithm, WrappedKey};
use crate::secret::{SecretBytes, SecretString};

mod admin;
mod auth;
mod http;
mod wire;

#[cfg(test)]
mod tests;

pub use admin::TransitAdmin;

use auth::{Auth, Credential};
use http::{Answer, Connection, Op, TransitAnswer as _};
use wire::{DecryptData, EncryptData, KeyData, Kind};

use crate::provider::retry::RetryPolicy;

/// Where and how to reach a Transit mount: address, credential, TLS, proxy, timeouts, retries.
///
/// Only `https://` addresses are accepted unless [`Self::allow_insecure_http`] says otherwise,
/// and no proxy is used unless [`Self::proxy`] names one (the `HTTP(S)_PROXY` variables of the
/// environment are ignored). The credential is a token ([`Self::new`], renewed before it
/// expires when it is renewable) or an AppRole ([`Self::approle`], logged in again when its
/// token runs out).
///
/// ```no_run
/// # async fn f() -> Result<(), byok::ProviderError> {
/// use byok::{KeyProvider, SecretString};
/// use byok::provider::transit::{TransitConfig, TransitProvider};
/// let ca = std::fs::read_to_string("/etc/byok/vault-ca.pem").unwrap_or_default();
/// let config = TransitConfig::new("https://vault.internal:8200", SecretString::new("s.token"))
///     .mount("transit")
///     .ca_pem(&ca)
///     .request_timeout(std::time::Duration::from_secs(5));
/// let provider = TransitProvider::new(config)?;
/// let props = provider.key_properties("tenant-a", None).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TransitConfig {
    address: String,
    credential: Credential,
    allow_http: bool,
    proxy: Option<String>,
    mount: String,
    vault_host: Option<String>,
    ca_pem: Option<String>,
    built_in_roots: bool,
    connect_timeout: Duration,
    request_timeout: Duration,
    retry: RetryPolicy,
    soft_delete: bool,
    region: String,
    tenant: String,
}

impl fmt::Debug for TransitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransitConfig")
            .field("address", &self.address)
            .field("credential", &self.credential)
            .field("allow_insecure_http", &self.allow_http)
            .field("proxy", &self.proxy.as_ref().map(|_| "…"))
            .field("mount", &self.mount)
            .field("vault_host", &self.vault_host)
            .field("custom_ca", &self.ca_pem.is_some())
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("retry", &self.retry)
            .field("soft_delete", &self.soft_delete)
            .finish_non_exhaustive()
    }
}

impl TransitConfig {
    /// A configuration for the server at `address` (`https://`, e.g.
    /// `https://vault.internal:8200`; `http://` only with [`Self::allow_insecure_http`])
    /// acting with `token`. Defaults: mount `transit`, the vault host taken from the address,
    /// the built-in web PKI roots, no proxy, connect timeout 5 s, request timeout 30 s,
    /// [`RetryPolicy::default`], soft-delete on (OpenBao).
    ///
    /// A renewable token is renewed (`auth/token/renew-self`) once less than half its lease
    /// is left, on the next request; the token needs the `default` policy (or `read` on
    /// `auth/token/lookup-self` and `update` on `auth/token/renew-self`).
    pub fn new(address: &str, token: SecretString) -> Self {
        Self::with_credential(address, Credential::Token(token))
    }

    /// A configuration acting through AppRole: `POST auth/approle/login` with `role_id` and
    /// `secret_id`, on first use and again whenever the token it got is due (renewed while
    /// renewable, replaced by a new login after that). Otherwise as [`Self::new`].
    pub fn approle(address: &str, role_id: SecretString, secret_id: SecretString) -> Self {
        Self::with_credential(
            address,
            Credential::AppRole {
                mount: "approle".to_owned(),
                role_id,
                secret_id,
            },
        )
    }

    fn with_credential(address: &str, credential: Credential) -> Self {
        Self {
            address: address.trim_end_matches('/').to_owned(),
            credential,
            allow_http: false,
            proxy: None,
            mount: "transit".to_owned(),
            vault_host: None,
            ca_pem: None,
            built_in_roots: true,
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            soft_delete: true,
            region: String::new(),
            tenant: String::new(),
        }
    }

    /// The path the AppRole auth method is mounted at (default `approle`); no effect on a
    /// token credential.
    pub fn approle_mount(mut self, mount: &str) -> Self {
        if let Credential::AppRole { mount: m, .. } = &mut self.credential {
            *m = mount.trim_matches('/').to_owned();
        }
        self
    }

    /// Whether a plain `http://` address is accepted (default `false`): the token and every
    /// key being wrapped would cross the network in clear. For a server on loopback in tests
    /// and development only.
    pub fn allow_insecure_http(mut self, on: bool) -> Self {
        self.allow_http = on;
        self
    }

    /// Sends every request through the proxy at `url` (e.g. `http://proxy.internal:3128`).
    /// Without it no proxy is used, whatever `HTTPS_PROXY` / `HTTP_PROXY` / `ALL_PROXY` say.
    pub fn proxy(mut self, url: &str) -> Self {
        self.proxy = Some(url.to_owned());
        self
    }

    /// The path the Transit engine is mounted at (default `transit`).
    pub fn mount(mut self, mount: &str) -> Self {
        self.mount = mount.trim_matches('/').to_owned();
        self
    }

    /// The vault that key identifiers name (default: `host[:port]` of the address, for the
    /// Key Vault URI form `https://<host>/keys/<name>`). Give `<host>[:<port>]/v1/<mount>` to
    /// name keys in the Transit path form `https://<host>/v1/<mount>/keys/<name>`, where each
    /// mount is its own vault ([`crate::KeyIdKind::TransitPath`]).
    pub fn vault_host(mut self, host: &str) -> Self {
        self.vault_host = Some(crate::key_id::canonical_vault(host));
        self
    }

    /// Trusts the CA certificate(s) in `pem` (one or more `BEGIN CERTIFICATE` blocks), in
    /// addition to the built-in web PKI roots.
    pub fn ca_pem(mut self, pem: &str) -> Self {
        self.ca_pem = Some(pem.to_owned());
        self
    }

    /// Whether the built-in web PKI roots are trusted as well as [`Self::ca_pem`] (default
    /// `true`; set `false` to trust only your own CA).
    pub fn built_in_roots(mut self, on: bool) -> Self {
        self.built_in_roots = on;
        self
    }

    /// Time allowed to open a connection (TCP and TLS), default 5 s.
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Time allowed for one whole request, default 30 s.
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Retries of transient failures.
    pub fn retry(mut self, r: RetryPolicy) -> Self {
        self.retry = r;
        self
    }

    /// Whether the server has OpenBao's soft-delete (`keys/<name>/soft-delete`), default
    /// `true`. Set `false` for HashiCorp Vault: deleting a key is then permanent.
    pub fn soft_delete(mut self, on: bool) -> Self {
        self.soft_delete = on;
        self
    }

    /// Region and tenant reported in [`VaultProperties`] (both empty by default).
    pub fn location(mut self, region: &str, tenant: &str) -> Self {
        self.region = region.to_owned();
        self.tenant = tenant.to_owned();
        self
    }

    /// The same configuration acting with another token.
    pub fn with_token(&self, token: SecretString) -> Self {
        Self {
            credential: Credential::Token(token),
            ..self.clone()
        }
    }

    fn connect(&self) -> Result<(Arc<Connection>, String), ProviderError> {
        let bad = |why: String| ProviderError::new(K::InvalidRequest, why);
        let url = reqwest::Url::parse(&self.address)
            .map_err(|e| bad(format!("Transit address {:?}: {e}", self.address)))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(bad(format!(
                    "Transit address {:?}: plain http:// is refused (the token and the keys \
                     being wrapped would travel in clear); use https://, or opt in with \
                     TransitConfig::allow_insecure_http(true) for a loopback test server",
                    self.address
                )));
            }
            _ => {
                return Err(bad(format!(
                    "Transit address {:?}: the scheme must be https (or http with \
                     TransitConfig::allow_insecure_http)",
                    self.address
                )));
            }
        }
        let host = match (&self.vault_host, url.host_str()) {
            (Some(h), _) => h.clone(),
            (None, Some(h)) => match url.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_owned(),
            }
            .to_ascii_lowercase(),
            (None, None) => {
                return Err(bad(format!(
                    "Transit address {:?} has no host",
                    self.address
                )));
            }
        };
        // Every key on this server is named by a KeyId on `host`: refuse a host no KeyId can
        // carry (e.g. a bracketed IPv6 literal) now rather than at the first key reference.
        if let Err(e) = crate::KeyId::new(&host, "probe", None) {
            return Err(bad(format!(
                "Transit address {:?}: key identifiers cannot name the vault host {host:?} \
                 ({e}); give the server a DNS name (e.g. an /etc/hosts entry for an IPv6 \
                 address) or set TransitConfig::vault_host to the name key identifiers should \
                 use",
                self.address
            )));
        }
        if self.mount.is_empty() {
            return Err(bad("the Transit mount path is empty".into()));
        }
        let mut b = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .timeout(self.request_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .min_tls_version(reqwest::tls::Version::TLS_1_2)
            .tls_built_in_root_certs(self.built_in_roots)
            .user_agent(concat!("byok/", env!("CARGO_PKG_VERSION")));
        b = match &self.proxy {
            Some(p) => b.proxy(
                reqwest::Proxy::all(p.as_str())
                    .map_err(|e| bad(format!("the Transit proxy URL does not parse: {e}")))?,
            ),
            None => b.no_proxy(),
        };
        if let Some(pem) = &self.ca_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem.as_bytes())
                .map_err(|e| bad(format!("the Transit CA PEM does not parse: {e}")))?;
            if certs.is_empty() {
                return Err(bad("the Transit CA PEM holds no certificate".into()));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        let http = b
            .build()
            .map_err(|e| bad(format!("building the HTTP client: {e}")))?;
        let conn = Connection {
            http,
            base: format!("{}/v1/", self.address),
            mount: self.mount.clone(),
            retry: self.retry,
        };
        Ok((Arc::new(conn), host))
    }

    fn vault_properties(&self, host: &str) -> VaultProperties {
        let mut p = VaultProperties::new(host, &self.region, &self.tenant)
            .protection(self.soft_delete, false);
        // A soft-deleted Transit key stays recoverable until someone purges it: there is no
        // server-side retention period.
        p.retention_days = if self.soft_delete { u32::MAX } else { 0 };
        p
    }
}

/// The connection and the credential it acts with: every request goes through
/// [`Client::call`], which keeps the credential alive and decides what a 403 means.
#[derive(Clone, Debug)]
struct Client {
    conn: Arc<Connection>,
    auth: Arc<Auth>,
}

impl Client {
    /// One request with the current token (renewed or logged in first when due). A 403 is
    /// checked with `auth/token/lookup-self`: if our own token works, the policy denies and
    /// the 403 stands (`Forbidden`, definitive); if it does not, an AppRole logs in again and
    /// the request is sent once more, and otherwise the service's credential is at fault
    /// (`Unavailable`, transient, logged with `tracing::error!`), never the tenant's key.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        op: Op,
        retry: bool,
    ) -> Result<Answer, ProviderError> {
        // The body may carry a secret (encrypt): wipe it when done.
        let body = body.map(zeroize::Zeroizing::new);
        let body = body.as_ref().map(|b| b.as_str());
        let token = self.auth.token(&self.conn).await?;
        let mut may_login = true;
        let mut token = token;
        loop {
            match self
                .conn
                .call(&token, method.clone(), path, body, op, retry)
                .await
            {
                Err(e) if e.kind() == K::Forbidden => {
                    match self
                        .auth
                        .after_forbidden(&self.conn, &token, &e, may_login)
                        .await?
                    {
                        None => return Err(e),
                        Some(t) => {
                            token = t;
                            may_login = false;
                        }
                    }
                }
                r => return r,
            }
        }
    }
}

/// A [`KeyProvider`] on a Vault / OpenBao Transit mount, acting with one credential.
///
/// Cheap to clone (the connection pool and the credential's token are shared). Needs a tokio
/// runtime (the caller's); spawns nothing.
#[derive(Clone)]
pub struct TransitProvider {
    client: Client,
    props: VaultProperties,
}

impl fmt::Debug for TransitProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransitProvider")
            .field("host", &self.props.host)
            .field("conn", &self.client.conn)
            .field("auth", &self.client.auth)
            .finish_non_exhaustive()
    }
}

impl TransitProvider {
    /// A provider for the mount `config` describes. Does not contact the server.
    ///
    /// # Errors
    /// `InvalidRequest` for an address that is not an `https://` URL (or `http://` without
    /// [`TransitConfig::allow_insecure_http`]), a host no [`crate::KeyId`] can name, an empty
    /// mount, a CA PEM or a proxy URL that does not parse.
    pub fn new(config: TransitConfig) -> Result<Self, ProviderError> {
        let (conn, host) = config.connect()?;
        let auth = Auth::new(config.credential.clone());
        Ok(Self::with_client(Client { conn, auth }, &config, &host))
    }

    fn with_client(client: Client, config: &TransitConfig, host: &str) -> Self {
        Self {
            client,
            props: config.vault_properties(host),
        }
    }

    /// Moves the credential's lifecycle on now: renews a renewable token (or logs in again
    /// with AppRole) and returns the lifetime left (`None`: the token does not expire, or its
    /// lifetime is unknown). Requests do this by themselves once half the lease is gone; call
    /// it from your own timer if a provider can stay idle longer than its token's lease.
    ///
    /// # Errors
    /// `Unavailable` when an AppRole login fails or the lookup of the token fails (the
    /// service's credential is at fault), and transient kinds for outages.
    pub async fn renew_credential(&self) -> Result<Option<Duration>, ProviderError> {
        self.client.auth.renew_now(&self.client.conn).await
    }

    /// The vault host key identifiers from this provider name.
    pub fn vault_host(&self) -> &str {
        &self.props.host
    }

    /// `GET <mount>/keys/<name>`: the key's description.
    async fn read_key(&self, name: &str) -> Result<KeyData, ProviderError> {
        self.read_key_with(name, true).await
    }

    async fn read_key_with(&self, name: &str, retry: bool) -> Result<KeyData, ProviderError> {
        crate::provider::check_name(name)?;
        let path = self.client.conn.mount_path(&format!("keys/{name}"));
        self.client
            .call(Method::GET, &path, None, Op::Key, retry)
            .await
            .map_err(|e| name_not_found(e, name))?
            .data("GET key")
    }

    async fn encrypt(
        &self,
        name: &str,
        version: Option<u64>,
        key: &[u8],
    ) -> Result<(u64, Vec<u8>), ProviderError> {
        let pt = zeroize::Zeroizing::new(wire::b64(key));
        let body = match version {
            Some(v) => format!(r#"{{"plaintext":"{}","key_version":{v}}}"#, pt.as_str()),
            None => format!(r#"{{"plaintext":"{}"}}"#, pt.as_str()),
        };
        let path = self.client.conn.mount_path(&format!("encrypt/{name}"));
        let ans = self
            .client
            .call(Method::POST, &path, Some(body), Op::Encrypt, true)
            .await?;
        let data: EncryptData = ans.data("encrypt")?;
        let (v, raw) = wire::parse_ciphertext(&data.ciphertext).ok_or_else(|| {
            ProviderError::new(
                K::Unavailable,
                "Transit encrypt returned a ciphertext that is not vault:v<N>:<base64>",
            )
        })?;
        if v != data.key_version || version.is_some_and(|p| p != v) {
            return Err(ProviderError::new(
                K::Unavailable,
                format!(
                    "Transit encrypt used version {v} (reported {}), not the one asked for",
                    data.key_version
                ),
            ));
        }
        Ok((v, raw))
    }
}

/// The empty 404 of `GET keys/<name>` says nothing; name the key.
fn name_not_found(e: ProviderError, name: &str) -> ProviderError {
    if e.kind() == K::KeyNotFound {
        ProviderError::new(
            K::KeyNotFound,
            format!("Transit key {name} not found ({})", e.message()),
        )
    } else {
        e
    }
}

fn check_algorithm(kind: Kind, name: &str, alg: WrapAlgorithm) -> Result<(), ProviderError> {
    if !kind.fits(alg) {
        return Err(ProviderError::new(
            K::WrongKeyType,
            format!("a {} key ({name}) cannot {alg}", kind.key_type()),
        ));
    }
    if alg == WrapAlgorithm::RsaOaep {
        return Err(sha1_refused());
    }
    Ok(())
}

fn sha1_refused() -> ProviderError {
    ProviderError::new(
        K::InvalidRequest,
        "Transit RSA keys only do RSA-OAEP with SHA-256 (RSA-OAEP-256), not RSA-OAEP (SHA-1)",
    )
}

/// Whether a Transit ciphertext body has the shape `alg` produces for a `len`-byte secret:
/// a whole RSA block, or AES-GCM's nonce ‖ ciphertext ‖ tag. This catches a key whose type
/// could not be read first (a token without `read`).
fn shape_fits(alg: WrapAlgorithm, raw: &[u8], len: usize, rsa_bytes: Option<usize>) -> bool {
    match (alg, rsa_bytes) {
        (WrapAlgorithm::A256Kw, _) => raw.len() == 12 + len + 16,
        (_, Some(n)) => raw.len() == n,
        (_, None) => matches!(raw.len(), 256 | 384 | 512),
    }
}

/// Whether a stored blob can have come from `alg` with any Transit key: a whole RSA block
/// (2048, 3072 or 4096 bits), or at least AES-GCM's nonce and tag.
fn shape_fits_any(alg: WrapAlgorithm, raw: &[u8]) -> bool {
    match alg {
        WrapAlgorithm::A256Kw => raw.len() > 12 + 16,
        _ => matches!(raw.len(), 256 | 384 | 512),
    }
}

#[async_trait]
impl KeyProvider for TransitProvider {
    /// The configured properties, after checking that the server answers
    /// (`GET sys/health`, which needs no token).
    async fn vault_properties(&self) -> Result<VaultProperties, ProviderError> {
        // 200 active, 429 standby, 472/473 replication / performance standby: all serve.
        let r = self
            .client
            .conn
            .call(
                &self.client.auth.peek(),
                Method::GET,
                "sys/health?standbyok=true&perfstandbyok=true",
                None,
                Op::System,
                true,
            )
            .await;
        match r {
            Ok(_) => Ok(self.props.clone()),
            Err(e) if e.kind() == K::Throttled => Ok(self.props.clone()),
            Err(e) => Err(e),
        }
    }

    async fn key_properties(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyProperties, ProviderError> {
        let k = self.read_key(name).await?;
        k.live(name)?;
        let v = match version {
            Some(v) => k.version(name, v)?,
            // Every version from min_decryption_version up is enabled, so the latest enabled
            // version is always latest_version.
            None => k.latest_version,
        };
        k.properties(&self.props.host, name, v)
    }

    async fn wrap_key(
        &self,
        name: &str,
        version: Option<&str>,
        algorithm: WrapAlgorithm,
        key: &[u8],
    ) -> Result<WrappedKey, ProviderError> {
        crate::provider::check_wrap_input(key)?;
        // Read the key first: it must exist (encrypt on a missing key would silently create
        // an AES key when the token may `create`), fit the algorithm, and the version must be
        // usable. A token without `read` (wrap-only) skips this and relies on its policy
        // (`update` without `create` on encrypt) and on the shape of the answer.
        let (pinned, rsa_bytes) = match self.read_key(name).await {
            Ok(k) => {
                k.live(name)?;
                let kind = k.kind(name)?;
                check_algorithm(kind, name, algorithm)?;
                if k.derived {
                    return Err(ProviderError::new(
                        K::WrongKeyType,
                        format!("Transit key {name} is a derived key (needs a context)"),
                    ));
                }
                let v = match version {
                    Some(v) => {
                        let n = k.version(name, v)?;
                        if !k.enabled(n) || n < k.min_encryption_version {
                            return Err(ProviderError::new(
                                K::KeyDisabled,
                                format!(
                                    "version {n} of {name} is disabled (min_decryption_version \
                                     {}, min_encryption_version {})",
                                    k.min_decryption_version, k.min_encryption_version
                                ),
                            ));
                        }
                        n
                    }
                    None => k.latest_version,
                };
                let bytes = match kind {
                    Kind::Rsa(bits) => Some(bits as usize / 8),
                    _ => None,
                };
                (Some(v), bytes)
            }
            Err(e) if e.kind() == K::Forbidden => {
                if algorithm == WrapAlgorithm::RsaOaep {
                    return Err(sha1_refused());
                }
                let v = version
                    .map(|v| {
                        wire::parse_version(v).ok_or_else(|| {
                            ProviderError::new(
                                K::KeyNotFound,
                                format!("key {name} has no version {v:?}"),
                            )
                        })
                    })
                    .transpose()?;
                (v, None)
            }
            Err(e) => return Err(e),
        };
        let (v, raw) = self.encrypt(name, pinned, key).await?;
        if !shape_fits(algorithm, &raw, key.len(), rsa_bytes) {
            return Err(ProviderError::new(
                K::WrongKeyType,
                format!("Transit key {name} did not wrap like a key that can {algorithm}"),
            ));
        }
        Ok(WrappedKey {
            key_name: name.to_owned(),
            key_version: v.to_string(),
            algorithm,
            ciphertext: raw,
        })
    }

    async fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<SecretBytes, ProviderError> {
        let name = &wrapped.key_name;
        crate::provider::check_name(name)?;
        if wrapped.algorithm == WrapAlgorithm::RsaOaep {
            return Err(sha1_refused());
        }
        let v = wire::parse_version(&wrapped.key_version).ok_or_else(|| {
            ProviderError::new(
                K::KeyNotFound,
                format!("key {name} has no version {:?}", wrapped.key_version),
            )
        })?;
        if wrapped.ciphertext.is_empty() {
            return Err(ProviderError::new(
                K::UnwrapFailed,
                "the wrapped key did not unwrap (empty)",
            ));
        }
        // The algorithm is not sent to Transit (the key's type decides), so a blob whose shape
        // cannot come from `algorithm` is refused here rather than decrypted as something else.
        let r = if shape_fits_any(wrapped.algorithm, &wrapped.ciphertext) {
            let body = format!(
                r#"{{"ciphertext":"{}"}}"#,
                wire::format_ciphertext(v, &wrapped.ciphertext)
            );
            let path = self.client.conn.mount_path(&format!("decrypt/{name}"));
            self.client
                .call(Method::POST, &path, Some(body), Op::Decrypt, true)
                .await
        } else {
            Err(ProviderError::new(
                K::UnwrapFailed,
                format!(
                    "the wrapped key did not unwrap ({} bytes cannot be {})",
                    wrapped.ciphertext.len(),
                    wrapped.algorithm
                ),
            ))
        };
        let ans = match r {
            Ok(a) => a,
            Err(e) if e.kind() == K::UnwrapFailed => {
                // A blob under a key of another type fails too; say so when the key can be
                // read (one attempt, no retry: this only refines the error).
                if let Ok(k) = self.read_key_with(name, false).await
                    && let Ok(kind) = k.kind(name)
                    && !kind.fits(wrapped.algorithm)
                {
                    return Err(ProviderError::new(
                        K::WrongKeyType,
                        format!(
                            "a {} key ({name}) cannot {}",
                            kind.key_type(),
                            wrapped.algorithm
                        ),
                    ));
                }
                return Err(e);
            }
            Err(e) => return Err(e),
        };
        let data: DecryptData = ans.data("decrypt")?;
        let pt = wire::unb64(&data.plaintext).ok_or_else(|| {
            ProviderError::new(
                K::Unavailable,
                "Transit decrypt returned a plaintext that is not base64",
            )
        })?;
        Ok(SecretBytes::new(pt))
    }
}
