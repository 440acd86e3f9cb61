"""SQLite's driver adapter: one hand-off to aiosqlite's thread per statement (keyserver/db/sqlite_driver.py).

Two things are checked. The count: a statement is one call queued to aiosqlite's thread (SQLAlchemy's
own adapter queues three or four), counted at aiosqlite's queue, so the test fails if the stock cursor
comes back. The meaning: every statement answers exactly as through SQLAlchemy's own aiosqlite adapter —
rows, column names, row counts, generated ids, errors, streamed results — run side by side on two
engines over the same kinds of statements, random ones included (hypothesis)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from keyserver.config import Settings
from keyserver.db import sqlite_driver
from keyserver.db.session import Database

pytestmark = pytest.mark.asyncio

_SCHEMA = (
    "CREATE TABLE t (id INTEGER PRIMARY KEY AUTOINCREMENT, k TEXT NOT NULL UNIQUE, v INTEGER, b BLOB)",
)


class HandOffs:
    """Calls queued to aiosqlite's thread (its queue's put_nowait), while counting."""

    def __init__(self) -> None:
        self.count = 0
        self._original: Any = aiosqlite.Connection._execute

    def __enter__(self) -> HandOffs:
        original = self._original
        counter = self

        async def counted(connection: Any, fn: Any, *args: Any, **kwargs: Any) -> Any:
            counter.count += 1
            return await original(connection, fn, *args, **kwargs)

        setattr(aiosqlite.Connection, "_execute", counted)  # noqa: B010 (a method, replaced for the count)
        return self

    def __exit__(self, *_exc: object) -> None:
        setattr(aiosqlite.Connection, "_execute", self._original)  # noqa: B010


async def _engine(path: Path, *, ours: bool) -> AsyncEngine:
    url = f"sqlite+aiosqlite:///{path}"
    engine = create_async_engine(url, module=sqlite_driver.dbapi()) if ours else create_async_engine(url)
    async with engine.begin() as conn:
        for statement in _SCHEMA:
            await conn.execute(text(statement))
    return engine


@pytest.fixture
async def service_db(tmp_path: Path) -> AsyncIterator[Database]:
    """The service's own SQLite engine (keyserver/db/session.py), on an empty database."""
    db = Database(Settings(data_dir=tmp_path))
    yield db
    await db.dispose()


@pytest.fixture
async def engines(tmp_path: Path) -> AsyncIterator[tuple[AsyncEngine, AsyncEngine]]:
    stock = await _engine(tmp_path / "stock.db", ours=False)
    ours = await _engine(tmp_path / "ours.db", ours=True)
    yield stock, ours
    await stock.dispose()
    await ours.dispose()


async def test_the_service_engine_uses_one_hand_off_per_statement(service_db: Database) -> None:
    db = service_db
    async with db.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))  # connect first: opening costs hand-offs of its own
        with HandOffs() as select_one:
            rows = (await conn.execute(text("SELECT 1 AS one, 'x' AS two"))).all()
        with HandOffs() as create:
            await conn.execute(text("CREATE TABLE u (a INTEGER)"))
        with HandOffs() as insert:
            result = await conn.execute(text("INSERT INTO u (a) VALUES (1), (2)"))
    assert rows == [(1, "x")]
    assert result.rowcount == 2
    # SQLAlchemy's own adapter: 4 (cursor, execute, fetchall, close) and 3 without rows.
    assert (select_one.count, create.count, insert.count) == (1, 1, 1)


async def test_a_service_transaction_is_begin_statements_and_commit(service_db: Database) -> None:
    db = service_db
    async with db.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        await conn.commit()
        with HandOffs() as transaction:
            async with conn.begin():  # BEGIN IMMEDIATE (the engine's begin hook), 3 statements, COMMIT
                await conn.execute(text("CREATE TABLE u (a INTEGER)"))
                await conn.execute(text("INSERT INTO u (a) VALUES (7)"))
                assert (await conn.execute(text("SELECT a FROM u"))).scalar_one() == 7
    assert transaction.count == 5


async def _answers(engine: AsyncEngine, statements: list[Statement]) -> list[Any]:
    """What each statement answers, in one transaction per statement: rows and columns, or the row count
    and last row id, or the error's class and SQLite's message."""
    out: list[Any] = []
    for sql, params in statements:
        try:
            async with engine.begin() as conn:
                result = await conn.execute(text(sql), params or {})
                if result.returns_rows:
                    out.append(("rows", list(result.keys()), [tuple(row) for row in result.all()]))
                else:
                    out.append(("count", result.rowcount, result.lastrowid))
        except (IntegrityError, OperationalError) as exc:
            out.append(("error", type(exc).__name__, str(exc.orig)))
    return out


Statement = tuple[str, dict[str, Any] | None]

