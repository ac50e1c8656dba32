//! Test aids (feature `testing`): what the crate's own tests use, for yours.
//!
//! - [`provider_conformance`]: run the suite every bundled provider passes against your own
//!   [`KeyProvider`](crate::KeyProvider) + [`VaultAdmin`](crate::VaultAdmin).
//! - [`store_conformance`]: the same for your own [`AccountStore`](crate::store::AccountStore).
//! - [`FaultInjector`]: wraps any provider to add latency, failures or a cut (revocation).
//! - [`ManualClock`]: a clock that moves only when told (cache ages, retention periods).
//! - `InMemoryVault::seeded`: a vault whose key generation is deterministic.
//!
//! Never use them in production: the deterministic vault's keys are predictable.

pub use crate::clock::ManualClock;
pub use crate::provider::fault::{FaultInjector, ProviderOp};

/// The provider conformance suite: run it against your own
/// [`KeyProvider`](crate::KeyProvider) + [`VaultAdmin`](crate::VaultAdmin) to check it behaves
/// like every bundled provider.
pub mod provider_conformance {
    pub use crate::provider::conformance::{ConformanceReport, Outcome, run};
}

/// The account store conformance suite: run it against your own
/// [`AccountStore`](crate::store::AccountStore) to check it behaves like every bundled store.
pub mod store_conformance {
    pub use crate::provider::conformance::Outcome;
    pub use crate::store::conformance::{StoreConformanceReport, run};
}
