-- The agent's closed loop (issue 12): the builds it delegated from a Slack thread, what it said
-- about them in that thread, and the follow-up builds it started when a preview failed.

-- One row per build the agent started: the first one for a request (`implement this` in an
-- issue's thread, attempt 0, follows NULL) and each fix (attempt n for the n-th fix of the same
-- request, follows = the build whose preview failed).
CREATE TABLE agent_builds (
    build_id    INTEGER PRIMARY KEY,
    repo        TEXT NOT NULL,
    issue       INTEGER NOT NULL,
    channel     TEXT NOT NULL,
    thread_ts   TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    follows     INTEGER REFERENCES agent_builds (build_id),
    -- Unix milliseconds.
    created_at  INTEGER NOT NULL
) STRICT;

CREATE INDEX agent_builds_repo ON agent_builds (repo);

-- Every event the narrator said (or meant to say), by its key `loop:{build}:{event}`. Several
-- events coalesce into one Slack message, whose metadata key is `message_key`. A row is written
-- before the post (posted_ts NULL) and completed after it, so a crash between the two is looked
-- up in the thread by `message_key` instead of posted again.
CREATE TABLE agent_narrations (
    key          TEXT PRIMARY KEY,
    repo         TEXT NOT NULL,
    channel      TEXT NOT NULL,
    thread_ts    TEXT NOT NULL,
    message_key  TEXT NOT NULL,
    posted_ts    TEXT,
    created_at   INTEGER NOT NULL
) STRICT;

CREATE INDEX agent_narrations_message ON agent_narrations (message_key);

-- A follow-up build meant for a failed preview: one per (failed build, the preview's head
-- commit), written before the build is enqueued, completed with its id after. An intent without
-- an id after a crash is looked up in the queue before anything is enqueued again.
CREATE TABLE agent_fixes (
    failed_build  INTEGER NOT NULL,
    head_sha      TEXT NOT NULL,
    repo          TEXT NOT NULL,
    pull_request  INTEGER NOT NULL,
    fix_build     INTEGER,
    -- Unix milliseconds.
    created_at    INTEGER NOT NULL,
    PRIMARY KEY (failed_build, head_sha)
) STRICT;
