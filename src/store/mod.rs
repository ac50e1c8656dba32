//! Where account records live: the [`AccountStore`] interface (optimistic concurrency, change
//! hints between replicas), the in-memory store, and the database-backed stores —
//! `PostgresAccountStore` (feature `postgres`) and `SqliteAccountStore` (feature `sqlite`).
//! See `docs/STORES.md`; the conformance suite for your own store is
//! `byok::testing::store_conformance`.
//!
//! | file | concern |
//! | --- | --- |
//! | `api.rs` | the `AccountStore` trait, `ChangeListener`/`StoreChange`, `InMemoryAccountStore` |
//! | `postgres.rs`, `sqlite.rs` | the database stores |
//! | `mod.rs` (`columns`) | the row layout both databases share |
//! | `conformance.rs` | the store conformance suite |
//!
//! Both databases keep one row per account: the whole record as JSON, plus the columns the
//! store queries (revision for compare-and-swap, the customer-key wrapping for
//! `accounts_using`, the tombstone time for purges, the probe stamp that changes without a
//! revision).

mod api;
#[cfg(any(test, feature = "testing"))]
pub(crate) mod conformance;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "sqlite")]
mod sqlite;

pub use api::{AccountStore, ChangeListener, InMemoryAccountStore, StoreChange};
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub use postgres::{PostgresAccountStore, PostgresStoreOptions};
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub use sqlite::SqliteAccountStore;

#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) use columns::Columns;

/// Refuses a database whose applied migrations include a version newer than `known` (a newer
/// crate migrated it; this one would misread its rows).
///
/// # Errors
/// [`crate::Error::Store`] naming both versions.
#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) fn refuse_newer_schema<V>(applied: &[V], known: V) -> Result<(), crate::Error>
where
    V: PartialOrd + std::fmt::Display + Copy,
{
    match applied.iter().find(|v| **v > known) {
        Some(newer) => Err(crate::Error::Store {
            message: format!(
                "the database schema is at version {newer}, newer than this crate's {known}"
            ),
            source: None,
        }),
        None => Ok(()),
    }
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
mod columns {
    use std::time::SystemTime;

    use crate::account::record::{AccountRecord, AccountState};
    use crate::error::Error;

    /// The queried columns of one row, derived from a record.
    pub(crate) struct Columns<'a> {
        pub(crate) id: &'a str,
        pub(crate) revision: i64,
        pub(crate) epoch: i64,
        pub(crate) state: &'static str,
        pub(crate) deleted_at: Option<SystemTime>,
        pub(crate) key_role: Option<&'static str>,
        pub(crate) key_vault: Option<&'a str>,
        pub(crate) key_name: Option<&'a str>,
        pub(crate) key_version: Option<&'a str>,
        pub(crate) last_probed: Option<SystemTime>,
        pub(crate) record: String,
    }

    /// The `state` column's values.
    pub(crate) const STATE_DELETED: &str = "deleted";

    impl<'a> Columns<'a> {
        /// # Errors
        /// [`Error::InvalidInput`] for a revision or epoch beyond `i64::MAX`; [`Error::Store`]
        /// if the record does not serialise.
        pub(crate) fn of(r: &'a AccountRecord) -> Result<Self, Error> {
            let int = |v: u64, what: &str| {
                i64::try_from(v).map_err(|_| {
                    Error::InvalidInput(format!("account {}: {what} {v} is out of range", r.id))
                })
            };
            let (state, deleted_at) = match &r.state {
                AccountState::Active => ("active", None),
                AccountState::KeyInaccessible { .. } => ("key_inaccessible", None),
                AccountState::Deleted { at } => (STATE_DELETED, Some(*at)),
            };
            // Tombstones never match `accounts_using`, whatever they hold.
            let key = r.account_key.as_ref().filter(|_| deleted_at.is_none());
            let record = serde_json::to_string(r).map_err(|e| {
                Error::store(format!("account {}: serialising the record: {e}", r.id), e)
            })?;
            Ok(Self {
                id: r.id.as_str(),
                revision: int(r.revision, "revision")?,
                epoch: int(r.epoch, "epoch")?,
                state,
                deleted_at,
                key_role: key.map(|k| k.role.as_str()),
                key_vault: key.map(|k| k.vault.as_str()),
                key_name: key.map(|k| k.wrapped.key_name.as_str()),
                key_version: key.map(|k| k.wrapped.key_version.as_str()),
                last_probed: r.last_probed,
                record,
            })
        }
    }

    /// Parses a row's record and sets its probe stamp from the column (`column`, which may be
    /// coarser than the record's own stamp: the later of the two wins, comparing at the
    /// column's precision `grain`).
    ///
    /// # Errors
    /// [`Error::Store`] for a row that does not parse.
    pub(crate) fn record_from_row(
        id_hint: &str,
        json: &str,
        column: Option<SystemTime>,
        grain: fn(SystemTime) -> SystemTime,
    ) -> Result<AccountRecord, Error> {
        let mut r: AccountRecord = serde_json::from_str(json).map_err(|e| {
            Error::store(
                format!("account {id_hint}: unreadable stored record: {e}"),
                e,
            )
        })?;
        r.last_probed = match (r.last_probed, column) {
            (Some(own), Some(col)) if col > grain(own) => Some(col),
            (Some(own), _) => Some(own),
            (None, col) => col,
        };
        Ok(r)
    }
}

#[cfg(any(feature = "postgres", feature = "sqlite"))]
pub(crate) use columns::{STATE_DELETED, record_from_row};
