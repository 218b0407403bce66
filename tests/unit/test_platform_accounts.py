"""Dashboard accounts on a real PostgreSQL: users, memberships, tokens, and the ``users`` admin commands.

The database is migrated with the Platform's migration set; orgs are plain rows (tenancy is another
module's). The clock is injected, so expiry is tested without waiting.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from click.testing import CliRunner
from psycopg.conninfo import conninfo_to_dict

from kici.adapters.postgres.database import Database
from kici.adapters.postgres.platform_accounts_store import (
    DuplicateUserError,
    PgPlatformAccountsStore,
    Role,
)
from kici.services.platform.accounts import (
    TOKEN_PREFIX,
    Accounts,
    InvalidAccountInputError,
    UnknownOrgError,
    UnknownTokenError,
    UnknownUserError,
    bearer_token,
    token_digest,
)
from kici.services.platform.admin_users import DATABASE_OPENER_KEY, url_opener, users_group
from kici.testing.postgres import PgTestDatabase

pytestmark = pytest.mark.pg

START = datetime(2026, 1, 1, tzinfo=UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def platform_conninfo(pg_platform_database: PgTestDatabase) -> str:
    with psycopg.connect(pg_platform_database.conninfo, autocommit=True) as conn:
        conn.execute("INSERT INTO orgs (id, name) VALUES ('org-a', 'acme'), ('org-b', 'globex')")
    return pg_platform_database.conninfo


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def accounts(platform_conninfo: str, clock: Clock) -> AsyncIterator[Accounts]:
    async with Database.open(platform_conninfo, min_size=1, max_size=2) as db:
        yield Accounts(PgPlatformAccountsStore(db), now=clock)


@pytest.mark.feature("PRO-30")
async def test_token_authenticates_its_user_with_fresh_memberships(accounts: Accounts) -> None:
    alice = await accounts.create_user("Alice@Example.com", "Alice")
    await accounts.add_to_org("alice@example.com", "acme", Role.OWNER)
    issued = await accounts.issue_token(alice.id, label="laptop")
    assert re.fullmatch(rf"{TOKEN_PREFIX}[0-9a-f]{{64}}", issued.token)
    assert issued.info.token_prefix == issued.token[:12]
    principal = await accounts.authenticate(issued.token)
    assert principal is not None
    assert (principal.user_id, principal.token_id) == (alice.id, issued.info.id)
    assert principal.memberships == {"org-a": Role.OWNER}
    await accounts.add_to_org(alice.id, "org-b")
    again = await accounts.authenticate(issued.token)
    assert again is not None
    assert again.memberships == {"org-a": Role.OWNER, "org-b": Role.MEMBER}
    assert again.org_ids == ("org-a", "org-b")


@pytest.mark.feature("PRO-30")
async def test_only_the_sha256_of_a_token_is_stored(accounts: Accounts, platform_conninfo: str) -> None:
    user = await accounts.create_user("bob@example.com")
    issued = await accounts.issue_token(user.email)
    with psycopg.connect(platform_conninfo) as conn:
        rows = conn.execute("SELECT * FROM dashboard_tokens").fetchall()
    assert len(rows) == 1
    assert issued.token not in repr(rows)
    assert token_digest(issued.token) == hashlib.sha256(issued.token.encode()).hexdigest()
    assert token_digest(issued.token) in repr(rows)
    assert "token=" not in repr(issued)


@pytest.mark.feature("PRO-30")
async def test_revoked_expired_and_unknown_tokens_are_refused(accounts: Accounts, clock: Clock) -> None:
    user = await accounts.create_user("carol@example.com")
    revoked = await accounts.issue_token(user.id)
    expiring = await accounts.issue_token(user.id, expires_in=timedelta(hours=1))
    assert await accounts.authenticate(revoked.token) is not None
    info = await accounts.revoke_token(revoked.info.id)
    assert info.revoked_at == START
    assert await accounts.authenticate(revoked.token) is None
    clock.now = START + timedelta(minutes=5)
    assert (await accounts.revoke_token(revoked.info.id)).revoked_at == START, "revoking twice keeps the time"
    assert await accounts.authenticate(expiring.token) is not None
    clock.now = START + timedelta(hours=1)
    assert await accounts.authenticate(expiring.token) is None
    for bad in (None, "", "kdt_" + "0" * 64, "x" * 10_000):
        assert await accounts.authenticate(bad) is None
    with pytest.raises(UnknownTokenError):
        await accounts.revoke_token("no-such-token")


@pytest.mark.feature("PRO-30")
async def test_last_used_is_stamped_at_most_once_a_minute(accounts: Accounts, clock: Clock) -> None:
    user = await accounts.create_user("dan@example.com")
    issued = await accounts.issue_token(user.id)
    await accounts.authenticate(issued.token)
    clock.now = START + timedelta(seconds=30)
    await accounts.authenticate(issued.token)
    [token] = await accounts.list_tokens(user.id)
    assert token.last_used_at == START
    clock.now = START + timedelta(seconds=61)
    await accounts.authenticate(issued.token)
    [token] = await accounts.list_tokens(user.id)
    assert token.last_used_at == START + timedelta(seconds=61)


@pytest.mark.feature("PRO-30")
async def test_account_input_is_checked(accounts: Accounts) -> None:
    await accounts.create_user("erin@example.com")
    with pytest.raises(DuplicateUserError):
        await accounts.create_user("ERIN@example.com")
    for email in ("erin", "a b@example.com", "@example.com", "x@" + "y" * 300):
        with pytest.raises(InvalidAccountInputError):
            await accounts.create_user(email)
    with pytest.raises(InvalidAccountInputError):
        await accounts.create_user("frank@example.com", "   ")
    with pytest.raises(UnknownUserError):
        await accounts.add_to_org("nobody@example.com", "acme")
    with pytest.raises(UnknownOrgError):
        await accounts.add_to_org("erin@example.com", "initech")
    with pytest.raises(InvalidAccountInputError):
        await accounts.issue_token("erin@example.com", expires_in=timedelta(0))
    with pytest.raises(UnknownUserError):
        await accounts.issue_token("nobody@example.com")


@pytest.mark.feature("PRO-30")
async def test_a_role_change_is_an_update(accounts: Accounts) -> None:
    user = await accounts.create_user("gina@example.com")
    await accounts.add_to_org(user.id, "acme", Role.OWNER)
    membership = await accounts.add_to_org(user.id, "org-a", Role.MEMBER)
    assert membership.role is Role.MEMBER
    issued = await accounts.issue_token(user.id)
    principal = await accounts.authenticate(issued.token)
    assert principal is not None
    assert principal.memberships == {"org-a": Role.MEMBER}


@pytest.mark.feature("PRO-30")
def test_bearer_header_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer   abc  ") == "abc"
    for bad in (None, "", "Basic abc", "Bearer ", "Bearerabc"):
        assert bearer_token(bad) is None


# --- the admin commands ----------------------------------------------------------------------------


@pytest.fixture
def cli(platform_conninfo: str) -> CliRunner:
    return CliRunner()


def invoke(runner: CliRunner, conninfo: str, *args: str) -> tuple[int, str, str]:
    result = runner.invoke(users_group, ["--database-url", conninfo, *args], catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.feature("PRO-30")
def test_users_commands_create_add_issue_list_and_revoke(cli: CliRunner, platform_conninfo: str) -> None:
    code, out, _ = invoke(cli, platform_conninfo, "create", "hank@example.com", "--name", "Hank")
    assert code == 0
    user_id = out.strip()
    code, out, _ = invoke(cli, platform_conninfo, "add-to-org", "hank@example.com", "acme", "--role", "owner")
    assert (code, out.strip()) == (0, f"user {user_id} is owner of org org-a")
    code, out, err = invoke(
        cli, platform_conninfo, "token", "create", user_id, "--label", "ci", "--expires-days", "7"
    )
    assert code == 0
    token = out.strip()
    assert re.fullmatch(r"kdt_[0-9a-f]{64}", token)
    token_id = re.search(r"token id (\S+)", err)
    assert token_id is not None
    code, out, _ = invoke(cli, platform_conninfo, "token", "list", "hank@example.com")
    assert code == 0
    assert token_id.group(1) in out
    assert "active" in out
    assert token not in out
    with psycopg.connect(platform_conninfo) as conn:
        row = conn.execute("SELECT token_hash, label FROM dashboard_tokens").fetchone()
    assert row == (token_digest(token), "ci")
    code, out, _ = invoke(cli, platform_conninfo, "token", "revoke", token_id.group(1))
    assert code == 0
    assert out.startswith(f"revoked token {token_id.group(1)}")
    code, out, _ = invoke(cli, platform_conninfo, "token", "list", user_id)
    assert "revoked" in out


@pytest.mark.feature("PRO-30")
def test_users_commands_report_errors(cli: CliRunner, platform_conninfo: str) -> None:
    assert invoke(cli, platform_conninfo, "create", "ivy@example.com")[0] == 0
    code, _, err = invoke(cli, platform_conninfo, "create", "IVY@example.com")
    assert code == 1
    assert "exists" in err
    code, _, err = invoke(cli, platform_conninfo, "add-to-org", "ivy@example.com", "initech")
    assert code == 1
    assert "no org 'initech'" in err
    code, _, err = invoke(cli, platform_conninfo, "token", "revoke", "nope")
    assert code == 1
    assert "no dashboard token" in err


@pytest.mark.feature("PRO-30")
def test_users_commands_default_to_the_platform_configuration(platform_conninfo: str, tmp_path: Path) -> None:
    parts = conninfo_to_dict(platform_conninfo)
    url = f"postgresql://{parts['user']}@/{parts['dbname']}?host={parts['host']}&port={parts['port']}"
    env = {"KICI_PLATFORM_DATABASE_URL": url, "KICI_PLATFORM_DATA_DIR": str(tmp_path)}
    result = CliRunner(env=env).invoke(users_group, ["create", "kim@example.com"])
    assert result.exit_code == 0, result.output
    with psycopg.connect(platform_conninfo) as conn:
        row = conn.execute("SELECT id FROM platform_users WHERE email = 'kim@example.com'").fetchone()
    assert row == (result.stdout.strip(),)
    bad = CliRunner(env={**env, "KICI_PLATFORM_PORT": "not-a-port"}).invoke(users_group, ["create", "x@y.z"])
    assert bad.exit_code == 2
    assert "KICI_PLATFORM_PORT" in bad.stderr


@pytest.mark.feature("PRO-30")
def test_kici_platform_admin_mounts_the_users_commands(platform_conninfo: str, tmp_path: Path) -> None:
    from kici.services.platform.main import main as kici_platform

    parts = conninfo_to_dict(platform_conninfo)
    url = f"postgresql://{parts['user']}@/{parts['dbname']}?host={parts['host']}&port={parts['port']}"
    config = tmp_path / "platform.yaml"
    config.write_text(f"database:\n  url: '{url}'\ndataDir: '{tmp_path}'\n", encoding="utf-8")
    runner = CliRunner()
    created = runner.invoke(
        kici_platform, ["admin", "--config", str(config), "users", "create", "lee@example.com"]
    )
    assert created.exit_code == 0, created.output
    added = runner.invoke(
        kici_platform, ["--config", str(config), "admin", "users", "add-to-org", "lee@example.com", "globex"]
    )
    assert added.exit_code == 0, added.output
    assert added.stdout.strip() == f"user {created.stdout.strip()} is member of org org-b"


@pytest.mark.feature("PRO-30")
def test_users_commands_use_the_parent_database_opener(cli: CliRunner, platform_conninfo: str) -> None:
    opened: list[str] = []

    def opener() -> object:
        opened.append("parent")
        return url_opener(platform_conninfo)()

    result = CliRunner().invoke(users_group, ["create", "jo@example.com"], obj={DATABASE_OPENER_KEY: opener})
    assert result.exit_code == 0, result.output
    assert opened == ["parent"]
