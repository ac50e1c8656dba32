//! A small, runtime-agnostic blocking pool: PKCS#11 calls run on these threads, never on the
//! caller's async executor. The result comes back through a one-shot future that any executor
//! can poll (no runtime is embedded, nothing calls `block_on`).

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll, Waker};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

use crate::error::{ProviderError, ProviderErrorKind as K};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// A fixed set of worker threads fed by one queue. Dropping the pool closes the queue; the
/// workers finish the jobs already queued and exit.
pub(super) struct BlockingPool {
    tx: Mutex<Sender<Job>>,
    threads: usize,
}

impl BlockingPool {
    /// Starts `threads` workers (at least one).
    pub(super) fn new(threads: usize) -> Result<Self, ProviderError> {
        let threads = threads.max(1);
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads {
            let rx = Arc::clone(&rx);
            std::thread::Builder::new()
                .name(format!("byok-pkcs11-{i}"))
                .spawn(move || worker(&rx))
                .map_err(|e| {
                    ProviderError::new(
                        K::Unavailable,
                        format!("cannot start a PKCS#11 worker: {e}"),
                    )
                })?;
        }
        Ok(Self {
            tx: Mutex::new(tx),
            threads,
        })
    }

    /// Number of worker threads.
    pub(super) fn threads(&self) -> usize {
        self.threads
    }

    /// Runs `f` on a worker; the returned future resolves to its result. If the job cannot
    /// run or panics, the future resolves to an `Unavailable` error instead of hanging.
    pub(super) fn run<T, F>(&self, f: F) -> Pending<T>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, ProviderError> + Send + 'static,
    {
        let slot = Arc::new(Mutex::new(Slot {
            value: None,
            waker: None,
        }));
        let completer = Completer(Some(Arc::clone(&slot)));
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
struct Completer<T>(Option<Arc<Mutex<Slot<T>>>>);

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
                    "the PKCS#11 worker did not finish the call",
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
pub(super) struct Pending<T>(Arc<Mutex<Slot<T>>>);

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
        let pool = BlockingPool::new(2).unwrap();
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
}
