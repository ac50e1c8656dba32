//! The crate's error type.
//!
//! One [`Error`] enum that callers match on; provider failures carry a
//! [`ProviderErrorKind`] that says whether the failure is *definitive* (the key is really not
//! usable: the lifecycle moves the account to `KeyInaccessible`) or *transient* (try later:
//! the state never changes). Authentication failures of any kind are the single opaque
//! [`Error::Decryption`].

use core::fmt;
use std::sync::Arc;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Decryption or authentication failed. Deliberately opaque: it never says which check
    /// failed (tag, key commitment, header binding, truncation, wrong key). HTTP 500: the
    /// crate opens objects the service itself stored, so a failure is corruption or tampering
    /// in the service's storage (or the service passing the wrong context), not the client's
    /// fault. A service that opens envelopes its clients send maps it to 400 itself.
    #[error("decryption failed")]
    Decryption,

    /// A key provider (vault, HSM, KMS) refused or failed an operation on a tenant's key (or
    /// on a key the caller named). HTTP status from the [`ProviderErrorKind`] (403 forbidden,
    /// 404 not found, 503 transient…).
    #[error(transparent)]
    Provider(#[from] ProviderError),

    /// The service's own platform or infrastructure key failed (not the tenant's key): a fault
    /// of the service's configuration or of its KMS, never reported as the tenant's 403. HTTP
    /// 503 when the provider error is transient, 500 otherwise. The provider error is the
    /// [`source`](std::error::Error::source).
    #[error("the service's platform key failed")]
    PlatformKey(#[source] ProviderError),

    /// A caller-supplied value is malformed or out of range.
    #[error("invalid input: {0}")]
    InvalidInput(String),

    /// A key identifier could not be parsed.
    #[error("invalid key identifier {input:?}: {reason}")]
    InvalidKeyId {
        /// The text that was given.
        input: String,
        /// What is wrong with it.
        reason: &'static str,
    },

    /// An algorithm name that this crate refuses or does not know (e.g. `RSA1_5`).
    #[error("unsupported algorithm {0:?}")]
    UnsupportedAlgorithm(String),

    /// No such account (or it was deleted). HTTP 404.
    #[error("account {0} not found")]
    AccountNotFound(String),

    /// A concurrent update won, or the thing already exists. HTTP 409.
    #[error("conflict: {0}")]
    Conflict(String),

    /// The account's customer key is inaccessible and the policy does not allow this
    /// operation meanwhile. HTTP 403.
    #[error("account {account}: customer key inaccessible ({reason})")]
    KeyInaccessible {
        /// The account.
        account: String,
        /// The kind of the definitive provider failure that was observed (e.g.
        /// [`ProviderErrorKind::Forbidden`] after the tenant removed the access,
        /// [`ProviderErrorKind::KeyDisabled`]); `None` for a state recorded without one (records
        /// of crate versions before 0.1's typed kinds).
        kind: Option<ProviderErrorKind>,
        /// What was observed, for people (the provider's message).
        reason: String,
    },

    /// The key provider cannot be reached and no cached account key is valid. The account's
    /// state is unchanged. HTTP 503.
    #[error("account {account}: key provider unavailable ({reason})")]
    Unavailable {
        /// The account.
        account: String,
        /// The transient failure.
        reason: String,
    },

    /// The account store failed (database unreachable, timeout, bad row). Transient: no
    /// account's state changed. HTTP 503.
    #[error("account store: {message}")]
    Store {
        /// What failed.
        message: String,
        /// The underlying error (database client, I/O), if any; shared, so callers that share
        /// one failed store read each get it.
        #[source]
        source: Option<std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>>,
    },

    /// A key or vault does not satisfy the account's policy; nothing was changed. HTTP 400.
    #[error("policy {policy}: {violation}")]
    Policy {
        /// The policy's name.
        policy: String,
        /// The rule that was broken.
        violation: PolicyViolation,
    },

    /// Bytes are not an envelope header this version reads (returned by inspection; opening
    /// untrusted bytes only ever fails with [`Error::Decryption`]). HTTP 500, for the reason
    /// given at [`Error::Decryption`].
    #[error("envelope format: {0}")]
    Format(#[from] crate::envelope::FormatError),

    /// Reading or writing the caller's stream failed (the source or sink of a streaming
    /// seal or open). The [`std::io::Error`] is kept as the source, so its
    /// [`kind`](std::io::Error::kind) says what happened. HTTP 500: the crate cannot tell a
    /// client that went away from a storage fault; a service that knows its transport maps
    /// the kind further (e.g. 503 for a timed-out backend).
    #[error("I/O: {0}")]
    Io(#[source] std::io::Error),
}

impl From<std::io::Error> for Error {
    /// As [`Error::from_io`].
    fn from(e: std::io::Error) -> Self {
        Self::from_io(e)
    }
}

/// A broken policy rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyViolation {
    /// The key is not an RSA key (e.g. EC).
    #[error("key type {found} is not allowed; an RSA key is required")]
    KeyType {
        /// The type found.
        found: String,
    },
    /// The RSA size is not allowed.
    #[error("RSA {bits} is not allowed (allowed: {allowed:?})")]
    KeySize {
        /// The size found.
        bits: u32,
        /// The allowed sizes.
        allowed: Vec<u32>,
    },
    /// The vault lacks soft-delete.
    #[error("the vault must have soft-delete enabled")]
    SoftDeleteRequired,
    /// The vault lacks purge protection.
    #[error("the vault must have purge protection enabled")]
    PurgeProtectionRequired,
    /// The vault is in another region.
    #[error("the vault is in region {vault}, the account in {account}")]
    RegionMismatch {
        /// The vault's region.
        vault: String,
        /// The account's region.
        account: String,
    },
    /// The vault belongs to another tenant.
    #[error("the vault belongs to tenant {vault}, the account to {account}")]
    TenantMismatch {
        /// The vault's tenant.
        vault: String,
        /// The account's tenant.
        account: String,
    },
    /// The identity lacks a required permission (probed).
    #[error("the identity lacks the {0} permission on the key")]
    MissingPermission(&'static str),
    /// The key may only change within the same vault.
    #[error("the key may only change within vault {current}, not to {requested}")]
    DifferentVault {
        /// The current vault.
        current: String,
        /// The requested vault.
        requested: String,
    },
    /// Switching between platform and customer keys after creation is not allowed.
    #[error(
        "switching between platform-managed and customer-managed keys after creation is not allowed"
    )]
    SourceSwitchForbidden,
    /// Customer keys can only be enabled on an existing account.
    #[error("customer-managed keys can only be enabled on an existing account")]
    CustomerKeyAtCreation,
}

impl Error {
    /// The HTTP status a service would return for this error.
    pub fn http_status(&self) -> u16 {
        match self {
            Error::Decryption => 500,
            Error::Provider(p) => p.kind.http_status(),
            Error::PlatformKey(p) if p.is_transient() => 503,
            Error::PlatformKey(_) => 500,
            Error::InvalidInput(_)
            | Error::InvalidKeyId { .. }
            | Error::UnsupportedAlgorithm(_)
            | Error::Policy { .. } => 400,
            Error::AccountNotFound(_) => 404,
            Error::Conflict(_) => 409,
            Error::KeyInaccessible { .. } => 403,
            Error::Unavailable { .. } | Error::Store { .. } => 503,
            Error::Format(_) => 500,
            Error::Io(_) => 500,
        }
    }

    /// The crate's error behind an [`std::io::Error`] of a streaming API: the byok [`Error`]
    /// a [`SealWriter`](crate::envelope::SealWriter) or [`OpenReader`](crate::envelope::OpenReader) reported
    /// through `io::Error` (e.g. [`Error::Decryption`], [`Error::KeyInaccessible`]), else
    /// [`Error::Io`] with the I/O error itself.
    pub fn from_io(e: std::io::Error) -> Self {
        if !e.get_ref().is_some_and(|inner| inner.is::<Error>()) {
            return Error::Io(e);
        }
        let kind = e.kind();
        match e.into_inner().map(|inner| inner.downcast::<Error>()) {
            Some(Ok(inner)) => *inner,
            Some(Err(other)) => Error::Io(std::io::Error::new(kind, other)),
            None => Error::Io(kind.into()),
        }
    }

    /// An [`Error::Store`] with `message` and the underlying cause.
    pub fn store(
        message: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        let source: Box<dyn std::error::Error + Send + Sync + 'static> = source.into();
        Error::Store {
            message: message.into(),
            source: Some(std::sync::Arc::from(source)),
        }
    }

    /// The provider error kind, if this error came from a provider (the tenant's,
    /// [`Error::Provider`], or the service's own, [`Error::PlatformKey`]).
    pub fn provider_kind(&self) -> Option<ProviderErrorKind> {
        match self {
            Error::Provider(p) | Error::PlatformKey(p) => Some(p.kind),
            _ => None,
        }
    }
}

/// A failure reported by a [`crate::KeyProvider`] or vault administration call.
///
/// Carries the [`ProviderErrorKind`] the account layer acts on, a message (never secrets), and
/// the underlying cause where there is one — the HTTP client's error, the PKCS#11 return value,
/// the file system's [`std::io::Error`] — as [`std::error::Error::source`], so logs and callers
/// can walk the chain (`ProviderError::source()?.downcast_ref::<std::io::Error>()`).
/// Equality compares the kind and the message only.
#[derive(Debug, Clone)]
pub struct ProviderError {
    kind: ProviderErrorKind,
    message: String,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl PartialEq for ProviderError {
    fn eq(&self, other: &Self) -> bool {
        self.kind == other.kind && self.message == other.message
    }
}

impl Eq for ProviderError {}

impl ProviderError {
    /// A new error of `kind` with a human-readable message (never containing secrets).
    pub fn new(kind: ProviderErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
            source: None,
        }
    }

    /// The same error with `source` as its cause ([`std::error::Error::source`]).
    #[must_use]
    pub fn with_source(
        mut self,
        source: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }

    /// The same error (kind and cause) with its message rewritten by `f`.
    #[must_use]
    #[cfg_attr(
        not(any(feature = "transit", feature = "aws-kms", feature = "azure")),
        allow(dead_code)
    )]
    pub(crate) fn map_message(mut self, f: impl FnOnce(&str) -> String) -> Self {
        self.message = f(&self.message);
        self
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ProviderErrorKind {
        self.kind
    }

    /// The provider's explanation.
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Shorthand for `self.kind().is_definitive()`.
    pub fn is_definitive(&self) -> bool {
        self.kind.is_definitive()
    }

    /// Shorthand for `self.kind().is_transient()`.
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }
}

