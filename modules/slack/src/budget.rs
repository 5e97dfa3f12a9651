//! One Slack budget per workspace: a `Retry-After` from any 429 holds back every call, and each
//! lane (posting to one channel, reading history, reading replies) keeps its own pace. Callers
//! queue in arrival order for a lane's next slot: writes wait behind the budget, never dropped.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// What a call spends: which lane paces it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Lane {
    /// `chat.postMessage` to a channel: about one a second per channel, as Slack asks.
    Post(String),
    /// `conversations.history`, paced by `history_requests_per_minute`.
    History,
    /// `conversations.replies`, paced by `history_requests_per_minute`.
    Replies,
    /// Everything else (`chat.update`, `auth.test`, `apps.connections.open`): only the
    /// workspace-wide hold applies.
    Other,
}

#[derive(Debug)]
pub struct Budget {
    post_every: Duration,
    history_every: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// No call before this (from the latest `Retry-After`).
    held_until: Option<Instant>,
    /// Each lane's next free slot.
    next_slot: HashMap<Lane, Instant>,
}

impl Budget {
    /// `history_requests_per_minute` paces history and replies (each).
    pub fn new(history_requests_per_minute: u32) -> Budget {
        Budget {
            post_every: Duration::from_secs(1),
            history_every: Duration::from_secs(60) / history_requests_per_minute.max(1),
            state: Mutex::new(State::default()),
        }
    }

    fn spacing(&self, lane: &Lane) -> Duration {
        match lane {
            Lane::Post(_) => self.post_every,
            Lane::History | Lane::Replies => self.history_every,
            Lane::Other => Duration::ZERO,
        }
    }

    /// Waits for `lane`'s next slot and for any hold, then takes the slot.
    pub async fn spend(&self, lane: &Lane) {
        let slot = {
            let mut state = self.state.lock().expect("budget lock");
            let now = Instant::now();
            let free = state.next_slot.get(lane).copied().unwrap_or(now).max(now);
            let spacing = self.spacing(lane);
            if !spacing.is_zero() {
                state.next_slot.insert(lane.clone(), free + spacing);
            }
            free
        };
        tokio::time::sleep_until(slot).await;
        // A 429 may have arrived while this call waited for its slot: honour it too.
        loop {
            let held = self.state.lock().expect("budget lock").held_until;
            match held {
                Some(until) if until > Instant::now() => tokio::time::sleep_until(until).await,
                _ => break,
            }
        }
    }

    /// Slack said `429, Retry-After: wait`: no call on this workspace before then.
    pub fn hold(&self, wait: Duration) {
        let until = Instant::now() + wait;
        let mut state = self.state.lock().expect("budget lock");
        if state.held_until.is_none_or(|held| held < until) {
            state.held_until = Some(until);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn posts_to_one_channel_go_one_a_second_and_other_channels_are_not_held_up() {
        let budget = Budget::new(50);
        let start = Instant::now();
        let c1 = Lane::Post("C1".into());
        budget.spend(&c1).await;
        budget.spend(&c1).await;
        budget.spend(&c1).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
        let before = Instant::now();
        budget.spend(&Lane::Post("C2".into())).await;
        assert_eq!(before.elapsed(), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_retry_after_holds_every_lane() {
        let budget = Budget::new(50);
        budget.hold(Duration::from_secs(30));
        let start = Instant::now();
        budget.spend(&Lane::Other).await;
        assert_eq!(start.elapsed(), Duration::from_secs(30));
        // A shorter hint never shortens a longer hold.
        budget.hold(Duration::from_secs(20));
        budget.hold(Duration::from_secs(5));
        let start = Instant::now();
        budget.spend(&Lane::Post("C1".into())).await;
        assert_eq!(start.elapsed(), Duration::from_secs(20));
    }

    #[tokio::test(start_paused = true)]
    async fn history_at_one_a_minute_waits_a_minute_between_pages() {
        let budget = Budget::new(1);
        let start = Instant::now();
        budget.spend(&Lane::History).await;
        budget.spend(&Lane::Replies).await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "history and replies pace apart"
        );
        budget.spend(&Lane::History).await;
        assert_eq!(start.elapsed(), Duration::from_secs(60));
    }
}
