//! What the builds module publishes to other modules: [`ROWS`], a change of one of a tenant's
//! builds (a step began, a build ended). The Slack threads wake on it, so a build's line follows
//! the build at once instead of at the next poll. Progress lines of the agent are not changes of
//! the row and wake nobody.

use std::sync::Arc;

use futures_util::StreamExt;
use productbuilder_planner::{Changes, Feed};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::runner::{BuildEvent, EventKind, Runner};

/// A change of a tenant's build rows.
pub const ROWS: &str = "builds:rows";

/// The [`ROWS`] feed of `runner`; without builds, a feed that never changes (so that modules may
/// wake on it whether builds are configured or not).
pub fn rows(runner: Option<Runner>) -> Feed {
    Feed {
        name: ROWS,
        subscribe: Arc::new(move |tenant| match &runner {
            Some(runner) => changes(runner.subscribe(), tenant.repo()),
            None => futures_util::stream::pending().boxed(),
        }),
    }
}

/// One item per step or end of one of `repo`'s builds; a subscriber that lagged behind gets one.
fn changes(events: broadcast::Receiver<BuildEvent>, repo: String) -> Changes {
    futures_util::stream::unfold((events, repo), |(mut events, repo)| async move {
        loop {
            match events.recv().await {
                Ok(e) if *e.repo == *repo && !matches!(e.kind, EventKind::Progress(_)) => {
                    return Some(((), (events, repo)));
                }
                Ok(_) => {}
                Err(RecvError::Lagged(_)) => return Some(((), (events, repo))),
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
    use crate::records::BuildId;
    use crate::status::{Status, Step};

    fn event(repo: &str, kind: EventKind) -> BuildEvent {
        BuildEvent {
            id: BuildId(1),
            repo: Arc::from(repo),
            kind,
        }
    }

    #[test]
    fn a_tenant_wakes_on_its_own_steps_and_ends_only() {
        let (tx, _) = broadcast::channel(8);
        let mut shop = changes(tx.subscribe(), "acme/shop".into());
        tx.send(event("acme/blog", EventKind::Step(Step::Clone)))
            .unwrap();
        tx.send(event("acme/shop", EventKind::Progress("working".into())))
            .unwrap();
        assert_eq!(
            shop.next().now_or_never(),
            None,
            "another tenant, or progress"
        );
        tx.send(event("acme/shop", EventKind::Finished(Status::Completed)))
            .unwrap();
        assert_eq!(shop.next().now_or_never(), Some(Some(())));
    }
}