impl fmt::Display for ProviderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key provider: {}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ProviderError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// The kinds of provider failure.
///
/// Three classes: **definitive** failures say the key cannot be used until its owner acts
/// ([`is_definitive`](Self::is_definitive)); **transient** ones may succeed on retry
/// ([`is_transient`](Self::is_transient)); the rest are faults in the request itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum ProviderErrorKind {
    /// No key (or no such version) with that name. Definitive, 404.
    KeyNotFound,
    /// The key version exists but is disabled. Definitive, 403.
    KeyDisabled,
    /// The key is (soft-)deleted. Definitive, 403.
    KeyDeleted,
    /// The identity lacks the permission, or the identity itself was removed. Definitive, 403.
    Forbidden,
    /// The key's type cannot do what was asked (an AES key asked for RSA-OAEP, an EC key to
    /// wrap). Definitive, 400.
    WrongKeyType,
    /// The vault itself no longer exists or was never there. Definitive, 404.
    VaultNotFound,
    /// The wrapped blob did not unwrap (corrupted, truncated, wrapped under another key).
    /// Neither definitive nor transient: the key is fine, the input is not. 400.
    UnwrapFailed,
    /// The request is malformed (bad algorithm, oversized secret). 400.
    InvalidRequest,
    /// The request conflicts with the vault's state (name exists, purge protection on,
    /// concurrent change). 409.
    Conflict,
    /// The provider did not answer in time. Transient, 503.
    Timeout,
    /// The provider is unreachable or failing. Transient, 503.
    Unavailable,
    /// The provider asks us to slow down. Transient, 503 (a service would say 429).
    Throttled,
    /// The backend cannot do this at all (e.g. an HSM without per-identity policies). 501.
    Unsupported,
    /// The provider's stored data failed authentication or parsing: a truncated, bit-flipped
    /// or hand-edited file of a file-backed vault (the message names the file). Nothing was
    /// repaired or dropped. Neither definitive nor transient: the key may be intact in a
    /// backup, and retrying will not help until an operator restores the data. 500.
    Corrupted,
}

