//! The persistent account record and its lifecycle states.

use std::collections::BTreeSet;
use std::time::SystemTime;

use serde::{Deserialize, Serialize};

use super::policy::{DataClass, Policy};
use crate::error::Error;
use crate::key_id::KeyId;
use crate::provider::{Identity, WrappedKey};

/// The version of the record format written by this crate.
///
/// Version 2 adds [`AccountRecord::epoch`] and [`WrappedAccountKey::role`]; version-1 records
/// still load (epoch 0, the role derived from the old `platform` / `infrastructure` names).
pub const RECORD_FORMAT: u32 = 2;

/// An account (tenant resource) identifier: 1 to 64 of `a-z A-Z 0-9 - _ .`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct AccountId(String);

impl AccountId {
    /// Validates and wraps `id`.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for an empty, long or oddly-charactered id.
    pub fn new(id: impl Into<String>) -> Result<Self, Error> {
        let id = id.into();
        if !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            Ok(Self(id))
        } else {
            Err(Error::InvalidInput(format!(
                "account id {id:?} must be 1 to 64 letters, digits, '-', '_' or '.'"
            )))
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl core::fmt::Display for AccountId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for AccountId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self, Error> {
        Self::new(s)
    }
}

impl From<AccountId> for String {
    fn from(a: AccountId) -> String {
        a.0
    }
}

/// Which key protects the account key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KeySource {
    /// The service's own platform key (the default).
    Platform,
    /// The tenant's key in its vault, reached as `identity`.
    Customer {
        /// The key, with a version (pinned) or without (follows the latest where the policy
        /// allows).
        key: KeyId,
        /// The identity the service uses to reach the vault.
        identity: Identity,
    },
}

impl KeySource {
    /// A customer key source.
    pub fn customer(key: KeyId, identity: Identity) -> Self {
        Self::Customer { key, identity }
    }
}

/// The lifecycle state of an account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum AccountState {
    /// Every operation is allowed.
    Active,
    /// A definitive failure of the customer key was observed; only the policy's operations
    /// are allowed.
    KeyInaccessible {
        /// What was observed, for people (the provider's message).
        reason: String,
        /// The kind of the definitive provider failure observed; `None` in records written
        /// before the kind was recorded, or naming a kind this version does not know (written
        /// by a newer replica during a rolling upgrade: the record still loads).
        #[serde(default, deserialize_with = "lenient_kind")]
        kind: Option<crate::error::ProviderErrorKind>,
        /// Since when.
        since: SystemTime,
    },
    /// Deleted; its wrapped keys are destroyed.
    Deleted {
        /// When.
        at: SystemTime,
    },
}

impl AccountState {
    /// The state without its details.
    pub fn kind(&self) -> StateKind {
        match self {
            Self::Active => StateKind::Active,
            Self::KeyInaccessible { .. } => StateKind::KeyInaccessible,
            Self::Deleted { .. } => StateKind::Deleted,
        }
    }
}

/// A lifecycle state's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum StateKind {
    /// See [`AccountState::Active`].
    Active,
    /// See [`AccountState::KeyInaccessible`].
    KeyInaccessible,
    /// See [`AccountState::Deleted`].
    Deleted,
}

impl StateKind {
    /// Every state.
    pub const ALL: [StateKind; 3] = [
        StateKind::Active,
        StateKind::KeyInaccessible,
        StateKind::Deleted,
    ];

    /// The transition table: which state changes the lifecycle performs.
    ///
    /// | from \ to        | Active | KeyInaccessible | Deleted |
    /// |------------------|--------|-----------------|---------|
    /// | Active           | –      | yes (definitive key failure observed) | yes (delete) |
    /// | KeyInaccessible  | yes (probe succeeds / key restored or replaced) | – | yes (delete) |
    /// | Deleted          | no     | no              | –       |
    pub fn can_transition_to(self, to: StateKind) -> bool {
        use StateKind::*;
        matches!(
            (self, to),
            (Active, KeyInaccessible)
                | (Active, Deleted)
                | (KeyInaccessible, Active)
                | (KeyInaccessible, Deleted)
        )
    }
}

impl core::fmt::Display for StateKind {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Self::Active => "Active",
            Self::KeyInaccessible => "KeyInaccessible",
            Self::Deleted => "Deleted",
        })
    }
}

/// Whose key wraps an account-level key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum KeyRole {
    /// A tenant's customer key, in the vault named by [`WrappedAccountKey::vault`].
    Customer,
    /// The service's platform key.
    Platform,
    /// The service's infrastructure key (second layer of double encryption).
    Infrastructure,
}

