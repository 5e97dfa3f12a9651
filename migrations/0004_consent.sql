-- Consent per commit (issue 8): which head commits a writer approved for a preview.

-- Every head commit each pull request had, and when the poller first saw it as the head (a
-- `/preview approve` comment approves the head the daemon had seen when it was written). Written
-- by worker:pulls alone.
CREATE TABLE pull_heads (
    repo     TEXT NOT NULL,
    number   INTEGER NOT NULL,
    sha      TEXT NOT NULL,
    seen_at  TEXT NOT NULL,              -- RFC 3339, UTC; the latest time it became the head
    PRIMARY KEY (repo, number, sha)
) STRICT;

-- Each consent the previews reconciler considered, once: a `labeled` event or a `/preview
-- approve` comment, granted when its author had write access then. Written by the previews
-- reconciler alone.
CREATE TABLE consents (
    repo         TEXT NOT NULL,
    number       INTEGER NOT NULL,
    source       TEXT NOT NULL,          -- label:{event id} | comment:{comment id}
    how          TEXT NOT NULL CHECK (how IN ('label', 'comment')),
    sha          TEXT,                   -- the head commit it approves; NULL: none known then
    given_by     TEXT NOT NULL,          -- the GitHub login
    given_at     TEXT NOT NULL,          -- when it was given (GitHub's created_at)
    granted      INTEGER NOT NULL,       -- 1 when `by` had write, maintain or admin access
    recorded_at  TEXT NOT NULL,
    PRIMARY KEY (repo, number, source)
) STRICT;

-- The head commit that waits for approval while the preview stays at an approved one.
ALTER TABLE previews ADD COLUMN waiting_sha TEXT;
