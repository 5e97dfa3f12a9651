//! How long to wait before the next attempt: exponential backoff with full jitter, unless the
//! server said (`Retry-After`, in seconds or as an HTTP date), which wins.

use std::time::Duration;

use chrono::{DateTime, Utc};

/// The backoff of the retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first retry's wait; each retry doubles it.
    pub base: Duration,
    /// The ceiling never grows past this.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(20),
        }
    }
}

impl Backoff {
    /// The wait before retry number `retry` (0 for the first): uniformly random up to
    /// `min(cap, base * 2^retry)` ("full jitter", so that clients that failed together do not
    /// retry together).
    pub fn delay(&self, retry: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32.checked_shl(retry.min(31)).unwrap_or(u32::MAX))
            .min(self.cap);
        let millis = ceiling.as_millis().min(u64::MAX as u128) as u64;
        Duration::from_millis(fastrand::u64(0..=millis))
    }
}

/// A `Retry-After` value: delay-seconds, or an HTTP date (a past date is no wait). `None` when it
/// is neither.
pub fn parse_retry_after(value: &str, now: DateTime<Utc>) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    // IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT") is RFC 2822 with the zone "GMT".
    let at = DateTime::parse_from_rfc2822(value).ok()?;
    Some(
        (at.with_timezone(&Utc) - now)
            .to_std()
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = DateTime::parse_from_rfc3339("1994-11-06T08:49:30Z")
            .unwrap()
            .with_timezone(&Utc);
        for (value, expected) in [
            ("3", Some(Duration::from_secs(3))),
            (" 0 ", Some(Duration::ZERO)),
            (
                "Sun, 06 Nov 1994 08:49:37 GMT",
                Some(Duration::from_secs(7)),
            ),
            ("Sun, 06 Nov 1994 08:40:00 GMT", Some(Duration::ZERO)),
            ("-1", None),
            ("1.5", None),
            ("soon", None),
            ("", None),
        ] {
            assert_eq!(parse_retry_after(value, now), expected, "{value:?}");
        }
    }

    #[test]
    fn backoff_grows_to_its_cap_with_full_jitter() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
        };
        for retry in [0u32, 1, 2, 3, 10, 40, u32::MAX] {
            let ceiling =
                Duration::from_millis(100 * 2u64.saturating_pow(retry).min(10)).min(b.cap);
            let waits: Vec<Duration> = (0..200).map(|_| b.delay(retry)).collect();
            assert!(waits.iter().all(|w| *w <= ceiling), "retry {retry}");
            // Jitter: not all the same.
            assert!(waits.iter().any(|w| *w != waits[0]), "retry {retry}");
        }
    }
}
