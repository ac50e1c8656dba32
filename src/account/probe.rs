//! Probes of the customer key: `probe`, `refresh` (automatic rotation) and `monitor` (every
//! account, concurrently, skipping those another replica probed recently).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::commit::{Begun, Failed};
use super::live::Cell;
use super::record::{AccountId, AccountRecord, KeySource, StateKind};
use super::{AccountManager, MonitorEntry, Slot};
use crate::audit::{AuditAction, AuditOutcome};
use crate::error::{Error, ProviderError, ProviderErrorKind};

impl AccountManager {
    /// get, wrapKey (of a random nonce) and unwrapKey of the account key on the exact key
    /// version wrapping it.
    async fn probe_customer_key(&self, begun: &Begun) -> Result<(), ProviderError> {
        let rec = &begun.record;
        let (KeySource::Customer { key, identity }, Some(w)) = (&rec.key_source, &rec.account_key)
        else {
            return Ok(());
        };
        let probe = async {
            let p = self.inner.resolver.provider(key.vault(), identity).await?;
            let props = p
                .key_properties(key.name(), Some(&w.wrapped.key_version))
                .await?;
            if !props.enabled {
                return Err(ProviderError::new(
                    ProviderErrorKind::KeyDisabled,
                    format!(
                        "version {} of key {} is disabled",
                        props.version, props.name
                    ),
                ));
            }
            let mut nonce = [0u8; 32];
            crate::crypto::fill_random(&mut nonce);
            p.wrap_key(
                key.name(),
                Some(&w.wrapped.key_version),
                w.wrapped.algorithm,
                &nonce,
            )
            .await?;
            Ok(())
        }
        .await;
        self.emit(
            &rec.id,
            Some(identity),
            Some(Self::audit_key(w)),
            AuditAction::Probe,
            match &probe {
                Ok(()) => AuditOutcome::Success,
                Err(e) => AuditOutcome::Failure(e.to_string()),
            },
        );
        probe
    }

    /// Probes the account's key now: the identity's get, wrapKey and unwrapKey on the exact
    /// version wrapping the account key. A definitive failure moves the account to
    /// `KeyInaccessible` and revokes its cached keys and every key handle given out; a
    /// success restores `Active` (every object written before opens again) — but only if
    /// nothing was observed since this probe began: a probe that started before a revocation
    /// never undoes it. A transient failure changes nothing. A probe that changes nothing
    /// writes only the probe time ([`crate::store::AccountStore::record_probe`]), never a revision.
    ///
    /// # Errors
    /// [`Error::AccountNotFound`]; [`Error::KeyInaccessible`] (also when a newer observation
    /// than this probe says so); [`Error::Unavailable`] for a transient failure;
    /// [`Error::Store`]; [`Error::PlatformKey`] for a failure of the service's own key.
    pub async fn probe(&self, id: &AccountId) -> Result<StateKind, Error> {
        let cell = self.fresh_cell(id).await?;
        let mut retried = false;
        loop {
            let begun = self.begin(&cell);
            if begun.record.state.kind() == StateKind::Deleted {
                return Err(Error::AccountNotFound(id.to_string()));
            }
            let result = match self.probe_customer_key(&begun).await {
                Err(e) => Err(e),
                // The unwrap proves unwrapKey and refreshes the cache.
                Ok(()) => self.unwrap_from_provider(&begun, Slot::Account).await?,
            };
            match result {
                Ok(keys) => {
                    self.fill_cache(&cell, &begun, Slot::Account, &keys);
                    return self.observe_success(&cell, &begun).await;
                }
                Err(e) => match self.on_failure(&cell, &begun, Slot::Account, e).await {
                    Failed::Error(e) => return Err(e),
                    Failed::Retry if !retried => {
                        retried = true;
                        self.reload(&cell).await?;
                    }
                    Failed::Retry => return Err(super::commit::stale()),
                },
            }
        }
    }

    /// [`probe`](Self::probe), then — for a versionless customer key under a policy that
    /// follows the latest version — picks up a newer enabled version and re-wraps the account
    /// key under it (automatic rotation). A pinned version stays until the owner updates it.
    /// A definitive failure of the latest-version lookup locks the account like a failed
    /// probe.
    ///
    /// # Errors
    /// As [`probe`](Self::probe) and [`set_customer_key`](Self::set_customer_key).
    pub async fn refresh(&self, id: &AccountId) -> Result<AccountRecord, Error> {
        self.probe(id).await?;
        let cell = self.cell(id).await?;
        let begun = self.begin(&cell);
        let rec = &begun.record;
        if let (KeySource::Customer { key, identity }, Some(w)) =
            (&rec.key_source, &rec.account_key)
            && key.version().is_none()
            && rec.policy.follow_latest_version
        {
            let lookup = async {
                let p = self.inner.resolver.provider(key.vault(), identity).await?;
                let latest = p.key_properties(key.name(), None).await?;
                let current = p
                    .key_properties(key.name(), Some(&w.wrapped.key_version))
                    .await?;
                Ok::<_, ProviderError>((latest, current))
            }
            .await;
            let (latest, current) = match lookup {
                Ok(v) => v,
                Err(e) => {
                    return Err(
                        match self.on_failure(&cell, &begun, Slot::Account, e).await {
                            Failed::Error(e) => e,
                            Failed::Retry => super::commit::stale(),
                        },
                    );
                }
            };
            let newer = match (
                latest.version.parse::<u64>(),
                current.version.parse::<u64>(),
            ) {
                (Ok(a), Ok(b)) => a > b,
                _ => latest.version != current.version && latest.created >= current.created,
            };
            if newer && latest.enabled {
                return self.rekey(&cell, rec.key_source.clone()).await;
            }
        }
        Ok(Self::view(&cell))
    }

