//! `max_previews`, held under bursts: a deploy takes its place by writing its row in the same
//! SQLite transaction (`BEGIN IMMEDIATE`) that counts the live rows of every tenant and marks the
//! previews it evicts deleted. Two passes (two tenants, or a pass and a redeploy request) that
//! decide at once are serialised by SQLite's write lock, so the second one counts the first's row:
//! no place is ever granted twice, and nothing is held in memory between the decision and the row.

use productbuilder_store::rusqlite::{self, Connection, TransactionBehavior};

use crate::db::{self, DeletedReason, Details};
use crate::decide::{self, Room};
use crate::state::Event;

/// A deploy asking for a place.
#[derive(Debug, Clone)]
pub struct Request {
    pub repo: String,
    pub number: u64,
    pub sha: String,
    pub url: String,
    pub project: String,
    pub max_previews: usize,
}

/// What [`reserve`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reserved {
    /// The row is written (`pending` at the sha); these previews were marked deleted (evicted)
    /// to make room, and their containers are still to be removed.
    Admitted { evicted: Vec<(String, u64)> },
    /// No place now; nothing was written.
    Wait,
}

/// Decides and writes in one transaction: the place (see [`decide::room`]), the evictions and
/// `repo#number`'s row. `busy` says which previews have a deploy or removal in flight (never
/// evicted).
pub fn reserve(
    c: &mut Connection,
    request: &Request,
    busy: &dyn Fn(&str, u64) -> bool,
) -> rusqlite::Result<Reserved> {
    let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let live = db::live_by_age(&tx)?;
    let evict = match decide::room(
        &live,
        busy,
        request.max_previews,
        &request.repo,
        request.number,
    ) {
        Room::Wait => return Ok(Reserved::Wait),
        Room::Admit { evict } => evict,
    };
    let mut evicted = Vec::new();
    for (repo, number, sha) in evict {
        let details = Details {
            deleted_reason: Some(DeletedReason::Evicted),
            ..Details::default()
        };
        match db::transition(&tx, &repo, number, &sha, Event::Delete, &details) {
            Ok(_) => evicted.push((repo, number)),
            Err(db::TransitionError::Sql(e)) => return Err(e),
            // Delete is valid from every position; refused would be a bug in the table.
            Err(db::TransitionError::Refused(e)) => {
                tracing::error!(repo, number, error = %e, "previews: cannot evict");
                return Ok(Reserved::Wait);
            }
        }
    }
    db::begin(
        &tx,
        &request.repo,
        request.number,
        &request.sha,
        &request.url,
        &request.project,
    )?;
    tx.commit()?;
    Ok(Reserved::Admitted { evicted })
}
