//! The AWS KMS provider against a real LocalStack KMS (started by the tests themselves, see
//! `aws_support`): the conformance suite, accounts on an alias through create → rotate →
//! revoke → restore, a key-ARN account that stays pinned, the same-vault rule across regions,
//! an outage that leaves accounts active, transport failures (stopped endpoint, unknown CA),
//! retries against a canned server, and credentials from the environment.

mod aws_support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_support::{ACCOUNT, REGION, Server, shared};
use byok::account::{DataClass, NewAccount, PlatformKey, StateKind};
use byok::audit::{AuditAction, MemoryAuditSink};
use byok::provider::ProviderFactory;
use byok::provider::aws::aws_credential_types::Credentials;
use byok::provider::aws::{AwsKmsAdmin, AwsKmsConfig, AwsKmsProvider};
use byok::provider::memory::InMemoryVault;
use byok::provider::{
    AdminCapabilities, Identity, KeyProperties, KeySpec, Permissions, RetryPolicy, VaultDirectory,
    VaultProperties, WrapAlgorithm,
};
use byok::testing::ManualClock;
use byok::testing::provider_conformance::{self as conformance, Outcome};
use byok::{
    AccountId, AccountManager, Error, KeyId, KeyIdKind, KeyProvider, KeySource, Policy,
    PolicyViolation, ProviderError, ProviderErrorKind as K, VaultAdmin,
};

fn config(s: &Server) -> AwsKmsConfig {
    AwsKmsConfig::new(
        &s.vault(),
        Credentials::new("test", "test", None, None, "byok-tests"),
    )
    .expect("config")
    .endpoint(&s.endpoint)
    .ca_pem(&s.ca_pem)
    .deletion_window_days(7)
}

fn admin(s: &Server) -> AwsKmsAdmin {
    AwsKmsAdmin::new(config(s)).expect("admin")
}

/// An alias name unique to this process and test.
fn unique(label: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}-{label}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The AWS admin, with RSA-OAEP (SHA-1) declared unsupported: LocalStack decrypts every RSA
/// block with OAEP-SHA-256 whatever `EncryptionAlgorithm` says (docs/AWS_KMS.md, "LocalStack
/// differences"), so a standard SHA-1 block made with the public key cannot unwrap there.
/// Real AWS KMS supports it; our side of it is unit-tested (`src/provider/aws/tests.rs`).
#[derive(Debug)]
struct LocalStackAdmin(AwsKmsAdmin);

#[async_trait]
impl VaultAdmin for LocalStackAdmin {
    fn capabilities(&self) -> AdminCapabilities {
        let mut c = self.0.capabilities();
        assert!(c.rsa_oaep_sha1, "the provider itself supports RSA-OAEP");
        c.rsa_oaep_sha1 = false;
        c
    }
    async fn create_key(&self, n: &str, s: KeySpec) -> Result<KeyProperties, ProviderError> {
        self.0.create_key(n, s).await
    }
    async fn import_rsa_pem(&self, n: &str, p: &str) -> Result<KeyProperties, ProviderError> {
        self.0.import_rsa_pem(n, p).await
    }
    async fn rotate_key(&self, n: &str) -> Result<KeyProperties, ProviderError> {
        self.0.rotate_key(n).await
    }
    async fn list_versions(&self, n: &str) -> Result<Vec<KeyProperties>, ProviderError> {
        self.0.list_versions(n).await
    }
    async fn set_enabled(&self, n: &str, v: &str, e: bool) -> Result<(), ProviderError> {
        self.0.set_enabled(n, v, e).await
    }
    async fn delete_key(&self, n: &str) -> Result<(), ProviderError> {
        self.0.delete_key(n).await
    }
    async fn recover_key(&self, n: &str) -> Result<(), ProviderError> {
        self.0.recover_key(n).await
    }
    async fn purge_key(&self, n: &str) -> Result<(), ProviderError> {
        self.0.purge_key(n).await
    }
    async fn set_access(&self, i: &Identity, p: Permissions) -> Result<(), ProviderError> {
        self.0.set_access(i, p).await
    }
    async fn remove_identity(&self, i: &Identity) -> Result<(), ProviderError> {
        self.0.remove_identity(i).await
    }
}

