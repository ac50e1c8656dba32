//! The Transit provider against a real OpenBao dev server (started by the tests themselves,
//! see `transit_support`): the conformance suite, revocation paths, transient failures with
//! bounded retries, local wraps unwrapped by the server, and TLS with the dev CA.

mod transit_support;

use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use byok::conformance::{self, Outcome};
use byok::{
    Identity, KeyProvider, KeySpec, OaepHash, Permissions, ProviderErrorKind as K, RetryPolicy,
    SecretString, TransitAdmin, TransitConfig, TransitProvider, VaultAdmin, WrapAlgorithm,
    WrappedKey,
};
use transit_support::{Server, shared};

const SECRET: [u8; 32] = [0x42; 32];

fn root_config(s: &Server) -> TransitConfig {
    TransitConfig::new(&s.addr, SecretString::new(s.root_token.clone()))
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
    reqwest::Client::new()
        .request(method, format!("{}/v1/{path}", s.addr))
        .header("X-Vault-Token", &s.root_token)
        .json(&body)
        .send()
        .await
        .expect("raw request")
        .status()
        .as_u16()
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_token_is_forbidden_and_the_token_never_leaks() {
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
    let resp: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/v1/auth/token/create", s.addr))
        .header("X-Vault-Token", &s.root_token)
        .json(&serde_json::json!({ "policies": [policy], "ttl": "1h" }))
        .send()
        .await
        .expect("token create")
        .json()
        .await
        .expect("json");
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
        assert_eq!(e.kind(), K::Forbidden, "{e}");
        assert!(e.is_definitive());
        assert!(e.message().contains("permission denied"), "{e}");
        assert!(!e.message().contains(&token), "the token leaked: {e}");
        assert!(!format!("{e:?}").contains(&token));
    }
    // Definitive answers are not retried.
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
        let w = WrappedKey {
            key_name: name.clone(),
            key_version: version.to_owned(),
            algorithm: WrapAlgorithm::RsaOaep256,
            ciphertext: ct,
        };
        let u = p.unwrap_key(&w).await.expect("server unwrap");
        assert_eq!(u.expose_secret(), SECRET, "version {version}");
        // The same block named under the other version does not unwrap.
        let other = WrappedKey {
            key_version: if version == "1" { "2" } else { "1" }.into(),
            ..w
        };
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
    assert_eq!(props.key_type, byok::KeyType::Aes { bits: 256 });
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
        .unwrap_key(&WrappedKey {
            algorithm: WrapAlgorithm::RsaOaep256,
            ..w.clone()
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
    let blob = WrappedKey {
        key_name: "k".into(),
        key_version: "1".into(),
        algorithm: WrapAlgorithm::RsaOaep256,
        ciphertext: vec![1; 256],
    };
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
            TransitConfig::new(&addr, SecretString::new("s.canned-token")).retry(retry),
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
