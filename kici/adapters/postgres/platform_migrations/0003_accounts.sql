-- Dashboard accounts: users, their org memberships and their bearer tokens.
--
-- Tokens are shown once when issued; only their SHA-256 hex digest is stored, plus the first
-- characters (token_prefix) so an operator can tell tokens apart when revoking.
-- Roles are RBAC-05's built-ins; memberships go with the org or the user.

CREATE TABLE platform_users (
    id text PRIMARY KEY,
    email text NOT NULL,
    display_name text,
    created_at timestamptz NOT NULL
);

CREATE UNIQUE INDEX platform_users_email_idx ON platform_users (lower(email));

CREATE TABLE org_memberships (
    org_id text NOT NULL REFERENCES orgs (id) ON DELETE CASCADE,
    user_id text NOT NULL REFERENCES platform_users (id) ON DELETE CASCADE,
    role text NOT NULL CHECK (role IN ('owner', 'member')),
    created_at timestamptz NOT NULL,
    PRIMARY KEY (org_id, user_id)
);

CREATE INDEX org_memberships_user_idx ON org_memberships (user_id);

CREATE TABLE dashboard_tokens (
    id text PRIMARY KEY,
    user_id text NOT NULL REFERENCES platform_users (id) ON DELETE CASCADE,
    token_hash text NOT NULL UNIQUE,
    token_prefix text NOT NULL,
    label text,
    created_at timestamptz NOT NULL,
    expires_at timestamptz,
    last_used_at timestamptz,
    revoked_at timestamptz
);

CREATE INDEX dashboard_tokens_user_idx ON dashboard_tokens (user_id);
