//! Bounded retries for the networked providers.

use core::future::Future;
use std::time::Duration;

use crate::error::ProviderError;

/// Bounded retries with exponential backoff and jitter, applied only to transient failures
/// (timeouts, refused connections, 429, 5xx other than a failed decryption), shared by the
/// networked providers (Vault/OpenBao Transit, AWS KMS, Azure Key Vault).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 = no retry).
    pub max_retries: u32,
    /// Delay before the first retry; doubled for every further one.
    pub initial_backoff: Duration,
    /// Upper bound of one delay (also the longest `Retry-After` honoured).
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// `max_retries` retries, starting at `initial_backoff` and doubling up to `max_backoff`.
    pub fn new(max_retries: u32, initial_backoff: Duration, max_backoff: Duration) -> Self {
        Self {
            max_retries,
            initial_backoff,
            max_backoff,
        }
    }

    /// No retry at all: every failure is returned as it happens.
    pub fn none() -> Self {
        Self::new(0, Duration::ZERO, Duration::ZERO)
    }

    /// Delay before retry number `n` (0-based): `initial · 2^n`, capped, with ±25 % jitter.
    pub(crate) fn backoff(&self, n: u32) -> Duration {
        let base = self
            .initial_backoff
            .saturating_mul(1u32.checked_shl(n.min(16)).unwrap_or(u32::MAX))
            .min(self.max_backoff);
        let mut r = [0u8; 1];
        crate::crypto::fill_random(&mut r);
        // 75 % .. 125 % of the base delay, still capped.
        let pct = 75 + u32::from(r[0]) * 50 / 255;
        (base * pct / 100).min(self.max_backoff)
    }
}

impl RetryPolicy {
    /// Runs `once` until it succeeds, fails with a kind that is not transient, or
    /// `max_retries + 1` attempts (1 when `retry` is off) have failed; waits the server's
    /// `Retry-After` (the second element of a failure) or the backoff between attempts, and
    /// stops at once when the server asks for more than `max_backoff`. A failure after retries says how many attempts were made and
    /// keeps its cause.
    pub(crate) async fn run<T, Fut>(
        &self,
        retry: bool,
        mut once: impl FnMut() -> Fut,
    ) -> Result<T, ProviderError>
    where
        Fut: Future<Output = Result<T, (ProviderError, Option<Duration>)>>,
    {
        let attempts = if retry {
            self.max_retries.saturating_add(1)
        } else {
            1
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match once().await {
                Ok(a) => return Ok(a),
                Err((e, retry_after)) => {
                    // A server that asks for a longer wait than `max_backoff` gets no early
                    // retry: the failure (transient) goes to the caller at once.
                    let too_long = retry_after.is_some_and(|d| d > self.max_backoff);
                    if !e.is_transient() || attempt >= attempts || too_long {
                        return Err(if attempt > 1 {
                            e.map_message(|m| format!("{m} (after {attempt} attempts)"))
                        } else {
                            e
                        });
                    }
                    let wait = retry_after.unwrap_or_else(|| self.backoff(attempt - 1));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}

impl Default for RetryPolicy {
    /// Two retries, 100 ms then 200 ms (±25 %), never more than 2 s per delay.
    fn default() -> Self {
        Self::new(2, Duration::from_millis(100), Duration::from_secs(2))
    }
}
