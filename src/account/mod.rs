//! Accounts: customer-managed keys end to end — key sources, policies, key-version tracking,
//! the inaccessible state, the account-key cache and audit.

pub(crate) mod data;
pub(crate) mod policy;
pub(crate) mod record;
pub(crate) mod store;

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};
use std::task::{Context, Poll, Waker};
use std::time::SystemTime;

use subtle::ConstantTimeEq;

use self::policy::{DataClass, DoubleEncryption, Operation, Policy};
use self::record::{
    AccountId, AccountRecord, AccountState, KeyRole, KeySource, RECORD_FORMAT, StateKind,
    WrappedAccountKey,
};
use self::store::{AccountStore, InMemoryAccountStore, KeyResolver};
use crate::audit::{AuditAction, AuditEvent, AuditOutcome, AuditSink, TracingAuditSink};
use crate::clock::{Clock, SystemClock};
use crate::envelope::{AccountKey, PreparedKey};
use crate::error::{Error, PolicyViolation, ProviderError, ProviderErrorKind};
use crate::key_id::KeyId;
use crate::provider::{Identity, KeyProperties, KeyProvider, KeyType, WrapAlgorithm, WrappedKey};
use crate::secret::AesKey;

/// A service-owned key in a provider: the platform key (wraps account keys of accounts without
/// a customer key, and the platform-class keys of every account) or the infrastructure key
/// (wraps second-layer account keys).
#[derive(Clone, Debug)]
pub struct PlatformKey {
    provider: Arc<dyn KeyProvider>,
    name: String,
    algorithm: WrapAlgorithm,
    role: KeyRole,
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

/// An unwrapped account-level key: the raw key (for re-wrapping) and its prepared form (key
/// schedules computed once, for the envelope). Both wipe themselves when the last reference
/// goes.
#[derive(Clone)]
pub(crate) struct Unwrapped {
    pub(crate) raw: Arc<AesKey>,
    pub(crate) prepared: Arc<PreparedKey>,
}

struct Cached {
    keys: Unwrapped,
    fetched: SystemTime,
}

struct Live {
    record: AccountRecord,
    cache: [Option<Cached>; 3],
    /// An unwrap under way per slot: concurrent callers on a cold cache wait for it instead of
    /// each contacting the provider.
    inflight: [Option<Arc<Flight>>; 3],
}

/// One provider unwrap that other callers wait for (runtime-agnostic: wakers, no executor).
#[derive(Default)]
struct Flight(Mutex<(bool, Vec<Waker>)>);

impl Flight {
    fn finish(&self) {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        s.0 = true;
        for w in s.1.drain(..) {
            w.wake();
        }
    }
}

struct FlightWait(Arc<Flight>);

impl Future for FlightWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut s = self.0.0.lock().unwrap_or_else(|p| p.into_inner());
        if s.0 {
            Poll::Ready(())
        } else {
            if !s.1.iter().any(|w| w.will_wake(cx.waker())) {
                s.1.push(cx.waker().clone());
            }
            Poll::Pending
        }
    }
}

/// Ends a flight however its leader ends (success, error or a dropped future).
struct FlightGuard<'a> {
    h: &'a Handle,
    slot: Slot,
    flight: Arc<Flight>,
}

impl Drop for FlightGuard<'_> {
    fn drop(&mut self) {
        {
            let mut live = write(self.h);
            let mine = live.inflight[self.slot as usize]
                .as_ref()
                .is_some_and(|f| Arc::ptr_eq(f, &self.flight));
            if mine {
                live.inflight[self.slot as usize] = None;
            }
        }
        self.flight.finish();
    }
}

type Handle = Arc<RwLock<Live>>;

/// Who a key is being configured for (the parts of an account that validation needs).
#[derive(Clone, Copy)]
struct Ctx<'a> {
    id: &'a AccountId,
    policy: &'a Policy,
    region: &'a str,
    tenant: &'a str,
}

struct Inner {
    store: Arc<dyn AccountStore>,
    resolver: Arc<dyn KeyResolver>,
    platform: PlatformKey,
    infrastructure: Option<PlatformKey>,
    customer_algorithm: WrapAlgorithm,
    audit: Arc<dyn AuditSink>,
    clock: Arc<dyn Clock>,
    live: Mutex<HashMap<AccountId, Handle>>,
}

/// The entry point: creates accounts, configures their keys, runs the lifecycle and encrypts
/// their data.
///
/// Cheap to clone (shared state). Within one process it is the authority on each account's
/// state: a revocation observed by any call is seen by every later call at once. Records are
/// persisted through an [`AccountStore`] with optimistic concurrency.
///
/// See `examples/lifecycle.rs` for a walk through the whole lifecycle.
#[derive(Clone)]
pub struct AccountManager {
    inner: Arc<Inner>,
}

impl fmt::Debug for AccountManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AccountManager")
            .field("store", &self.inner.store)
            .field("platform_key", &self.inner.platform.name)
            .finish_non_exhaustive()
    }
}

