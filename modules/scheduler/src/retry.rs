//! Retry rules: one ordered list per unit, first match wins, no match means permanent.
//!
//! This is deliberately a single layer. The predecessor nested retry options and a catch-all
//! swallowed rate-limit hints (research/autosolve.md, bug 1); here a unit's error is classified
//! exactly once, by walking [`RetryPolicy::rules`] in order.

use std::time::Duration;

use crate::error::{ErrorKind, UnitError};

/// One transient class of errors and how to back off from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryRule {
    /// Shown in logs and metrics, for example `"network"`.
    pub name: &'static str,
    /// The kinds this rule catches.
    pub kinds: Vec<ErrorKind>,
    /// First backoff ceiling; doubles per attempt.
    pub base: Duration,
    /// Largest backoff ceiling.
    pub max: Duration,
    /// Retries allowed after the first failure (consecutive failures of this rule).
    pub attempts: u32,
}

/// What the classifier decided for one error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict<'a> {
    /// Retry under this rule.
    Transient(&'a RetryRule),
    /// Do not retry.
    Permanent,
}

/// An ordered list of [`RetryRule`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    rules: Vec<RetryRule>,
}

impl RetryPolicy {
    pub fn new(rules: Vec<RetryRule>) -> Self {
        RetryPolicy { rules }
    }

    /// No retries at all: every error is permanent.
    pub fn never() -> Self {
        RetryPolicy { rules: Vec::new() }
    }

    /// The defaults for talking to remote APIs:
    ///
    /// | rule | kinds | base | max | attempts |
    /// |---|---|---|---|---|
    /// | rate-limit | rate limited | 1 s | 15 min | 8 |
    /// | network | network, timeout | 500 ms | 30 s | 5 |
    /// | server | 5xx | 1 s | 60 s | 5 |
    ///
    /// Bad credentials, missing permissions, not found, validation errors, panics and internal
    /// errors match no rule and are permanent. A rate limit nearly always carries a wait hint, which
    /// replaces the backoff; the base and max only apply when a server forgets to send one.
    pub fn remote_api() -> Self {
        RetryPolicy::new(vec![
            RetryRule {
                name: "rate-limit",
                kinds: vec![ErrorKind::RateLimited],
                base: Duration::from_secs(1),
                max: Duration::from_secs(15 * 60),
                attempts: 8,
            },
            RetryRule {
                name: "network",
                kinds: vec![ErrorKind::Network, ErrorKind::Timeout],
                base: Duration::from_millis(500),
                max: Duration::from_secs(30),
                attempts: 5,
            },
            RetryRule {
                name: "server",
                kinds: vec![ErrorKind::Server],
                base: Duration::from_secs(1),
                max: Duration::from_secs(60),
                attempts: 5,
            },
        ])
    }

    pub fn rules(&self) -> &[RetryRule] {
        &self.rules
    }

    /// Walks the rules in order; the first rule naming the error's kind wins.
    pub fn classify(&self, err: &UnitError) -> Verdict<'_> {
        self.rules
            .iter()
            .find(|rule| rule.kinds.contains(&err.kind()))
            .map_or(Verdict::Permanent, Verdict::Transient)
    }
}

impl RetryRule {
    /// The exponential ceiling for retry number `attempt` (1-based): `base * 2^(attempt-1)`,
    /// capped at `max`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max)
    }

    /// "Full jitter": a uniformly random delay between zero and the ceiling, so that many units
    /// failing together do not retry together.
    pub fn backoff(&self, attempt: u32, rng: &mut fastrand::Rng) -> Duration {
        let ceiling = self.ceiling(attempt).as_millis() as u64;
        Duration::from_millis(rng.u64(0..=ceiling))
    }
}

/// The longest a server's wait hint may hold a unit back. A hint comes from outside (a wrong
/// clock, a proxy, a hostile server): `Retry-After: 99999999` must not park a unit for years.
pub const MAX_WAIT_HINT: Duration = Duration::from_secs(60 * 60);

