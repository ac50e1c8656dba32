//! Seeded randomised interleavings of two managers (replicas) sharing one store, with an
//! invariant checker run after every operation (issue "Revocation that holds").
//!
//! Each schedule runs on its own tokio current-thread runtime; interleavings come only from
//! yield points (`tokio::task::yield_now`) that the store and tenant-vault wrappers of
//! `interleave_support` insert, a seeded number of times, before and after every call they
//! forward. Everything else — the operations of each task, the managers they run on, which
//! version the customer disables, the number of yields — is drawn from the seed, so a seed
//! replays exactly:
//!
//! ```text
//! BYOK_INTERLEAVE_SEED=<n> cargo test --test interleavings -- --nocapture
//! BYOK_INTERLEAVE_SCHEDULES=<n> cargo test --test interleavings     # more schedules
//! BYOK_INTERLEAVE_BASE=<n> cargo test --test interleavings          # other seeds
//! ```
//!
//! Invariants (checked after every operation and at the end, on the logged history):
//!
//! 1. A data operation that succeeded did not run entirely inside an interval in which the
//!    store held `KeyInaccessible` (the bound is zero steps: with change hints, and without
//!    them when `record_max_age` is zero).
//! 2. No object written is lost: once access is back, `check` brings both managers to
//!    `Active` and every object written decrypts to its plaintext on both.
//! 3. Whenever the store holds `KeyInaccessible`, the customer-key version of the record's
//!    wrapping really was inaccessible at some step since the operation that persisted it
//!    started (no false lockout, no lockout of a wrapping that is not current).
//! 4. After a `check` (or `refresh`) returned `Active`, the store is not `KeyInaccessible`
//!    unless a failure observed after that check began put it there.
//! 5. A restore (`KeyInaccessible` -> `Active` in the store) rests on a successful unwrap
//!    observed after the failure that locked the account (a probe or re-key that began before
//!    a revocation never undoes it).
//!
//! Also: no task panics, no schedule hangs, and every error is of an expected kind (never
//! `Decryption` for an untampered object).

mod interleave_support;

use std::fmt::Write as _;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use byok::account::{DataClass, NewAccount, PlatformKey, StateKind};
use byok::clock::Clock;
use byok::provider::memory::InMemoryVault;
use byok::provider::{
    Identity, KeySpec, Permissions, VaultDirectory, VaultProperties, WrapAlgorithm,
};
use byok::store::InMemoryAccountStore;
use byok::testing::ManualClock;
use byok::{AccountId, AccountManager, Error, KeyId, KeySource, Policy, VaultAdmin};
use interleave_support::{
    Event, History, OP, Outcome, PEM_BITS, PEMS, Rng, Sched, Truth, Wrap, YieldingProvider,
    YieldingStore, current_op, splitmix64,
};

const HOST: &str = "contoso.vault.example";
const REGION: &str = "westeurope";
const TENANT: &str = "contoso";
const KEY: &str = "cmk";
/// The default number of schedules (override with `BYOK_INTERLEAVE_SCHEDULES`).
const DEFAULT_SCHEDULES: u64 = 4000;
/// The default base seed (override with `BYOK_INTERLEAVE_BASE`).
const DEFAULT_BASE: u64 = 0xB70C_2025;
/// A schedule that makes no progress for this long is reported as hung.
const HANG: Duration = Duration::from_secs(60);
/// The manager index of the final phase's task.
const FINAL_TASK: usize = 99;

// ---------------------------------------------------------------------------------------------
// Schedules

/// An operation as planned (runtime choices — which object, which version — are made when it
/// runs, from the schedule's shared RNG).
#[derive(Clone, Copy, Debug)]
enum Planned {
    Encrypt(usize),
    Decrypt(usize),
    Check(usize),
    Refresh(usize),
    SetKey(usize),
    UsePlatform(usize),
    Revoke,
    Restore,
    Rotate,
    Tick,
}

#[derive(Clone, Debug)]
struct Plan {
    seed: u64,
    hints: bool,
    max_yields: u64,
    transient_pct: u64,
    tasks: Vec<Vec<Planned>>,
}

fn plan(seed: u64) -> Plan {
    let mut r = Rng::new(seed);
    let hints = r.chance(50);
    let max_yields = r.range(1, 4);
    let transient_pct = if r.chance(25) { r.range(2, 10) } else { 0 };
    let n = r.range(3, 6) as usize;
    let tasks = (0..n)
        .map(|_| {
            let len = r.range(2, 6);
            (0..len)
                .map(|_| {
                    let m = r.below(2) as usize;
                    match r.below(100) {
                        0..18 => Planned::Encrypt(m),
                        18..34 => Planned::Decrypt(m),
                        34..48 => Planned::Check(m),
                        48..56 => Planned::Refresh(m),
                        56..62 => Planned::SetKey(m),
                        62..64 => Planned::UsePlatform(m),
                        64..76 => Planned::Revoke,
                        76..88 => Planned::Restore,
                        88..93 => Planned::Rotate,
                        _ => Planned::Tick,
                    }
                })
                .collect()
        })
        .collect();
    Plan {
        seed,
        hints,
        max_yields,
        transient_pct,
        tasks,
    }
}

