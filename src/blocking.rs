//! A small, runtime-agnostic blocking pool: work that would stall an async executor — PKCS#11
//! calls, RSA private-key operations and key generation in the software vaults, Argon2id and
//! fsync in the file vault — runs on these threads, never on the caller's task. The result
//! comes back through a one-shot future that any executor can poll (no runtime is embedded,
//! nothing calls `block_on`).
//!
//! The PKCS#11 provider starts a pool of its own (sized by its configuration, one per
//! provider); the software vaults share one crate-wide pool, [`spawn`], started on first use.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};

use crate::error::{ProviderError, ProviderErrorKind as K};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of worker threads fed by one queue. Dropping the pool closes the queue; the
/// workers finish the jobs already queued and exit.
pub(crate) struct BlockingPool {
    tx: Mutex<Sender<Job>>,
    #[cfg_attr(not(feature = "pkcs11"), allow(dead_code))] // reported by the PKCS#11 provider
    threads: usize,
    /// What the workers serve, for thread names and errors (`"PKCS#11"`, `"vault"`).
    what: &'static str,
}

impl BlockingPool {
    /// Starts `threads` workers (at least one) serving `what` (`"PKCS#11"`, `"vault"`: named
    /// in thread names and errors).
    ///
    /// # Errors
    /// `Unavailable` if the OS refuses a thread.
    pub(crate) fn new(what: &'static str, threads: usize) -> Result<Self, ProviderError> {
        let threads = threads.max(1);
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!(
                    "byok-{}-{i}",
                    what.to_ascii_lowercase().replace('#', "")
                ))
                .spawn(move || worker(&rx))
                .map_err(|e| {
                    ProviderError::new(K::Unavailable, format!("cannot start a {what} worker: {e}"))
                })?;
        }
        Ok(Self {
            tx: Mutex::new(tx),
            threads,
            what,
        })
    }

    /// Number of worker threads.
    #[cfg_attr(not(feature = "pkcs11"), allow(dead_code))]
    pub(crate) fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a worker; the returned future resolves to its result. If the job cannot
    /// run or panics, the future resolves to an `Unavailable` error instead of hanging.
    pub(crate) fn run<T, F>(&self, f: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, ProviderError> + Send + 'static,
    {
        let slot = Arc::new(Mutex::new(Slot {
            value: None,
            waker: None,
        }));
        let completer = Completer(Some(Arc::clone(&slot)), self.what);
        let job: Job = Box::new(move || {
            let completer = completer;
            let r = f();
            completer.complete(r);
        });
        let sent = self.tx.lock().unwrap_or_else(|p| p.into_inner()).send(job);
        // A failed send drops the job and with it the completer, which fills the slot.
        drop(sent);
        Pending(slot)
    }
}

fn worker(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let guard = rx.lock().unwrap_or_else(|p| p.into_inner());
            guard.recv()
        };
        match job {
            // A panicking job must not take the worker down; its completer reports the failure.
            Ok(job) => drop(catch_unwind(AssertUnwindSafe(job))),
            Err(_) => return,
        }
    }
}

struct Slot<T> {
    value: Option<Result<T, ProviderError>>,
    waker: Option<Waker>,
}

/// Fills the slot exactly once: with the job's result, or with an error if the job is dropped
/// without running (queue closed) or unwinds.
struct Completer<T>(Option<Arc<Mutex<Slot<T>>>>, &'static str);

impl<T> Completer<T> {
    fn complete(mut self, r: Result<T, ProviderError>) {
        if let Some(slot) = self.0.take() {
            fill(&slot, r);
        }
    }
}

impl<T> Drop for Completer<T> {
    fn drop(&mut self) {
        if let Some(slot) = self.0.take() {
            fill(
                &slot,
                Err(ProviderError::new(
                    K::Unavailable,
                    format!("the {} worker did not finish the call", self.1),
                )),
            );
        }
    }
}

fn fill<T>(slot: &Mutex<Slot<T>>, r: Result<T, ProviderError>) {
    let waker = {
        let mut s = slot.lock().unwrap_or_else(|p| p.into_inner());
        s.value = Some(r);
        s.waker.take()
    };
    if let Some(w) = waker {
        w.wake();
    }
}

/// The result of a job on the pool, as a future.
pub(crate) struct Pending<T>(Arc<Mutex<Slot<T>>>);

impl<T> Pending<T> {
    /// A future that is already resolved to `r`.
    fn ready(r: Result<T, ProviderError>) -> Self {
        Self(Arc::new(Mutex::new(Slot {
            value: Some(r),
            waker: None,
        })))
    }
}

/// Worker threads of the crate-wide pool: the number of CPUs, at least 2 (one long RSA-4096
/// generation then leaves a thread for the rest), at most 8.
fn shared_threads() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get().clamp(2, 8))
}

/// Runs `f` on the crate-wide blocking pool (started on first use); the future resolves to
/// its result, or to an `Unavailable` error if the pool cannot start or the job panics.
pub(crate) fn spawn<T, F>(f: F) -> Pending<T>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, ProviderError> + Send + 'static,
{
    static POOL: OnceLock<Result<BlockingPool, ProviderError>> = OnceLock::new();
    match POOL.get_or_init(|| BlockingPool::new("vault", shared_threads())) {
        Ok(pool) => pool.run(f),
        Err(e) => Pending::ready(Err(e.clone())),
    }
}

impl<T> Future for Pending<T> {
    type Output = Result<T, ProviderError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match s.value.take() {
            Some(v) => Poll::Ready(v),
            None => {
                s.waker = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        struct ThreadWaker(std::thread::Thread);
        impl std::task::Wake for ThreadWaker {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(ThreadWaker(std::thread::current())));
        let mut cx = Context::from_waker(&waker);
        let mut f = core::pin::pin!(f);
        loop {
            if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
                return v;
            }
            std::thread::park();
        }
    }

    #[test]
    fn runs_off_thread_and_reports_panics() {
        let pool = BlockingPool::new("test", 2).unwrap();
        let me = std::thread::current().id();
        let other = block_on(pool.run(move || Ok(std::thread::current().id() != me))).unwrap();
        assert!(other);
        let r: Result<(), _> = block_on(pool.run(|| panic!("boom")));
        assert_eq!(r.unwrap_err().kind(), K::Unavailable);
        // The pool survives a panicking job.
        assert_eq!(block_on(pool.run(|| Ok(7))).unwrap(), 7);
        let all: Vec<_> = (0..32).map(|i| pool.run(move || Ok(i))).collect();
        let sum: i32 = all.into_iter().map(|p| block_on(p).unwrap()).sum();
        assert_eq!(sum, (0..32).sum::<i32>());
    }

    #[test]
    fn the_shared_pool_runs_jobs_off_thread() {
        let me = std::thread::current().id();
        let (id, name) = block_on(spawn(|| {
            let t = std::thread::current();
            Ok((t.id(), t.name().map(str::to_owned)))
        }))
        .unwrap();
        assert_ne!(id, me);
        assert!(name.unwrap().starts_with("byok-vault-"));
        let r: Result<(), _> = block_on(spawn(|| panic!("boom")));
        assert_eq!(r.unwrap_err().kind(), K::Unavailable);
    }
}