/// Builds an [`AccountManager`].
#[derive(Debug)]
pub struct AccountManagerBuilder {
    platform: PlatformKey,
    resolver: Arc<dyn KeyResolver>,
    infrastructure: Option<PlatformKey>,
    store: Option<Arc<dyn AccountStore>>,
    audit: Option<Arc<dyn AuditSink>>,
    clock: Option<Arc<dyn Clock>>,
    customer_algorithm: WrapAlgorithm,
}

impl AccountManagerBuilder {
    /// The infrastructure key for double encryption (independent of the platform key).
    pub fn infrastructure_key(mut self, mut key: PlatformKey) -> Self {
        key.role = KeyRole::Infrastructure;
        self.infrastructure = Some(key);
        self
    }

    /// Where records live (default: [`InMemoryAccountStore`]).
    pub fn store(mut self, store: Arc<dyn AccountStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Where audit events go (default: [`TracingAuditSink`]).
    pub fn audit(mut self, sink: Arc<dyn AuditSink>) -> Self {
        self.audit = Some(sink);
        self
    }

    /// The clock for cache ages and timestamps (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The algorithm used with customer keys (default `RSA-OAEP-256`; `RSA-OAEP` for HSMs
    /// without SHA-256 OAEP).
    pub fn customer_algorithm(mut self, algorithm: WrapAlgorithm) -> Self {
        self.customer_algorithm = algorithm;
        self
    }

    /// The manager.
    pub fn build(self) -> AccountManager {
        AccountManager {
            inner: Arc::new(Inner {
                store: self
                    .store
                    .unwrap_or_else(|| Arc::new(InMemoryAccountStore::new())),
                resolver: self.resolver,
                platform: self.platform,
                infrastructure: self.infrastructure,
                customer_algorithm: self.customer_algorithm,
                audit: self.audit.unwrap_or_else(|| Arc::new(TracingAuditSink)),
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                live: Mutex::new(HashMap::new()),
            }),
        }
    }
}

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

fn read(h: &Handle) -> std::sync::RwLockReadGuard<'_, Live> {
    h.read().unwrap_or_else(|p| p.into_inner())
}

fn write(h: &Handle) -> std::sync::RwLockWriteGuard<'_, Live> {
    h.write().unwrap_or_else(|p| p.into_inner())
}

fn new_key_id() -> String {
    let mut b = [0u8; 16];
    crate::crypto::fill_random(&mut b);
    crate::util::hex(&b)
}

impl AccountManager {
    /// Starts a builder with the platform key and the resolver that reaches tenants' vaults.
    pub fn builder(platform: PlatformKey, resolver: Arc<dyn KeyResolver>) -> AccountManagerBuilder {
        AccountManagerBuilder {
            platform,
            resolver,
            infrastructure: None,
            store: None,
            audit: None,
            clock: None,
            customer_algorithm: WrapAlgorithm::RsaOaep256,
        }
    }

    fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    fn emit(
        &self,
        account: &AccountId,
        identity: Option<&Identity>,
        key: Option<String>,
        action: AuditAction,
        outcome: AuditOutcome,
    ) {
        self.inner.audit.record(&AuditEvent {
            time: self.now(),
            identity: identity.cloned(),
            account: account.to_string(),
            key,
            action,
            outcome,
        });
    }

    async fn handle(&self, id: &AccountId) -> Result<Handle, Error> {
        if let Some(h) = self
            .inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
        {
            return Ok(Arc::clone(h));
        }
        let record = self
            .inner
            .store
            .get(id)
            .await?
            .ok_or_else(|| Error::AccountNotFound(id.to_string()))?;
        let mut live = self.inner.live.lock().unwrap_or_else(|p| p.into_inner());
        Ok(Arc::clone(live.entry(id.clone()).or_insert_with(|| {
            Arc::new(RwLock::new(Live {
                record,
                cache: [None, None, None],
                inflight: [None, None, None],
            }))
        })))
    }