/// An operation with its runtime choices made.
#[derive(Clone, Debug)]
enum Action {
    Encrypt { m: usize, n: u64 },
    Decrypt { m: usize, obj: usize },
    Check { m: usize },
    Refresh { m: usize },
    SetKey { m: usize, version: Option<String> },
    UsePlatform { m: usize },
    RemoveIdentity,
    GrantIdentity,
    Disable(String),
    Enable(String),
    Cut,
    Uncut,
    Rotate,
    Tick(Duration),
    RestoreAll,
    Noop,
}

impl Action {
    fn describe(&self) -> (Option<usize>, String) {
        match self {
            Action::Encrypt { m, n } => (Some(*m), format!("encrypt obj-{n}")),
            Action::Decrypt { m, obj } => (Some(*m), format!("decrypt obj-{obj}")),
            Action::Check { m } => (Some(*m), "check".into()),
            Action::Refresh { m } => (Some(*m), "refresh".into()),
            Action::SetKey { m, version } => (
                Some(*m),
                format!(
                    "set_customer_key {KEY}/{}",
                    version.as_deref().unwrap_or("(latest)")
                ),
            ),
            Action::UsePlatform { m } => (Some(*m), "use_platform_key".into()),
            Action::RemoveIdentity => (None, "CUSTOMER remove identity".into()),
            Action::GrantIdentity => (None, "CUSTOMER grant identity".into()),
            Action::Disable(v) => (None, format!("CUSTOMER disable v{v}")),
            Action::Enable(v) => (None, format!("CUSTOMER enable v{v}")),
            Action::Cut => (None, "CUSTOMER cut (wrapper: Forbidden)".into()),
            Action::Uncut => (None, "CUSTOMER uncut".into()),
            Action::Rotate => (None, "CUSTOMER rotate (new version)".into()),
            Action::Tick(d) => (None, format!("clock +{}s", d.as_secs())),
            Action::RestoreAll => (None, "CUSTOMER restore everything".into()),
            Action::Noop => (None, "noop".into()),
        }
    }

    fn is_data(&self) -> bool {
        matches!(self, Action::Encrypt { .. } | Action::Decrypt { .. })
    }

    fn is_probe(&self) -> bool {
        matches!(self, Action::Check { .. } | Action::Refresh { .. })
    }
}

// ---------------------------------------------------------------------------------------------
// The world of one schedule

struct Obj {
    n: u64,
    ctx: String,
    plaintext: Vec<u8>,
    data: Vec<u8>,
}

/// A manual clock that also moves forward by one microsecond at every reading, as a real
/// clock does: no two observations carry the same time (the library orders observations of
/// different replicas that began under the same epoch by their start time).
#[derive(Debug, Default)]
struct TickingClock {
    base: ManualClock,
    readings: AtomicU64,
}

impl TickingClock {
    fn advance(&self, d: Duration) {
        self.base.advance(d);
    }
}

impl Clock for TickingClock {
    fn now(&self) -> std::time::SystemTime {
        let n = self.readings.fetch_add(1, Ordering::SeqCst);
        self.base.now() + Duration::from_micros(n)
    }
}

struct World {
    sched: Arc<Sched>,
    clock: Arc<TickingClock>,
    vault: InMemoryVault,
    store: Arc<InMemoryAccountStore>,
    managers: Vec<AccountManager>,
    identity: Identity,
    id: AccountId,
    truth: Mutex<Truth>,
    objects: Mutex<Vec<Obj>>,
    next_obj: AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn world(p: &Plan) -> World {
    let sched = Sched::new(splitmix64(p.seed ^ 0x5EED), p.max_yields);
    let clock = Arc::new(TickingClock::default());
    let service = Identity::new("service");
    let platform = InMemoryVault::seeded(
        VaultProperties::new("platform.internal", REGION, "operator"),
        clock.clone(),
        [1; 32],
    );
    platform
        .create_key("platform-kek", KeySpec::Aes256)
        .await
        .expect("platform key");
    platform
        .set_access(&service, Permissions::CMK)
        .await
        .expect("grant");
    let vault = InMemoryVault::seeded(
        VaultProperties::new(HOST, REGION, TENANT),
        clock.clone(),
        [3; 32],
    );
    vault.import_rsa_pem(KEY, PEMS[0]).await.expect("cmk v1");
    let identity = Identity::new("uami-contoso");
    vault
        .set_access(&identity, Permissions::CMK)
        .await
        .expect("grant");
    let store = Arc::new(InMemoryAccountStore::new());
    let managers = (0..2)
        .map(|m| {
            let directory = Arc::new(VaultDirectory::new());
            directory.add_vault(HOST, Arc::new(vault.clone()));
            directory.override_provider(
                HOST,
                &identity,
                Arc::new(YieldingProvider {
                    inner: Arc::new(vault.provider(&identity)),
                    mgr: m,
                    sched: sched.clone(),
                    faults: true,
                    log: true,
                }),
            );
            let platform_provider = YieldingProvider {
                inner: Arc::new(platform.provider(&service)),
                mgr: m,
                sched: sched.clone(),
                faults: false,
                log: false,
            };
            AccountManager::builder(
                PlatformKey::new(
                    Arc::new(platform_provider),
                    "platform-kek",
                    WrapAlgorithm::A256Kw,
                ),
                directory,
            )
            .store(Arc::new(YieldingStore {
                inner: store.clone(),
                mgr: m,
                sched: sched.clone(),
                hints: p.hints,
            }))
            .clock(clock.clone())
            .record_max_age(if p.hints {
                byok::account::DEFAULT_RECORD_MAX_AGE
            } else {
                Duration::ZERO
            })
            .failure_window(Duration::from_secs(1))
            .build()
        })
        .collect::<Vec<_>>();
    let truth = Truth {
        access: true,
        cut: false,
        enabled: vec![true],
    };
    sched.log(Event::Vault {
        op: None,
        truth: truth.clone(),
    });
    let id = AccountId::new("acct").expect("id");
    let policy = Policy::builder("interleave")
        .allowed_rsa_bits(&[PEM_BITS])
        .cache_max_age(Duration::from_secs(60))
        .build();
    managers[0]
        .create_account(
            NewAccount::new(id.clone(), REGION, TENANT, policy).key_source(KeySource::customer(
                KeyId::new(HOST, KEY, None).expect("key id"),
                identity.clone(),
            )),
        )
        .await
        .expect("create account");
    sched.transient_pct.store(p.transient_pct, Ordering::SeqCst);
    World {
        sched,
        clock,
        vault,
        store,
        managers,
        identity,
        id,
        truth: Mutex::new(truth),
        objects: Mutex::new(Vec::new()),
        next_obj: AtomicU64::new(0),
    }
}

impl World {
    /// The version of the customer key wrapping the account key in the store (no yield, no
    /// log: the customer looking at what the operator portal shows).
    fn stored_version(&self) -> Option<String> {
        let rec = futures_lite_get(&self.store, &self.id)?;
        match Wrap::of(&rec) {
            Wrap::Customer(v) => Some(v),
            _ => None,
        }
    }

