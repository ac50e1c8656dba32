//! The provider conformance suite: the same scenarios and the same expected error kinds for
//! every backend.
//!
//! ```
//! # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
//! let vault = byok::provider::memory::InMemoryVault::new(byok::provider::VaultProperties::new("v.example", "r", "t"));
//! let report = byok::testing::provider_conformance::run(&vault).await; // your VaultAdmin here
//! report.assert_passed();
//! # });
//! ```

use core::future::Future;
use core::pin::Pin;
use std::fmt::Write as _;
use std::sync::Arc;

use super::{Identity, KeyProvider, KeySpec, Permissions, VaultAdmin, WrapAlgorithm, WrappedKey};
use crate::error::{Error, ProviderError, ProviderErrorKind as K};

/// How one scenario ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// All its checks held.
    Passed,
    /// A check failed; the text says which.
    Failed(String),
    /// Skipped by the backend's declared capabilities; the text says which.
    Skipped(String),
}

/// The result of a conformance run: one line per scenario.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ConformanceReport {
    /// `(scenario, outcome)` in the order they ran.
    pub scenarios: Vec<(&'static str, Outcome)>,
}

impl ConformanceReport {
    /// Scenarios that failed.
    pub fn failures(&self) -> Vec<&(&'static str, Outcome)> {
        self.scenarios
            .iter()
            .filter(|(_, o)| matches!(o, Outcome::Failed(_)))
            .collect()
    }

    /// Number of scenarios that passed.
    pub fn passed(&self) -> usize {
        self.scenarios
            .iter()
            .filter(|(_, o)| *o == Outcome::Passed)
            .count()
    }

    /// The outcome of scenario `name`, if it ran.
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.scenarios
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, o)| o)
    }

    /// Panics (listing every failure) unless every scenario passed or was skipped by
    /// declaration, or if none passed.
    pub fn assert_passed(&self) {
        let f = self.failures();
        assert!(
            f.is_empty(),
            "conformance failures:\n{}",
            f.iter()
                .map(|(n, o)| format!("  {n}: {o:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert!(self.passed() > 0, "no conformance scenario ran");
    }
}

type CheckResult = Result<(), String>;

struct Ctx<'a> {
    admin: &'a dyn VaultAdmin,
    prefix: String,
    app: Identity,
}

/// A fresh RSA 2048 key, the app identity's provider and a wrapping made under the key.
struct Fixture {
    name: String,
    v1: super::KeyProperties,
    p: Arc<dyn KeyProvider>,
    w: WrappedKey,
}

impl Ctx<'_> {
    fn name(&self, s: &str) -> String {
        format!("{}-{s}", self.prefix)
    }

    async fn fixture(&self, tag: &str) -> Result<Fixture, String> {
        let name = self.name(tag);
        let v1 = ok(
            self.admin.create_key(&name, KeySpec::Rsa(2048)).await,
            "create",
        )?;
        let p = self.app().await?;
        let w = round_trip(&*p, &name, None, default_alg(self.admin)).await?;
        Ok(Fixture { name, v1, p, w })
    }

    async fn app(&self) -> Result<Arc<dyn KeyProvider>, String> {
        self.admin
            .provider_for(&self.app)
            .await
            .map_err(|e| format!("provider_for: {e}"))
    }
}

fn ok<T>(r: Result<T, ProviderError>, what: &str) -> Result<T, String> {
    r.map_err(|e| format!("{what}: unexpected error {e}"))
}

fn expect_kind<T: core::fmt::Debug>(
    r: Result<T, ProviderError>,
    kind: K,
    what: &str,
) -> CheckResult {
    match r {
        Err(e) if e.kind() == kind => Ok(()),
        Err(e) => Err(format!("{what}: expected {kind}, got {} ({e})", e.kind())),
        Ok(v) => Err(format!("{what}: expected {kind}, got success {v:?}")),
    }
}

fn check(cond: bool, what: &str) -> CheckResult {
    if cond { Ok(()) } else { Err(what.to_owned()) }
}

const SECRET: [u8; 32] = [0x5a; 32];

