"""Dashboard accounts on PostgreSQL: users, org memberships and dashboard tokens.

Tables: ``platform_migrations/0003_accounts.sql``; orgs come from the tenancy migration (``orgs``).
Only a token's SHA-256 hex digest is stored; `authenticate` looks a digest up, so the plain token
never reaches the database. Memberships are read on every authentication (no session cache, as
RBAC-02 asks), so removing a member or revoking a token takes effect on the next request.
``last_used_at`` is refreshed at most once a minute per token: a busy dashboard does not turn every
read into a write.

The record classes live here because ``kici.domain`` has no account model yet; the Platform's
services import them from this module.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import attrs
from psycopg import errors as pg_errors

from kici.adapters.postgres.database import Connection, Database
from kici.domain.store import StoreError, require_aware

LAST_USED_RESOLUTION: Final = timedelta(seconds=60)


class Role(StrEnum):
    """RBAC-05's built-in roles. Members read; owners also act on runs (``runs.write``, RBAC-03)."""

    OWNER = "owner"
    MEMBER = "member"


class DuplicateUserError(StoreError):
    """A user with this e-mail address (compared case-insensitively) exists."""


class UnknownOrgOrUserError(StoreError, LookupError):
    """A membership or token names an org or user that does not exist."""


@attrs.frozen(kw_only=True)
class PlatformUser:
    id: str
    email: str
    display_name: str | None
    created_at: datetime


@attrs.frozen(kw_only=True)
class OrgRef:
    id: str
    name: str


@attrs.frozen(kw_only=True)
class Membership:
    org_id: str
    user_id: str
    role: Role


@attrs.frozen(kw_only=True)
class NewToken:
    id: str
    user_id: str
    token_hash: str
    token_prefix: str
    label: str | None
    created_at: datetime
    expires_at: datetime | None


@attrs.frozen(kw_only=True)
class TokenInfo:
    id: str
    user_id: str
    token_prefix: str
    label: str | None
    created_at: datetime
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked_at: datetime | None


@attrs.frozen(kw_only=True)
class Principal:
    """Who a valid token speaks for, and the user's orgs with the role in each, read just now."""

    user_id: str
    token_id: str
    memberships: Mapping[str, Role]

    @property
    def org_ids(self) -> tuple[str, ...]:
        return tuple(sorted(self.memberships))


def _user(row: Mapping[str, Any]) -> PlatformUser:
    return PlatformUser(
        id=row["id"], email=row["email"], display_name=row["display_name"], created_at=row["created_at"]
    )


def _memberships(conn: Connection, user_id: str) -> dict[str, Role]:
    rows = conn.execute("SELECT org_id, role FROM org_memberships WHERE user_id = %s", (user_id,)).fetchall()
    return {row["org_id"]: Role(row["role"]) for row in rows}


