//! The `builds` and `build_audit` rows (migration `migrations/*_builds.sql`): reading them, and
//! the one function that changes a build's status (`set_status`), which checks the transition
//! table and appends the audit row in the caller's transaction.

use chrono::{DateTime, TimeZone, Utc};
use productbuilder_store::rusqlite::{self, Connection, OptionalExtension, Row, params};

use crate::spec::{BuildResult, BuildSpec};
use crate::status::{self, Status, Step};

/// A build's id: its row id, as in `/builds/{id}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BuildId(pub i64);

impl std::fmt::Display for BuildId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// One build as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Build {
    pub id: BuildId,
    /// `owner/name`.
    pub repo: String,
    /// The issue or pull request it is for (one active build each).
    pub number: Option<u64>,
    pub spec: BuildSpec,
    pub status: Status,
    /// Claims so far.
    pub attempts: u32,
    pub next_attempt_at: DateTime<Utc>,
    pub lease_owner: Option<String>,
    pub lease_until: Option<DateTime<Utc>>,
    pub cancel_requested: bool,
    /// The last step recorded before it started; `None` before the first.
    pub step: Option<Step>,
    /// How many times its daemon died under it.
    pub interruptions: u32,
    pub result: Option<BuildResult>,
    pub error: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
}

/// One recorded transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    pub build_id: BuildId,
    /// `None`: the build was created.
    pub from: Option<Status>,
    pub to: Status,
    pub at: DateTime<Utc>,
    pub reason: String,
}

pub(crate) fn millis(at: DateTime<Utc>) -> i64 {
    at.timestamp_millis()
}

fn time(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

/// A column the database holds but this binary cannot read: a corrupt row, reported as such.
fn corrupt(column: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(column, rusqlite::types::Type::Text, what.into())
}

pub(crate) fn parse_status(column: usize, text: &str) -> rusqlite::Result<Status> {
    text.parse()
        .map_err(|_| corrupt(column, format!("unknown build status {text:?}")))
}

const COLUMNS: &str = "id, repo, number, spec, status, attempts, next_attempt_at, lease_owner, \
     lease_until, cancel_requested, step, interruptions, result, error, created_at, updated_at, \
     finished_at";

fn from_row(row: &Row<'_>) -> rusqlite::Result<Build> {
    let spec: String = row.get(3)?;
    let status: String = row.get(4)?;
    let step: Option<String> = row.get(10)?;
    let result: Option<String> = row.get(12)?;
    Ok(Build {
        id: BuildId(row.get(0)?),
        repo: row.get(1)?,
        number: row.get::<_, Option<i64>>(2)?.map(|n| n as u64),
        spec: serde_json::from_str(&spec).map_err(|e| corrupt(3, e.to_string()))?,
        status: parse_status(4, &status)?,
        attempts: row.get(5)?,
        next_attempt_at: time(row.get(6)?),
        lease_owner: row.get(7)?,
        lease_until: row.get::<_, Option<i64>>(8)?.map(time),
        cancel_requested: row.get(9)?,
        step: step
            .map(|s| {
                s.parse()
                    .map_err(|_| corrupt(10, format!("unknown build step {s:?}")))
            })
            .transpose()?,
        interruptions: row.get(11)?,
        result: result
            .map(|r| serde_json::from_str(&r).map_err(|e| corrupt(12, e.to_string())))
            .transpose()?,
        error: row.get(13)?,
        created_at: time(row.get(14)?),
        updated_at: time(row.get(15)?),
        finished_at: row.get::<_, Option<i64>>(16)?.map(time),
    })
}

pub fn get(c: &Connection, id: BuildId) -> rusqlite::Result<Option<Build>> {
    c.query_row(
        &format!("SELECT {COLUMNS} FROM builds WHERE id = ?1"),
        [id.0],
        from_row,
    )
    .optional()
}

/// The active (pending or running) build of `repo`'s issue or pull request `number`.
pub fn active(c: &Connection, repo: &str, number: u64) -> rusqlite::Result<Option<Build>> {
    c.query_row(
        &format!(
            "SELECT {COLUMNS} FROM builds WHERE repo = ?1 AND number = ?2 \
             AND status IN ('pending', 'running')"
        ),
        params![repo, number as i64],
        from_row,
    )
    .optional()
}

/// `repo`'s builds, newest first, at most `limit`.
pub fn list(c: &Connection, repo: &str, limit: u32) -> rusqlite::Result<Vec<Build>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM builds WHERE repo = ?1 ORDER BY id DESC LIMIT ?2"
    ))?;
    stmt.query_map(params![repo, limit], from_row)?.collect()
}

/// Running builds whose lease ended before `now`.
pub fn expired(c: &Connection, now: DateTime<Utc>) -> rusqlite::Result<Vec<Build>> {
    let mut stmt = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM builds WHERE status = 'running' AND lease_until < ?1 ORDER BY id"
    ))?;
    stmt.query_map([millis(now)], from_row)?.collect()
}

/// Every transition of `id`, oldest first.
pub fn audit(c: &Connection, id: BuildId) -> rusqlite::Result<Vec<AuditEntry>> {
    let mut stmt = c.prepare_cached(
        "SELECT build_id, from_status, to_status, at, reason FROM build_audit \
         WHERE build_id = ?1 ORDER BY id",
    )?;
    stmt.query_map([id.0], |row| {
        let from: Option<String> = row.get(1)?;
        let to: String = row.get(2)?;
        Ok(AuditEntry {
            build_id: BuildId(row.get(0)?),
            from: from.map(|f| parse_status(1, &f)).transpose()?,
            to: parse_status(2, &to)?,
            at: time(row.get(3)?),
            reason: row.get(4)?,
        })
    })?
    .collect()
}

pub(crate) fn record(
    c: &Connection,
    id: BuildId,
    from: Option<Status>,
    to: Status,
    at: DateTime<Utc>,
    reason: &str,
) -> rusqlite::Result<()> {
    c.execute(
        "INSERT INTO build_audit (build_id, from_status, to_status, at, reason) \
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![
            id.0,
            from.map(Status::as_str),
            to.as_str(),
            millis(at),
            reason
        ],
    )?;
    Ok(())
}

/// Moves `id` from `from` to `to` (the caller read `from` in this transaction), checking the
/// table and recording the audit row. A move the table forbids is returned as its error and
/// nothing is written; the caller sets its other columns in the same transaction.
pub(crate) fn set_status(
    c: &Connection,
    id: BuildId,
    from: Status,
    to: Status,
    at: DateTime<Utc>,
    reason: &str,
) -> rusqlite::Result<Result<(), status::TransitionError>> {
    if let Err(e) = status::check(from, to) {
        return Ok(Err(e));
    }
    let changed = c.execute(
        "UPDATE builds SET status = ?2, updated_at = ?3 WHERE id = ?1 AND status = ?4",
        params![id.0, to.as_str(), millis(at), from.as_str()],
    )?;
    if changed != 1 {
        // The caller read `from` in this very transaction: a mismatch is a bug, not a race.
        return Err(rusqlite::Error::QueryReturnedNoRows);
    }
    record(c, id, Some(from), to, at, reason)?;
    Ok(Ok(()))
}
