"""keyserver/db/hot.py: a release-path statement run on asyncpg directly keeps every promise a statement
through SQLAlchemy keeps — inside the caller's transaction, under its tenant scope (row-level security),
seen by the engine's cursor events, failing as SQLAlchemy fails (503 through ``Database.transaction``) —
and SQLite takes the ORM path; on SQLite, a procedure run in aiosqlite's thread (``hot.on_sqlite``) keeps
the same promises (in the transaction, seen by the events, failing as SQLAlchemy fails)."""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, IntegrityError

from keyserver.challenges import consume_challenge, issue_challenge
from keyserver.db import hot
from keyserver.db.session import Database, Scope, scope_statement
from keyserver.errors import EvidenceError, Unavailable
from keyserver.tenancy import create_tenant

pytestmark = pytest.mark.asyncio

CHALLENGES_OF = "SELECT id FROM challenges WHERE tenant_id = $1"


async def _tenants(db: Database) -> tuple[uuid.UUID, uuid.UUID]:
    async with db.transaction(Scope.for_operator()) as session:
        return (await create_tenant(session, "acme")).id, (await create_tenant(session, "other")).id


async def test_sqlite_takes_the_orm_path(migrated_db: Database) -> None:
    if migrated_db.dialect != "sqlite":
        pytest.skip("SQLite only")
    async with migrated_db.transaction(Scope.for_operator()) as session:
        assert await hot.fetch(session, "SELECT 1") is None


async def test_runs_in_the_transaction_under_its_tenant_scope(migrated_db: Database) -> None:
    if migrated_db.dialect != "postgresql":
        pytest.skip("PostgreSQL only")
    acme, other = await _tenants(migrated_db)
    async with migrated_db.transaction(Scope.for_tenant(acme)) as session:
        challenge = await issue_challenge(session, acme)  # a hot INSERT
        # The same transaction: its own uncommitted row is visible to the next hot statement.
        rows = await hot.fetch(session, CHALLENGES_OF, acme)
        assert rows is not None
        assert [row["id"] for row in rows] == [challenge.id]
    async with migrated_db.transaction(Scope.for_tenant(other)) as session:
        # Row-level security, not the WHERE clause, hides acme's challenge from another tenant's scope.
        assert await hot.fetch(session, "SELECT id FROM challenges") == []
        with pytest.raises(EvidenceError, match="no such challenge"):
            await consume_challenge(session, other, challenge.id)
    async with migrated_db.transaction(Scope.for_tenant(acme)) as session:
        assert len(await consume_challenge(session, acme, challenge.id)) == 32
    # Rolled back with its transaction like any statement.
    with pytest.raises(RuntimeError):
        await _issue_then_fail(migrated_db, acme)
    async with migrated_db.transaction(Scope.for_tenant(acme)) as session:
        assert len(await hot.fetch(session, CHALLENGES_OF, acme) or []) == 1


async def test_a_bare_session_begins_with_its_scope_first(migrated_db: Database) -> None:
    if migrated_db.dialect != "postgresql":
        pytest.skip("PostgreSQL only")
    acme, _ = await _tenants(migrated_db)
    # No Database.transaction: the session begins one itself, and its scope's set_config runs first.
    async with migrated_db.session(Scope.for_tenant(acme)) as session:
        rows = await hot.fetch(session, "SELECT current_setting('keyserver.tenant_id') AS tenant")
    assert rows is not None
    assert rows[0]["tenant"] == str(acme)


async def test_cursor_events_see_it(migrated_db: Database) -> None:
    if migrated_db.dialect != "postgresql":
        pytest.skip("PostgreSQL only")
    seen: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(migrated_db.engine.sync_engine, "before_cursor_execute", record)
    try:
        async with migrated_db.transaction(Scope.for_operator()) as session:
            await hot.fetch(session, "SELECT 2")
    finally:
        event.remove(migrated_db.engine.sync_engine, "before_cursor_execute", record)
    # The scope first, as for every transaction (on PostgreSQL sent with its BEGIN: one round trip).
    assert seen[0].startswith("BEGIN; SELECT set_config(")
    assert seen[1:] == ["SELECT 2"]


