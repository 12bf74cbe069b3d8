//! Retry timing for conflicts and transient faults.

use std::time::Duration;

use rand::Rng;

/// How often and how patiently the executor retries.
///
/// A version conflict re-reads the streams and re-runs the command; a
/// transient store error (lost connection, pool timeout, deadlock) re-sends
/// the same append, which is safe because appends are idempotent by event id.
/// Between attempts the executor sleeps a random delay in
/// `[0, min(max_delay, base_delay * 2^(attempt-1))]` ("full jitter"), so
/// competing writers spread out instead of colliding again in lock step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included. Default 10.
    pub max_attempts: u32,
    /// Upper bound of the first delay. Default 2 ms: a conflict is usually
    /// resolved by the time the competing commit is visible.
    pub base_delay: Duration,
    /// Cap on any delay. Default 1 s, long enough to ride out a failover.
    pub max_delay: Duration,
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
        let p = RetryPolicy::new()
            .base_delay(Duration::from_millis(10))
            .max_delay(Duration::from_millis(50));
        for _ in 0..200 {
            assert!(p.delay_after(1) <= Duration::from_millis(10));
            assert!(p.delay_after(3) <= Duration::from_millis(40));
            assert!(p.delay_after(30) <= Duration::from_millis(50));
        }
        assert_eq!(RetryPolicy::none().max_attempts, 1);
    }
}
