"""``users``: dashboard accounts from the command line, run against the Platform's database.

``kici-platform admin`` mounts `users_group`:

* ``users create EMAIL [--name NAME]`` prints the new user's id;
* ``users add-to-org USER ORG [--role owner|member]`` adds the user to the org, or changes the role
  (USER: id or e-mail; ORG: id or name);
* ``users token create USER [--label L] [--expires-days N]`` prints a dashboard token once on stdout
  (only its SHA-256 is stored; the id to revoke it goes to stderr);
* ``users token list USER`` and ``users token revoke TOKEN_ID``.

Which database, first match wins: ``--database-url`` given on the command line (migrated to the
Platform's current set first); an opener the parent command put in ``ctx.obj["platform_database"]`` (a
zero-argument callable returning an async context manager that yields a migrated
``kici.adapters.postgres.database.Database``); else the Platform's own configuration, exactly as the
other ``kici-platform admin`` commands read it (``ctx.obj["config_path"]``, ``KICI_PLATFORM_CONFIG``,
``KICI_PLATFORM_*``: the configured URL or the embedded server, which is left running if the daemon
has it up).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

import click
import trio

from kici.adapters.config_file import ConfigFileError
from kici.adapters.postgres.database import Database
from kici.adapters.postgres.platform_accounts_store import (
    DuplicateUserError,
    PgPlatformAccountsStore,
    Role,
    TokenInfo,
    UnknownOrgOrUserError,
)
from kici.adapters.postgres.platform_store import migrate_platform, open_platform_postgres
from kici.domain.config.problems import ConfigError
from kici.domain.store import StoreUnavailableError
from kici.services.platform.accounts import Accounts, AccountsError
from kici.services.platform.config import data_dir_of, load_platform_config

T = TypeVar("T")

DATABASE_OPENER_KEY: Final = "platform_database"
CONFIG_PATH_KEY: Final = "config_path"
EXIT_CONFIG: Final = 2

DatabaseOpener = Callable[[], AbstractAsyncContextManager[Database]]


def url_opener(url: str) -> DatabaseOpener:
    """Open ``url`` after applying the Platform's migrations (idempotent, under the migration lock)."""

    @asynccontextmanager
    async def open_url() -> AsyncIterator[Database]:
        await migrate_platform(url)
        async with Database.open(url, min_size=1, max_size=1, name="kici-platform-admin") as db:
            yield db

    return open_url


def config_opener(config_path: str | None) -> DatabaseOpener:
    """The database of the Platform configuration (file + ``KICI_PLATFORM_*``), as the daemon opens it."""
    try:
        config = load_platform_config(config_path)
    except ConfigError as exc:
        click.echo(str(exc), err=True)
        raise click.exceptions.Exit(EXIT_CONFIG) from None
    except ConfigFileError as exc:
        click.echo(f"Configuration file error: {exc}", err=True)
        raise click.exceptions.Exit(EXIT_CONFIG) from None

    @asynccontextmanager
    async def open_configured() -> AsyncIterator[Database]:
        async with open_platform_postgres(
            config.database.url, data_dir_of(config), min_size=1, max_size=1, leave_running=True
        ) as pg:
            yield pg.database

    return open_configured


def _now() -> datetime:
    return datetime.now(UTC)


def _run(ctx: click.Context, work: Callable[[Accounts], Awaitable[T]]) -> T:
    obj = ctx.find_object(dict) or {}
    opener: DatabaseOpener | None = obj.get(DATABASE_OPENER_KEY)
    if opener is None:
        path = obj.get(CONFIG_PATH_KEY)
        opener = config_opener(path if isinstance(path, str) else None)

    async def main() -> T:
        async with opener() as db:
            return await work(Accounts(PgPlatformAccountsStore(db), now=_now))

    try:
        return trio.run(main)
    except (AccountsError, DuplicateUserError, UnknownOrgOrUserError, StoreUnavailableError) as exc:
        raise click.ClickException(str(exc)) from None


@click.group("users")
@click.option(
    "--database-url",
    default=None,
    help="PostgreSQL URL of the Platform database (default: the one kici-platform is configured with).",
)
@click.pass_context
def users_group(ctx: click.Context, database_url: str | None) -> None:
    """Dashboard users, org memberships and dashboard tokens."""
    obj = ctx.ensure_object(dict)
    if database_url:
        obj[DATABASE_OPENER_KEY] = url_opener(database_url)


@users_group.command("create")
@click.argument("email")
@click.option("--name", "display_name", default=None, help="Display name.")
@click.pass_context
def create_user(ctx: click.Context, email: str, display_name: str | None) -> None:
    """Create a dashboard user and print its id."""
    user = _run(ctx, lambda accounts: accounts.create_user(email, display_name))
    click.echo(user.id)


@users_group.command("add-to-org")
@click.argument("user")
@click.argument("org")
@click.option(
    "--role",
    type=click.Choice([r.value for r in Role]),
    default=Role.MEMBER.value,
    show_default=True,
    help="owner: may also cancel runs; member: reads.",
)
@click.pass_context
def add_to_org(ctx: click.Context, user: str, org: str, role: str) -> None:
    """Make USER (id or e-mail) a member of ORG (id or name), or change the role."""
    membership = _run(ctx, lambda accounts: accounts.add_to_org(user, org, Role(role)))
    click.echo(f"user {membership.user_id} is {membership.role.value} of org {membership.org_id}")


@users_group.group("token")
def token_group() -> None:
    """Dashboard tokens (Authorization: Bearer, browser auth.request)."""


@token_group.command("create")
@click.argument("user")
@click.option("--label", default=None, help="What the token is for.")
@click.option(
    "--expires-days", type=click.IntRange(min=1), default=None, help="Lifetime in days (default: none)."
)
@click.pass_context
def create_token(ctx: click.Context, user: str, label: str | None, expires_days: int | None) -> None:
    """Issue a token for USER and print it once (only its SHA-256 is kept)."""
    lifetime = timedelta(days=expires_days) if expires_days is not None else None
    issued = _run(ctx, lambda accounts: accounts.issue_token(user, label=label, expires_in=lifetime))
    click.echo(issued.token)
    click.echo(
        f"token id {issued.info.id} ({issued.info.token_prefix}...): shown once, store it now", err=True
    )


def _describe(token: TokenInfo) -> str:
    state = "revoked" if token.revoked_at is not None else "active"
    expires = token.expires_at.isoformat() if token.expires_at is not None else "never"
    used = token.last_used_at.isoformat() if token.last_used_at is not None else "never"
    return (
        f"{token.id}  {token.token_prefix}...  {state}  label={token.label or '-'}  "
        f"created={token.created_at.isoformat()}  expires={expires}  last_used={used}"
    )


@token_group.command("list")
@click.argument("user")
@click.pass_context
def list_tokens(ctx: click.Context, user: str) -> None:
    """List USER's tokens (never the tokens themselves)."""
    for token in _run(ctx, lambda accounts: accounts.list_tokens(user)):
        click.echo(_describe(token))


@token_group.command("revoke")
@click.argument("token_id")
@click.pass_context
def revoke_token(ctx: click.Context, token_id: str) -> None:
    """Revoke a token: the next request or browser re-check with it is refused."""
    info = _run(ctx, lambda accounts: accounts.revoke_token(token_id))
    click.echo(f"revoked token {info.id} ({info.token_prefix}...)")


__all__ = ["DATABASE_OPENER_KEY", "DatabaseOpener", "config_opener", "url_opener", "users_group"]
