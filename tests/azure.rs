//! The Azure Key Vault provider — Microsoft's SDK over byok's transport, talking TLS to the
//! **contract server** in `azure_support` (a small local HTTPS server that speaks the
//! documented Key Vault keys REST API with real RSA keys; not Azure): the conformance suite,
//! error mapping (403 / 404 / deleted / 429 with `Retry-After` / 5xx / timeouts / an
//! unreachable vault in bounded time / the service's own credential), and an account through
//! create → rotate → revoke → restore.

mod azure_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use azure_support::{
    ContractServer, LOGIN_HOST, OWNER, Perms, TENANT, VAULT_HOST, secret_of, shared,
};
use byok::account::{DataClass, NewAccount, PlatformKey, StateKind};
use byok::provider::azure::{
    AzureCredential, AzureKeyVaultAdmin, AzureKeyVaultConfig, AzureKeyVaultProvider,
};
use byok::provider::memory::InMemoryVault;
use byok::provider::{
    AdminCapabilities, Identity, KeyProperties, KeySpec, OaepHash, Permissions, ProviderFactory,
    RetryPolicy, VaultDirectory, VaultProperties, WrapAlgorithm, WrappedKey,
};
use byok::testing::ManualClock;
use byok::testing::provider_conformance::{self as conformance, Outcome};
use byok::{
    AccountId, AccountManager, Error, KeyId, KeyProvider, KeySource, Policy, PolicyViolation,
    ProviderError, ProviderErrorKind as K, SecretString, VaultAdmin,
};

const SECRET: [u8; 32] = [0x42; 32];

/// A config for `client` (its client-secret credential against the contract server's token
/// endpoint), trusting only the contract server's CA and pinning both host names to it.
fn config(s: &ContractServer, client: &str) -> AzureKeyVaultConfig {
    config_at(s, client, &s.vault_url)
}

/// As [`config`], for another vault URL (a port nothing listens on).
fn config_at(s: &ContractServer, client: &str, vault_url: &str) -> AzureKeyVaultConfig {
    pinned(
        s,
        vault_url,
        AzureCredential::client_secret(TENANT, client, SecretString::new(secret_of(client))),
    )
}

/// A config with `credential`, trusting only the contract server's CA, both hosts pinned.
fn pinned(s: &ContractServer, vault_url: &str, credential: AzureCredential) -> AzureKeyVaultConfig {
    AzureKeyVaultConfig::new(vault_url, credential)
        .authority_host(&s.authority)
        .ca_pem(&s.ca_pem)
        .only_given_ca()
        .resolve(VAULT_HOST, s.addr)
        .resolve(LOGIN_HOST, s.addr)
}

fn owner(s: &ContractServer) -> AzureKeyVaultAdmin {
    AzureKeyVaultAdmin::new(config(s, OWNER))
        .expect("admin")
        .with_identity_credentials(|id: &Identity| {
            AzureCredential::client_secret(
                TENANT,
                id.as_str(),
                SecretString::new(secret_of(id.as_str())),
            )
        })
}

/// A name unique to this process and test.
fn unique(label: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}-{label}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The library's Key Vault admin plus what Key Vault's data plane cannot do: access policies,
/// set on the contract server directly (as an ARM role assignment would be).
struct ContractVault {
    inner: AzureKeyVaultAdmin,
    server: Arc<ContractServer>,
}

impl std::fmt::Debug for ContractVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContractVault")
            .field("inner", &self.inner)
            .finish()
    }
}

impl ContractVault {
    fn new(server: Arc<ContractServer>) -> Self {
        Self {
            inner: owner(&server),
            server,
        }
    }
}

