//! In-memory vault behaviour beyond the conformance suite: PEM import (what `openssl genrsa`
//! writes), deterministic generation with an injected seed, retention with an injected clock,
//! and secrets that never print.

use std::sync::Arc;
use std::time::Duration;

use byok::provider::memory::InMemoryVault;
use byok::provider::{
    Identity, KeySpec, KeyType, OaepHash, Permissions, VaultProperties, WrapAlgorithm,
};
use byok::testing::ManualClock;
use byok::{KeyProvider, ProviderErrorKind, VaultAdmin};

const PKCS1: &str = include_str!("data/keys/rsa2048-pkcs1.pem");
const PKCS8: &str = include_str!("data/keys/rsa3072-pkcs8.pem");
const EC: &str = include_str!("data/keys/ec-p256.pem");

fn vault() -> InMemoryVault {
    InMemoryVault::new(VaultProperties::new("mem.vault.example", "westeurope", "t"))
}

async fn app(v: &InMemoryVault) -> byok::provider::memory::InMemoryProvider {
    let id = Identity::new("app");
    v.set_access(&id, Permissions::CMK).await.expect("grant");
    v.provider(&id)
}

#[tokio::test]
async fn imports_openssl_pkcs1_and_pkcs8_keys() {
    let v = vault();
    let p = app(&v).await;
    let k1 = v.import_rsa_pem("imported", PKCS1).await.expect("pkcs1");
    assert_eq!(k1.key_type, KeyType::Rsa { bits: 2048 });
    // Importing under an existing name adds a version.
    let k2 = v.import_rsa_pem("imported", PKCS8).await.expect("pkcs8");
    assert_eq!(k2.key_type, KeyType::Rsa { bits: 3072 });
    assert_ne!(k1.version, k2.version);
    // A software wrap with the reported public key unwraps in the vault.
    let public = k2.public_key.expect("public key");
    let ct = public
        .encrypt_oaep(OaepHash::Sha256, &[9u8; 32], b"")
        .expect("encrypt");
    let w = byok::provider::WrappedKey::new(
        "imported",
        k2.version.clone(),
        WrapAlgorithm::RsaOaep256,
        ct,
    );
    assert_eq!(
        p.unwrap_key(&w).await.expect("unwrap").expose_secret(),
        &[9u8; 32]
    );
    // An EC key or garbage is not an RSA key.
    for bad in [
        EC,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        "",
    ] {
        let e = v.import_rsa_pem("bad", bad).await.expect_err("refused");
        assert_eq!(e.kind(), ProviderErrorKind::InvalidRequest);
    }
}

#[tokio::test]
async fn same_seed_same_keys() {
    let clock = Arc::new(ManualClock::default());
    let props = VaultProperties::new("seeded.example", "r", "t");
    let a = InMemoryVault::seeded(props.clone(), clock.clone(), [1; 32]);
    let b = InMemoryVault::seeded(props.clone(), clock.clone(), [1; 32]);
    let c = InMemoryVault::seeded(props, clock, [2; 32]);
    let pa = a.create_key("k", KeySpec::Rsa(2048)).await.expect("a");
    let pb = b.create_key("k", KeySpec::Rsa(2048)).await.expect("b");
    let pc = c.create_key("k", KeySpec::Rsa(2048)).await.expect("c");
    assert_eq!(pa.public_key, pb.public_key);
    assert_ne!(pa.public_key, pc.public_key);
    assert_eq!(pa.created, pb.created);
}

#[tokio::test]
async fn purge_waits_for_the_retention_period() {
    let clock = Arc::new(ManualClock::default());
    let props = VaultProperties::new("retention.example", "r", "t");
    let v = InMemoryVault::seeded(props, clock.clone(), [3; 32]);
    v.create_key("k", KeySpec::Aes256).await.expect("create");
    v.delete_key("k").await.expect("delete");
    clock.advance(Duration::from_secs(89 * 86_400));
    assert_eq!(
        v.purge_key("k").await.expect_err("protected").kind(),
        ProviderErrorKind::Conflict
    );
    // A soft-deleted name cannot be reused.
    assert_eq!(
        v.create_key("k", KeySpec::Aes256)
            .await
            .expect_err("taken")
            .kind(),
        ProviderErrorKind::Conflict
    );
    clock.advance(Duration::from_secs(2 * 86_400));
    v.purge_key("k").await.expect("retention over");
    v.create_key("k", KeySpec::Aes256)
        .await
        .expect("name free again");
}

#[tokio::test]
async fn without_soft_delete_a_delete_is_final() {
    let props = VaultProperties::new("nosoft.example", "r", "t").protection(false, false);
    let v = InMemoryVault::new(props);
    let p = app(&v).await;
    v.create_key("k", KeySpec::Aes256).await.expect("create");
    let w = p
        .wrap_key("k", None, WrapAlgorithm::A256Kw, &[1; 32])
        .await
        .expect("wrap");
    v.delete_key("k").await.expect("delete");
    assert_eq!(
        p.unwrap_key(&w).await.expect_err("gone").kind(),
        ProviderErrorKind::KeyNotFound
    );
    assert_eq!(
        v.recover_key("k")
            .await
            .expect_err("nothing to recover")
            .kind(),
        ProviderErrorKind::KeyNotFound
    );
}

