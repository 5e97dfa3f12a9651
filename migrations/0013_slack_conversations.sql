-- The agent's conversations in Slack (issue 12).

-- With the agent ([llm]), every message of a tenant's channel the Slack module read or posted as
-- an answer: a thread is the conversation the agent reads (never re-fetched from Slack per run),
-- kept [llm] trace_retention. thread_ts is the message's own ts for a top-level message.
CREATE TABLE slack_messages (
    channel    TEXT NOT NULL,
    ts         TEXT NOT NULL,
    thread_ts  TEXT NOT NULL,
    user       TEXT NOT NULL,      -- the author's user id (the bot's own for its answers)
    from_bot   INTEGER NOT NULL,   -- 1: this bot wrote it (another integration's message is 0)
    text       TEXT NOT NULL,
    PRIMARY KEY (channel, ts)
) STRICT;
CREATE INDEX slack_messages_thread ON slack_messages (channel, thread_ts, ts);

-- Per conversation: a short summary of what the agent did in it, given to the next run.
CREATE TABLE slack_conversations (
    channel    TEXT NOT NULL,
    thread_ts  TEXT NOT NULL,
    summary    TEXT NOT NULL,
    PRIMARY KEY (channel, thread_ts)
) STRICT;

-- A thread that was a conversation before it was an item's: the agent filed the issue from it.
-- Its parent is a person's message, never edited by the module.
ALTER TABLE slack_threads ADD COLUMN adopted INTEGER NOT NULL DEFAULT 0;

-- An issue the agent is about to file from a conversation: written before the issue is created,
-- so that a pass that sees the new issue before it is linked adopts the conversation's thread
-- (matched by the daemon's own login as author and the title) instead of starting a second one.
CREATE TABLE slack_adoptions (
    repo        TEXT NOT NULL,
    channel     TEXT NOT NULL,
    thread_ts   TEXT NOT NULL,
    title       TEXT NOT NULL,
    intended_at INTEGER NOT NULL,  -- unix seconds; an intent older than a day is ignored
    PRIMARY KEY (repo, title)
) STRICT;

-- An answer's text, recorded after it was made and before it is posted: a post that failed (or a
-- daemon that died before posting) is posted again with the same text, never made again.
ALTER TABLE slack_answers ADD COLUMN text TEXT;
