-- Agent tokens (spec 20 §5.2, §18) and the registry of agents.

CREATE TABLE agent_tokens (
    id uuid PRIMARY KEY,
    token_hash text NOT NULL UNIQUE,
    token_prefix text NOT NULL,
    -- JSON list of labels as text; NULL means unscoped (the handshake parses and validates it)
    labels text,
    mandatory_labels text,
    agent_type text NOT NULL CHECK (agent_type IN ('ephemeral', 'static')),
    created_at timestamptz NOT NULL,
    last_seen_at timestamptz,
    created_by text NOT NULL,
    revoked_at timestamptz,
    expires_at timestamptz,
    consumed_at timestamptz
);

CREATE TABLE agents (
    agent_id text PRIMARY KEY,
    token_id uuid REFERENCES agent_tokens (id) ON DELETE SET NULL,
    status text NOT NULL CHECK (status IN ('connected', 'draining', 'disconnected')),
    labels text[] NOT NULL DEFAULT '{}',
    max_concurrency integer NOT NULL DEFAULT 1 CHECK (max_concurrency >= 1),
    active_jobs integer NOT NULL DEFAULT 0 CHECK (active_jobs >= 0),
    scaler_managed boolean NOT NULL DEFAULT false,
    platform text,
    arch text,
    version text,
    hostname text,
    properties jsonb NOT NULL DEFAULT '{}',
    instance_id text,
    registered_at timestamptz NOT NULL,
    last_seen_at timestamptz NOT NULL,
    disconnected_at timestamptz
);

CREATE INDEX agents_status_idx ON agents (status);