class PgPlatformAccountsStore:
    """See the module docstring."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def create_user(
        self, *, user_id: str, email: str, display_name: str | None, now: datetime
    ) -> PlatformUser:
        require_aware(now)

        def work(conn: Connection) -> PlatformUser:
            try:
                row = conn.execute(
                    "INSERT INTO platform_users (id, email, display_name, created_at) "
                    "VALUES (%s, %s, %s, %s) RETURNING *",
                    (user_id, email, display_name, now),
                ).fetchone()
            except pg_errors.UniqueViolation:
                raise DuplicateUserError(f"a user with e-mail {email!r} exists") from None
            if row is None:
                raise RuntimeError("INSERT ... RETURNING returned no row")
            return _user(row)

        return await self._db.run(work)

    async def find_user(self, ref: str) -> PlatformUser | None:
        """The user whose id is ``ref``, else whose e-mail is ``ref`` (case-insensitive)."""

        def work(conn: Connection) -> PlatformUser | None:
            row = conn.execute(
                "SELECT * FROM platform_users WHERE id = %(ref)s OR lower(email) = lower(%(ref)s) "
                "ORDER BY (id = %(ref)s) DESC LIMIT 1",
                {"ref": ref},
            ).fetchone()
            return None if row is None else _user(row)

        return await self._db.run(work)

    async def find_org(self, ref: str) -> OrgRef | None:
        """The org whose id is ``ref``, else whose name is ``ref``."""

        def work(conn: Connection) -> OrgRef | None:
            row = conn.execute(
                "SELECT id, name FROM orgs WHERE id = %(ref)s OR name = %(ref)s "
                "ORDER BY (id = %(ref)s) DESC LIMIT 1",
                {"ref": ref},
            ).fetchone()
            return None if row is None else OrgRef(id=row["id"], name=row["name"])

        return await self._db.run(work)

    async def set_membership(self, *, org_id: str, user_id: str, role: Role, now: datetime) -> Membership:
        """Add the user to the org, or change the role of an existing member."""
        require_aware(now)

        def work(conn: Connection) -> Membership:
            try:
                conn.execute(
                    "INSERT INTO org_memberships (org_id, user_id, role, created_at) VALUES (%s, %s, %s, %s) "
                    "ON CONFLICT (org_id, user_id) DO UPDATE SET role = EXCLUDED.role",
                    (org_id, user_id, role.value, now),
                )
            except pg_errors.ForeignKeyViolation:
                raise UnknownOrgOrUserError(f"no org {org_id!r} or no user {user_id!r}") from None
            return Membership(org_id=org_id, user_id=user_id, role=role)

        return await self._db.run(work)

    async def memberships(self, user_id: str) -> dict[str, Role]:
        return await self._db.run(lambda conn: _memberships(conn, user_id))

    async def create_token(self, token: NewToken) -> None:
        require_aware(token.created_at)

        def work(conn: Connection) -> None:
            try:
                conn.execute(
                    "INSERT INTO dashboard_tokens (id, user_id, token_hash, token_prefix, label, created_at, "
                    "expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                    (
                        token.id,
                        token.user_id,
                        token.token_hash,
                        token.token_prefix,
                        token.label,
                        token.created_at,
                        token.expires_at,
                    ),
                )
            except pg_errors.ForeignKeyViolation:
                raise UnknownOrgOrUserError(f"no user {token.user_id!r}") from None

        await self._db.run(work)

    async def revoke_token(self, token_id: str, now: datetime) -> TokenInfo | None:
        """Revoke the token (idempotent: an already revoked one keeps its first revocation time)."""
        require_aware(now)

        def work(conn: Connection) -> TokenInfo | None:
            row = conn.execute(
                "UPDATE dashboard_tokens SET revoked_at = COALESCE(revoked_at, %s) WHERE id = %s RETURNING *",
                (now, token_id),
            ).fetchone()
            return None if row is None else _token(row)

        return await self._db.run(work)

    async def list_tokens(self, user_id: str) -> list[TokenInfo]:
        def work(conn: Connection) -> list[TokenInfo]:
            rows = conn.execute(
                "SELECT * FROM dashboard_tokens WHERE user_id = %s ORDER BY created_at, id", (user_id,)
            ).fetchall()
            return [_token(row) for row in rows]

        return await self._db.run(work)

    async def authenticate(self, token_hash: str, now: datetime) -> Principal | None:
        """The principal of an active (not revoked, not expired) token with this digest."""
        require_aware(now)

        def work(conn: Connection) -> Principal | None:
            row = conn.execute(
                "SELECT id, user_id, last_used_at FROM dashboard_tokens WHERE token_hash = %s "
                "AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > %s)",
                (token_hash, now),
            ).fetchone()
            if row is None:
                return None
            last = row["last_used_at"]
            if last is None or now - last >= LAST_USED_RESOLUTION:
                conn.execute("UPDATE dashboard_tokens SET last_used_at = %s WHERE id = %s", (now, row["id"]))
            return Principal(
                user_id=row["user_id"], token_id=row["id"], memberships=_memberships(conn, row["user_id"])
            )

        return await self._db.run(work)


def _token(row: Mapping[str, Any]) -> TokenInfo:
    return TokenInfo(
        id=row["id"],
        user_id=row["user_id"],
        token_prefix=row["token_prefix"],
        label=row["label"],
        created_at=row["created_at"],
        expires_at=row["expires_at"],
        last_used_at=row["last_used_at"],
        revoked_at=row["revoked_at"],
    )


__all__ = [
    "LAST_USED_RESOLUTION",
    "DuplicateUserError",
    "Membership",
    "NewToken",
    "OrgRef",
    "PgPlatformAccountsStore",
    "PlatformUser",
    "Principal",
    "Role",
    "TokenInfo",
    "UnknownOrgOrUserError",
]
