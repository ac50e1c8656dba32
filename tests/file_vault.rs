//! The file vault: conformance (also across two handles), reopen, permissions, unlock errors,
//! clean-up at open, corruption and tampering, and interop with OpenSSL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use async_trait::async_trait;
use byok::provider::file::{Argon2Params, FileVault, FileVaultOptions};
use byok::provider::{
    AdminCapabilities, Identity, KeyProperties, KeySpec, Permissions, ProviderFactory,
    VaultProperties, WrapAlgorithm, WrappedKey,
};
use byok::testing::provider_conformance as conformance;
use byok::{KeyProvider, ProviderError, ProviderErrorKind as K, SecretString, VaultAdmin};

/// Cheap Argon2id parameters: tests open vaults hundreds of times. The default (OWASP) set is
/// exercised by `default_parameters_are_owasp` and the doc example.
const TEST_KDF: Argon2Params = Argon2Params::new(64, 1, 1);

fn options() -> FileVaultOptions {
    FileVaultOptions::from_passphrase(SecretString::from("test passphrase")).argon2(TEST_KDF)
}

fn props(host: &str) -> VaultProperties {
    VaultProperties::new(host, "westeurope", "tenant-1")
}

/// A fresh directory path (not created) under the target's temporary directory.
fn fresh_dir(tag: &str) -> PathBuf {
    // Unique enough: pid, time and a counter.
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let base = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("file_vault");
    fs::create_dir_all(&base).unwrap();
    base.join(format!("{tag}-{}-{t}-{n}", std::process::id()))
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        }
        out.push(p);
    }
    out
}

