#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]
#![cfg_attr(docsrs, feature(doc_cfg))]

//! # Where things live
//!
//! The root holds what nearly every user names; everything else is in a module named after its
//! concept.
//!
//! | module | what it holds |
//! | --- | --- |
//! | [`account`] | [`AccountManager`] and its builder, accounts' records, states, policies and data classes: the customer-managed-key lifecycle (`docs/ACCOUNTS.md`) |
//! | [`store`] | where account records live: the [`AccountStore`](store::AccountStore) interface, the in-memory, PostgreSQL and SQLite stores (`docs/STORES.md`) |
//! | [`envelope`] | the object format: [`Envelope`], streaming readers and writers, sealed fields, inspection (`docs/FORMAT.md`) |
//! | [`provider`] | where keys live: [`KeyProvider`], [`VaultAdmin`], key and vault types, the resolver; one submodule per backend (`memory`, `file`, `pkcs11`, `transit`, `aws`, `azure`) |
//! | [`audit`] | audit events and sinks |
//! | [`clock`] | the injectable clock |
//! | `testing` (feature `testing`) | test aids: the provider and store conformance suites, a fault-injecting provider, a manual clock, deterministic vaults |
//!
//! The crypto core (`src/crypto/`) is private: every primitive the crate uses is called there
//! and nowhere else. Its backend — RustCrypto by default, aws-lc-rs with the feature `aws-lc` —
//! is chosen at compile time; [`CRYPTO_BACKEND`] names it.

pub mod account;
pub mod audit;
mod blocking;
pub mod clock;
mod crypto;
pub mod envelope;
mod error;
mod key_id;
pub mod provider;
mod secret;
pub mod store;
#[cfg(any(test, feature = "testing"))]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod util;

pub use crate::account::{AccountId, AccountManager, KeySource, Policy};
pub use crate::crypto::BACKEND as CRYPTO_BACKEND;
pub use crate::envelope::Envelope;
pub use crate::error::{Error, PolicyViolation, ProviderError, ProviderErrorKind};
pub use crate::key_id::{KeyId, KeyIdKind};
pub use crate::provider::{KeyProvider, VaultAdmin};
pub use crate::secret::{AES_256_KEY_LEN, AesKey, SecretBytes, SecretString};

/// Fuzzing entry points (only with `--cfg fuzzing`, as cargo-fuzz builds; see `fuzz/README.md`).
/// Not part of the API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::envelope::fuzzing::*;
    #[cfg(unix)]
    pub use crate::provider::file::fuzzing::fuzz_vault_records;
}