#[tokio::test]
async fn invalid_requests_are_typed() {
    let v = vault();
    let p = app(&v).await;
    v.create_key("aes", KeySpec::Aes256).await.expect("create");
    for (spec, what) in [(KeySpec::Rsa(1000), "odd RSA size")] {
        assert_eq!(
            v.create_key("x", spec).await.expect_err(what).kind(),
            ProviderErrorKind::InvalidRequest
        );
    }
    assert_eq!(
        v.create_key("bad_name", KeySpec::Aes256)
            .await
            .expect_err("name")
            .kind(),
        ProviderErrorKind::InvalidRequest
    );
    for len in [0usize, 7, 513] {
        assert_eq!(
            p.wrap_key("aes", None, WrapAlgorithm::A256Kw, &vec![1; len])
                .await
                .expect_err("length")
                .kind(),
            ProviderErrorKind::InvalidRequest,
            "{len}"
        );
    }
    assert_eq!(
        v.set_enabled("aes", "99", false)
            .await
            .expect_err("version")
            .kind(),
        ProviderErrorKind::KeyNotFound
    );
}

/// Renderings of `secret` that a leaking `Debug` would contain: the decimal list `{:?}` prints
/// for bytes, and lower- and upper-case hex (first 8 bytes of each are enough to be unique).
fn renderings(secret: &[u8]) -> Vec<String> {
    let head = &secret[..8];
    let hex: String = head.iter().map(|b| format!("{b:02x}")).collect();
    let list = format!("{head:?}");
    vec![
        list.trim_end_matches(']').to_owned(),
        hex.clone(),
        hex.to_uppercase(),
    ]
}

/// Debug output of the vault, its provider, key properties and every secret type holds no key
/// material: not the imported private key (any 16-character piece of its PEM body), not a key
/// the caller wrapped, not a secret string. A `Debug` that printed the vault's key map, an
/// `AesKey`'s bytes or a `SecretString`'s text fails this test.
#[tokio::test]
async fn debug_output_has_no_secrets() {
    let v = vault();
    let p = app(&v).await;
    let props = v.import_rsa_pem("imported", PKCS1).await.expect("import");
    let dek: Vec<u8> = (201..=232).collect();
    let wrapped = p
        .wrap_key("imported", None, WrapAlgorithm::RsaOaep256, &dek)
        .await
        .expect("wrap");
    let unwrapped = p.unwrap_key(&wrapped).await.expect("unwrap");
    assert_eq!(unwrapped.expose_secret(), &dek[..]);
    let aes = byok::AesKey::try_from_slice(&dek).expect("aes key");
    let secret = byok::SecretBytes::new(dek.clone());
    let passphrase = byok::SecretString::new("correct horse battery staple");
    let printed = format!(
        "{v:?} {p:?} {props:?} {wrapped:?} {unwrapped:?} {aes:?} {secret:?} {passphrase:?} {:?}",
        v.provider(&Identity::new("other"))
    );
    assert!(printed.contains("mem.vault.example"), "{printed}");
    let pem_body: String = PKCS1.lines().filter(|l| !l.starts_with("-----")).collect();
    for piece in pem_body.as_bytes().chunks(16).filter(|c| c.len() == 16) {
        let piece = std::str::from_utf8(piece).expect("base64 is ASCII");
        assert!(!printed.contains(piece), "PEM piece {piece} in {printed}");
    }
    for r in renderings(&dek) {
        assert!(!printed.contains(&r), "secret rendering {r} in {printed}");
    }
    assert!(!printed.contains("horse battery"), "{printed}");
}

/// Issue 16 item 5: key names are case-insensitive (as in Azure Key Vault and `KeyId`): `cmk`
/// and `CMK` are one key, reported in lower case.
#[tokio::test]
async fn key_names_are_case_insensitive() {
    let v = vault();
    let created = v.create_key("CMK", KeySpec::Aes256).await.expect("create");
    assert_eq!(created.name, "cmk");
    assert_eq!(
        v.create_key("cmk", KeySpec::Aes256)
            .await
            .expect_err("a second key by another case")
            .kind(),
        ProviderErrorKind::Conflict
    );
    let p = app(&v).await;
    let w = p
        .wrap_key("Cmk", None, WrapAlgorithm::A256Kw, &[9u8; 32])
        .await
        .expect("wrap through another case");
    assert_eq!(w.key_name, "cmk");
    assert_eq!(
        p.unwrap_key(&w).await.expect("unwrap").expose_secret(),
        &[9u8; 32]
    );
    let id = created.key_id().expect("key id");
    let upper: byok::KeyId = "https://V.EXAMPLE/keys/CMK/1".parse().expect("upper");
    assert_eq!(id.name(), upper.name());
}
