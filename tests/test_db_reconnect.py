"""A transaction begins on a live connection without pool pre-ping (keyserver/db/session.py).

A throwaway PostgreSQL cluster of this module's own is restarted and crashed under a pool of several
connections: every following transaction succeeds (no request pays for the dead connections), while
a transaction costs no statement beyond its scope's ``set_config`` and its own; a server that stays
down is a 503 (``Unavailable``), never a hang or a half-done transaction.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from sqlalchemy import event, text

from keyserver.config import Settings
from keyserver.db.session import Database, Scope
from keyserver.errors import Unavailable
from tests.fixtures.postgres import PostgresCluster, throwaway_cluster

pytestmark = [pytest.mark.postgres, pytest.mark.asyncio(loop_scope="module")]

POOLED = 4


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    with throwaway_cluster(crash_safe=True) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def db(cluster: PostgresCluster, tmp_path: Path) -> AsyncIterator[Database]:
    database = cluster.create_database()
    settings = Settings(data_dir=tmp_path, database_url=cluster.url(database), db_timeout_s=2.0)
    assert settings.db_pre_ping is False  # the default under test
    handle = Database(settings)
    try:
        yield handle
    finally:
        await handle.dispose()


class Statements:
    """Every statement the engine sends, in order."""

    def __init__(self, db: Database) -> None:
        self.sent: list[str] = []
        event.listen(db.engine.sync_engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.sent.append(" ".join(statement.split()))


async def backend_pid(db: Database) -> int:
    async with db.transaction(Scope.for_operator()) as session:
        return int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def fill_pool(db: Database) -> set[int]:
    """POOLED connections in the pool at once (each transaction holds one while the others start)."""
    gate = asyncio.Barrier(POOLED)

    async def hold() -> int:
        async with db.transaction(Scope.for_operator()) as session:
            pid = int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one())
            await gate.wait()
            return pid

    return set(await asyncio.gather(*(hold() for _ in range(POOLED))))


async def restart_under_a_full_pool(db: Database, cluster: PostgresCluster, mode: str) -> set[int]:
    """The server stopped (``pg_ctl stop -m mode``) and started again while the pool holds POOLED
    connections; their backends' pids."""
    before = await fill_pool(db)
    assert len(before) == POOLED
    await asyncio.to_thread(cluster.stop, mode)
    await asyncio.to_thread(cluster.start)
    return before


async def test_a_transaction_sends_only_its_scope_and_its_statements(db: Database) -> None:
    await backend_pid(db)  # a pooled connection to reuse
    statements = Statements(db)
    async with db.transaction(Scope.for_operator()) as session:
        await session.execute(text("SELECT 1"))
    assert len(statements.sent) == 2, statements.sent
    assert statements.sent[0].startswith("BEGIN; SELECT set_config('keyserver.tenant_id'")  # one round trip
    assert statements.sent[1] == "SELECT 1"


@pytest.mark.parametrize("how", ["restarted", "crashed"])
async def test_every_transaction_after_a_restart_succeeds(
    db: Database, cluster: PostgresCluster, how: str
) -> None:
    before = await restart_under_a_full_pool(db, cluster, "fast" if how == "restarted" else "immediate")
    after = [await backend_pid(db) for _ in range(2 * POOLED)]
    assert not before & set(after), "a connection from before the restart was used"


async def test_a_connection_killed_between_transactions_costs_no_request(
    db: Database, cluster: PostgresCluster
) -> None:
    pid = await backend_pid(db)
    cluster.admin(f"SELECT pg_terminate_backend({pid}, 5000)")  # waits until it has exited
    assert await backend_pid(db) != pid


async def _in_a_transaction(db: Database) -> None:
    async with db.transaction(Scope.for_operator()) as session:
        await session.execute(text("SELECT 1"))


async def _in_one_statement(db: Database) -> None:
    """``Database.call``: the challenge's and the attempt's one round trip (keyserver/db/hot.py)."""
    await db.call("SELECT 1")


@pytest.mark.parametrize("work", [_in_a_transaction, _in_one_statement])
async def test_a_server_that_stays_down_is_unavailable_and_recovers(
    db: Database, cluster: PostgresCluster, work: Callable[[Database], Awaitable[None]]
) -> None:
    await fill_pool(db)
    await asyncio.to_thread(cluster.stop, "fast")
    try:
        with pytest.raises(Unavailable):
            await work(db)
    finally:
        await asyncio.to_thread(cluster.start)
    assert await backend_pid(db) > 0
    rows = await db.call("SELECT 1 AS one")
    assert rows is not None
    assert [dict(row) for row in rows] == [{"one": 1}]


async def test_a_failure_inside_the_transaction_is_not_retried(
    db: Database, cluster: PostgresCluster
) -> None:
    """Only the first statement is tried again: once the caller's work began, a lost connection is a
    503 and the caller's work is rolled back, never run twice."""
    statements = Statements(db)
    pids: list[int] = []

    async def work() -> None:
        async with db.transaction(Scope.for_operator()) as session:
            pids.append(int((await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()))
            cluster.admin(f"SELECT pg_terminate_backend({pids[0]}, 5000)")
            await session.execute(text("SELECT 1"))

    with pytest.raises(Unavailable):
        await work()
    (pid,) = pids
    assert statements.sent.count("SELECT pg_backend_pid()") == 1
    assert await backend_pid(db) != pid


async def test_readiness_after_a_restart_is_not_fooled_by_dead_pooled_connections(
    db: Database, cluster: PostgresCluster
) -> None:
    await restart_under_a_full_pool(db, cluster, "fast")
    for _ in range(POOLED):
        await db.ping()  # raises Unavailable if a dead pooled connection answered for the database


async def test_only_a_non_durable_transaction_changes_synchronous_commit(
    db: Database, cluster: PostgresCluster
) -> None:
    """A deployment's own setting (here remote_apply, as synchronous replication would use) is kept by
    every transaction; only ``durable=False`` (the attempt counter) commits without waiting."""

    async def setting(durable: bool) -> str:
        async with db.transaction(Scope.for_operator(), durable=durable) as session:
            return str((await session.execute(text("SHOW synchronous_commit"))).scalar_one())

    async with db.transaction(Scope.for_operator()) as session:
        name = str((await session.execute(text("SELECT current_database()"))).scalar_one())
    cluster.admin(f'ALTER DATABASE "{name}" SET synchronous_commit = remote_apply')
    await db.engine.dispose()  # a database's settings apply to connections made after them
    assert await setting(durable=True) == "remote_apply"
    assert await setting(durable=False) == "off"
    assert await setting(durable=True) == "remote_apply"  # set_config(…, true) ended with its transaction


async def test_a_one_statement_transaction_after_a_restart_succeeds(
    db: Database, cluster: PostgresCluster
) -> None:
    """``Database.call`` (the challenge's and the attempt's one round trip, keyserver/db/hot.py) meets the
    dead pooled connections as a transaction's first statement does: tried once more on a fresh one."""
    before = await restart_under_a_full_pool(db, cluster, "immediate")
    statements = Statements(db)
    after = []
    for _ in range(2 * POOLED):
        rows = await db.call("SELECT pg_backend_pid() AS pid")
        assert rows is not None
        after.append(rows[0]["pid"])
    assert not before & set(after), "a connection from before the restart was used"
    # Only the first call met a dead connection (SQLAlchemy discards every one pooled before it).
    assert len(statements.sent) == 2 * POOLED + 1, statements.sent