#[async_trait]
impl ProviderFactory for LocalStackAdmin {
    async fn provider_for(&self, i: &Identity) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        self.0.provider_for(i).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_localstack_kms() {
    let admin = LocalStackAdmin(admin(shared()));
    let report = conformance::run(&admin).await;
    report.assert_passed();
    // Exactly the declared gaps are skipped: IAM/key policies (outside byok; not enforced by
    // LocalStack), nothing else.
    let skipped: Vec<_> = report
        .scenarios
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Skipped(_)))
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(skipped, ["missing_permission", "revoked_identity"]);
    for name in [
        "disabled_version",
        "deleted_and_recovered",
        "purged_key",
        "corrupted_blobs",
        "round_trip_every_algorithm_and_size",
    ] {
        assert_eq!(report.outcome(name), Some(&Outcome::Passed), "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_oaep_sha1_on_localstack_is_the_documented_gap() {
    // Pins the emulator difference the conformance run declares: if LocalStack starts to
    // decrypt standard OAEP-SHA-1 blocks, this fails and the declaration must go.
    let a = admin(shared());
    let name = unique("sha1");
    a.create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create");
    let p = a.provider();
    let w = p
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep, &[7; 32])
        .await
        .expect("local SHA-1 wrap");
    assert_eq!(w.ciphertext.len(), 256);
    let e = p.unwrap_key(&w).await.expect_err("LocalStack cannot");
    assert_eq!(e.kind(), K::UnwrapFailed, "{e}");
    // And a SHA-256 block unwraps even when SHA-1 is named (real KMS refuses that).
    let mut w256 = p
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &[8; 32])
        .await
        .expect("wrap");
    w256.algorithm = WrapAlgorithm::RsaOaep;
    assert_eq!(
        p.unwrap_key(&w256)
            .await
            .expect("LocalStack ignores the hash")
            .expose_secret(),
        [8; 32]
    );
}

struct Accounts {
    admin: Arc<AwsKmsAdmin>,
    directory: Arc<VaultDirectory>,
    vault: String,
    clock: Arc<ManualClock>,
    audit: Arc<MemoryAuditSink>,
    manager: AccountManager,
}

fn aws_policy() -> Policy {
    Policy::builder("aws")
        .require_same_region(true)
        .key_change_same_vault_only(true)
        .cache_max_age(Duration::from_secs(300))
        .build()
}

