-- Webhook delivery dedup (HOOK-06) and the delivery log event_log (HOOK-19, spec 30 §9).

-- One row per delivery key; a row past expires_at may be taken over by the next sighting,
-- so the first-sighting test stays one atomic INSERT ... ON CONFLICT.
CREATE TABLE webhook_deliveries (
    delivery_key text PRIMARY KEY,
    routing_key text,
    first_seen_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

CREATE INDEX webhook_deliveries_expires_idx ON webhook_deliveries (expires_at);

CREATE TABLE event_log (
    id uuid PRIMARY KEY,
    org_id text NOT NULL,
    delivery_id text NOT NULL,
    routing_key text,
    event text,
    action text,
    source text CHECK (source IN ('relay', 'direct')),
    provider text,
    repo_identifier text,
    ref text,
    payload_key text,
    payload_omitted boolean NOT NULL DEFAULT false,
    payload_omitted_reason text CHECK (payload_omitted_reason IN ('size_exceeded', 'storage_failed')),
    payload_size_bytes bigint,
    payload_hash text,
    matched_count integer NOT NULL DEFAULT 0,
    status text NOT NULL CHECK (status IN (
        'received', 'processed', 'duplicate', 'lockfile_missing', 'lockfile_corrupt', 'failed')),
    run_id uuid,
    error_message text,
    received_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    archived_at timestamptz,
    archive_object_key text,
    UNIQUE (org_id, delivery_id)
);

CREATE INDEX event_log_received_idx ON event_log (org_id, received_at DESC);
