//! The Transit provider against a real OpenBao dev server (started by the tests themselves,
//! see `transit_support`): the conformance suite, revocation paths, transient failures with
//! bounded retries, local wraps unwrapped by the server, TLS with the dev CA, and accounts
//! whose customer key lives in Transit (end to end, rotation, outage, revocation, restore).

mod transit_support;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use byok::account::{DataClass, NewAccount, PlatformKey, StateKind};
use byok::audit::{AuditAction, MemoryAuditSink};
use byok::provider::ProviderFactory;
use byok::provider::RetryPolicy;
use byok::provider::memory::InMemoryVault;
use byok::provider::transit::{TransitAdmin, TransitConfig, TransitProvider};
use byok::provider::{
    Identity, KeySpec, OaepHash, Permissions, VaultDirectory, VaultProperties, WrapAlgorithm,
    WrappedKey,
};
use byok::testing::ManualClock;
use byok::testing::provider_conformance::{self as conformance, Outcome};
use byok::{
    AccountId, AccountManager, Error, KeyId, KeyProvider, KeySource, Policy, PolicyViolation,
    ProviderErrorKind as K, SecretString, VaultAdmin,
};
use transit_support::{Server, shared};

const SECRET: [u8; 32] = [0x42; 32];

/// The dev servers are plain HTTP on loopback (except the TLS one): the tests opt in.
fn root_config(s: &Server) -> TransitConfig {
    TransitConfig::new(&s.addr, SecretString::new(s.root_token.clone())).allow_insecure_http(true)
}

fn admin(s: &Server) -> TransitAdmin {
    TransitAdmin::new(root_config(s)).expect("admin")
}