/// The delay before the next attempt: the server's wait hint when it sent one (at most
/// [`MAX_WAIT_HINT`], logged when capped), else the backoff.
pub fn delay_for(
    rule: &RetryRule,
    err: &UnitError,
    attempt: u32,
    rng: &mut fastrand::Rng,
) -> Duration {
    match err.wait_hint() {
        Some(wait) if wait > MAX_WAIT_HINT => {
            tracing::warn!(
                asked = ?wait,
                capped_to = ?MAX_WAIT_HINT,
                error = %err,
                "a server asked for a wait longer than an hour; retrying in an hour"
            );
            MAX_WAIT_HINT
        }
        Some(wait) => wait,
        None => rule.backoff(attempt, rng),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_matching_rule_wins_and_unmatched_is_permanent() {
        let policy = RetryPolicy::new(vec![
            RetryRule {
                name: "first",
                kinds: vec![ErrorKind::Timeout],
                base: Duration::from_secs(1),
                max: Duration::from_secs(2),
                attempts: 1,
            },
            RetryRule {
                name: "second",
                kinds: vec![ErrorKind::Timeout, ErrorKind::Network],
                base: Duration::from_secs(1),
                max: Duration::from_secs(2),
                attempts: 1,
            },
        ]);
        let timeout = UnitError::new(ErrorKind::Timeout, "t");
        let network = UnitError::new(ErrorKind::Network, "n");
        let missing = UnitError::new(ErrorKind::NotFound, "m");
        assert!(matches!(policy.classify(&timeout), Verdict::Transient(r) if r.name == "first"));
        assert!(matches!(policy.classify(&network), Verdict::Transient(r) if r.name == "second"));
        assert_eq!(policy.classify(&missing), Verdict::Permanent);
    }

    #[test]
    fn remote_api_policy_matches_the_documented_classes() {
        let policy = RetryPolicy::remote_api();
        let transient = [
            ErrorKind::Network,
            ErrorKind::Timeout,
            ErrorKind::Server,
            ErrorKind::RateLimited,
        ];
        let permanent = [
            ErrorKind::BadCredentials,
            ErrorKind::Forbidden,
            ErrorKind::NotFound,
            ErrorKind::Validation,
            ErrorKind::Panicked,
            ErrorKind::Internal,
        ];
        for kind in transient {
            let err = UnitError::new(kind, "x");
            assert!(
                matches!(policy.classify(&err), Verdict::Transient(_)),
                "{kind:?}"
            );
        }
        for kind in permanent {
            let err = UnitError::new(kind, "x");
            assert_eq!(policy.classify(&err), Verdict::Permanent, "{kind:?}");
        }
    }

    #[test]
    fn ceiling_doubles_then_caps_without_overflow() {
        let rule = RetryRule {
            name: "r",
            kinds: vec![],
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            attempts: 100,
        };
        assert_eq!(rule.ceiling(1), Duration::from_millis(100));
        assert_eq!(rule.ceiling(2), Duration::from_millis(200));
        assert_eq!(rule.ceiling(4), Duration::from_millis(800));
        assert_eq!(rule.ceiling(5), Duration::from_secs(1));
        assert_eq!(rule.ceiling(64), Duration::from_secs(1));
        assert_eq!(rule.ceiling(u32::MAX), Duration::from_secs(1));
    }

    #[test]
    fn full_jitter_stays_within_the_ceiling_and_spreads() {
        let rule = RetryRule {
            name: "r",
            kinds: vec![],
            base: Duration::from_millis(1000),
            max: Duration::from_secs(60),
            attempts: 5,
        };
        let mut rng = fastrand::Rng::with_seed(7);
        let delays: Vec<Duration> = (0..1000).map(|_| rule.backoff(3, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(4)));
        let below_half = delays
            .iter()
            .filter(|d| **d < Duration::from_secs(2))
            .count();
        // Uniform on [0, 4 s]: about half fall below 2 s.
        assert!((400..600).contains(&below_half), "{below_half}");
    }

    #[test]
    fn wait_hint_overrides_backoff() {
        let policy = RetryPolicy::remote_api();
        let rule = &policy.rules()[0];
        let mut rng = fastrand::Rng::with_seed(1);
        let err = UnitError::from_http_status(403, Some(Duration::from_secs(42)), "secondary");
        assert_eq!(delay_for(rule, &err, 1, &mut rng), Duration::from_secs(42));
        let plain = UnitError::new(ErrorKind::RateLimited, "no hint");
        assert!(delay_for(rule, &plain, 1, &mut rng) <= Duration::from_secs(1));
    }

    #[test]
    fn wait_hints_are_capped_at_an_hour() {
        let policy = RetryPolicy::remote_api();
        let rule = &policy.rules()[0];
        let mut rng = fastrand::Rng::with_seed(1);
        let hour = Duration::from_secs(3600);
        for (asked, want) in [
            (Duration::ZERO, Duration::ZERO),
            (Duration::from_secs(3599), Duration::from_secs(3599)),
            (hour, hour),
            (hour + Duration::from_millis(1), hour),
            (Duration::from_secs(7 * 24 * 3600), hour),
            (Duration::MAX, hour),
        ] {
            let err = UnitError::from_http_status(429, Some(asked), "slow down");
            assert_eq!(delay_for(rule, &err, 1, &mut rng), want, "asked {asked:?}");
        }
    }
}
