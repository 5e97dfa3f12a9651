//! What the preview module publishes to other modules: [`ROWS`], a change of a tenant's preview
//! rows (a step began, a deploy ended, a preview was removed or evicted). The Slack threads wake on
//! it, so a status line follows a deploy at once instead of at the next poll.

use std::sync::Arc;

use futures_util::StreamExt;
use productbuilder_planner::{Changes, Feed};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::Previews;

/// A change of a tenant's preview rows.
pub const ROWS: &str = "preview:rows";

/// How many moves a slow subscriber may fall behind before it is told "something changed" once
/// (it then reads the whole state anyway: a wake carries no data).
pub(crate) const MOVED_BACKLOG: usize = 1024;

/// The [`ROWS`] feed of `previews`.
pub fn rows(previews: Previews) -> Feed {
    Feed {
        name: ROWS,
        subscribe: Arc::new(move |tenant| changes(previews.moved(), tenant.repo())),
    }
}

/// One item per move of one of `repo`'s rows; a subscriber that lagged behind gets one item (some
/// of the moves it missed may have been `repo`'s).
fn changes(moved: broadcast::Receiver<Arc<str>>, repo: String) -> Changes {
    futures_util::stream::unfold((moved, repo), |(mut moved, repo)| async move {
        loop {
            match moved.recv().await {
                Ok(of) if *of == *repo => return Some(((), (moved, repo))),
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => return Some(((), (moved, repo))),
                Err(RecvError::Closed) => return None,
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn only_the_tenants_own_moves_wake_it_and_a_lag_wakes_it_once() {
        let (tx, _) = broadcast::channel(2);
        let mut shop = changes(tx.subscribe(), "acme/shop".into());
        assert_eq!(shop.next().now_or_never(), None, "nothing moved yet");
        tx.send(Arc::from("acme/blog")).unwrap();
        assert_eq!(shop.next().now_or_never(), None, "another tenant's move");
        tx.send(Arc::from("acme/shop")).unwrap();
        assert_eq!(shop.next().now_or_never(), Some(Some(())));
        for _ in 0..3 {
            tx.send(Arc::from("acme/blog")).unwrap();
        }
        assert_eq!(
            shop.next().now_or_never(),
            Some(Some(())),
            "lagged: told once"
        );
        assert_eq!(shop.next().now_or_never(), None);
        drop(tx);
        assert_eq!(
            shop.next().now_or_never(),
            Some(None),
            "the publisher is gone"
        );
    }
}