    /// Makes the runtime choices of a planned operation.
    fn resolve(&self, p: Planned) -> Action {
        let s = &self.sched;
        match p {
            Planned::Encrypt(m) => Action::Encrypt {
                m,
                n: self.next_obj.fetch_add(1, Ordering::SeqCst),
            },
            Planned::Decrypt(m) => {
                let objs = lock(&self.objects);
                if objs.is_empty() {
                    drop(objs);
                    return self.resolve(Planned::Encrypt(m));
                }
                let i = s.below(objs.len() as u64) as usize;
                Action::Decrypt { m, obj: i }
            }
            Planned::Check(m) => Action::Check { m },
            Planned::Refresh(m) => Action::Refresh { m },
            Planned::SetKey(m) => {
                let n = lock(&self.truth).enabled.len() as u64;
                let version = if s.chance(40) {
                    None
                } else {
                    Some((s.below(n) + 1).to_string())
                };
                Action::SetKey { m, version }
            }
            Planned::UsePlatform(m) => Action::UsePlatform { m },
            Planned::Revoke => {
                let t = lock(&self.truth).clone();
                match s.below(100) {
                    0..35 if t.access => Action::RemoveIdentity,
                    35..80 => {
                        let current = self.stored_version();
                        let v = match current {
                            Some(v) if s.chance(70) => v,
                            _ => (s.below(t.enabled.len() as u64) + 1).to_string(),
                        };
                        Action::Disable(v)
                    }
                    _ if !t.cut => Action::Cut,
                    _ => Action::RemoveIdentity,
                }
            }
            Planned::Restore => {
                let t = lock(&self.truth).clone();
                let mut options = Vec::new();
                if !t.access {
                    options.push(Action::GrantIdentity);
                }
                if t.cut {
                    options.push(Action::Uncut);
                }
                for (i, e) in t.enabled.iter().enumerate() {
                    if !e {
                        options.push(Action::Enable((i + 1).to_string()));
                    }
                }
                if options.is_empty() {
                    Action::Noop
                } else {
                    let i = s.below(options.len() as u64) as usize;
                    options.swap_remove(i)
                }
            }
            Planned::Rotate => Action::Rotate,
            Planned::Tick => Action::Tick(Duration::from_secs(match s.below(3) {
                0 => 1,
                1 => 3,
                _ => 61,
            })),
        }
    }