async def test_a_savepoint_holds_the_hot_statements_made_in_it(migrated_db: Database) -> None:
    """A savepoint begun after the transaction's first hot statement is emitted, and rolling it back
    undoes the hot statements made in it, and only those — each time (a batch member's isolation,
    keyserver/releaselog/group_commit.py)."""
    if migrated_db.dialect != "postgresql":
        pytest.skip("PostgreSQL only")
    acme, _other = await _tenants(migrated_db)
    async with migrated_db.transaction(Scope.for_tenant(acme)) as session:
        kept = [await issue_challenge(session, acme)]  # a hot INSERT: the connection is known from here
        for _ in range(3):
            with pytest.raises(RuntimeError, match="roll back"):
                await _issue_in_a_savepoint_then_fail(session, acme)
            async with session.begin_nested():
                kept.append(await issue_challenge(session, acme))
        rows = await hot.fetch(session, CHALLENGES_OF, acme)
        assert rows is not None
        assert sorted(row["id"] for row in rows) == sorted(c.id for c in kept)


async def _issue_in_a_savepoint_then_fail(session: Any, tenant_id: uuid.UUID) -> None:
    async with session.begin_nested():
        await issue_challenge(session, tenant_id)
        raise RuntimeError("roll back to the savepoint")


async def test_fails_as_sqlalchemy_fails(migrated_db: Database) -> None:
    if migrated_db.dialect != "postgresql":
        pytest.skip("PostgreSQL only")
    # A statement error: SQLAlchemy's DBAPIError carrying the SQLSTATE (not a 503: the request's fault).
    with pytest.raises(DBAPIError) as raised:
        await _fetch_in_transaction(migrated_db, "SELECT no_such_column FROM tenants")
    assert getattr(raised.value.orig, "sqlstate", None) == "42703"
    # The connection killed under the transaction: a 503, and the pool does not hand it out again.
    with pytest.raises(Unavailable):
        await _fetch_after_the_connection_is_killed(migrated_db)
    async with migrated_db.transaction(Scope.for_operator()) as session:
        assert [tuple(row) for row in await hot.fetch(session, "SELECT 3 AS n") or []] == [(3,)]


async def test_a_transaction_begins_with_its_scope_in_one_round_trip(migrated_db: Database) -> None:
    """PostgreSQL: BEGIN and the scope's settings are one simple query (hot.begin_together_with), and the
    settings are those of the scope — each kind of scope, durable or not."""
    if migrated_db.dialect != "postgresql":
        pytest.skip("PostgreSQL only")
    acme, _other = await _tenants(migrated_db)
    read = (
        "SELECT current_setting('keyserver.tenant_id') AS tenant,"
        " current_setting('keyserver.operator') AS op, current_setting('keyserver.lookup') AS lookup,"
        " current_setting('synchronous_commit') AS sync"
    )
    expected = {
        Scope.for_tenant(acme): (str(acme), "off", "off"),
        Scope.for_operator(): ("", "on", "off"),
        Scope.for_tenant_lookup(): ("", "off", "on"),
    }
    server_setting = await migrated_db.call("SHOW synchronous_commit")
    assert server_setting is not None
    default_sync = server_setting[0][0]
    for scope, (tenant, operator, lookup) in expected.items():
        for durable in (True, False):
            sent: list[str] = []
            record = _recorder(sent)
            event.listen(migrated_db.engine.sync_engine, "before_cursor_execute", record)
            try:
                async with migrated_db.transaction(scope, durable=durable) as session:
                    rows = await hot.fetch(session, read)
            finally:
                event.remove(migrated_db.engine.sync_engine, "before_cursor_execute", record)
            assert rows is not None
            assert tuple(rows[0])[:3] == (tenant, operator, lookup)
            assert rows[0]["sync"] == (default_sync if durable else "off")
            assert sent[0].startswith("BEGIN; SELECT set_config('keyserver.tenant_id'")
            assert sent[1:] == [read]


def _recorder(sent: list[str]) -> Any:
    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(statement)

    return record


async def test_the_scope_statement_takes_only_a_uuid() -> None:
    """The scope is sent as literal text (a simple query has no parameters): nothing but a UUID's canonical
    form may reach it."""
    tenant = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert f"'{tenant}'" in scope_statement(Scope.for_tenant(tenant), durable=True)
    with pytest.raises(TypeError):
        scope_statement(Scope(tenant_id="x', true); DROP TABLE tenants; --"), durable=True)  # type: ignore[arg-type]


