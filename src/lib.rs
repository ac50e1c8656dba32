#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod account;
mod audit;
mod blocking;
mod clock;
mod crypto;
mod envelope;
mod error;
mod key_id;
mod provider;
mod secret;
mod stores;
mod util;

// The public interface is:
pub use crate::account::data::ObjectKeys;
pub use crate::account::policy::{DataClass, DoubleEncryption, Operation, Policy, PolicyBuilder};
pub use crate::account::record::{
    AccountId, AccountRecord, AccountState, KeyRole, KeySource, RECORD_FORMAT, StateKind,
    WrappedAccountKey,
};
pub use crate::account::store::{
    AccountStore, ChangeListener, InMemoryAccountStore, KeyResolver, StoreChange, VaultDirectory,
};
pub use crate::account::{
    AccountManager, AccountManagerBuilder, DEFAULT_FAILURE_WINDOW, DEFAULT_MONITOR_CONCURRENCY,
    DEFAULT_RECORD_MAX_AGE, MonitorEntry, NewAccount, PlatformKey,
};
pub use crate::audit::{
    AuditAction, AuditEvent, AuditOutcome, AuditSink, MemoryAuditSink, TracingAuditSink,
};
pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::crypto::{BACKEND as CRYPTO_BACKEND, OaepHash, RsaPublic};
/// Fuzzing entry points (only with `--cfg fuzzing`, as cargo-fuzz builds).
#[cfg(fuzzing)]
pub use crate::envelope::fuzzing;
pub use crate::envelope::{
    AccountKey, Bounded, Envelope, FormatError, HeaderInfo, LayerKeyInfo, MAX_FIELD_LEN,
    MAX_HEADER_LEN, OpenHeader, OpenReader, PreparedKey, SealWriter, field_key_version, inspect,
    inspect_reader,
};
#[cfg(feature = "tokio")]
pub use crate::envelope::{AsyncOpenReader, AsyncSealWriter};
pub use crate::error::{Error, PolicyViolation, ProviderError, ProviderErrorKind};
pub use crate::key_id::KeyId;
pub use crate::provider::fault::{FaultInjector, ProviderOp};
#[cfg(unix)]
pub use crate::provider::file::{Argon2Params, FileProvider, FileVault, FileVaultOptions};
pub use crate::provider::memory::{InMemoryProvider, InMemoryVault};
#[cfg(feature = "pkcs11")]
pub use crate::provider::pkcs11::{Pkcs11Config, Pkcs11Provider};
#[cfg(feature = "transit")]
pub use crate::provider::transit::{RetryPolicy, TransitAdmin, TransitConfig, TransitProvider};
pub use crate::provider::{
    AdminCapabilities, Identity, KeyOperation, KeyProperties, KeyProvider, KeySpec, KeyType,
    Permissions, VaultAdmin, VaultProperties, WrapAlgorithm, WrappedKey,
};
pub use crate::secret::{AES_256_KEY_LEN, AesKey, SecretBytes, SecretString};
#[cfg(feature = "postgres")]
pub use crate::stores::postgres::{PostgresAccountStore, PostgresStoreOptions};
#[cfg(feature = "sqlite")]
pub use crate::stores::sqlite::SqliteAccountStore;

/// The provider conformance suite (feature `testing`): run it against your own
/// [`KeyProvider`] + [`VaultAdmin`] to check it behaves like every bundled provider.
#[cfg(any(test, feature = "testing"))]
pub mod conformance {
    pub use crate::provider::conformance::{ConformanceReport, Outcome, run};
}

/// The account store conformance suite (feature `testing`): run it against your own
/// [`AccountStore`] to check it behaves like every bundled store.
#[cfg(any(test, feature = "testing"))]
pub mod store_conformance {
    pub use crate::provider::conformance::Outcome;
    pub use crate::stores::conformance::{StoreConformanceReport, run};
}