    /// Applies a customer action to the vault and logs the new ground truth.
    async fn customer(&self, a: &Action) -> Outcome {
        let mut t = lock(&self.truth).clone();
        let r: Result<(), String> = match a {
            Action::RemoveIdentity => {
                t.access = false;
                self.vault
                    .remove_identity(&self.identity)
                    .await
                    .map_err(|e| e.to_string())
            }
            Action::GrantIdentity => {
                t.access = true;
                self.vault
                    .set_access(&self.identity, Permissions::CMK)
                    .await
                    .map_err(|e| e.to_string())
            }
            Action::Disable(v) | Action::Enable(v) => {
                let on = matches!(a, Action::Enable(_));
                if let Some(e) = v
                    .parse::<usize>()
                    .ok()
                    .and_then(|i| t.enabled.get_mut(i - 1))
                {
                    *e = on;
                }
                self.vault
                    .set_enabled(KEY, v, on)
                    .await
                    .map_err(|e| e.to_string())
            }
            Action::Cut | Action::Uncut => {
                let on = matches!(a, Action::Cut);
                t.cut = on;
                self.sched.cut.store(on, Ordering::SeqCst);
                Ok(())
            }
            Action::Rotate => {
                let n = t.enabled.len();
                if n >= PEMS.len() {
                    return Outcome::Ok {
                        state: None,
                        detail: "no more versions".into(),
                    };
                }
                t.enabled.push(true);
                self.vault
                    .import_rsa_pem(KEY, PEMS[n])
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Action::RestoreAll => {
                t.access = true;
                t.cut = false;
                self.sched.cut.store(false, Ordering::SeqCst);
                let mut r = self
                    .vault
                    .set_access(&self.identity, Permissions::CMK)
                    .await
                    .map_err(|e| e.to_string());
                for (i, e) in t.enabled.iter_mut().enumerate() {
                    *e = true;
                    if r.is_ok() {
                        r = self
                            .vault
                            .set_enabled(KEY, &(i + 1).to_string(), true)
                            .await
                            .map_err(|e| e.to_string());
                    }
                }
                r
            }
            _ => unreachable!("not a customer action"),
        };
        match r {
            Ok(()) => {
                *lock(&self.truth) = t.clone();
                self.sched.log(Event::Vault {
                    op: current_op(),
                    truth: t,
                });
                Outcome::Ok {
                    state: None,
                    detail: String::new(),
                }
            }
            Err(e) => {
                self.sched
                    .violation(format!("the vault refused a customer action: {e}"));
                Outcome::Err(e)
            }
        }
    }

    async fn exec(&self, a: &Action) -> Outcome {
        let blob = DataClass::new("blob");
        let result: Result<(Option<StateKind>, String), Error> = match a {
            Action::Encrypt { m, n } => {
                let ctx = format!("obj-{n}");
                let plaintext = format!("plaintext of object {n}").into_bytes();
                match self.managers[*m]
                    .encrypt(&self.id, &blob, ctx.as_bytes(), &plaintext)
                    .await
                {
                    Ok(data) => {
                        lock(&self.objects).push(Obj {
                            n: *n,
                            ctx,
                            plaintext,
                            data,
                        });
                        Ok((None, String::new()))
                    }
                    Err(e) => Err(e),
                }
            }
            Action::Decrypt { m, obj } => {
                let (n, ctx, plaintext, data) = {
                    let o = &lock(&self.objects)[*obj];
                    (o.n, o.ctx.clone(), o.plaintext.clone(), o.data.clone())
                };
                match self.managers[*m]
                    .decrypt(&self.id, ctx.as_bytes(), &data)
                    .await
                {
                    Ok(pt) if pt == plaintext => Ok((None, format!("obj-{n}"))),
                    Ok(_) => {
                        self.sched
                            .violation(format!("obj-{n} decrypted to another plaintext"));
                        Ok((None, "WRONG PLAINTEXT".into()))
                    }
                    Err(e) => Err(e),
                }
            }
            Action::Check { m } => self.managers[*m]
                .probe(&self.id)
                .await
                .map(|s| (Some(s), String::new())),
            Action::Refresh { m } => self.managers[*m]
                .refresh(&self.id)
                .await
                .map(|r| (Some(r.state.kind()), format!("wrap {}", Wrap::of(&r)))),
            Action::SetKey { m, version } => {
                let key = KeyId::new(HOST, KEY, version.as_deref()).expect("key id");
                self.managers[*m]
                    .set_customer_key(&self.id, key, self.identity.clone())
                    .await
                    .map(|r| (Some(r.state.kind()), format!("wrap {}", Wrap::of(&r))))
            }
            Action::UsePlatform { m } => self.managers[*m]
                .use_platform_key(&self.id)
                .await
                .map(|r| (Some(r.state.kind()), format!("wrap {}", Wrap::of(&r)))),
            Action::Tick(d) => {
                self.clock.advance(*d);
                Ok((None, String::new()))
            }
            Action::Noop => Ok((None, String::new())),
            customer => return self.customer(customer).await,
        };
        match result {
            Ok((state, detail)) => Outcome::Ok { state, detail },
            Err(e) => {
                let name = error_name(&e);
                let rekeys = matches!(
                    a,
                    Action::Refresh { .. } | Action::SetKey { .. } | Action::UsePlatform { .. }
                );
                let expected = match &e {
                    Error::KeyInaccessible { .. }
                    | Error::Unavailable { .. }
                    | Error::Conflict(_)
                    | Error::AccountNotFound(_)
                    | Error::Store { .. } => true,
                    Error::Policy { .. } => rekeys,
                    Error::Provider(p) => {
                        rekeys && (p.kind().is_definitive() || p.kind().is_transient())
                    }
                    _ => false,
                };
                if !expected {
                    let (_, what) = a.describe();
                    self.sched
                        .violation(format!("{what}: unexpected error {name}: {e}"));
                }
                Outcome::Err(format!("{name}: {e}"))
            }
        }
    }

    /// Runs one operation as the task `task`, and the checker after it.
    async fn run(&self, task: usize, a: Action) -> Outcome {
        let (mgr, what) = a.describe();
        let op = self
            .sched
            .begin_op(task, mgr, what, a.is_data(), a.is_probe());
        let outcome = OP.scope(op, self.exec(&a)).await;
        self.sched.end_op(op, outcome.clone());
        self.check_now();
        outcome
    }

    fn check_now(&self) {
        let v = {
            let h = self.sched.hist();
            if !h.violations.is_empty() {
                return;
            }
            check(&h)
        };
        if let Some(v) = v {
            self.sched.violation(v);
        }
    }

    /// Invariant 2: access comes back, both managers reach `Active`, every object opens on
    /// both.
    async fn finish(&self) {
        self.sched.transient_pct.store(0, Ordering::SeqCst);
        self.run(FINAL_TASK, Action::RestoreAll).await;
        self.clock.advance(Duration::from_secs(3600));
        for m in 0..2 {
            let mut active = false;
            for _ in 0..4 {
                if let Outcome::Ok {
                    state: Some(StateKind::Active),
                    ..
                } = self.run(FINAL_TASK, Action::Check { m }).await
                {
                    active = true;
                    break;
                }
            }
            if !active {
                self.sched.violation(format!(
                    "inv2: access is back but check on M{m} never returned Active"
                ));
                return;
            }
        }
        let objects: Vec<(u64, String, Vec<u8>, Vec<u8>)> = lock(&self.objects)
            .iter()
            .map(|o| (o.n, o.ctx.clone(), o.plaintext.clone(), o.data.clone()))
            .collect();
        for (n, ctx, plaintext, data) in objects {
            for (m, mgr) in self.managers.iter().enumerate() {
                match mgr.decrypt(&self.id, ctx.as_bytes(), &data).await {
                    Ok(pt) if pt == plaintext => {}
                    Ok(_) => self
                        .sched
                        .violation(format!("inv2: obj-{n} opens on M{m} to another plaintext")),
                    Err(e) => self.sched.violation(format!(
                        "inv2: obj-{n} (written successfully) is lost on M{m}: {}: {e}",
                        error_name(&e)
                    )),
                }
            }
        }
        self.check_now();
    }
}

/// Reads the inner store without yielding (it is in memory; its futures complete at once).
fn futures_lite_get(
    store: &InMemoryAccountStore,
    id: &AccountId,
) -> Option<byok::account::AccountRecord> {
    use byok::store::AccountStore as _;
    use std::future::Future as _;
    use std::task::{Context, Poll, Waker};
    let mut f = std::pin::pin!(store.get(id));
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(r) => r.ok().flatten(),
        Poll::Pending => None,
    }
}

fn error_name(e: &Error) -> String {
    match e {
        Error::KeyInaccessible { .. } => "KeyInaccessible".into(),
        Error::Unavailable { .. } => "Unavailable".into(),
        Error::Conflict(_) => "Conflict".into(),
        Error::AccountNotFound(_) => "AccountNotFound".into(),
        Error::Store { .. } => "Store".into(),
        Error::Policy { .. } => "Policy".into(),
        Error::Provider(p) => format!("Provider({:?})", p.kind()),
        Error::Decryption => "Decryption".into(),
        other => format!("{other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The checker

struct Commit<'a> {
    step: u64,
    op: Option<usize>,
    state: StateKind,
    wrap: &'a Wrap,
}

/// Invariants left out (`BYOK_INTERLEAVE_SKIP=4` or `=1,3`): to look past a known violation.
fn skipped(n: u32) -> bool {
    static SKIP: std::sync::OnceLock<Vec<u32>> = std::sync::OnceLock::new();
    SKIP.get_or_init(|| {
        std::env::var("BYOK_INTERLEAVE_SKIP")
            .unwrap_or_default()
            .split(',')
            .filter_map(|s| s.trim().parse().ok())
            .collect()
    })
    .contains(&n)
}

/// The first invariant the history breaks, if any.
fn check(h: &History) -> Option<String> {
    use StateKind::KeyInaccessible as KI;
    let commits: Vec<Commit<'_>> = h
        .entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::Commit {
                op, state, wrap, ..
            } => Some(Commit {
                step: e.step,
                op: *op,
                state: *state,
                wrap,
            }),
            _ => None,
        })
        .collect();
    let truths: Vec<(u64, &Truth)> = h
        .entries
        .iter()
        .filter_map(|e| match &e.event {
            Event::Vault { truth, .. } => Some((e.step, truth)),
            _ => None,
        })
        .collect();
    let persisted_before = |step: u64| {
        commits
            .iter()
            .rev()
            .find(|c| c.step < step)
            .map(|c| c.state)
    };

    // 1. No data operation succeeded entirely inside a persisted revocation.
    for (i, op) in h.ops.iter().enumerate() {
        let Some(end) = op.end else { continue };
        if skipped(1) || !(op.data && op.succeeded()) {
            continue;
        }
        if persisted_before(op.start) == Some(KI)
            && commits
                .iter()
                .filter(|c| c.step > op.start && c.step < end)
                .all(|c| c.state == KI)
        {
            return Some(format!(
                "inv1: #{i} ({} on M{}) succeeded although the store held KeyInaccessible \
                 from before it started (step {}) until it ended (step {end})",
                op.what,
                op.mgr.unwrap_or(9),
                op.start
            ));
        }
    }

    // 3. KeyInaccessible only for a current wrapping whose version really was inaccessible.
    for c in commits.iter().filter(|c| c.state == KI && !skipped(3)) {
        let Some(o) = c.op else {
            return Some(format!(
                "inv3: KeyInaccessible committed at step {} outside any operation",
                c.step
            ));
        };
        let start = h.ops[o].start;
        match c.wrap {
            Wrap::Customer(v) => {
                let at_start = truths
                    .iter()
                    .rev()
                    .find(|(s, _)| *s < start)
                    .is_some_and(|(_, t)| !t.accessible(v));
                let during = truths
                    .iter()
                    .filter(|(s, _)| *s > start && *s < c.step)
                    .any(|(_, t)| !t.accessible(v));
                if !(at_start || during) {
                    return Some(format!(
                        "inv3: #{o} ({}) committed KeyInaccessible at step {} for the wrapping \
                         under v{v}, which was accessible throughout since the operation began \
                         (step {start})",
                        h.ops[o].what, c.step
                    ));
                }
            }
            other => {
                return Some(format!(
                    "inv3: #{o} ({}) committed KeyInaccessible at step {} for a record wrapped \
                     by {other} (not a customer key)",
                    h.ops[o].what, c.step
                ));
            }
        }
    }

    // 4. After a check returned Active, only a failure observed after it began re-locks.
    for (i, op) in h.ops.iter().enumerate() {
        let Some(end) = op.end else { continue };
        if skipped(4)
            || !op.probe
            || !matches!(
                op.outcome,
                Some(Outcome::Ok {
                    state: Some(StateKind::Active),
                    ..
                })
            )
        {
            continue;
        }
        for (k, c) in commits.iter().enumerate() {
            if c.state != KI || (k > 0 && commits[k - 1].state == KI) {
                continue;
            }
            let episode_end = commits[k + 1..]
                .iter()
                .find(|d| d.state != KI)
                .map(|d| d.step);
            if episode_end.is_some_and(|x| x < end) {
                continue;
            }
            let failure = c.op.and_then(|o| last_failure(h, o, c.step));
            if failure.is_none_or(|f| f <= op.start) {
                return Some(format!(
                    "inv4: #{i} ({} on M{}) returned Active (steps {}..{end}), yet the store \
                     holds KeyInaccessible committed at step {} by #{} ({}) from a failure \
                     observed at step {} — before the check began",
                    op.what,
                    op.mgr.unwrap_or(9),
                    op.start,
                    c.step,
                    c.op.map_or("?".into(), |o| o.to_string()),
                    c.op.map_or("", |o| h.ops[o].what.as_str()),
                    failure.map_or("(none)".into(), |f| f.to_string()),
                ));
            }
        }
    }

    // 5. A restore (KeyInaccessible -> Active) rests on a successful unwrap observed after the
    //    failure that locked the account: a probe or re-key that began before a revocation
    //    never undoes it.
    for (k, c) in commits.iter().enumerate() {
        if skipped(5) || k == 0 || c.state != StateKind::Active || commits[k - 1].state != KI {
            continue;
        }
        let Some(entry) = (0..k).rev().find(|&j| j == 0 || commits[j - 1].state != KI) else {
            continue;
        };
        let locked = &commits[entry];
        let Some(f) = locked.op.and_then(|o| last_failure(h, o, locked.step)) else {
            continue;
        };
        let proof = c.op.and_then(|o| {
            h.entries
                .iter()
                .filter(|e| e.step > f && e.step < c.step)
                .find(|e| {
                    matches!(&e.event, Event::Provider {
                        op: Some(po),
                        call: "unwrap_key",
                        result: Ok(()),
                        ..
                    } if *po == o)
                })
                .map(|e| e.step)
        });
        if proof.is_none() {
            return Some(format!(
                "inv5: #{} ({}) restored Active at step {} without a successful unwrap after                  the failure (step {f}) that locked the account (committed at step {} by #{})",
                c.op.map_or("?".into(), |o| o.to_string()),
                c.op.map_or("", |o| h.ops[o].what.as_str()),
                c.step,
                locked.step,
                locked.op.map_or("?".into(), |o| o.to_string()),
            ));
        }
    }
    None
}

/// The last definitive failure op `o` observed before `step`.
fn last_failure(h: &History, o: usize, step: u64) -> Option<u64> {
    h.entries
        .iter()
        .filter(|e| e.step < step)
        .filter_map(|e| match &e.event {
            Event::Provider {
                op: Some(po),
                result: Err(kind),
                ..
            } if *po == o && kind.is_definitive() => Some(e.step),
            _ => None,
        })
        .max()
}

// ---------------------------------------------------------------------------------------------
// Running schedules

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    schedules: u64,
    ops: u64,
    data_ok: u64,
    data_denied: u64,
    ki_commits: u64,
    restores: u64,
    stale_conflicts: u64,
}

