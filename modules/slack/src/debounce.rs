//! The status lane's debounce: a burst of transitions (a preview goes building → deploying →
//! ready within a second or two, each move waking the Slack worker) becomes one edit. The first
//! change after a quiet spell is written at once; a change that comes within `window` of the last
//! write to that status message waits for the rest of the window, and the pass then reads the
//! state again, so what is written is the latest state, once.
//!
//! Kept in memory: after a restart the first edit is simply not delayed.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio::time::Instant;

/// Per status message (repository and number), when it was last written.
#[derive(Debug)]
pub struct StatusDebounce {
    window: Duration,
    written: Mutex<HashMap<(String, u64), Instant>>,
    /// Told each time a pass starts waiting (tests await it instead of sleeping).
    waiting: Notify,
}

/// The default window: long enough for a preview's usual burst, short enough that a person
/// watching the thread does not notice it.
pub const WINDOW: Duration = Duration::from_secs(2);

impl StatusDebounce {
    pub fn new(window: Duration) -> StatusDebounce {
        StatusDebounce {
            window,
            written: Mutex::default(),
            waiting: Notify::new(),
        }
    }

    /// No debounce: every change is written at once.
    pub fn none() -> StatusDebounce {
        StatusDebounce::new(Duration::ZERO)
    }

    /// How long a pass that is about to write the status messages of `numbers` must wait first:
    /// the rest of the youngest window among them, or `None`.
    pub fn wait_before(
        &self,
        repo: &str,
        numbers: impl IntoIterator<Item = u64>,
    ) -> Option<Duration> {
        if self.window.is_zero() {
            return None;
        }
        let written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        numbers
            .into_iter()
            .filter_map(|n| written.get(&(repo.to_owned(), n)))
            .map(|at| (*at + self.window).saturating_duration_since(now))
            .filter(|rest| !rest.is_zero())
            .max()
    }

    /// Waits `rest` (from [`Self::wait_before`]), telling whoever awaits [`Self::waiting`].
    pub async fn wait(&self, rest: Duration) {
        self.waiting.notify_waiters();
        tokio::time::sleep(rest).await;
    }

    /// Resolves when a pass starts waiting out a window (`enable` it before the pass starts).
    pub fn waiting(&self) -> Notified<'_> {
        self.waiting.notified()
    }

    /// The status message of `number` was just written.
    pub fn written(&self, repo: &str, number: u64) {
        if self.window.is_zero() {
            return;
        }
        let mut written = self.written.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        written.retain(|_, at| now.duration_since(*at) < self.window);
        written.insert((repo.to_owned(), number), now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_opens_a_window_for_its_message_only() {
        let d = StatusDebounce::new(Duration::from_secs(2));
        assert_eq!(d.wait_before("a/b", [7]), None, "nothing written yet");
        d.written("a/b", 7);
        tokio::time::advance(Duration::from_millis(500)).await;
        assert_eq!(
            d.wait_before("a/b", [7, 8]),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(d.wait_before("a/b", [8]), None, "another message");
        assert_eq!(d.wait_before("c/d", [7]), None, "another repository");
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(d.wait_before("a/b", [7]), None, "the window is over");
    }

    #[test]
    fn no_window_never_waits() {
        let d = StatusDebounce::none();
        d.written("a/b", 7);
        assert_eq!(d.wait_before("a/b", [7]), None);
    }
}
