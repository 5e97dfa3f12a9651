//! The SQLite store: one database file under `state_dir`, opened in WAL mode.
//!
//! # Brief overview
//! - [`Store::open`] opens (or creates) the file and sets the pragmas every connection needs.
//! - [`Store::migrate`] applies the embedded migrations ([`MIGRATIONS`], one file per version in
//!   `migrations/` at the workspace root), each inside its own `BEGIN IMMEDIATE` transaction, and
//!   records it in `schema_migrations` with a checksum.
//! - [`Store::read`] runs a closure on one of a small pool of read-only connections,
//!   [`Store::write`] on the one writer connection; both on tokio's blocking pool, so SQLite never
//!   blocks an async worker thread.
//!
//! # Why one writer and a pool of readers
//! SQLite serialises writers anyway, and this daemon's write rate is a few rows per poll: one
//! writer connection behind a mutex avoids `SQLITE_BUSY` between our own writers entirely. Reads
//! (`/readyz`, `/metrics`, the dashboard, listings, the pollers' lookups) go to read-only
//! connections instead: in WAL mode they see the last committed state and never wait behind a
//! write, however large (an `http_cache` body) or long (a transaction) it is.
//!
//! A private in-memory database ([`Store::in_memory`]) cannot be shared between connections, so
//! there reads use the writer.

mod readers;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use crate::readers::Readers;

pub use rusqlite;

/// One embedded migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    pub version: u32,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// FNV-1a over the SQL text: detects a migration edited after it was applied.
    pub fn checksum(&self) -> String {
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in self.sql.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("{hash:016x}")
    }

    /// The file it came from, for messages.
    pub fn file_name(&self) -> String {
        format!("migrations/{:04}_{}.sql", self.version, self.name)
    }
}

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// Everything that can go wrong with the database, each naming the file.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "database {path}: cannot open: {source}; check that the directory exists and is writable"
    )]
    Open {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database {path}: cannot create directory {dir}: {source}")]
    CreateDir {
        path: PathBuf,
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path}: migration {file} failed: {source}; nothing of it was applied")]
    Migration {
        path: PathBuf,
        file: String,
        source: rusqlite::Error,
    },
    #[error(
        "database {path}: schema version {found} is newer than this binary knows ({known}); run a newer productbuilder, or restore a backup"
    )]
    TooNew {
        path: PathBuf,
        found: u32,
        known: u32,
    },
    #[error(
        "database {path}: {file} was changed after it was applied (checksum {recorded} recorded, {embedded} embedded); migrations are append-only, add a new one instead"
    )]
    Edited {
        path: PathBuf,
        file: String,
        recorded: String,
        embedded: String,
    },
    #[error("database {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database {path}: the blocking task was lost: {message}")]
    Task { path: PathBuf, message: String },
}

impl StoreError {
    /// Another connection held the lock past the busy timeout: worth a retry.
    pub fn is_busy(&self) -> bool {
        matches!(
            self,
            StoreError::Sql { source, .. } | StoreError::Migration { source, .. }
                if source.sqlite_error_code() == Some(rusqlite::ErrorCode::DatabaseBusy)
        )
    }
}

/// The one mapping of a store failure onto the scheduler's kinds, for every unit: a locked
/// database is retried like a timeout; anything else is permanent.
impl From<StoreError> for productbuilder_scheduler::UnitError {
    fn from(error: StoreError) -> Self {
        use productbuilder_scheduler::ErrorKind;
        let kind = if error.is_busy() {
            ErrorKind::Timeout
        } else {
            ErrorKind::Internal
        };
        productbuilder_scheduler::UnitError::new(kind, error.to_string())
    }
}

/// A migration that [`Store::migrate`] applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    pub version: u32,
    pub name: &'static str,
}

/// The database. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    path: Arc<PathBuf>,
    /// `None` for an in-memory database: reads then use the writer. Declared before the writer
    /// so that it is dropped first: the writer, closing last, checkpoints and removes the WAL
    /// (a read-only connection cannot).
    readers: Option<Arc<Readers>>,
    writer: Arc<Mutex<Connection>>,
}

