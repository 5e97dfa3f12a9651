//! The `previews` table: one row per pull request that ever had a preview, the persisted position
//! of its deploy. Every write that moves a preview goes through [`transition`], so the table never
//! holds a position the state machine could not reach.

use productbuilder_store::rusqlite::{self, Connection, OptionalExtension, params};
use serde::Serialize;

use crate::state::{self, Event, Position, Stage, Status};

/// Timestamps as stored: RFC 3339 in UTC with milliseconds, so that text order is time order.
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";

/// Why a preview was removed (as stored in `previews.deleted_reason`).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::Display,
    strum::EnumString,
    strum::AsRefStr,
    strum::IntoStaticStr,
    strum::VariantArray,
)]
#[strum(serialize_all = "snake_case")]
pub enum DeletedReason {
    /// The pull request closed.
    Closed,
    /// The pull request is open but no longer allowed (a draft again, its label removed).
    Unwanted,
    /// Not updated within the TTL.
    Expired,
    /// Made room for a newer preview.
    Evicted,
}

impl DeletedReason {
    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(s: &str) -> Option<DeletedReason> {
        s.parse().ok()
    }

    /// Whether the same head commit may be deployed again when the pull request wants it: an
    /// expired or evicted preview comes back only with a new push.
    pub fn allows_same_sha(self) -> bool {
        matches!(self, DeletedReason::Closed | DeletedReason::Unwanted)
    }
}

/// One row, as `GET /previews` shows it (plus what the reconciler needs).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PreviewRow {
    pub repo: String,
    pub number: u64,
    pub head_sha: String,
    pub status: Status,
    pub stage: Option<Stage>,
    pub error: Option<String>,
    #[serde(skip)]
    pub log_tail: Option<String>,
    pub url: String,
    #[serde(skip)]
    pub project: String,
    #[serde(skip)]
    pub deleted_reason: Option<DeletedReason>,
    #[serde(skip)]
    pub note: Option<String>,
    #[serde(skip)]
    pub log_service: Option<String>,
    #[serde(skip)]
    pub log_file: Option<String>,
    #[serde(skip)]
    pub deployment_id: Option<u64>,
    #[serde(skip)]
    pub reported: Option<String>,
    #[serde(skip)]
    pub sha_changed_at: String,
    pub updated_at: String,
    /// A newer head commit of the pull request that waits for a writer's approval while the
    /// preview stays at `head_sha`.
    pub waiting_sha: Option<String>,
    /// The latest writer's approval of a commit of this pull request (for forks, and with
    /// `require_label`): the commit, who gave it, when, and how (`label` or `comment`).
    pub approved_sha: Option<String>,
    pub approved_by: Option<String>,
    pub approved_at: Option<String>,
    pub approved_how: Option<String>,
    /// Why GitHub refused this row's report for good, while the row still says what was refused
    /// (`report_key` unchanged): shown by the API and the dashboard, and not sent again.
    pub report_error: Option<String>,
    #[serde(skip)]
    pub report_error_key: Option<String>,
}

impl PreviewRow {
    pub fn position(&self) -> Position {
        Position {
            status: self.status,
            stage: self.stage,
        }
    }

    /// What a report of this row says; equal keys need no second report.
    pub fn report_key(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.head_sha,
            self.status,
            self.stage.map_or("", Stage::as_str),
            self.waiting_sha.as_deref().unwrap_or("")
        )
    }

    /// Still holds (or is about to hold) containers.
    pub fn is_live(&self) -> bool {
        self.status != Status::Deleted
    }
}

const COLUMNS: &str = "repo, number, head_sha, status, stage, error, log_tail, url, project, deleted_reason, note, log_service, log_file, deployment_id, reported, sha_changed_at, updated_at, waiting_sha, a.sha, a.given_by, a.given_at, a.how, report_error, report_error_key";