fn default_alg(admin: &dyn VaultAdmin) -> WrapAlgorithm {
    if admin.capabilities().rsa_oaep_sha256 {
        WrapAlgorithm::RsaOaep256
    } else {
        WrapAlgorithm::RsaOaep
    }
}

async fn round_trip(
    p: &dyn KeyProvider,
    name: &str,
    version: Option<&str>,
    alg: WrapAlgorithm,
) -> Result<WrappedKey, String> {
    let w = ok(p.wrap_key(name, version, alg, &SECRET).await, "wrap")?;
    let u = ok(p.unwrap_key(&w).await, "unwrap")?;
    check(u.expose_secret() == SECRET, "unwrap returned other bytes")?;
    check(
        w.algorithm == alg && w.key_name == name,
        "wrapped key names the wrong key or alg",
    )?;
    Ok(w)
}

async fn latest_version_resolution(c: &Ctx<'_>) -> CheckResult {
    let name = c.name("latest");
    let v1 = ok(
        c.admin.create_key(&name, KeySpec::Rsa(2048)).await,
        "create",
    )?;
    let p = c.app().await?;
    let got = ok(p.key_properties(&name, None).await, "properties")?;
    check(got.version == v1.version, "latest is not the only version")?;
    check(
        got.key_type == super::KeyType::Rsa { bits: 2048 },
        "wrong key type",
    )?;
    let v2 = ok(c.admin.rotate_key(&name).await, "rotate")?;
    check(v2.version != v1.version, "rotation reused a version")?;
    let got = ok(p.key_properties(&name, None).await, "properties")?;
    check(
        got.version == v2.version,
        "latest did not move to the new version",
    )?;
    let w = ok(
        p.wrap_key(&name, None, default_alg(c.admin), &SECRET).await,
        "wrap latest",
    )?;
    check(
        w.key_version == v2.version,
        "a versionless wrap did not use the latest version",
    )?;
    let pinned = ok(p.key_properties(&name, Some(&v1.version)).await, "pinned")?;
    check(
        pinned.version == v1.version,
        "a pinned lookup returned another version",
    )?;
    let versions = ok(c.admin.list_versions(&name).await, "list")?;
    check(
        versions.len() == 2,
        "list_versions does not list both versions",
    )?;
    expect_kind(
        p.key_properties(&c.name("never-created"), None).await,
        K::KeyNotFound,
        "unknown key",
    )?;
    let caps = c.admin.capabilities();
    if caps.disable_version {
        ok(
            c.admin.set_enabled(&name, &v2.version, false).await,
            "disable",
        )?;
        if caps.latest_skips_disabled {
            let got = ok(p.key_properties(&name, None).await, "properties")?;
            check(
                got.version == v1.version,
                "latest should skip a disabled version",
            )?;
        } else {
            // "Latest" is a pointer to one key: its disabled target is reported, never
            // silently replaced by an older key.
            match p.key_properties(&name, None).await {
                Ok(got) => check(
                    got.version == v2.version && !got.enabled,
                    "a disabled latest key must be reported as disabled",
                )?,
                Err(e) if e.kind() == K::KeyDisabled => {}
                Err(e) => return Err(format!("disabled latest: unexpected error {e}")),
            }
        }
    }
    Ok(())
}

async fn pinned_old_version_after_rotation(c: &Ctx<'_>) -> CheckResult {
    let name = c.name("pinned");
    let v1 = ok(
        c.admin.create_key(&name, KeySpec::Rsa(2048)).await,
        "create",
    )?;
    let p = c.app().await?;
    let alg = default_alg(c.admin);
    let w1 = round_trip(&*p, &name, Some(&v1.version), alg).await?;
    check(
        w1.key_version == v1.version,
        "pinned wrap used another version",
    )?;
    ok(c.admin.rotate_key(&name).await, "rotate")?;
    ok(c.admin.rotate_key(&name).await, "rotate again")?;
    let u = ok(p.unwrap_key(&w1).await, "unwrap under the old version")?;
    check(
        u.expose_secret() == SECRET,
        "old version unwrapped other bytes",
    )
}

