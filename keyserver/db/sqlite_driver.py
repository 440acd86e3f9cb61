"""SQLite through aiosqlite with one hand-off to its thread per statement, not three or four.

aiosqlite runs every call on the connection in a thread of its own: the event loop queues the call,
the thread wakes, runs it and wakes the loop back (a write to its self-pipe). SQLAlchemy's adapter
makes a statement four such calls — open a cursor, execute, fetch the rows, close the cursor — and
each costs system calls on both sides (measured: ~75 hand-offs per release, docs/performance.md,
"Fourth pass"). The cursor here runs the four together in the thread, in one call, with the same
sqlite3 calls in the same order; rows, description, row count and last row id come back with it.

What stays as SQLAlchemy ships it: the connection (BEGIN, COMMIT and ROLLBACK are a call each),
server-side cursors (``stream_results``: rows fetched as they are read, so not all at once), errors
(sqlite3's, raised from the same calls), and what a cancelled statement does (aiosqlite's thread runs
it to its end; the waiting coroutine is told nothing — as before).

It relies on two attributes of aiosqlite's ``Connection`` that are not public API: ``_execute``
(queue a function for its thread) and ``_conn`` (the sqlite3 connection, touched only from that
thread). Both are the ones SQLAlchemy's own adapter uses; aiosqlite is pinned, and the whole suite
runs on this driver.
"""

from __future__ import annotations

import collections
import sqlite3
from typing import Any

import aiosqlite
from sqlalchemy.connectors.asyncio import AsyncAdapt_dbapi_connection
from sqlalchemy.dialects.sqlite.aiosqlite import (
    AsyncAdapt_aiosqlite_connection,
    AsyncAdapt_aiosqlite_cursor,
    AsyncAdapt_aiosqlite_dbapi,
)
from sqlalchemy.util import EMPTY_DICT

# What one statement's run in aiosqlite's thread hands back: description, row count, last row id,
# and the rows (None when the statement returns none).
_Outcome = tuple[Any, int, int | None, list[Any] | None]


def _run_statement(connection: sqlite3.Connection, operation: str, parameters: Any) -> _Outcome:
    """In aiosqlite's thread: one statement, start to end, as SQLAlchemy's adapter would run it."""
    cursor = connection.cursor()
    try:
        if parameters is None:
            cursor.execute(operation)
        else:
            cursor.execute(operation, parameters)
        description = cursor.description
        rows = cursor.fetchall() if description else None
        return description, cursor.rowcount, cursor.lastrowid, rows
    finally:
        cursor.close()


def _run_many(connection: sqlite3.Connection, operation: str, seq_of_parameters: Any) -> _Outcome:
    cursor = connection.cursor()
    try:
        cursor.executemany(operation, seq_of_parameters)
        return cursor.description, cursor.rowcount, cursor.lastrowid, None
    finally:
        cursor.close()


class OneHandOffCursor(AsyncAdapt_aiosqlite_cursor):
    """A buffered cursor whose statement is one call in aiosqlite's thread (module docstring).

    It holds no driver cursor between statements: each one opens, runs, fetches and closes its own."""

    __slots__ = ("_arraysize", "_description", "_lastrowid", "_rowcount")

    def __init__(self, adapt_connection: AsyncAdapt_dbapi_connection) -> None:
        # Not super().__init__: that opens a driver cursor (a hand-off) this class never uses.
        self._adapt_connection = adapt_connection
        self._connection = adapt_connection._connection
        self._cursor = None  # type: ignore[assignment]
        self._soft_closed_memoized = EMPTY_DICT
        self._rows = collections.deque()
        self._description: Any = None
        self._rowcount = -1
        self._lastrowid: int | None = None
        self._arraysize = 1

    @property
    def description(self) -> Any:
        return self._description

    @property
    def rowcount(self) -> int:
        return self._rowcount

    @property
    def lastrowid(self) -> int:
        return self._lastrowid  # type: ignore[return-value]

    @property
    def arraysize(self) -> int:
        return self._arraysize

    @arraysize.setter
    def arraysize(self, value: int) -> None:
        self._arraysize = value

    async def _async_soft_close(self) -> None:
        # Nothing to close: the statement's driver cursor was closed in the thread.
        return None

    def close(self) -> None:
        self._rows.clear()

    async def _execute_async(self, operation: Any, parameters: Any) -> Any:
        async with self._adapt_connection._execute_mutex:
            outcome = await self._connection._execute(_run_statement, self._sqlite3(), operation, parameters)
            self._take(outcome)

    async def _executemany_async(self, operation: Any, seq_of_parameters: Any) -> Any:
        async with self._adapt_connection._execute_mutex:
            outcome = await self._connection._execute(
                _run_many, self._sqlite3(), operation, seq_of_parameters
            )
            self._take(outcome)

    def _sqlite3(self) -> sqlite3.Connection:
        # aiosqlite's own check: ValueError("no active connection") once closed, which the dialect
        # turns into a disconnect, as for its own cursor.
        connection: sqlite3.Connection = self._connection._conn
        return connection

    def _take(self, outcome: _Outcome) -> None:
        self._description, self._rowcount, self._lastrowid, rows = outcome
        self._rows = collections.deque(rows) if rows is not None else collections.deque()

    def nextset(self) -> None:
        # sqlite3 has no result sets beyond the first.
        return None

    def setinputsizes(self, *inputsizes: Any) -> None:
        return None


class OneHandOffConnection(AsyncAdapt_aiosqlite_connection):
    __slots__ = ()
    _cursor_cls = OneHandOffCursor

    def rollback(self) -> None:
        # The pool rolls back every connection it takes back, mostly right after a COMMIT: with no
        # transaction open there is nothing to roll back, and asking the thread would cost a hand-off.
        # sqlite3's in_transaction is SQLite's own autocommit flag (aiosqlite reads it from this thread
        # too); nothing runs on the connection meanwhile (it is being returned).
        driver = self._connection
        if driver._connection is not None and not driver._conn.in_transaction:
            return
        super().rollback()


class OneHandOffDBAPI(AsyncAdapt_aiosqlite_dbapi):
    """The DBAPI module SQLAlchemy's aiosqlite dialect is given (``create_async_engine(module=...)``)."""

    def connect(self, *arg: Any, **kw: Any) -> OneHandOffConnection:
        adapted = super().connect(*arg, **kw)
        return OneHandOffConnection(self, adapted._connection)


def dbapi() -> OneHandOffDBAPI:
    return OneHandOffDBAPI(aiosqlite, sqlite3)
