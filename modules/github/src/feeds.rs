//! What the GitHub module publishes to other modules: [`PULLS`], the open pull requests of each
//! tenant, as changes (a poll that finds the same set publishes again, but is no change).

use std::sync::Arc;

use futures_util::StreamExt;
use productbuilder_planner::{Changes, Feed};
use tokio::sync::watch;

use crate::model::PullSet;
use crate::poll::GithubState;

/// The open pull requests of a tenant.
pub const PULLS: &str = "github:pulls";

/// The [`PULLS`] feed of `state`.
pub fn pulls(state: GithubState) -> Feed {
    Feed {
        name: PULLS,
        subscribe: Arc::new(move |tenant| changes(state.subscribe(&tenant.repo()))),
    }
}

/// One item per change of the set. The feed is replaced after every poll, so equal sets are
/// compared away here.
fn changes(mut feed: watch::Receiver<Arc<PullSet>>) -> Changes {
    let last = feed.borrow_and_update().clone();
    futures_util::stream::unfold((feed, last), |(mut feed, mut last)| async move {
        while feed.changed().await.is_ok() {
            let current = feed.borrow_and_update().clone();
            if *current != *last {
                return Some(((), (feed, current)));
            }
            last = current;
        }
        None
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn a_republished_equal_set_is_no_change() {
        let set = |polled| {
            Arc::new(PullSet {
                repo: "acme/shop".into(),
                pulls: Vec::new(),
                polled,
            })
        };
        let (feed, subscriber) = watch::channel(set(false));
        let mut changes = changes(subscriber);
        assert_eq!(changes.next().now_or_never(), None, "nothing published yet");
        feed.send_replace(set(false));
        assert_eq!(changes.next().now_or_never(), None, "the same set again");
        feed.send_replace(set(true));
        assert_eq!(changes.next().now_or_never(), Some(Some(())));
        drop(feed);
        assert_eq!(
            changes.next().now_or_never(),
            Some(None),
            "the publisher is gone"
        );
    }
}