impl Accounts {
    async fn new(s: &Server) -> Accounts {
        let admin = Arc::new(admin(s));
        let vault = s.vault();
        let directory = Arc::new(VaultDirectory::new());
        directory.add_vault(&vault, admin.clone());
        let clock = Arc::new(ManualClock::default());
        let service = Identity::new("service");
        let platform = InMemoryVault::seeded(
            VaultProperties::new("platform.internal", REGION, "operator"),
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
        let audit = Arc::new(MemoryAuditSink::new());
        let manager = AccountManager::builder(
            PlatformKey::new(
                Arc::new(platform.provider(&service)),
                "platform-kek",
                WrapAlgorithm::A256Kw,
            ),
            directory.clone(),
        )
        .audit(audit.clone())
        .clock(clock.clone())
        .build();
        Accounts {
            admin,
            directory,
            vault,
            clock,
            audit,
            manager,
        }
    }

    fn new_account(&self, id: &AccountId, key: KeyId) -> NewAccount {
        NewAccount::new(id.clone(), REGION, ACCOUNT, aws_policy())
            .key_source(KeySource::customer(key, Identity::new("service")))
    }

    async fn state(&self, id: &AccountId) -> StateKind {
        self.manager.account(id).await.expect("GET").state.kind()
    }

    fn state_changes(&self, id: &AccountId) -> Vec<String> {
        self.audit
            .events()
            .into_iter()
            .filter(|e| e.account == id.as_str())
            .filter_map(|e| match e.action {
                AuditAction::StateChange { from, to } => Some(format!("{from}->{to}")),
                _ => None,
            })
            .collect()
    }
}

fn blob() -> DataClass {
    DataClass::new("blob")
}

#[track_caller]
fn assert_inaccessible<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    match r {
        Err(e @ Error::KeyInaccessible { .. }) => assert_eq!(e.http_status(), 403, "{what}: {e}"),
        other => panic!("{what}: expected KeyInaccessible, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_on_an_alias_rotates_revokes_and_restores() {
    let w = Accounts::new(shared()).await;
    let alias = unique("cmk");
    let v1 = w
        .admin
        .create_key(&alias, KeySpec::Rsa(3072))
        .await
        .expect("create key")
        .version;
    // What a tenant pastes: the alias ARN.
    let key: KeyId = format!("{}:alias/{alias}", w.vault)
        .parse()
        .expect("alias ARN");
    assert_eq!(key.kind(), KeyIdKind::AwsAliasArn);

    // Create: wrapped under the key the alias points at.
    let id = AccountId::new("aws-e2e").expect("id");
    let rec = w
        .manager
        .create_account(w.new_account(&id, key.clone()))
        .await
        .expect("create account");
    assert_eq!(rec.state.kind(), StateKind::Active);
    let pinned1 = key.with_version(&v1).expect("v1");
    assert_eq!(rec.current_customer_key(), Some(pinned1.clone()));
    assert_eq!(pinned1.to_string(), format!("{key}@{v1}"));
    let wrapped = rec.account_key.as_ref().expect("account key");
    assert_eq!(wrapped.vault, w.vault);
    assert_eq!(wrapped.wrapped.ciphertext.len(), 384, "RSA-3072 block");
    assert_eq!(
        w.manager.accounts_using(&pinned1).await.expect("using"),
        std::slice::from_ref(&id)
    );
    let sealed = w
        .manager
        .encrypt(&id, &blob(), b"o1", b"before rotation")
        .await
        .expect("encrypt");

    // Rotate: a new key behind the alias; refresh follows it and re-wraps.
    let v2 = w.admin.rotate_key(&alias).await.expect("rotate").version;
    assert_ne!(v1, v2);
    let rec = w.manager.refresh(&id).await.expect("refresh");
    let pinned2 = key.with_version(&v2).expect("v2");
    assert_eq!(rec.current_customer_key(), Some(pinned2.clone()));
    assert!(rec.last_rotated.is_some());
    assert!(
        w.manager
            .accounts_using(&pinned1)
            .await
            .expect("using")
            .is_empty()
    );
    let again = w.manager.refresh(&id).await.expect("refresh again");
    assert_eq!(again.last_rotated, rec.last_rotated, "nothing newer");
    // Past the cache: the old object opens through a KMS Decrypt under the new key.
    w.clock.advance(Duration::from_secs(301));
    let before = w.audit.events().len();
    assert_eq!(
        w.manager
            .decrypt(&id, b"o1", &sealed)
            .await
            .expect("decrypt"),
        b"before rotation"
    );
    let unwraps: Vec<_> = w.audit.events()[before..]
        .iter()
        .filter(|e| matches!(e.action, AuditAction::Unwrap))
        .map(|e| e.key.clone().unwrap_or_default())
        .collect();
    assert_eq!(
        unwraps,
        [pinned2.to_string()],
        "one unwrap, under the new key"
    );
    // The old key no longer guards the account: disabling it changes nothing.
    w.admin
        .set_enabled(&alias, &v1, false)
        .await
        .expect("disable v1");
    assert_eq!(
        w.manager.probe(&id).await.expect("check"),
        StateKind::Active
    );

    // Revoke by disabling the current key: 403 KeyInaccessible, even from the cache.
    w.admin
        .set_enabled(&alias, &v2, false)
        .await
        .expect("disable v2");
    match w.manager.probe(&id).await {
        Err(e @ Error::KeyInaccessible { .. }) => assert_eq!(e.http_status(), 403, "{e}"),
        other => panic!("expected KeyInaccessible, got {other:?}"),
    }
    assert_eq!(w.state(&id).await, StateKind::KeyInaccessible);
    assert_inaccessible(w.manager.decrypt(&id, b"o1", &sealed).await, "decrypt");
    assert_inaccessible(
        w.manager.encrypt(&id, &blob(), b"o2", b"x").await,
        "encrypt",
    );

    // Restore: enable the key again.
    w.admin
        .set_enabled(&alias, &v2, true)
        .await
        .expect("enable");
    w.clock.advance(Duration::from_secs(301));
    assert_eq!(
        w.manager.probe(&id).await.expect("check"),
        StateKind::Active
    );
    assert_eq!(
        w.manager
            .decrypt(&id, b"o1", &sealed)
            .await
            .expect("decrypt"),
        b"before rotation"
    );

    // Revoke by scheduling deletion (the 7-day minimum window), then cancel it.
    w.admin.delete_key(&alias).await.expect("schedule deletion");
    match w.manager.probe(&id).await {
        Err(e @ Error::KeyInaccessible { .. }) => {
            assert!(e.to_string().contains("pending deletion"), "{e}");
        }
        other => panic!("expected KeyInaccessible, got {other:?}"),
    }
    assert_inaccessible(w.manager.decrypt(&id, b"o1", &sealed).await, "decrypt");
    w.admin.recover_key(&alias).await.expect("cancel deletion");
    w.clock.advance(Duration::from_secs(301));
    assert_eq!(
        w.manager.probe(&id).await.expect("check"),
        StateKind::Active
    );
    assert_eq!(
        w.manager
            .decrypt(&id, b"o1", &sealed)
            .await
            .expect("decrypt"),
        b"before rotation"
    );
    assert_eq!(
        w.state_changes(&id),
        [
            "Active->KeyInaccessible",
            "KeyInaccessible->Active",
            "Active->KeyInaccessible",
            "KeyInaccessible->Active"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_arn_account_stays_pinned_and_keys_stay_in_one_account_and_region() {
    let w = Accounts::new(shared()).await;
    let alias = unique("pinned");
    let v1 = w
        .admin
        .create_key(&alias, KeySpec::Rsa(2048))
        .await
        .expect("create")
        .version;
    let key: KeyId = format!("{}:key/{v1}", w.vault).parse().expect("key ARN");
    assert_eq!(key.version(), Some(v1.as_str()));
    let id = AccountId::new("aws-pinned").expect("id");
    let rec = w
        .manager
        .create_account(w.new_account(&id, key.clone()))
        .await
        .expect("create");
    assert_eq!(rec.current_customer_key(), Some(key.clone()));
    assert_eq!(
        w.manager.accounts_using(&key).await.expect("using"),
        std::slice::from_ref(&id)
    );
    // A new key behind the alias does not move an account that named the key itself.
    w.admin.rotate_key(&alias).await.expect("rotate");
    let rec = w.manager.refresh(&id).await.expect("refresh");
    assert_eq!(rec.current_customer_key(), Some(key.clone()));
    assert!(rec.last_rotated.is_none());

    // The same-vault rule: another region (or account) is another vault, refused unchanged.
    let elsewhere: KeyId = format!("arn:aws:kms:eu-west-1:{ACCOUNT}:key/{v1}")
        .parse()
        .expect("other region");
    match w
        .manager
        .set_customer_key(&id, elsewhere, Identity::new("service"))
        .await
    {
        Err(Error::Policy {
            violation: PolicyViolation::DifferentVault { current, requested },
            ..
        }) => {
            assert_eq!(current, w.vault);
            assert_eq!(requested, format!("arn:aws:kms:eu-west-1:{ACCOUNT}"));
        }
        other => panic!("expected DifferentVault, got {other:?}"),
    }
    // Moving to the alias in the same account and region is allowed.
    let alias_id: KeyId = format!("{}:alias/{alias}", w.vault).parse().expect("alias");
    let rec = w
        .manager
        .set_customer_key(&id, alias_id.clone(), Identity::new("service"))
        .await
        .expect("same vault");
    assert_eq!(
        rec.current_customer_key().map(|k| k.versionless()),
        Some(alias_id)
    );

    // A key that does not exist is a definitive failure at creation: nothing stored.
    let missing: KeyId = format!("{}:key/00000000-0000-4000-8000-000000000000", w.vault)
        .parse()
        .expect("missing");
    let gone = AccountId::new("aws-missing").expect("id");
    let e = w
        .manager
        .create_account(w.new_account(&gone, missing))
        .await
        .expect_err("no such key");
    assert_eq!(e.provider_kind(), Some(K::KeyNotFound), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_endpoint_is_transient_with_bounded_retries_and_an_unknown_ca_fails() {
    let s = shared();
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let p = AwsKmsProvider::new(
        config(s)
            .endpoint(&format!("https://127.0.0.1:{port}"))
            .retry(RetryPolicy::new(
                2,
                Duration::from_millis(50),
                Duration::from_millis(200),
            )),
    )
    .expect("provider");
    let t = Instant::now();
    let e = p
        .key_properties("alias/x", None)
        .await
        .expect_err("refused");
    assert_eq!(e.kind(), K::Unavailable, "{e}");
    assert!(e.is_transient());
    assert!(e.message().contains("after 3 attempts"), "{e}");
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());

    // The server's certificate is not trusted without its CA: a transport failure.
    let untrusted = AwsKmsConfig::new(
        &s.vault(),
        Credentials::new("test", "test", None, None, "byok-tests"),
    )
    .expect("config")
    .endpoint(&s.endpoint)
    .retry(RetryPolicy::none());
    let e = AwsKmsProvider::new(untrusted)
        .expect("provider")
        .key_properties("alias/x", None)
        .await
        .expect_err("unknown CA");
    assert_eq!(e.kind(), K::Unavailable, "{e}");
    assert!(
        e.message().to_ascii_lowercase().contains("certificate"),
        "{e}"
    );

    // Plain HTTP is refused unless the configuration opts in.
    let plain = config(s).endpoint("http://127.0.0.1:9");
    assert_eq!(
        AwsKmsProvider::new(plain).expect_err("http").kind(),
        K::InvalidRequest
    );
}

/// A loopback HTTP/1.1 server that answers every request with `answers[i]` (status, extra
/// headers, body) in turn, repeating the last one, and counts the requests.
fn canned(answers: Vec<(u16, &'static str, &'static str)>) -> (String, Arc<AtomicUsize>) {
    use std::io::{Read as _, Write as _};
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = format!("http://{}", l.local_addr().expect("addr"));
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let mut buf = [0u8; 16384];
            let _ = c.read(&mut buf);
            let i = h.fetch_add(1, Ordering::SeqCst).min(answers.len() - 1);
            let (status, headers, body) = answers[i];
            let _ = write!(
                c,
                "HTTP/1.1 {status} X\r\nContent-Type: application/x-amz-json-1.1\r\n{headers}\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, hits)
}

fn canned_provider(addr: &str, retry: RetryPolicy) -> AwsKmsProvider {
    AwsKmsProvider::new(
        AwsKmsConfig::new(
            &format!("arn:aws:kms:{REGION}:{ACCOUNT}"),
            Credentials::new("test", "test", None, None, "byok-tests"),
        )
        .expect("config")
        .endpoint(addr)
        .allow_insecure_http(true)
        .retry(retry),
    )
    .expect("provider")
}

const THROTTLED: &str = r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#;
const DESCRIBED: &str = r#"{"KeyMetadata":{"KeyId":"1234abcd-12ab-34cd-56ef-1234567890ab","KeyState":"Disabled","Enabled":false,"KeySpec":"ECC_NIST_P256","KeyUsage":"SIGN_VERIFY","CreationDate":1571767572.317}}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_transient_answers_are_retried_within_bounds_and_retry_after_is_honoured() {
    let retry = RetryPolicy::new(3, Duration::from_millis(10), Duration::from_secs(2));
    // Throttled twice (the second with Retry-After: 1), then an answer: three requests.
    let (addr, hits) = canned(vec![
        (400, "", THROTTLED),
        (400, "Retry-After: 1\r\n", THROTTLED),
        (200, "", DESCRIBED),
    ]);
    let t = Instant::now();
    let props = canned_provider(&addr, retry)
        .key_properties("alias/x", None)
        .await
        .expect("after two throttled answers");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    assert!(!props.enabled);
    assert!(t.elapsed() >= Duration::from_secs(1), "Retry-After ignored");

    // Always throttled: 1 + 3 retries, then Throttled (transient).
    let (addr, hits) = canned(vec![(400, "", THROTTLED)]);
    let e = canned_provider(&addr, retry)
        .key_properties("alias/x", None)
        .await
        .expect_err("throttled");
    assert_eq!(e.kind(), K::Throttled);
    assert_eq!(hits.load(Ordering::SeqCst), 4);
    assert!(e.message().contains("after 4 attempts"), "{e}");

    // A definitive answer is never retried.
    let (addr, hits) = canned(vec![(
        400,
        "",
        r#"{"__type":"NotFoundException","message":"Alias is not found."}"#,
    )]);
    let e = canned_provider(&addr, retry)
        .key_properties("alias/x", None)
        .await
        .expect_err("not found");
    assert_eq!(e.kind(), K::KeyNotFound);
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // The error type may come in the x-amzn-ErrorType header only (an empty body).
    let (addr, _) = canned(vec![(
        400,
        "x-amzn-ErrorType: DisabledException:http://internal.amazon.com/coral/com.amazonaws.kms/\r\n",
        "",
    )]);
    let e = canned_provider(&addr, retry)
        .key_properties("alias/x", None)
        .await
        .expect_err("disabled");
    assert_eq!(e.kind(), K::KeyDisabled, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_stays_active_through_a_kms_outage() {
    let w = Accounts::new(shared()).await;
    let alias = unique("outage");
    w.admin
        .create_key(&alias, KeySpec::Rsa(2048))
        .await
        .expect("create key");
    let key: KeyId = format!("{}:alias/{alias}", w.vault).parse().expect("alias");
    let id = AccountId::new("aws-outage").expect("id");
    w.manager
        .create_account(w.new_account(&id, key))
        .await
        .expect("create");
    let sealed = w
        .manager
        .encrypt(&id, &blob(), b"o", b"data")
        .await
        .expect("encrypt");
    // KMS unreachable for this vault and identity (a port nothing listens on).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port");
    let dead = canned_provider(&format!("http://127.0.0.1:{port}"), RetryPolicy::none());
    w.directory
        .override_provider(&w.vault, &Identity::new("service"), Arc::new(dead));
    w.clock.advance(Duration::from_secs(301));
    match w.manager.decrypt(&id, b"o", &sealed).await {
        Err(e @ Error::Unavailable { .. }) => assert_eq!(e.http_status(), 503, "{e}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(matches!(
        w.manager.probe(&id).await,
        Err(Error::Unavailable { .. })
    ));
    assert_eq!(w.state(&id).await, StateKind::Active);
    assert!(w.state_changes(&id).is_empty());
}

const ENV_CHILD: &str = "BYOK_AWS_ENV_CHILD";

/// `EnvironmentCredentials` read the standard variables; without them the failure is the
/// service's (transient), not the tenant's. Run in child processes so the variables are set
/// without touching this process's environment.
#[test]
fn environment_credentials_are_read_from_the_standard_variables() {
    let s = shared();
    let run = |with: bool| {
        let mut cmd = std::process::Command::new(std::env::current_exe().expect("test binary"));
        cmd.args([
            "--exact",
            "environment_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            ENV_CHILD,
            format!("{} {}", s.endpoint, s.state_dir.display()),
        )
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN");
        if with {
            cmd.env("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
                .env(
                    "AWS_SECRET_ACCESS_KEY",
                    "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
                )
                .env("AWS_SESSION_TOKEN", "token");
        }
        let out = cmd.output().expect("child");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        text
    };
    assert!(
        run(true).contains("env child: loaded"),
        "the child did not run"
    );
    let without = run(false);
    assert!(without.contains("env child: not loaded"), "{without}");
    assert!(!without.contains("wJalrXUtnFEMI"), "{without}");
}

/// Runs only in the child processes of [`environment_credentials_are_read_from_the_standard_variables`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_child() {
    let Ok(spec) = std::env::var(ENV_CHILD) else {
        return;
    };
    let (endpoint, state_dir) = spec.split_once(' ').expect("spec");
    let ca = std::fs::read_to_string(format!("{state_dir}/tls/ca.pem")).expect("ca");
    let p = AwsKmsProvider::new(
        AwsKmsConfig::new(
            &format!("arn:aws:kms:{REGION}:{ACCOUNT}"),
            byok::provider::aws::EnvironmentCredentials::new(),
        )
        .expect("config")
        .endpoint(endpoint)
        .ca_pem(&ca)
        .retry(RetryPolicy::none()),
    )
    .expect("provider");
    match p.key_properties("alias/never-created", None).await {
        // Signed and sent: KMS answered about the key.
        Err(e) if e.kind() == K::KeyNotFound => println!("env child: loaded"),
        Err(e) if e.kind() == K::Unavailable && e.message().contains("credentials") => {
            assert!(e.is_transient());
            println!("env child: not loaded ({e})");
        }
        other => panic!("unexpected {other:?}"),
    }
}