async def test_a_failed_begin_is_rolled_back(migrated_db: Database) -> None:
    """The statement sent with BEGIN fails on the server: the error is SQLAlchemy's, and the transaction
    it left aborted is rolled back when the connection goes back to the pool, which hands it out again."""
    if migrated_db.dialect != "postgresql":
        pytest.skip("PostgreSQL only")
    async with migrated_db.engine.connect() as connection:
        with pytest.raises(DBAPIError) as raised:
            await connection.run_sync(lambda sync: hot.begin_together_with(sync, "SELECT 1/0"))
        assert getattr(raised.value.orig, "sqlstate", None) == "22012"
        failed_on = (await connection.get_raw_connection()).dbapi_connection
    async with migrated_db.transaction(Scope.for_operator()) as session:
        assert [tuple(row) for row in await hot.fetch(session, "SELECT 4") or []] == [(4,)]
        assert (await session.connection()).sync_connection.connection.dbapi_connection is failed_on  # type: ignore[union-attr]


async def test_a_connection_it_cannot_begin_takes_the_usual_path(migrated_db: Database) -> None:
    """Another isolation level (or a transaction already open): nothing sent, False."""
    if migrated_db.dialect != "postgresql":
        pytest.skip("PostgreSQL only")
    async with migrated_db.engine.connect() as connection:
        serializable = await connection.execution_options(isolation_level="SERIALIZABLE")
        assert not await serializable.run_sync(lambda sync: hot.begin_together_with(sync, "SELECT 1"))
        assert (await serializable.execute(text("SHOW transaction_isolation"))).scalar_one() == "serializable"


async def test_a_call_fails_as_sqlalchemy_fails(migrated_db: Database) -> None:
    """``Database.call`` (one statement, its own transaction, checkout to checkin in one greenlet): seen by
    the cursor events; a statement error is SQLAlchemy's error with its SQLSTATE (the request's fault, not
    a 503) and the connection goes back to the pool, which hands it out again; a killed one is a 503 that
    the pool never hands out again."""
    if migrated_db.dialect != "postgresql":
        pytest.skip("PostgreSQL only")
    sent: list[str] = []
    record = _recorder(sent)
    event.listen(migrated_db.engine.sync_engine, "before_cursor_execute", record)
    try:
        assert [tuple(row) for row in await migrated_db.call("SELECT $1::int + 1", 4) or []] == [(5,)]
    finally:
        event.remove(migrated_db.engine.sync_engine, "before_cursor_execute", record)
    assert sent == ["SELECT $1::int + 1"]
    async with migrated_db.transaction(Scope.for_operator()) as killer:  # holds a connection of its own
        pid_rows = await migrated_db.call("SELECT pg_backend_pid()")
        assert pid_rows is not None
        with pytest.raises(DBAPIError) as raised:
            await migrated_db.call("SELECT no_such_column FROM tenants")
        assert getattr(raised.value.orig, "sqlstate", None) == "42703"
        assert await migrated_db.call("SELECT pg_backend_pid()") == pid_rows  # the same connection, reused
        await killer.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid_rows[0][0]})
    # Killed between calls: met on the next call, which is tried once more on a fresh connection.
    after = await migrated_db.call("SELECT pg_backend_pid()")
    assert after is not None
    assert after != pid_rows


async def _issue_then_fail(db: Database, tenant_id: uuid.UUID) -> None:
    async with db.transaction(Scope.for_tenant(tenant_id)) as session:
        await issue_challenge(session, tenant_id)
        raise RuntimeError("roll back")


async def _fetch_in_transaction(db: Database, sql: str) -> None:
    async with db.transaction(Scope.for_operator()) as session:
        await hot.fetch(session, sql)


async def _fetch_after_the_connection_is_killed(db: Database) -> None:
    async with db.transaction(Scope.for_operator()) as session:
        pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        async with db.transaction(Scope.for_operator()) as killer:
            await killer.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        await hot.fetch(session, "SELECT 1")


def _sqlite_only(db: Database) -> None:
    if db.dialect != "sqlite":
        pytest.skip("SQLite only")


def _challenge_ids(conn: Any, tenant: str) -> list[str]:
    return [row[0] for row in conn.execute("SELECT id FROM challenges WHERE tenant_id = ?", (tenant,))]


def _none(_conn: Any) -> None:
    return None


def _fails(conn: Any) -> None:
    conn.execute("INSERT INTO challenges (tenant_id, id) VALUES (NULL, NULL)")  # NOT NULL: IntegrityError


