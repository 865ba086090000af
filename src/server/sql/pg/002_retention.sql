-- Schema version 2: retention (retention.c). expired_at is when the sweep removed a job's outputs,
-- inputs and stored files; NULL while they are kept. The job row itself stays.
ALTER TABLE jobs ADD COLUMN expired_at text;
