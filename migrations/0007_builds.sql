-- Builds (issue 11): the durable queue and its records. One row per build, written by the queue
-- alone (modules/builds/src/queue.rs); every status change also appends a build_audit row in the
-- same transaction. Times are Unix milliseconds (UTC), compared as integers.
CREATE TABLE builds (
    id               INTEGER PRIMARY KEY,
    repo             TEXT NOT NULL,              -- owner/name
    number           INTEGER,                    -- the issue or pull request; NULL: none
    spec             TEXT NOT NULL,              -- the validated BuildSpec, as JSON
    status           TEXT NOT NULL CHECK (status IN
                         ('pending', 'running', 'completed', 'failed', 'cancelled')),
    attempts         INTEGER NOT NULL DEFAULT 0, -- claims so far
    next_attempt_at  INTEGER NOT NULL,           -- not claimed before (retry backoff)
    lease_owner      TEXT,                       -- the runner holding a running build
    lease_until      INTEGER,                    -- its lease; past it, recovery takes the build
    cancel_requested INTEGER NOT NULL DEFAULT 0, -- seen by the runner at its next heartbeat
    step             TEXT,                       -- the last step recorded before it started
    interruptions    INTEGER NOT NULL DEFAULT 0, -- leases that expired (the daemon died)
    result           TEXT,                       -- the BuildResult, as JSON, once finished
    error            TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    finished_at      INTEGER
) STRICT;

-- One active build per issue or pull request: a second enqueue finds this row instead.
CREATE UNIQUE INDEX builds_one_active ON builds (repo, number)
    WHERE number IS NOT NULL AND status IN ('pending', 'running');
CREATE INDEX builds_claimable ON builds (status, next_attempt_at);
CREATE INDEX builds_by_repo ON builds (repo, id);

CREATE TABLE build_audit (
    id          INTEGER PRIMARY KEY,
    build_id    INTEGER NOT NULL REFERENCES builds (id),
    from_status TEXT,                            -- NULL: the build was created
    to_status   TEXT NOT NULL,
    at          INTEGER NOT NULL,
    reason      TEXT NOT NULL
) STRICT;
CREATE INDEX build_audit_by_build ON build_audit (build_id, id);