impl ProviderErrorKind {
    /// Every kind, in a fixed order (their index is the compact code a key handle's
    /// revocation flag stores).
    const ALL: [ProviderErrorKind; 14] = [
        Self::KeyNotFound,
        Self::KeyDisabled,
        Self::KeyDeleted,
        Self::Forbidden,
        Self::WrongKeyType,
        Self::VaultNotFound,
        Self::UnwrapFailed,
        Self::InvalidRequest,
        Self::Conflict,
        Self::Timeout,
        Self::Unavailable,
        Self::Throttled,
        Self::Unsupported,
        Self::Corrupted,
    ];

    /// This kind's index in [`Self::ALL`] (an exhaustive match: a new kind must be given one).
    pub(crate) fn code(self) -> u8 {
        match self {
            Self::KeyNotFound => 0,
            Self::KeyDisabled => 1,
            Self::KeyDeleted => 2,
            Self::Forbidden => 3,
            Self::WrongKeyType => 4,
            Self::VaultNotFound => 5,
            Self::UnwrapFailed => 6,
            Self::InvalidRequest => 7,
            Self::Conflict => 8,
            Self::Timeout => 9,
            Self::Unavailable => 10,
            Self::Throttled => 11,
            Self::Unsupported => 12,
            Self::Corrupted => 13,
        }
    }

