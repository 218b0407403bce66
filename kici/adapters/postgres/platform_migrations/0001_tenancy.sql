-- The Platform's own database: tenants (orgs), their orchestrator API keys, the routing keys they own,
-- and the record of every webhook delivery the Platform took for a known routing key.
-- Later Platform migrations (telemetry, users, memberships, runs) use table names distinct from these.

CREATE TABLE orgs (
    id TEXT PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Only the SHA-256 hex of a key is stored; key_prefix (its first 12 characters) lets an operator
-- tell keys apart in listings without the key being recoverable.
CREATE TABLE api_keys (
    id UUID PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    name TEXT NOT NULL DEFAULT '',
    key_hash TEXT NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
    key_prefix TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);

CREATE INDEX api_keys_org_idx ON api_keys (org_id);

-- One owner per routing key: the primary key is what keeps two tenants from claiming the same key.
CREATE TABLE routing_keys (
    routing_key TEXT PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE INDEX routing_keys_org_idx ON routing_keys (org_id);

-- The body itself is not kept (the git host redelivers it); its size and SHA-256 identify it.
CREATE TABLE deliveries (
    id UUID PRIMARY KEY,
    org_id TEXT NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    routing_key TEXT NOT NULL,
    provider TEXT NOT NULL,
    delivery_id TEXT NOT NULL,
    event TEXT NOT NULL DEFAULT '',
    headers JSONB NOT NULL DEFAULT '{}',
    body_sha256 TEXT NOT NULL,
    body_size BIGINT NOT NULL CHECK (body_size >= 0),
    status TEXT NOT NULL CHECK (status IN (
        'accepted', 'rejected_signature', 'rejected_unknown_source', 'rejected_misconfigured',
        'no_orchestrator', 'ack_timeout'
    )),
    reason TEXT,
    http_status INTEGER NOT NULL,
    connection_id TEXT,
    received_at TIMESTAMPTZ NOT NULL,
    completed_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX deliveries_org_received_idx ON deliveries (org_id, received_at DESC);
CREATE INDEX deliveries_routing_key_received_idx ON deliveries (routing_key, received_at DESC);
