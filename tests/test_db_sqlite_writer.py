"""SQLite: one process's transactions take turns (keyserver/db/session.py, ``Database._sqlite_turn``).

SQLite has one writer and every transaction here begins IMMEDIATE. Without the turn, a second
transaction of the same process sends its ``BEGIN IMMEDIATE`` while the first is open and polls for the
lock with SQLite's growing sleeps; with it, the second sends nothing until the first has ended. These
tests watch the statements sent (not the time taken), so they fail if the turn is removed."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import event

from keyserver.db import session as db_session
from keyserver.db.session import Database, Scope
from keyserver.errors import Unavailable
from keyserver.tenancy import create_tenant, lookup_tenant

pytestmark = pytest.mark.asyncio


def _sqlite_only(db: Database) -> None:
    if db.dialect != "sqlite":
        pytest.skip("SQLite only: PostgreSQL runs transactions side by side")


class Statements:
    """What each transaction sent, in order, tagged by which transaction was open when it was sent."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.sent: list[str] = []

    def __enter__(self) -> list[str]:
        event.listen(self.db.engine.sync_engine, "before_cursor_execute", self._record)
        return self.sent

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.db.engine.sync_engine, "before_cursor_execute", self._record)

    def _record(self, _conn: Any, _cursor: Any, sql: str, *_rest: Any) -> None:
        self.sent.append(" ".join(sql.split()))


async def test_a_second_transaction_sends_nothing_until_the_first_has_ended(migrated_db: Database) -> None:
    _sqlite_only(migrated_db)
    first_open, first_may_end = asyncio.Event(), asyncio.Event()
    order: list[str] = []

    async def first() -> None:
        async with migrated_db.transaction(Scope.for_operator()) as session:
            await create_tenant(session, "acme")
            first_open.set()
            await first_may_end.wait()
            order.append("first ends")

    async def second() -> None:
        await first_open.wait()
        async with migrated_db.transaction(Scope.for_operator()) as session:
            order.append("second began")
            await create_tenant(session, "other")

    with Statements(migrated_db) as sent:
        task_one, task_two = asyncio.create_task(first()), asyncio.create_task(second())
        await first_open.wait()
        first_only = sent.count("BEGIN IMMEDIATE")
        for _ in range(20):  # give the second every chance to send its BEGIN (it must not)
            await asyncio.sleep(0.01)
        begun_while_first_open = sent.count("BEGIN IMMEDIATE")
        first_may_end.set()
        await asyncio.gather(task_one, task_two)
    assert first_only == 1
    assert begun_while_first_open == 1, "the second transaction began while the first held the write lock"
    assert order == ["first ends", "second began"]
    assert sent.count("BEGIN IMMEDIATE") == 2, "the second transaction's own BEGIN, after the first ended"
    assert await lookup_tenant(migrated_db, "acme")
    assert await lookup_tenant(migrated_db, "other")


async def test_a_wait_past_the_busy_timeout_is_a_503_and_frees_its_place(
    migrated_db: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bounded as SQLite's own wait is; a waiter that gave up (or was cancelled) leaves no lock behind."""
    _sqlite_only(migrated_db)
    monkeypatch.setattr(db_session, "SQLITE_BUSY_TIMEOUT_MS", 100)
    held, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with migrated_db.transaction(Scope.for_operator()):
            held.set()
            await release.wait()

    task = asyncio.create_task(holder())
    await held.wait()
    with pytest.raises(Unavailable, match="busy"):
        async with migrated_db.transaction(Scope.for_operator()):
            pytest.fail("began while another transaction of this process was open")
    cancelled = asyncio.create_task(_begin(migrated_db))
    await asyncio.sleep(0.02)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    release.set()
    await task
    # Neither the timed-out nor the cancelled waiter holds the turn: the next transaction begins.
    async with migrated_db.transaction(Scope.for_operator()) as session:
        await create_tenant(session, "after")


async def _begin(db: Database) -> None:
    async with db.transaction(Scope.for_operator()):
        pass
