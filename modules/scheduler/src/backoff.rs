//! The backoff between whole attempts of something that must eventually come back: a degraded
//! tenant's preflight, a service that stopped. Unlike a [`RetryRule`](crate::RetryRule) it never
//! gives up, so it must never fire at once: "equal jitter" keeps every delay in the upper half
//! of its ceiling, which makes successive delays grow while still spreading many tenants out.

use std::time::Duration;

/// Doubling delays from `base` up to `max`, with equal jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first delay.
    pub base: Duration,
    /// The largest ceiling.
    pub max: Duration,
}

impl Backoff {
    /// The ceiling before attempt number `failures + 1`: `base * 2^(failures-1)`, capped at `max`.
    pub fn ceiling(&self, failures: u32) -> Duration {
        let factor = 1u32
            .checked_shl(failures.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// A delay in `[ceiling / 2, ceiling]`: after `n` failures in a row, never shorter than half
    /// the ceiling, so delay `n + 1` is never shorter than delay `n` (until the cap).
    pub fn delay(&self, failures: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.ceiling(failures).as_millis() as u64;
        let half = ceiling / 2;
        Duration::from_millis(half + rng.u64(0..=ceiling - half))
    }
}

/// How a service is restarted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RestartPolicy {
    pub backoff: Backoff,
    /// A run that lasted at least this long counts as healthy: the next failure starts the
    /// backoff from `base` again instead of where the last streak left it.
    pub healthy_after: Duration,
}

impl Default for RestartPolicy {
    /// 1 s doubling to 5 min; a run of 5 minutes resets the streak.
    fn default() -> Self {
        RestartPolicy {
            backoff: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(300),
            },
            healthy_after: Duration::from_secs(300),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_within_the_upper_half_and_cap() {
        let backoff = Backoff {
            base: Duration::from_secs(2),
            max: Duration::from_secs(10),
        };
        let mut rng = fastrand::Rng::with_seed(3);
        for (failures, low, high) in [(1, 1, 2), (2, 2, 4), (3, 4, 8), (4, 5, 10), (40, 5, 10)] {
            for _ in 0..200 {
                let d = backoff.delay(failures, &mut rng);
                assert!(
                    d >= Duration::from_secs(low) && d <= Duration::from_secs(high),
                    "{failures}: {d:?}"
                );
            }
        }
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(10));
        // Zero failures is treated as one: never an immediate retry.
        let d = backoff.delay(0, &mut rng);
        assert!(
            d >= Duration::from_secs(1) && d <= Duration::from_secs(2),
            "{d:?}"
        );
    }
}
