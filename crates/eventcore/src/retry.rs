//! Retry timing for conflicts and transient faults: the one retry layer.

use std::{future::Future, time::Duration};

use rand::Rng;

use crate::Error;

/// How often and how patiently failures are retried. It is the only retry
/// layer: stores do not retry transient faults themselves (a store only
/// replaces a pooled connection it finds dead), so attempts never multiply.
///
/// The [`CommandExecutor`](crate::CommandExecutor) applies it to commands:
/// a version conflict re-reads the streams and re-runs the command; a
/// transient store error (lost connection, pool timeout, deadlock) re-reads,
/// or re-sends the same append, which is safe because appends are
/// idempotent by event id. Code that calls a store directly gets the same
/// policy from [`RetryPolicy::retry`].
///
/// Between attempts it sleeps a random delay in
/// `[0, min(max_delay, base_delay * 2^(attempt-1))]` ("full jitter"), so
/// competing writers spread out instead of colliding again in lock step.
/// It stops after `max_attempts`, or sooner when the next attempt would
/// start after `max_elapsed` from the first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included. Default 10.
    pub max_attempts: u32,
    /// Upper bound of the first delay. Default 2 ms: a conflict is usually
    /// resolved by the time the competing commit is visible.
    pub base_delay: Duration,
    /// Cap on any delay. Default 1 s, long enough to ride out a failover.
    pub max_delay: Duration,
    /// Total time budget: no attempt starts later than this after the
    /// first. Default 30 s. (An attempt itself is bounded by the store's
    /// own timeouts, such as the PostgreSQL store's connect and query
    /// timeouts.)
    pub max_elapsed: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::new()
    }
}

impl RetryPolicy {
    /// The defaults documented on each field.
    pub fn new() -> Self {
        Self {
            max_attempts: 10,
            base_delay: Duration::from_millis(2),
            max_delay: Duration::from_secs(1),
            max_elapsed: Duration::from_secs(30),
        }
    }

    /// No retries at all: the first failure is returned.
    pub fn none() -> Self {
        Self {
            max_attempts: 1,
            ..Self::new()
        }
    }

    /// Sets the number of attempts (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Sets the base delay.
    pub fn base_delay(mut self, d: Duration) -> Self {
        self.base_delay = d;
        self
    }

    /// Sets the delay cap.
    pub fn max_delay(mut self, d: Duration) -> Self {
        self.max_delay = d;
        self
    }

    /// Sets the total time budget.
    pub fn max_elapsed(mut self, d: Duration) -> Self {
        self.max_elapsed = d;
        self
    }

    /// The delay to sleep before attempt `attempt + 1`, or `None` when the
    /// policy is spent: `attempt` reached `max_attempts`, or the attempt
    /// would start more than `max_elapsed` after the first, which started
    /// `elapsed` ago.
    pub fn next_delay(&self, attempt: u32, elapsed: Duration) -> Option<Duration> {
        if attempt >= self.max_attempts {
            return None;
        }
        let delay = self.delay_after(attempt);
        (elapsed.saturating_add(delay) <= self.max_elapsed).then_some(delay)
    }