_FIXED: list[Statement] = [
    ("INSERT INTO t (k, v, b) VALUES (:k, :v, :b)", {"k": "a", "v": 1, "b": b"\x00\xff"}),
    ("INSERT INTO t (k, v, b) VALUES (:k, :v, :b)", {"k": "b", "v": None, "b": None}),
    ("INSERT INTO t (k, v) VALUES (:k, :v)", {"k": "a", "v": 2}),  # UNIQUE violated
    ("INSERT INTO t (k, v) VALUES (:k, :v) RETURNING id, k", {"k": "c", "v": 3}),
    ("UPDATE t SET v = v + 1 WHERE v IS NOT NULL", None),
    ("UPDATE t SET v = 0 WHERE k = 'nobody'", None),
    ("SELECT id, k, v, b FROM t ORDER BY id", None),
    ("SELECT * FROM t WHERE k = 'nobody'", None),
    ("SELECT count(*) AS n, max(id) AS top FROM t", None),
    ("DELETE FROM t WHERE k = :k", {"k": "b"}),
    ("SELECT * FROM no_such_table", None),
    ("SELEKT 1", None),
    ("INSERT INTO t (k) VALUES (NULL)", None),  # NOT NULL violated
    ("SELECT k FROM t ORDER BY k", None),
]


async def test_fixed_statements_answer_as_through_sqlalchemys_own_adapter(
    engines: tuple[AsyncEngine, AsyncEngine],
) -> None:
    stock, ours = engines
    expected = await _answers(stock, _FIXED)
    assert await _answers(ours, _FIXED) == expected
    kinds = {answer[0] for answer in expected}
    assert kinds == {"rows", "count", "error"}, "the fixed statements cover rows, counts and errors"


_keys = st.text(alphabet="abcde", min_size=1, max_size=3)
_statement: st.SearchStrategy[Statement] = st.one_of(
    st.builds(
        lambda k, v: ("INSERT INTO t (k, v) VALUES (:k, :v)", {"k": k, "v": v}),
        _keys,
        st.none() | st.integers(-(2**63), 2**63 - 1),
    ),
    st.builds(lambda k: ("DELETE FROM t WHERE k >= :k", {"k": k}), _keys),
    st.builds(lambda v: ("UPDATE t SET v = :v WHERE v IS NULL OR v < :v", {"v": v}), st.integers(-5, 5)),
    st.builds(lambda k: ("SELECT id, k, v FROM t WHERE k <= :k ORDER BY id", {"k": k}), _keys),
    st.just(("SELECT sum(v), count(*) FROM t", None)),
    st.just(("UPDATE t SET v = v * 2", None)),  # may overflow: an error, the same on both
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(statements=st.lists(_statement, max_size=12))
async def test_random_statements_answer_as_through_sqlalchemys_own_adapter(
    engines: tuple[AsyncEngine, AsyncEngine], statements: list[Statement]
) -> None:
    stock, ours = engines
    for engine in (stock, ours):
        async with engine.begin() as conn:
            await conn.execute(text("DELETE FROM t"))
    assert await _answers(ours, statements) == await _answers(stock, statements)


async def test_streamed_results_and_many_rows_of_parameters(engines: tuple[AsyncEngine, AsyncEngine]) -> None:
    answers = []
    for engine in engines:
        async with engine.begin() as conn:
            inserted = await conn.execute(
                text("INSERT INTO t (k, v) VALUES (:k, :v)"), [{"k": f"k{i}", "v": i} for i in range(50)]
            )
            streamed = await conn.stream(text("SELECT k, v FROM t ORDER BY v"))
            rows = [tuple(row) async for row in streamed]
        answers.append((inserted.rowcount, rows))
    assert answers[0] == answers[1]
    assert answers[1][0] == 50
    assert len(answers[1][1]) == 50


async def test_a_closed_connection_is_a_disconnect_not_a_hang(tmp_path: Path) -> None:
    engine = await _engine(tmp_path / "closed.db", ours=True)
    try:
        async with engine.connect() as conn:
            raw = await conn.get_raw_connection()
            driver = raw.driver_connection
            assert driver is not None
            await driver.close()  # the database connection goes away under SQLAlchemy
            with pytest.raises(OperationalError) as caught:
                await asyncio.wait_for(conn.execute(text("SELECT 1")), 5)
            assert caught.value.connection_invalidated
        async with engine.connect() as conn:  # the pool made a fresh one
            assert (await conn.execute(text("SELECT 2"))).scalar_one() == 2
    finally:
        await engine.dispose()


async def test_the_pool_takes_a_committed_connection_back_without_a_hand_off(service_db: Database) -> None:
    db = service_db
    async with db.engine.begin() as conn:
        await conn.execute(text("CREATE TABLE u (a INTEGER)"))
    with HandOffs() as committed:
        async with db.engine.begin() as conn:  # BEGIN IMMEDIATE, INSERT, COMMIT; returned to the pool
            await conn.execute(text("INSERT INTO u (a) VALUES (1)"))
    assert committed.count == 3, "the pool's rollback of a committed connection is skipped"
    # A connection returned with its transaction open is still rolled back.
    conn = await db.engine.connect()
    await conn.begin()
    await conn.execute(text("INSERT INTO u (a) VALUES (2)"))
    with HandOffs() as abandoned:
        await conn.close()
    assert abandoned.count == 1
    async with db.engine.connect() as conn:
        assert (await conn.execute(text("SELECT a FROM u"))).scalars().all() == [1]