async fn round_trip_every_algorithm_and_size(c: &Ctx<'_>) -> CheckResult {
    let caps = c.admin.capabilities();
    let p = c.app().await?;
    for bits in [2048u32, 3072, 4096] {
        let name = c.name(&format!("rsa{bits}"));
        let v = ok(
            c.admin.create_key(&name, KeySpec::Rsa(bits)).await,
            "create",
        )?;
        check(
            v.key_type == super::KeyType::Rsa { bits },
            &format!("created key reports {} not RSA {bits}", v.key_type),
        )?;
        if caps.rsa_oaep_sha256 {
            round_trip(&*p, &name, None, WrapAlgorithm::RsaOaep256).await?;
        }
        if caps.rsa_oaep_sha1 {
            round_trip(&*p, &name, None, WrapAlgorithm::RsaOaep).await?;
        }
    }
    if caps.aes_keys {
        let name = c.name("aes");
        ok(
            c.admin.create_key(&name, KeySpec::Aes256).await,
            "create aes",
        )?;
        round_trip(&*p, &name, None, WrapAlgorithm::A256Kw).await?;
    }
    Ok(())
}

async fn wrong_algorithm_refused(c: &Ctx<'_>) -> CheckResult {
    let caps = c.admin.capabilities();
    let p = c.app().await?;
    let rsa = c.name("wrongalg-rsa");
    ok(c.admin.create_key(&rsa, KeySpec::Rsa(2048)).await, "create")?;
    expect_kind(
        p.wrap_key(&rsa, None, WrapAlgorithm::A256Kw, &SECRET).await,
        K::WrongKeyType,
        "A256KW with an RSA key",
    )?;
    if caps.aes_keys {
        let aes = c.name("wrongalg-aes");
        ok(
            c.admin.create_key(&aes, KeySpec::Aes256).await,
            "create aes",
        )?;
        expect_kind(
            p.wrap_key(&aes, None, WrapAlgorithm::RsaOaep256, &SECRET)
                .await,
            K::WrongKeyType,
            "RSA-OAEP-256 with an AES key",
        )?;
    }
    if caps.ec_keys {
        let ec = c.name("wrongalg-ec");
        ok(c.admin.create_key(&ec, KeySpec::EcP256).await, "create ec")?;
        expect_kind(
            p.wrap_key(&ec, None, WrapAlgorithm::RsaOaep256, &SECRET)
                .await,
            K::WrongKeyType,
            "RSA-OAEP-256 with an EC key",
        )?;
    }
    match "RSA1_5".parse::<WrapAlgorithm>() {
        Err(Error::UnsupportedAlgorithm(a)) if a == "RSA1_5" => Ok(()),
        other => Err(format!("RSA1_5 must be refused, got {other:?}")),
    }
}

async fn disabled_version(c: &Ctx<'_>) -> CheckResult {
    let Fixture { name, v1, p, w } = c.fixture("disabled").await?;
    let alg = default_alg(c.admin);
    ok(
        c.admin.set_enabled(&name, &v1.version, false).await,
        "disable",
    )?;
    expect_kind(
        p.unwrap_key(&w).await,
        K::KeyDisabled,
        "unwrap with a disabled version",
    )?;
    expect_kind(
        p.wrap_key(&name, Some(&v1.version), alg, &SECRET).await,
        K::KeyDisabled,
        "wrap with a disabled version",
    )?;
    ok(
        c.admin.set_enabled(&name, &v1.version, true).await,
        "enable",
    )?;
    let u = ok(p.unwrap_key(&w).await, "unwrap after re-enable")?;
    check(
        u.expose_secret() == SECRET,
        "re-enabled unwrap gave other bytes",
    )
}