    /// Refreshes every account that is not deleted — what an application calls on its own
    /// schedule (no runtime is embedded). Up to `monitor_concurrency` accounts are probed at
    /// once; accounts that any replica probed less than `probe_interval` ago are skipped (they
    /// get no entry); the store is read a page at a time. One failing account does not stop
    /// the others.
    ///
    /// # Errors
    /// Only a failure to list the store; per-account failures are in the entries.
    pub async fn monitor(&self) -> Result<Vec<MonitorEntry>, Error> {
        const PAGE: usize = 256;
        let interval = self.inner.config.probe_interval;
        let now = self.now();
        let mut out = Vec::new();
        let mut after: Option<AccountId> = None;
        loop {
            let page = self.inner.store.list_page(after.as_ref(), PAGE).await?;
            let Some(last) = page.last() else { break };
            after = Some(last.id.clone());
            let due: Vec<AccountId> = page
                .into_iter()
                .filter(|r| r.state.kind() != StateKind::Deleted)
                .filter(|r| {
                    interval.is_zero()
                        || self.observed_here(&r.id)
                        || r.last_probed.is_none_or(|p| {
                            now.duration_since(p).map_or(true, |age| age >= interval)
                        })
                })
                .map(|r| r.id)
                .collect();
            let runs = due.into_iter().map(|id| async move {
                let result = match self.refresh(&id).await {
                    Ok(r) => Ok(r.state.kind()),
                    Err(Error::KeyInaccessible { .. }) => Ok(StateKind::KeyInaccessible),
                    Err(e) => Err(e),
                };
                MonitorEntry {
                    account: id,
                    result,
                }
            });
            out.extend(Bounded::new(runs, self.inner.config.monitor_concurrency).await);
        }
        Ok(out)
    }

    /// Whether this process holds an observation of `id` that is not in the store (a
    /// revocation whose persisting failed): the monitor probes it whatever other replicas did,
    /// so it is persisted or cleared.
    fn observed_here(&self, id: &AccountId) -> bool {
        self.inner
            .cells
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .is_some_and(|c| c.read().observed.is_some())
    }

    /// Drops the in-process view of `id` (cache, record copy) so the next call reloads it.
    /// Rarely needed: records are re-read on their own after `record_max_age` or a change
    /// hint.
    pub fn invalidate(&self, id: &AccountId) {
        let cell = self
            .inner
            .cells
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(cell) = cell {
            Self::drop_cache(&cell);
        }
    }

    fn drop_cache(cell: &Cell) {
        let mut live = cell.write();
        live.cache = [None, None, None];
    }
}

/// Runs futures with at most `limit` in progress at once, in order of completion
/// (runtime-agnostic; each wake polls the running ones).
struct Bounded<I, F: Future> {
    pending: I,
    running: Vec<Pin<Box<F>>>,
    done: Vec<F::Output>,
    limit: usize,
}

impl<I: Iterator<Item = F>, F: Future> Bounded<I, F> {
    fn new(pending: I, limit: usize) -> Self {
        Self {
            pending,
            running: Vec::new(),
            done: Vec::new(),
            limit: limit.max(1),
        }
    }
}

impl<I: Iterator<Item = F> + Unpin, F: Future> Future for Bounded<I, F>
where
    F::Output: Unpin,
{
    type Output = Vec<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        loop {
            while this.running.len() < this.limit {
                match this.pending.next() {
                    Some(f) => this.running.push(Box::pin(f)),
                    None => break,
                }
            }
            let before = this.running.len();
            let mut i = 0;
            while i < this.running.len() {
                if let Poll::Ready(v) = this.running[i].as_mut().poll(cx) {
                    this.done.push(v);
                    drop(this.running.swap_remove(i));
                } else {
                    i += 1;
                }
            }
            if this.running.is_empty() {
                return Poll::Ready(std::mem::take(&mut this.done));
            }
            if this.running.len() == before {
                return Poll::Pending;
            }
        }
    }
}
