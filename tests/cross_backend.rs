//! What one crypto backend writes, the other reads: objects, sealed fields, wrapped keys and
//! file vaults.
//!
//! `tests/data/cross_backend/<backend>/` holds fixtures written once by each backend
//! (`rustcrypto`: the default build; `aws-lc`: `--features aws-lc`), by this test with
//! `BYOK_WRITE_FIXTURES=1`. Every run of the suite — CI runs it once per backend — opens both
//! sets with the backend it was built with, so each backend reads the other's output:
//! - `object.bin`, `field.bin`: an envelope object and a sealed field under a fixed account
//!   key;
//! - `vault/`: a file vault (passphrase, small Argon2id parameters) holding an imported
//!   RSA-2048 key (`tests/data/keys/rsa2048-pkcs1.pem`), an RSA-2048 key the backend
//!   generated (stored as PKCS#8 by that backend) and an AES-256 key;
//! - `wrapped.json`: a 32-byte key wrapped under each of those keys (RSA-OAEP-256, RSA-OAEP
//!   with SHA-1, AES key wrap), unwrapped here through the vault.
//!
//! The envelope's older golden files (`tests/envelope_golden.rs`) were written by the
//! RustCrypto backend and are read by both runs too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use byok::envelope::{AccountKey, PreparedKey};
use byok::provider::file::{Argon2Params, FileVault, FileVaultOptions};
use byok::provider::{Identity, KeySpec, Permissions, VaultProperties, WrapAlgorithm, WrappedKey};
use byok::{AesKey, Envelope, KeyProvider, SecretString, VaultAdmin};

const BACKENDS: [&str; 2] = ["rustcrypto", "aws-lc"];
const PLAINTEXT: &[u8] = b"written by one crypto backend, read by the other";
const DATA_KEY: [u8; 32] = [0x11; 32];

fn fixture_dir(backend: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/cross_backend")
        .join(backend)
}

fn account_key() -> PreparedKey {
    let key = AccountKey::new("xb-key", 3, AesKey::from_bytes([0x5a; 32])).unwrap();
    PreparedKey::new("xb-account", &key).unwrap()
}

fn options() -> FileVaultOptions {
    FileVaultOptions::from_passphrase(SecretString::from("cross-backend fixture"))
        .argon2(Argon2Params::new(64, 1, 1))
}

fn app() -> Identity {
    Identity::new("xb-app")
}

/// A private copy of a fixture vault with the modes the file vault insists on (git keeps
/// neither the owner nor 0700/0600).
fn copy_vault(from: &Path, tag: &str) -> PathBuf {
    fn copy(from: &Path, to: &Path) {
        fs::create_dir_all(to).unwrap();
        fs::set_permissions(to, fs::Permissions::from_mode(0o700)).unwrap();
        for e in fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            let dst = to.join(e.file_name());
            if e.file_type().unwrap().is_dir() {
                copy(&e.path(), &dst);
            } else {
                fs::copy(e.path(), &dst).unwrap();
                fs::set_permissions(&dst, fs::Permissions::from_mode(0o600)).unwrap();
            }
        }
    }
    let to = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join("cross_backend")
        .join(format!("{tag}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&to);
    copy(from, &to);
    to
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
}

/// Writes this backend's fixtures (run once per backend with `BYOK_WRITE_FIXTURES=1`).
fn write_fixtures() {
    let dir = fixture_dir(byok::CRYPTO_BACKEND);
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    let key = account_key();
    fs::write(
        dir.join("object.bin"),
        Envelope::new(&key).seal(b"xb", PLAINTEXT).unwrap(),
    )
    .unwrap();
    fs::write(
        dir.join("field.bin"),
        key.seal_field(b"xb/field", PLAINTEXT).unwrap(),
    )
    .unwrap();

    let vault_dir = dir.join("vault");
    rt().block_on(async {
        let vault = FileVault::create(
            &vault_dir,
            VaultProperties::new("xb.vault.example", "westeurope", "xb"),
            &options(),
        )
        .unwrap();
        let pem = fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/keys/rsa2048-pkcs1.pem"),
        )
        .unwrap();
        vault.import_rsa_pem("imported", &pem).await.unwrap();
        vault
            .create_key("generated", KeySpec::Rsa(2048))
            .await
            .unwrap();
        vault.create_key("aes", KeySpec::Aes256).await.unwrap();
        vault.set_access(&app(), Permissions::CMK).await.unwrap();
        let p = vault.provider(&app());
        let mut wrapped = Vec::new();
        for (name, alg) in [
            ("imported", WrapAlgorithm::RsaOaep256),
            ("imported", WrapAlgorithm::RsaOaep),
            ("generated", WrapAlgorithm::RsaOaep256),
            ("aes", WrapAlgorithm::A256Kw),
        ] {
            wrapped.push(p.wrap_key(name, None, alg, &DATA_KEY).await.unwrap());
        }
        fs::write(
            dir.join("wrapped.json"),
            serde_json::to_string_pretty(&wrapped).unwrap(),
        )
        .unwrap();
    });
    println!("wrote {}", dir.display());
}

fn check_fixtures(writer: &str) {
    let dir = fixture_dir(writer);
    assert!(
        dir.join("object.bin").exists(),
        "fixtures of the {writer} backend are missing: run this test with \
         BYOK_WRITE_FIXTURES=1 under that backend"
    );
    let key = account_key();
    let object = fs::read(dir.join("object.bin")).unwrap();
    assert_eq!(Envelope::new(&key).open(b"xb", &object).unwrap(), PLAINTEXT);
    let field = fs::read(dir.join("field.bin")).unwrap();
    assert_eq!(key.open_field(b"xb/field", &field).unwrap(), PLAINTEXT);

    let wrapped: Vec<WrappedKey> =
        serde_json::from_str(&fs::read_to_string(dir.join("wrapped.json")).unwrap()).unwrap();
    assert_eq!(wrapped.len(), 4);
    let copy = copy_vault(&dir.join("vault"), writer);
    rt().block_on(async {
        let vault = FileVault::open(&copy, &options()).unwrap();
        let p = vault.provider(&app());
        for w in &wrapped {
            let k = p
                .unwrap_key(w)
                .await
                .unwrap_or_else(|e| panic!("{writer} {} {:?}: {e}", w.key_name, w.algorithm));
            assert_eq!(
                k.expose_secret(),
                &DATA_KEY,
                "{} {:?}",
                w.key_name,
                w.algorithm
            );
        }
        // The keys also work the other way: wrapped here, unwrapped here.
        for name in ["imported", "generated"] {
            let props = p.key_properties(name, None).await.unwrap();
            assert_eq!(props.key_type, byok::provider::KeyType::Rsa { bits: 2048 });
            let w = p
                .wrap_key(name, None, WrapAlgorithm::RsaOaep256, &DATA_KEY)
                .await
                .unwrap();
            assert_eq!(p.unwrap_key(&w).await.unwrap().expose_secret(), &DATA_KEY);
        }
    });
    fs::remove_dir_all(&copy).unwrap();
    println!(
        "cross_backend: {} backend read the {writer} backend's fixtures",
        byok::CRYPTO_BACKEND
    );
}

#[test]
fn each_backend_reads_what_either_backend_wrote() {
    if std::env::var("BYOK_WRITE_FIXTURES").as_deref() == Ok("1") {
        write_fixtures();
    }
    for writer in BACKENDS {
        check_fixtures(writer);
    }
}
