"""The service's PostgreSQL role owns nothing (issue 21, item 3) and the lookup scope only reads (item 4).

Migrations run as ``keyserver_owner``; the service runs as ``keyserver_app``, granted only what
``keyserver db upgrade --service-role`` gives it. Whoever runs SQL as the service role (an injection, a
compromised process, a leaked URL) cannot change or remove the release log (privileges, not only the
triggers), cannot drop or disable a trigger, cannot turn row-level security off, and the service
refuses to start as a role that could (unless KEYSERVER_ALLOW_SCHEMA_OWNER says so).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from litestar.testing import AsyncTestClient
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from keyserver.app import create_app
from keyserver.bootstrap import initialise
from keyserver.config import Settings
from keyserver.db.grants import APPEND_ONLY_TABLES, schema_powers
from keyserver.db.session import Database, Scope
from keyserver.errors import ConfigurationError
from keyserver.tenancy import create_tenant
from tests.fixtures.postgres import APP_ROLE, OWNER_ROLE, PostgresServer

pytestmark = pytest.mark.postgres

# What an attacker holding the service's role would run to rewrite history or lift isolation.
FORBIDDEN_DDL = [
    "ALTER TABLE {t} DISABLE TRIGGER ALL",
    "ALTER TABLE {t} DISABLE TRIGGER {t}_append_only",
    "DROP TRIGGER {t}_append_only ON {t}",
    "ALTER TABLE {t} NO FORCE ROW LEVEL SECURITY",
    "ALTER TABLE {t} DISABLE ROW LEVEL SECURITY",
    "DROP POLICY {t}_scope ON {t}",
    "ALTER TABLE {t} OWNER TO " + APP_ROLE,
    "DROP TABLE {t} CASCADE",
    "CREATE OR REPLACE FUNCTION keyserver_refuse_change() RETURNS trigger LANGUAGE plpgsql"
    " AS $$ BEGIN RETURN NULL; END $$",
    "CREATE OR REPLACE FUNCTION keyserver_is_operator() RETURNS boolean LANGUAGE sql AS $$ SELECT true $$",
]
FORBIDDEN_DML = [
    "UPDATE {t} SET tenant_id = tenant_id",
    "DELETE FROM {t}",
    "TRUNCATE {t}",
    "TRUNCATE {t} CASCADE",
]


async def _connect(url: str) -> asyncpg.Connection:
    parsed = make_url(url)
    return await asyncpg.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, database=parsed.database
    )


@pytest.fixture
async def service_db(postgres_url: str) -> AsyncIterator[Database]:
    database = Database(Settings(database_url=postgres_url))
    await initialise(database, announce=lambda _token: None)
    yield database
    await database.dispose()


def _owner_url(server: PostgresServer, service_url: str) -> str:
    return server.owner_url(service_url.rsplit("/", 1)[1])


@pytest.mark.parametrize("table", APPEND_ONLY_TABLES)
async def test_the_service_role_cannot_change_the_log_nor_lift_its_guards(
    service_db: Database, postgres_url: str, table: str
) -> None:
    conn = await _connect(postgres_url)
    try:
        assert await conn.fetchval("SELECT current_user") == APP_ROLE
        for statement in FORBIDDEN_DML:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(statement.format(t=table))
        for statement in FORBIDDEN_DDL:
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match=r"must be owner|permission denied"):
                await conn.execute(statement.format(t=table))
        # It can still do its job: read and append.
        assert await conn.fetchval(f"SELECT has_table_privilege('{table}', 'INSERT')")
    finally:
        await conn.close()


async def test_the_triggers_still_refuse_the_owner(
    postgres_server: PostgresServer, service_db: Database, postgres_url: str
) -> None:
    conn = await _connect(_owner_url(postgres_server, postgres_url))
    try:
        for table in APPEND_ONLY_TABLES:
            for statement in FORBIDDEN_DML:
                with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
                    await conn.execute(statement.format(t=table))
    finally:
        await conn.close()


async def test_the_service_role_owns_nothing_and_may_use_every_table(service_db: Database) -> None:
    assert await schema_powers(service_db) == []
    async with service_db.engine.connect() as conn:
        ungranted = (
            await conn.execute(
                text(
                    "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
                    " AND NOT has_table_privilege(format('%I.%I', schemaname, tablename), 'SELECT')"
                )
            )
        ).all()
    assert ungranted == [], "a table without a grant: add it to keyserver/db/grants.py if it is special"


async def test_the_service_refuses_to_start_as_the_schema_owner(
    postgres_server: PostgresServer, postgres_url: str, tmp_path: Path
) -> None:
    owner_url = _owner_url(postgres_server, postgres_url)
    owner = Database(Settings(database_url=owner_url))
    try:
        with pytest.raises(ConfigurationError, match="KEYSERVER_ALLOW_SCHEMA_OWNER") as refused:
            await initialise(owner, announce=lambda _token: None)
        assert "schema public" in refused.value.message
        powers = await schema_powers(owner)
        assert {"function keyserver_refuse_change", "table log_entries"} <= set(powers)
        assert "UPDATE, DELETE or TRUNCATE on log_entries" in powers
    finally:
        await owner.dispose()
    # The application, too: its start-up fails (the database answered, so this is a refusal).
    app = create_app(Settings(data_dir=tmp_path / "data", database_url=owner_url))
    with pytest.raises(BaseExceptionGroup) as failed:  # Litestar's lifespan wraps it
        async with AsyncTestClient(app=app):
            pass
    assert failed.group_contains(ConfigurationError, match="KEYSERVER_ALLOW_SCHEMA_OWNER", depth=None)
    knowingly = Database(Settings(database_url=owner_url, allow_schema_owner=True))
    try:
        await initialise(knowingly, announce=lambda _token: None)
    finally:
        await knowingly.dispose()


async def test_a_service_role_granted_update_on_the_log_is_refused(
    postgres_server: PostgresServer, service_db: Database, postgres_url: str
) -> None:
    owner = await _connect(_owner_url(postgres_server, postgres_url))
    try:
        await owner.execute(f"GRANT UPDATE ON log_entries TO {APP_ROLE}")
        with pytest.raises(ConfigurationError, match="UPDATE, DELETE or TRUNCATE on log_entries"):
            await initialise(service_db, announce=lambda _token: None)
    finally:
        await owner.execute(f"REVOKE UPDATE ON log_entries FROM {APP_ROLE}")
        await owner.close()


async def test_the_lookup_scope_and_a_tenant_only_read_the_tenant_registry(service_db: Database) -> None:
    async with service_db.transaction(Scope.for_operator()) as session:
        tenant = await create_tenant(session, "lonely")  # no tokens, no keys: nothing stops a DELETE but RLS
    for scope in (Scope.for_tenant_lookup(), Scope.for_tenant(tenant.id)):
        async with service_db.transaction(scope) as session:
            names = (await session.execute(text("SELECT name FROM tenants"))).scalars().all()
            assert "lonely" in names
            deleted = await session.execute(text("DELETE FROM tenants"))
            updated = await session.execute(text("UPDATE tenants SET name = 'renamed'"))
            assert (deleted.rowcount, updated.rowcount) == (0, 0)  # type: ignore[attr-defined]
        with pytest.raises(DBAPIError, match="row-level security"):
            async with service_db.transaction(scope) as session:
                await session.execute(
                    text("INSERT INTO tenants (id, name, created_at) VALUES (:id, 'intruder', now())"),
                    {"id": uuid.uuid4()},
                )
    async with service_db.transaction(Scope.for_operator()) as session:
        names = (await session.execute(text("SELECT name FROM tenants"))).scalars().all()
    assert names == ["lonely"]


def test_db_upgrade_grants_the_service_role(postgres_server: PostgresServer, tmp_path: Path) -> None:
    """The documented deployment: the owner migrates and grants; the service then starts as its role."""
    name = postgres_server.create_database()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSERVER_")}
    keyserver = str(Path(sys.executable).parent / "keyserver")
    owner_url = postgres_server.owner_url(name)
    upgraded = subprocess.run(
        [keyserver, "--database-url", owner_url, "db", "upgrade", "--service-role", APP_ROLE],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"granted {APP_ROLE}" in upgraded.stderr
    refused = subprocess.run(
        [keyserver, "--database-url", owner_url, "db", "upgrade", "--service-role", "no_such_role"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode == 1
    assert "no PostgreSQL role 'no_such_role'" in refused.stderr

    async def serve_as_service() -> None:
        db = Database(Settings(data_dir=tmp_path, database_url=postgres_server.url(name)))
        try:
            await initialise(db, announce=lambda _token: None)
            assert await schema_powers(db) == []
        finally:
            await db.dispose()

    asyncio.run(serve_as_service())
    postgres_server.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    assert OWNER_ROLE != APP_ROLE