/// The latest granted approval of each pull request, joined to its row.
const FROM: &str = "previews LEFT JOIN (
    SELECT k.repo AS repo, k.number AS number, k.sha, k.given_by, k.given_at, k.how
    FROM consents k
    WHERE k.granted = 1 AND k.sha IS NOT NULL AND NOT EXISTS (
        SELECT 1 FROM consents l WHERE l.repo = k.repo AND l.number = k.number AND l.granted = 1
          AND l.sha IS NOT NULL AND (l.given_at, l.recorded_at, l.source) > (k.given_at, k.recorded_at, k.source))
) a USING (repo, number)";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PreviewRow> {
    let status: String = r.get(3)?;
    let stage: Option<String> = r.get(4)?;
    let reason: Option<String> = r.get(9)?;
    Ok(PreviewRow {
        repo: r.get(0)?,
        number: r.get::<_, i64>(1)? as u64,
        head_sha: r.get(2)?,
        // The table's CHECK constraints only admit known names.
        status: Status::parse(&status).unwrap_or(Status::Failed),
        stage: stage.as_deref().and_then(Stage::parse),
        error: r.get(5)?,
        log_tail: r.get(6)?,
        url: r.get(7)?,
        project: r.get(8)?,
        deleted_reason: reason.as_deref().and_then(DeletedReason::parse),
        note: r.get(10)?,
        log_service: r.get(11)?,
        log_file: r.get(12)?,
        deployment_id: r.get::<_, Option<i64>>(13)?.map(|id| id as u64),
        reported: r.get(14)?,
        sha_changed_at: r.get(15)?,
        updated_at: r.get(16)?,
        waiting_sha: r.get(17)?,
        approved_sha: r.get(18)?,
        approved_by: r.get(19)?,
        approved_at: r.get(20)?,
        approved_how: r.get(21)?,
        report_error: r.get(22)?,
        report_error_key: r.get(23)?,
    })
    .map(|mut row| {
        // Only while it still concerns what the row says now.
        if row.report_error_key.as_deref() != Some(row.report_key().as_str()) {
            row.report_error = None;
        }
        row
    })
}

/// Every row, newest first; of one repository when `repo` is set.
pub fn rows(c: &Connection, repo: Option<&str>) -> rusqlite::Result<Vec<PreviewRow>> {
    let mut stmt = c.prepare(&format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE ?1 IS NULL OR repo = ?1 ORDER BY updated_at DESC, repo, number"
    ))?;
    let rows = stmt.query_map([repo], from_row)?;
    rows.collect()
}

pub fn row(c: &Connection, repo: &str, number: u64) -> rusqlite::Result<Option<PreviewRow>> {
    c.query_row(
        &format!("SELECT {COLUMNS} FROM {FROM} WHERE repo = ?1 AND number = ?2"),
        params![repo, number as i64],
        from_row,
    )
    .optional()
}

/// A deploy of `sha` begins: the row is (re)set to `pending`. A new head commit resets the
/// deployment and the expiry clock; a repair of the same commit keeps them.
pub fn begin(
    c: &Connection,
    repo: &str,
    number: u64,
    sha: &str,
    url: &str,
    project: &str,
) -> rusqlite::Result<()> {
    let pending = state::transition(Position::NEW, Event::Deploy).expect("Deploy is always valid");
    c.execute(
        &format!(
            "INSERT INTO previews (repo, number, head_sha, status, stage, url, project, sha_changed_at, updated_at)
             VALUES (?1, ?2, ?3, ?4, NULL, ?5, ?6, {NOW}, {NOW})
             ON CONFLICT (repo, number) DO UPDATE SET
               status = excluded.status, stage = NULL, error = NULL, log_tail = NULL,
               url = excluded.url, project = excluded.project, deleted_reason = NULL,
               deployment_id = CASE WHEN previews.head_sha = excluded.head_sha THEN previews.deployment_id END,
               sha_changed_at = CASE WHEN previews.head_sha = excluded.head_sha THEN previews.sha_changed_at ELSE excluded.sha_changed_at END,
               head_sha = excluded.head_sha,
               updated_at = excluded.updated_at"
        ),
        params![repo, number as i64, sha, pending.status.as_str(), url, project],
    )?;
    Ok(())
}

/// What a step or an outcome adds to the row.
#[derive(Debug, Default)]
pub struct Details<'a> {
    pub error: Option<&'a str>,
    pub log_tail: Option<&'a str>,
    pub deleted_reason: Option<DeletedReason>,
}

