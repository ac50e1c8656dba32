//! [`TransitAdmin`]: the vault owner's side of a Transit mount (keys, versions, policies and
//! tokens), for tests, examples and provisioning tools.

use core::fmt;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::Method;

use super::auth::{Auth, Credential};
use super::http::Op;
use super::http::TransitAnswer as _;
use super::wire::{self, KeyData};
use super::{Client, TransitConfig, TransitProvider, name_not_found};
use crate::error::{ProviderError, ProviderErrorKind as K};
use crate::provider::check_name;
use crate::provider::{
    AdminCapabilities, Identity, KeyProperties, KeyProvider, KeySpec, Permissions, VaultAdmin,
};
use crate::secret::SecretString;

/// A token handed to an identity, its accessor (to revoke it without the token), and its
/// lifecycle (shared by every provider acting as the identity).
struct IdentityToken {
    accessor: String,
    auth: Arc<Auth>,
}

/// The vault owner's side of a Transit mount: creates and rotates keys, moves
/// `min_decryption_version`, soft-deletes / restores / deletes keys, and plays identities with
/// tokens bound to an ACL policy. Holds a token allowed to do all that (the dev root token in
/// tests).
///
/// An identity `id` is the ACL policy `byok-<id>` plus a token carrying it, created on first
/// use ([`VaultAdmin::set_access`] or [`ProviderFactory::provider_for`](crate::provider::ProviderFactory::provider_for)); rewriting the policy
/// changes what that token may do at once, and deleting the policy
/// ([`VaultAdmin::remove_identity`]) ends its access to every key. The token itself is left
/// valid (with only the `default` policy): a token that no longer works is the *service's*
/// fault, which the provider reports as transient, while a policy that denies the key is the
/// tenant's revocation (definitive `Forbidden`).
///
/// What Transit cannot express is declared in [`VaultAdmin::capabilities`]: disabling an
/// arbitrary version (only the oldest ones can be, through `min_decryption_version`), PEM
/// import, and RSA-OAEP with SHA-1.
pub struct TransitAdmin {
    client: Client,
    config: TransitConfig,
    host: String,
    token_ttl: Duration,
    renewable: bool,
    identities: Mutex<HashMap<Identity, IdentityToken>>,
}

impl fmt::Debug for TransitAdmin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TransitAdmin")
            .field("host", &self.host)
            .field("client", &self.client)
            .field("token_ttl", &self.token_ttl)
            .finish_non_exhaustive()
    }
}

impl TransitAdmin {
    /// An administrator for the mount `config` describes, acting with `config`'s token.
    /// Identity tokens live for 24 hours unless [`Self::token_ttl`] says otherwise.
    ///
    /// # Errors
    /// `InvalidRequest` for a bad address, mount or CA (as [`TransitProvider::new`]).
    pub fn new(config: TransitConfig) -> Result<Self, ProviderError> {
        let (conn, host) = config.connect()?;
        let auth = Auth::new(config.credential.clone());
        Ok(Self {
            client: Client { conn, auth },
            config,
            host,
            token_ttl: Duration::from_secs(24 * 3600),
            renewable: true,
            identities: Mutex::new(HashMap::new()),
        })
    }

