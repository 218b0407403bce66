-- Workflow registrations (HOOK-18, EVT-07, spec 30 §5.3): the registerable workflows of each repository's
-- default-branch lock, one row per (routing key, repository, workflow), and the registry version peers
-- compare to know when to reload their index.

CREATE TABLE workflow_registrations (
    id uuid PRIMARY KEY,
    customer_id text NOT NULL,
    routing_key text NOT NULL,
    repo_identifier text NOT NULL,
    workflow_name text NOT NULL,
    lock_entry jsonb NOT NULL,
    trigger_types text[] NOT NULL,
    provider_context jsonb NOT NULL DEFAULT '{}'::jsonb,
    disabled boolean NOT NULL DEFAULT false,
    commit_sha text,
    source_file text NOT NULL,
    is_global boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    UNIQUE (routing_key, repo_identifier, workflow_name)
);

CREATE INDEX workflow_registrations_customer_repo_idx ON workflow_registrations (customer_id, repo_identifier);
CREATE INDEX workflow_registrations_types_idx ON workflow_registrations USING gin (trigger_types);

-- One row; bumped in the transaction that changes registrations.
CREATE TABLE registry_versions (
    id boolean PRIMARY KEY DEFAULT true CHECK (id),
    version bigint NOT NULL
);

INSERT INTO registry_versions (id, version) VALUES (true, 0);
