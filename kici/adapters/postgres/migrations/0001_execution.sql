-- Runs, jobs, needs edges and steps (spec 10 §3, §8, §14).
-- Every job status change is guarded in the store; the CHECK constraints keep the
-- vocabularies of kici.domain.execution.states, which a contract test compares.

CREATE FUNCTION kici_job_terminal(status text) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN status IN ('success', 'failed', 'cancelled', 'skipped', 'timed_out_stale', 'drift_dropped');

-- The needs gate's reading of execution_job_needs.run_on, the same as
-- kici.domain.execution.needs.parse_run_on_column: a JSON array of terminal statuses
-- or a `when` keyword; anything malformed or empty reads as ["success"].
CREATE FUNCTION kici_run_on(raw text) RETURNS text[]
LANGUAGE plpgsql IMMUTABLE PARALLEL SAFE
AS $$
DECLARE
    doc jsonb;
    statuses text[];
BEGIN
    BEGIN
        doc := raw::jsonb;
    EXCEPTION WHEN others THEN
        RETURN ARRAY['success'];
    END;
    IF jsonb_typeof(doc) = 'string' THEN
        RETURN CASE doc #>> '{}'
            WHEN 'on-success' THEN ARRAY['success']
            WHEN 'always' THEN
                ARRAY['success', 'failed', 'cancelled', 'skipped', 'timed_out_stale', 'drift_dropped']
            WHEN 'on-skip' THEN ARRAY['success', 'skipped']
            WHEN 'on-failure' THEN ARRAY['failed', 'timed_out_stale']
            ELSE ARRAY['success']
        END;
    END IF;
    IF jsonb_typeof(doc) <> 'array' OR jsonb_array_length(doc) = 0 THEN
        RETURN ARRAY['success'];
    END IF;
    IF EXISTS (
        SELECT 1 FROM jsonb_array_elements(doc) AS e(value)
        WHERE jsonb_typeof(e.value) <> 'string' OR NOT kici_job_terminal(e.value #>> '{}')
    ) THEN
        RETURN ARRAY['success'];
    END IF;
    SELECT array_agg(DISTINCT e.value) INTO statuses FROM jsonb_array_elements_text(doc) AS e(value);
    RETURN statuses;
END;
$$;

CREATE TABLE execution_runs (
    id uuid PRIMARY KEY,
    workflow_name text NOT NULL,
    routing_key text,
    org_id text,
    repo_identifier text,
    ref text,
    sha text,
    event text,
    delivery_id text,
    request_id text,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'success', 'failed', 'cancelled', 'cancelling', 'held')),
    check_mode text NOT NULL DEFAULT 'apply' CHECK (check_mode IN ('apply', 'check', 'check-fail-on-drift')),
    drift_detected boolean NOT NULL DEFAULT false,
    is_test_run boolean NOT NULL DEFAULT false,
    fixture_id text,
    workflow_timeout_ms bigint CHECK (workflow_timeout_ms > 0),
    init_failure jsonb,
    failure_reason text,
    cancelled_by text,
    log_bytes bigint NOT NULL DEFAULT 0,
    parent_run_id uuid,
    original_run_id uuid,
    triggered_by text,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    started_at timestamptz,
    completed_at timestamptz,
    duration_ms bigint
);

CREATE INDEX execution_runs_open_idx ON execution_runs (created_at)
    WHERE status NOT IN ('success', 'failed', 'cancelled');

CREATE TABLE execution_jobs (
    id uuid PRIMARY KEY,
    run_id uuid NOT NULL REFERENCES execution_runs (id) ON DELETE CASCADE,
    name text NOT NULL,
    -- creation order: the needs gate walks jobs and edges in the order the pure model does
    ordinal integer NOT NULL,
    base_job_name text,
    fanout_index integer,
    group_name text,
    status text NOT NULL DEFAULT 'pending' CHECK (status IN (
        'pending', 'queued', 'running', 'recovering', 'cancelling',
        'success', 'failed', 'cancelled', 'skipped', 'timed_out_stale', 'drift_dropped')),
    needs_satisfied boolean NOT NULL DEFAULT false,
    ready_at timestamptz,
    -- unresolved dynamic-group needs: [{"group": g, "runOn": [...]}]; non-empty holds the job back
    pending_groups jsonb NOT NULL DEFAULT '[]',
    wave_gated boolean NOT NULL DEFAULT false,
    wave_max_parallel integer CHECK (wave_max_parallel >= 1),
    wave_fail_fast boolean,
    config jsonb,
    routing jsonb,
    matrix_values jsonb,
    outputs jsonb,
    init_failure jsonb,
    agent_id text,
    error_message text,
    log_bytes bigint NOT NULL DEFAULT 0,
    -- last log chunk sequence handed out; bumping it row-locks the job so sequences commit in order
    log_sequence bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    started_at timestamptz,
    completed_at timestamptz,
    last_heartbeat_at timestamptz,
    UNIQUE (run_id, name)
);

CREATE INDEX execution_jobs_unsatisfied_idx ON execution_jobs (run_id, needs_satisfied) WHERE NOT needs_satisfied;
CREATE INDEX execution_jobs_fanout_idx ON execution_jobs (run_id, base_job_name, fanout_index)
    WHERE base_job_name IS NOT NULL;
CREATE INDEX execution_jobs_active_idx ON execution_jobs (status, last_heartbeat_at)
    WHERE status IN ('running', 'cancelling', 'recovering');

-- No foreign key to execution_jobs: an upstream may be a dynamic-group member not created yet.
-- The primary key also serves the (run_id, job_name) lookups the spec lists an index for.
CREATE TABLE execution_job_needs (
    run_id uuid NOT NULL REFERENCES execution_runs (id) ON DELETE CASCADE,
    job_name text NOT NULL,
    upstream_name text NOT NULL,
    run_on text NOT NULL DEFAULT '["success"]',
    ordinal integer NOT NULL,
    PRIMARY KEY (run_id, job_name, upstream_name)
);

CREATE INDEX execution_job_needs_upstream_idx ON execution_job_needs (run_id, upstream_name);

CREATE TABLE execution_steps (
    run_id uuid NOT NULL REFERENCES execution_runs (id) ON DELETE CASCADE,
    job_id uuid NOT NULL REFERENCES execution_jobs (id) ON DELETE CASCADE,
    step_index integer NOT NULL,
    step_name text NOT NULL,
    status text NOT NULL CHECK (status IN ('running', 'success', 'failed', 'skipped', 'pending', 'cancelled')),
    step_type text NOT NULL DEFAULT 'step',
    started_at timestamptz,
    completed_at timestamptz,
    duration_ms bigint,
    exit_code integer,
    error_message text,
    log_path text,
    secrets_accessed text[] NOT NULL DEFAULT '{}',
    check_outcome text CHECK (check_outcome IN ('skipped', 'applied', 'declined', 'dry-run', 'no_check')),
    drift_summary text,
    drift jsonb,
    concurrency_kind text CHECK (concurrency_kind IN ('sequential', 'parallel-child', 'parallel-group')),
    group_id text,
    log_bytes bigint,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (run_id, job_id, step_index)
);

CREATE INDEX execution_steps_job_idx ON execution_steps (job_id, step_index);
