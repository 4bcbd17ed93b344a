-- Every write to a user adds one to its version; the API shows it only inside the user's
-- ETag, and a PATCH or DELETE with If-Match changes the row only while the version it
-- names is still the current one (checked and written in one statement).
ALTER TABLE users ADD COLUMN version BIGINT UNSIGNED NOT NULL DEFAULT 1;