    /// Lifetime of the identity tokens created from now on.
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.token_ttl = ttl;
        self
    }

    /// Whether the identity tokens created from now on are renewable (default `true`; a
    /// non-renewable one stops working at the end of [`Self::token_ttl`]).
    pub fn renewable_tokens(mut self, on: bool) -> Self {
        self.renewable = on;
        self
    }

    /// A provider acting with the administrator's own credential (sharing its token).
    pub fn owner_provider(&self) -> TransitProvider {
        TransitProvider::with_client(self.client.clone(), &self.config, &self.host)
    }

    /// The name of the ACL policy that plays `identity`: `byok-` and the identity's name in
    /// lower case with every character other than letters, digits, `-` and `_` replaced by
    /// `_` (plus a short hash of the original name when anything was replaced).
    pub fn policy_name(identity: &Identity) -> String {
        let raw = identity.as_str();
        let clean: String = raw
            .chars()
            .map(|c| {
                if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        if clean == raw && !raw.is_empty() {
            format!("byok-{clean}")
        } else {
            let h = crate::crypto::sha256(raw.as_bytes());
            format!("byok-{clean}-{}", crate::util::hex(&h[..4]))
        }
    }

    /// The ACL policy (HCL) granting `permissions` on the Transit keys `keys` of `mount`
    /// (every key when `keys` is `None`): `get` → `read` on `<mount>/keys/<key>`, `wrapKey` →
    /// `update` on `<mount>/encrypt/<key>`, `unwrapKey` → `update` on `<mount>/decrypt/<key>`.
    /// `create` is never granted, so an encrypt can never create a key.
    pub fn policy_hcl(mount: &str, keys: Option<&[&str]>, permissions: Permissions) -> String {
        let targets: Vec<&str> = match keys {
            Some(k) => k.to_vec(),
            None => vec!["+"],
        };
        let mut out = String::new();
        for key in targets {
            for (on, sub, cap) in [
                (permissions.get, "keys", "read"),
                (permissions.wrap_key, "encrypt", "update"),
                (permissions.unwrap_key, "decrypt", "update"),
            ] {
                if on {
                    out.push_str(&format!(
                        "path \"{mount}/{sub}/{key}\" {{\n  capabilities = [\"{cap}\"]\n}}\n"
                    ));
                }
            }
        }
        if out.is_empty() {
            // An empty policy does not parse; this one grants nothing.
            out.push_str(&format!(
                "path \"{mount}/keys/+\" {{\n  capabilities = [\"deny\"]\n}}\n"
            ));
        }
        out
    }

    /// Like [`VaultAdmin::set_access`], but only on the named keys: the identity's policy is
    /// replaced by one that grants `permissions` on `keys` and nothing else.
    ///
    /// # Errors
    /// `InvalidRequest` for a key name byok cannot use; `Forbidden` if the administrator's
    /// token may not write policies or create tokens; transient kinds for outages.
    pub async fn set_key_access(
        &self,
        identity: &Identity,
        keys: &[&str],
        permissions: Permissions,
    ) -> Result<(), ProviderError> {
        for k in keys {
            check_name(k)?;
        }
        self.write_policy(identity, Some(keys), permissions).await?;
        self.token_for(identity).await.map(drop)
    }

    async fn write_policy(
        &self,
        identity: &Identity,
        keys: Option<&[&str]>,
        permissions: Permissions,
    ) -> Result<(), ProviderError> {
        let hcl = Self::policy_hcl(&self.client.conn.mount, keys, permissions);
        let body = serde_json::json!({ "policy": hcl }).to_string();
        let path = format!("sys/policies/acl/{}", Self::policy_name(identity));
        self.call(Method::PUT, &path, Some(body), Op::System, true)
            .await
            .map(drop)
    }

    /// The identity's token lifecycle, its token created (bound to its policy) on first use.
    async fn token_for(&self, identity: &Identity) -> Result<Arc<Auth>, ProviderError> {
        if let Some(t) = self.lock().get(identity) {
            return Ok(Arc::clone(&t.auth));
        }
        let body = serde_json::json!({
            "policies": [Self::policy_name(identity)],
            "display_name": format!("byok-{}", identity.as_str()),
            "ttl": format!("{}s", self.token_ttl.as_secs().max(1)),
            "renewable": self.renewable,
            "meta": { "byok_identity": identity.as_str() },
        })
        .to_string();
        // Not retried: a lost answer would leave a second token behind.
        let ans = self
            .call(
                Method::POST,
                "auth/token/create",
                Some(body),
                Op::System,
                false,
            )
            .await?;
        let auth = ans
            .json::<super::wire::Envelope<serde_json::Value>>("token create")?
            .auth
            .ok_or_else(|| {
                ProviderError::new(K::Unavailable, "Transit token create returned no auth")
            })?;
        let t = IdentityToken {
            auth: Auth::new(Credential::Token(SecretString::new(auth.client_token))),
            accessor: auth.accessor,
        };
        let token = Arc::clone(&t.auth);
        // Two concurrent first uses may both create a token; keep the first, revoke the other.
        let loser = {
            let mut map = self.lock();
            match map.get(identity) {
                Some(existing) => Some((Arc::clone(&existing.auth), t.accessor)),
                None => {
                    map.insert(identity.clone(), t);
                    None
                }
            }
        };
        if let Some((kept, accessor)) = loser {
            let _ = self.revoke_accessor(&accessor).await;
            return Ok(kept);
        }
        Ok(token)
    }

    async fn revoke_accessor(&self, accessor: &str) -> Result<(), ProviderError> {
        let body = serde_json::json!({ "accessor": accessor }).to_string();
        self.call(
            Method::POST,
            "auth/token/revoke-accessor",
            Some(body),
            Op::System,
            true,
        )
        .await
        .map(drop)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, IdentityToken>> {
        self.identities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<String>,
        op: Op,
        retry: bool,
    ) -> Result<super::http::Answer, ProviderError> {
        self.client.call(method, path, body, op, retry).await
    }

    async fn key_call(
        &self,
        method: Method,
        name: &str,
        sub: &str,
        body: Option<String>,
        retry: bool,
    ) -> Result<super::http::Answer, ProviderError> {
        check_name(name)?;
        let path = self.client.conn.mount_path(&format!("keys/{name}{sub}"));
        self.call(method, &path, body, Op::Key, retry)
            .await
            .map_err(|e| name_not_found(e, name))
    }

    async fn read(&self, name: &str) -> Result<KeyData, ProviderError> {
        self.key_call(Method::GET, name, "", None, true)
            .await?
            .data("GET key")
    }

    async fn config(&self, name: &str, body: serde_json::Value) -> Result<KeyData, ProviderError> {
        self.key_call(Method::POST, name, "/config", Some(body.to_string()), true)
            .await?
            .data("key config")
    }

    fn props(&self, k: &KeyData, name: &str, v: u64) -> Result<KeyProperties, ProviderError> {
        k.properties(&self.host, name, v)
    }
}

fn not_deleted(name: &str) -> ProviderError {
    ProviderError::new(K::KeyNotFound, format!("no deleted key {name}"))
}

#[async_trait]
impl VaultAdmin for TransitAdmin {
    /// Soft-delete (OpenBao; follows [`TransitConfig::soft_delete`]), purge, access policies,
    /// AES-256 and EC keys, RSA-OAEP-256. Not: disabling an arbitrary version, PEM import,
    /// RSA-OAEP with SHA-1.
    fn capabilities(&self) -> AdminCapabilities {
        AdminCapabilities {
            soft_delete: self.config.soft_delete,
            purge: true,
            access_policies: true,
            disable_version: false,
            latest_skips_disabled: true,
            import_pem: false,
            aes_keys: true,
            ec_keys: true,
            rsa_oaep_sha256: true,
            rsa_oaep_sha1: false,
        }
    }

    async fn create_key(&self, name: &str, spec: KeySpec) -> Result<KeyProperties, ProviderError> {
        let t = wire::spec_type(spec)?;
        // Transit answers 200 with the existing key when the name is taken (even with another
        // type), so look first.
        match self.read(name).await {
            Ok(_) => {
                return Err(ProviderError::new(
                    K::Conflict,
                    format!("Transit key {name} already exists"),
                ));
            }
            Err(e) if e.kind() == K::KeyNotFound => {}
            Err(e) => return Err(e),
        }
        let body = serde_json::json!({ "type": t }).to_string();
        let k: KeyData = self
            .key_call(Method::POST, name, "", Some(body), true)
            .await?
            .data("create key")?;
        if k.key_type != t || k.latest_version != 1 {
            return Err(ProviderError::new(
                K::Conflict,
                format!(
                    "Transit key {name} was created concurrently as {} v{}",
                    k.key_type, k.latest_version
                ),
            ));
        }
        self.props(&k, name, 1)
    }

    /// Not supported: Transit imports keys only wrapped under its own wrapping key
    /// (`keys/<name>/import`), which this crate does not implement.
    async fn import_rsa_pem(&self, name: &str, _pem: &str) -> Result<KeyProperties, ProviderError> {
        Err(ProviderError::new(
            K::Unsupported,
            format!("Transit PEM import is not supported (key {name})"),
        ))
    }

    async fn rotate_key(&self, name: &str) -> Result<KeyProperties, ProviderError> {
        // Not retried: a lost answer would rotate twice.
        let k: KeyData = self
            .key_call(Method::POST, name, "/rotate", None, false)
            .await?
            .data("rotate key")?;
        self.props(&k, name, k.latest_version)
    }

    async fn list_versions(&self, name: &str) -> Result<Vec<KeyProperties>, ProviderError> {
        let k = self.read(name).await?;
        k.live(name)?;
        (k.oldest()..=k.latest_version)
            .map(|v| self.props(&k, name, v))
            .collect()
    }

    /// Transit has no per-version switch, only `min_decryption_version`: versions below it are
    /// disabled. So only the **oldest enabled version** can be disabled (and never the latest),
    /// and only the **newest disabled version** can be re-enabled; anything else is
    /// `Unsupported` (and [`AdminCapabilities::disable_version`] is declared `false`).
    async fn set_enabled(
        &self,
        name: &str,
        version: &str,
        enabled: bool,
    ) -> Result<(), ProviderError> {
        let k = self.read(name).await?;
        k.live(name)?;
        let v = k.version(name, version)?;
        let min = k.min_decryption_version.max(1);
        let target = match (enabled, k.enabled(v)) {
            (true, true) | (false, false) => return Ok(()),
            (false, true) if v == min && v < k.latest_version => v + 1,
            (true, false) if v + 1 == min => v,
            (false, true) => {
                return Err(ProviderError::new(
                    K::Unsupported,
                    format!(
                        "Transit can only disable the oldest enabled version ({min}) of {name}, \
                         and never the latest (asked: {v})"
                    ),
                ));
            }
            (true, false) => {
                return Err(ProviderError::new(
                    K::Unsupported,
                    format!(
                        "Transit can only re-enable the newest disabled version ({}) of {name} \
                         (asked: {v})",
                        min - 1
                    ),
                ));
            }
        };
        self.config(
            name,
            serde_json::json!({ "min_decryption_version": target }),
        )
        .await
        .map(drop)
    }

    /// Soft-deletes the key (OpenBao) or, with [`TransitConfig::soft_delete`] off, deletes it
    /// for good (setting `deletion_allowed` first).
    async fn delete_key(&self, name: &str) -> Result<(), ProviderError> {
        let k = self.read(name).await?;
        k.live(name)?;
        if self.config.soft_delete {
            self.key_call(Method::DELETE, name, "/soft-delete", None, true)
                .await
                .map(drop)
        } else {
            self.purge_now(name).await
        }
    }

    async fn recover_key(&self, name: &str) -> Result<(), ProviderError> {
        let k = self.read(name).await.map_err(|e| {
            if e.kind() == K::KeyNotFound {
                not_deleted(name)
            } else {
                e
            }
        })?;
        if !k.soft_deleted {
            return Err(not_deleted(name));
        }
        self.key_call(Method::POST, name, "/soft-delete-restore", None, true)
            .await
            .map(drop)
    }

    /// Deletes a soft-deleted key for good. Transit has no purge protection: whoever may
    /// `update` `keys/<name>/config` and `delete` `keys/<name>` can do this at any time, so
    /// [`VaultProperties::purge_protection`](crate::provider::VaultProperties::purge_protection) is
    /// reported `false`.
    async fn purge_key(&self, name: &str) -> Result<(), ProviderError> {
        let k = self.read(name).await.map_err(|e| {
            if e.kind() == K::KeyNotFound {
                not_deleted(name)
            } else {
                e
            }
        })?;
        if !k.soft_deleted {
            return Err(not_deleted(name));
        }
        self.purge_now(name).await
    }

    async fn set_access(
        &self,
        identity: &Identity,
        permissions: Permissions,
    ) -> Result<(), ProviderError> {
        self.write_policy(identity, None, permissions).await?;
        self.token_for(identity).await.map(drop)
    }

    /// Deletes the identity's policy: its token keeps only the `default` policy, so every
    /// key answers 403 while the token's lookup-self still works (a definitive `Forbidden`,
    /// not a fault of the service's credential). [`VaultAdmin::set_access`] restores it.
    async fn remove_identity(&self, identity: &Identity) -> Result<(), ProviderError> {
        let path = format!("sys/policies/acl/{}", Self::policy_name(identity));
        self.call(Method::DELETE, &path, None, Op::System, true)
            .await
            .map(drop)
    }
}

/// A provider per identity: a token with the identity's policy (created on first use).
#[async_trait]
impl crate::provider::ProviderFactory for TransitAdmin {
    async fn provider_for(
        &self,
        identity: &Identity,
    ) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        let auth = self.token_for(identity).await?;
        Ok(Arc::new(TransitProvider::with_client(
            Client {
                conn: Arc::clone(&self.client.conn),
                auth,
            },
            &self.config,
            &self.host,
        )))
    }
}

impl TransitAdmin {
    async fn purge_now(&self, name: &str) -> Result<(), ProviderError> {
        self.config(name, serde_json::json!({ "deletion_allowed": true }))
            .await?;
        self.key_call(Method::DELETE, name, "", None, true)
            .await
            .map(drop)
    }
}