#[async_trait]
impl VaultAdmin for ContractVault {
    fn capabilities(&self) -> AdminCapabilities {
        let mut c = self.inner.capabilities();
        c.access_policies = true;
        c
    }
    async fn create_key(&self, name: &str, spec: KeySpec) -> Result<KeyProperties, ProviderError> {
        self.inner.create_key(name, spec).await
    }
    async fn import_rsa_pem(&self, name: &str, pem: &str) -> Result<KeyProperties, ProviderError> {
        self.inner.import_rsa_pem(name, pem).await
    }
    async fn rotate_key(&self, name: &str) -> Result<KeyProperties, ProviderError> {
        self.inner.rotate_key(name).await
    }
    async fn list_versions(&self, name: &str) -> Result<Vec<KeyProperties>, ProviderError> {
        self.inner.list_versions(name).await
    }
    async fn set_enabled(
        &self,
        name: &str,
        version: &str,
        enabled: bool,
    ) -> Result<(), ProviderError> {
        self.inner.set_enabled(name, version, enabled).await
    }
    async fn delete_key(&self, name: &str) -> Result<(), ProviderError> {
        self.inner.delete_key(name).await
    }
    async fn recover_key(&self, name: &str) -> Result<(), ProviderError> {
        self.inner.recover_key(name).await
    }
    async fn purge_key(&self, name: &str) -> Result<(), ProviderError> {
        self.inner.purge_key(name).await
    }
    async fn set_access(&self, identity: &Identity, p: Permissions) -> Result<(), ProviderError> {
        self.server.set_access(
            identity.as_str(),
            Some(Perms {
                get: p.get,
                wrap: p.wrap_key,
                unwrap: p.unwrap_key,
            }),
        );
        Ok(())
    }
    async fn remove_identity(&self, identity: &Identity) -> Result<(), ProviderError> {
        self.server.set_access(identity.as_str(), None);
        Ok(())
    }
}

