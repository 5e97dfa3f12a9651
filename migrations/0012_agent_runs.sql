-- The agent's runs (issue 12): one row per run (a mention answered), and its steps (the route
-- and every tool call, with bounded input and result). Kept `[llm] trace_retention`; pruned by
-- created_at. Read by GET /agent/runs/{id} and the dashboard.
CREATE TABLE agent_runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    repo           TEXT NOT NULL,
    channel        TEXT NOT NULL,
    thread_ts      TEXT NOT NULL,
    -- NULL when the router did not pick one (the model failed first).
    specialist     TEXT,
    -- The model and provider that answered last; NULL when none answered.
    model          TEXT,
    provider       TEXT,
    fallback_used  INTEGER NOT NULL,
    tokens_in      INTEGER NOT NULL,
    tokens_out     INTEGER NOT NULL,
    tokens_cache   INTEGER NOT NULL,
    -- Model calls made, and the whole run and the model's share of it, in milliseconds.
    llm_calls      INTEGER NOT NULL,
    latency_ms     INTEGER NOT NULL,
    llm_latency_ms INTEGER NOT NULL,
    outcome        TEXT NOT NULL,
    -- What went wrong, or which claims were replaced.
    detail         TEXT,
    -- Unix milliseconds.
    created_at     INTEGER NOT NULL
) STRICT;

CREATE INDEX agent_runs_created ON agent_runs (created_at);
CREATE INDEX agent_runs_thread ON agent_runs (channel, thread_ts);

CREATE TABLE agent_steps (
    run_id  INTEGER NOT NULL REFERENCES agent_runs (id) ON DELETE CASCADE,
    n       INTEGER NOT NULL,
    tool    TEXT NOT NULL,
    input   TEXT NOT NULL,
    result  TEXT NOT NULL,
    ok      INTEGER NOT NULL,
    PRIMARY KEY (run_id, n)
) STRICT;