async fn deleted_and_recovered(c: &Ctx<'_>) -> CheckResult {
    let Fixture { name, p, w, .. } = c.fixture("deleted").await?;
    ok(c.admin.delete_key(&name).await, "delete")?;
    expect_kind(
        p.unwrap_key(&w).await,
        K::KeyDeleted,
        "unwrap with a deleted key",
    )?;
    expect_kind(
        p.key_properties(&name, None).await,
        K::KeyDeleted,
        "properties of a deleted key",
    )?;
    ok(c.admin.recover_key(&name).await, "recover")?;
    let u = ok(p.unwrap_key(&w).await, "unwrap after recover")?;
    check(
        u.expose_secret() == SECRET,
        "recovered unwrap gave other bytes",
    )
}

async fn purged_key(c: &Ctx<'_>) -> CheckResult {
    let Fixture { name, p, w, .. } = c.fixture("purged").await?;
    let props = ok(p.vault_properties().await, "vault properties")?;
    ok(c.admin.delete_key(&name).await, "delete")?;
    if props.purge_protection {
        expect_kind(
            c.admin.purge_key(&name).await,
            K::Conflict,
            "purge under protection",
        )?;
        expect_kind(
            p.unwrap_key(&w).await,
            K::KeyDeleted,
            "unwrap while deleted",
        )?;
        return Ok(());
    }
    if props.soft_delete {
        ok(c.admin.purge_key(&name).await, "purge")?;
    }
    expect_kind(
        p.unwrap_key(&w).await,
        K::KeyNotFound,
        "unwrap with a purged key",
    )?;
    expect_kind(
        c.admin.recover_key(&name).await,
        K::KeyNotFound,
        "recover a purged key",
    )
}

async fn missing_permission(c: &Ctx<'_>) -> CheckResult {
    let Fixture { name, w, .. } = c.fixture("perm").await?;
    let alg = default_alg(c.admin);
    let limited = Identity::new(format!("{}-wrap-only", c.prefix));
    ok(
        c.admin
            .set_access(
                &limited,
                Permissions {
                    get: false,
                    wrap_key: true,
                    unwrap_key: false,
                },
            )
            .await,
        "set access",
    )?;
    let lp = ok(c.admin.provider_for(&limited).await, "provider_for")?;
    ok(
        lp.wrap_key(&name, None, alg, &SECRET).await,
        "wrap with wrapKey",
    )?;
    expect_kind(
        lp.unwrap_key(&w).await,
        K::Forbidden,
        "unwrap without unwrapKey",
    )?;
    expect_kind(
        lp.key_properties(&name, None).await,
        K::Forbidden,
        "get without get",
    )?;
    let nobody = Identity::new(format!("{}-nobody", c.prefix));
    let np = ok(c.admin.provider_for(&nobody).await, "provider_for")?;
    expect_kind(
        np.unwrap_key(&w).await,
        K::Forbidden,
        "unwrap with no policy",
    )
}

async fn revoked_identity(c: &Ctx<'_>) -> CheckResult {
    let name = c.name("revoked");
    ok(
        c.admin.create_key(&name, KeySpec::Rsa(2048)).await,
        "create",
    )?;
    let who = Identity::new(format!("{}-revoked", c.prefix));
    ok(
        c.admin.set_access(&who, Permissions::CMK).await,
        "set access",
    )?;
    let p = ok(c.admin.provider_for(&who).await, "provider_for")?;
    let w = round_trip(&*p, &name, None, default_alg(c.admin)).await?;
    ok(c.admin.remove_identity(&who).await, "remove identity")?;
    expect_kind(
        p.unwrap_key(&w).await,
        K::Forbidden,
        "unwrap after identity removal",
    )?;
    expect_kind(
        p.key_properties(&name, None).await,
        K::Forbidden,
        "get after identity removal",
    )
}

