//! Per pull request backoffs: a deploy the host failed, a report GitHub could not take now. Each
//! failure in a row doubles the wait (from `first`, at most `max`); a success forgets it.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Failures in a row and the earliest next attempt, per `(repo, number)`.
#[derive(Debug)]
pub struct Backoffs {
    first: Duration,
    max: Duration,
    failures: Mutex<HashMap<(String, u64), (u32, Instant)>>,
}

impl Backoffs {
    pub fn new(first: Duration, max: Duration) -> Backoffs {
        Backoffs {
            first,
            max,
            failures: Mutex::default(),
        }
    }

    fn failures(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u64), (u32, Instant)>> {
        self.failures.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a failure of `repo#number`; the wait before the next attempt.
    pub fn failed(&self, repo: &str, number: u64) -> Duration {
        self.failed_with_hint(repo, number, None)
    }

    /// [`Backoffs::failed`], waiting at least `hint` (a server's wait hint beats the computed
    /// backoff).
    pub fn failed_with_hint(&self, repo: &str, number: u64, hint: Option<Duration>) -> Duration {
        let mut failures = self.failures();
        let entry = failures
            .entry((repo.to_owned(), number))
            .or_insert((0, Instant::now()));
        entry.0 += 1;
        let wait = self
            .first
            .saturating_mul(1 << entry.0.min(16).saturating_sub(1))
            .min(self.max)
            .max(hint.unwrap_or_default());
        entry.1 = Instant::now() + wait;
        wait
    }

    /// Forgets `repo#number`'s failures.
    pub fn succeeded(&self, repo: &str, number: u64) {
        self.failures().remove(&(repo.to_owned(), number));
    }

    /// Whether `repo#number` is within its wait.
    pub fn waiting(&self, repo: &str, number: u64) -> bool {
        self.failures()
            .get(&(repo.to_owned(), number))
            .is_some_and(|(_, not_before)| Instant::now() < *not_before)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn waits_double_up_to_the_cap_and_a_success_forgets() {
        let b = Backoffs::new(Duration::from_secs(10), Duration::from_secs(600));
        assert!(!b.waiting("o/r", 1));
        let waits: Vec<u64> = (0..8).map(|_| b.failed("o/r", 1).as_secs()).collect();
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 600, 600]);
        assert!(b.waiting("o/r", 1));
        assert!(!b.waiting("o/r", 2), "per pull request");
        tokio::time::advance(Duration::from_secs(601)).await;
        assert!(!b.waiting("o/r", 1));
        b.failed("o/r", 1);
        b.succeeded("o/r", 1);
        assert!(!b.waiting("o/r", 1));
        assert_eq!(b.failed("o/r", 1), Duration::from_secs(10));
        assert_eq!(
            b.failed_with_hint("o/r", 3, Some(Duration::from_secs(3600))),
            Duration::from_secs(3600),
            "a server's wait hint beats the backoff"
        );
    }
}
