-- GitHub polling state.

-- Conditional-request cache: the last ETag and body of every polled URL, per stable identity
-- (installation:{id} or token:{hash}), so that a restart or a renewed token still gets 304s.
CREATE TABLE http_cache (
    identity   TEXT NOT NULL,
    url        TEXT NOT NULL,
    etag       TEXT NOT NULL,
    body       BLOB NOT NULL,
    next_url   TEXT,                 -- the page's Link rel="next", kept for 304 answers
    stored_at  TEXT NOT NULL,
    PRIMARY KEY (identity, url)
) STRICT;

-- Pull requests as last polled. Written by worker:pulls alone.
CREATE TABLE pulls (
    repo                TEXT NOT NULL,
    number              INTEGER NOT NULL,
    state               TEXT NOT NULL CHECK (state IN ('open', 'closed')),
    title               TEXT NOT NULL,
    head_sha            TEXT NOT NULL,
    head_ref            TEXT NOT NULL,
    head_repo           TEXT,            -- owner/name of the head repository; NULL when deleted
    fork                INTEGER NOT NULL,
    author              TEXT NOT NULL,
    author_association  TEXT NOT NULL,
    draft               INTEGER NOT NULL,
    labels              TEXT NOT NULL,   -- JSON array of names
    updated_at          TEXT,            -- GitHub's
    seen_at             TEXT NOT NULL,   -- when this head_sha was first seen by us
    closed_at           TEXT,
    PRIMARY KEY (repo, number)
) STRICT;

-- Issues (and pull requests, as the issues API lists them) changed since the cursor.
CREATE TABLE issues (
    repo        TEXT NOT NULL,
    number      INTEGER NOT NULL,
    title       TEXT NOT NULL,
    state       TEXT NOT NULL,
    author      TEXT NOT NULL,
    is_pull     INTEGER NOT NULL,
    labels      TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    PRIMARY KEY (repo, number)
) STRICT;

-- Issue and pull-request comments, for commands such as /preview.
CREATE TABLE comments (
    repo          TEXT NOT NULL,
    id            INTEGER NOT NULL,
    issue_number  INTEGER NOT NULL,
    author        TEXT NOT NULL,
    body          TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL,
    PRIMARY KEY (repo, id)
) STRICT;

-- Listing cursors: the newest updated_at processed, and the ids processed at exactly that
-- second (GitHub's `since` is inclusive and has one-second resolution).
CREATE TABLE cursors (
    repo        TEXT NOT NULL,
    stream      TEXT NOT NULL,           -- issues | comments
    updated_at  TEXT NOT NULL,
    ids         TEXT NOT NULL,           -- JSON array
    PRIMARY KEY (repo, stream)
) STRICT;

-- When each tenant was last polled and last saw a change.
CREATE TABLE poll_state (
    repo            TEXT PRIMARY KEY,
    last_poll_at    TEXT,
    last_change_at  TEXT
) STRICT;
