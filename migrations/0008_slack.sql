-- Slack: the threads of each tenant's issues and pull requests, and what was appended to them.

-- When a tenant's first Slack pass ran: items that existed before get no thread unless
-- [slack] backfill covers them.
CREATE TABLE slack_tenants (
    repo           TEXT PRIMARY KEY,
    first_pass_at  TEXT NOT NULL
) STRICT;

-- Items that never get a thread (they predate Slack for the tenant).
CREATE TABLE slack_skipped (
    repo    TEXT NOT NULL,
    number  INTEGER NOT NULL,
    PRIMARY KEY (repo, number)
) STRICT;

-- One thread per item, recorded when its parent is posted, before anything else goes to it.
CREATE TABLE slack_threads (
    repo         TEXT NOT NULL,
    number       INTEGER NOT NULL,
    channel      TEXT NOT NULL,
    parent_ts    TEXT NOT NULL,
    parent_text  TEXT NOT NULL,
    status_ts    TEXT,
    status_text  TEXT,               -- the status last written: edited only when it changes
    PRIMARY KEY (repo, number)
) STRICT;

-- Every message posted for an item (parent, status, events), keyed: written as 'intended'
-- before the post and 'sent' with its ts after, so that after a crash an intent without ts is
-- looked up in Slack (by the key in the message's metadata) before posting again.
CREATE TABLE slack_events (
    repo         TEXT NOT NULL,
    number       INTEGER NOT NULL,
    key          TEXT NOT NULL,      -- parent | status | comment:{id} | closed | merged
    state        TEXT NOT NULL CHECK (state IN ('intended', 'sent')),
    ts           TEXT,
    intended_at  TEXT NOT NULL,
    PRIMARY KEY (repo, number, key)
) STRICT;

-- Polling input: per channel, the newest top-level ts handled (thread_ts = ''), and per thread
-- the latest_reply handled.
CREATE TABLE slack_cursors (
    channel    TEXT NOT NULL,
    thread_ts  TEXT NOT NULL,
    seen_ts    TEXT NOT NULL,
    PRIMARY KEY (channel, thread_ts)
) STRICT;

-- Socket Mode: the event_ids handled, so a redelivery (also across reconnects) is handled once.
CREATE TABLE slack_socket_events (
    event_id     TEXT PRIMARY KEY,
    received_at  TEXT NOT NULL
) STRICT;
