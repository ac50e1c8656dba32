//! The account-key cache: unwrapped account-level keys per slot, filled by one provider
//! unwrap shared by every concurrent caller (single flight), with failures shared too.

use std::sync::Arc;

use super::commit::{Begun, Failed};
use super::live::{Cached, Cell, Failure, Flight, KeyResult, Unwrapped, copy_error};
use super::policy::Operation;
use super::record::{AccountState, KeySource};
use super::{AccountManager, Slot};
use crate::audit::{AuditAction, AuditOutcome};
use crate::envelope::{AccountKey, PreparedKey};
use crate::error::{Error, ProviderError, ProviderErrorKind};
use crate::provider::{Identity, KeyProvider};

/// Ends a key flight however its leader ends (a dropped future lets waiters retry).
struct FlightGuard<'a> {
    cell: &'a Cell,
    slot: Slot,
    flight: Arc<Flight<KeyResult>>,
    result: Option<KeyResult>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        let mut live = self.cell.write();
        let i = self.slot as usize;
        if live.flights[i]
            .as_ref()
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            live.flights[i] = None;
        }
        drop(live);
        self.flight.finish(self.result.take());
    }
}

impl AccountManager {
    /// The provider, identity and audit name of the key that wraps `slot` of the record.
    async fn wrapper_of(
        &self,
        begun: &Begun,
        slot: Slot,
    ) -> Result<(Arc<dyn KeyProvider>, Option<Identity>), ProviderError> {
        match (slot, &begun.record.key_source) {
            (Slot::Account, KeySource::Customer { key, identity }) => Ok((
                self.inner.resolver.provider(key.vault(), identity).await?,
                Some(identity.clone()),
            )),
            (slot, _) => {
                let pk = self.platform_for(slot).map_err(|e| {
                    ProviderError::new(ProviderErrorKind::InvalidRequest, e.to_string())
                })?;
                Ok((Arc::clone(&pk.provider), None))
            }
        }
    }

    /// One provider unwrap of `slot` as the record of `begun` wraps it (audited).
    pub(crate) async fn unwrap_from_provider(
        &self,
        begun: &Begun,
        slot: Slot,
    ) -> Result<Result<Unwrapped, ProviderError>, Error> {
        let rec = &begun.record;
        let Some(wrapped) = super::live::wrapped_of(rec, slot) else {
            return Err(match rec.state {
                AccountState::Deleted { .. } => Error::AccountNotFound(rec.id.to_string()),
                _ => Error::InvalidInput(format!("account {} has no {slot:?} key", rec.id)),
            });
        };
        let audit_key = Some(Self::audit_key(wrapped));
        let (result, identity) = match self.wrapper_of(begun, slot).await {
            Ok((provider, identity)) => (provider.unwrap_key(&wrapped.wrapped).await, identity),
            Err(e) => (Err(e), None),
        };
        self.emit(
            &rec.id,
            identity.as_ref(),
            audit_key,
            AuditAction::Unwrap,
            match &result {
                Ok(_) => AuditOutcome::Success,
                Err(e) => AuditOutcome::Failure(e.to_string()),
            },
        );
        Ok(match result {
            Ok(secret) => {
                let raw = secret.to_aes_key()?;
                let prepared = PreparedKey::with_liveness(
                    rec.id.as_str(),
                    &AccountKey::new(wrapped.account_key_id.clone(), 1, raw.duplicate())?,
                    begun.liveness[slot as usize].clone(),
                )?;
                Ok(Unwrapped {
                    raw: Arc::new(raw),
                    prepared: Arc::new(prepared),
                })
            }
            Err(e) => Err(e),
        })
    }

    /// Turns a provider failure of `slot` into the account-level error. A definitive failure
    /// of the customer key is an observation ([`observe_failure`](Self::observe_failure)).
    pub(crate) async fn on_failure(
        &self,
        cell: &Cell,
        begun: &Begun,
        slot: Slot,
        e: ProviderError,
    ) -> Failed {
        let customer =
            slot == Slot::Account && matches!(begun.record.key_source, KeySource::Customer { .. });
        if customer && e.is_definitive() {
            self.observe_failure(cell, begun, &e).await
        } else if e.is_transient() {
            Failed::Error(Error::Unavailable {
                account: begun.record.id.to_string(),
                reason: e.to_string(),
            })
        } else if customer {
            Failed::Error(Error::Provider(e))
        } else {
            // The service's own key: never the tenant's 403.
            Failed::Error(Error::PlatformKey(e))
        }
    }

