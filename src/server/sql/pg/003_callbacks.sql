-- Schema version 3: a callback owed outlives the process that owes it (callback.c).
-- callback_lease_until is NULL when nothing is owed: no callback URL, the job did not end done or
-- failed, or its delivery succeeded or gave up. Otherwise the callback is owed and the column is its
-- lease: callback_node (a process's worker_id) delivers it and renews the lease while it is queued
-- there; once the lease is past, any process claims it (FOR UPDATE SKIP LOCKED) and takes it over.
-- The write that ends a job sets both, so the job's end and the duty to call back commit together.
ALTER TABLE jobs ADD COLUMN callback_lease_until timestamptz, ADD COLUMN callback_node text;
-- Upgrading: what schema 2 servers delivered at start (SQLite) is owed now, at once: jobs that ended
-- done or failed in the last 24 hours with a callback and no attempt recorded. Older ones stay quiet.
UPDATE jobs SET callback_lease_until = now()
  WHERE status IN (2, 3) AND callback IS NOT NULL AND callbacks_json = '[]'::jsonb
    AND COALESCE(finished_at, failed_at) > to_char((now() - interval '24 hours') AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"');
CREATE INDEX jobs_callbacks_owed ON jobs (callback_lease_until) WHERE callback_lease_until IS NOT NULL;