impl Stats {
    fn add(&mut self, o: &Stats) {
        self.schedules += o.schedules;
        self.ops += o.ops;
        self.data_ok += o.data_ok;
        self.data_denied += o.data_denied;
        self.ki_commits += o.ki_commits;
        self.restores += o.restores;
        self.stale_conflicts += o.stale_conflicts;
    }
}

struct Run {
    plan: Plan,
    history: History,
}

impl Run {
    fn stats(&self) -> Stats {
        let h = &self.history;
        let mut s = Stats {
            schedules: 1,
            ops: h.ops.len() as u64,
            ..Stats::default()
        };
        for op in &h.ops {
            if op.data {
                match &op.outcome {
                    Some(Outcome::Ok { .. }) => s.data_ok += 1,
                    Some(Outcome::Err(e)) if e.starts_with("KeyInaccessible") => s.data_denied += 1,
                    _ => {}
                }
            }
            if let Some(Outcome::Err(e)) = &op.outcome
                && e.starts_with("Conflict")
            {
                s.stale_conflicts += 1;
            }
        }
        let mut last = StateKind::Active;
        for e in &h.entries {
            if let Event::Commit { state, .. } = &e.event {
                if *state == StateKind::KeyInaccessible && last != *state {
                    s.ki_commits += 1;
                }
                if *state == StateKind::Active && last == StateKind::KeyInaccessible {
                    s.restores += 1;
                }
                last = *state;
            }
        }
        s
    }

