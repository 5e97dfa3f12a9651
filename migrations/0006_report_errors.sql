-- A report GitHub refused for good (403, 404, 422: the token lost access, the pull request or
-- repository is gone, a payload GitHub will never accept): the report key it was for and why.
-- That key is not sent again on every pass; a new status or head is a new key and is sent.
ALTER TABLE previews ADD COLUMN report_error TEXT;
ALTER TABLE previews ADD COLUMN report_error_key TEXT;