/// A key name unique to this process and test.
fn unique(label: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "t{}-{label}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A raw call with the root token, for what the provider API does not cover.
async fn raw(s: &Server, method: reqwest::Method, path: &str, body: serde_json::Value) -> u16 {
    raw_json(s, method, path, body).await.0
}

/// A raw call with the root token: status and JSON body (`null` when there is none).
async fn raw_json(
    s: &Server,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .request(method, format!("{}/v1/{path}", s.addr))
        .header("X-Vault-Token", &s.root_token)
        .json(&body)
        .send()
        .await
        .expect("raw request");
    let status = resp.status().as_u16();
    let v = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_openbao_transit() {
    let admin = admin(shared());
    let report = conformance::run(&admin).await;
    report.assert_passed();
    let skipped: Vec<_> = report
        .scenarios
        .iter()
        .filter_map(|(n, o)| match o {
            Outcome::Skipped(why) => Some((*n, why.clone())),
            _ => None,
        })
        .collect();
    println!("skipped by declaration: {skipped:?}");
    // Only what Transit cannot express is skipped: disabling an arbitrary version.
    assert_eq!(
        skipped.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
        ["disabled_version"],
        "{report:?}"
    );
}

/// Scoped by policy: another key is `Forbidden` (definitive). The service's own token revoked:
/// not the tenant's doing, so a transient `Unavailable` naming the credential.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_denial_is_forbidden_revoked_service_token_is_transient_and_never_leaks() {
    let s = shared();
    let admin = admin(s);
    let (a, b) = (unique("scoped-a"), unique("scoped-b"));
    admin.create_key(&a, KeySpec::Rsa(2048)).await.expect("a");
    admin.create_key(&b, KeySpec::Rsa(2048)).await.expect("b");
    // A token of our own, scoped to key `a` by the policy the admin writes.
    let who = Identity::new(unique("app"));
    admin
        .set_key_access(&who, &[&a], Permissions::CMK)
        .await
        .expect("policy");
    let policy = TransitAdmin::policy_name(&who);
    let (_, resp) = raw_json(
        s,
        reqwest::Method::POST,
        "auth/token/create",
        serde_json::json!({ "policies": [policy], "ttl": "1h" }),
    )
    .await;
    let token = resp["auth"]["client_token"]
        .as_str()
        .expect("client_token")
        .to_owned();
    let p = TransitProvider::new(root_config(s).with_token(SecretString::new(token.clone())))
        .expect("provider");
    let w = p
        .wrap_key(&a, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect("wrap a");
    assert_eq!(
        p.unwrap_key(&w).await.expect("unwrap").expose_secret(),
        SECRET
    );
    // Scoped to one key: the other one is forbidden.
    let e = p.key_properties(&b, None).await.expect_err("b is not ours");
    assert_eq!(e.kind(), K::Forbidden, "{e}");
    let e = p
        .wrap_key(&b, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect_err("wrap b");
    assert_eq!(e.kind(), K::Forbidden, "{e}");

    assert_eq!(
        raw(
            s,
            reqwest::Method::POST,
            "auth/token/revoke",
            serde_json::json!({ "token": token })
        )
        .await,
        204
    );
    let started = Instant::now();
    for e in [
        p.unwrap_key(&w).await.expect_err("unwrap after revoke"),
        p.key_properties(&a, None)
            .await
            .expect_err("get after revoke"),
        p.wrap_key(&a, None, WrapAlgorithm::RsaOaep256, &SECRET)
            .await
            .expect_err("wrap after revoke"),
    ] {
        assert_eq!(e.kind(), K::Unavailable, "{e}");
        assert!(e.is_transient() && !e.is_definitive());
        assert!(e.message().contains("permission denied"), "{e}");
        assert!(e.message().contains("service's own credential"), "{e}");
        assert!(!e.message().contains(&token), "the token leaked: {e}");
        assert!(!format!("{e:?}").contains(&token));
    }
    // A 403 is not retried: one lookup-self tells whose fault it is.
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(!format!("{p:?}").contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_deleted_key_is_definitive_and_recoverable() {
    let s = shared();
    let admin = admin(s);
    let name = unique("soft");
    admin
        .create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create");
    let who = Identity::new(unique("soft-app"));
    admin
        .set_access(&who, Permissions::CMK)
        .await
        .expect("access");
    let p = admin.provider_for(&who).await.expect("provider");
    let w = p
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect("wrap");
    admin.delete_key(&name).await.expect("soft-delete");
    let e = p.unwrap_key(&w).await.expect_err("unwrap");
    assert_eq!(e.kind(), K::KeyDeleted, "{e}");
    assert!(
        e.is_definitive() && e.message().contains("soft-deleted"),
        "{e}"
    );
    let e = p.key_properties(&name, None).await.expect_err("get");
    assert_eq!(e.kind(), K::KeyDeleted, "{e}");
    let e = p
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect_err("wrap");
    assert_eq!(e.kind(), K::KeyDeleted, "{e}");
    let e = admin.rotate_key(&name).await.expect_err("rotate");
    assert_eq!(e.kind(), K::KeyDeleted, "{e}");
    let e = admin.delete_key(&name).await.expect_err("delete twice");
    assert_eq!(e.kind(), K::KeyDeleted, "{e}");
    admin.recover_key(&name).await.expect("recover");
    assert_eq!(
        p.unwrap_key(&w).await.expect("unwrap").expose_secret(),
        SECRET
    );
    let e = admin
        .recover_key(&name)
        .await
        .expect_err("recover a live key");
    assert_eq!(e.kind(), K::KeyNotFound, "{e}");
    let e = admin.purge_key(&name).await.expect_err("purge a live key");
    assert_eq!(e.kind(), K::KeyNotFound, "{e}");

    // HashiCorp Vault mode (no soft-delete): delete is permanent.
    let hard = TransitAdmin::new(root_config(s).soft_delete(false)).expect("admin");
    assert!(!hard.capabilities().soft_delete);
    let props = hard
        .owner_provider()
        .vault_properties()
        .await
        .expect("props");
    assert!(!props.soft_delete && !props.purge_protection);
    let gone = unique("hard");
    hard.create_key(&gone, KeySpec::Rsa(2048))
        .await
        .expect("create");
    let owner = hard.owner_provider();
    let w = owner
        .wrap_key(&gone, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect("wrap");
    hard.delete_key(&gone).await.expect("delete");
    let e = owner.unwrap_key(&w).await.expect_err("unwrap");
    assert_eq!(e.kind(), K::KeyNotFound, "{e}");
    let e = hard.recover_key(&gone).await.expect_err("recover");
    assert_eq!(e.kind(), K::KeyNotFound, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabling_the_oldest_versions_moves_min_decryption_version() {
    let s = shared();
    let admin = admin(s);
    let p = admin.owner_provider();
    let name = unique("mindec");
    admin
        .create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create");
    let w1 = p
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect("wrap v1");
    assert_eq!(w1.key_version, "1");
    assert_eq!(w1.ciphertext.len(), 256, "raw RSA-2048 block");
    // The only version cannot be disabled on Transit.
    let e = admin
        .set_enabled(&name, "1", false)
        .await
        .expect_err("only version");
    assert_eq!(e.kind(), K::Unsupported, "{e}");
    admin.rotate_key(&name).await.expect("rotate");
    admin.rotate_key(&name).await.expect("rotate");

    admin
        .set_enabled(&name, "1", false)
        .await
        .expect("disable v1");
    let e = p.unwrap_key(&w1).await.expect_err("unwrap v1");
    assert_eq!(e.kind(), K::KeyDisabled, "{e}");
    assert!(e.message().contains("too old"), "{e}");
    let e = p
        .wrap_key(&name, Some("1"), WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect_err("wrap v1");
    assert_eq!(e.kind(), K::KeyDisabled, "{e}");
    let v1 = p.key_properties(&name, Some("1")).await.expect("v1 props");
    assert!(!v1.enabled && v1.public_key.is_none());
    let latest = p.key_properties(&name, None).await.expect("latest");
    assert!(latest.enabled && latest.version == "3" && latest.public_key.is_some());
    let versions = admin.list_versions(&name).await.expect("list");
    assert_eq!(
        versions
            .iter()
            .map(|v| (v.version.as_str(), v.enabled))
            .collect::<Vec<_>>(),
        [("1", false), ("2", true), ("3", true)]
    );
    // Not expressible: the latest, a middle version, re-enabling past a disabled one.
    let e = admin
        .set_enabled(&name, "3", false)
        .await
        .expect_err("latest");
    assert_eq!(e.kind(), K::Unsupported, "{e}");
    admin
        .set_enabled(&name, "2", false)
        .await
        .expect("disable v2");
    let e = admin
        .set_enabled(&name, "1", true)
        .await
        .expect_err("v1 before v2");
    assert_eq!(e.kind(), K::Unsupported, "{e}");
    admin
        .set_enabled(&name, "2", true)
        .await
        .expect("enable v2");
    admin
        .set_enabled(&name, "1", true)
        .await
        .expect("enable v1");
    assert_eq!(
        p.unwrap_key(&w1).await.expect("unwrap").expose_secret(),
        SECRET
    );
    let e = admin
        .set_enabled(&name, "4", false)
        .await
        .expect_err("no v4");
    assert_eq!(e.kind(), K::KeyNotFound, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_wrap_with_the_public_key_unwraps_on_the_server() {
    let s = shared();
    let admin = admin(s);
    let p = admin.owner_provider();
    let name = unique("local");
    admin
        .create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create");
    admin.rotate_key(&name).await.expect("rotate");
    for version in ["1", "2"] {
        let props = p.key_properties(&name, Some(version)).await.expect("props");
        let public = props.public_key.expect("an RSA version has a public key");
        assert_eq!(public.bits(), 2048);
        let ct = public
            .encrypt_oaep(OaepHash::Sha256, &SECRET, b"")
            .expect("local wrap");
        let w = WrappedKey::new(
            name.clone(),
            version.to_owned(),
            WrapAlgorithm::RsaOaep256,
            ct,
        );
        let u = p.unwrap_key(&w).await.expect("server unwrap");
        assert_eq!(u.expose_secret(), SECRET, "version {version}");
        // The same block named under the other version does not unwrap.
        let mut other = w;
        other.key_version = if version == "1" { "2" } else { "1" }.into();
        let e = p.unwrap_key(&other).await.expect_err("wrong version");
        assert_eq!(e.kind(), K::UnwrapFailed, "{e}");
        assert!(!e.is_transient());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrap_never_auto_creates_and_checks_types() {
    let s = shared();
    let admin = admin(s);
    let p = admin.owner_provider(); // the root token may `create`: the upsert risk
    let missing = unique("missing");
    let e = p
        .wrap_key(&missing, None, WrapAlgorithm::A256Kw, &SECRET)
        .await
        .expect_err("missing key");
    assert_eq!(e.kind(), K::KeyNotFound, "{e}");
    let e = p
        .key_properties(&missing, None)
        .await
        .expect_err("still missing");
    assert_eq!(e.kind(), K::KeyNotFound, "no key was created: {e}");

    let rsa = unique("rsa");
    admin
        .create_key(&rsa, KeySpec::Rsa(2048))
        .await
        .expect("rsa");
    let e = admin
        .create_key(&rsa, KeySpec::Aes256)
        .await
        .expect_err("taken");
    assert_eq!(e.kind(), K::Conflict, "{e}");
    let e = p
        .wrap_key(&rsa, None, WrapAlgorithm::RsaOaep, &SECRET)
        .await
        .expect_err("sha1");
    assert_eq!(e.kind(), K::InvalidRequest, "{e}");
    let e = p
        .wrap_key(&rsa, None, WrapAlgorithm::RsaOaep256, &[7; 191])
        .await
        .expect_err("too long for RSA-2048 OAEP-SHA-256");
    assert_eq!(e.kind(), K::InvalidRequest, "{e}");
    assert!(e.message().contains("too long"), "{e}");
    let ok = p
        .wrap_key(&rsa, None, WrapAlgorithm::RsaOaep256, &[7; 190])
        .await
        .expect("190 bytes fit");
    assert_eq!(p.unwrap_key(&ok).await.expect("unwrap").len(), 190);

    let aes = unique("aes");
    let props = admin.create_key(&aes, KeySpec::Aes256).await.expect("aes");
    assert_eq!(props.key_type, byok::provider::KeyType::Aes { bits: 256 });
    let w = p
        .wrap_key(&aes, None, WrapAlgorithm::A256Kw, &SECRET)
        .await
        .expect("A256KW via Transit");
    assert_eq!(w.ciphertext.len(), 12 + 32 + 16, "nonce | ciphertext | tag");
    assert_eq!(
        p.unwrap_key(&w).await.expect("unwrap").expose_secret(),
        SECRET
    );
    let e = p
        .wrap_key(&aes, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect_err("RSA alg on AES");
    assert_eq!(e.kind(), K::WrongKeyType, "{e}");
    // A blob that claims RSA-OAEP-256 under an AES key: the key type is named.
    let e = p
        .unwrap_key(&{
            let mut rsa = w.clone();
            rsa.algorithm = WrapAlgorithm::RsaOaep256;
            rsa
        })
        .await
        .expect_err("RSA record under an AES key");
    assert_eq!(e.kind(), K::WrongKeyType, "{e}");

    let ec = unique("ec");
    admin.create_key(&ec, KeySpec::EcP256).await.expect("ec");
    for alg in [WrapAlgorithm::RsaOaep256, WrapAlgorithm::A256Kw] {
        let e = p.wrap_key(&ec, None, alg, &SECRET).await.expect_err("ec");
        assert_eq!(e.kind(), K::WrongKeyType, "{e}");
    }
    let e = admin.import_rsa_pem(&rsa, "pem").await.expect_err("import");
    assert_eq!(e.kind(), K::Unsupported);

    // A mount that does not exist is a missing vault.
    let nowhere = TransitProvider::new(root_config(s).mount("no-such-mount")).expect("p");
    let e = nowhere
        .key_properties("k", None)
        .await
        .expect_err("no mount");
    assert_eq!(e.kind(), K::VaultNotFound, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_stopped_mid_test_is_transient_with_bounded_retries() {
    let server = Server::start("stopped", false);
    let admin = admin(&server);
    let name = unique("outage");
    admin
        .create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create");
    let p = TransitProvider::new(root_config(&server).retry(RetryPolicy::new(
        2,
        Duration::from_millis(100),
        Duration::from_millis(400),
    )))
    .expect("provider");
    let w = p
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect("wrap");
    server.stop();
    let started = Instant::now();
    let e = p.unwrap_key(&w).await.expect_err("server is down");
    let took = started.elapsed();
    assert_eq!(e.kind(), K::Unavailable, "{e}");
    assert!(e.is_transient() && !e.is_definitive());
    assert!(e.message().contains("after 3 attempts"), "{e}");
    // Issue 17: the HTTP client's error stays reachable as the cause, through retries too.
    let cause = std::error::Error::source(&e).expect("the HTTP client's error is the source");
    assert!(cause.is::<reqwest::Error>(), "{cause:?}");
    // Two backoffs of at most 125 + 250 ms, refused connections fail at once.
    assert!(took >= Duration::from_millis(150), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let e = p.key_properties(&name, None).await.expect_err("get");
    assert_eq!(e.kind(), K::Unavailable, "{e}");
    let e = p.vault_properties().await.expect_err("health");
    assert!(e.is_transient(), "{e}");
}

/// A loopback server that answers every request with `status` / `body` and counts the POSTs.
fn canned(status: u16, body: &'static str) -> (String, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = format!("http://{}", l.local_addr().expect("addr"));
    let hits = Arc::new(AtomicUsize::new(0));
    let h = Arc::clone(&hits);
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            let mut buf = [0u8; 8192];
            let n = c.read(&mut buf).unwrap_or(0);
            // The token is fine (a 403 is then the policy's): lookup-self answers.
            if buf[..n].starts_with(b"GET /v1/auth/token/lookup-self") {
                let ok = r#"{"data":{"ttl":0,"renewable":false}}"#;
                let _ = write!(
                    c,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{ok}",
                    ok.len()
                );
                continue;
            }
            // Count the operations (POST), not the error-refining reads (GET).
            if buf[..n].starts_with(b"POST") {
                h.fetch_add(1, Ordering::SeqCst);
            }
            let _ = write!(
                c,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (addr, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_transient_answers_are_retried_and_timeouts_are_bounded() {
    let blob = WrappedKey::new("k", "1", WrapAlgorithm::RsaOaep256, vec![1; 256]);
    let retry = RetryPolicy::new(3, Duration::from_millis(10), Duration::from_millis(20));
    for (status, body, kind, attempts) in [
        (
            429,
            r#"{"errors":["rate limit quota exceeded"]}"#,
            K::Throttled,
            4,
        ),
        (503, r#"{"errors":["Vault is sealed"]}"#, K::Unavailable, 4),
        (403, r#"{"errors":["permission denied"]}"#, K::Forbidden, 1),
        (
            500,
            r#"{"errors":["1 error occurred:\n\t* failed to RSA decrypt the ciphertext: crypto/rsa: decryption error\n\n"]}"#,
            K::UnwrapFailed,
            1,
        ),
        (
            400,
            r#"{"errors":["refusing to use soft-deleted key"]}"#,
            K::KeyDeleted,
            1,
        ),
    ] {
        let (addr, hits) = canned(status, body);
        let p = TransitProvider::new(
            TransitConfig::new(&addr, SecretString::new("s.canned-token"))
                .allow_insecure_http(true)
                .retry(retry),
        )
        .expect("provider");
        let e = p.unwrap_key(&blob).await.expect_err("canned failure");
        assert_eq!(e.kind(), kind, "{status}: {e}");
        assert_eq!(hits.load(Ordering::SeqCst), attempts, "{status}: {e}");
        assert!(!e.message().contains("canned-token"));
    }

    // A server that accepts connections but never answers: Timeout, bounded.
    let black_hole = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = format!("http://{}", black_hole.local_addr().expect("addr"));
    let p = TransitProvider::new(
        TransitConfig::new(&addr, SecretString::new("t"))
            .allow_insecure_http(true)
            .request_timeout(Duration::from_millis(200))
            .retry(RetryPolicy::new(
                1,
                Duration::from_millis(10),
                Duration::from_millis(10),
            )),
    )
    .expect("provider");
    let started = Instant::now();
    let e = p.unwrap_key(&blob).await.expect_err("timeout");
    assert_eq!(e.kind(), K::Timeout, "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    drop(black_hole);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_dev_ca_connects_and_without_it_fails_clearly() {
    let server = Server::start("tls", true);
    assert!(
        server.addr.starts_with("https://127.0.0.1:"),
        "{}",
        server.addr
    );
    let ca = server.ca_pem.clone().expect("the dev server writes its CA");
    let admin =
        TransitAdmin::new(root_config(&server).ca_pem(&ca).built_in_roots(false)).expect("admin");
    let name = unique("tls");
    admin
        .create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create over TLS");
    let p = admin.owner_provider();
    let w = p
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect("wrap over TLS");
    assert_eq!(
        p.unwrap_key(&w).await.expect("unwrap").expose_secret(),
        SECRET
    );
    assert!(p.vault_properties().await.is_ok());

    let no_ca =
        TransitProvider::new(root_config(&server).retry(RetryPolicy::none())).expect("provider");
    let e = no_ca.unwrap_key(&w).await.expect_err("unknown CA");
    assert_eq!(e.kind(), K::Unavailable, "{e}");
    let m = e.message().to_ascii_lowercase();
    assert!(m.contains("certificate") && m.contains("ca_pem"), "{e}");
    println!("without the CA: {e}");
    server.stop();
}

// ---------------------------------------------------------------------------------------------
// Accounts whose customer key lives in Transit (the account-level checks of issue 7).
// ---------------------------------------------------------------------------------------------

/// An account manager whose customer keys are reached through a [`VaultDirectory`] holding the
/// server's [`TransitAdmin`] under its `vault_host()`. The platform key stays in memory, so an
/// outage of the server touches only the customer key. The manager runs on a manual clock.
struct TransitAccounts {
    admin: Arc<TransitAdmin>,
    host: String,
    clock: Arc<ManualClock>,
    audit: Arc<MemoryAuditSink>,
    manager: AccountManager,
}

/// What one account on a Transit key is made of.
struct TransitAccount {
    id: AccountId,
    key: String,
    identity: Identity,
}

/// Fits Transit: soft-delete (OpenBao) yes, purge protection no (Transit has none).
fn transit_policy(cache_max_age: Duration) -> Policy {
    Policy::builder("transit")
        .require_vault_protection(true, false)
        .cache_max_age(cache_max_age)
        .build()
}

impl TransitAccounts {
    async fn on(s: &Server, retry: RetryPolicy) -> TransitAccounts {
        Self::with_admin(TransitAdmin::new(root_config(s).retry(retry)).expect("admin")).await
    }

    async fn with_admin(admin: TransitAdmin) -> TransitAccounts {
        let admin = Arc::new(admin);
        let host = admin.owner_provider().vault_host().to_owned();
        assert!(host.starts_with("127.0.0.1:"), "{host}");
        let directory = Arc::new(VaultDirectory::new());
        directory.add_vault(&host, admin.clone());
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
        let audit = Arc::new(MemoryAuditSink::new());
        let manager = AccountManager::builder(
            PlatformKey::new(
                Arc::new(platform.provider(&service)),
                "platform-kek",
                WrapAlgorithm::A256Kw,
            ),
            directory,
        )
        .audit(audit.clone())
        .clock(clock.clone())
        .build();
        TransitAccounts {
            admin,
            host,
            clock,
            audit,
            manager,
        }
    }

    /// A new RSA-2048 Transit key, an identity granted get/wrapKey/unwrapKey on it (a token with
    /// its own policy), and an account created on that key (versionless: follows the latest).
    async fn account(&self, label: &str, policy: Policy) -> TransitAccount {
        let key = unique(label);
        self.admin
            .create_key(&key, KeySpec::Rsa(2048))
            .await
            .expect("create key");
        let identity = Identity::new(unique(&format!("{label}-app")));
        self.admin
            .set_access(&identity, Permissions::CMK)
            .await
            .expect("access");
        let id = AccountId::new(label).expect("id");
        let rec = self
            .manager
            .create_account(self.new_account(&id, &key, &identity, policy))
            .await
            .expect("create account");
        assert_eq!(rec.state.kind(), StateKind::Active);
        TransitAccount { id, key, identity }
    }

    fn new_account(
        &self,
        id: &AccountId,
        key: &str,
        identity: &Identity,
        policy: Policy,
    ) -> NewAccount {
        let kid = KeyId::new(&self.host, key, None).expect("key id");
        NewAccount::new(id.clone(), "", "", policy)
            .key_source(KeySource::customer(kid, identity.clone()))
    }

    async fn state(&self, id: &AccountId) -> StateKind {
        self.manager
            .account(id)
            .await
            .expect("account GET")
            .state
            .kind()
    }

    /// The account's state changes, as audited.
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

#[track_caller]
fn assert_unavailable<T: std::fmt::Debug>(r: Result<T, Error>, what: &str) {
    match r {
        Err(e @ Error::Unavailable { .. }) => assert_eq!(e.http_status(), 503, "{what}: {e}"),
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_on_a_transit_key_works_end_to_end_and_follows_rotation() {
    let w = TransitAccounts::on(shared(), RetryPolicy::default()).await;

    // A policy that requires purge protection refuses Transit (which has none); nothing stored.
    let key = unique("strict");
    w.admin
        .create_key(&key, KeySpec::Rsa(2048))
        .await
        .expect("create key");
    let who = Identity::new(unique("strict-app"));
    w.admin
        .set_access(&who, Permissions::CMK)
        .await
        .expect("access");
    let strict = AccountId::new("strict").expect("id");
    let e = w
        .manager
        .create_account(w.new_account(&strict, &key, &who, Policy::builder("strict").build()))
        .await
        .expect_err("Transit has no purge protection");
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
    assert!(matches!(
        w.manager.account(&strict).await,
        Err(Error::AccountNotFound(_))
    ));

    // Under a policy that fits Transit: created, wrapped under version 1 of the key.
    let a = w
        .account("e2e", transit_policy(Duration::from_secs(300)))
        .await;
    let rec = w.manager.account(&a.id).await.expect("get");
    let v1 = KeyId::new(&w.host, &a.key, Some("1")).expect("v1");
    assert_eq!(rec.current_customer_key(), Some(v1.clone()));
    let wrapped = rec.account_key.as_ref().expect("account key");
    assert_eq!(wrapped.vault, w.host);
    assert_eq!(wrapped.wrapped.algorithm, WrapAlgorithm::RsaOaep256);
    assert_eq!(wrapped.wrapped.ciphertext.len(), 256, "RSA-2048 block");
    assert_eq!(
        w.manager.accounts_using(&v1).await.expect("using"),
        std::slice::from_ref(&a.id)
    );

    let objects: Vec<_> = [&b"first"[..], b"second"]
        .into_iter()
        .enumerate()
        .map(|(i, data)| (format!("obj-{i}"), data.to_vec()))
        .collect();
    let mut sealed = Vec::new();
    for (name, data) in &objects {
        let o = w
            .manager
            .encrypt(&a.id, &blob(), name.as_bytes(), data)
            .await
            .expect("encrypt");
        sealed.push(o);
    }
    let field = w
        .manager
        .seal_field(&a.id, b"input-url", b"https://example.test/in")
        .await
        .expect("seal field");
    for ((name, data), o) in objects.iter().zip(&sealed) {
        assert_eq!(
            &w.manager
                .decrypt(&a.id, name.as_bytes(), o)
                .await
                .expect("decrypt"),
            data
        );
    }
    assert_eq!(
        w.manager.probe(&a.id).await.expect("check"),
        StateKind::Active
    );

    // Rotation on the server; `refresh` re-wraps the account key under version 2.
    let rotated = w.admin.rotate_key(&a.key).await.expect("rotate");
    assert_eq!(rotated.version, "2");
    let rec = w.manager.refresh(&a.id).await.expect("refresh");
    let v2 = KeyId::new(&w.host, &a.key, Some("2")).expect("v2");
    assert_eq!(rec.current_customer_key(), Some(v2.clone()));
    assert_eq!(rec.state.kind(), StateKind::Active);
    assert!(rec.last_rotated.is_some());
    assert_eq!(
        w.manager.accounts_using(&v2).await.expect("using"),
        std::slice::from_ref(&a.id)
    );
    assert!(
        w.manager
            .accounts_using(&v1)
            .await
            .expect("using")
            .is_empty()
    );
    // A second refresh finds nothing newer.
    let again = w.manager.refresh(&a.id).await.expect("refresh again");
    assert_eq!(again.current_customer_key(), Some(v2.clone()));
    assert_eq!(again.last_rotated, rec.last_rotated);

    // Past the cache: old objects open through a server unwrap under version 2.
    w.clock.advance(Duration::from_secs(301));
    let events_before = w.audit.events().len();
    for ((name, data), o) in objects.iter().zip(&sealed) {
        assert_eq!(
            &w.manager
                .decrypt(&a.id, name.as_bytes(), o)
                .await
                .expect("decrypt after rotation"),
            data
        );
    }
    let v2_unwraps: Vec<_> = w.audit.events()[events_before..]
        .iter()
        .filter(|e| matches!(e.action, AuditAction::Unwrap))
        .map(|e| e.key.clone().unwrap_or_default())
        .collect();
    assert_eq!(v2_unwraps, [v2.to_string()], "one unwrap, under version 2");
    assert_eq!(
        w.manager
            .open_field(&a.id, b"input-url", &field)
            .await
            .expect("open field"),
        b"https://example.test/in"
    );
    let fresh = w
        .manager
        .encrypt(&a.id, &blob(), b"obj-new", b"after rotation")
        .await
        .expect("encrypt after rotation");
    assert_eq!(
        w.manager
            .decrypt(&a.id, b"obj-new", &fresh)
            .await
            .expect("decrypt"),
        b"after rotation"
    );
    // Version 1 no longer guards the account: retiring it changes nothing for the account.
    w.admin
        .set_enabled(&a.key, "1", false)
        .await
        .expect("disable v1");
    assert_eq!(
        w.manager.probe(&a.id).await.expect("check"),
        StateKind::Active
    );
    assert!(w.state_changes(&a.id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_stays_active_through_a_transit_outage() {
    let server = Server::start("account-outage", false);
    // Short retries keep the failing calls quick (refused connections fail at once).
    let w = TransitAccounts::on(
        &server,
        RetryPolicy::new(1, Duration::from_millis(10), Duration::from_millis(20)),
    )
    .await;
    let a = w
        .account("outage", transit_policy(Duration::from_secs(3600)))
        .await;
    let obj = w
        .manager
        .encrypt(&a.id, &blob(), b"o", b"before the outage")
        .await
        .expect("encrypt (caches the account key)");

    server.stop();

    // The cached account key serves; the probe reports the outage without changing the state.
    assert_eq!(
        w.manager.decrypt(&a.id, b"o", &obj).await.expect("cached"),
        b"before the outage"
    );
    let during = w
        .manager
        .encrypt(&a.id, &blob(), b"o2", b"during the outage")
        .await
        .expect("encrypt with the cached key");
    assert_unavailable(w.manager.probe(&a.id).await, "check");
    assert_unavailable(w.manager.refresh(&a.id).await, "refresh");
    let monitored = w.manager.monitor().await.expect("monitor");
    assert!(
        matches!(monitored[0].result, Err(Error::Unavailable { .. })),
        "{monitored:?}"
    );
    assert_eq!(w.state(&a.id).await, StateKind::Active);
    assert_eq!(
        w.manager
            .decrypt(&a.id, b"o2", &during)
            .await
            .expect("cached"),
        b"during the outage"
    );

    // Once the cache has expired, data operations fail with 503 and the state is unchanged.
    w.clock.advance(Duration::from_secs(3601));
    assert_unavailable(w.manager.decrypt(&a.id, b"o", &obj).await, "decrypt");
    assert_unavailable(
        w.manager.encrypt(&a.id, &blob(), b"o3", b"x").await,
        "encrypt",
    );
    assert_unavailable(w.manager.open_field(&a.id, b"f", b"").await, "open field");
    assert_unavailable(w.manager.probe(&a.id).await, "check");
    assert_eq!(w.state(&a.id).await, StateKind::Active);
    assert!(w.state_changes(&a.id).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_policy_or_soft_deleted_key_locks_the_account_until_restored() {
    let w = TransitAccounts::on(shared(), RetryPolicy::default()).await;
    let policy = transit_policy(Duration::from_secs(300));
    let revoked = w.account("revoked", policy.clone()).await;
    let deleted = w.account("soft-deleted", policy).await;
    let mut objects = Vec::new();
    for a in [&revoked, &deleted] {
        let o = w
            .manager
            .encrypt(&a.id, &blob(), b"o", a.id.as_str().as_bytes())
            .await
            .expect("encrypt");
        objects.push(o);
    }

    // The identity's policy is deleted (its token stays valid: the denial is the tenant's).
    w.admin
        .remove_identity(&revoked.identity)
        .await
        .expect("revoke");
    // Key soft-deleted (OpenBao).
    w.admin.delete_key(&deleted.key).await.expect("soft-delete");

    for (a, reason) in [(&revoked, "permission denied"), (&deleted, "soft-deleted")] {
        match w.manager.probe(&a.id).await {
            Err(e @ Error::KeyInaccessible { .. }) => {
                assert_eq!(e.http_status(), 403);
                assert!(e.to_string().contains(reason), "{e}");
            }
            other => panic!("{}: expected KeyInaccessible, got {other:?}", a.id),
        }
        assert_eq!(w.state(&a.id).await, StateKind::KeyInaccessible);
    }
    for (a, o) in [&revoked, &deleted].into_iter().zip(&objects) {
        // Even with the account key still fresh in the cache: the state gate refuses.
        assert_inaccessible(w.manager.decrypt(&a.id, b"o", o).await, "decrypt");
        assert_inaccessible(
            w.manager.encrypt(&a.id, &blob(), b"o2", b"x").await,
            "encrypt",
        );
        assert_inaccessible(w.manager.seal_field(&a.id, b"f", b"v").await, "seal field");
    }
    // A second probe keeps the state (no transition to itself).
    assert_inaccessible(w.manager.probe(&revoked.id).await, "check again");

    // Restored: access granted again / the key recovered from soft-delete.
    w.admin
        .set_access(&revoked.identity, Permissions::CMK)
        .await
        .expect("grant again");
    w.admin
        .recover_key(&deleted.key)
        .await
        .expect("soft-delete-restore");
    // Past the cache, so the old objects open through a fresh server unwrap.
    w.clock.advance(Duration::from_secs(301));
    for (a, o) in [&revoked, &deleted].into_iter().zip(&objects) {
        assert_eq!(
            w.manager.probe(&a.id).await.expect("check"),
            StateKind::Active
        );
        assert_eq!(w.state(&a.id).await, StateKind::Active);
        assert_eq!(
            w.manager.decrypt(&a.id, b"o", o).await.expect("decrypt"),
            a.id.as_str().as_bytes()
        );
        let n = w
            .manager
            .encrypt(&a.id, &blob(), b"n", b"new")
            .await
            .expect("encrypt");
        assert_eq!(
            w.manager.decrypt(&a.id, b"n", &n).await.expect("decrypt"),
            b"new"
        );
        assert_eq!(
            w.state_changes(&a.id),
            ["Active->KeyInaccessible", "KeyInaccessible->Active"]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Hardening (issue 16): error hygiene, transport policy, the service's own credential.
// ---------------------------------------------------------------------------------------------

/// A distinctive 32-byte secret, and every form of it that must never reach an error.
const PLAIN: [u8; 32] = [
    0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f,
    0x10, 0x11, 0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b, 0x1c, 0x1d, 0x1e, 0x1f,
];
const PLAIN_B64: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

/// A loopback HTTP/1.1 server (tokio) that answers `lookup-self` and `GET keys/k` like Transit
/// (an AES-256 key) and every POST with `answer(request body)`.
async fn hostile(answer: impl Fn(&str) -> Vec<u8> + Send + Sync + 'static) -> String {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = format!("http://{}", l.local_addr().expect("addr"));
    let answer = Arc::new(answer);
    tokio::spawn(async move {
        loop {
            let Ok((mut c, _)) = l.accept().await else {
                return;
            };
            let answer = Arc::clone(&answer);
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                // Headers, then as much body as Content-Length says.
                let (head_end, len) = loop {
                    let Ok(n) = c.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    req.extend_from_slice(&buf[..n]);
                    if let Some(i) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&req[..i]).to_ascii_lowercase();
                        let len = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        break (i + 4, len);
                    }
                };
                while req.len() < head_end + len {
                    let Ok(n) = c.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        break;
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                let head = String::from_utf8_lossy(&req[..head_end]).into_owned();
                let body = String::from_utf8_lossy(&req[head_end..]).into_owned();
                let ok = |b: &str| {
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                        b.len()
                    )
                    .into_bytes()
                };
                let out = if head.starts_with("GET /v1/auth/token/lookup-self") {
                    ok(r#"{"data":{"ttl":0,"renewable":false}}"#)
                } else if head.starts_with("GET /v1/transit/keys/k ") {
                    ok(
                        r#"{"data":{"type":"aes256-gcm96","keys":{"1":1700000000},"latest_version":1,"min_decryption_version":1,"min_encryption_version":0,"supports_encryption":true,"supports_decryption":true}}"#,
                    )
                } else {
                    answer(&body)
                };
                let _ = c.write_all(&out).await;
                let _ = c.shutdown().await;
            });
        }
    });
    addr
}

fn assert_clean(e: &byok::ProviderError, what: &str) {
    let shown = format!("{e} {e:?}");
    println!("{what}: {} chars: {e}", shown.len());
    assert!(shown.len() < 2048, "{what}: {} chars", shown.len());
    for bad in [PLAIN_B64, &PLAIN_B64[..16], &PLAIN_B64[20..40], "plaintext"] {
        assert!(
            !shown.contains(bad),
            "{what}: the secret leaked ({bad}): {shown}"
        );
    }
    assert!(!shown.chars().any(|c| c.is_control()), "{what}: {shown:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_text_is_bounded_and_never_carries_the_request() {
    let five_mb = |with_len: bool| {
        move |_: &str| {
            let body = "A".repeat(5 * 1024 * 1024);
            let len = if with_len {
                format!("Content-Length: {}\r\n", body.len())
            } else {
                String::new()
            };
            format!("HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n{len}Connection: close\r\n\r\n{body}")
                .into_bytes()
        }
    };
    let echo_html = |body: &str| {
        let page = format!(
            "<html><body><h1>502 Bad Gateway</h1>\n\x1b[31mupstream refused\r\n<pre>{body}</pre></body></html>"
        );
        format!("HTTP/1.1 502 Bad Gateway\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}", page.len()).into_bytes()
    };
    let echo_json = |body: &str| {
        let page = serde_json::json!({ "errors": [format!("1 error occurred:\n\t* cannot parse {body}\n\n")] }).to_string();
        format!("HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}", page.len()).into_bytes()
    };
    let servers: Vec<(&str, String)> = vec![
        (
            "400 with 5 MB (Content-Length)",
            hostile(five_mb(true)).await,
        ),
        (
            "400 with 5 MB (read to close)",
            hostile(five_mb(false)).await,
        ),
        ("502 page echoing the request", hostile(echo_html).await),
        (
            "400 JSON error echoing the request",
            hostile(echo_json).await,
        ),
    ];
    for (what, addr) in servers {
        let p = TransitProvider::new(
            TransitConfig::new(&addr, SecretString::new("s.hostile-token"))
                .allow_insecure_http(true)
                .retry(RetryPolicy::new(
                    1,
                    Duration::from_millis(5),
                    Duration::from_millis(5),
                )),
        )
        .expect("provider");
        let e = p
            .wrap_key("k", None, WrapAlgorithm::A256Kw, &PLAIN)
            .await
            .expect_err(what);
        assert_clean(&e, what);
        assert!(!format!("{e:?}").contains("hostile-token"));
        let blob = WrappedKey::new("k", "1", WrapAlgorithm::A256Kw, PLAIN.repeat(2));
        let e = p.unwrap_key(&blob).await.expect_err(what);
        assert_clean(&e, what);
    }
    // A success answer over the cap is not read either.
    let addr = hostile(|_| {
        let body = format!(
            r#"{{"data":{{"ciphertext":"{}"}}}}"#,
            "A".repeat(5 * 1024 * 1024)
        );
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{body}"
        )
        .into_bytes()
    })
    .await;
    let p = TransitProvider::new(
        TransitConfig::new(&addr, SecretString::new("t"))
            .allow_insecure_http(true)
            .retry(RetryPolicy::none()),
    )
    .expect("provider");
    let e = p
        .wrap_key("k", None, WrapAlgorithm::A256Kw, &PLAIN)
        .await
        .expect_err("oversized answer");
    assert_eq!(e.kind(), K::Unavailable, "{e}");
    assert!(e.message().contains("larger than 64 KiB"), "{e}");
    assert_clean(&e, "200 with 5 MB");
}

#[test]
fn plain_http_is_refused_unless_the_config_opts_in() {
    let cfg = TransitConfig::new(
        &shared().addr,
        SecretString::new(shared().root_token.clone()),
    );
    for e in [
        TransitProvider::new(cfg.clone()).expect_err("http"),
        TransitAdmin::new(cfg.clone()).expect_err("http"),
    ] {
        assert_eq!(e.kind(), K::InvalidRequest, "{e}");
        assert!(e.message().contains("allow_insecure_http(true)"), "{e}");
    }
    TransitProvider::new(cfg.allow_insecure_http(true)).expect("opted in");
}

/// Set by the parent test for its child process (the proxy variables are process-wide, so
/// they are set on a child only, never on this process).
const PROXY_CHILD: &str = "BYOK_TRANSIT_PROXY_CHILD";

#[test]
fn system_proxy_variables_are_ignored() {
    let s = shared();
    // A dead proxy: anything sent through it fails.
    let dead = TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_addr = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "proxy_child", "--nocapture", "--test-threads=1"])
        .env(PROXY_CHILD, format!("{} {}", s.addr, s.root_token))
        .env("HTTPS_PROXY", &dead_addr)
        .env("HTTP_PROXY", &dead_addr)
        .env("ALL_PROXY", &dead_addr)
        .env("https_proxy", &dead_addr)
        .env("http_proxy", &dead_addr)
        .env("all_proxy", &dead_addr)
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .expect("child");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains("proxy child ok"),
        "the child did not run: {text}"
    );
}

/// Runs only in the child process of [`system_proxy_variables_are_ignored`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_child() {
    let Ok(spec) = std::env::var(PROXY_CHILD) else {
        return;
    };
    let (addr, token) = spec.split_once(' ').expect("addr token");
    let dead = std::env::var("HTTP_PROXY").expect("HTTP_PROXY");
    // The variables work: a client that honours them fails.
    let honouring = reqwest::Client::new()
        .get(format!("{addr}/v1/sys/health"))
        .send()
        .await;
    assert!(
        honouring.is_err(),
        "the dead proxy was not used: {honouring:?}"
    );
    let cfg = TransitConfig::new(addr, SecretString::new(token.to_owned()))
        .allow_insecure_http(true)
        .retry(RetryPolicy::none());
    let admin = TransitAdmin::new(cfg.clone()).expect("admin");
    let name = unique("no-proxy");
    admin
        .create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create without a proxy");
    let p = TransitProvider::new(cfg.clone()).expect("provider");
    let w = p
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect("wrap without a proxy");
    assert_eq!(
        p.unwrap_key(&w).await.expect("unwrap").expose_secret(),
        SECRET
    );
    // A configured proxy is used.
    let through = TransitProvider::new(cfg.proxy(&dead)).expect("provider");
    let e = through
        .unwrap_key(&w)
        .await
        .expect_err("through the dead proxy");
    assert!(e.is_transient(), "{e}");
    println!("proxy child ok");
}

/// A policy granting CMK rights on `key`, and a token carrying it (the `default` policy too).
async fn token_on(s: &Server, key: &str, extra: serde_json::Value) -> (String, String) {
    let admin = admin(s);
    let who = Identity::new(unique("tok"));
    admin
        .set_key_access(&who, &[key], Permissions::CMK)
        .await
        .expect("policy");
    let policy = TransitAdmin::policy_name(&who);
    let mut body = serde_json::json!({ "policies": [policy.clone()] });
    for (k, v) in extra.as_object().expect("object") {
        body[k] = v.clone();
    }
    let (status, resp) = raw_json(s, reqwest::Method::POST, "auth/token/create", body).await;
    assert_eq!(status, 200, "{resp}");
    let token = resp["auth"]["client_token"]
        .as_str()
        .expect("token")
        .to_owned();
    (token, policy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewable_token_is_renewed_past_its_ttl_an_unrenewable_one_fails_transiently() {
    let s = shared();
    let name = unique("renew");
    admin(s)
        .create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create");
    let (renewable, _) = token_on(
        s,
        &name,
        serde_json::json!({ "ttl": "4s", "renewable": true }),
    )
    .await;
    let (fixed, _) = token_on(
        s,
        &name,
        serde_json::json!({ "ttl": "4s", "renewable": false }),
    )
    .await;
    let cfg = root_config(s).retry(RetryPolicy::none());
    let p = TransitProvider::new(cfg.with_token(SecretString::new(renewable))).expect("p");
    let q = TransitProvider::new(cfg.with_token(SecretString::new(fixed))).expect("q");
    let w = p
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect("wrap");
    q.unwrap_key(&w)
        .await
        .expect("the fixed token works at first");
    let started = Instant::now();
    // Used every second for 9 s: renewed whenever less than half its lease is left.
    while started.elapsed() < Duration::from_secs(9) {
        let k = p.unwrap_key(&w).await.unwrap_or_else(|e| {
            panic!("renewable token failed after {:?}: {e}", started.elapsed())
        });
        assert_eq!(k.expose_secret(), SECRET);
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    let left = p.renew_credential().await.expect("renew").expect("expires");
    assert!(
        left > Duration::from_secs(2) && left <= Duration::from_secs(4),
        "{left:?}"
    );
    // The unrenewable one has expired: our credential, not the tenant's key.
    let e = q.unwrap_key(&w).await.expect_err("expired");
    assert_eq!(e.kind(), K::Unavailable, "{e}");
    assert!(e.is_transient(), "{e}");
    assert!(e.message().contains("service's own credential"), "{e}");
    let e = q.key_properties(&name, None).await.expect_err("expired");
    assert!(e.is_transient(), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approle_logs_in_renews_and_logs_in_again_after_its_token_expires() {
    let s = shared();
    let name = unique("approle");
    admin(s)
        .create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create");
    let who = Identity::new(unique("approle-app"));
    admin(s)
        .set_key_access(&who, &[&name], Permissions::CMK)
        .await
        .expect("policy");
    let mount = unique("approle");
    let post = reqwest::Method::POST;
    let (st, v) = raw_json(
        s,
        post.clone(),
        &format!("sys/auth/{mount}"),
        serde_json::json!({ "type": "approle" }),
    )
    .await;
    assert_eq!(st, 204, "{v}");
    let role = format!("auth/{mount}/role/app");
    let (st, v) = raw_json(
        s,
        post.clone(),
        &role,
        serde_json::json!({
            "token_policies": [TransitAdmin::policy_name(&who)],
            "token_ttl": "3s",
            "token_max_ttl": "3s",
        }),
    )
    .await;
    assert_eq!(st, 204, "{v}");
    let (_, v) = raw_json(
        s,
        reqwest::Method::GET,
        &format!("{role}/role-id"),
        serde_json::Value::Null,
    )
    .await;
    let role_id = v["data"]["role_id"].as_str().expect("role_id").to_owned();
    let (_, v) = raw_json(
        s,
        post.clone(),
        &format!("{role}/secret-id"),
        serde_json::json!({}),
    )
    .await;
    let secret_id = v["data"]["secret_id"]
        .as_str()
        .expect("secret_id")
        .to_owned();

    let cfg = TransitConfig::approle(
        &s.addr,
        SecretString::new(role_id.clone()),
        SecretString::new(secret_id.clone()),
    )
    .approle_mount(&mount)
    .allow_insecure_http(true)
    .retry(RetryPolicy::none());
    assert!(!format!("{cfg:?}").contains(&secret_id));
    let p = TransitProvider::new(cfg.clone()).expect("provider");
    let w = p
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &SECRET)
        .await
        .expect("wrap after login");
    // In use for 7 s: tokens of 3 s at most, so several logins.
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(7) {
        let k = p
            .unwrap_key(&w)
            .await
            .unwrap_or_else(|e| panic!("AppRole failed after {:?}: {e}", started.elapsed()));
        assert_eq!(k.expose_secret(), SECRET);
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    // Idle past the token's end: the 403 is followed by a new login and the request succeeds.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        p.unwrap_key(&w)
            .await
            .expect("after expiry")
            .expose_secret(),
        SECRET
    );

    // A bad secret id is the service's fault: transient, never the tenant's key.
    let bad = TransitProvider::new(
        TransitConfig::approle(
            &s.addr,
            SecretString::new(role_id),
            SecretString::new("nope"),
        )
        .approle_mount(&mount)
        .allow_insecure_http(true)
        .retry(RetryPolicy::none()),
    )
    .expect("provider");
    let e = bad.unwrap_key(&w).await.expect_err("bad secret id");
    assert_eq!(e.kind(), K::Unavailable, "{e}");
    assert!(e.message().contains("AppRole login failed"), "{e}");
    assert!(!e.message().contains("nope"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_service_token_leaves_the_account_active() {
    let s = shared();
    let w = TransitAccounts::with_admin(
        TransitAdmin::new(root_config(s).retry(RetryPolicy::none()))
            .expect("admin")
            .token_ttl(Duration::from_secs(4))
            .renewable_tokens(false),
    )
    .await;
    let a = w
        .account("expiring", transit_policy(Duration::from_secs(300)))
        .await;
    let obj = w
        .manager
        .encrypt(&a.id, &blob(), b"o", b"data")
        .await
        .expect("encrypt");
    // The identity's token expires (4 s, not renewable); the cache expires too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    w.clock.advance(Duration::from_secs(301));

    // The cold-cache unwrap gets a 403, lookup-self fails too: the service's fault.
    assert_unavailable(
        w.manager.decrypt(&a.id, b"o", &obj).await,
        "decrypt with an expired service token",
    );
    assert_unavailable(
        w.manager.encrypt(&a.id, &blob(), b"o2", b"x").await,
        "encrypt",
    );
    assert_unavailable(w.manager.probe(&a.id).await, "check");
    assert_unavailable(w.manager.refresh(&a.id).await, "refresh");
    assert_eq!(w.state(&a.id).await, StateKind::Active);
    assert!(w.state_changes(&a.id).is_empty());
    // (A policy that denies the key with a working token is definitive and locks the account:
    // revoked_policy_or_soft_deleted_key_locks_the_account_until_restored.)
}

/// Issue 13: a Transit key named by its API path (`https://<host>/v1/<mount>/keys/<name>`): the
/// mount is part of the vault, so an account works on a second mount and the same-vault rule
/// tells two mounts of one server apart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transit_path_key_ids_name_the_mount() {
    let s = shared();
    let mount = unique("mount");
    assert_eq!(
        raw(
            s,
            reqwest::Method::POST,
            &format!("sys/mounts/{mount}"),
            serde_json::json!({"type": "transit"}),
        )
        .await,
        204,
        "mount {mount}"
    );
    let authority = s.addr.strip_prefix("http://").expect("plain dev server");
    let vault = format!("{authority}/v1/{mount}");
    let w = TransitAccounts::with_admin(
        TransitAdmin::new(root_config(s).mount(&mount).vault_host(&vault)).expect("admin"),
    )
    .await;
    assert_eq!(w.host, vault);
    let policy = Policy::builder("transit-path")
        .require_vault_protection(true, false)
        .key_change_same_vault_only(true)
        .cache_max_age(Duration::from_secs(300))
        .build();
    let a = w.account("path", policy).await;
    let rec = w.manager.account(&a.id).await.expect("get");
    let v1: KeyId = format!("https://{vault}/keys/{}/1", a.key)
        .parse()
        .expect("path form");
    assert_eq!(v1.kind(), byok::KeyIdKind::TransitPath);
    assert_eq!(rec.current_customer_key(), Some(v1.clone()));
    assert_eq!(rec.account_key.as_ref().expect("wrapped").vault, vault);
    assert_eq!(
        w.manager.accounts_using(&v1).await.expect("using"),
        std::slice::from_ref(&a.id)
    );
    let o = w
        .manager
        .encrypt(&a.id, &blob(), b"o", b"on a second mount")
        .await
        .expect("encrypt");
    w.clock.advance(Duration::from_secs(301));
    assert_eq!(
        w.manager.decrypt(&a.id, b"o", &o).await.expect("decrypt"),
        b"on a second mount"
    );
    // Rotation on this mount is followed.
    w.admin.rotate_key(&a.key).await.expect("rotate");
    let rec = w.manager.refresh(&a.id).await.expect("refresh");
    assert_eq!(
        rec.current_customer_key(),
        Some(v1.with_version("2").expect("v2"))
    );
    // The same key name on the server's default mount is another vault.
    let other: KeyId = format!("https://{authority}/v1/transit/keys/{}", a.key)
        .parse()
        .expect("default mount");
    match w
        .manager
        .set_customer_key(&a.id, other, a.identity.clone())
        .await
    {
        Err(Error::Policy {
            violation: PolicyViolation::DifferentVault { current, requested },
            ..
        }) => {
            assert_eq!(current, vault);
            assert_eq!(requested, format!("{authority}/v1/transit"));
        }
        other => panic!("expected DifferentVault, got {other:?}"),
    }
}