    fn trace(&self) -> String {
        let h = &self.history;
        let p = &self.plan;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "seed {} (BYOK_INTERLEAVE_SEED={}): {} hints, record_max_age {}, up to {} yields \
             per point, {}% transient faults",
            p.seed,
            p.seed,
            if p.hints { "with" } else { "WITHOUT" },
            if p.hints { "2s" } else { "0" },
            p.max_yields,
            p.transient_pct
        );
        for (t, ops) in p.tasks.iter().enumerate() {
            let _ = writeln!(out, "  task {t}: {ops:?}");
        }
        for e in &h.entries {
            let line = match &e.event {
                Event::OpStart { op } => {
                    let o = &h.ops[*op];
                    format!(
                        "T{} #{op} {}{} ...",
                        o.task,
                        o.what,
                        o.mgr.map_or(String::new(), |m| format!(" on M{m}"))
                    )
                }
                Event::OpEnd { op } => {
                    let o = &h.ops[*op];
                    let r = match &o.outcome {
                        Some(Outcome::Ok { state, detail }) => format!(
                            "Ok{}{}",
                            state.map_or(String::new(), |s| format!(" {s}")),
                            if detail.is_empty() {
                                String::new()
                            } else {
                                format!(" ({detail})")
                            }
                        ),
                        Some(Outcome::Err(e)) => format!("Err {e}"),
                        None => "?".into(),
                    };
                    format!("T{} #{op} {} -> {r}", o.task, o.what)
                }
                Event::Commit {
                    mgr,
                    op,
                    revision,
                    epoch,
                    state,
                    wrap,
                } => format!(
                    "    M{mgr} #{} STORE COMMIT rev {revision} epoch {epoch}: {state}, {wrap}",
                    op.map_or("-".into(), |o| o.to_string())
                ),
                Event::StoreRead { mgr, op, record } => format!(
                    "    M{mgr} #{} store.get -> {}",
                    op.map_or("-".into(), |o| o.to_string()),
                    record
                        .as_ref()
                        .map_or("none".into(), |(r, s, w)| format!("rev {r}: {s}, {w}"))
                ),
                Event::Provider {
                    mgr,
                    op,
                    call,
                    version,
                    result,
                } => format!(
                    "    M{mgr} #{} vault.{call}({}) -> {}",
                    op.map_or("-".into(), |o| o.to_string()),
                    version
                        .as_deref()
                        .map_or("latest".into(), |v| format!("v{v}")),
                    match result {
                        Ok(()) => "ok".to_string(),
                        Err(k) => format!("{k:?}"),
                    }
                ),
                Event::Vault { op, truth } => format!(
                    "    #{} VAULT NOW {truth}",
                    op.map_or("-".into(), |o| o.to_string())
                ),
                Event::Note(n) => format!("!!! {n}"),
            };
            let _ = writeln!(out, "{:5} {line}", e.step);
        }
        out
    }
}