    /// The kind with index `code`.
    pub(crate) fn from_code(code: u8) -> Option<Self> {
        Self::ALL.get(usize::from(code)).copied()
    }

    /// The key cannot be used until its owner acts: not found, disabled, deleted, forbidden,
    /// wrong type, vault gone.
    pub fn is_definitive(self) -> bool {
        matches!(
            self,
            Self::KeyNotFound
                | Self::KeyDisabled
                | Self::KeyDeleted
                | Self::Forbidden
                | Self::WrongKeyType
                | Self::VaultNotFound
        )
    }

    /// The same request may succeed later: timeouts, unavailability, throttling.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Timeout | Self::Unavailable | Self::Throttled)
    }

    /// The HTTP status a service would return.
    pub fn http_status(self) -> u16 {
        match self {
            Self::KeyNotFound | Self::VaultNotFound => 404,
            Self::KeyDisabled | Self::KeyDeleted | Self::Forbidden => 403,
            Self::WrongKeyType | Self::UnwrapFailed | Self::InvalidRequest => 400,
            Self::Conflict => 409,
            Self::Timeout | Self::Unavailable | Self::Throttled => 503,
            Self::Unsupported => 501,
            Self::Corrupted => 500,
        }
    }
}

impl fmt::Display for ProviderErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::KeyNotFound => "key not found",
            Self::KeyDisabled => "key disabled",
            Self::KeyDeleted => "key deleted",
            Self::Forbidden => "forbidden",
            Self::WrongKeyType => "wrong key type",
            Self::VaultNotFound => "vault not found",
            Self::UnwrapFailed => "unwrap failed",
            Self::InvalidRequest => "invalid request",
            Self::Conflict => "conflict",
            Self::Timeout => "timeout",
            Self::Unavailable => "unavailable",
            Self::Throttled => "throttled",
            Self::Unsupported => "unsupported",
            Self::Corrupted => "corrupted",
        };
        f.write_str(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_are_disjoint_and_statuses_match() {
        use ProviderErrorKind::*;
        let all = ProviderErrorKind::ALL;
        // The codes a revoked key handle stores round-trip, one per kind.
        for (i, k) in all.iter().enumerate() {
            assert_eq!(usize::from(k.code()), i, "{k}");
            assert_eq!(ProviderErrorKind::from_code(k.code()), Some(*k));
        }
        assert_eq!(ProviderErrorKind::from_code(all.len() as u8), None);
        for k in all {
            assert!(!(k.is_definitive() && k.is_transient()), "{k}");
            if k.is_transient() {
                assert_eq!(k.http_status(), 503);
            }
        }
        assert_eq!(Forbidden.http_status(), 403);
        assert_eq!(KeyNotFound.http_status(), 404);
        assert_eq!(Conflict.http_status(), 409);
        assert_eq!(Error::Decryption.to_string(), "decryption failed");
        let e: Error = ProviderError::new(KeyDisabled, "version 2 is disabled").into();
        assert_eq!(e.http_status(), 403);
        assert_eq!(e.provider_kind(), Some(KeyDisabled));
        // The same failure of the service's own key is a server error.
        let p = ProviderError::new(KeyDisabled, "platform key disabled");
        assert_eq!(Error::PlatformKey(p).http_status(), 500);
        let p = ProviderError::new(Timeout, "platform KMS slow");
        assert_eq!(Error::PlatformKey(p).http_status(), 503);
        assert_eq!(Error::Decryption.http_status(), 500);
    }
}