async def test_a_sqlite_procedure_runs_in_the_transaction(migrated_db: Database) -> None:
    _sqlite_only(migrated_db)
    acme, _ = await _tenants(migrated_db)
    async with migrated_db.transaction(Scope.for_tenant(acme)) as session:
        assert await hot.on_sqlite(session, _none) == (None,)  # an answer of None is still an answer
        challenge = await issue_challenge(session, acme)  # through the ORM, uncommitted
        seen = await hot.on_sqlite(session, _challenge_ids, acme.hex)
        assert seen == ([challenge.id.hex],), "the procedure sees its transaction's own rows"
    # What a procedure wrote is rolled back with its transaction.
    with pytest.raises(RuntimeError):
        await _procedure_then_fail(migrated_db, acme)
    async with migrated_db.transaction(Scope.for_tenant(acme)) as session:
        assert await hot.on_sqlite(session, _challenge_ids, acme.hex) == ([challenge.id.hex],)


def _insert_challenge(conn: Any, tenant: str) -> None:
    conn.execute(
        "INSERT INTO challenges (tenant_id, id, nonce, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        (tenant, uuid.uuid4().hex, b"\0" * 32, "2026-12-05 12:00:00.000000", "2026-12-05 12:02:00.000000"),
    )


async def _procedure_then_fail(db: Database, tenant_id: uuid.UUID) -> None:
    async with db.transaction(Scope.for_tenant(tenant_id)) as session:
        await hot.on_sqlite(session, _insert_challenge, tenant_id.hex)
        assert len((await hot.on_sqlite(session, _challenge_ids, tenant_id.hex) or ([],))[0]) == 2
        raise RuntimeError("the caller fails after the procedure wrote")


async def test_a_sqlite_procedure_is_one_statement_to_the_events_and_fails_as_one(
    migrated_db: Database,
) -> None:
    _sqlite_only(migrated_db)
    acme, _ = await _tenants(migrated_db)
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_rest: Any) -> None:
        sent.append(sql)

    engine = migrated_db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        async with migrated_db.transaction(Scope.for_tenant(acme)) as session:
            await hot.on_sqlite(session, _challenge_ids, acme.hex)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert sent == ["BEGIN IMMEDIATE", "-- sqlite procedure _challenge_ids"]
    # sqlite3's error inside the procedure: SQLAlchemy's error class, the transaction rolled back.
    with pytest.raises(IntegrityError) as failed:
        async with migrated_db.transaction(Scope.for_tenant(acme)) as session:
            await hot.on_sqlite(session, _fails)
    assert "NOT NULL" in str(failed.value.orig)

    # An OperationalError raised where the fault rig raises it (a cursor event): a 503.
    def fail(conn: Any, *_args: Any) -> None:
        raise conn.dialect.loaded_dbapi.OperationalError("injected: disk I/O error")

    event.listen(engine, "before_cursor_execute", fail)
    try:
        with pytest.raises(Unavailable):
            async with migrated_db.transaction(Scope.for_tenant(acme)) as session:
                await hot.on_sqlite(session, _none)
    finally:
        event.remove(engine, "before_cursor_execute", fail)
    async with migrated_db.transaction(Scope.for_tenant(acme)) as session:
        assert await hot.on_sqlite(session, _challenge_ids, acme.hex) == ([],)


async def test_postgresql_has_no_sqlite_procedures(migrated_db: Database) -> None:
    if migrated_db.dialect != "postgresql":
        pytest.skip("PostgreSQL only")
    async with migrated_db.transaction(Scope.for_operator()) as session:
        assert await hot.on_sqlite(session, _none) is None


