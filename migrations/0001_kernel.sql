-- The kernel's own state. Later features add their tables in later migrations.

-- One row per configured repository, kept across restarts so that units get the repository id
-- without asking GitHub again.
CREATE TABLE tenants (
    repo        TEXT PRIMARY KEY,          -- owner/name, as configured
    repo_id     INTEGER,                   -- GitHub's numeric id, once a preflight saw it
    updated_at  TEXT NOT NULL              -- RFC 3339, UTC
) STRICT;
