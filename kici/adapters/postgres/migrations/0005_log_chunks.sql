-- Step log chunks (spec 10 §4.2, 20a log.chunk): sequence is per job, gap-free, in commit order.

CREATE TABLE log_chunks (
    run_id uuid NOT NULL REFERENCES execution_runs (id) ON DELETE CASCADE,
    job_id uuid NOT NULL REFERENCES execution_jobs (id) ON DELETE CASCADE,
    sequence bigint NOT NULL,
    step_index integer NOT NULL,
    lines text[] NOT NULL,
    byte_count integer NOT NULL,
    logged_at timestamptz NOT NULL,
    received_at timestamptz NOT NULL,
    PRIMARY KEY (job_id, sequence)
);

CREATE INDEX log_chunks_step_idx ON log_chunks (job_id, step_index, sequence);
