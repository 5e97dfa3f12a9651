-- When a pull request that left the open listing was merged (GitHub's merged_at, as the
-- confirming GET answered); NULL while open, or when it was closed without a merge.
ALTER TABLE pulls ADD COLUMN merged_at TEXT;
