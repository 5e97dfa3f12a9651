-- Previews: one row per pull request that ever had one. Written by the previews reconciler alone.
-- A row is the persisted position of its deploy; every step is recorded here before it starts, so
-- a restart knows what was under way and converges from it.
CREATE TABLE previews (
    repo            TEXT NOT NULL,
    number          INTEGER NOT NULL,
    head_sha        TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN
                        ('pending', 'building', 'deploying', 'ready', 'failed', 'deleted')),
    stage           TEXT CHECK (stage IS NULL OR stage IN ('download', 'config', 'policy', 'build',
                        'start', 'migrate', 'health', 'post_deploy')),
    error           TEXT,
    log_tail        TEXT,
    url             TEXT NOT NULL,
    project         TEXT NOT NULL,           -- the Compose project name
    -- Why a deleted preview was removed: closed | unwanted | expired | evicted. An expired or
    -- evicted preview comes back only with a new head commit.
    deleted_reason  TEXT,
    note            TEXT,                    -- the contract's user_facing_note
    log_service     TEXT,
    log_file        TEXT,                    -- NULL: the service's container logs
    deployment_id   INTEGER,                 -- the GitHub Deployment of head_sha
    reported        TEXT,                    -- the last position reported to GitHub
    sha_changed_at  TEXT NOT NULL,           -- when head_sha was set: expiry and eviction order
    updated_at      TEXT NOT NULL,
    PRIMARY KEY (repo, number)
) STRICT;
