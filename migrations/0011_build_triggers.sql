-- Builds started from GitHub (issue 11): each trigger the daemon considered, once. A trigger is a
-- `labeled` issue event (the builds label) or a comment whose first line is a /productbuilder
-- command. Written by the triggers worker alone.
CREATE TABLE build_triggers (
    repo         TEXT NOT NULL,
    source       TEXT NOT NULL,          -- label:{event id} | comment:{comment id}
    number       INTEGER NOT NULL,       -- the issue or pull request
    given_by     TEXT NOT NULL,          -- the GitHub login
    given_at     TEXT NOT NULL,          -- GitHub's created_at of the event or comment
    outcome      TEXT NOT NULL CHECK (outcome IN ('started', 'joined', 'refused', 'predates')),
                                         -- refused: given_by had no write access; predates: there
                                         -- at the repository's first pass, so never acted on
    build_id     INTEGER,                -- the build it started, or the active one it joined
    recorded_at  TEXT NOT NULL,          -- RFC 3339, UTC
    PRIMARY KEY (repo, source)
) STRICT;

-- The repositories whose first triggers pass is done: that pass records what is there as
-- `predates` (enabling builds on a busy repository must not start a build per old label). Ids,
-- not times: GitHub's clock and ours need not agree.
CREATE TABLE build_trigger_start (
    repo        TEXT PRIMARY KEY,
    started_at  TEXT NOT NULL            -- RFC 3339, UTC, our clock (for people)
) STRICT;
