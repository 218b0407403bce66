"""Dashboard accounts: users, their org memberships, and the bearer tokens the dashboard API takes.

A token is ``kdt_`` + 64 hex characters (32 random bytes), printed once when issued; the Platform
keeps only its SHA-256 hex digest and its first 12 characters (to tell tokens apart when revoking).
The dashboard API and the browser WebSocket call `Accounts.authenticate` on every request and every
subscription: a revoked or expired token, or a removed membership, counts from the next call.

The spec's browser handshake carries a JWT (PRO-30). kici issues no JWTs: the dashboard token plays
that role in ``auth.request`` and in ``Authorization: Bearer``. Users are identified by e-mail
address (unique regardless of case); user and org arguments accept an id or the e-mail / org name.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Final, Protocol

import attrs

from kici.adapters.postgres.platform_accounts_store import (
    Membership,
    NewToken,
    OrgRef,
    PlatformUser,
    Principal,
    Role,
    TokenInfo,
)

TOKEN_PREFIX: Final = "kdt_"
TOKEN_PREFIX_CHARS: Final = 12
MAX_TOKEN_CHARS: Final = 512
MAX_EMAIL_CHARS: Final = 254
MAX_NAME_CHARS: Final = 200
MAX_LABEL_CHARS: Final = 200
_EMAIL: Final = re.compile(r"[^@\s]+@[^@\s]+")


class AccountsError(Exception):
    """A refused account operation; the message is meant for the operator."""


class InvalidAccountInputError(AccountsError, ValueError):
    pass


class UnknownUserError(AccountsError, LookupError):
    pass


class UnknownOrgError(AccountsError, LookupError):
    pass


class UnknownTokenError(AccountsError, LookupError):
    pass


def new_dashboard_token() -> str:
    return TOKEN_PREFIX + secrets.token_hex(32)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None."""
    if not authorization or authorization[:7].lower() != "bearer ":
        return None
    token = authorization[7:].strip()
    return token or None


class AccountsStore(Protocol):
    """What `Accounts` needs from storage (``PgPlatformAccountsStore``)."""

    async def create_user(
        self, *, user_id: str, email: str, display_name: str | None, now: datetime
    ) -> PlatformUser: ...

    async def find_user(self, ref: str) -> PlatformUser | None: ...

    async def find_org(self, ref: str) -> OrgRef | None: ...

    async def set_membership(self, *, org_id: str, user_id: str, role: Role, now: datetime) -> Membership: ...

    async def create_token(self, token: NewToken) -> None: ...

    async def revoke_token(self, token_id: str, now: datetime) -> TokenInfo | None: ...

    async def list_tokens(self, user_id: str) -> list[TokenInfo]: ...

    async def authenticate(self, token_hash: str, now: datetime) -> Principal | None: ...


@attrs.frozen
class IssuedToken:
    """A new token: ``token`` is shown to the operator once and never stored."""

    token: str = attrs.field(repr=False)
    info: TokenInfo


def _new_id() -> str:
    return str(uuid.uuid4())


class Accounts:
    """Account use cases over an `AccountsStore`; ``now`` is the wall clock (aware datetimes)."""

    def __init__(
        self,
        store: AccountsStore,
        *,
        now: Callable[[], datetime],
        new_id: Callable[[], str] = _new_id,
        new_token: Callable[[], str] = new_dashboard_token,
    ) -> None:
        self._store = store
        self._now = now
        self._new_id = new_id
        self._new_token = new_token

    async def create_user(self, email: str, display_name: str | None = None) -> PlatformUser:
        email = email.strip()
        if len(email) > MAX_EMAIL_CHARS or not _EMAIL.fullmatch(email):
            raise InvalidAccountInputError(f"{email!r} is not an e-mail address")
        if display_name is not None and (not display_name.strip() or len(display_name) > MAX_NAME_CHARS):
            raise InvalidAccountInputError(f"a display name has 1-{MAX_NAME_CHARS} characters")
        return await self._store.create_user(
            user_id=self._new_id(), email=email, display_name=display_name, now=self._now()
        )

    async def user(self, ref: str) -> PlatformUser:
        user = await self._store.find_user(ref)
        if user is None:
            raise UnknownUserError(f"no user {ref!r} (give a user id or an e-mail address)")
        return user

    async def add_to_org(self, user_ref: str, org_ref: str, role: Role = Role.MEMBER) -> Membership:
        user = await self.user(user_ref)
        org = await self._store.find_org(org_ref)
        if org is None:
            raise UnknownOrgError(f"no org {org_ref!r} (give an org id or name)")
        return await self._store.set_membership(org_id=org.id, user_id=user.id, role=role, now=self._now())

    async def issue_token(
        self, user_ref: str, *, label: str | None = None, expires_in: timedelta | None = None
    ) -> IssuedToken:
        if label is not None and len(label) > MAX_LABEL_CHARS:
            raise InvalidAccountInputError(f"a label has at most {MAX_LABEL_CHARS} characters")
        if expires_in is not None and expires_in <= timedelta(0):
            raise InvalidAccountInputError("a token's lifetime must be positive")
        user = await self.user(user_ref)
        now = self._now()
        token = self._new_token()
        new = NewToken(
            id=self._new_id(),
            user_id=user.id,
            token_hash=token_digest(token),
            token_prefix=token[:TOKEN_PREFIX_CHARS],
            label=label,
            created_at=now,
            expires_at=now + expires_in if expires_in is not None else None,
        )
        await self._store.create_token(new)
        info = TokenInfo(
            id=new.id,
            user_id=new.user_id,
            token_prefix=new.token_prefix,
            label=new.label,
            created_at=new.created_at,
            expires_at=new.expires_at,
            last_used_at=None,
            revoked_at=None,
        )
        return IssuedToken(token, info)

    async def revoke_token(self, token_id: str) -> TokenInfo:
        info = await self._store.revoke_token(token_id, self._now())
        if info is None:
            raise UnknownTokenError(f"no dashboard token {token_id!r}")
        return info

    async def list_tokens(self, user_ref: str) -> list[TokenInfo]:
        user = await self.user(user_ref)
        return await self._store.list_tokens(user.id)

    async def authenticate(self, token: str | None) -> Principal | None:
        """The principal of a valid token, else None (unknown, revoked, expired, or not a token)."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        return await self._store.authenticate(token_digest(token), self._now())


__all__ = [
    "TOKEN_PREFIX",
    "Accounts",
    "AccountsError",
    "AccountsStore",
    "InvalidAccountInputError",
    "IssuedToken",
    "UnknownOrgError",
    "UnknownTokenError",
    "UnknownUserError",
    "bearer_token",
    "new_dashboard_token",
    "token_digest",
]
