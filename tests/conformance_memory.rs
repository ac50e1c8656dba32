//! The provider conformance suite against the in-memory vault, with and without purge
//! protection, plus proof that the suite catches a misbehaving provider.

use std::sync::Arc;

use async_trait::async_trait;
use byok::provider::memory::InMemoryVault;
use byok::provider::{
    AdminCapabilities, Identity, KeyProperties, KeySpec, Permissions, ProviderFactory,
    VaultProperties, WrapAlgorithm, WrappedKey,
};
use byok::testing::provider_conformance::{self as conformance, Outcome};
use byok::{KeyProvider, ProviderError, ProviderErrorKind, SecretBytes, VaultAdmin};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_vault_with_purge_protection() {
    let vault = InMemoryVault::new(VaultProperties::new(
        "conf.vault.example",
        "westeurope",
        "t",
    ));
    let report = conformance::run(&vault).await;
    report.assert_passed();
    assert_eq!(report.passed(), report.scenarios.len(), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_memory_vault_without_purge_protection() {
    let props =
        VaultProperties::new("conf2.vault.example", "westeurope", "t").protection(true, false);
    let report = conformance::run(&InMemoryVault::new(props)).await;
    report.assert_passed();
}

/// An admin whose providers misbehave in one chosen way: the suite must notice.
#[derive(Debug)]
struct Broken {
    vault: InMemoryVault,
    flaw: Flaw,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Flaw {
    /// Reports a disabled version as "not found" instead of "disabled".
    WrongDisabledKind,
    /// Ignores access policies.
    NoAccessControl,
    /// Returns zeros from unwrap.
    LyingUnwrap,
}

#[derive(Debug)]
struct BrokenProvider {
    inner: Arc<dyn KeyProvider>,
    owner: Arc<dyn KeyProvider>,
    flaw: Flaw,
}

#[async_trait]
impl KeyProvider for BrokenProvider {
    async fn vault_properties(&self) -> Result<VaultProperties, ProviderError> {
        self.inner.vault_properties().await
    }
    async fn key_properties(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<KeyProperties, ProviderError> {
        self.inner.key_properties(name, version).await
    }
    async fn wrap_key(
        &self,
        name: &str,
        version: Option<&str>,
        algorithm: WrapAlgorithm,
        key: &[u8],
    ) -> Result<WrappedKey, ProviderError> {
        self.inner.wrap_key(name, version, algorithm, key).await
    }
    async fn unwrap_key(&self, wrapped: &WrappedKey) -> Result<SecretBytes, ProviderError> {
        match self.flaw {
            Flaw::LyingUnwrap => Ok(SecretBytes::new(vec![0; 32])),
            Flaw::NoAccessControl => self.owner.unwrap_key(wrapped).await,
            Flaw::WrongDisabledKind => match self.inner.unwrap_key(wrapped).await {
                Err(e) if e.kind() == ProviderErrorKind::KeyDisabled => {
                    Err(ProviderError::new(ProviderErrorKind::KeyNotFound, "nope"))
                }
                other => other,
            },
        }
    }
}

#[async_trait]
impl VaultAdmin for Broken {
    fn capabilities(&self) -> AdminCapabilities {
        self.vault.capabilities()
    }
    async fn create_key(&self, n: &str, s: KeySpec) -> Result<KeyProperties, ProviderError> {
        // Small keys keep this meta-test fast; the real suite uses every size.
        let s = match s {
            KeySpec::Rsa(_) => KeySpec::Rsa(2048),
            other => other,
        };
        self.vault.create_key(n, s).await
    }
    async fn import_rsa_pem(&self, n: &str, p: &str) -> Result<KeyProperties, ProviderError> {
        self.vault.import_rsa_pem(n, p).await
    }
    async fn rotate_key(&self, n: &str) -> Result<KeyProperties, ProviderError> {
        self.vault.rotate_key(n).await
    }
    async fn list_versions(&self, n: &str) -> Result<Vec<KeyProperties>, ProviderError> {
        self.vault.list_versions(n).await
    }
    async fn set_enabled(&self, n: &str, v: &str, e: bool) -> Result<(), ProviderError> {
        self.vault.set_enabled(n, v, e).await
    }
    async fn delete_key(&self, n: &str) -> Result<(), ProviderError> {
        self.vault.delete_key(n).await
    }
    async fn recover_key(&self, n: &str) -> Result<(), ProviderError> {
        self.vault.recover_key(n).await
    }
    async fn purge_key(&self, n: &str) -> Result<(), ProviderError> {
        self.vault.purge_key(n).await
    }
    async fn set_access(&self, i: &Identity, p: Permissions) -> Result<(), ProviderError> {
        self.vault.set_access(i, p).await
    }
    async fn remove_identity(&self, i: &Identity) -> Result<(), ProviderError> {
        self.vault.remove_identity(i).await
    }
}

#[async_trait]
impl ProviderFactory for Broken {
    async fn provider_for(&self, i: &Identity) -> Result<Arc<dyn KeyProvider>, ProviderError> {
        let owner = Identity::new("owner");
        self.vault.set_access(&owner, Permissions::CMK).await?;
        Ok(Arc::new(BrokenProvider {
            inner: self.vault.provider_for(i).await?,
            owner: self.vault.provider_for(&owner).await?,
            flaw: self.flaw,
        }))
    }
}

fn failed(report: &conformance::ConformanceReport, scenario: &str) -> bool {
    report
        .scenarios
        .iter()
        .any(|(n, o)| *n == scenario && matches!(o, Outcome::Failed(_)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_catches_misbehaving_providers() {
    for (flaw, scenarios) in [
        (Flaw::WrongDisabledKind, &["disabled_version"][..]),
        (
            Flaw::NoAccessControl,
            &["missing_permission", "revoked_identity"][..],
        ),
        (
            Flaw::LyingUnwrap,
            &[
                "round_trip_every_algorithm_and_size",
                "concurrent_unwraps",
                "pinned_old_version_after_rotation",
            ][..],
        ),
    ] {
        let broken = Broken {
            vault: InMemoryVault::new(VaultProperties::new("broken.example", "r", "t")),
            flaw,
        };
        let report = conformance::run(&broken).await;
        for s in scenarios {
            assert!(failed(&report, s), "{flaw:?} should fail {s}: {report:?}");
        }
    }
}