async def test_a_procedure_stores_values_as_the_orm_does(migrated_db: Database) -> None:
    """A challenge issued by SQLite's procedure (keyserver/ratelimits.py) and one issued through the ORM
    are stored alike, byte for byte in form: the ORM compares and reads what the procedure wrote."""
    _sqlite_only(migrated_db)
    from keyserver.config import Settings
    from keyserver.db.models import Tenant
    from keyserver.ratelimits import ReleaseLimiter

    acme, _ = await _tenants(migrated_db)
    async with migrated_db.transaction(Scope.for_operator()) as session:
        tenant = await session.get(Tenant, acme)
        assert tenant is not None
    # Not UTC on purpose: stored as UTC either way.
    now = datetime(2026, 12, 5, 14, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    limiter = ReleaseLimiter(migrated_db, Settings(data_dir=migrated_db.settings.data_dir))
    by_procedure = await limiter.issue_challenge(tenant, now)
    async with migrated_db.transaction(Scope.for_tenant(acme)) as session:
        by_orm = await issue_challenge(session, acme, now=now)
    async with migrated_db.engine.connect() as conn:
        rows: dict[str, tuple[Any, ...]] = {
            row[0]: tuple(row[1:])
            for row in await conn.exec_driver_sql(
                "SELECT id, tenant_id, typeof(nonce), created_at, expires_at, used_at FROM challenges"
            )
        }
    procedure_row, orm_row = rows[by_procedure.id.hex], rows[by_orm.id.hex]
    assert procedure_row == orm_row
    created, expires = "2026-12-05 12:00:00.123456", "2026-12-05 12:02:00.123456"
    assert procedure_row == (acme.hex, "blob", created, expires, None)
    # And the ORM reads the procedure's challenge back as it reads its own.
    async with migrated_db.transaction(Scope.for_tenant(acme)) as session:
        nonce = await consume_challenge(session, acme, by_procedure.id, now + timedelta(seconds=1))
    assert nonce == by_procedure.nonce


def _count_tenant_challenges(conn: Any, tenant: str) -> int:
    conn.execute(
        "INSERT INTO challenges (tenant_id, id, nonce, created_at, expires_at) VALUES (?, ?, ?, ?, ?)",
        (tenant, uuid.uuid4().hex, b"\0" * 32, "2026-12-05 12:00:00.000000", "2026-12-05 12:02:00.000000"),
    )
    return int(conn.execute("SELECT count(*) FROM challenges WHERE tenant_id = ?", (tenant,)).fetchone()[0])


def _insert_then_fail(conn: Any, tenant: str) -> None:
    _count_tenant_challenges(conn, tenant)
    _fails(conn)


async def test_a_sqlite_call_is_a_transaction_of_its_own_in_one_hand_off(migrated_db: Database) -> None:
    _sqlite_only(migrated_db)
    from tests.test_db_sqlite_driver import HandOffs

    acme, _ = await _tenants(migrated_db)
    await migrated_db.call_sqlite(_count_tenant_challenges, acme.hex)  # the pool holds a connection now
    with HandOffs() as one_call:
        assert await migrated_db.call_sqlite(_count_tenant_challenges, acme.hex) == (2,)
    assert one_call.count == 1, "BEGIN, the procedure and COMMIT in one hand-off; no reset after"
    # A procedure that fails: rolled back whole, its error raised as SQLAlchemy's.
    with pytest.raises(IntegrityError):
        await migrated_db.call_sqlite(_insert_then_fail, acme.hex)
    async with migrated_db.transaction(Scope.for_tenant(acme)) as session:
        assert await hot.on_sqlite(session, _challenge_ids, acme.hex) is not None
        assert len((await hot.on_sqlite(session, _challenge_ids, acme.hex) or ([],))[0]) == 2
    # It takes this process's turn: while a transaction is open, it has not begun.
    opened, may_end = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with migrated_db.transaction(Scope.for_tenant(acme)):
            opened.set()
            await may_end.wait()

    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, sql: str, *_rest: Any) -> None:
        sent.append(sql)

    engine = migrated_db.engine.sync_engine
    holding = asyncio.create_task(holder())
    await opened.wait()
    event.listen(engine, "before_cursor_execute", record)
    try:
        waiting = asyncio.create_task(migrated_db.call_sqlite(_count_tenant_challenges, acme.hex))
        for _ in range(10):
            await asyncio.sleep(0.01)
        assert sent == [], "the call began while another transaction of this process was open"
        may_end.set()
        await holding
        assert await waiting == (3,)
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert sent == ["-- sqlite call _count_tenant_challenges"]

    # An OperationalError where the fault rig raises one (a cursor event): a 503, nothing written.
    def fail(conn: Any, *_args: Any) -> None:
        raise conn.dialect.loaded_dbapi.OperationalError("injected: disk I/O error")

    event.listen(engine, "before_cursor_execute", fail)
    try:
        with pytest.raises(Unavailable):
            await migrated_db.call_sqlite(_count_tenant_challenges, acme.hex)
    finally:
        event.remove(engine, "before_cursor_execute", fail)
    assert await migrated_db.call_sqlite(_count_tenant_challenges, acme.hex) == (4,)


async def test_postgresql_has_no_sqlite_calls(migrated_db: Database) -> None:
    if migrated_db.dialect != "postgresql":
        pytest.skip("PostgreSQL only")
    assert await migrated_db.call_sqlite(_none) is None