async fn corrupted_blobs(c: &Ctx<'_>) -> CheckResult {
    let Fixture { p, w, .. } = c.fixture("corrupt").await?;
    let n = w.ciphertext.len();
    let mut cases: Vec<(String, Vec<u8>)> = vec![
        ("empty".into(), Vec::new()),
        (
            "truncated by one byte".into(),
            w.ciphertext[..n - 1].to_vec(),
        ),
        ("half".into(), w.ciphertext[..n / 2].to_vec()),
        (
            "one byte appended".into(),
            [&w.ciphertext[..], &[0]].concat(),
        ),
    ];
    for bit in [0usize, 7, 8 * n / 2, 8 * n - 1] {
        let mut b = w.ciphertext.clone();
        b[bit / 8] ^= 1 << (bit % 8);
        cases.push((format!("bit {bit} flipped"), b));
    }
    for (what, blob) in cases {
        let bad = WrappedKey {
            ciphertext: blob,
            ..w.clone()
        };
        match p.unwrap_key(&bad).await {
            Err(e) if matches!(e.kind(), K::UnwrapFailed | K::InvalidRequest) => {}
            Err(e) => return Err(format!("{what}: expected UnwrapFailed, got {e}")),
            Ok(_) => return Err(format!("{what}: a corrupted blob unwrapped")),
        }
    }
    Ok(())
}

async fn concurrent_unwraps(c: &Ctx<'_>) -> CheckResult {
    let Fixture { p, w, .. } = c.fixture("concurrent").await?;
    let futs: Vec<_> = (0..64)
        .map(|_| {
            let p = Arc::clone(&p);
            let w = w.clone();
            Box::pin(async move { p.unwrap_key(&w).await })
                as Pin<Box<dyn Future<Output = _> + Send>>
        })
        .collect();
    let results: Vec<Result<crate::SecretBytes, ProviderError>> =
        crate::util::JoinAll::new(futs).await;
    let good = results
        .iter()
        .filter(|r| matches!(r, Ok(s) if s.expose_secret() == SECRET))
        .count();
    check(
        good == 64,
        &format!("{good} of 64 concurrent unwraps succeeded"),
    )
}

/// Runs every scenario against `admin` (which plays the vault owner and hands out
/// identity-scoped providers), printing one line per scenario, and returns the report.
///
/// Key names are prefixed with a random tag so runs against a shared server do not collide.
pub async fn run(admin: &dyn VaultAdmin) -> ConformanceReport {
    let mut tag = [0u8; 4];
    crate::crypto::fill_random(&mut tag);
    let c = Ctx {
        admin,
        prefix: format!("conf{}", crate::util::hex(&tag)),
        app: Identity::new("conformance-app"),
    };
    let caps = admin.capabilities();
    let mut report = ConformanceReport::default();
    let mut out = String::new();
    // Grant the app identity what a customer-managed key needs (backends without
    // per-identity policies use their one login).
    if caps.access_policies
        && let Err(e) = admin.set_access(&c.app, Permissions::CMK).await
    {
        report
            .scenarios
            .push(("setup", Outcome::Failed(format!("set_access: {e}"))));
        return report;
    }
    macro_rules! scenario {
        ($name:ident, $skip:expr) => {{
            let outcome = match $skip {
                Some(why) => Outcome::Skipped(why),
                None => match $name(&c).await {
                    Ok(()) => Outcome::Passed,
                    Err(e) => Outcome::Failed(e),
                },
            };
            let _ = writeln!(out, "conformance {:<40} {:?}", stringify!($name), outcome);
            report.scenarios.push((stringify!($name), outcome));
        }};
    }
    let no = |b: bool, why: &str| (!b).then(|| format!("declared unsupported: {why}"));
    scenario!(latest_version_resolution, None);
    scenario!(pinned_old_version_after_rotation, None);
    scenario!(round_trip_every_algorithm_and_size, None);
    scenario!(wrong_algorithm_refused, None);
    scenario!(
        disabled_version,
        no(caps.disable_version, "disable a version")
    );
    scenario!(
        deleted_and_recovered,
        no(caps.soft_delete, "soft-delete and recover")
    );
    scenario!(purged_key, no(caps.purge, "purge"));
    scenario!(
        missing_permission,
        no(caps.access_policies, "per-identity access policies")
    );
    scenario!(
        revoked_identity,
        no(caps.access_policies, "per-identity access policies")
    );
    scenario!(corrupted_blobs, None);
    scenario!(concurrent_unwraps, None);
    print!("{out}");
    report
}
