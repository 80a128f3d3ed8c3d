-- A daemon that runs for years must not grow its audit log for ever.
--
-- A failure that repeats (an MBG down for a week, retried with backoff) is one row with a
-- count and the time of its latest repeat, not a row per attempt.
ALTER TABLE audit_log ADD COLUMN repeats INTEGER NOT NULL DEFAULT 1;
ALTER TABLE audit_log ADD COLUMN last_at INTEGER;

-- Pruning by age (audit.keep, audit.keep_security) reads the oldest rows first.
CREATE INDEX audit_log_at ON audit_log (at);
-- The console's filters and an extension's history, newest first; the streak check reads an
-- extension's newest row.
CREATE INDEX audit_log_extension ON audit_log (extension, id);
CREATE INDEX audit_log_actor ON audit_log (actor, id);
CREATE INDEX audit_log_action ON audit_log (action, id);