impl KeyRole {
    /// The role's name as audit events and stores print it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Customer => "customer",
            Self::Platform => "platform",
            Self::Infrastructure => "infrastructure",
        }
    }
}

/// An account-level AES key wrapped by a vault key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "WrappedAccountKeyRepr")]
#[non_exhaustive]
pub struct WrappedAccountKey {
    /// The account-level key's own id (stable across re-wraps; objects' headers name it). Not
    /// to be confused with the [`KeyId`] of the vault key that wraps it. Stored as `key_id`.
    #[serde(rename = "key_id")]
    pub account_key_id: String,
    /// Whose key wraps it. Decides what a revocation locks: only [`KeyRole::Customer`]
    /// wrappings follow the tenant's key.
    pub role: KeyRole,
    /// The vault host of a customer key (as [`KeyId::vault`] gives it); the service key's role
    /// name otherwise (informational only: [`role`](Self::role) is what the crate reads).
    pub vault: String,
    /// The wrapped bytes with the exact wrapping key version and algorithm.
    pub wrapped: WrappedKey,
}

impl WrappedAccountKey {
    /// A wrapping of the account-level key `account_key_id` by a key in `role`.
    pub fn new(account_key_id: &str, role: KeyRole, vault: &str, wrapped: WrappedKey) -> Self {
        Self {
            account_key_id: account_key_id.to_owned(),
            role,
            vault: vault.to_owned(),
            wrapped,
        }
    }

    /// Whether this is a customer-key wrapping by key `name` at `version` in `vault`.
    pub fn is_customer_key(&self, vault: &str, name: &str, version: &str) -> bool {
        self.role == KeyRole::Customer
            && self.vault == vault
            && self.wrapped.key_name == name
            && self.wrapped.key_version == version
    }
}

/// The serialised form, which also reads format-1 records (no `role`: derived from the
/// sentinel vault names those records used).
#[derive(Deserialize)]
struct WrappedAccountKeyRepr {
    key_id: String,
    #[serde(default)]
    role: Option<KeyRole>,
    vault: String,
    wrapped: WrappedKey,
}

impl From<WrappedAccountKeyRepr> for WrappedAccountKey {
    fn from(r: WrappedAccountKeyRepr) -> Self {
        let role = r.role.unwrap_or(match r.vault.as_str() {
            "platform" => KeyRole::Platform,
            "infrastructure" => KeyRole::Infrastructure,
            _ => KeyRole::Customer,
        });
        Self {
            account_key_id: r.key_id,
            role,
            vault: r.vault,
            wrapped: r.wrapped,
        }
    }
}

/// The persistent record of one account. The application stores it where it likes (see
/// [`crate::store::AccountStore`]); it holds no plaintext key material.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct AccountRecord {
    /// Record format version ([`RECORD_FORMAT`]). Loading (deserialising) a record refuses a
    /// format this crate does not read — `0` or one newer than [`RECORD_FORMAT`], written by a
    /// later version of the crate — rather than dropping the fields it does not know.
    #[serde(deserialize_with = "known_format")]
    pub format: u32,
    /// The account.
    pub id: AccountId,
    /// The account's region (checked against the vault's where the policy says so).
    pub region: String,
    /// The account's tenant.
    pub tenant: String,
    /// What protects the account key.
    pub key_source: KeySource,
    /// The account key wrapped by the key source; `None` once deleted (crypto-shredded).
    pub account_key: Option<WrappedAccountKey>,
    /// The platform-class key (data classes that stay under platform keys), wrapped by the
    /// platform key; `None` once deleted.
    pub platform_class_key: Option<WrappedAccountKey>,
    /// The second-layer account key wrapped by the infrastructure key, when double encryption
    /// is on; `None` once deleted.
    pub infrastructure_key: Option<WrappedAccountKey>,
    /// Lifecycle state.
    pub state: AccountState,
    /// The policy the account was created under.
    pub policy: Policy,
    /// Whether objects get the second encryption layer.
    pub double_encryption: bool,
    /// Optional data classes chosen at creation to be covered by the account's key source.
    pub chosen_classes: BTreeSet<DataClass>,
    /// Revision for optimistic concurrency; every update increments it.
    pub revision: u64,
    /// The state epoch: incremented by every committed change of the state or of the account
    /// key's wrapping (not by other updates). An observation of the customer key (a probe,
    /// an unwrap) is committed only against the epoch it began under, so a result computed
    /// before another replica's state change can never overwrite it.
    #[serde(default)]
    pub epoch: u64,
    /// Creation time.
    pub created: SystemTime,
    /// Last update.
    pub updated: SystemTime,
    /// Last time the account key was re-wrapped under another key or version.
    pub last_rotated: Option<SystemTime>,
    /// Last probe of the key source (by any replica). Stores may update it without a
    /// revision change ([`crate::store::AccountStore::record_probe`]), so probes cause no conflicts.
    pub last_probed: Option<SystemTime>,
}