    /// Applies `change` to the record and persists it (revision + 1). On a revision conflict
    /// the stored record is reloaded and the change applied once more; `change` may refuse by
    /// returning an error.
    async fn commit(
        &self,
        h: &Handle,
        change: impl Fn(&mut AccountRecord) -> Result<(), Error>,
    ) -> Result<AccountRecord, Error> {
        for attempt in 0..2 {
            let mut rec = read(h).record.clone();
            change(&mut rec)?;
            rec.revision += 1;
            rec.updated = self.now();
            match self.inner.store.update(&rec).await {
                Ok(()) => {
                    let mut live = write(h);
                    if live.record.revision < rec.revision {
                        live.record = rec.clone();
                    }
                    return Ok(rec);
                }
                Err(Error::Conflict(_)) if attempt == 0 => {
                    let id = read(h).record.id.clone();
                    if let Some(fresh) = self.inner.store.get(&id).await? {
                        write(h).record = fresh;
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Conflict("the account changed concurrently".into()))
    }

    /// The state gate every operation passes.
    fn gate(&self, rec: &AccountRecord, op: Operation) -> Result<(), Error> {
        match &rec.state {
            AccountState::Deleted { .. } => Err(Error::AccountNotFound(rec.id.to_string())),
            AccountState::KeyInaccessible { reason, .. }
                if !rec.policy.allows_while_inaccessible(op) =>
            {
                self.emit(
                    &rec.id,
                    None,
                    rec.current_customer_key().map(|k| k.to_string()),
                    AuditAction::Denied {
                        operation: format!("{op:?}"),
                    },
                    AuditOutcome::Failure("KeyInaccessible".into()),
                );
                Err(Error::KeyInaccessible {
                    account: rec.id.to_string(),
                    reason: reason.clone(),
                })
            }
            _ => Ok(()),
        }
    }

    fn platform_for(&self, slot: Slot) -> Result<&PlatformKey, Error> {
        match slot {
            Slot::Infrastructure => {
                self.inner.infrastructure.as_ref().ok_or_else(|| {
                    Error::InvalidInput("no infrastructure key is configured".into())
                })
            }
            _ => Ok(&self.inner.platform),
        }
    }

    /// The provider, identity and audit name of the key that wraps `slot` of `rec`.
    async fn wrapper_of(
        &self,
        rec: &AccountRecord,
        slot: Slot,
    ) -> Result<(Arc<dyn KeyProvider>, Option<Identity>), ProviderError> {
        match (slot, &rec.key_source) {
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

    fn wrapped_of(rec: &AccountRecord, slot: Slot) -> Option<&WrappedAccountKey> {
        match slot {
            Slot::Account => rec.account_key.as_ref(),
            Slot::PlatformClass => rec.platform_class_key.as_ref(),
            Slot::Infrastructure => rec.infrastructure_key.as_ref(),
        }
    }

    fn record_key(rec: &AccountRecord) -> Option<String> {
        rec.account_key.as_ref().map(Self::audit_key)
    }

    fn audit_key(w: &WrappedAccountKey) -> String {
        if w.role == KeyRole::Customer {
            format!(
                "https://{}/keys/{}/{}",
                w.vault, w.wrapped.key_name, w.wrapped.key_version
            )
        } else {
            format!(
                "{}:{}/{}",
                w.vault, w.wrapped.key_name, w.wrapped.key_version
            )
        }
    }

    /// The unwrapped key of `slot`, from cache when fresh, after the state gate for `op`.
    pub(crate) async fn key_for(
        &self,
        id: &AccountId,
        slot: Slot,
        op: Operation,
    ) -> Result<Unwrapped, Error> {
        let h = self.handle(id).await?;
        self.unwrap_slot(&h, slot, Some(op), false).await
    }

    /// The key of `slot`: from cache when fresh (unless `bypass_cache`), else from the
    /// provider — once for all concurrent callers on a cold cache.
    async fn unwrap_slot(
        &self,
        h: &Handle,
        slot: Slot,
        op: Option<Operation>,
        bypass_cache: bool,
    ) -> Result<Unwrapped, Error> {
        if bypass_cache {
            return self.fetch_slot(h, slot, op, true).await;
        }
        loop {
            // Fast path: a read lock and a fresh cache.
            {
                let live = read(h);
                if let Some(op) = op {
                    self.gate(&live.record, op)?;
                }
                if let Some(c) = &live.cache[slot as usize]
                    && self.fresh(&live.record, c)
                {
                    return Ok(c.keys.clone());
                }
            }
            let flight = {
                let mut live = write(h);
                if let Some(op) = op {
                    self.gate(&live.record, op)?;
                }
                if let Some(c) = &live.cache[slot as usize]
                    && self.fresh(&live.record, c)
                {
                    return Ok(c.keys.clone());
                }
                match &live.inflight[slot as usize] {
                    Some(f) => Err(Arc::clone(f)),
                    None => {
                        let f = Arc::new(Flight::default());
                        live.inflight[slot as usize] = Some(Arc::clone(&f));
                        Ok(f)
                    }
                }
            };
            match flight {
                Err(other) => FlightWait(other).await,
                Ok(flight) => {
                    let _guard = FlightGuard { h, slot, flight };
                    return self.fetch_slot(h, slot, op, false).await;
                }
            }
        }
    }

    async fn fetch_slot(
        &self,
        h: &Handle,
        slot: Slot,
        op: Option<Operation>,
        bypass_cache: bool,
    ) -> Result<Unwrapped, Error> {
        let rec = {
            let live = read(h);
            match op {
                Some(op) => self.gate(&live.record, op)?,
                None => {
                    if let AccountState::Deleted { .. } = live.record.state {
                        return Err(Error::AccountNotFound(live.record.id.to_string()));
                    }
                }
            }
            Self::wrapped_of(&live.record, slot).ok_or_else(|| {
                Error::InvalidInput(format!("account {} has no {slot:?} key", live.record.id))
            })?;
            if !bypass_cache
                && let Some(c) = &live.cache[slot as usize]
                && self.fresh(&live.record, c)
            {
                return Ok(c.keys.clone());
            }
            live.record.clone()
        };
        let Some(wrapped) = Self::wrapped_of(&rec, slot).cloned() else {
            return Err(Error::AccountNotFound(rec.id.to_string()));
        };
        let audit_key = Some(Self::audit_key(&wrapped));
        let result = match self.wrapper_of(&rec, slot).await {
            Ok((provider, identity)) => (provider.unwrap_key(&wrapped.wrapped).await, identity),
            Err(e) => (Err(e), None),
        };
        match result {
            (Ok(secret), identity) => {
                self.emit(
                    &rec.id,
                    identity.as_ref(),
                    audit_key,
                    AuditAction::Unwrap,
                    AuditOutcome::Success,
                );
                let raw = secret.to_aes_key()?;
                let prepared = PreparedKey::new(
                    rec.id.as_str(),
                    &AccountKey::new(wrapped.key_id.clone(), 1, raw.duplicate())?,
                )?;
                let keys = Unwrapped {
                    raw: Arc::new(raw),
                    prepared: Arc::new(prepared),
                };
                let mut live = write(h);
                // Revocation may have been observed while we were waiting on the provider.
                if let Some(op) = op {
                    self.gate(&live.record, op)?;
                }
                if Self::wrapped_of(&live.record, slot).map(|w| &w.wrapped)
                    == Some(&wrapped.wrapped)
                {
                    live.cache[slot as usize] = Some(Cached {
                        keys: keys.clone(),
                        fetched: self.now(),
                    });
                }
                Ok(keys)
            }
            (Err(e), identity) => {
                self.emit(
                    &rec.id,
                    identity.as_ref(),
                    audit_key,
                    AuditAction::Unwrap,
                    AuditOutcome::Failure(e.to_string()),
                );
                Err(self.on_provider_failure(h, &rec, slot, e).await)
            }
        }
    }

    fn fresh(&self, rec: &AccountRecord, c: &Cached) -> bool {
        self.now()
            .duration_since(c.fetched)
            .map(|age| age < rec.policy.cache_max_age)
            .unwrap_or(false)
    }

    /// Turns a provider failure into the account-level error, moving the account to
    /// `KeyInaccessible` on a definitive failure of its customer key.
    async fn on_provider_failure(
        &self,
        h: &Handle,
        rec: &AccountRecord,
        slot: Slot,
        e: ProviderError,
    ) -> Error {
        let customer =
            slot == Slot::Account && matches!(rec.key_source, KeySource::Customer { .. });
        if customer && e.is_definitive() {
            let reason = e.to_string();
            if let Err(err) = self.mark_inaccessible(h, &reason).await {
                return err;
            }
            Error::KeyInaccessible {
                account: rec.id.to_string(),
                reason,
            }
        } else if e.is_transient() {
            Error::Unavailable {
                account: rec.id.to_string(),
                reason: e.to_string(),
            }
        } else {
            Error::Provider(e)
        }
    }

    /// Moves to `KeyInaccessible`: in memory first (so every later call sees it at once, and
    /// the cached keys are gone), then persisted.
    async fn mark_inaccessible(&self, h: &Handle, reason: &str) -> Result<(), Error> {
        let now = self.now();
        let (id, from, key) = {
            let mut live = write(h);
            live.cache = [None, None, None];
            let from = live.record.state.kind();
            if from != StateKind::Active {
                return Ok(());
            }
            live.record.state = AccountState::KeyInaccessible {
                reason: reason.to_owned(),
                since: now,
            };
            (live.record.id.clone(), from, Self::record_key(&live.record))
        };
        let reason = reason.to_owned();
        self.commit(h, |r| {
            if r.state.kind() == StateKind::Active {
                r.state = AccountState::KeyInaccessible {
                    reason: reason.clone(),
                    since: now,
                };
            }
            Ok(())
        })
        .await?;
        self.emit(
            &id,
            None,
            key,
            AuditAction::StateChange {
                from: from.to_string(),
                to: StateKind::KeyInaccessible.to_string(),
            },
            AuditOutcome::Success,
        );
        Ok(())
    }

    /// Validates a customer key against `policy` and the account's region and tenant, and
    /// returns its provider and (latest or pinned) properties.
    async fn validate_customer_key(
        &self,
        policy: &Policy,
        region: &str,
        tenant: &str,
        key: &KeyId,
        identity: &Identity,
    ) -> Result<(Arc<dyn KeyProvider>, Option<KeyProperties>), Error> {
        let violation = |v| Error::Policy {
            policy: policy.name.clone(),
            violation: v,
        };
        let provider = self.inner.resolver.provider(key.vault(), identity).await?;
        let vp = provider.vault_properties().await?;
        if policy.require_soft_delete && !vp.soft_delete {
            return Err(violation(PolicyViolation::SoftDeleteRequired));
        }
        if policy.require_purge_protection && !vp.purge_protection {
            return Err(violation(PolicyViolation::PurgeProtectionRequired));
        }
        if policy.require_same_region && !vp.region.eq_ignore_ascii_case(region) {
            return Err(violation(PolicyViolation::RegionMismatch {
                vault: vp.region.clone(),
                account: region.to_owned(),
            }));
        }
        if policy.require_same_tenant && vp.tenant != tenant {
            return Err(violation(PolicyViolation::TenantMismatch {
                vault: vp.tenant.clone(),
                account: tenant.to_owned(),
            }));
        }
        if !policy.required_permissions.get {
            return Ok((provider, None));
        }
        let props = match provider.key_properties(key.name(), key.version()).await {
            Err(e) if e.kind() == ProviderErrorKind::Forbidden => {
                return Err(violation(PolicyViolation::MissingPermission("get")));
            }
            other => other?,
        };
        match props.key_type {
            KeyType::Rsa { bits } if policy.allowed_rsa_bits.contains(&bits) => {}
            KeyType::Rsa { bits } => {
                return Err(violation(PolicyViolation::KeySize {
                    bits,
                    allowed: policy.allowed_rsa_bits.iter().copied().collect(),
                }));
            }
            ref other => {
                return Err(violation(PolicyViolation::KeyType {
                    found: other.to_string(),
                }));
            }
        }
        if !props.enabled {
            return Err(ProviderError::new(
                ProviderErrorKind::KeyDisabled,
                format!(
                    "version {} of key {} is disabled",
                    props.version, props.name
                ),
            )
            .into());
        }
        Ok((provider, Some(props)))
    }

    /// Wraps `key` with (`provider`, name, version) and proves the wrapping by unwrapping it
    /// before anything uses it. Permission failures become policy violations naming the
    /// permission.
    async fn wrap_verified(
        &self,
        policy: &Policy,
        provider: &Arc<dyn KeyProvider>,
        name: &str,
        version: Option<&str>,
        algorithm: WrapAlgorithm,
        key: &AesKey,
    ) -> Result<WrappedKey, Error> {
        let violation = |v| Error::Policy {
            policy: policy.name.clone(),
            violation: v,
        };
        let w = match provider
            .wrap_key(name, version, algorithm, key.expose_secret())
            .await
        {
            Err(e) if e.kind() == ProviderErrorKind::Forbidden => {
                return Err(violation(PolicyViolation::MissingPermission("wrapKey")));
            }
            other => other?,
        };
        let back = match provider.unwrap_key(&w).await {
            Err(e) if e.kind() == ProviderErrorKind::Forbidden => {
                return Err(violation(PolicyViolation::MissingPermission("unwrapKey")));
            }
            other => other?,
        };
        if !bool::from(back.expose_secret().ct_eq(key.expose_secret())) {
            return Err(ProviderError::new(
                ProviderErrorKind::UnwrapFailed,
                "the provider's new wrapping did not unwrap to the account key",
            )
            .into());
        }
        Ok(w)
    }

    /// Wraps `key` under the account's key source; returns the wrapping and the source to
    /// record (a versionless key is pinned when the policy does not follow the latest version).
    async fn wrap_under_source(
        &self,
        acct: Ctx<'_>,
        source: &KeySource,
        key: &AesKey,
        key_id: &str,
    ) -> Result<(WrappedAccountKey, KeySource), Error> {
        let Ctx {
            id,
            policy,
            region,
            tenant,
        } = acct;
        match source {
            KeySource::Platform => {
                let pk = &self.inner.platform;
                let w = self
                    .wrap_verified(policy, &pk.provider, &pk.name, None, pk.algorithm, key)
                    .await?;
                Ok((
                    WrappedAccountKey::new(key_id, pk.role, pk.role.as_str(), w),
                    KeySource::Platform,
                ))
            }
            KeySource::Customer { key: kid, identity } => {
                let (provider, _props) = self
                    .validate_customer_key(policy, region, tenant, kid, identity)
                    .await?;
                let w = self
                    .wrap_verified(
                        policy,
                        &provider,
                        kid.name(),
                        kid.version(),
                        self.inner.customer_algorithm,
                        key,
                    )
                    .await?;
                let wrapped = WrappedAccountKey::new(key_id, KeyRole::Customer, kid.vault(), w);
                self.emit(
                    id,
                    Some(identity),
                    Some(Self::audit_key(&wrapped)),
                    AuditAction::Wrap,
                    AuditOutcome::Success,
                );
                let recorded = if kid.version().is_none() && !policy.follow_latest_version {
                    kid.with_version(&wrapped.wrapped.key_version)?
                } else {
                    kid.clone()
                };
                Ok((wrapped, KeySource::customer(recorded, identity.clone())))
            }
        }
    }

    async fn wrap_platform(
        &self,
        policy: &Policy,
        slot: Slot,
        key: &AesKey,
        key_id: String,
    ) -> Result<WrappedAccountKey, Error> {
        let pk = self.platform_for(slot)?;
        let w = self
            .wrap_verified(policy, &pk.provider, &pk.name, None, pk.algorithm, key)
            .await?;
        Ok(WrappedAccountKey::new(&key_id, pk.role, pk.role.as_str(), w))
    }

    /// Creates an account: generates its account key (and platform-class and second-layer
    /// keys), wraps each under its key, proves every wrapping by unwrapping it, and stores the
    /// record.
    ///
    /// # Errors
    /// [`Error::Conflict`] if the id exists; [`Error::Policy`] when the customer key or its
    /// vault breaks the policy (nothing is stored); provider errors as they come.
    pub async fn create_account(&self, spec: NewAccount) -> Result<AccountRecord, Error> {
        let policy = &spec.policy;
        if self.inner.store.get(&spec.id).await?.is_some() {
            return Err(Error::Conflict(format!(
                "account {} already exists",
                spec.id
            )));
        }
        if matches!(spec.key_source, KeySource::Customer { .. }) && !policy.customer_key_at_creation
        {
            return Err(Error::Policy {
                policy: policy.name.clone(),
                violation: PolicyViolation::CustomerKeyAtCreation,
            });
        }
        if let Some(c) = spec
            .chosen_classes
            .iter()
            .find(|c| !policy.optional_classes.contains(*c))
        {
            return Err(Error::InvalidInput(format!(
                "data class {c} is not an optional class of policy {}",
                policy.name
            )));
        }
        let double = match policy.double_encryption {
            DoubleEncryption::Always => true,
            DoubleEncryption::Optional => spec.double_encryption,
        };
        let account_key = AesKey::generate();
        let (wrapped, source) = self
            .wrap_under_source(
                Ctx {
                    id: &spec.id,
                    policy,
                    region: &spec.region,
                    tenant: &spec.tenant,
                },
                &spec.key_source,
                &account_key,
                &new_key_id(),
            )
            .await?;
        let platform_class = self
            .wrap_platform(
                policy,
                Slot::PlatformClass,
                &AesKey::generate(),
                new_key_id(),
            )
            .await?;
        let infrastructure = if double {
            Some(
                self.wrap_platform(
                    policy,
                    Slot::Infrastructure,
                    &AesKey::generate(),
                    new_key_id(),
                )
                .await?,
            )
        } else {
            None
        };
        let now = self.now();
        let record = AccountRecord {
            format: RECORD_FORMAT,
            id: spec.id.clone(),
            region: spec.region.clone(),
            tenant: spec.tenant.clone(),
            key_source: source,
            account_key: Some(wrapped),
            platform_class_key: Some(platform_class),
            infrastructure_key: infrastructure,
            state: AccountState::Active,
            policy: spec.policy.clone(),
            double_encryption: double,
            chosen_classes: spec.chosen_classes.clone(),
            revision: 1,
            epoch: 1,
            created: now,
            updated: now,
            last_rotated: None,
            last_probed: Some(now),
        };
        self.inner.store.create(&record).await?;
        self.emit(
            &spec.id,
            None,
            None,
            AuditAction::Created,
            AuditOutcome::Success,
        );
        Ok(record)
    }

    /// Enables customer keys, changes to another key, updates the pinned version or changes
    /// the identity: validates the new key, re-wraps the account key under it (proved by an
    /// unwrap) and only then records it. No object is re-encrypted. Restores `Active` if the
    /// account was `KeyInaccessible` and the account key could be unwrapped again.
    ///
    /// # Errors
    /// [`Error::Policy`] (forbidden switch, other vault, bad key or vault, missing
    /// permission); [`Error::KeyInaccessible`] if the current key cannot unwrap the account key
    /// (the data is locked until access to it is restored); provider errors. On any error the
    /// record is unchanged.
    pub async fn set_customer_key(
        &self,
        id: &AccountId,
        key: KeyId,
        identity: Identity,
    ) -> Result<AccountRecord, Error> {
        let h = self.handle(id).await?;
        let rec = read(&h).record.clone();
        let forbidden = |v| Error::Policy {
            policy: rec.policy.name.clone(),
            violation: v,
        };
        match &rec.key_source {
            KeySource::Platform if !rec.policy.allow_source_switch => {
                return Err(forbidden(PolicyViolation::SourceSwitchForbidden));
            }
            KeySource::Customer { key: current, .. }
                if rec.policy.key_change_same_vault_only && current.vault() != key.vault() =>
            {
                return Err(forbidden(PolicyViolation::DifferentVault {
                    current: current.vault().to_owned(),
                    requested: key.vault().to_owned(),
                }));
            }
            _ => {}
        }
        self.rekey(&h, KeySource::customer(key, identity)).await
    }

    /// Disables customer keys: the account key goes back under the platform key. No object is
    /// re-encrypted.
    ///
    /// # Errors
    /// [`Error::Policy`] if the policy forbids switching; [`Error::KeyInaccessible`] if the
    /// customer key cannot unwrap the account key; provider errors.
    pub async fn use_platform_key(&self, id: &AccountId) -> Result<AccountRecord, Error> {
        let h = self.handle(id).await?;
        let rec = read(&h).record.clone();
        if matches!(rec.key_source, KeySource::Customer { .. }) && !rec.policy.allow_source_switch {
            return Err(Error::Policy {
                policy: rec.policy.name.clone(),
                violation: PolicyViolation::SourceSwitchForbidden,
            });
        }
        self.rekey(&h, KeySource::Platform).await
    }

    /// Re-wraps the account key under `source`: unwrap with the current wrapping, wrap under
    /// the new one, prove it, then commit. A failure anywhere leaves the old wrapping in force.
    async fn rekey(&self, h: &Handle, source: KeySource) -> Result<AccountRecord, Error> {
        let rec = read(h).record.clone();
        let keys = self.unwrap_slot(h, Slot::Account, None, true).await?;
        let key_id = keys.prepared.key_id().to_owned();
        let (wrapped, recorded) = self
            .wrap_under_source(
                Ctx {
                    id: &rec.id,
                    policy: &rec.policy,
                    region: &rec.region,
                    tenant: &rec.tenant,
                },
                &source,
                &keys.raw,
                &key_id,
            )
            .await?;
        let from = rec
            .account_key
            .as_ref()
            .map(Self::audit_key)
            .unwrap_or_default();
        let to = Self::audit_key(&wrapped);
        let now = self.now();
        let prior_state = rec.state.kind();
        let updated = self
            .commit(h, |r| {
                if r.state.kind() == StateKind::Deleted {
                    return Err(Error::AccountNotFound(r.id.to_string()));
                }
                r.key_source = recorded.clone();
                r.account_key = Some(wrapped.clone());
                r.last_rotated = Some(now);
                r.last_probed = Some(now);
                r.state = AccountState::Active;
                Ok(())
            })
            .await?;
        {
            let mut live = write(h);
            live.cache[Slot::Account as usize] = Some(Cached { keys, fetched: now });
        }
        if from != to {
            self.emit(
                &rec.id,
                None,
                Some(to.clone()),
                AuditAction::KeyChange { from, to },
                AuditOutcome::Success,
            );
        }
        if prior_state == StateKind::KeyInaccessible {
            self.emit(
                &rec.id,
                None,
                Self::record_key(&updated),
                AuditAction::StateChange {
                    from: prior_state.to_string(),
                    to: StateKind::Active.to_string(),
                },
                AuditOutcome::Success,
            );
        }
        Ok(updated)
    }

    /// Probes the account's key now: the identity's get, wrapKey and unwrapKey on the exact
    /// version wrapping the account key. A definitive failure moves the account to
    /// `KeyInaccessible` and empties its cache at once; a success restores `Active` (every
    /// object written before opens again); a transient failure changes nothing.
    ///
    /// # Errors
    /// [`Error::AccountNotFound`]; [`Error::Unavailable`] for a transient failure;
    /// provider errors for the platform key.
    pub async fn check(&self, id: &AccountId) -> Result<StateKind, Error> {
        let h = self.handle(id).await?;
        let rec = read(&h).record.clone();
        if rec.state.kind() == StateKind::Deleted {
            return Err(Error::AccountNotFound(id.to_string()));
        }
        if let KeySource::Customer { key, identity } = &rec.key_source
            && let Some(w) = &rec.account_key
        {
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
                id,
                Some(identity),
                Some(Self::audit_key(w)),
                AuditAction::Probe,
                match &probe {
                    Ok(()) => AuditOutcome::Success,
                    Err(e) => AuditOutcome::Failure(e.to_string()),
                },
            );
            if let Err(e) = probe {
                return Err(self.on_provider_failure(&h, &rec, Slot::Account, e).await);
            }
        }
        // The unwrap proves unwrapKey and refreshes the cache.
        self.unwrap_slot(&h, Slot::Account, None, true).await?;
        let now = self.now();
        let before = rec.state.kind();
        self.commit(&h, |r| {
            if r.state.kind() == StateKind::Deleted {
                return Err(Error::AccountNotFound(r.id.to_string()));
            }
            r.state = AccountState::Active;
            r.last_probed = Some(now);
            Ok(())
        })
        .await?;
        if before == StateKind::KeyInaccessible {
            self.emit(
                id,
                None,
                Self::record_key(&rec),
                AuditAction::StateChange {
                    from: before.to_string(),
                    to: StateKind::Active.to_string(),
                },
                AuditOutcome::Success,
            );
        }
        Ok(StateKind::Active)
    }

    /// [`check`](Self::check), then — for a versionless customer key under a policy that
    /// follows the latest version — picks up a newer enabled version and re-wraps the account
    /// key under it (automatic rotation). A pinned version stays until the owner updates it.
    ///
    /// # Errors
    /// As [`check`](Self::check) and [`set_customer_key`](Self::set_customer_key).
    pub async fn refresh(&self, id: &AccountId) -> Result<AccountRecord, Error> {
        self.check(id).await?;
        let h = self.handle(id).await?;
        let rec = read(&h).record.clone();
        if let (KeySource::Customer { key, identity }, Some(w)) =
            (&rec.key_source, &rec.account_key)
            && key.version().is_none()
            && rec.policy.follow_latest_version
        {
            let p = self.inner.resolver.provider(key.vault(), identity).await?;
            let latest = p.key_properties(key.name(), None).await?;
            let current = p
                .key_properties(key.name(), Some(&w.wrapped.key_version))
                .await?;
            let newer = match (
                latest.version.parse::<u64>(),
                current.version.parse::<u64>(),
            ) {
                (Ok(a), Ok(b)) => a > b,
                _ => latest.version != current.version && latest.created >= current.created,
            };
            if newer {
                return self.rekey(&h, rec.key_source.clone()).await;
            }
        }
        Ok(read(&h).record.clone())
    }

    /// Refreshes every account that is not deleted — what an application calls on its own
    /// schedule (no runtime is embedded). One failing account does not stop the others.
    ///
    /// # Errors
    /// Only a failure to list the store; per-account failures are in the entries.
    pub async fn monitor(&self) -> Result<Vec<MonitorEntry>, Error> {
        let mut out = Vec::new();
        for rec in self.inner.store.list().await? {
            if rec.state.kind() == StateKind::Deleted {
                continue;
            }
            let result = self.refresh(&rec.id).await.map(|r| r.state.kind());
            let result = match result {
                Err(Error::KeyInaccessible { .. }) => Ok(StateKind::KeyInaccessible),
                other => other,
            };
            out.push(MonitorEntry {
                account: rec.id,
                result,
            });
        }
        Ok(out)
    }

    /// Deletes the account in any state: its wrapped keys are destroyed (crypto-shredding),
    /// its cache emptied, and every later call answers [`Error::AccountNotFound`].
    ///
    /// # Errors
    /// [`Error::AccountNotFound`]; store failures.
    pub async fn delete_account(&self, id: &AccountId) -> Result<(), Error> {
        let h = self.handle(id).await?;
        let now = self.now();
        let (from, key) = {
            let mut live = write(&h);
            live.cache = [None, None, None];
            let from = live.record.state.kind();
            if from == StateKind::Deleted {
                return Err(Error::AccountNotFound(id.to_string()));
            }
            live.record.state = AccountState::Deleted { at: now };
            (from, Self::record_key(&live.record))
        };
        self.commit(&h, |r| {
            r.state = AccountState::Deleted { at: now };
            r.account_key = None;
            r.platform_class_key = None;
            r.infrastructure_key = None;
            Ok(())
        })
        .await?;
        self.emit(
            id,
            None,
            key.clone(),
            AuditAction::StateChange {
                from: from.to_string(),
                to: StateKind::Deleted.to_string(),
            },
            AuditOutcome::Success,
        );
        self.emit(id, None, key, AuditAction::Deleted, AuditOutcome::Success);
        Ok(())
    }

    /// Checks that `op` may run on the account now (for operations the application performs
    /// itself, such as listing or deleting objects). A denial is audited.
    ///
    /// # Errors
    /// [`Error::KeyInaccessible`] (403) when the key is inaccessible and the policy does not
    /// list `op`; [`Error::AccountNotFound`] (404) for a deleted or unknown account.
    pub async fn authorize(&self, id: &AccountId, op: Operation) -> Result<(), Error> {
        let h = self.handle(id).await?;
        let live = read(&h);
        self.gate(&live.record, op)
    }

    /// The account's record (account GET): key source, current key and version, state, when
    /// it last rotated and was last probed.
    ///
    /// # Errors
    /// [`Error::AccountNotFound`]; [`Error::KeyInaccessible`] if the policy does not allow GET
    /// while inaccessible.
    pub async fn account(&self, id: &AccountId) -> Result<AccountRecord, Error> {
        let h = self.handle(id).await?;
        let live = read(&h);
        self.gate(&live.record, Operation::AccountGet)?;
        Ok(live.record.clone())
    }

    /// Every account that is not deleted (account LIST).
    ///
    /// # Errors
    /// Store failures.
    pub async fn accounts(&self) -> Result<Vec<AccountRecord>, Error> {
        let mut out = Vec::new();
        for rec in self.inner.store.list().await? {
            if rec.state.kind() != StateKind::Deleted {
                out.push(
                    self.handle(&rec.id)
                        .await
                        .map(|h| read(&h).record.clone())?,
                );
            }
        }
        Ok(out)
    }

    /// Which accounts' keys are wrapped under `key` at its version (operators: is it safe to
    /// disable or delete this version?). `key` must carry a version.
    ///
    /// # Errors
    /// [`Error::InvalidInput`] for a versionless key; store failures.
    pub async fn accounts_using(&self, key: &KeyId) -> Result<Vec<AccountId>, Error> {
        let version = key
            .version()
            .ok_or_else(|| Error::InvalidInput("name a key version".into()))?;
        self.inner
            .store
            .accounts_using(key.vault(), key.name(), version)
            .await
    }

    /// Drops the in-process view of `id` so the next call reloads it from the store (after
    /// another process changed it).
    pub fn forget(&self, id: &AccountId) {
        self.inner
            .live
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }
}