    /// Puts freshly unwrapped keys in the cache unless anything was observed since the unwrap
    /// began, or the record moved to another wrapping.
    pub(crate) fn fill_cache(&self, cell: &Cell, begun: &Begun, slot: Slot, keys: &Unwrapped) {
        let mut live = cell.write();
        if cell.generation() == begun.generation
            && live.wrapped(slot) == super::live::wrapped_of(&begun.record, slot)
        {
            let expires = self.after(self.now_ns(), live.record.policy.cache_max_age);
            live.cache[slot as usize] = Some(Cached {
                keys: keys.clone(),
                expires,
            });
            live.failed[slot as usize] = None;
        }
    }

    /// The key of `slot` after the state gate for `op` on the data of `gate_as` (the layer-1
    /// slot: a layer-2 key serves whatever data its layer 1 covers): from the cache when
    /// fresh, else from the provider — one unwrap for all concurrent callers, whose result
    /// (success or failure) they all share; a transient failure is also handed to callers
    /// arriving within the failure window.
    pub(crate) async fn slot_key(
        &self,
        cell: &Cell,
        slot: Slot,
        gate_as: Slot,
        op: Operation,
    ) -> Result<Unwrapped, Error> {
        let mut retried = false;
        loop {
            let now = self.now_ns();
            {
                // The common case under a read lock.
                let live = cell.read();
                live.gate(op, Some(gate_as))?;
                if let Some(k) = live.cached(slot, now) {
                    return Ok(k.clone());
                }
            }
            let flight = {
                let mut live = cell.write();
                live.gate(op, Some(gate_as))?;
                if let Some(k) = live.cached(slot, now) {
                    return Ok(k.clone());
                }
                if let Some(f) = &live.failed[slot as usize]
                    && now < f.until
                {
                    return Err(copy_error(&f.error));
                }
                match &live.flights[slot as usize] {
                    Some(f) => Err(Arc::clone(f)),
                    None => {
                        let f = Flight::new();
                        live.flights[slot as usize] = Some(Arc::clone(&f));
                        Ok(f)
                    }
                }
            };
            let flight = match flight {
                Err(other) => match other.wait().await {
                    Some(Ok(keys)) => {
                        cell.read().gate(op, Some(gate_as))?;
                        return Ok(keys);
                    }
                    Some(Err(e)) => return Err(copy_error(&e)),
                    None => continue,
                },
                Ok(f) => f,
            };
            let mut guard = FlightGuard {
                cell,
                slot,
                flight,
                result: None,
            };
            let begun = self.begin(cell);
            let outcome =
                match self.unwrap_from_provider(&begun, slot).await {
                    Err(e) => Err(e),
                    Ok(Ok(keys)) => {
                        self.fill_cache(cell, &begun, slot, &keys);
                        Ok(keys)
                    }
                    Ok(Err(pe)) => match self.on_failure(cell, &begun, slot, pe).await {
                        Failed::Error(e) => Err(e),
                        Failed::Retry if !retried => {
                            retried = true;
                            drop(guard);
                            continue;
                        }
                        // The account kept changing under this operation: try later.
                        Failed::Retry => Err(cell
                            .read()
                            .gate(op, Some(gate_as))
                            .err()
                            .unwrap_or_else(|| Error::Unavailable {
                                account: cell.id.to_string(),
                                reason: "the account changed while the operation ran".into(),
                            })),
                    },
                };
            match outcome {
                Ok(keys) => {
                    guard.result = Some(Ok(keys.clone()));
                    drop(guard);
                    cell.read().gate(op, Some(gate_as))?;
                    return Ok(keys);
                }
                Err(e) => {
                    let shared = Arc::new(e);
                    if matches!(*shared, Error::Unavailable { .. }) {
                        let until = self.after(self.now_ns(), self.inner.config.failure_window);
                        cell.write().failed[slot as usize] = Some(Failure {
                            until,
                            error: Arc::clone(&shared),
                        });
                    }
                    guard.result = Some(Err(Arc::clone(&shared)));
                    drop(guard);
                    return Err(copy_error(&shared));
                }
            }
        }
    }
}
