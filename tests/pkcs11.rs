//! The PKCS#11 provider against a real SoftHSM2 token.
//!
//! The token is set up by the tests themselves: the first test to need it runs
//! `scripts/softhsm-env.sh --print-env` with a private directory for this test binary
//! (`target/softhsm-tests-pkcs11`), which installs SoftHSM2 if missing and initialises a
//! throwaway token. SoftHSM reads `SOFTHSM2_CONF` from the process environment when the module
//! is initialised, and setting the environment in-process is `unsafe` (forbidden in this
//! crate), so the test binary then re-executes itself once with the variables set and exits
//! with the child's status. When the variables are already set (`source
//! scripts/softhsm-env.sh` in CI), the tests use them directly.
//!
//! There is no skip: a missing token is a failure, under `CI=true` or not.

use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use byok::provider::pkcs11::{Pkcs11Config, Pkcs11Provider};
use byok::provider::{KeySpec, OaepHash, RsaPublic, WrapAlgorithm, WrappedKey};
use byok::testing::provider_conformance::{self as conformance, Outcome};
use byok::{KeyProvider, ProviderErrorKind as K, SecretString, VaultAdmin};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as P11Error, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;

/// The second token, used only by the wrong-PIN test (so its first login is really checked
/// by `C_Login`, not answered with "already logged in").
const PIN_TOKEN: &str = "byok-pin-test";
/// The third token, used only by the test of a login made by another component.
const FOREIGN_TOKEN: &str = "byok-foreign-login";
const MARKER: &str = "BYOK_PKCS11_TEST_CHILD";

struct Fixture {
    module: PathBuf,
    label: String,
    pin: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let have = |n: &str| std::env::var_os(n).is_some_and(|v| !v.is_empty());
        let all_set = [
            "SOFTHSM2_CONF",
            "BYOK_PKCS11_MODULE",
            "BYOK_PKCS11_TOKEN_LABEL",
            "BYOK_PKCS11_PIN",
        ]
        .iter()
        .all(|n| have(n));
        if !all_set {
            if have(MARKER) {
                panic!("re-executed test binary still lacks the SoftHSM2 variables");
            }
            reexec_with_token();
        }
        let var = |n: &str| std::env::var(n).unwrap_or_default();
        ensure_token(&var("SOFTHSM2_CONF"), PIN_TOKEN);
        ensure_token(&var("SOFTHSM2_CONF"), FOREIGN_TOKEN);
        Fixture {
            module: var("BYOK_PKCS11_MODULE").into(),
            label: var("BYOK_PKCS11_TOKEN_LABEL"),
            pin: var("BYOK_PKCS11_PIN"),
        }
    })
}

/// Sets up a fresh private token, runs this test binary again with its variables, and exits
/// with the child's status.
fn reexec_with_token() -> ! {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target").join("softhsm-tests-pkcs11");
    // A throwaway token per run: objects from earlier runs would only slow the searches.
    let _ = std::fs::remove_dir_all(dir.join("tokens"));
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(root.join("scripts/softhsm-env.sh"))
        .arg("--print-env")
        .env("BYOK_SOFTHSM_DIR", &dir)
        .current_dir(&root)
        .output()
        .expect("cannot run bash scripts/softhsm-env.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "SoftHSM2 token setup failed (CI={:?}); a missing token is a failure, never a skip:\n{stderr}",
        std::env::var("CI").ok()
    );
    let mut vars = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) {
            // `printf %q` escapes with backslashes; our paths and values are plain.
            vars.push((k.to_owned(), v.replace('\\', "")));
        }
    }
    assert_eq!(
        vars.len(),
        4,
        "unexpected output of softhsm-env.sh: {vars:?}"
    );
    eprintln!(
        "{} ({} ms); re-running the tests with SOFTHSM2_CONF set",
        stderr.trim(),
        started.elapsed().as_millis()
    );
    let status = Command::new(std::env::current_exe().expect("current_exe"))
        .args(std::env::args_os().skip(1))
        .envs(vars)
        .env(MARKER, "1")
        .status()
        .expect("cannot re-run the test binary");
    std::process::exit(status.code().unwrap_or(1));
}