#[async_trait]
impl ProviderFactory for ContractVault {
    async fn provider_for(
        &self,
        identity: &Identity,
    ) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        self.inner.provider_for(identity).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_against_the_contract_server() {
    let vault = ContractVault::new(shared());
    let report = conformance::run(&vault).await;
    report.assert_passed();
    // Nothing is skipped: Key Vault has every feature the suite asks for except AES keys,
    // which only change what `round_trip_every_algorithm_and_size` covers.
    for (name, outcome) in &report.scenarios {
        assert_eq!(*outcome, Outcome::Passed, "{name}");
    }
    assert_eq!(report.passed(), 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_data_plane_admin_declares_what_key_vault_lacks() {
    let admin = owner(&shared());
    let c = admin.capabilities();
    assert!(
        !c.access_policies,
        "access policies are ARM, not data plane"
    );
    assert!(!c.aes_keys, "AES keys are Managed HSM only");
    assert!(c.soft_delete && c.purge && c.disable_version && c.ec_keys && c.import_pem);
    assert!(c.rsa_oaep_sha256 && c.rsa_oaep_sha1);
    let e = admin
        .set_access(&Identity::new("x"), Permissions::CMK)
        .await
        .expect_err("unsupported");
    assert_eq!(e.kind(), K::Unsupported);
    let e = admin
        .create_key(&unique("aes"), KeySpec::Aes256)
        .await
        .expect_err("no AES keys");
    assert_eq!(e.kind(), K::InvalidRequest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_imported_pem_key_unwraps_what_its_public_key_wrapped_locally() {
    use rsa::pkcs8::EncodePrivateKey;
    use rsa::traits::PublicKeyParts;
    let s = shared();
    let admin = owner(&s);
    let key =
        rsa::PrivateKey::new(&mut rand_core::UnwrapErr(getrandom::SysRng), 2048).expect("rsa");
    let pem = key.to_pkcs8_pem(rsa::pkcs8::LineEnding::LF).expect("pem");
    let name = unique("imported");
    let props = admin.import_rsa_pem(&name, &pem).await.expect("import");
    assert_eq!(props.key_type, byok::provider::KeyType::Rsa { bits: 2048 });
    let public = props.public_key.clone().expect("public key");
    assert_eq!(
        public.modulus(),
        key.to_public_key()
            .n()
            .as_ref()
            .to_be_bytes_trimmed_vartime()
            .to_vec()
    );
    let p = admin.owner_provider().expect("provider");
    for (hash, alg) in [
        (OaepHash::Sha256, WrapAlgorithm::RsaOaep256),
        (OaepHash::Sha1, WrapAlgorithm::RsaOaep),
    ] {
        let w = WrappedKey::new(
            name.clone(),
            props.version.clone(),
            alg,
            public.encrypt_oaep(hash, &SECRET, b"").expect("local wrap"),
        );
        let u = p.unwrap_key(&w).await.expect("vault unwrap");
        assert_eq!(u.expose_secret(), SECRET, "{alg}");
        // The same block under the other hash is refused as a bad blob, not a key problem.
        let other = if alg == WrapAlgorithm::RsaOaep256 {
            WrapAlgorithm::RsaOaep
        } else {
            WrapAlgorithm::RsaOaep256
        };
        let e = p
            .unwrap_key(&{
                let mut other_hash = w.clone();
                other_hash.algorithm = other;
                other_hash
            })
            .await
            .expect_err("wrong hash");
        assert_eq!(e.kind(), K::UnwrapFailed, "{e}");
    }
    // A vault wrap opens locally with the private key: real RSA-OAEP-256 on the server.
    let w = p
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect("vault wrap");
    let pt = key
        .decrypt(rsa::Oaep::<sha2::Sha256>::new(), &w.ciphertext)
        .expect("local unwrap");
    assert_eq!(pt, SECRET);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vault_properties_come_from_the_key_recovery_level_or_the_declaration() {
    let s = ContractServer::start();
    let admin = AzureKeyVaultAdmin::new(config(&s, OWNER)).expect("admin");
    let name = unique("level");
    admin
        .create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create");
    let probe = AzureKeyVaultProvider::new(
        config(&s, OWNER)
            .protection_from_key(&name)
            .location("westeurope", TENANT),
    )
    .expect("provider");
    let p = probe.vault_properties().await.expect("props");
    assert!(p.soft_delete && !p.purge_protection, "{p:?}");
    assert_eq!(p.retention_days, 90);
    assert_eq!(p.region, "westeurope");
    assert_eq!(p.host, format!("{VAULT_HOST}:{}", s.addr.port()));
    s.state().purge_protection = true;
    let p = probe.vault_properties().await.expect("props");
    assert!(p.soft_delete && p.purge_protection, "{p:?}");
    // Declared (no call at all): what the operator says.
    let declared =
        AzureKeyVaultProvider::new(config(&s, OWNER).protection(true, 7, true)).expect("provider");
    let before = s.served();
    let p = declared.vault_properties().await.expect("props");
    assert!(p.purge_protection && p.retention_days == 7);
    assert_eq!(s.served(), before);
}

/// A key, an app identity granted get/wrapKey/unwrapKey, a provider for it and a wrapping.
async fn fixture(s: &ContractServer, retry: RetryPolicy) -> (AzureKeyVaultProvider, WrappedKey) {
    let admin = AzureKeyVaultAdmin::new(config(s, OWNER)).expect("admin");
    let name = unique("errors");
    admin
        .create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create");
    let app = unique("app");
    s.set_access(
        &app,
        Some(Perms {
            get: true,
            wrap: true,
            unwrap: true,
        }),
    );
    let p = AzureKeyVaultProvider::new(config(s, &app).retry(retry)).expect("provider");
    let w = p
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect("wrap");
    (p, w)
}

const THROTTLED: &str = r#"{"error":{"code":"Throttled","message":"Request was not processed because too many requests were received. Reason: VaultRequestTypeLimitReached"}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_and_outages_are_transient_retried_within_bounds_honouring_retry_after() {
    let s = ContractServer::start();
    let retry = RetryPolicy::new(2, Duration::from_millis(50), Duration::from_secs(2));
    let (p, w) = fixture(&s, retry).await;

    // 429 with Retry-After: 1 → waited for, then served.
    s.fail_next(1, 429, &[("retry-after", "1")], THROTTLED);
    let t = Instant::now();
    let u = p.unwrap_key(&w).await.expect("unwrap after the throttle");
    assert_eq!(u.expose_secret(), SECRET);
    assert!(
        t.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t.elapsed()
    );

    // A Retry-After beyond the cap is not slept through: Throttled at once.
    s.fail_next(1, 429, &[("retry-after", "30")], THROTTLED);
    let t = Instant::now();
    let e = p.unwrap_key(&w).await.expect_err("throttled");
    assert_eq!(e.kind(), K::Throttled, "{e}");
    assert!(e.is_transient());
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());

    // 5xx: retried, then returned after max_retries + 1 attempts.
    s.fail_next(3, 503, &[], "");
    let e = p.unwrap_key(&w).await.expect_err("unavailable");
    assert_eq!(e.kind(), K::Unavailable, "{e}");
    assert!(e.message().contains("after 3 attempts"), "{e}");
    s.fail_next(
        1,
        500,
        &[],
        r#"{"error":{"code":"InternalServerError","message":"oops"}}"#,
    );
    assert_eq!(
        p.unwrap_key(&w)
            .await
            .expect("one 500, then served")
            .expose_secret(),
        SECRET
    );

    // Without retries, one 429 is the caller's Throttled.
    let (np, nw) = fixture(&s, RetryPolicy::none()).await;
    s.fail_next(1, 429, &[("retry-after", "1")], THROTTLED);
    assert_eq!(
        np.unwrap_key(&nw).await.expect_err("throttled").kind(),
        K::Throttled
    );
    // Definitive answers are never retried.
    let before = s.served();
    let mut gone = w.clone();
    gone.key_name = unique("never-created");
    assert_eq!(
        p.unwrap_key(&gone).await.expect_err("missing").kind(),
        K::KeyNotFound
    );
    // One unwrap and one look into the recycle bin: no retry.
    assert_eq!(s.served() - before, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_or_unreachable_vault_fails_transiently_in_bounded_time() {
    let s = ContractServer::start();
    let (_, w) = fixture(&s, RetryPolicy::none()).await;
    let app = unique("slow");
    s.set_access(
        &app,
        Some(Perms {
            get: true,
            wrap: true,
            unwrap: true,
        }),
    );
    // A vault that does not answer: Timeout after the request timeout, per attempt.
    let slow = AzureKeyVaultProvider::new(
        config(&s, &app)
            .request_timeout(Duration::from_millis(400))
            .retry(RetryPolicy::new(
                1,
                Duration::from_millis(10),
                Duration::from_millis(50),
            )),
    )
    .expect("provider");
    slow.key_properties(&w.key_name, None)
        .await
        .expect("warm up the token");
    s.stall_next(2, Duration::from_secs(3));
    let t = Instant::now();
    let e = slow.unwrap_key(&w).await.expect_err("timeout");
    assert_eq!(e.kind(), K::Timeout, "{e}");
    assert!(
        t.elapsed() < Duration::from_millis(1500),
        "{:?}",
        t.elapsed()
    );

    // Nothing listens: refused at once, every attempt, within the backoff bound. (reqwest's
    // `resolve` keeps the URL's port, so the dead vault is a URL with a closed port.)
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let dead = AzureKeyVaultProvider::new(
        config_at(&s, &app, &format!("https://{VAULT_HOST}:{closed}"))
            .connect_timeout(Duration::from_millis(500))
            .retry(RetryPolicy::default()),
    )
    .expect("provider");
    let t = Instant::now();
    let e = dead.unwrap_key(&w).await.expect_err("unreachable");
    assert!(e.is_transient(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(e.message().contains("after 3 attempts"), "{e}");

    // A black-holed address: bounded by the connect timeout.
    let hole: SocketAddr = "10.255.255.1:443".parse().expect("addr");
    let blackhole = AzureKeyVaultProvider::new(
        config(&s, &app)
            .resolve(VAULT_HOST, hole)
            .resolve(LOGIN_HOST, hole)
            .connect_timeout(Duration::from_millis(300))
            .request_timeout(Duration::from_millis(600))
            .retry(RetryPolicy::none()),
    )
    .expect("provider");
    let t = Instant::now();
    let e = blackhole.unwrap_key(&w).await.expect_err("unreachable");
    assert!(e.is_transient(), "{e}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_disabled_deleted_and_the_services_own_credential() {
    let s = ContractServer::start();
    let admin = AzureKeyVaultAdmin::new(config(&s, OWNER)).expect("admin");
    let (p, w) = fixture(&s, RetryPolicy::none()).await;

    // No role assignment at all: 403 → Forbidden (definitive), with Key Vault's text.
    let stranger = AzureKeyVaultProvider::new(config(&s, &unique("stranger"))).expect("provider");
    let e = stranger.unwrap_key(&w).await.expect_err("forbidden");
    assert_eq!(e.kind(), K::Forbidden, "{e}");
    assert!(e.is_definitive());
    assert!(
        e.message().contains("HTTP 403 Forbidden/AccessDenied"),
        "{e}"
    );
    assert!(
        e.message()
            .contains("does not have keys unwrapKey permission"),
        "{e}"
    );

    // Disabled version: 403 KeyDisabled; the properties say enabled = false.
    admin
        .set_enabled(&w.key_name, &w.key_version, false)
        .await
        .expect("disable");
    let e = p.unwrap_key(&w).await.expect_err("disabled");
    assert_eq!(e.kind(), K::KeyDisabled, "{e}");
    let e = p
        .key_properties(&w.key_name, None)
        .await
        .expect_err("no enabled version");
    assert_eq!(e.kind(), K::KeyDisabled, "{e}");
    let pinned = p
        .key_properties(&w.key_name, Some(&w.key_version))
        .await
        .expect("a disabled version is still readable");
    assert!(!pinned.enabled);
    admin
        .set_enabled(&w.key_name, &w.key_version, true)
        .await
        .expect("enable");

    // Soft-deleted: Key Vault says 404 KeyNotFound; the recycle bin makes it KeyDeleted.
    admin.delete_key(&w.key_name).await.expect("delete");
    let e = p.unwrap_key(&w).await.expect_err("deleted");
    assert_eq!(e.kind(), K::KeyDeleted, "{e}");
    assert!(e.message().contains("soft-deleted"), "{e}");
    let e = admin
        .create_key(&w.key_name, KeySpec::Rsa(2048))
        .await
        .expect_err("name held by the recycle bin");
    assert_eq!(e.kind(), K::Conflict, "{e}");
    admin.purge_key(&w.key_name).await.expect("purge");
    let e = p.unwrap_key(&w).await.expect_err("purged");
    assert_eq!(e.kind(), K::KeyNotFound, "{e}");

    // Purge protection: the purge is refused as a conflict, the key stays deleted.
    let protected = unique("protected");
    admin
        .create_key(&protected, KeySpec::Rsa(2048))
        .await
        .expect("create");
    s.state().purge_protection = true;
    admin.delete_key(&protected).await.expect("delete");
    let e = admin.purge_key(&protected).await.expect_err("protected");
    assert_eq!(e.kind(), K::Conflict, "{e}");
    admin.recover_key(&protected).await.expect("recover");
    s.state().purge_protection = false;

    // The service's own credential fails (the app registration's secret is revoked): the
    // token endpoint refuses, which is transient for the tenant — never Forbidden.
    let app = unique("broken-app");
    s.set_access(
        &app,
        Some(Perms {
            get: true,
            wrap: true,
            unwrap: true,
        }),
    );
    s.state().disabled_apps.insert(app.clone());
    let broken =
        AzureKeyVaultProvider::new(config(&s, &app).retry(RetryPolicy::none())).expect("provider");
    let e = broken
        .key_properties(&protected, None)
        .await
        .expect_err("no token");
    assert_eq!(e.kind(), K::Unavailable, "{e}");
    assert!(e.message().contains("credential"), "{e}");
    assert!(!e.message().contains(&secret_of(&app)), "{e}");

    // EC keys exist but do not wrap: WrongKeyType (from the key's kty, not Key Vault's text).
    let ec = unique("ec");
    admin
        .create_key(&ec, KeySpec::EcP256)
        .await
        .expect("create ec");
    let e = p
        .wrap_key(&ec, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect_err("EC");
    assert_eq!(e.kind(), K::WrongKeyType, "{e}");
}

/// The same world as the Transit tests: an account manager whose directory knows the vault.
struct World {
    vault: Arc<ContractVault>,
    host: String,
    clock: Arc<ManualClock>,
    manager: AccountManager,
}

async fn world() -> World {
    let server = Arc::new(ContractServer::start());
    let vault = Arc::new(ContractVault::new(server));
    let host = vault
        .inner
        .owner_provider()
        .expect("provider")
        .vault_host()
        .to_owned();
    let directory = Arc::new(VaultDirectory::new());
    directory.add_vault(&host, vault.clone());
    let clock = Arc::new(ManualClock::default());
    let service = Identity::new("service");
    let platform = InMemoryVault::seeded(
        VaultProperties::new("platform.internal", "local", "operator"),
        clock.clone(),
        [1; 32],
    );
    platform
        .create_key("platform-kek", KeySpec::Aes256)
        .await
        .expect("platform key");
    platform
        .set_access(&service, Permissions::CMK)
        .await
        .expect("grant");
    let manager = AccountManager::builder(
        PlatformKey::new(
            Arc::new(platform.provider(&service)),
            "platform-kek",
            WrapAlgorithm::A256Kw,
        ),
        directory,
    )
    .clock(clock.clone())
    .build();
    World {
        vault,
        host,
        clock,
        manager,
    }
}

fn policy() -> Policy {
    Policy::builder("azure")
        .require_vault_protection(true, false)
        .cache_max_age(Duration::from_secs(300))
        .build()
}

#[track_caller]
fn assert_inaccessible<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    match r {
        Err(e @ Error::KeyInaccessible { .. }) => assert_eq!(e.http_status(), 403, "{what}: {e}"),
        other => panic!("{what}: expected KeyInaccessible, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_on_a_key_vault_key_goes_through_create_rotate_revoke_restore() {
    let w = world().await;
    let key = unique("cmk");
    let v1 = w
        .vault
        .create_key(&key, KeySpec::Rsa(2048))
        .await
        .expect("create");
    let identity = Identity::new(unique("account-identity"));
    w.vault
        .set_access(&identity, Permissions::CMK)
        .await
        .expect("grant");

    // A policy that requires purge protection refuses this vault (declared off): nothing stored.
    let strict = AccountId::new("strict").expect("id");
    let kid = KeyId::new(&w.host, &key, None).expect("key id");
    let e = w
        .manager
        .create_account(
            NewAccount::new(strict.clone(), "", "", Policy::builder("strict").build())
                .key_source(KeySource::customer(kid.clone(), identity.clone())),
        )
        .await
        .expect_err("purge protection required");
    assert!(
        matches!(
            e,
            Error::Policy {
                violation: PolicyViolation::PurgeProtectionRequired,
                ..
            }
        ),
        "{e:?}"
    );

    // Create: wrapped under the key's only version.
    let id = AccountId::new("tenant-a").expect("id");
    let rec = w
        .manager
        .create_account(
            NewAccount::new(id.clone(), "", "", policy())
                .key_source(KeySource::customer(kid.clone(), identity.clone())),
        )
        .await
        .expect("create account");
    assert_eq!(rec.state.kind(), StateKind::Active);
    let kv1 = KeyId::new(&w.host, &key, Some(&v1.version)).expect("v1");
    assert_eq!(rec.current_customer_key(), Some(kv1.clone()));
    let wrapped = rec.account_key.as_ref().expect("account key");
    assert_eq!(wrapped.wrapped.algorithm, WrapAlgorithm::RsaOaep256);
    assert_eq!(wrapped.wrapped.ciphertext.len(), 256, "an RSA-2048 block");
    let blob = DataClass::new("blob");
    let o = w
        .manager
        .encrypt(&id, &blob, b"o", b"before rotation")
        .await
        .expect("encrypt");

    // Rotate: a new version in the vault; refresh re-wraps the account key under it.
    let v2 = w.vault.rotate_key(&key).await.expect("rotate");
    assert_ne!(v2.version, v1.version);
    let rec = w.manager.refresh(&id).await.expect("refresh");
    let kv2 = KeyId::new(&w.host, &key, Some(&v2.version)).expect("v2");
    assert_eq!(rec.current_customer_key(), Some(kv2.clone()));
    assert_eq!(
        w.manager.accounts_using(&kv2).await.expect("using"),
        std::slice::from_ref(&id)
    );
    w.clock.advance(Duration::from_secs(301));
    assert_eq!(
        w.manager
            .decrypt(&id, b"o", &o)
            .await
            .expect("decrypt after rotation"),
        b"before rotation"
    );

    // Revoke: the tenant disables the key (403 KeyDisabled from Key Vault) → KeyInaccessible.
    for v in [&v1.version, &v2.version] {
        w.vault.set_enabled(&key, v, false).await.expect("disable");
    }
    assert_inaccessible(w.manager.probe(&id).await, "check");
    assert_inaccessible(w.manager.decrypt(&id, b"o", &o).await, "decrypt");
    assert_inaccessible(w.manager.encrypt(&id, &blob, b"n", b"x").await, "encrypt");
    let got = w.manager.account(&id).await.expect("account GET");
    assert_eq!(got.state.kind(), StateKind::KeyInaccessible);

    // Restore: re-enabled → Active again; the old object opens through a fresh vault unwrap.
    for v in [&v1.version, &v2.version] {
        w.vault.set_enabled(&key, v, true).await.expect("enable");
    }
    w.clock.advance(Duration::from_secs(301));
    assert_eq!(
        w.manager.probe(&id).await.expect("check"),
        StateKind::Active
    );
    assert_eq!(
        w.manager
            .decrypt(&id, b"o", &o)
            .await
            .expect("decrypt after restore"),
        b"before rotation"
    );

    // Revoke by removing the identity's access (403 Forbidden) → KeyInaccessible; restore.
    w.vault.remove_identity(&identity).await.expect("revoke");
    w.clock.advance(Duration::from_secs(301));
    assert_inaccessible(w.manager.probe(&id).await, "check after access removal");
    w.vault
        .set_access(&identity, Permissions::CMK)
        .await
        .expect("grant again");
    w.clock.advance(Duration::from_secs(301));
    assert_eq!(
        w.manager.probe(&id).await.expect("check"),
        StateKind::Active
    );
    let n = w
        .manager
        .encrypt(&id, &blob, b"n", b"after restore")
        .await
        .expect("encrypt");
    assert_eq!(
        w.manager.decrypt(&id, b"n", &n).await.expect("decrypt"),
        b"after restore"
    );

    // An outage (503s) never changes the state: Unavailable, still Active.
    w.clock.advance(Duration::from_secs(301));
    w.vault.server.fail_next(50, 503, &[], "");
    match w.manager.decrypt(&id, b"n", &n).await {
        Err(e @ Error::Unavailable { .. }) => assert_eq!(e.http_status(), 503),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    w.vault.server.state().faults.clear();
    assert_eq!(
        w.manager.account(&id).await.expect("account").state.kind(),
        StateKind::Active
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_exchanges_its_federated_token_file() {
    let s = ContractServer::start();
    let name = unique("wi");
    AzureKeyVaultAdmin::new(config(&s, OWNER))
        .expect("admin")
        .create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create");
    let app = unique("workload");
    s.set_access(
        &app,
        Some(Perms {
            get: true,
            wrap: true,
            unwrap: true,
        }),
    );
    let dir = std::env::temp_dir().join(unique("byok-wi"));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("azure-identity-token");
    std::fs::write(&file, azure_support::federated_token_of(&app)).expect("token file");
    let workload = |token_file: std::path::PathBuf| {
        AzureKeyVaultProvider::new(
            pinned(
                &s,
                &s.vault_url,
                AzureCredential::WorkloadIdentity {
                    tenant_id: Some(TENANT.to_owned()),
                    client_id: Some(app.clone()),
                    token_file: Some(token_file),
                },
            )
            .retry(RetryPolicy::none()),
        )
        .expect("provider")
    };
    let p = workload(file.clone());
    let w = p
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect("wrap with a workload identity token");
    assert_eq!(
        p.unwrap_key(&w).await.expect("unwrap").expose_secret(),
        SECRET
    );
    // A federated token the directory does not accept: the service's credential fails,
    // transiently, never as the tenant's Forbidden.
    let bad = dir.join("stale-token");
    std::fs::write(&bad, "stale").expect("token file");
    let e = workload(bad)
        .unwrap_key(&w)
        .await
        .expect_err("refused assertion");
    assert_eq!(e.kind(), K::Unavailable, "{e}");
    assert!(e.message().contains("credential"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Set by the parent test for its child process: the App Service managed identity variables
/// are process-wide, so they are set on a child only, never on this process.
const MI_CHILD: &str = "BYOK_AZURE_MI_CHILD";

#[test]
fn managed_identities_get_their_token_from_the_identity_endpoint() {
    let s = ContractServer::start();
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let name = unique("mi");
    let uami = unique("user-assigned");
    rt.block_on(async {
        AzureKeyVaultAdmin::new(config(&s, OWNER))
            .expect("admin")
            .create_key(&name, KeySpec::Rsa(2048))
            .await
            .expect("create");
    });
    let all = Some(Perms {
        get: true,
        wrap: true,
        unwrap: true,
    });
    s.set_access(&uami, all);
    s.set_access(azure_support::SYSTEM_ASSIGNED, all);
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "managed_identity_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            MI_CHILD,
            format!("{} {} {name} {uami}", s.vault_url, s.addr),
        )
        .env("BYOK_AZURE_MI_CA", &s.ca_pem)
        .env("IDENTITY_ENDPOINT", &s.msi_endpoint)
        .env("IDENTITY_HEADER", azure_support::MSI_SECRET)
        .output()
        .expect("child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("managed identity child ok"),
        "the child did not run: {text}"
    );
    // The tokens came from the managed identity endpoint, for each identity.
    let holders = s.token_holders();
    assert!(holders.contains(&uami), "{holders:?}");
    assert!(
        holders.contains(azure_support::SYSTEM_ASSIGNED),
        "{holders:?}"
    );
}

/// Runs only in the child process of
/// [`managed_identities_get_their_token_from_the_identity_endpoint`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn managed_identity_child() {
    let Ok(spec) = std::env::var(MI_CHILD) else {
        return;
    };
    let mut parts = spec.split(' ');
    let (Some(vault_url), Some(addr), Some(name), Some(uami)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        panic!("bad child spec {spec:?}");
    };
    let addr: SocketAddr = addr.parse().expect("addr");
    let ca = std::env::var("BYOK_AZURE_MI_CA").expect("CA");
    let with = |c: AzureCredential| {
        AzureKeyVaultProvider::new(
            AzureKeyVaultConfig::new(vault_url, c)
                .ca_pem(&ca)
                .only_given_ca()
                .resolve(VAULT_HOST, addr)
                .retry(RetryPolicy::none()),
        )
        .expect("provider")
    };
    // The account's user-assigned identity (the seeds' "user-assigned managed identity").
    let user = with(AzureCredential::user_assigned(
        byok::provider::azure::ManagedIdentityId::ClientId(uami.to_owned()),
    ));
    let w = user
        .wrap_key(name, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect("wrap as the user-assigned identity");
    assert_eq!(
        user.unwrap_key(&w).await.expect("unwrap").expose_secret(),
        SECRET
    );
    // The host's system-assigned identity.
    let system = with(AzureCredential::system_assigned());
    assert_eq!(
        system.unwrap_key(&w).await.expect("unwrap").expose_secret(),
        SECRET
    );
    // Another user-assigned identity gets a token but has no access: Forbidden.
    let other = with(AzureCredential::user_assigned(
        byok::provider::azure::ManagedIdentityId::ClientId(unique("not-granted")),
    ));
    assert_eq!(
        other.unwrap_key(&w).await.expect_err("no access").kind(),
        K::Forbidden
    );
    println!("managed identity child ok");
}
