-- Execution telemetry the Platform keeps for the dashboard (20a §6.4: execution.status,
-- job.status.forward, step.status.forward, log.chunk, state.replay).
--
-- Every key starts with the org of the orchestrator connection that reported the row (never an
-- org named in a message), so one tenant's orchestrator can never write or shadow another's rows.
-- Rows are upserted by the ids the messages carry. A status is taken only from a message whose
-- (timestamp, rank) is not below the stored (status_ts, status_rank): telemetry that arrives late
-- or twice never moves a run, job or step back (rank orders states of equal timestamp; see
-- kici.adapters.postgres.platform_telemetry_store).
--
-- Jobs, steps and logs do not reference platform_runs: they may arrive before the run's first
-- execution.status, and are shown once it does.

CREATE TABLE platform_runs (
    org_id text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    run_id text NOT NULL,
    connection_id text NOT NULL,
    workflow_name text NOT NULL,
    status text NOT NULL,
    status_ts bigint NOT NULL,
    status_rank smallint NOT NULL,
    started_at bigint NOT NULL,
    completed_at bigint,
    duration_ms double precision,
    repo_identifier text,
    sha text,
    ref text,
    trigger_event text,
    commit_message text,
    job_count double precision,
    routing_key text,
    parent_run_id text,
    original_run_id text,
    triggered_by text,
    failure_reason text,
    first_seen_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, run_id)
);

CREATE INDEX platform_runs_recent_idx ON platform_runs (org_id, started_at DESC, run_id DESC);
CREATE INDEX platform_runs_run_id_idx ON platform_runs (run_id);

CREATE TABLE platform_jobs (
    org_id text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    run_id text NOT NULL,
    job_id text NOT NULL,
    connection_id text NOT NULL,
    job_name text NOT NULL,
    -- NULL until the job's own status arrives (a step.status.forward may come first).
    status text,
    status_ts bigint,
    status_rank smallint,
    matrix_values jsonb,
    started_at bigint,
    completed_at bigint,
    duration_ms double precision,
    error_message text,
    agent_id text,
    orchestrator_id text,
    runs_on_labels text[],
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, run_id, job_id)
);

CREATE TABLE platform_steps (
    org_id text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    run_id text NOT NULL,
    job_id text NOT NULL,
    step_index integer NOT NULL CHECK (step_index >= 0),
    connection_id text NOT NULL,
    step_name text NOT NULL,
    state text NOT NULL,
    status_ts bigint NOT NULL,
    status_rank smallint NOT NULL,
    data jsonb,
    secrets_accessed text[],
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, run_id, job_id, step_index)
);

-- Per job: the gap-free chunk sequence. Appending bumps it, which row-locks the job until commit,
-- so a reader paging with after=<sequence> never skips a chunk that commits later.
CREATE TABLE platform_job_logs (
    org_id text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    run_id text NOT NULL,
    job_id text NOT NULL,
    sequence bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (org_id, run_id, job_id)
);

-- Per step: what was stored and what the per-step cap dropped.
CREATE TABLE platform_step_logs (
    org_id text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    run_id text NOT NULL,
    job_id text NOT NULL,
    step_index integer NOT NULL CHECK (step_index >= -1),
    line_count integer NOT NULL DEFAULT 0,
    byte_count bigint NOT NULL DEFAULT 0,
    dropped_lines bigint NOT NULL DEFAULT 0,
    truncated boolean NOT NULL DEFAULT false,
    PRIMARY KEY (org_id, run_id, job_id, step_index)
);

CREATE TABLE platform_log_chunks (
    org_id text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    run_id text NOT NULL,
    job_id text NOT NULL,
    sequence bigint NOT NULL,
    step_index integer NOT NULL CHECK (step_index >= -1),
    first_line integer NOT NULL CHECK (first_line >= 0),
    lines text[] NOT NULL,
    logged_at bigint NOT NULL,
    message_id text NOT NULL,
    connection_id text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (org_id, run_id, job_id, sequence),
    -- A chunk replayed after a reconnect carries its original messageId: stored once.
    UNIQUE (org_id, run_id, job_id, message_id)
);

CREATE INDEX platform_log_chunks_step_idx ON platform_log_chunks (org_id, run_id, job_id, step_index, first_line);