/// Reads an optional provider error kind, taking one this version does not know as `None`.
fn lenient_kind<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::error::ProviderErrorKind>, D::Error> {
    use serde::de::IntoDeserializer;
    // A kind is stored by its variant name.
    let name = Option::<String>::deserialize(d)?;
    Ok(name.and_then(|n| {
        let d: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            n.as_str().into_deserializer();
        crate::error::ProviderErrorKind::deserialize(d).ok()
    }))
}

/// Reads [`AccountRecord::format`], refusing formats this crate cannot read.
fn known_format<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let format = u32::deserialize(d)?;
    if format == 0 || format > RECORD_FORMAT {
        return Err(serde::de::Error::custom(format_args!(
            "account record format {format} is not one this crate reads (1 to {RECORD_FORMAT}); \
             was it written by a newer version of byok?"
        )));
    }
    Ok(format)
}

impl AccountRecord {
    /// The customer key currently wrapping the account key, pinned to the exact version.
    pub fn current_customer_key(&self) -> Option<KeyId> {
        match (&self.key_source, &self.account_key) {
            (KeySource::Customer { key, .. }, Some(w)) => {
                key.with_version(&w.wrapped.key_version).ok()
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ProviderErrorKind;

    /// Issue 17: `RECORD_FORMAT` is checked when a record is loaded. A record written by a newer
    /// crate (or a corrupt format 0) is refused, formats 1 and 2 load.
    #[test]
    fn loading_checks_the_record_format() {
        let record = AccountRecord {
            format: RECORD_FORMAT,
            id: AccountId::new("a-1").expect("id"),
            region: "region-1".to_owned(),
            tenant: "tenant-1".to_owned(),
            key_source: KeySource::Platform,
            account_key: None,
            platform_class_key: None,
            infrastructure_key: None,
            state: AccountState::Active,
            policy: Policy::builder("p").build(),
            double_encryption: false,
            chosen_classes: BTreeSet::new(),
            revision: 1,
            epoch: 1,
            created: SystemTime::UNIX_EPOCH,
            updated: SystemTime::UNIX_EPOCH,
            last_rotated: None,
            last_probed: None,
        };
        let json = serde_json::to_value(&record).expect("serialise");
        for (format, loads) in [(0, false), (1, true), (2, true), (RECORD_FORMAT + 1, false)] {
            let mut j = json.clone();
            j["format"] = format.into();
            let got = serde_json::from_value::<AccountRecord>(j);
            assert_eq!(got.is_ok(), loads, "format {format}: {got:?}");
            if let Err(e) = got {
                assert!(e.to_string().contains("newer version of byok"), "{e}");
            }
        }
    }

    /// A state written by a newer replica, naming a provider error kind this version does not
    /// know, still loads (rolling upgrades); a known kind round-trips.
    #[test]
    fn unknown_error_kinds_in_a_stored_state_load_as_none() {
        let state = |kind: &str| {
            format!(
                r#"{{"KeyInaccessible":{{"reason":"r","kind":{kind},"since":{{"secs_since_epoch":1,"nanos_since_epoch":0}}}}}}"#
            )
        };
        let load = |kind: &str| match serde_json::from_str::<AccountState>(&state(kind)) {
            Ok(AccountState::KeyInaccessible { kind, .. }) => kind,
            other => panic!("{kind}: {other:?}"),
        };
        assert_eq!(
            load(r#""KeyDisabled""#),
            Some(ProviderErrorKind::KeyDisabled)
        );
        assert_eq!(load(r#""QuantumDecoherence""#), None);
        assert_eq!(load("null"), None);
        let old = r#"{"KeyInaccessible":{"reason":"r","since":{"secs_since_epoch":1,"nanos_since_epoch":0}}}"#;
        assert!(matches!(
            serde_json::from_str::<AccountState>(old),
            Ok(AccountState::KeyInaccessible { kind: None, .. })
        ));
    }
}
