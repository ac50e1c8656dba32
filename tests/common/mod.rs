//! A small world for account tests: a tenant's vault, the service's platform and
//! infrastructure keys, a directory that reaches the vault, a manual clock, an audit sink, and
//! a fault injector around the service identity's provider (to count and cut calls).
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;

use byok::account::{NewAccount, PlatformKey};
use byok::audit::MemoryAuditSink;
use byok::provider::memory::InMemoryVault;
use byok::provider::{
    Identity, KeySpec, Permissions, VaultDirectory, VaultProperties, WrapAlgorithm,
};
use byok::store::InMemoryAccountStore;
use byok::testing::{FaultInjector, ManualClock, ProviderOp};
use byok::{AccountId, AccountManager, KeyId, Policy, VaultAdmin};

pub const HOST: &str = "contoso.vault.example";
pub const REGION: &str = "westeurope";
pub const TENANT: &str = "contoso";

pub struct World {
    pub clock: Arc<ManualClock>,
    pub vault: InMemoryVault,
    pub directory: Arc<VaultDirectory>,
    pub audit: Arc<MemoryAuditSink>,
    pub manager: AccountManager,
    pub identity: Identity,
    /// Wraps the service identity's provider on the tenant vault.
    pub faults: FaultInjector,
    /// The store every manager of this world shares.
    pub store: Arc<InMemoryAccountStore>,
    pub platform_key: PlatformKey,
    pub infra_key: PlatformKey,
}

pub fn vault(
    host: &str,
    region: &str,
    tenant: &str,
    seed: u8,
    clock: &Arc<ManualClock>,
) -> InMemoryVault {
    InMemoryVault::seeded(
        VaultProperties::new(host, region, tenant),
        clock.clone(),
        [seed; 32],
    )
}

impl World {
    pub async fn new() -> World {
        let clock = Arc::new(ManualClock::default());
        let service = Identity::new("service");
        let platform = vault("platform.internal", REGION, "operator", 1, &clock);
        platform
            .create_key("platform-kek", KeySpec::Aes256)
            .await
            .expect("platform key");
        platform
            .set_access(&service, Permissions::CMK)
            .await
            .expect("grant");
        let infra = vault("infra.internal", REGION, "operator", 2, &clock);
        infra
            .create_key("infra-kek", KeySpec::Aes256)
            .await
            .expect("infra key");
        infra
            .set_access(&service, Permissions::CMK)
            .await
            .expect("grant");

        let tenant = vault(HOST, REGION, TENANT, 3, &clock);
        let identity = Identity::new("uami-contoso");
        tenant
            .set_access(&identity, Permissions::CMK)
            .await
            .expect("grant");
        let directory = Arc::new(VaultDirectory::new());
        directory.add_vault(HOST, Arc::new(tenant.clone()));
        let faults = FaultInjector::new(Arc::new(tenant.provider(&identity)), 42);
        directory.override_provider(HOST, &identity, Arc::new(faults.clone()));

        let audit = Arc::new(MemoryAuditSink::new());
        let platform_key = PlatformKey::new(
            Arc::new(platform.provider(&service)),
            "platform-kek",
            WrapAlgorithm::A256Kw,
        );
        let infra_key = PlatformKey::new(
            Arc::new(infra.provider(&service)),
            "infra-kek",
            WrapAlgorithm::A256Kw,
        );
        let store = Arc::new(InMemoryAccountStore::new());
        let manager = AccountManager::builder(platform_key.clone(), directory.clone())
            .infrastructure_key(infra_key.clone())
            .store(store.clone())
            .audit(audit.clone())
            .clock(clock.clone())
            .build();
        World {
            clock,
            vault: tenant,
            directory,
            audit,
            manager,
            identity,
            faults,
            store,
            platform_key,
            infra_key,
        }
    }

    /// A builder for another replica: same keys, clock and audit sink; `store` and `resolver`
    /// as given (the world's own for the usual case).
    pub fn replica_builder(
        &self,
        store: Arc<dyn byok::store::AccountStore>,
        resolver: Arc<dyn byok::provider::KeyResolver>,
    ) -> byok::account::AccountManagerBuilder {
        AccountManager::builder(self.platform_key.clone(), resolver)
            .infrastructure_key(self.infra_key.clone())
            .store(store)
            .audit(self.audit.clone())
            .clock(self.clock.clone())
    }

    /// Another replica over the world's store and directory.
    pub fn replica(&self) -> AccountManager {
        self.replica_builder(self.store.clone(), self.directory.clone())
            .build()
    }

    /// Creates an RSA key of `bits` in the tenant vault and returns its versionless id.
    pub async fn cmk(&self, name: &str, bits: u32) -> KeyId {
        self.vault
            .create_key(name, KeySpec::Rsa(bits))
            .await
            .expect("create cmk");
        KeyId::new(HOST, name, None).expect("key id")
    }

    pub fn unwraps(&self) -> u64 {
        self.faults.calls(ProviderOp::Unwrap)
    }

    pub async fn platform_account(&self, id: &str, policy: Policy) -> AccountId {
        let id = AccountId::new(id).expect("id");
        self.manager
            .create_account(NewAccount::new(id.clone(), REGION, TENANT, policy))
            .await
            .expect("create account");
        id
    }

    /// Adds another vault to the directory (same service identity granted).
    pub async fn other_vault(
        &self,
        host: &str,
        region: &str,
        tenant: &str,
        protected: bool,
    ) -> InMemoryVault {
        let props = VaultProperties::new(host, region, tenant).protection(protected, protected);
        let v = InMemoryVault::seeded(props, self.clock.clone(), [9; 32]);
        v.set_access(&self.identity, Permissions::CMK)
            .await
            .expect("grant");
        self.directory.add_vault(host, Arc::new(v.clone()));
        v
    }
}

impl World {
    /// A vault at `host` (reachable, the service identity granted) holding an RSA 2048 key
    /// `k`; returns the key's versionless id.
    pub async fn key_in_other_vault(
        &self,
        host: &str,
        region: &str,
        tenant: &str,
        protected: bool,
    ) -> KeyId {
        let v = self.other_vault(host, region, tenant, protected).await;
        v.create_key("k", KeySpec::Rsa(2048)).await.expect("key");
        KeyId::new(host, "k", None).expect("key id")
    }
}

impl World {
    /// Asks for `key` as the customer key of `id` as the world's identity, expecting a policy
    /// refusal; returns the rule broken.
    pub async fn refused(&self, id: &AccountId, key: KeyId) -> byok::PolicyViolation {
        violation(
            self.manager
                .set_customer_key(id, key, self.identity.clone())
                .await
                .expect_err("the policy must refuse this key"),
        )
    }
}

/// The rule a policy error names.
pub fn violation(e: byok::Error) -> byok::PolicyViolation {
    match e {
        byok::Error::Policy { violation, .. } => violation,
        other => panic!("expected a policy violation, got {other}"),
    }
}

pub fn class(name: &str) -> byok::account::DataClass {
    byok::account::DataClass::new(name)
}