/// Why [`transition`] did not move a row.
#[derive(Debug, thiserror::Error)]
pub enum TransitionError {
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    /// The state machine refused the move: a bug in the caller.
    #[error(transparent)]
    Refused(#[from] state::InvalidTransition),
}

/// Moves the preview of `repo#number` at `sha` by `event`. Returns `Ok(false)` when the row no
/// longer belongs to `sha` (a newer deploy took over), and an error when the state machine refuses.
pub fn transition(
    c: &Connection,
    repo: &str,
    number: u64,
    sha: &str,
    event: Event,
    details: &Details<'_>,
) -> Result<bool, TransitionError> {
    let current = row(c, repo, number)?.filter(|r| r.head_sha == sha);
    let Some(current) = current else {
        return Ok(false);
    };
    let next = state::transition(current.position(), event)?;
    c.execute(
        &format!(
            "UPDATE previews SET status = ?4, stage = ?5, error = ?6, log_tail = ?7, deleted_reason = ?8,
               updated_at = {NOW}
             WHERE repo = ?1 AND number = ?2 AND head_sha = ?3"
        ),
        params![
            repo,
            number as i64,
            sha,
            next.status.as_str(),
            next.stage.map(Stage::as_str),
            details.error,
            details.log_tail,
            details.deleted_reason.map(DeletedReason::as_str),
        ],
    )?;
    Ok(true)
}

/// Records what the checkout's contract says about notes and logs.
pub fn set_contract(
    c: &Connection,
    repo: &str,
    number: u64,
    note: Option<&str>,
    log_service: &str,
    log_file: Option<&str>,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE previews SET note = ?3, log_service = ?4, log_file = ?5 WHERE repo = ?1 AND number = ?2",
        params![repo, number as i64, note, log_service, log_file],
    )?;
    Ok(())
}

pub fn set_deployment(
    c: &Connection,
    repo: &str,
    number: u64,
    sha: &str,
    id: u64,
) -> rusqlite::Result<()> {
    c.execute(
        "UPDATE previews SET deployment_id = ?4 WHERE repo = ?1 AND number = ?2 AND head_sha = ?3",
        params![repo, number as i64, sha, id as i64],
    )?;
    Ok(())
}

/// Records that GitHub refused the report of `key` for good, unless the row moved on meanwhile.
pub fn set_report_refused(
    c: &Connection,
    repo: &str,
    number: u64,
    key: &str,
    error: &str,
) -> rusqlite::Result<bool> {
    let current = row(c, repo, number)?;
    if current.is_none_or(|r| r.report_key() != key) {
        return Ok(false);
    }
    c.execute(
        "UPDATE previews SET report_error = ?3, report_error_key = ?4 WHERE repo = ?1 AND number = ?2",
        params![repo, number as i64, error, key],
    )?;
    Ok(true)
}

/// Marks `key` reported, unless the row moved on meanwhile.
pub fn set_reported(c: &Connection, repo: &str, number: u64, key: &str) -> rusqlite::Result<bool> {
    let current = row(c, repo, number)?;
    if current.is_none_or(|r| r.report_key() != key) {
        return Ok(false);
    }
    c.execute(
        "UPDATE previews SET reported = ?3 WHERE repo = ?1 AND number = ?2",
        params![repo, number as i64, key],
    )?;
    Ok(true)
}

/// Records which head commit waits for approval (`None`: none). Returns whether it changed.
pub fn set_waiting(
    c: &Connection,
    repo: &str,
    number: u64,
    waiting: Option<&str>,
) -> rusqlite::Result<bool> {
    let changed = c.execute(
        "UPDATE previews SET waiting_sha = ?3 WHERE repo = ?1 AND number = ?2 AND waiting_sha IS NOT ?3",
        params![repo, number as i64, waiting],
    )?;
    Ok(changed > 0)
}

/// Live previews of every tenant, least recently updated first: the eviction order.
pub fn live_by_age(c: &Connection) -> rusqlite::Result<Vec<PreviewRow>> {
    let mut stmt = c.prepare(&format!(
        "SELECT {COLUMNS} FROM {FROM} WHERE status != 'deleted' ORDER BY sha_changed_at, repo, number"
    ))?;
    let rows = stmt.query_map([], from_row)?;
    rows.collect()
}

/// Whether `at` (as stored) is older than `age`.
pub fn older_than(c: &Connection, at: &str, age: std::time::Duration) -> rusqlite::Result<bool> {
    c.query_row(
        "SELECT ?1 < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2)",
        params![at, format!("-{} seconds", age.as_secs())],
        |r| r.get(0),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deleted_reasons_as_stored() {
        let names: Vec<&str> = <DeletedReason as strum::VariantArray>::VARIANTS
            .iter()
            .map(|r| r.as_str())
            .collect();
        assert_eq!(names, ["closed", "unwanted", "expired", "evicted"]);
        for name in names {
            assert_eq!(
                DeletedReason::parse(name).map(|r| r.to_string()).as_deref(),
                Some(name)
            );
        }
    }
}
