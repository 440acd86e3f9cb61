"""The release path's hottest statements on PostgreSQL, run on the transaction's own asyncpg connection.

Every release runs about twenty statements. Through the ORM each costs ~0.3 ms of the server's CPU (a
SELECT of one row: the ORM's execution context, result and identity map, the greenlet bridge, the
asyncpg adapter's cursor), against ~0.08 ms on asyncpg directly with its own prepared statement (measured,
docs/performance.md, "Server CPU per release, measured and cut"). :func:`fetch` runs a statement
of the release path that way *inside the session's transaction*: the same connection, after the scope's
``set_config`` (so row-level security applies exactly as for every other statement), committed or rolled
back with everything else. Failures are raised as SQLAlchemy raises them (``DBAPIError`` and its
subclasses, the connection invalidated when it is gone), so ``Database.transaction`` turns them into 503s
as before.

SQLite (and a session outside a transaction) get ``None`` from :func:`fetch`: the caller runs its ORM
statement instead, or — on the release path's hottest steps — :func:`on_sqlite`: the steps of one of
PostgreSQL's functions (migrations/versions) as a Python function run in aiosqlite's thread, in the
session's transaction, in one hand-off (each held to the same Python reference as the PostgreSQL
function, tests/test_one_round_trip.py).

:func:`call` runs one statement as a transaction of its own (PostgreSQL's implicit one: a single round
trip, no BEGIN or COMMIT), for the functions of migrations/versions/0012 that set their scope themselves.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import DateTime, Uuid
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
from sqlalchemy.util import await_only, greenlet_spawn

from keyserver.db.types import UTCDateTime

# asyncpg's Record: indexable by position and by column name.
Record = Any
T = TypeVar("T")


# session.info key: the (transaction, connection, adapted asyncpg connection) of the session's current
# transaction, so that a transaction's statements after its first skip the two greenlet round trips of
# looking its connection up again (measured: ~40 µs each).
_CONNECTION = "keyserver.hot.connection"


async def fetch(session: AsyncSession, sql: str, *args: object) -> list[Record] | None:
    """The rows of ``sql`` (PostgreSQL, ``$n`` parameters) in ``session``'s transaction; ``None`` when
    the session is not on PostgreSQL or has no transaction open (the caller then uses the ORM)."""
    transaction = _innermost(session)
    cached = session.info.get(_CONNECTION)
    if cached is not None and transaction is not None and cached[0] is transaction and transaction.is_active:
        # The same (sub)transaction as the last statement: the same connection.
        return await _run(cached[1], cached[2], sql, args)
    if session.bind is None or session.bind.dialect.name != "postgresql":
        return None
    connection = await session.connection()
    fairy = await connection.get_raw_connection()
    adapted: Any = fairy.dbapi_connection  # SQLAlchemy's AsyncAdapt_asyncpg_connection
    if adapted is None or adapted._transaction is None:
        # A guard only: session.connection() begins the transaction (and its scope's set_config) itself.
        # Never run a statement outside SQLAlchemy's transaction.
        return None
    session.info[_CONNECTION] = (_innermost(session), connection, adapted)
    return await _run(connection, adapted, sql, args)


def _innermost(session: AsyncSession) -> Any:
    """The session's innermost transaction: a savepoint's (begin_nested) if one is open, else the root's
    (None if none). What :func:`fetch` keys its connection on: SQLAlchemy emits SAVEPOINT only when the
    nested transaction first asks for its connection; keyed on the root transaction, a statement here
    reused the connection without asking, so a savepoint begun after the first was never emitted and its
    rollback undid nothing (a batch member's challenge stayed used)."""
    sync_session = session.sync_session
    return sync_session.get_nested_transaction() or sync_session.get_transaction()


async def call(engine: AsyncEngine, sql: str, *args: object) -> list[Record] | None:
    """The rows of one statement run as a transaction of its own, on a pooled connection; ``None`` on
    SQLite. Only for statements that are a whole transaction by themselves and set their own scope (the
    functions of migrations/versions/0012): row-level security sees no scope otherwise, and so no rows.
    Failures are raised as SQLAlchemy raises them (see :func:`fetch`); ``Database.call`` retries one that
    met a dead pooled connection and turns the database's failures into 503s.

    The checkout, the statement and the checkin run in ONE greenlet of SQLAlchemy's (measured: ~50 us of
    CPU less per call than an ``AsyncConnection``'s three, docs/performance.md, "Sixth pass")."""
    if engine.dialect.name != "postgresql":
        return None
    rows: list[Record] = await greenlet_spawn(_call_in_greenlet, engine.sync_engine, sql, args)
    return rows


def _call_in_greenlet(engine: Engine, sql: str, args: tuple[object, ...]) -> list[Record]:
    with engine.connect() as connection:  # the pool's checkout and checkin, awaited in this greenlet
        adapted: Any = connection.connection.dbapi_connection
        if adapted is None or adapted._transaction is not None:
            raise RuntimeError("a pooled connection came back with a transaction open")
        # No transaction is begun: asyncpg runs the statement in PostgreSQL's implicit transaction,
        # committed (or rolled back) with the statement, in one round trip.
        rows: list[Record] = _in_greenlet(connection, adapted, sql, args, adapted._connection.fetch)
        return rows


def _in_greenlet(
    connection: Connection,
    adapted: Any,
    sql: str,
    args: tuple[object, ...],
    send: Callable[..., Awaitable[T]],
) -> T:
    """``send(sql, *args)`` on asyncpg, from inside a SQLAlchemy greenlet, as SQLAlchemy runs a statement
    of its own: the engine's cursor events fire (the statement counts, the fault rig's injected errors),
    and a failure goes through SQLAlchemy's own handler (the connection and the pool invalidated when it
    is gone, the driver's error wrapped as ``DBAPIError``)."""
    events = connection._has_events or connection.engine._has_events
    try:
        if events:
            for before in connection.dispatch.before_cursor_execute:
                sql, args = before(connection, None, sql, args, None, False)
        result = await_only(send(sql, *args))
        if events:
            for after in connection.dispatch.after_cursor_execute:
                after(connection, None, sql, args, None, False)
    except Exception as error:
        dbapi = connection.dialect.loaded_dbapi
        try:
            adapted._handle_exception(error)  # into the adapter's DB-API error classes
        except dbapi.Error as translated:
            connection._handle_dbapi_exception(translated, sql, args, None, None)
        raise  # pragma: no cover - _handle_exception always raises
    return result


async def _run(connection: AsyncConnection, adapted: Any, sql: str, args: tuple[object, ...]) -> list[Record]:
    sync = connection.sync_connection
    assert sync is not None  # a connection the session has begun on
    # The engine's cursor events fire as for any statement, so what watches statements (the tests that
    # count a release's statements, the fault rig's injected statement errors) sees these too.
    events = sync._has_events or sync.engine._has_events
    try:
        if events:
            for before in sync.dispatch.before_cursor_execute:
                sql, args = before(sync, None, sql, args, None, False)
        rows: list[Record] = await adapted._connection.fetch(sql, *args)
        if events:
            for after in sync.dispatch.after_cursor_execute:
                after(sync, None, sql, args, None, False)
    except Exception as error:  # what asyncpg raises, as SQLAlchemy would raise it (see module doc)
        raise await _as_sqlalchemy_error(connection, adapted, sql, args, error) from error
    return rows


def begin_together_with(connection: Connection, statement: str) -> bool:
    """PostgreSQL, from SQLAlchemy's ``after_begin`` event (inside its greenlet): begin the connection's
    transaction and run ``statement`` in ONE round trip — ``BEGIN; <statement>`` as one simple query —
    instead of asyncpg's ``BEGIN`` and then the statement (measured: one round trip and SQLAlchemy's
    execution of the statement, ~0.1 ms of CPU per transaction, docs/performance.md, "Sixth pass").

    ``statement`` is sent as text with no parameters (a simple query takes none): it must hold literal
    values only, never a caller's text. Its rows are discarded. False, with nothing sent, when the
    connection is not one to begin this way (a transaction already open, an isolation level or access
    mode other than the default): the caller then runs the statement as usual.

    SQLAlchemy's adapter tracks the transaction as it tracks its own (it commits and rolls back with
    asyncpg's own ``COMMIT;`` and ``ROLLBACK;``); it is tracked before anything is sent, so that whatever
    fails, the rollback follows (a ROLLBACK outside a transaction only warns). The engine's cursor events
    see the statement as sent, and its failures are raised exactly as SQLAlchemy raises a statement's
    (a connection found dead is invalidated with every one pooled before it, and the error says so)."""
    adapted: Any = connection.connection.dbapi_connection  # SQLAlchemy's AsyncAdapt_asyncpg_connection
    if adapted is None or adapted._transaction is not None or adapted.readonly or adapted.deferrable:
        return False
    if adapted.isolation_level is None:
        begin = "BEGIN"
    elif adapted.isolation_level == "read_committed":
        begin = "BEGIN ISOLATION LEVEL READ COMMITTED"
    else:
        return False
    sql = f"{begin}; {statement}"
    driver = adapted._connection
    adapted._transaction = _Begun(driver)
    _in_greenlet(connection, adapted, sql, (), driver.execute)
    return True


class _Begun:
    """The adapter's handle on a transaction :func:`begin_together_with` began (in place of asyncpg's
    ``Transaction``, which would send its own ``BEGIN``): it ends it as asyncpg's does."""

    __slots__ = ("_driver",)

    def __init__(self, driver: Any) -> None:
        self._driver = driver

    async def commit(self) -> None:
        await self._driver.execute("COMMIT;")

    async def rollback(self) -> None:
        await self._driver.execute("ROLLBACK;")


async def _as_sqlalchemy_error(
    connection: Any, adapted: Any, sql: str, args: tuple[object, ...], error: Exception
) -> BaseException:
    dialect = connection.dialect
    dbapi = dialect.loaded_dbapi
    try:
        adapted._handle_exception(error)  # the adapter's translation into its DB-API error classes
    except dbapi.Error as translated:
        gone = dialect.is_disconnect(translated, adapted, None)
        if gone:
            # As SQLAlchemy's engine does: the pool discards this connection instead of reusing it, and
            # every connection it made before this one on their next checkout (a restarted server
            # killed them all).
            sync = connection.sync_connection
            fairy = None if sync is None else sync._dbapi_connection
            if sync is not None and fairy is not None:
                sync.engine.pool._invalidate(fairy, translated, _checkin=False)
            await connection.invalidate(translated)
        wrapped: BaseException = DBAPIError.instance(
            sql, args, translated, dbapi.Error, connection_invalidated=gone, dialect=dialect
        )
        return wrapped
    except BaseException as other:  # not a database error (e.g. cancellation): as it was raised
        return other
    return error


def _rows_of(conn: sqlite3.Connection, sql: str, args: tuple[object, ...]) -> list[tuple[Any, ...]]:
    return conn.execute(sql, args).fetchall()


async def fetch_sqlite(session: AsyncSession, sql: str, *args: object) -> list[tuple[Any, ...]]:
    """SQLite only: the rows of one statement (``?`` parameters, values as SQLite stores them: see
    :func:`sqlite_uuid`) in ``session``'s transaction, one hand-off (:func:`run_sqlite`). Its callers use
    :func:`fetch` on PostgreSQL and call this when that answered ``None``."""
    return await run_sqlite(session, _rows_of, sql, args, label=sql)


async def run_sqlite(
    session: AsyncSession, procedure: Callable[..., T], *args: object, label: str | None = None
) -> T:
    """:func:`on_sqlite` for a caller that knows it is on SQLite (its PostgreSQL form answered ``None``):
    the procedure's answer itself; ``RuntimeError`` on any other store."""
    done = await on_sqlite(session, procedure, *args, label=label)
    if done is None:
        raise RuntimeError(f"{procedure.__name__} is SQLite's; this session is on another store")
    return done[0]


async def on_sqlite(
    session: AsyncSession, procedure: Callable[..., T], *args: object, label: str | None = None
) -> tuple[T] | None:
    """SQLite: ``(procedure(connection, *args),)``, run in aiosqlite's thread on the sqlite3 connection of
    ``session``'s transaction (begun here if it was not), in ONE hand-off to that thread; ``None`` on
    PostgreSQL. Wrapped in a tuple so that a procedure may itself answer ``None``.

    ``procedure`` runs plain sqlite3 statements, in the transaction: committed or rolled back with the
    rest. It must touch only its own tenant's rows (SQLite has no row-level security) and take values
    already in the form SQLite stores (UUIDs as 32 hex digits, as SQLAlchemy's ``Uuid`` writes them).
    The engine's cursor events fire for it as for one statement (the fault rig's injected errors, the
    statement counts), and sqlite3's errors are raised as SQLAlchemy raises them, so
    ``Database.transaction`` turns the database's failures into 503s as for any statement."""
    if session.bind is None or session.bind.dialect.name != "sqlite":
        return None
    return await _run_sqlite(await session.connection(), procedure, args, label)


async def call_sqlite(engine: AsyncEngine, procedure: Callable[..., T], *args: object) -> tuple[T] | None:
    """SQLite: ``(procedure(connection, *args),)`` as a transaction of its own — ``BEGIN IMMEDIATE``, the
    procedure, ``COMMIT`` (``ROLLBACK`` if it raised) — on a pooled connection, in ONE hand-off to
    aiosqlite's thread (the counterpart of :func:`call`); ``None`` on PostgreSQL. The caller takes this
    process's SQLite turn first (``Database.call_sqlite``). Events and errors as :func:`on_sqlite`."""
    if engine.dialect.name != "sqlite":
        return None
    async with engine.connect() as connection:
        # Shown to the cursor events as a call (a transaction of its own), not a procedure inside one.
        label = f"-- sqlite call {procedure.__name__}"
        return await _run_sqlite(connection, _in_own_transaction, (procedure, args), label)


def _in_own_transaction(conn: sqlite3.Connection, procedure: Callable[..., T], args: tuple[object, ...]) -> T:
    if conn.in_transaction:
        raise sqlite3.ProgrammingError("a pooled connection came back with a transaction open")
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = procedure(conn, *args)
    except BaseException:
        conn.rollback()
        raise
    conn.commit()
    return result


async def _run_sqlite(
    connection: AsyncConnection, procedure: Callable[..., T], args: tuple[object, ...], label: str | None
) -> tuple[T]:
    fairy = await connection.get_raw_connection()
    adapted: Any = fairy.dbapi_connection  # keyserver/db/sqlite_driver.py's OneHandOffConnection
    sync = connection.sync_connection
    assert adapted is not None
    assert sync is not None
    # What the engine's cursor events are shown: the statement, or the procedure's name.
    label = label or f"-- sqlite procedure {procedure.__name__}"
    events = sync._has_events or sync.engine._has_events
    try:
        if events:
            for before in sync.dispatch.before_cursor_execute:
                before(sync, None, label, args, None, False)
        async with adapted._execute_mutex:
            driver = adapted._connection
            result: T = await driver._execute(procedure, driver._conn, *args)
        if events:
            for after in sync.dispatch.after_cursor_execute:
                after(sync, None, label, args, None, False)
    except ValueError as error:
        # aiosqlite's own refusal once its connection is closed; any other ValueError is a bug, raised.
        if str(error).lower() not in ("no active connection", "connection closed"):
            raise
        await connection.invalidate(error)
        raise DBAPIError.instance(
            label,
            args,
            sqlite3.OperationalError(str(error)),
            sqlite3.Error,
            connection_invalidated=True,
            dialect=connection.dialect,
        ) from error
    except sqlite3.Error as error:
        gone = connection.dialect.is_disconnect(error, adapted, None)  # type: ignore[arg-type]
        if gone:
            await connection.invalidate(error)
        raise DBAPIError.instance(
            label, args, error, sqlite3.Error, connection_invalidated=gone, dialect=connection.dialect
        ) from error
    return (result,)


# Values in the form SQLite stores them, as SQLAlchemy's own column types write and read them (a
# procedure's statements compare and insert these; the ORM reads back what they wrote, and vice versa).
# The types as the dialect adapts them (dialect_impl): what the compiler uses for a statement's values.
_SQLITE = sqlite.dialect()
_UUID_IN = Uuid().dialect_impl(_SQLITE).bind_processor(_SQLITE)
_TIME_IN = UTCDateTime().dialect_impl(_SQLITE).bind_processor(_SQLITE)
_TIME_OUT = UTCDateTime().dialect_impl(_SQLITE).result_processor(_SQLITE, DateTime())


def sqlite_uuid(value: uuid.UUID) -> str:
    assert _UUID_IN is not None
    stored: str = _UUID_IN(value)
    return stored


def sqlite_time(value: datetime) -> str:
    assert _TIME_IN is not None
    stored: str = _TIME_IN(value)
    return stored


def from_sqlite_time(stored: str | None) -> datetime | None:
    assert _TIME_OUT is not None
    value: datetime | None = _TIME_OUT(stored)
    return value