/// Runs the schedule of `seed` to its end.
fn run_schedule(seed: u64) -> Run {
    let plan = plan(seed);
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let history = rt.block_on(async {
        let w = Arc::new(world(&plan).await);
        let mut handles = Vec::new();
        for (t, ops) in plan.tasks.iter().enumerate() {
            let (w, ops) = (w.clone(), ops.clone());
            handles.push(tokio::spawn(async move {
                for p in ops {
                    w.sched.pause().await;
                    let a = w.resolve(p);
                    w.run(t, a).await;
                }
            }));
        }
        for (t, h) in handles.into_iter().enumerate() {
            if let Err(e) = h.await {
                let msg = e
                    .try_into_panic()
                    .ok()
                    .and_then(|p| {
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    })
                    .unwrap_or_else(|| "cancelled".into());
                w.sched.violation(format!("task {t} panicked: {msg}"));
            }
        }
        w.check_now();
        if w.sched.hist().violations.is_empty() {
            w.finish().await;
        }
        std::mem::take(&mut *w.sched.hist())
    });
    Run { plan, history }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => v.parse().ok(),
    }
}

enum Msg {
    Start(usize, u64),
    Done(usize, Result<Stats, Failure>),
    Exit,
}

struct Failure {
    seed: u64,
    violation: String,
    report: String,
}

