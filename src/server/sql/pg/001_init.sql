-- mpass job store on PostgreSQL, schema version 1 (store_pg.c applies it in one transaction under an
-- advisory lock). Append new migrations as 002_*.sql; never edit one that has shipped.
-- Timestamps shown by the API are ISO 8601 text written by mpass (as in the SQLite store); the lease
-- uses the database's clock so that machines with skewed clocks agree on when it runs out.
CREATE TABLE tokens (
  name text NOT NULL,
  sha256 text NOT NULL UNIQUE,
  created_at text NOT NULL
);

CREATE TABLE tunes (
  id bigserial PRIMARY KEY,
  owner text NOT NULL,
  title text,
  name text,
  token text,
  model_type text NOT NULL,
  branch text NOT NULL,
  file_name text,
  created_at text NOT NULL
);

-- status: 0 queued, 1 running, 2 done, 3 failed, 4 cancelled (ms_status)
CREATE TABLE jobs (
  id bigserial PRIMARY KEY,
  owner text NOT NULL,
  tune_id bigint NOT NULL DEFAULT 0,
  document text NOT NULL,
  is_json integer NOT NULL,
  params_json text NOT NULL,
  model_path text,
  inputs_dir text,
  callback text,
  idempotency_key text,
  status integer NOT NULL,
  progress double precision NOT NULL DEFAULT 0,
  attempts integer NOT NULL DEFAULT 0,
  created_at text NOT NULL,
  started_at text,
  finished_at text,
  failed_at text,
  fail_message text,
  callbacks_json jsonb NOT NULL DEFAULT '[]',
  cancel_requested boolean NOT NULL DEFAULT false,
  worker_id text,          -- who holds the lease while running
  lease_until timestamptz  -- running past this without a heartbeat: the worker is presumed dead
);
CREATE UNIQUE INDEX jobs_idem ON jobs (owner, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_queue ON jobs (status, id);
CREATE INDEX jobs_owner ON jobs (owner, tune_id, id);
CREATE INDEX jobs_lease ON jobs (lease_until) WHERE status = 1;

-- Files kept in the database (outputs, uploads), split in chunks of at most 1 MiB.
CREATE TABLE blobs (
  key text NOT NULL,
  chunk_no integer NOT NULL,
  data bytea NOT NULL,
  PRIMARY KEY (key, chunk_no)
);
