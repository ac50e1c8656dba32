//! Accounts: customer-managed keys end to end — key sources, policies, key-version tracking,
//! the inaccessible state, the account-key cache, audit, and the rules that keep several
//! replicas of a service in agreement.
//!
//! | file | concern |
//! | --- | --- |
//! | `manager.rs` | the manager, its builder, per-account cells and their freshness against the store |
//! | `live.rs` | one account in this process: record copy, observations, key cache, single flights |
//! | `commit.rs` | commits (transition table, epochs, merge on conflict) and observations |
//! | `keys.rs` | the account-key cache with single flight (success and failure shared) |
//! | `probe.rs` | `probe`, `refresh`, `monitor`, `invalidate` |
//! | `lifecycle.rs` | create, key changes (re-wrap), delete, gates and listings |
//! | `validate.rs` | customer-key validation and proven wrapping |
//! | `data.rs` | objects and sealed fields |
//! | `policy.rs`, `record.rs` | policies (the seed documents' rules), the persistent record |
//!
//! Records are kept by an [`AccountStore`](crate::store::AccountStore) (`crate::store`); the
//! tenants' vaults are reached through a [`KeyResolver`](crate::provider::KeyResolver).

mod commit;
pub(crate) mod data;
mod keys;
mod lifecycle;
mod live;
mod manager;
pub(crate) mod policy;
mod probe;
pub(crate) mod record;
mod validate;

pub use self::data::ObjectKeys;
pub use self::policy::{DataClass, DoubleEncryption, Operation, Policy, PolicyBuilder};
pub use self::record::{
    AccountId, AccountRecord, AccountState, KeyRole, KeySource, RECORD_FORMAT, StateKind,
    WrappedAccountKey,
};

use std::collections::BTreeSet;
use std::sync::Arc;

pub use self::manager::{
    AccountManager, AccountManagerBuilder, DEFAULT_FAILURE_WINDOW, DEFAULT_MONITOR_CONCURRENCY,
    DEFAULT_RECORD_MAX_AGE,
};
use crate::error::Error;
use crate::provider::{KeyProvider, WrapAlgorithm};

/// A service-owned key in a provider: the platform key (wraps account keys of accounts without
/// a customer key, and the platform-class keys of every account) or the infrastructure key
/// (wraps second-layer account keys).
#[derive(Clone, Debug)]
pub struct PlatformKey {
    pub(crate) provider: Arc<dyn KeyProvider>,
    pub(crate) name: String,
    pub(crate) algorithm: WrapAlgorithm,
    pub(crate) role: KeyRole,
}

impl PlatformKey {
    /// Key `name` in `provider`, used with `algorithm` (`A256KW` for an AES key).
    pub fn new(provider: Arc<dyn KeyProvider>, name: &str, algorithm: WrapAlgorithm) -> Self {
        Self {
            provider,
            name: name.to_owned(),
            algorithm,
            role: KeyRole::Platform,
        }
    }
}

/// What a new account looks like.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NewAccount {
    /// The account id.
    pub id: AccountId,
    /// The account's region.
    pub region: String,
    /// The account's tenant.
    pub tenant: String,
    /// The rules it lives under.
    pub policy: Policy,
    /// What protects its account key.
    pub key_source: KeySource,
    /// Ask for the second layer (where the policy makes it optional).
    pub double_encryption: bool,
    /// Optional data classes the key source should also cover (fixed at creation).
    pub chosen_classes: BTreeSet<DataClass>,
}

impl NewAccount {
    /// A platform-keyed account with no double encryption and no optional classes.
    pub fn new(id: AccountId, region: &str, tenant: &str, policy: Policy) -> Self {
        Self {
            id,
            region: region.to_owned(),
            tenant: tenant.to_owned(),
            policy,
            key_source: KeySource::Platform,
            double_encryption: false,
            chosen_classes: BTreeSet::new(),
        }
    }

    /// With a key source.
    pub fn key_source(mut self, source: KeySource) -> Self {
        self.key_source = source;
        self
    }

    /// With double encryption requested.
    pub fn double_encryption(mut self, on: bool) -> Self {
        self.double_encryption = on;
        self
    }

    /// With optional classes chosen.
    pub fn choose_classes(mut self, classes: &[&str]) -> Self {
        self.chosen_classes = classes.iter().map(|c| DataClass::new(*c)).collect();
        self
    }
}

/// The three account-level keys an account may have.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Slot {
    /// Wrapped by the key source (customer or platform).
    Account = 0,
    /// Wrapped by the platform key: classes that never follow the customer key.
    PlatformClass = 1,
    /// Wrapped by the infrastructure key: the second layer.
    Infrastructure = 2,
}

/// Every slot.
pub(crate) const ALL_SLOTS: [Slot; 3] = [Slot::Account, Slot::PlatformClass, Slot::Infrastructure];

/// One account's result from [`AccountManager::monitor`].
#[derive(Debug)]
#[non_exhaustive]
pub struct MonitorEntry {
    /// The account.
    pub account: AccountId,
    /// Its state after the refresh, or why the refresh could not run (a transient failure
    /// leaves the state unchanged).
    pub result: Result<StateKind, Error>,
}
