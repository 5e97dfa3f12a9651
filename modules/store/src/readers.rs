//! The read-only side of the store: a small pool of connections opened read-only, so that a read
//! never waits behind the writer's lock.
//!
//! In WAL mode a reader sees the last committed state and neither blocks nor is blocked by the
//! one writer; only two *writers* exclude each other. So the pool's only limit is how many reads
//! run at once: past [`Readers::MAX`] a read waits for a connection to come back (on the blocking
//! pool, never on an async worker thread).

use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

/// The read-only connections of one database file.
#[derive(Debug)]
pub(crate) struct Readers {
    path: PathBuf,
    slots: Mutex<Slots>,
    returned: Condvar,
}

#[derive(Debug, Default)]
struct Slots {
    idle: Vec<Connection>,
    /// Connections open now, idle or lent out.
    open: usize,
}

impl Readers {
    /// Reads that may run at once. Small: the daemon's readers are `/readyz`, `/metrics`, the
    /// dashboard, the API and the pollers' lookups, each a short query.
    pub(crate) const MAX: usize = 4;

    pub(crate) fn new(path: &Path) -> Readers {
        Readers {
            path: path.to_path_buf(),
            slots: Mutex::new(Slots::default()),
            returned: Condvar::new(),
        }
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        // The guard only ever holds the list of idle connections: a panic elsewhere cannot leave
        // it inconsistent.
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lends a connection: an idle one, a new one while fewer than [`Readers::MAX`] are open, or
    /// else the first one returned. Blocking: call it on the blocking pool.
    pub(crate) fn lend(&self) -> rusqlite::Result<Lent<'_>> {
        let mut slots = self.slots();
        loop {
            if let Some(conn) = slots.idle.pop() {
                return Ok(Lent {
                    readers: self,
                    conn: Some(conn),
                });
            }
            if slots.open < Self::MAX {
                slots.open += 1;
                // Opened without the lock held: opening touches the file.
                drop(slots);
                return match open_read_only(&self.path) {
                    Ok(conn) => Ok(Lent {
                        readers: self,
                        conn: Some(conn),
                    }),
                    Err(e) => {
                        self.slots().open -= 1;
                        self.returned.notify_one();
                        Err(e)
                    }
                };
            }
            slots = self.returned.wait(slots).unwrap_or_else(|p| p.into_inner());
        }
    }
}

/// One reader connection, back in the pool when dropped (also when the read panicked: a
/// read-only connection holds nothing that a panic could leave half-done; an open transaction is
/// rolled back by its guard).
pub(crate) struct Lent<'a> {
    readers: &'a Readers,
    conn: Option<Connection>,
}

impl std::ops::Deref for Lent<'_> {
    type Target = Connection;
    fn deref(&self) -> &Connection {
        self.conn.as_ref().expect("present until dropped")
    }
}

impl std::ops::DerefMut for Lent<'_> {
    fn deref_mut(&mut self) -> &mut Connection {
        self.conn.as_mut().expect("present until dropped")
    }
}

impl Drop for Lent<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        let mut slots = self.readers.slots();
        if conn.is_autocommit() {
            slots.idle.push(conn);
        } else {
            // A transaction left open (`BEGIN` by hand, then an error) would pin an old snapshot
            // for every later read on this connection: close it instead of lending it again.
            slots.open -= 1;
            drop(conn);
        }
        drop(slots);
        self.readers.returned.notify_one();
    }
}

/// Opens `path` read-only. `query_only` as well, so that even a statement that would write
/// through some path SQLite allows a read-only handle (a temp table) is refused.
fn open_read_only(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    // Readers wait only for WAL recovery after a crash, never for the writer.
    conn.busy_timeout(Duration::from_secs(5))?;
    conn.pragma_update(None, "query_only", "ON")?;
    Ok(conn)
}
