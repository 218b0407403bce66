-- The dispatch queue (spec 10 §3, §11-12; 20 §12, §18): one row per enqueued job,
-- FIFO by seq, taken with FOR UPDATE SKIP LOCKED.

CREATE TABLE dispatch_queue (
    id uuid PRIMARY KEY,
    seq bigint GENERATED ALWAYS AS IDENTITY,
    job_id uuid NOT NULL UNIQUE REFERENCES execution_jobs (id) ON DELETE CASCADE,
    run_id uuid NOT NULL REFERENCES execution_runs (id) ON DELETE CASCADE,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'dispatched', 'completed', 'failed', 'expired', 'recovering')),
    routing jsonb,
    dispatch_attempts integer NOT NULL DEFAULT 0 CHECK (dispatch_attempts >= 0),
    agent_id text,
    enqueued_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    dispatched_at timestamptz,
    expires_at timestamptz,
    error_message text,
    request_id text,
    ack_deadline timestamptz,
    ack_agent_id text,
    recovery_deadline timestamptz,
    recovery_agent_id text
);

CREATE INDEX dispatch_queue_pending_idx ON dispatch_queue (seq) WHERE status = 'pending';
CREATE INDEX dispatch_queue_expiry_idx ON dispatch_queue (expires_at)
    WHERE status = 'pending' AND expires_at IS NOT NULL;
CREATE INDEX dispatch_queue_ack_deadline_idx ON dispatch_queue (ack_deadline) WHERE ack_deadline IS NOT NULL;
CREATE INDEX dispatch_queue_recovery_deadline_idx ON dispatch_queue (recovery_deadline)
    WHERE recovery_deadline IS NOT NULL;
CREATE INDEX dispatch_queue_in_flight_idx ON dispatch_queue (status) WHERE status IN ('dispatched', 'recovering');