/// Switches a file database to WAL. Switching takes an exclusive lock for which SQLite does not
/// call the busy handler, so two processes opening one fresh file at once can see `SQLITE_BUSY`
/// here however long the busy timeout: the switch is tried again for as long as that timeout.
fn set_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut pause = Duration::from_millis(5);
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DatabaseBusy
                    && std::time::Instant::now() < deadline =>
            {
                // The other opener holds the lock for microseconds; nothing to await but time.
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

impl Store {
    /// Opens or creates the database at `path`, creating its directory if needed.
    pub fn open(path: impl AsRef<Path>) -> Result<Store, StoreError> {
        let path = path.as_ref().to_path_buf();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::CreateDir {
                path: path.clone(),
                dir: dir.to_path_buf(),
                source,
            })?;
        }
        let open_err = |source| StoreError::Open {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(open_err)?;
        set_wal(&conn).map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(open_err)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_err)?;
        Ok(Store {
            readers: Some(Arc::new(Readers::new(&path))),
            path: Arc::new(path),
            writer: Arc::new(Mutex::new(conn)),
        })
    }

    /// A private in-memory database: for `plan`, which must not touch the state directory.
    pub fn in_memory() -> Result<Store, StoreError> {
        let path = PathBuf::from(":memory:");
        let conn = Connection::open_in_memory().map_err(|source| StoreError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Store {
            path: Arc::new(path),
            writer: Arc::new(Mutex::new(conn)),
            readers: None,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back), so a poisoned lock is still a usable connection.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sql_err(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        |source| StoreError::Sql {
            path: self.path.to_path_buf(),
            source,
        }
    }

    /// Runs `f` on the blocking pool with the writer connection: for anything that writes, and
    /// for reads that must be in the same transaction as a write.
    pub async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let store = self.clone();
        self.blocking(move || {
            let mut conn = store.lock();
            f(&mut conn)
        })
        .await
    }

    /// Runs `f` on the blocking pool with a read-only connection: it sees every write committed
    /// before it started, and never waits for the writer. A statement that writes fails
    /// (`SQLITE_READONLY`).
    pub async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        let Some(readers) = self.readers.clone() else {
            return self.write(f).await;
        };
        self.blocking(move || {
            let mut conn = readers.lend()?;
            f(&mut conn)
        })
        .await
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce() -> rusqlite::Result<T> + Send + 'static,
    {
        let result = tokio::task::spawn_blocking(f)
            .await
            .map_err(|e| StoreError::Task {
                path: self.path.to_path_buf(),
                message: e.to_string(),
            })?;
        result.map_err(self.sql_err())
    }

    /// True when the database answers a trivial query (on a reader: a long write does not make
    /// the daemon look unready).
    pub async fn ping(&self) -> bool {
        self.read(|c| c.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)))
            .await
            .is_ok()
    }

    /// The versions recorded as applied, with their checksums.
    fn applied(&self, conn: &Connection) -> Result<Vec<(u32, String)>, StoreError> {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS schema_migrations (
                version    INTEGER PRIMARY KEY,
                name       TEXT NOT NULL,
                checksum   TEXT NOT NULL,
                applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
            )",
        )
        .map_err(self.sql_err())?;
        let mut stmt = conn
            .prepare("SELECT version, checksum FROM schema_migrations ORDER BY version")
            .map_err(self.sql_err())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.sql_err())?;
        rows.collect::<Result<_, _>>().map_err(self.sql_err())
    }

    /// Checks the recorded history against the embedded migrations and returns what is pending.
    fn pending_in(&self, conn: &Connection) -> Result<Vec<&'static Migration>, StoreError> {
        let applied = self.applied(conn)?;
        let known = MIGRATIONS.len() as u32;
        if let Some((found, _)) = applied.iter().find(|(v, _)| *v > known) {
            return Err(StoreError::TooNew {
                path: self.path.to_path_buf(),
                found: *found,
                known,
            });
        }
        for (version, recorded) in &applied {
            let migration = &MIGRATIONS[*version as usize - 1];
            let embedded = migration.checksum();
            if *recorded != embedded {
                return Err(StoreError::Edited {
                    path: self.path.to_path_buf(),
                    file: migration.file_name(),
                    recorded: recorded.clone(),
                    embedded,
                });
            }
        }
        Ok(MIGRATIONS
            .iter()
            .filter(|m| !applied.iter().any(|(v, _)| *v == m.version))
            .collect())
    }

    /// The migrations not yet applied, without applying anything.
    pub fn pending(&self) -> Result<Vec<&'static Migration>, StoreError> {
        let conn = self.lock();
        self.pending_in(&conn)
    }

    /// Applies every pending migration, each in its own transaction, in version order.
    ///
    /// Idempotent: a second call applies nothing. A migration that fails leaves no trace, and the
    /// ones before it stay applied.
    pub fn migrate(&self) -> Result<Vec<Applied>, StoreError> {
        let mut conn = self.lock();
        let pending = self.pending_in(&conn)?;
        self.apply(&mut conn, pending)
    }

    /// Applies `pending`, skipping any version another process recorded since it was computed.
    fn apply(
        &self,
        conn: &mut Connection,
        pending: Vec<&'static Migration>,
    ) -> Result<Vec<Applied>, StoreError> {
        let mut done = Vec::with_capacity(pending.len());
        for migration in pending {
            let fail = |source| StoreError::Migration {
                path: self.path.to_path_buf(),
                file: migration.file_name(),
                source,
            };
            // IMMEDIATE takes the write lock before reading: a second process migrating the same
            // file waits here (busy timeout), then sees the version applied and skips it, instead
            // of both applying it and one failing on `table already exists`.
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(fail)?;
            let applied_meanwhile: bool = tx
                .query_row(
                    "SELECT EXISTS (SELECT 1 FROM schema_migrations WHERE version = ?1)",
                    [migration.version],
                    |r| r.get(0),
                )
                .map_err(fail)?;
            if applied_meanwhile {
                continue;
            }
            tx.execute_batch(migration.sql).map_err(fail)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (?1, ?2, ?3)",
                params![migration.version, migration.name, migration.checksum()],
            )
            .map_err(fail)?;
            tx.commit().map_err(fail)?;
            tracing::info!(
                version = migration.version,
                name = migration.name,
                "applied migration"
            );
            done.push(Applied {
                version: migration.version,
                name: migration.name,
            });
        }
        Ok(done)
    }

    /// The repository id cached for a tenant, if a preflight stored one.
    pub async fn tenant_repo_id(&self, repo: &str) -> Result<Option<u64>, StoreError> {
        let repo = repo.to_owned();
        self.read(move |c| {
            c.query_row("SELECT repo_id FROM tenants WHERE repo = ?1", [repo], |r| {
                r.get::<_, Option<i64>>(0)
            })
            .optional()
            .map(|v| v.flatten().map(|id| id as u64))
        })
        .await
    }

    /// Records a tenant's repository id.
    pub async fn set_tenant_repo_id(&self, repo: &str, repo_id: u64) -> Result<(), StoreError> {
        let repo = repo.to_owned();
        self.write(move |c| {
            c.execute(
                "INSERT INTO tenants (repo, repo_id, updated_at)
                 VALUES (?1, ?2, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
                 ON CONFLICT (repo) DO UPDATE SET repo_id = excluded.repo_id, updated_at = excluded.updated_at",
                params![repo, repo_id as i64],
            )
            .map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fresh() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path().join("state/productbuilder.db")).unwrap();
        (dir, store)
    }

    #[test]
    fn migrations_are_numbered_from_one_without_gaps() {
        assert!(!MIGRATIONS.is_empty());
        for (i, m) in MIGRATIONS.iter().enumerate() {
            assert_eq!(m.version as usize, i + 1);
        }
    }

    #[test]
    fn migrate_applies_everything_once_and_is_idempotent() {
        let (_dir, store) = fresh();
        assert_eq!(store.pending().unwrap().len(), MIGRATIONS.len());
        let applied = store.migrate().unwrap();
        assert_eq!(applied.len(), MIGRATIONS.len());
        assert!(store.pending().unwrap().is_empty());
        assert!(store.migrate().unwrap().is_empty());
        let journal: String = store
            .lock()
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(journal, "wal");
    }

    /// Two daemons (or `migrate` while `run` starts) on one fresh file: the one that planned
    /// first but writes second skips what the other applied in between, instead of failing on a
    /// table that now exists.
    #[test]
    fn a_migration_applied_by_another_process_meanwhile_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("productbuilder.db");
        let (first, second) = (Store::open(&path).unwrap(), Store::open(&path).unwrap());
        let planned = first.pending().unwrap();
        assert_eq!(planned.len(), MIGRATIONS.len());
        assert_eq!(second.migrate().unwrap().len(), MIGRATIONS.len());
        let applied = first.apply(&mut first.lock(), planned).unwrap();
        assert!(applied.is_empty(), "{applied:?}");
        assert!(first.pending().unwrap().is_empty());
    }

    #[test]
    fn migrations_survive_reopening_the_file() {
        let (dir, store) = fresh();
        store.migrate().unwrap();
        drop(store);
        let again = Store::open(dir.path().join("state/productbuilder.db")).unwrap();
        assert!(again.pending().unwrap().is_empty());
    }

    #[test]
    fn a_database_from_a_newer_binary_is_refused() {
        let (_dir, store) = fresh();
        store.migrate().unwrap();
        store
            .lock()
            .execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (999, 'future', 'x')",
                [],
            )
            .unwrap();
        let err = store.migrate().unwrap_err();
        assert!(
            matches!(err, StoreError::TooNew { found: 999, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("newer than this binary"));
    }

    #[test]
    fn an_edited_migration_is_refused_by_name() {
        let (_dir, store) = fresh();
        store.migrate().unwrap();
        store
            .lock()
            .execute(
                "UPDATE schema_migrations SET checksum = '0' WHERE version = 1",
                [],
            )
            .unwrap();
        let err = store.migrate().unwrap_err().to_string();
        assert!(
            err.contains("migrations/0001_kernel.sql was changed"),
            "{err}"
        );
    }

    #[test]
    fn a_failed_migration_leaves_no_trace() {
        let (_dir, store) = fresh();
        // Simulate a half-applied state left by hand: the table already exists, so 0001 fails.
        store
            .lock()
            .execute_batch("CREATE TABLE tenants (x INTEGER)")
            .unwrap();
        let err = store.migrate().unwrap_err().to_string();
        assert!(err.contains("migrations/0001_kernel.sql failed"), "{err}");
        assert_eq!(store.pending().unwrap().len(), MIGRATIONS.len());
    }

    #[tokio::test]
    async fn tenant_repo_ids_round_trip() {
        let (_dir, store) = fresh();
        store.migrate().unwrap();
        assert_eq!(store.tenant_repo_id("acme/shop").await.unwrap(), None);
        store.set_tenant_repo_id("acme/shop", 42).await.unwrap();
        store.set_tenant_repo_id("acme/shop", 43).await.unwrap();
        assert_eq!(store.tenant_repo_id("acme/shop").await.unwrap(), Some(43));
        assert!(store.ping().await);
    }

    /// The writer holds a transaction open (a large cache write, a long sync page); a read on
    /// another task still answers, from the last committed state, and sees the write once it is
    /// committed. Before readers existed, this read waited for the writer's lock: the test would
    /// hit its deadline.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_completes_while_a_write_transaction_is_open() {
        let (_dir, store) = fresh();
        store.migrate().unwrap();
        store.set_tenant_repo_id("acme/shop", 1).await.unwrap();
        let (opened_tx, opened) = std::sync::mpsc::channel::<()>();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let writer = tokio::spawn({
            let store = store.clone();
            async move {
                store
                    .write(move |c| {
                        let tx = c.transaction()?;
                        tx.execute(
                            "UPDATE tenants SET repo_id = 2 WHERE repo = 'acme/shop'",
                            [],
                        )?;
                        opened_tx.send(()).unwrap();
                        released.recv().unwrap();
                        tx.commit()
                    })
                    .await
            }
        });
        tokio::task::spawn_blocking(move || opened.recv().unwrap())
            .await
            .unwrap();

        let deadline = Duration::from_secs(30);
        let during = tokio::time::timeout(deadline, store.tenant_repo_id("acme/shop")).await;
        let pinged = tokio::time::timeout(deadline, store.ping()).await;
        // Released before asserting, so that a failure is reported instead of hanging on the
        // writer's blocking task at shutdown.
        release.send(()).unwrap();
        let during = during
            .expect("a read must not wait for the writer")
            .unwrap();
        assert_eq!(during, Some(1), "an uncommitted write is not visible");
        assert!(
            pinged.expect("/readyz's ping must not wait for the writer"),
            "ping"
        );

        writer.await.unwrap().unwrap();
        assert_eq!(store.tenant_repo_id("acme/shop").await.unwrap(), Some(2));
    }

    #[tokio::test]
    async fn readers_refuse_writes() {
        let (_dir, store) = fresh();
        store.migrate().unwrap();
        let err = store
            .read(|c| c.execute("DELETE FROM tenants", []))
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Sql { .. }), "{err}");
    }

    /// More reads at once than the pool has connections: the extra ones wait for a connection
    /// to come back, and all answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_reads_than_readers_all_answer() {
        let (_dir, store) = fresh();
        store.migrate().unwrap();
        store.set_tenant_repo_id("acme/shop", 7).await.unwrap();
        let reads: Vec<_> = (0..Readers::MAX * 4)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { store.tenant_repo_id("acme/shop").await })
            })
            .collect();
        for read in reads {
            assert_eq!(read.await.unwrap().unwrap(), Some(7));
        }
    }

    /// Two daemons (or `migrate` beside `run`) opening one fresh file and migrating at the same
    /// moment: both succeed, and every migration is applied exactly once.
    #[test]
    fn two_stores_migrating_one_file_at_once_both_succeed() {
        for _ in 0..5 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("productbuilder.db");
            let start = Arc::new(std::sync::Barrier::new(2));
            let migrating: Vec<_> = (0..2)
                .map(|_| {
                    let (path, start) = (path.clone(), start.clone());
                    std::thread::spawn(move || {
                        start.wait();
                        Store::open(&path)?.migrate()
                    })
                })
                .collect();
            let applied: usize = migrating
                .into_iter()
                .map(|t| t.join().unwrap().expect("both migrations succeed").len())
                .sum();
            assert_eq!(applied, MIGRATIONS.len());
            assert!(Store::open(&path).unwrap().pending().unwrap().is_empty());
        }
    }

    #[tokio::test]
    async fn in_memory_reads_use_the_writer() {
        let store = Store::in_memory().unwrap();
        store.migrate().unwrap();
        store.set_tenant_repo_id("acme/shop", 3).await.unwrap();
        assert_eq!(store.tenant_repo_id("acme/shop").await.unwrap(), Some(3));
    }

    /// The last handle closes the readers first, then the writer, which checkpoints and removes
    /// the WAL: no `-wal` file is left beside a database nobody has open.
    #[tokio::test]
    async fn closing_the_store_leaves_no_wal_behind() {
        let (dir, store) = fresh();
        store.migrate().unwrap();
        store.set_tenant_repo_id("acme/shop", 1).await.unwrap();
        assert_eq!(store.tenant_repo_id("acme/shop").await.unwrap(), Some(1));
        drop(store);
        let wal = dir.path().join("state/productbuilder.db-wal");
        assert!(!wal.exists(), "{} is left behind", wal.display());
    }
}