/// Creates the token `label` (PIN 5678) unless it exists.
fn ensure_token(conf: &str, label: &str) {
    let show = Command::new("softhsm2-util")
        .arg("--show-slots")
        .env("SOFTHSM2_CONF", conf)
        .output()
        .expect("softhsm2-util");
    let listed = String::from_utf8_lossy(&show.stdout)
        .lines()
        .any(|l| l.trim() == format!("Label:            {label}") || l.trim().ends_with(label));
    if !listed {
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--so-pin", "1234", "--pin", "5678"])
            .env("SOFTHSM2_CONF", conf)
            .output()
            .expect("softhsm2-util");
        assert!(
            out.status.success(),
            "cannot create token {label}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn config(hash: OaepHash) -> Pkcs11Config {
    let f = fixture();
    // The raw sessions of other tests (playing other tools) may log in to this token first.
    Pkcs11Config::new(&f.module, &f.label, SecretString::new(f.pin.clone()))
        .oaep_hash(hash)
        .accept_existing_login(true)
}

async fn provider() -> Pkcs11Provider {
    Pkcs11Provider::connect(config(OaepHash::Sha1))
        .await
        .expect("connect to the SoftHSM2 token")
}

fn unique(prefix: &str) -> String {
    let mut b = [0u8; 4];
    getrandom::fill(&mut b).expect("getrandom");
    format!("{prefix}-{}", u32::from_le_bytes(b))
}

/// A raw cryptoki session on the test token: plays "another tool" acting on the token.
fn raw_session() -> Session {
    raw_session_on(&fixture().label)
}

fn raw_session_on(label: &str) -> Session {
    let f = fixture();
    let ctx = Pkcs11::new(&f.module).expect("load module");
    match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => panic!("C_Initialize: {e:?}"),
    }
    let slot = ctx
        .get_slots_with_token()
        .expect("slots")
        .into_iter()
        .find(|s| ctx.get_token_info(*s).is_ok_and(|i| i.label() == label))
        .expect("test token");
    let s = ctx.open_rw_session(slot).expect("session");
    match s.login(UserType::User, Some(&AuthPin::from(f.pin.as_str()))) {
        Ok(()) | Err(P11Error::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
        Err(e) => panic!("login: {e:?}"),
    }
    s
}

fn objects(
    s: &Session,
    class: ObjectClass,
    name: &str,
    version: &str,
) -> Vec<cryptoki::object::ObjectHandle> {
    s.find_objects(&[
        Attribute::Class(class),
        Attribute::Label(name.as_bytes().to_vec()),
        Attribute::Id(version.as_bytes().to_vec()),
    ])
    .expect("find")
}

fn bool_attrs(s: &Session, name: &str, version: &str) -> Vec<Attribute> {
    let h = objects(s, ObjectClass::PRIVATE_KEY, name, version);
    assert_eq!(h.len(), 1, "one private key for {name}/{version}");
    s.get_attributes(
        h[0],
        &[
            AttributeType::Token,
            AttributeType::Private,
            AttributeType::Sensitive,
            AttributeType::Extractable,
            AttributeType::Decrypt,
        ],
    )
    .expect("attributes")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_suite_passes_on_softhsm2() {
    let hsm = provider().await;
    let started = Instant::now();
    let report = conformance::run(&hsm).await;
    eprintln!("conformance on SoftHSM2 took {:?}", started.elapsed());
    report.assert_passed();
    let skipped: Vec<_> = report
        .scenarios
        .iter()
        .filter(|(_, o)| matches!(o, Outcome::Skipped(_)))
        .map(|(n, _)| *n)
        .collect();
    assert_eq!(
        skipped,
        [
            "deleted_and_recovered",
            "purged_key",
            "missing_permission",
            "revoked_identity"
        ],
        "{report:?}"
    );
    let caps = hsm.capabilities();
    assert!(
        !caps.rsa_oaep_sha256
            && caps.rsa_oaep_sha1
            && caps.disable_version
            && caps.ec_keys
            && caps.aes_keys
    );
    let props = hsm.vault_properties().await.expect("vault properties");
    assert!(!props.soft_delete && !props.purge_protection, "{props:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_keys_stay_on_the_token() {
    let hsm = provider().await;
    let name = unique("gen");
    let v = hsm
        .create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create");
    assert_eq!(v.version, "1");
    assert_eq!(v.key_type, byok::provider::KeyType::Rsa { bits: 2048 });
    let s = raw_session();
    let attrs = bool_attrs(&s, &name, "1");
    for want in [
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Decrypt(true),
    ] {
        assert!(attrs.contains(&want), "{want:?} missing in {attrs:?}");
    }
    // The private exponent cannot be read.
    let h = objects(&s, ObjectClass::PRIVATE_KEY, &name, "1")[0];
    let got = s
        .get_attributes(h, &[AttributeType::PrivateExponent])
        .unwrap_or_default();
    assert!(got.is_empty(), "{got:?}");
    let v2 = hsm.rotate_key(&name).await.expect("rotate");
    assert_eq!(v2.version, "2");
    assert_eq!(objects(&s, ObjectClass::PUBLIC_KEY, &name, "2").len(), 1);
    let all = hsm.list_versions(&name).await.expect("list");
    assert_eq!(
        all.iter().map(|p| p.version.as_str()).collect::<Vec<_>>(),
        ["1", "2"]
    );
    hsm.delete_key(&name).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn software_wrap_unwraps_on_the_token() {
    let hsm = provider().await;
    let name = unique("interop");
    hsm.create_key(&name, KeySpec::Rsa(3072))
        .await
        .expect("create");
    let props = hsm.key_properties(&name, None).await.expect("properties");
    let public: RsaPublic = props
        .public_key
        .expect("the token discloses the public key");
    assert_eq!(public.bits(), 3072);
    // Through the public components only, as a third party would.
    let public = RsaPublic::from_components(&public.modulus(), &public.exponent()).expect("public");
    let secret = [0x42u8; 32];
    let ct = public
        .encrypt_oaep(OaepHash::Sha1, &secret, b"")
        .expect("encrypt");
    let w = WrappedKey::new(
        name.clone(),
        props.version.clone(),
        WrapAlgorithm::RsaOaep,
        ct,
    );
    let got = hsm.unwrap_key(&w).await.expect("unwrap on the token");
    assert_eq!(got.expose_secret(), secret);
    hsm.delete_key(&name).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn imported_key_interops_with_software() {
    use rsa::pkcs8::EncodePrivateKey;
    let hsm = provider().await;
    let name = unique("imported");
    let mut rng = getrandom::SysRng;
    let sw = rsa::PrivateKey::new(&mut rng, 2048).expect("software key");
    let pem = sw
        .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
        .expect("pem")
        .to_string();
    let v = hsm.import_rsa_pem(&name, &pem).await.expect("import");
    assert_eq!(v.version, "1");
    let s = raw_session();
    let attrs = bool_attrs(&s, &name, "1");
    assert!(
        attrs.contains(&Attribute::Sensitive(true))
            && attrs.contains(&Attribute::Extractable(false))
    );
    // Token side wraps (with the token's public key) → software unwraps.
    let secret = [7u8; 32];
    let w = hsm
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep, &secret)
        .await
        .expect("wrap");
    assert_eq!(w.key_version, "1");
    let pt = sw
        .decrypt(rsa::Oaep::<sha1::Sha1>::new(), &w.ciphertext)
        .expect("software unwrap");
    assert_eq!(pt, secret);
    // Software wraps → token unwraps with the imported private key.
    let ct = sw
        .to_public_key()
        .encrypt(&mut rng, rsa::Oaep::<sha1::Sha1>::new(), &secret)
        .expect("software wrap");
    let mut w2 = w;
    w2.ciphertext = ct;
    assert_eq!(
        hsm.unwrap_key(&w2)
            .await
            .expect("token unwrap")
            .expose_secret(),
        secret
    );
    // A second import is a new version.
    let v2 = hsm.import_rsa_pem(&name, &pem).await.expect("import again");
    assert_eq!(v2.version, "2");
    let bad = hsm
        .import_rsa_pem(&name, "not a key")
        .await
        .expect_err("garbage");
    assert_eq!(bad.kind(), K::InvalidRequest);
    hsm.delete_key(&name).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revocation_through_the_token_is_definitive() {
    let hsm = provider().await;
    let name = unique("revoke");
    hsm.create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create");
    let w = hsm
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep, &[1u8; 32])
        .await
        .expect("wrap");
    hsm.unwrap_key(&w).await.expect("unwrap");

    // Disabled through the provider's admin surface.
    hsm.set_enabled(&name, "1", false).await.expect("disable");
    let e = hsm.unwrap_key(&w).await.expect_err("disabled");
    assert_eq!(e.kind(), K::KeyDisabled, "{e}");
    assert!(e.is_definitive());
    let e = hsm
        .wrap_key(&name, Some("1"), WrapAlgorithm::RsaOaep, &[1u8; 32])
        .await
        .expect_err("disabled");
    assert_eq!(e.kind(), K::KeyDisabled, "{e}");
    hsm.set_enabled(&name, "1", true).await.expect("enable");
    hsm.unwrap_key(&w).await.expect("unwrap after enable");

    // Disabled by another tool on the token (CKA_DECRYPT cleared behind our back).
    let s = raw_session();
    let h = objects(&s, ObjectClass::PRIVATE_KEY, &name, "1")[0];
    s.update_attributes(h, &[Attribute::Decrypt(false), Attribute::Unwrap(false)])
        .expect("clear CKA_DECRYPT");
    let e = hsm.unwrap_key(&w).await.expect_err("disabled on the token");
    assert_eq!(e.kind(), K::KeyDisabled, "{e}");
    let e = hsm
        .key_properties(&name, None)
        .await
        .expect_err("no enabled version");
    assert_eq!(e.kind(), K::KeyDisabled, "{e}");
    s.update_attributes(h, &[Attribute::Decrypt(true), Attribute::Unwrap(true)])
        .expect("set CKA_DECRYPT");
    hsm.unwrap_key(&w).await.expect("unwrap again");

    // Destroyed by another tool: the cached handle is stale, the re-find finds nothing.
    for h in s
        .find_objects(&[Attribute::Label(name.as_bytes().to_vec())])
        .expect("find")
    {
        s.destroy_object(h).expect("destroy");
    }
    let e = hsm.unwrap_key(&w).await.expect_err("destroyed");
    assert_eq!(e.kind(), K::KeyNotFound, "{e}");
    assert!(e.is_definitive());
    let e = hsm
        .key_properties(&name, None)
        .await
        .expect_err("destroyed");
    assert_eq!(e.kind(), K::KeyNotFound, "{e}");

    // Destroyed through the admin surface.
    let name2 = unique("revoke-admin");
    hsm.create_key(&name2, KeySpec::Rsa(2048))
        .await
        .expect("create");
    let w2 = hsm
        .wrap_key(&name2, None, WrapAlgorithm::RsaOaep, &[2u8; 32])
        .await
        .expect("wrap");
    hsm.unwrap_key(&w2).await.expect("unwrap");
    hsm.delete_key(&name2).await.expect("delete");
    assert_eq!(
        hsm.unwrap_key(&w2).await.expect_err("deleted").kind(),
        K::KeyNotFound
    );
    assert_eq!(
        hsm.recover_key(&name2)
            .await
            .expect_err("no soft-delete")
            .kind(),
        K::KeyNotFound
    );
    assert_eq!(
        hsm.delete_key(&name2).await.expect_err("gone").kind(),
        K::KeyNotFound
    );
    assert!(objects(&s, ObjectClass::PUBLIC_KEY, &name2, "1").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_pin_is_forbidden_at_connect() {
    let f = fixture();
    let on_pin_token = |pin: &str| {
        Pkcs11Config::new(&f.module, PIN_TOKEN, SecretString::new(pin)).oaep_hash(OaepHash::Sha1)
    };
    // Nobody is logged in to this token yet: C_Login itself says CKR_PIN_INCORRECT.
    let e = Pkcs11Provider::connect(on_pin_token("0000"))
        .await
        .expect_err("wrong PIN");
    assert_eq!(e.kind(), K::Forbidden, "{e}");
    assert!(e.is_definitive());
    assert!(e.message().contains("PinIncorrect"), "{e}");
    let ok = Pkcs11Provider::connect(on_pin_token("5678"))
        .await
        .expect("right PIN");
    // Logged in now, so C_Login answers "already logged in" whatever the PIN: the provider
    // still refuses a connection with another PIN.
    let e = Pkcs11Provider::connect(on_pin_token("9999"))
        .await
        .expect_err("wrong PIN");
    assert_eq!(e.kind(), K::Forbidden, "{e}");
    let again = Pkcs11Provider::connect(on_pin_token("5678"))
        .await
        .expect("right PIN again");

    // Another session logs the whole application out of the token: private-key handles become
    // stale and private objects invisible. The provider re-finds, logs in again and retries.
    // (On this token so that the other tests never see the logout.)
    let name = unique("logout");
    ok.create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create");
    let w = ok
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep, &[5u8; 32])
        .await
        .expect("wrap");
    ok.unwrap_key(&w).await.expect("unwrap");
    let raw = raw_session_on(PIN_TOKEN);
    raw.logout().expect("logout");
    let got = again
        .unwrap_key(&w)
        .await
        .expect("unwrap after a logout elsewhere");
    assert_eq!(got.expose_secret(), [5u8; 32]);
    raw.logout().expect("logout again");
    assert!(
        ok.key_properties(&name, None).await.is_ok(),
        "lookup after a logout elsewhere"
    );
    drop(raw);
    ok.delete_key(&name).await.expect("delete");
    drop((ok, again));

    let e = Pkcs11Provider::connect(Pkcs11Config::new(
        &f.module,
        "no-such-token",
        SecretString::new("1"),
    ))
    .await
    .expect_err("unknown label");
    assert_eq!(e.kind(), K::VaultNotFound, "{e}");
    let e = Pkcs11Provider::connect(Pkcs11Config::new(
        "/nonexistent/libpkcs11.so",
        &f.label,
        SecretString::new("1"),
    ))
    .await
    .expect_err("no module");
    assert_eq!(e.kind(), K::Unavailable, "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oaep_sha256_is_a_clear_error_on_softhsm() {
    let hsm = provider().await;
    let name = unique("oaep");
    hsm.create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create");
    // The SHA-1 setting refuses RSA-OAEP-256 up front, naming the mechanism.
    let e = hsm
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep256, &[3u8; 32])
        .await
        .expect_err("no SHA-256 OAEP");
    assert_eq!(e.kind(), K::InvalidRequest, "{e}");
    assert!(e.message().contains("CKM_RSA_PKCS_OAEP"), "{e}");
    assert!(!e.is_definitive() && !e.is_transient());
    let public = hsm
        .key_properties(&name, None)
        .await
        .expect("props")
        .public_key
        .expect("public");
    let w = WrappedKey::new(
        name.clone(),
        "1",
        WrapAlgorithm::RsaOaep256,
        public
            .encrypt_oaep(OaepHash::Sha256, &[3u8; 32], b"")
            .expect("encrypt"),
    );
    let e = hsm.unwrap_key(&w).await.expect_err("no SHA-256 OAEP");
    assert_eq!(e.kind(), K::InvalidRequest, "{e}");
    // With the (wrong) SHA-256 setting the token itself refuses the mechanism parameters.
    let sha256 = Pkcs11Provider::connect(config(OaepHash::Sha256))
        .await
        .expect("connect");
    let e = sha256
        .unwrap_key(&w)
        .await
        .expect_err("SoftHSM has no SHA-256 OAEP");
    assert_eq!(e.kind(), K::InvalidRequest, "{e}");
    assert!(e.message().contains("CKM_SHA256"), "{e}");
    assert!(e.message().contains("ArgumentsBad"), "{e}");
    // A256KW with an RSA key is the wrong key type.
    let e = hsm
        .wrap_key(&name, None, WrapAlgorithm::A256Kw, &[3u8; 32])
        .await
        .expect_err("A256KW");
    assert_eq!(e.kind(), K::WrongKeyType, "{e}");
    hsm.delete_key(&name).await.expect("delete");
}

#[test]
fn many_concurrent_unwraps_from_threads_and_tasks() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let hsm = rt.block_on(provider());
    let name = unique("conc");
    rt.block_on(hsm.create_key(&name, KeySpec::Rsa(2048)))
        .expect("create");
    let hsm = Arc::new(hsm);
    let mut wrapped = Vec::new();
    for i in 0..8u8 {
        wrapped.push(
            rt.block_on(hsm.wrap_key(&name, None, WrapAlgorithm::RsaOaep, &[i; 32]))
                .expect("wrap"),
        );
    }
    let wrapped = Arc::new(wrapped);
    let started = Instant::now();
    // 4 OS threads, each with its own current-thread runtime, plus 16 tasks on the shared
    // multi-thread runtime: 400 unwraps in all, every result checked.
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let (hsm, wrapped) = (Arc::clone(&hsm), Arc::clone(&wrapped));
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("rt");
                rt.block_on(async {
                    for i in 0..50usize {
                        let k = (t + i) % 8;
                        let got = hsm.unwrap_key(&wrapped[k]).await.expect("unwrap");
                        assert_eq!(got.expose_secret(), [k as u8; 32]);
                    }
                });
            })
        })
        .collect();
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let (hsm, wrapped) = (Arc::clone(&hsm), Arc::clone(&wrapped));
            rt.spawn(async move {
                for i in 0..12usize {
                    let k = (t + i) % 8;
                    let got = hsm.unwrap_key(&wrapped[k]).await.expect("unwrap");
                    assert_eq!(got.expose_secret(), [k as u8; 32]);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    for t in tasks {
        rt.block_on(t).expect("task");
    }
    eprintln!("392 concurrent unwraps in {:?}", started.elapsed());
    rt.block_on(hsm.delete_key(&name)).expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ec_keys_are_held_and_refused_for_wrapping() {
    let hsm = provider().await;
    let name = unique("ec");
    let v = hsm
        .create_key(&name, KeySpec::EcP256)
        .await
        .expect("create EC");
    assert_eq!(
        v.key_type,
        byok::provider::KeyType::Ec {
            curve: "P-256".into()
        }
    );
    assert!(v.public_key.is_none());
    let e = hsm
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep, &[1u8; 32])
        .await
        .expect_err("EC cannot wrap");
    assert_eq!(e.kind(), K::WrongKeyType, "{e}");
    let w = WrappedKey::new(name.clone(), "1", WrapAlgorithm::RsaOaep, vec![0; 256]);
    assert_eq!(
        hsm.unwrap_key(&w).await.expect_err("EC").kind(),
        K::WrongKeyType
    );
    let v2 = hsm.rotate_key(&name).await.expect("rotate EC");
    assert_eq!((v2.version.as_str(), v2.key_type), ("2", v.key_type));
    hsm.set_enabled(&name, "2", false)
        .await
        .expect("disable EC");
    assert_eq!(
        hsm.key_properties(&name, None)
            .await
            .expect("latest")
            .version,
        "1"
    );
    hsm.delete_key(&name).await.expect("delete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aes_key_wrap_runs_on_the_token() {
    let hsm = provider().await;
    let name = unique("aes");
    let v = hsm
        .create_key(&name, KeySpec::Aes256)
        .await
        .expect("create AES");
    assert_eq!(v.key_type, byok::provider::KeyType::Aes { bits: 256 });
    let s = raw_session();
    let h = objects(&s, ObjectClass::SECRET_KEY, &name, "1");
    assert_eq!(h.len(), 1);
    let attrs = s
        .get_attributes(
            h[0],
            &[AttributeType::Sensitive, AttributeType::Extractable],
        )
        .expect("attributes");
    assert!(
        attrs.contains(&Attribute::Sensitive(true))
            && attrs.contains(&Attribute::Extractable(false))
    );
    let secret = [0x33u8; 32];
    let w = hsm
        .wrap_key(&name, None, WrapAlgorithm::A256Kw, &secret)
        .await
        .expect("wrap");
    assert_eq!(w.ciphertext.len(), 40);
    assert_eq!(
        hsm.unwrap_key(&w).await.expect("unwrap").expose_secret(),
        secret
    );
    for bad in [w.ciphertext[..39].to_vec(), {
        let mut b = w.ciphertext.clone();
        b[5] ^= 1;
        b
    }] {
        let e = hsm
            .unwrap_key(&{
                let mut corrupted = w.clone();
                corrupted.ciphertext = bad;
                corrupted
            })
            .await
            .expect_err("corrupted");
        assert_eq!(e.kind(), K::UnwrapFailed, "{e}");
    }
    let e = hsm
        .wrap_key(&name, None, WrapAlgorithm::A256Kw, &[1u8; 20])
        .await
        .expect_err("not a multiple of 8");
    assert_eq!(e.kind(), K::InvalidRequest, "{e}");
    let e = hsm
        .wrap_key(&name, None, WrapAlgorithm::RsaOaep, &secret)
        .await
        .expect_err("RSA-OAEP with AES");
    assert_eq!(e.kind(), K::WrongKeyType, "{e}");
    hsm.set_enabled(&name, "1", false).await.expect("disable");
    assert_eq!(
        hsm.unwrap_key(&w).await.expect_err("disabled").kind(),
        K::KeyDisabled
    );
    // Disabled on the token, behind the provider's back only for CKA_UNWRAP: the token refuses.
    hsm.set_enabled(&name, "1", true).await.expect("enable");
    s.update_attributes(h[0], &[Attribute::Unwrap(false)])
        .expect("clear CKA_UNWRAP");
    let e = hsm.unwrap_key(&w).await.expect_err("CKA_UNWRAP false");
    assert_eq!(e.kind(), K::KeyDisabled, "{e}");
    s.update_attributes(h[0], &[Attribute::Unwrap(true)])
        .expect("set CKA_UNWRAP");
    let v2 = hsm.rotate_key(&name).await.expect("rotate");
    assert_eq!(
        (v2.version.as_str(), v2.key_type),
        ("2", byok::provider::KeyType::Aes { bits: 256 })
    );
    assert_eq!(
        hsm.unwrap_key(&w)
            .await
            .expect("old version")
            .expose_secret(),
        secret
    );
    hsm.delete_key(&name).await.expect("delete");
    assert_eq!(
        hsm.unwrap_key(&w).await.expect_err("deleted").kind(),
        K::KeyNotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_never_shows_the_pin() {
    let f = fixture();
    let secret_pin = f.pin.clone();
    let hsm = provider().await;
    let dbg = format!("{hsm:?} {:?}", config(OaepHash::Sha1));
    assert!(!dbg.contains(&secret_pin), "{dbg}");
    assert!(dbg.contains("SecretString"), "{dbg}");
    assert!(dbg.contains(&f.label), "{dbg}");
}

/// The account-level check deferred by the PKCS#11 issue: an account whose customer key is an
/// RSA key pair on the token, reached through a `VaultDirectory` that has the provider as the
/// vault for the host the provider reports. The token has no soft-delete or purge protection,
/// so a preset that requires them refuses it, and the account runs under a custom policy;
/// SoftHSM2 only does SHA-1 OAEP, so the manager wraps customer keys with `RSA-OAEP`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn account_with_a_token_key_goes_inaccessible_when_the_key_is_revoked() {
    use std::time::Duration;

    use byok::account::{DoubleEncryption, NewAccount, Operation, PlatformKey, StateKind};
    use byok::provider::memory::InMemoryVault;
    use byok::provider::{Identity, Permissions, VaultDirectory, VaultProperties};
    use byok::testing::ManualClock;
    use byok::{AccountId, AccountManager, Error, KeyId, KeySource, Policy, PolicyViolation};

    let started = Instant::now();
    let hsm = provider().await;
    let props = hsm.vault_properties().await.expect("vault properties");
    // The host is derived from the token label; key ids on the token are built from it.
    assert!(props.host.ends_with(".pkcs11.local"), "{props:?}");
    let name = unique("account");
    hsm.create_key(&name, KeySpec::Rsa(2048))
        .await
        .expect("create");
    let key = KeyId::new(&props.host, &name, None).expect("key id");
    let identity = Identity::new("hsm-user");

    // The service's platform and infrastructure keys live in memory; the customer key does not.
    let clock = Arc::new(ManualClock::default());
    let service = Identity::new("service");
    let mut platform_keys = Vec::new();
    for (host, kek, seed) in [
        ("platform.internal", "platform-kek", 1u8),
        ("infra.internal", "infra-kek", 2),
    ] {
        let v = InMemoryVault::seeded(
            VaultProperties::new(host, "local", "operator"),
            clock.clone(),
            [seed; 32],
        );
        v.create_key(kek, KeySpec::Aes256).await.expect("kek");
        v.set_access(&service, Permissions::CMK)
            .await
            .expect("grant");
        platform_keys.push(PlatformKey::new(
            Arc::new(v.provider(&service)),
            kek,
            WrapAlgorithm::A256Kw,
        ));
    }
    let infra = platform_keys.pop().expect("infra");
    let platform = platform_keys.pop().expect("platform");
    let directory = Arc::new(VaultDirectory::new());
    directory.add_vault(&props.host, Arc::new(hsm.clone()));
    let manager = |algorithm| {
        AccountManager::builder(platform.clone(), directory.clone())
            .infrastructure_key(infra.clone())
            .clock(clock.clone())
            .customer_algorithm(algorithm)
            .build()
    };
    let accounts = manager(WrapAlgorithm::RsaOaep);
    let new_account = |id: &str, policy: Policy| {
        NewAccount::new(
            AccountId::new(id).expect("id"),
            &props.region,
            &props.tenant,
            policy,
        )
        .key_source(KeySource::customer(key.clone(), identity.clone()))
    };

    // A preset requiring soft-delete refuses the token; nothing is stored.
    let e = accounts
        .create_account(new_account("hsm-refused", Policy::video_analyzer()))
        .await
        .expect_err("no soft-delete on the token");
    assert!(
        matches!(
            &e,
            Error::Policy {
                violation: PolicyViolation::SoftDeleteRequired,
                ..
            }
        ),
        "{e}"
    );
    let refused = AccountId::new("hsm-refused").expect("id");
    assert!(matches!(
        accounts.account(&refused).await,
        Err(Error::AccountNotFound(_))
    ));

    let policy = Policy::builder("hsm")
        .require_vault_protection(false, false)
        .double_encryption(DoubleEncryption::Always)
        .cache_max_age(Duration::from_secs(60))
        .build();
    // The default RSA-OAEP-256 is refused by the provider's SHA-1 setting, naming the mechanism.
    let e = manager(WrapAlgorithm::RsaOaep256)
        .create_account(new_account("hsm-sha256", policy.clone()))
        .await
        .expect_err("no SHA-256 OAEP on SoftHSM2");
    match &e {
        Error::Provider(p) => {
            assert_eq!(p.kind(), K::InvalidRequest, "{e}");
            assert!(p.message().contains("CKM_RSA_PKCS_OAEP"), "{e}");
        }
        other => panic!("{other}"),
    }

    // Two accounts on the same token key: one observes the destruction through a probe, the
    // other through a data operation once its cached key has expired.
    let mut ids = Vec::new();
    for id in ["hsm-probed", "hsm-used"] {
        let rec = accounts
            .create_account(new_account(id, policy.clone()))
            .await
            .expect("create on the token key");
        let w = &rec.account_key.as_ref().expect("account key").wrapped;
        assert_eq!(
            (w.key_name.as_str(), w.key_version.as_str(), w.algorithm),
            (name.as_str(), "1", WrapAlgorithm::RsaOaep)
        );
        assert!(rec.double_encryption && rec.state.kind() == StateKind::Active);
        ids.push(rec.id);
    }
    let (probed, used) = (&ids[0], &ids[1]);
    let blob = byok::account::DataClass::new("blob");
    let mut stored = Vec::new();
    for id in &ids {
        let obj = accounts
            .encrypt(id, &blob, b"o1", b"payload")
            .await
            .expect("encrypt");
        let field = accounts
            .seal_field(id, b"access-policy", b"{\"allow\":\"all\"}")
            .await
            .expect("seal");
        assert_eq!(
            accounts.decrypt(id, b"o1", &obj).await.expect("decrypt"),
            b"payload"
        );
        assert_eq!(
            accounts
                .open_field(id, b"access-policy", &field)
                .await
                .expect("open"),
            b"{\"allow\":\"all\"}"
        );
        stored.push((obj, field));
    }
    let assert_locked = |r: Result<Vec<u8>, Error>, what: &str| {
        let e = r.expect_err(what);
        assert!(matches!(e, Error::KeyInaccessible { .. }), "{what}: {e}");
        assert_eq!(e.http_status(), 403, "{what}");
    };

    // Usage attributes cleared on the token by another tool: the probe sees a disabled key.
    let s = raw_session();
    let private = objects(&s, ObjectClass::PRIVATE_KEY, &name, "1")[0];
    s.update_attributes(
        private,
        &[Attribute::Decrypt(false), Attribute::Unwrap(false)],
    )
    .expect("clear CKA_DECRYPT");
    let e = accounts.probe(probed).await.expect_err("disabled");
    assert!(matches!(e, Error::KeyInaccessible { .. }), "{e}");
    assert!(e.to_string().contains("key disabled"), "{e}");
    let rec = accounts
        .account(probed)
        .await
        .expect("GET while inaccessible");
    assert_eq!(rec.state.kind(), StateKind::KeyInaccessible);
    // The cached account key was dropped: data operations are refused although it was fresh.
    let (obj, field) = &stored[0];
    assert_locked(accounts.decrypt(probed, b"o1", obj).await, "decrypt");
    assert_locked(
        accounts.encrypt(probed, &blob, b"o2", b"x").await,
        "encrypt",
    );
    assert_locked(
        accounts.open_field(probed, b"access-policy", field).await,
        "open_field",
    );
    assert_locked(accounts.seal_field(probed, b"f", b"x").await, "seal_field");
    assert!(
        accounts
            .ensure_allowed(probed, Operation::AccountDelete)
            .await
            .is_ok()
    );
    // Re-enabled on the token: still locked until a probe sees it, then Active again.
    s.update_attributes(
        private,
        &[Attribute::Decrypt(true), Attribute::Unwrap(true)],
    )
    .expect("set CKA_DECRYPT");
    assert_locked(
        accounts.decrypt(probed, b"o1", obj).await,
        "before the probe",
    );
    assert_eq!(
        accounts.probe(probed).await.expect("check"),
        StateKind::Active
    );
    assert_eq!(
        accounts
            .decrypt(probed, b"o1", obj)
            .await
            .expect("opens again"),
        b"payload"
    );
    assert_eq!(
        accounts
            .open_field(probed, b"access-policy", field)
            .await
            .expect("opens again"),
        b"{\"allow\":\"all\"}"
    );
    let fresh = accounts
        .encrypt(probed, &blob, b"o3", b"after")
        .await
        .expect("encrypt again");
    // The other account never saw the key disabled: it stayed Active.
    assert_eq!(
        accounts.account(used).await.expect("get").state.kind(),
        StateKind::Active
    );

    // The key destroyed on the token. Both accounts hold a fresh cached account key.
    for h in s
        .find_objects(&[Attribute::Label(name.as_bytes().to_vec())])
        .expect("find")
    {
        s.destroy_object(h).expect("destroy");
    }
    // A probe observes it at once and drops the cached key.
    let e = accounts.probe(probed).await.expect_err("destroyed");
    assert!(matches!(e, Error::KeyInaccessible { .. }), "{e}");
    assert!(e.to_string().contains("key not found"), "{e}");
    assert_locked(
        accounts.decrypt(probed, b"o3", &fresh).await,
        "cached, probed",
    );
    assert_locked(
        accounts.encrypt(probed, &blob, b"o4", b"x").await,
        "encrypt",
    );
    // Without a probe, the cached key serves until its maximum age; the first unwrap after
    // that sees the key gone and locks the account.
    let (obj, field) = &stored[1];
    assert_eq!(
        accounts.decrypt(used, b"o1", obj).await.expect("cached"),
        b"payload"
    );
    clock.advance(Duration::from_secs(61));
    assert_locked(
        accounts.decrypt(used, b"o1", obj).await,
        "after cache expiry",
    );
    assert_locked(
        accounts.open_field(used, b"access-policy", field).await,
        "open_field",
    );
    for id in &ids {
        assert_eq!(
            accounts.account(id).await.expect("get").state.kind(),
            StateKind::KeyInaccessible
        );
        assert!(matches!(
            accounts.probe(id).await,
            Err(Error::KeyInaccessible { .. })
        ));
        accounts.delete_account(id).await.expect("delete");
    }
    eprintln!("account on a token key: {:?}", started.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_get_only_the_usages_they_need() {
    let hsm = provider().await;
    let (rsa, aes) = (unique("usage-rsa"), unique("usage-aes"));
    hsm.create_key(&rsa, KeySpec::Rsa(2048)).await.expect("RSA");
    hsm.create_key(&aes, KeySpec::Aes256).await.expect("AES");
    let s = raw_session();
    let usages = |class, name: &str| {
        let h = objects(&s, class, name, "1");
        assert_eq!(h.len(), 1, "{name}");
        s.get_attributes(
            h[0],
            &[
                AttributeType::Encrypt,
                AttributeType::Decrypt,
                AttributeType::Wrap,
                AttributeType::Unwrap,
            ],
        )
        .expect("attributes")
    };
    let rsa_private = usages(ObjectClass::PRIVATE_KEY, &rsa);
    assert!(
        rsa_private.contains(&Attribute::Decrypt(true)),
        "{rsa_private:?}"
    );
    assert!(
        rsa_private.contains(&Attribute::Unwrap(false)),
        "{rsa_private:?}"
    );
    let rsa_public = usages(ObjectClass::PUBLIC_KEY, &rsa);
    assert!(
        rsa_public.contains(&Attribute::Encrypt(true)),
        "{rsa_public:?}"
    );
    assert!(
        rsa_public.contains(&Attribute::Wrap(false)),
        "{rsa_public:?}"
    );
    let aes_key = usages(ObjectClass::SECRET_KEY, &aes);
    for a in [
        Attribute::Wrap(true),
        Attribute::Unwrap(true),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
    ] {
        assert!(aes_key.contains(&a), "{a:?} in {aes_key:?}");
    }
    // Disabling and enabling keep that; both keys still do their one job.
    for name in [&rsa, &aes] {
        hsm.set_enabled(name, "1", false).await.expect("disable");
        assert!(
            !hsm.key_properties(name, Some("1"))
                .await
                .expect("props")
                .enabled
        );
        hsm.set_enabled(name, "1", true).await.expect("enable");
    }
    let aes_key = usages(ObjectClass::SECRET_KEY, &aes);
    assert!(aes_key.contains(&Attribute::Decrypt(false)), "{aes_key:?}");
    let rsa_private = usages(ObjectClass::PRIVATE_KEY, &rsa);
    assert!(
        rsa_private.contains(&Attribute::Unwrap(false)),
        "{rsa_private:?}"
    );
    for (name, alg) in [
        (&rsa, WrapAlgorithm::RsaOaep),
        (&aes, WrapAlgorithm::A256Kw),
    ] {
        let w = hsm
            .wrap_key(name, None, alg, &[9u8; 32])
            .await
            .expect("wrap");
        assert_eq!(
            hsm.unwrap_key(&w).await.expect("unwrap").expose_secret(),
            [9u8; 32]
        );
    }
    drop(s);
    for name in [&rsa, &aes] {
        hsm.delete_key(name).await.expect("delete");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_by_another_component_is_not_taken_on_trust() {
    let f = fixture();
    let on_foreign = |pin: &str| {
        Pkcs11Config::new(&f.module, FOREIGN_TOKEN, SecretString::new(pin))
            .oaep_hash(OaepHash::Sha1)
    };
    // The library is initialised through the provider first: SoftHSM's C_Initialize is not
    // safe against a concurrent one from another context (a half-loaded slot list).
    let _loaded = provider().await;
    // Another component of the process logs in first: C_Login would answer "already logged
    // in" whatever PIN the provider brings.
    let other = raw_session_on(FOREIGN_TOKEN);
    for pin in ["0000", "5678"] {
        let e = Pkcs11Provider::connect(on_foreign(pin))
            .await
            .expect_err("an unchecked PIN is refused");
        assert_eq!(e.kind(), K::InvalidRequest, "{e}");
        assert!(e.message().contains("accept_existing_login"), "{e}");
    }
    let trusted = Pkcs11Provider::connect(on_foreign("5678").accept_existing_login(true))
        .await
        .expect("the other component is trusted");
    let e = trusted
        .key_properties("absent", None)
        .await
        .expect_err("no such key");
    assert_eq!(e.kind(), K::KeyNotFound, "the token answers: {e}");
    drop((trusted, other));
}