    /// Runs `operation` until it succeeds, fails with an error that is not
    /// [transient](Error::is_transient), or the policy is spent; returns
    /// the last result. The way to give direct store calls the executor's
    /// patience:
    ///
    /// ```
    /// use eventcore::{EventStore, InMemoryEventStore, RetryPolicy, StreamId};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), eventcore::Error> {
    /// let store = InMemoryEventStore::new();
    /// let stream = StreamId::new("account-1")?;
    /// let version = RetryPolicy::default()
    ///     .retry(|| store.stream_version(&stream))
    ///     .await?;
    /// assert_eq!(version.get(), 0);
    /// # Ok(()) }
    /// ```
    ///
    /// Only retry writes this way when a re-send is safe: an append re-sent
    /// with the same event ids is.
    pub async fn retry<T, F, Fut>(&self, mut operation: F) -> Result<T, Error>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Error>>,
    {
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match operation().await {
                Err(e) if e.is_transient() => match self.next_delay(attempt, started.elapsed()) {
                    Some(delay) => {
                        tracing::debug!(attempt, error = %e, "transient failure; retrying");
                        tokio::time::sleep(delay).await;
                    }
                    None => return Err(e),
                },
                other => return other,
            }
        }
    }

    /// The delay before attempt `attempt + 1`, after `attempt` failures.
    pub fn delay_after(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(1).min(20);
        let ceiling = self
            .base_delay
            .saturating_mul(1u32 << exp)
            .min(self.max_delay);
        if ceiling.is_zero() {
            return ceiling;
        }
        let nanos = rand::rng().random_range(0..=ceiling.as_nanos() as u64);
        Duration::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_and_stay_capped() {
        let base = Duration::from_millis(10);
        let cap = Duration::from_millis(50);
        let p = RetryPolicy::new().base_delay(base).max_delay(cap);
        // The documented range after `attempt` failures:
        // [0, min(max_delay, base_delay * 2^(attempt-1))].
        let expected_ceilings = [10, 20, 40, 50, 50, 50].map(Duration::from_millis);
        for (attempt, ceiling) in (1..).zip(expected_ceilings) {
            let draws: Vec<Duration> = (0..400).map(|_| p.delay_after(attempt)).collect();
            let (low, high) = (draws.iter().min().unwrap(), draws.iter().max().unwrap());
            assert!(
                *high <= ceiling,
                "attempt {attempt}: {high:?} above {ceiling:?}"
            );
            // Full jitter: 400 uniform draws reach within a fifth of both
            // ends of the range (missing one has odds of 0.8^400).
            assert!(
                *high > ceiling * 4 / 5,
                "attempt {attempt}: ceiling {ceiling:?} not reached ({high:?})"
            );
            assert!(
                *low < ceiling / 5,
                "attempt {attempt}: no draw near 0 ({low:?})"
            );
        }
        // Past the cap for good, however many attempts (the shift saturates).
        for attempt in [30, 1_000, u32::MAX] {
            assert!(p.delay_after(attempt) <= cap);
        }
        assert_eq!(RetryPolicy::none().max_attempts, 1);
    }

    #[test]
    fn the_budget_ends_retries() {
        let p = RetryPolicy::new().max_attempts(3);
        assert!(p.next_delay(1, Duration::ZERO).is_some());
        assert!(p.next_delay(3, Duration::ZERO).is_none(), "attempts spent");
        let spent = Duration::from_secs(31);
        assert!(p.next_delay(1, spent).is_none(), "time spent");
    }

    fn unavailable() -> Error {
        Error::Unavailable {
            operation: "test",
            source: "down".into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_stops_at_the_deadline_and_on_lasting_errors() {
        let p = RetryPolicy::new()
            .max_attempts(1000)
            .base_delay(Duration::from_millis(100))
            .max_delay(Duration::from_millis(100))
            .max_elapsed(Duration::from_secs(2));
        let started = tokio::time::Instant::now();
        let mut calls = 0;
        let result: Result<(), Error> = p
            .retry(|| {
                calls += 1;
                async { Err(unavailable()) }
            })
            .await;
        assert!(matches!(result, Err(Error::Unavailable { .. })));
        assert!(
            started.elapsed() <= Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        assert!(calls > 5 && calls < 1000, "{calls}");

        let mut calls = 0;
        let result: Result<(), Error> = p
            .retry(|| {
                calls += 1;
                async {
                    Err(Error::InvalidAppend {
                        reason: "bad".into(),
                    })
                }
            })
            .await;
        assert!(matches!(result, Err(Error::InvalidAppend { .. })));
        assert_eq!(calls, 1, "a lasting error is not retried");

        let mut calls = 0;
        let result = p
            .retry(|| {
                calls += 1;
                let n = calls;
                async move { if n < 3 { Err(unavailable()) } else { Ok(n) } }
            })
            .await;
        assert_eq!(result.unwrap(), 3);
    }
}
