#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod clock;
mod crypto;
mod error;
mod key_id;
mod provider;
mod secret;
mod util;

// The public interface is:
pub use crate::clock::{Clock, ManualClock, SystemClock};
pub use crate::crypto::{OaepHash, RsaPublic};
pub use crate::error::{Error, ProviderError, ProviderErrorKind};
pub use crate::key_id::KeyId;
pub use crate::provider::fault::{FaultInjector, ProviderOp};
#[cfg(unix)]
pub use crate::provider::file::{Argon2Params, FileProvider, FileVault, FileVaultOptions};
pub use crate::provider::memory::{InMemoryProvider, InMemoryVault};
pub use crate::provider::{
    AdminCapabilities, Identity, KeyOperation, KeyProperties, KeyProvider, KeySpec, KeyType,
    Permissions, VaultAdmin, VaultProperties, WrapAlgorithm, WrappedKey,
};
pub use crate::secret::{AES_256_KEY_LEN, AesKey, SecretBytes, SecretString};

/// The provider conformance suite (feature `testing`): run it against your own
/// [`KeyProvider`] + [`VaultAdmin`] to check it behaves like every bundled provider.
#[cfg(any(test, feature = "testing"))]
pub mod conformance {
    pub use crate::provider::conformance::{ConformanceReport, Outcome, run};
}