impl Failure {
    /// "inv1", "inv4", "task", …: the kind of violation, for the keep-going summary.
    fn kind(&self) -> String {
        self.violation
            .split([':', ' '])
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Runs `seeds` on two threads (one runtime per schedule); returns the totals, or the report
/// of the first failing schedule (with `keep_going`: a summary of every failing one).
fn run_many(seeds: Vec<u64>, keep_going: bool) -> Result<Stats, String> {
    const THREADS: usize = 2;
    let seeds = Arc::new(seeds);
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    for t in 0..THREADS {
        let (seeds, stop, tx) = (seeds.clone(), stop.clone(), tx.clone());
        std::thread::spawn(move || {
            for &seed in seeds.iter().skip(t).step_by(THREADS) {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let _ = tx.send(Msg::Start(t, seed));
                let r = match catch_unwind(AssertUnwindSafe(|| run_schedule(seed))) {
                    Ok(run) if run.history.violations.is_empty() => Ok(run.stats()),
                    Ok(run) => Err(Failure {
                        seed,
                        violation: run.history.violations[0].clone(),
                        report: run.trace(),
                    }),
                    Err(p) => Err(Failure {
                        seed,
                        violation: format!(
                            "panic: the schedule panicked outside its tasks: {}",
                            p.downcast_ref::<String>()
                                .cloned()
                                .or_else(|| p.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                                .unwrap_or_default()
                        ),
                        report: String::new(),
                    }),
                };
                let _ = tx.send(Msg::Done(t, r));
            }
            let _ = tx.send(Msg::Exit);
        });
    }
    drop(tx);
    let mut running: [Option<u64>; THREADS] = [None; THREADS];
    let mut total = Stats::default();
    let mut failures: Vec<Failure> = Vec::new();
    let mut exited = 0;
    while exited < THREADS {
        match rx.recv_timeout(HANG) {
            Ok(Msg::Start(t, seed)) => running[t] = Some(seed),
            Ok(Msg::Done(t, r)) => {
                running[t] = None;
                match r {
                    Ok(s) => total.add(&s),
                    Err(f) => {
                        if !keep_going {
                            stop.store(true, Ordering::SeqCst);
                        }
                        failures.push(f);
                    }
                }
            }
            Ok(Msg::Exit) => exited += 1,
            Err(_) => {
                return Err(format!(
                    "no progress for {HANG:?}: schedule(s) {:?} hung (a lost wake-up or a \
                     deadlock; replay with BYOK_INTERLEAVE_SEED)",
                    running.iter().flatten().collect::<Vec<_>>()
                ));
            }
        }
    }
    if failures.is_empty() {
        return Ok(total);
    }
    failures.sort_by_key(|f| f.seed);
    let first = &failures[0];
    let mut out = format!("seed {}: {}\n{}", first.seed, first.violation, first.report);
    if keep_going {
        let mut kinds: std::collections::BTreeMap<String, Vec<u64>> = Default::default();
        for f in &failures {
            kinds.entry(f.kind()).or_default().push(f.seed);
        }
        let _ = writeln!(
            out,
            "{} of {} schedules failed:",
            failures.len(),
            total.schedules + failures.len() as u64
        );
        for (k, seeds) in kinds {
            let _ = writeln!(
                out,
                "  {k}: {} schedules, e.g. seeds {:?}",
                seeds.len(),
                &seeds[..seeds.len().min(5)]
            );
        }
    }
    Err(out)
}

#[test]
fn seeded_interleavings_keep_the_revocation_invariants() {
    if let Some(seed) = env_u64("BYOK_INTERLEAVE_SEED") {
        let run = run_schedule(seed);
        println!("{}", run.trace());
        if let Some(v) = run.history.violations.first() {
            panic!("seed {seed}: {v}");
        }
        return;
    }
    let n = env_u64("BYOK_INTERLEAVE_SCHEDULES").unwrap_or(DEFAULT_SCHEDULES);
    let base = env_u64("BYOK_INTERLEAVE_BASE").unwrap_or(DEFAULT_BASE);
    let started = Instant::now();
    let seeds: Vec<u64> = (0..n).map(|i| base.wrapping_add(i)).collect();
    let keep_going = env_u64("BYOK_INTERLEAVE_KEEP_GOING").is_some_and(|v| v != 0);
    match run_many(seeds, keep_going) {
        Ok(s) => {
            println!(
                "{} schedules in {:.1?}: {} operations, {} data ops succeeded, {} refused \
                 (KeyInaccessible), {} revocations persisted, {} restores persisted, {} \
                 conflicts",
                s.schedules,
                started.elapsed(),
                s.ops,
                s.data_ok,
                s.data_denied,
                s.ki_commits,
                s.restores,
                s.stale_conflicts
            );
            // The schedules must exercise what the invariants are about.
            assert_eq!(s.schedules, n);
            if n >= 500 {
                assert!(
                    s.ki_commits > n / 10,
                    "too few revocations persisted: {s:?}"
                );
                assert!(s.restores > n / 20, "too few restores persisted: {s:?}");
                assert!(s.data_denied > n / 10, "too few refused data ops: {s:?}");
            }
        }
        Err(report) => {
            eprintln!("{report}");
            panic!(
                "an interleaving broke an invariant (report above; the first line names the \
                 seed to replay with BYOK_INTERLEAVE_SEED)"
            );
        }
    }
}

#[test]
fn a_seed_replays_the_same_schedule() {
    for i in 0..10 {
        let seed = DEFAULT_BASE.wrapping_add(1_000_000 + i);
        let (a, b) = (run_schedule(seed), run_schedule(seed));
        assert_eq!(
            a.trace(),
            b.trace(),
            "seed {seed} did not replay identically"
        );
    }
}