fn key_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir.join("keys"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_with_purge_protection() {
    let dir = fresh_dir("conf");
    let vault = FileVault::create(&dir, props("conf.vault.example"), &options()).unwrap();
    let report = conformance::run(&vault).await;
    report.assert_passed();
    assert_eq!(report.passed(), report.scenarios.len(), "{report:?}");
    drop(vault);
    // Everything the suite did is still there and authenticates after a reopen.
    let again = FileVault::open(&dir, &options()).unwrap();
    assert_eq!(
        again
            .provider(&Identity::new("conformance-app"))
            .vault_properties()
            .await
            .unwrap()
            .host,
        "conf.vault.example"
    );
    fs::remove_dir_all(&dir).unwrap();
}

/// The owner changes the vault through one handle while the identities' providers come from
/// a second handle opened separately: every change must be seen by the other handle.
#[derive(Debug)]
struct TwoHandles {
    admin: FileVault,
    other: FileVault,
}

#[async_trait]
impl VaultAdmin for TwoHandles {
    fn capabilities(&self) -> AdminCapabilities {
        self.admin.capabilities()
    }
    async fn create_key(&self, n: &str, s: KeySpec) -> Result<KeyProperties, ProviderError> {
        self.admin.create_key(n, s).await
    }
    async fn import_rsa_pem(&self, n: &str, p: &str) -> Result<KeyProperties, ProviderError> {
        self.admin.import_rsa_pem(n, p).await
    }
    async fn rotate_key(&self, n: &str) -> Result<KeyProperties, ProviderError> {
        self.admin.rotate_key(n).await
    }
    async fn list_versions(&self, n: &str) -> Result<Vec<KeyProperties>, ProviderError> {
        self.other.list_versions(n).await
    }
    async fn set_enabled(&self, n: &str, v: &str, e: bool) -> Result<(), ProviderError> {
        self.admin.set_enabled(n, v, e).await
    }
    async fn delete_key(&self, n: &str) -> Result<(), ProviderError> {
        self.admin.delete_key(n).await
    }
    async fn recover_key(&self, n: &str) -> Result<(), ProviderError> {
        self.admin.recover_key(n).await
    }
    async fn purge_key(&self, n: &str) -> Result<(), ProviderError> {
        self.admin.purge_key(n).await
    }
    async fn set_access(&self, i: &Identity, p: Permissions) -> Result<(), ProviderError> {
        self.admin.set_access(i, p).await
    }
    async fn remove_identity(&self, i: &Identity) -> Result<(), ProviderError> {
        self.admin.remove_identity(i).await
    }
}

#[async_trait]
impl ProviderFactory for TwoHandles {
    async fn provider_for(&self, i: &Identity) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        self.other.provider_for(i).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_without_purge_protection_across_two_handles() {
    let dir = fresh_dir("conf2");
    let p = props("conf2.vault.example").protection(true, false);
    let admin = FileVault::create(&dir, p, &options()).unwrap();
    let other = FileVault::open(&dir, &options()).unwrap();
    let report = conformance::run(&TwoHandles { admin, other }).await;
    report.assert_passed();
    fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_keeps_everything() {
    let dir = fresh_dir("reopen");
    let vault = FileVault::create(&dir, props("Reopen.Vault.Example"), &options()).unwrap();
    let app = Identity::new("app");
    let wrap_only = Identity::new("wrap-only");
    vault.set_access(&app, Permissions::CMK).await.unwrap();
    vault
        .set_access(&wrap_only, Permissions::new(false, true, false))
        .await
        .unwrap();
    vault
        .set_access(&Identity::new("gone"), Permissions::CMK)
        .await
        .unwrap();
    vault.remove_identity(&Identity::new("gone")).await.unwrap();
    vault.create_key("rsa", KeySpec::Rsa(2048)).await.unwrap();
    vault.rotate_key("rsa").await.unwrap();
    vault.set_enabled("rsa", "1", false).await.unwrap();
    vault.create_key("aes", KeySpec::Aes256).await.unwrap();
    vault.create_key("ec", KeySpec::EcP256).await.unwrap();
    vault.create_key("deleted", KeySpec::Aes256).await.unwrap();
    vault.delete_key("deleted").await.unwrap();
    vault
        .create_key("recovered", KeySpec::Aes256)
        .await
        .unwrap();
    vault.delete_key("recovered").await.unwrap();
    vault.recover_key("recovered").await.unwrap();
    let p = vault.provider(&app);
    let w_rsa = p
        .wrap_key("rsa", None, WrapAlgorithm::RsaOaep256, &[1; 32])
        .await
        .unwrap();
    assert_eq!(w_rsa.key_version, "2");
    let w_aes = p
        .wrap_key("aes", None, WrapAlgorithm::A256Kw, &[2; 32])
        .await
        .unwrap();
    let w_rec = p
        .wrap_key("recovered", None, WrapAlgorithm::A256Kw, &[3; 32])
        .await
        .unwrap();
    let before: Vec<Vec<KeyProperties>> = {
        let mut v = Vec::new();
        for k in ["rsa", "aes", "ec", "recovered"] {
            v.push(vault.list_versions(k).await.unwrap());
        }
        v
    };
    let vp = p.vault_properties().await.unwrap();
    drop(p);
    drop(vault);

    let vault = FileVault::open(&dir, &options()).unwrap();
    let p = vault.provider(&app);
    assert_eq!(p.vault_properties().await.unwrap(), vp);
    for (k, old) in ["rsa", "aes", "ec", "recovered"].iter().zip(&before) {
        let new = vault.list_versions(k).await.unwrap();
        assert_eq!(new.len(), old.len(), "{k}");
        for (a, b) in new.iter().zip(old) {
            assert_eq!(a.version, b.version);
            assert_eq!(a.enabled, b.enabled);
            assert_eq!(a.key_type, b.key_type);
            assert_eq!(a.created, b.created);
            assert_eq!(a.operations, b.operations);
            assert_eq!(a.public_key, b.public_key);
        }
    }
    assert_eq!(
        p.unwrap_key(&w_rsa).await.unwrap().expose_secret(),
        &[1; 32]
    );
    assert_eq!(
        p.unwrap_key(&w_aes).await.unwrap().expose_secret(),
        &[2; 32]
    );
    assert_eq!(
        p.unwrap_key(&w_rec).await.unwrap().expose_secret(),
        &[3; 32]
    );
    assert_eq!(
        p.key_properties("rsa", None).await.unwrap().version,
        "2",
        "latest enabled"
    );
    assert_eq!(
        p.key_properties("deleted", None).await.unwrap_err().kind(),
        K::KeyDeleted
    );
    assert_eq!(
        vault
            .create_key("deleted", KeySpec::Aes256)
            .await
            .unwrap_err()
            .kind(),
        K::Conflict
    );
    let wp = vault.provider(&wrap_only);
    wp.wrap_key("aes", None, WrapAlgorithm::A256Kw, &[4; 32])
        .await
        .unwrap();
    assert_eq!(
        wp.unwrap_key(&w_aes).await.unwrap_err().kind(),
        K::Forbidden
    );
    let gone = vault.provider(&Identity::new("gone"));
    assert_eq!(
        gone.unwrap_key(&w_aes).await.unwrap_err().kind(),
        K::Forbidden
    );
    // The version counter survives too: the next rotation is version 3, not a reused number.
    assert_eq!(vault.rotate_key("rsa").await.unwrap().version, "3");
    fs::remove_dir_all(&dir).unwrap();
}

/// Deletion times are persisted: purge protection still holds after a reopen and ends with
/// the retention period, measured on the injected clock.
#[tokio::test]
async fn retention_survives_reopen() {
    let dir = fresh_dir("retention");
    let clock = byok::testing::ManualClock::default();
    let opts = options().clock(Arc::new(clock.clone()));
    let vault = FileVault::create(&dir, props("retention.example"), &opts).unwrap();
    vault.create_key("k", KeySpec::Aes256).await.unwrap();
    vault.delete_key("k").await.unwrap();
    drop(vault);
    clock.advance(std::time::Duration::from_secs(89 * 86_400));
    let vault = FileVault::open(&dir, &opts).unwrap();
    assert_eq!(vault.purge_key("k").await.unwrap_err().kind(), K::Conflict);
    clock.advance(std::time::Duration::from_secs(2 * 86_400));
    vault.purge_key("k").await.unwrap();
    assert!(key_files(&dir).is_empty(), "purged material is removed");
    drop(vault);
    let vault = FileVault::open(&dir, &opts).unwrap();
    assert_eq!(
        vault.recover_key("k").await.unwrap_err().kind(),
        K::KeyNotFound
    );
    // The name is free again and starts over at version 1 with a new key file.
    assert_eq!(
        vault
            .create_key("k", KeySpec::Aes256)
            .await
            .unwrap()
            .version,
        "1"
    );
    fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn files_are_private_from_creation() {
    let dir = fresh_dir("modes");
    let vault = FileVault::create(&dir, props("modes.example"), &options()).unwrap();
    vault.create_key("k", KeySpec::Aes256).await.unwrap();
    vault.rotate_key("k").await.unwrap();
    vault
        .set_access(&Identity::new("a"), Permissions::CMK)
        .await
        .unwrap();
    assert_eq!(mode(&dir), 0o700);
    let files = all_files(&dir);
    assert!(files.len() >= 5, "{files:?}");
    for f in files {
        let want = if f.is_dir() { 0o700 } else { 0o600 };
        assert_eq!(mode(&f), want, "{}", f.display());
    }
    fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn unlock_errors_are_typed() {
    let dir = fresh_dir("unlock");
    FileVault::create(&dir, props("unlock.example"), &options()).unwrap();
    let wrong = FileVaultOptions::from_passphrase(SecretString::from("not it")).argon2(TEST_KDF);
    let e = FileVault::open(&dir, &wrong).unwrap_err();
    assert_eq!(e.kind(), K::Forbidden, "{e}");
    assert!(e.message().contains("wrong passphrase"), "{e}");

    let key_file = fresh_dir("keyfile");
    fs::write(&key_file, [0x42u8; 32]).unwrap();
    let e = FileVault::open(&dir, &FileVaultOptions::from_key_file(&key_file)).unwrap_err();
    assert_eq!(e.kind(), K::Forbidden, "{e}");

    // A key-file vault: the right file opens it, another file or a passphrase does not.
    let kdir = fresh_dir("kfvault");
    let kopts = FileVaultOptions::from_key_file(&key_file);
    let v = FileVault::create(&kdir, props("kf.example"), &kopts).unwrap();
    v.create_key("k", KeySpec::Aes256).await.unwrap();
    drop(v);
    let v = FileVault::open(&kdir, &kopts).unwrap();
    assert_eq!(v.list_versions("k").await.unwrap().len(), 1);
    let other_key = fresh_dir("keyfile2");
    fs::write(&other_key, [0x43u8; 32]).unwrap();
    let e = FileVault::open(&kdir, &FileVaultOptions::from_key_file(&other_key)).unwrap_err();
    assert_eq!(e.kind(), K::Forbidden, "{e}");
    assert_eq!(
        FileVault::open(&kdir, &options()).unwrap_err().kind(),
        K::Forbidden
    );
    fs::write(&other_key, [0x43u8; 31]).unwrap();
    let e = FileVault::open(&kdir, &FileVaultOptions::from_key_file(&other_key)).unwrap_err();
    assert_eq!(e.kind(), K::InvalidRequest, "{e}");

    // Missing vault, occupied directory, empty passphrase, silly parameters.
    assert_eq!(
        FileVault::open(fresh_dir("missing"), &options())
            .unwrap_err()
            .kind(),
        K::VaultNotFound
    );
    assert_eq!(
        FileVault::create(&dir, props("x"), &options())
            .unwrap_err()
            .kind(),
        K::Conflict
    );
    let empty = FileVaultOptions::from_passphrase(SecretString::from("")).argon2(TEST_KDF);
    assert_eq!(
        FileVault::create(fresh_dir("empty"), props("x"), &empty)
            .unwrap_err()
            .kind(),
        K::InvalidRequest
    );
    let silly = options().argon2(Argon2Params::new(4, 0, 1));
    assert_eq!(
        FileVault::create(fresh_dir("silly"), props("x"), &silly)
            .unwrap_err()
            .kind(),
        K::InvalidRequest
    );
    for d in [&dir, &kdir] {
        fs::remove_dir_all(d).unwrap();
    }
    for f in [&key_file, &other_key] {
        fs::remove_file(f).unwrap();
    }
}

#[test]
fn default_parameters_are_owasp() {
    assert_eq!(Argon2Params::default(), Argon2Params::new(19 * 1024, 2, 1));
    assert_eq!(Argon2Params::OWASP, Argon2Params::default());
    // One real open with the default parameters: the vault stores and reuses them.
    let dir = fresh_dir("owasp");
    let opts = FileVaultOptions::from_passphrase(SecretString::from("pass"));
    FileVault::create(&dir, props("owasp.example"), &opts).unwrap();
    let t = std::time::Instant::now();
    FileVault::open(&dir, &opts).unwrap();
    eprintln!("open with OWASP Argon2id parameters took {:?}", t.elapsed());
    // Opening with other (cheap) parameters in the options still uses the stored ones: a
    // wrong derivation would fail the check value.
    FileVault::open(&dir, &opts.clone().argon2(TEST_KDF)).unwrap();
    fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn open_removes_temporary_and_orphaned_files_only() {
    let dir = fresh_dir("cleanup");
    let vault = FileVault::create(&dir, props("cleanup.example"), &options()).unwrap();
    vault.create_key("k", KeySpec::Aes256).await.unwrap();
    drop(vault);
    let keep = key_files(&dir);
    assert_eq!(keep.len(), 1);
    fs::write(dir.join(".tmp-0011223344556677"), b"half a state").unwrap();
    fs::write(dir.join("keys/.tmp-8899aabbccddeeff"), b"half a key").unwrap();
    let orphan = dir.join("keys/00112233445566778899aabbccddeeff.key");
    fs::write(&orphan, b"a version whose commit never happened").unwrap();
    fs::write(dir.join("keys/README"), b"not ours").unwrap();
    let vault = FileVault::open(&dir, &options()).unwrap();
    assert!(!dir.join(".tmp-0011223344556677").exists());
    assert!(!dir.join("keys/.tmp-8899aabbccddeeff").exists());
    assert!(!orphan.exists());
    assert!(
        dir.join("keys/README").exists(),
        "unknown files are left alone"
    );
    assert!(keep[0].exists());
    assert_eq!(vault.list_versions("k").await.unwrap().len(), 1);
    fs::remove_dir_all(&dir).unwrap();
}

/// A vault with a few keys and policies, closed; returns its directory and the key files.
async fn sample_vault(tag: &str) -> (PathBuf, Vec<PathBuf>) {
    let dir = fresh_dir(tag);
    let vault = FileVault::create(&dir, props("tamper.example"), &options()).unwrap();
    vault.create_key("a", KeySpec::Aes256).await.unwrap();
    vault.create_key("b", KeySpec::Aes256).await.unwrap();
    vault.rotate_key("b").await.unwrap();
    vault
        .set_access(&Identity::new("app"), Permissions::CMK)
        .await
        .unwrap();
    let files = key_files(&dir);
    assert_eq!(files.len(), 3);
    (dir, files)
}

fn expect_corrupted(dir: &Path, file: &Path, what: &str) {
    let before = fs::read(file).ok();
    let e = FileVault::open(dir, &options()).expect_err(what);
    assert_eq!(e.kind(), K::Corrupted, "{what}: {e}");
    let shown = file.strip_prefix(dir).unwrap().display().to_string();
    assert!(
        e.message().contains(&shown),
        "{what}: {e} does not name {shown}"
    );
    // Nothing was repaired or removed.
    assert_eq!(fs::read(file).ok(), before, "{what}: the file was touched");
}

#[tokio::test]
async fn corrupted_state_is_detected_and_named() {
    let (dir, _) = sample_vault("state").await;
    let state = dir.join("state");
    let good = fs::read(&state).unwrap();
    let n = good.len();
    for cut in [0, 5, 29, 30, n / 2, n - 16, n - 1] {
        fs::write(&state, &good[..cut]).unwrap();
        expect_corrupted(&dir, &state, &format!("state truncated to {cut}"));
    }
    fs::write(&state, [&good[..], b"\n"].concat()).unwrap();
    expect_corrupted(&dir, &state, "state with a byte appended");
    for pos in [0, 11, 17, 20, 31, n / 2, n - 1] {
        let mut b = good.clone();
        b[pos] ^= 0x10;
        fs::write(&state, &b).unwrap();
        expect_corrupted(&dir, &state, &format!("state with byte {pos} flipped"));
    }
    // The format version field is checked before authentication: a newer version is
    // "unsupported", not garbage.
    let mut b = good.clone();
    b[9] = 2;
    fs::write(&state, &b).unwrap();
    assert_eq!(
        FileVault::open(&dir, &options()).unwrap_err().kind(),
        K::Unsupported
    );
    fs::remove_file(&state).unwrap();
    expect_corrupted(&dir, &state, "state missing");
    // The untouched state opens again.
    fs::write(&state, &good).unwrap();
    FileVault::open(&dir, &options()).unwrap();
    fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn corrupted_key_files_are_detected_and_named() {
    let (dir, files) = sample_vault("keys").await;
    let f = &files[0];
    let good = fs::read(f).unwrap();
    for cut in [0, 10, good.len() / 2, good.len() - 1] {
        fs::write(f, &good[..cut]).unwrap();
        expect_corrupted(&dir, f, &format!("key file truncated to {cut}"));
    }
    for pos in [0, 12, 25, good.len() / 2, good.len() - 1] {
        let mut b = good.clone();
        b[pos] ^= 1;
        fs::write(f, &b).unwrap();
        expect_corrupted(&dir, f, &format!("key file byte {pos} flipped"));
    }
    // Another valid key file under this one's name: bound to its own name, it fails.
    fs::copy(&files[1], f).unwrap();
    expect_corrupted(&dir, f, "key file swapped for another");
    fs::remove_file(f).unwrap();
    expect_corrupted(&dir, f, "key file missing");
    fs::write(f, &good).unwrap();
    FileVault::open(&dir, &options()).unwrap();
    // A key file from another vault (same passphrase, different vault id) is refused too.
    let (other, other_files) = sample_vault("keys-other").await;
    fs::copy(&other_files[0], f).unwrap();
    expect_corrupted(&dir, f, "key file from another vault");
    fs::write(f, &good).unwrap();
    for d in [&dir, &other] {
        fs::remove_dir_all(d).unwrap();
    }
}

#[tokio::test]
async fn corrupted_meta_is_told_apart_from_a_wrong_passphrase() {
    let (dir, _) = sample_vault("meta").await;
    let meta = dir.join("vault.meta");
    let good = fs::read(&meta).unwrap();
    for pos in [0, 12, 20, 40, 60, good.len() - 40] {
        let mut b = good.clone();
        b[pos] ^= 4;
        fs::write(&meta, &b).unwrap();
        expect_corrupted(&dir, &meta, &format!("vault.meta byte {pos} flipped"));
    }
    fs::write(&meta, &good[..good.len() - 1]).unwrap();
    expect_corrupted(&dir, &meta, "vault.meta truncated");
    // Damage to the check value itself cannot be told from a wrong passphrase: refused.
    let mut b = good.clone();
    let last = b.len() - 1;
    b[last] ^= 1;
    fs::write(&meta, &b).unwrap();
    assert_eq!(
        FileVault::open(&dir, &options()).unwrap_err().kind(),
        K::Forbidden
    );
    fs::write(&meta, &good).unwrap();
    FileVault::open(&dir, &options()).unwrap();
    fs::remove_dir_all(&dir).unwrap();
}

/// An open handle that finds the state replaced by damaged or older bytes reports it on its
/// next call and keeps refusing; it never serves a silently repaired state.
#[tokio::test]
async fn an_open_handle_detects_tampering_and_rollback() {
    let (dir, _) = sample_vault("live").await;
    let vault = FileVault::open(&dir, &options()).unwrap();
    let app = vault.provider(&Identity::new("app"));
    let w = app
        .wrap_key("a", None, WrapAlgorithm::A256Kw, &[9; 32])
        .await
        .unwrap();
    let state = dir.join("state");
    let old = fs::read(&state).unwrap();
    vault
        .set_access(&Identity::new("new"), Permissions::CMK)
        .await
        .unwrap();
    let current = fs::read(&state).unwrap();
    // Rollback: the older (valid) state put back as a new file.
    let replace = |bytes: &[u8]| {
        let tmp = dir.join("replacement");
        fs::write(&tmp, bytes).unwrap();
        fs::rename(&tmp, &state).unwrap();
    };
    replace(&old);
    let e = app.unwrap_key(&w).await.unwrap_err();
    assert_eq!(e.kind(), K::Corrupted, "{e}");
    assert!(e.message().contains("older copy"), "{e}");
    let mut bad = current.clone();
    bad[40] ^= 1;
    replace(&bad);
    let e = app.unwrap_key(&w).await.unwrap_err();
    assert_eq!(e.kind(), K::Corrupted, "{e}");
    let e = vault.rotate_key("a").await.unwrap_err();
    assert_eq!(e.kind(), K::Corrupted, "{e}");
    assert_eq!(
        fs::read(&state).unwrap(),
        bad,
        "a writer must not overwrite it"
    );
    replace(&current);
    assert_eq!(app.unwrap_key(&w).await.unwrap().expose_secret(), &[9; 32]);
    fs::remove_dir_all(&dir).unwrap();
}

/// Two handles in one process rotating the same key from several threads: every rotation
/// gets its own version, none is lost.
#[test]
fn concurrent_rotations_from_two_handles_get_distinct_versions() {
    let dir = fresh_dir("threads");
    let a = FileVault::create(&dir, props("threads.example"), &options()).unwrap();
    let b = FileVault::open(&dir, &options()).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(a.create_key("k", KeySpec::Aes256)).unwrap();
    let per_thread = 8;
    let handles: Vec<_> = [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .map(|v| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                (0..per_thread)
                    .map(|_| rt.block_on(v.rotate_key("k")).unwrap().version)
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut got: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .map(|v| v.parse().unwrap())
        .collect();
    got.sort_unstable();
    let want: Vec<u64> = (2..=1 + 4 * per_thread).collect();
    assert_eq!(got, want);
    for v in [&a, &b] {
        assert_eq!(
            rt.block_on(v.list_versions("k")).unwrap().len(),
            1 + 4 * per_thread as usize
        );
    }
    fs::remove_dir_all(&dir).unwrap();
}

fn openssl_available() -> bool {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "openssl is required under CI=true"
        );
        eprintln!(
            "\n======== SKIP: `openssl` not found: the OpenSSL interop test did NOT run ========\n"
        );
    }
    ok
}

fn openssl(args: &[&str]) {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn openssl_keys_import_and_openssl_wrapped_keys_unwrap() {
    if !openssl_available() {
        return;
    }
    let work = fresh_dir("openssl-work");
    fs::create_dir_all(&work).unwrap();
    let s = |name: &str| work.join(name).to_str().unwrap().to_owned();
    let dir = fresh_dir("openssl");
    let vault = FileVault::create(&dir, props("interop.example"), &options()).unwrap();
    let app = Identity::new("app");
    vault.set_access(&app, Permissions::CMK).await.unwrap();
    let secret = [0x3cu8; 32];
    fs::write(work.join("secret.bin"), secret).unwrap();
    let mut wrapped = Vec::new();
    // PKCS#8 (what OpenSSL 3 writes by default) and PKCS#1 (`-traditional`).
    for (name, extra) in [("pkcs8", &[][..]), ("pkcs1", &["-traditional"][..])] {
        let key = s(&format!("{name}.pem"));
        let mut args = vec!["genrsa", "-out", &key];
        args.extend_from_slice(extra);
        args.push("2048");
        openssl(&args);
        let pub_pem = s(&format!("{name}.pub.pem"));
        openssl(&["rsa", "-in", &key, "-pubout", "-out", &pub_pem]);
        let out = s(&format!("{name}.wrapped"));
        openssl(&[
            "pkeyutl",
            "-encrypt",
            "-pubin",
            "-inkey",
            &pub_pem,
            "-in",
            &s("secret.bin"),
            "-out",
            &out,
            "-pkeyopt",
            "rsa_padding_mode:oaep",
            "-pkeyopt",
            "rsa_oaep_md:sha256",
            "-pkeyopt",
            "rsa_mgf1_md:sha256",
        ]);
        let pem = fs::read_to_string(&key).unwrap();
        let props = vault.import_rsa_pem(name, &pem).await.unwrap();
        assert_eq!(props.key_type, byok::provider::KeyType::Rsa { bits: 2048 });
        let public =
            byok::provider::RsaPublic::from_pem(&fs::read_to_string(&pub_pem).unwrap()).unwrap();
        assert_eq!(props.public_key.as_ref(), Some(&public), "{name}");
        let w = WrappedKey::new(
            name.to_owned(),
            props.version.clone(),
            WrapAlgorithm::RsaOaep256,
            fs::read(&out).unwrap(),
        );
        let got = vault.provider(&app).unwrap_key(&w).await.unwrap();
        assert_eq!(got.expose_secret(), &secret, "{name}");
        wrapped.push(w);
    }
    drop(vault);
    // The imported keys were sealed to disk: they still unwrap after a reopen.
    let vault = FileVault::open(&dir, &options()).unwrap();
    for w in &wrapped {
        let got = vault.provider(&app).unwrap_key(w).await.unwrap();
        assert_eq!(got.expose_secret(), &secret);
    }
    // And the private key is nowhere on disk in the clear: no 32-byte window of its DER
    // encoding (private exponent, primes) appears in any vault file.
    let der_path = s("pkcs8.der");
    openssl(&[
        "pkey",
        "-in",
        &s("pkcs8.pem"),
        "-outform",
        "DER",
        "-out",
        &der_path,
    ]);
    let der = fs::read(&der_path).unwrap();
    let tail = &der[der.len() - 64..der.len() - 32];
    for f in all_files(&dir) {
        if f.is_file() {
            let bytes = fs::read(&f).unwrap();
            assert!(
                !bytes.windows(tail.len()).any(|w| w == tail),
                "{}",
                f.display()
            );
        }
    }
    fs::remove_dir_all(&dir).unwrap();
    fs::remove_dir_all(&work).unwrap();
}

/// Issue 16 item 6: "no vault here" is `VaultNotFound`; a vault with an entry missing is
/// `Corrupted` naming that entry (never the transient `Unavailable`, which callers retry).
#[tokio::test]
async fn missing_entries_are_corrupted_and_named() {
    let e = FileVault::open(fresh_dir("nothing"), &options()).unwrap_err();
    assert_eq!(e.kind(), K::VaultNotFound, "{e}");
    let empty = fresh_dir("empty-dir");
    fs::create_dir(&empty).unwrap();
    let e = FileVault::open(&empty, &options()).unwrap_err();
    assert_eq!(e.kind(), K::VaultNotFound, "{e}");
    assert!(e.message().contains("vault.meta"), "{e}");

    for entry in ["vault.meta", "state", "lock", "keys"] {
        let (dir, _) = sample_vault(&format!("missing-{entry}")).await;
        let p = dir.join(entry);
        if p.is_dir() {
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
        expect_corrupted(&dir, &p, &format!("{entry} removed"));
        fs::remove_dir_all(&dir).unwrap();
    }

    // Removed under an open handle: the next change names keys/, still not transient.
    let (dir, _) = sample_vault("missing-keys-open").await;
    let v = FileVault::open(&dir, &options()).unwrap();
    fs::remove_dir_all(dir.join("keys")).unwrap();
    let e = v.create_key("c", KeySpec::Aes256).await.unwrap_err();
    assert_eq!(e.kind(), K::Corrupted, "{e}");
    assert!(e.message().contains("keys"), "{e}");
    // Issue 17: the file system's error is kept as the cause, not flattened to text.
    let cause = std::error::Error::source(&e).expect("the I/O error is the source");
    assert_eq!(
        cause.downcast_ref::<std::io::Error>().map(|io| io.kind()),
        Some(std::io::ErrorKind::NotFound),
        "{cause:?}"
    );
    let wrapped = byok::Error::from(e);
    assert!(std::error::Error::source(&wrapped).is_some_and(|c| c.is::<std::io::Error>()));
    fs::remove_dir_all(&dir).unwrap();
}

/// Issue 16 item 6: a `vault.meta` copied from another vault (same passphrase) is reported
/// against `vault.meta`, not against the state.
#[tokio::test]
async fn a_meta_from_another_vault_is_named() {
    let (a, _) = sample_vault("meta-a").await;
    let (b, _) = sample_vault("meta-b").await;
    fs::copy(b.join("vault.meta"), a.join("vault.meta")).unwrap();
    let e = FileVault::open(&a, &options()).unwrap_err();
    assert_eq!(e.kind(), K::Corrupted, "{e}");
    assert!(e.message().contains("vault.meta"), "{e}");
    assert!(e.message().contains("another vault"), "{e}");
    // A state from another vault, with the right vault.meta, is still the state's fault.
    let (c, _) = sample_vault("meta-c").await;
    fs::copy(b.join("state"), c.join("state")).unwrap();
    expect_corrupted(&c, &c.join("state"), "state from another vault");
    for d in [&a, &b, &c] {
        fs::remove_dir_all(d).unwrap();
    }
}

/// Issue 16 item 7: strings the format cannot hold (a `u16` length) are refused at the API,
/// never truncated (mid-character) into a vault that then fails to open.
#[tokio::test]
async fn overlong_strings_are_refused_not_truncated() {
    let long = "é".repeat(40_000); // 80 000 bytes, 2-byte characters
    for (what, p) in [
        ("region", VaultProperties::new("long.example", &long, "t")),
        ("tenant", VaultProperties::new("long.example", "r", &long)),
    ] {
        let dir = fresh_dir("long");
        let e = FileVault::create(&dir, p, &options()).unwrap_err();
        assert_eq!(e.kind(), K::InvalidRequest, "{what}: {e}");
        assert!(e.message().contains("65535"), "{what}: {e}");
        assert!(!dir.exists(), "{what}: nothing is created");
    }
    let dir = fresh_dir("long-identity");
    let v = FileVault::create(&dir, props("long.example"), &options()).unwrap();
    let e = v
        .set_access(&Identity::new(&long), Permissions::CMK)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), K::InvalidRequest, "{e}");
    assert!(e.message().contains("identity name"), "{e}");
    // Exactly the limit is stored and reads back whole.
    let max = "a".repeat(65_535);
    v.set_access(&Identity::new(&max), Permissions::CMK)
        .await
        .unwrap();
    drop(v);
    let v = FileVault::open(&dir, &options()).unwrap();
    v.create_key("k", KeySpec::Aes256).await.unwrap();
    v.provider(&Identity::new(&max))
        .wrap_key("k", None, WrapAlgorithm::A256Kw, &[1u8; 32])
        .await
        .unwrap();
    fs::remove_dir_all(&dir).unwrap();
}

/// Issue 16 item 8: a vault another user could have tampered with is refused with a clear
/// error naming the entry: symbolic links (lock, state, meta, key files, keys/), entries owned
/// by another uid, group- or world-writable entries, oversized key files. Tests run as root
/// here, so ownership is exercised with `chown` to another uid.
#[tokio::test]
async fn tamperable_vaults_are_refused() {
    use std::os::unix::fs::{chown, symlink};
    let check = |dir: &Path, entry: &Path, what: &str, needle: &str| {
        let e = FileVault::open(dir, &options()).expect_err(what);
        assert_eq!(e.kind(), K::Corrupted, "{what}: {e}");
        let shown = entry.strip_prefix(dir).unwrap().display().to_string();
        assert!(
            e.message().contains(&shown),
            "{what}: {e} does not name {shown}"
        );
        assert!(
            e.message().contains(needle),
            "{what}: {e} does not say {needle:?}"
        );
    };
    let other_uid = 4242;

    // Symbolic links, each pointing at a faithful copy: refused for what they are.
    for entry in ["lock", "state", "vault.meta", "KEY"] {
        let (dir, keys) = sample_vault(&format!("link-{entry}")).await;
        let p = if entry == "KEY" {
            keys[0].clone()
        } else {
            dir.join(entry)
        };
        let copy = dir.with_extension(format!("copy-{}", entry.replace('.', "-")));
        fs::copy(&p, &copy).unwrap();
        fs::remove_file(&p).unwrap();
        symlink(&copy, &p).unwrap();
        check(&dir, &p, &format!("{entry} as a symlink"), "symbolic link");
        fs::remove_file(&copy).unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }
    let (dir, _) = sample_vault("link-keys").await;
    let moved = dir.with_extension("keys-elsewhere");
    fs::rename(dir.join("keys"), &moved).unwrap();
    symlink(&moved, dir.join("keys")).unwrap();
    check(
        &dir,
        &dir.join("keys"),
        "keys/ as a symlink",
        "symbolic link",
    );
    fs::remove_dir_all(&moved).unwrap();
    fs::remove_dir_all(&dir).unwrap();

    // Another owner, for every kind of entry.
    for entry in ["vault.meta", "state", "lock", "keys", "KEY"] {
        let (dir, keys) = sample_vault(&format!("owner-{entry}")).await;
        let p = if entry == "KEY" {
            keys[0].clone()
        } else {
            dir.join(entry)
        };
        chown(&p, Some(other_uid), None).unwrap();
        check(
            &dir,
            &p,
            &format!("{entry} owned by another uid"),
            "uid 4242",
        );
        chown(&p, Some(0), None).unwrap();
        FileVault::open(&dir, &options()).expect("restored ownership opens");
        fs::remove_dir_all(&dir).unwrap();
    }
    let (dir, _) = sample_vault("owner-dir").await;
    chown(&dir, Some(other_uid), None).unwrap();
    let e = FileVault::open(&dir, &options()).unwrap_err();
    assert_eq!(e.kind(), K::Corrupted, "{e}");
    assert!(e.message().contains("uid 4242"), "{e}");
    chown(&dir, Some(0), None).unwrap();
    fs::remove_dir_all(&dir).unwrap();

    // Group- or world-writable entries and directory.
    for (entry, m) in [
        ("state", 0o620),
        ("vault.meta", 0o606),
        ("keys", 0o770),
        ("", 0o777),
    ] {
        let (dir, _) = sample_vault("writable").await;
        let p = if entry.is_empty() {
            dir.clone()
        } else {
            dir.join(entry)
        };
        fs::set_permissions(&p, fs::Permissions::from_mode(m)).unwrap();
        let e = FileVault::open(&dir, &options()).unwrap_err();
        assert_eq!(e.kind(), K::Corrupted, "{entry} {m:o}: {e}");
        assert!(e.message().contains("writable"), "{entry} {m:o}: {e}");
        fs::set_permissions(
            &p,
            fs::Permissions::from_mode(if p.is_dir() { 0o700 } else { 0o600 }),
        )
        .unwrap();
        FileVault::open(&dir, &options()).expect("restored mode opens");
        fs::remove_dir_all(&dir).unwrap();
    }

    // A key file far larger than any key version is refused before it is read.
    let (dir, keys) = sample_vault("big-key").await;
    let f = fs::OpenOptions::new().append(true).open(&keys[0]).unwrap();
    f.set_len(2 << 20).unwrap();
    check(&dir, &keys[0], "a 2 MiB key file", "larger");
    fs::remove_dir_all(&dir).unwrap();
}
