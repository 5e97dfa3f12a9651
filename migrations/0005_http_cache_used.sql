-- When each cached answer was last used (read or written). Every `since=` and `sha=` URL the
-- pollers ever asked for has a row; rows nobody used for a while are pruned by
-- worker:http-cache:global, and the least recently used go first when the cache outgrows its cap.
ALTER TABLE http_cache ADD COLUMN used_at TEXT;
UPDATE http_cache SET used_at = stored_at;
CREATE INDEX http_cache_used_at ON http_cache (used_at);
