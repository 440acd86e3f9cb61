"""Engine, sessions and the tenant scope of a transaction.

Every unit of work runs under a :class:`Scope`: the tenant it may touch, or the operator. On
PostgreSQL the scope is written into the transaction (``set_config(..., is_local => true)``) at the
start of *every* transaction of the session, and row-level security policies read it back; a query
that forgets its ``tenant_id`` filter still sees only its own tenant's rows. A session opened with no
scope sees nothing at all. SQLite has no row-level security: there the application's filters are the
only guard (the tests cover both).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, SessionTransaction

from keyserver.config import Settings
from keyserver.db import hot, sqlite_driver
from keyserver.errors import ConfigurationError, Unavailable

SQLITE_BUSY_TIMEOUT_MS = 10_000
T = TypeVar("T")
log = logging.getLogger("keyserver.db")


@dataclass(frozen=True)
class Scope:
    """What a transaction may see: one tenant's rows, or (operator) the tenant registry."""

    tenant_id: uuid.UUID | None = None
    operator: bool = False
    # Read the tenant registry only (name -> id), for callers that authenticate by evidence.
    lookup: bool = False

    @classmethod
    def for_tenant(cls, tenant_id: uuid.UUID) -> Scope:
        return cls(tenant_id=tenant_id)

    @classmethod
    def for_operator(cls) -> Scope:
        return cls(operator=True)

    @classmethod
    def for_tenant_lookup(cls) -> Scope:
        return cls(lookup=True)


NO_SCOPE = Scope()


class ScopedSession(Session):
    """A session that stamps its scope on every transaction it begins (see module docstring)."""


@event.listens_for(ScopedSession, "after_begin")
def _apply_scope(session: Session, transaction: SessionTransaction, connection: Connection) -> None:
    if connection.dialect.name != "postgresql" or transaction.nested:
        # A SAVEPOINT inherits what its enclosing transaction set (is_local settings last until that
        # transaction ends): setting it again would cost every batch member a round trip for nothing.
        return
    scope: Scope = session.info.get("scope", NO_SCOPE)
    durable = session.info.get("durable") is not False
    # BEGIN and the scope in one round trip (keyserver/db/hot.py); the statement below otherwise.
    if hot.begin_together_with(connection, scope_statement(scope, durable=durable)):
        return
    connection.execute(
        _SET_SCOPE,
        {
            "tenant": str(scope.tenant_id) if scope.tenant_id else "",
            "operator": "on" if scope.operator else "off",
            "lookup": "on" if scope.lookup else "off",
            "synchronous": None if durable else "off",
        },
    )


def scope_statement(scope: Scope, *, durable: bool) -> str:
    """The scope's settings as one SELECT of literal values (sent with BEGIN as a simple query, which
    takes no parameters): a UUID's canonical form and fixed words, nothing else."""
    if scope.tenant_id is not None and not isinstance(scope.tenant_id, uuid.UUID):
        raise TypeError("a scope's tenant is a uuid.UUID")
    tenant = str(scope.tenant_id) if scope.tenant_id else ""
    settings = [
        f"set_config('keyserver.tenant_id', '{tenant}', true)",
        f"set_config('keyserver.operator', '{'on' if scope.operator else 'off'}', true)",
        f"set_config('keyserver.lookup', '{'on' if scope.lookup else 'off'}', true)",
    ]
    if not durable:
        # Only a transaction that asked (Database.transaction(durable=False)) commits without waiting
        # for its WAL flush; every other one commits as the server is configured (e.g. remote_apply).
        settings.append("set_config('synchronous_commit', 'off', true)")
    return "SELECT " + ", ".join(settings)


# Built once: a transaction that cannot begin in one round trip runs it (building a text() clause and its
# cache key costs more CPU than executing it).
_SET_SCOPE = text(
    "SELECT set_config('keyserver.tenant_id', :tenant, true),"
    " set_config('keyserver.operator', :operator, true),"
    " set_config('keyserver.lookup', :lookup, true),"
    # NULL: the session's own setting (the server's, e.g. remote_apply), left as it is.
    " set_config('synchronous_commit',"
    " COALESCE(CAST(:synchronous AS text), current_setting('synchronous_commit')), true)"
)


def _make_engine(settings: Settings) -> AsyncEngine:
    url = settings.effective_database_url
    if url.startswith("sqlite"):
        engine = create_async_engine(
            url,
            # One hand-off to aiosqlite's thread per statement (keyserver/db/sqlite_driver.py).
            module=sqlite_driver.dbapi(),
            connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
        )
        _configure_sqlite(engine)
        return engine
    if url.startswith("postgresql"):
        return create_async_engine(
            url,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_pool_size,
            pool_pre_ping=settings.db_pre_ping,
            pool_timeout=settings.db_timeout_s,
            connect_args={
                "timeout": settings.db_timeout_s,
                "command_timeout": settings.db_timeout_s * 2,
                "server_settings": {"application_name": "keyserver"},
            },
        )
    raise ConfigurationError(
        f"unsupported database URL scheme in {url.split(':', 1)[0]!r}: use postgresql+asyncpg:// or"
        " sqlite+aiosqlite://"
    )


def _configure_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not the driver, decide when transactions begin (see on_begin).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        # WAL: readers never block the writer. FULL: a committed transaction survives power loss,
        # which the release log's "committed before release" promise depends on.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=FULL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def on_begin(conn: Connection) -> None:
        # SQLite allows one writer. A deferred transaction that reads and then writes can fail at once
        # with "database is locked" instead of waiting; taking the write lock up front makes
        # concurrent transactions queue on busy_timeout instead.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


class Database:
    """The one handle the service has on its store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.engine = _make_engine(settings)
        self._sessions = async_sessionmaker(
            self.engine, expire_on_commit=False, sync_session_class=ScopedSession
        )
        # SQLite: this process's transactions, one at a time (see _sqlite_turn). Per event loop: a lock
        # belongs to one (tests run one loop per test; the service, one per worker process).
        self._sqlite_writer: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    def session(self, scope: Scope, *, durable: bool = True) -> AsyncSession:
        """A session whose every transaction runs under ``scope``; prefer :meth:`transaction`."""
        return self._sessions(info={"scope": scope, "durable": durable})

    @asynccontextmanager
    async def transaction(self, scope: Scope, *, durable: bool = True) -> AsyncIterator[AsyncSession]:
        """One transaction under ``scope``: committed when the block ends, rolled back on error.

        ``durable=False`` (PostgreSQL): the commit does not wait for its WAL flush, so a crash of the
        server may lose it, never half of it. Only for writes whose loss is harmless (a rate-limit
        counter); never for anything a release or the log depends on.

        Failures of the database rather than of the request — a lost connection, a timeout, a server
        shutting down or out of resources, a standby that became read-only, a serialisation failure —
        surface as :class:`Unavailable` (HTTP 503) after the rollback, never as half-done work.
        """
        with _database_failures_unavailable():
            async with self._sqlite_turn(), self.session(scope, durable=durable) as session:
                await self._begin_on_live_connection(session)
                try:
                    yield session
                except BaseException:
                    await _rollback_quietly(session)
                    raise
                transaction = session.get_transaction()
                if transaction is not None and transaction.is_active:
                    await session.commit()
                else:
                    # A failed flush the caller handled deactivated it: nothing to commit (as SQLAlchemy's
                    # own ``session.begin()`` block does).
                    await _rollback_quietly(session)

    @asynccontextmanager
    async def _sqlite_turn(self) -> AsyncIterator[None]:
        """SQLite: wait for this process's previous transaction to end before beginning the next.

        SQLite has one writer, and every transaction here begins IMMEDIATE (it takes the write lock).
        Left to SQLite, a second transaction of the same process polls for the lock with sleeps that grow
        to 100 ms (its busy handler), so under load a release waits far longer than the transaction ahead
        of it lasted (measured: p99 1.7 s at 16 loaders on one worker, docs/performance.md). Queued here,
        it starts the moment the previous one ends, in arrival order. The wait is bounded as SQLite's
        is (busy_timeout): past it, 503 as for a locked database. Another process (a second worker)
        still meets SQLite's own lock. PostgreSQL: nothing to wait for."""
        if self.dialect != "sqlite":
            yield
            return
        loop = asyncio.get_running_loop()
        if self._sqlite_writer is None or self._sqlite_writer[0] is not loop:
            self._sqlite_writer = (loop, asyncio.Lock())
        writer = self._sqlite_writer[1]
        try:
            async with asyncio.timeout(SQLITE_BUSY_TIMEOUT_MS / 1000):
                await writer.acquire()
        except TimeoutError:
            raise Unavailable("the database is busy (SQLite: one writer at a time); retry shortly") from None
        try:
            yield
        finally:
            writer.release()

    async def call(self, sql: str, *args: object) -> list[hot.Record] | None:
        """PostgreSQL: the rows of ``sql``, one statement that is a transaction by itself and sets its own
        scope (keyserver/db/hot.py, ``call``); ``None`` on SQLite, whose callers run the same steps in a
        :meth:`transaction`. The database's failures are :class:`Unavailable`, as in a transaction.

        A pooled connection that died since its last use (a restarted server) fails when the statement is
        sent; it is then tried once more on a fresh connection, as a transaction's first statement is.
        Unlike there, the lost statement may have been the whole transaction and committed before the
        connection went: only statements whose repetition is harmless belong here (the two callers: an
        attempt counted twice makes the budget one stricter; a challenge issued twice leaves one that
        nobody was given, which expires)."""
        with _database_failures_unavailable():
            return await _once_more_on_a_fresh_connection(lambda: hot.call(self.engine, sql, *args))

    async def call_sqlite(self, procedure: Callable[..., T], *args: object) -> tuple[T] | None:
        """SQLite: ``(procedure(connection, *args),)`` as a transaction of its own in one hand-off to
        aiosqlite's thread (keyserver/db/hot.py, ``call_sqlite``), after this process's earlier
        transactions (:meth:`_sqlite_turn`); ``None`` on PostgreSQL, whose callers use :meth:`call`. The
        database's failures are :class:`Unavailable`, as in a transaction.

        Once handed to the thread the call runs to its COMMIT even if the caller is cancelled meanwhile
        (as a statement already sent to PostgreSQL does): like :meth:`call`, only for work whose loss
        to the caller is harmless (the two callers: an attempt counted, a challenge nobody was given)."""
        if self.dialect != "sqlite":
            return None
        with _database_failures_unavailable():
            async with self._sqlite_turn():
                return await hot.call_sqlite(self.engine, procedure, *args)

    async def _begin_on_live_connection(self, session: AsyncSession) -> None:
        """Begin ``session``'s transaction on a connection that answers, at no cost per request.

        Its first statement runs now (PostgreSQL: the scope's ``set_config``; SQLite: ``BEGIN
        IMMEDIATE``). A pooled connection that died since its last use (the server restarted, or killed
        it) fails right here, before the caller did anything: SQLAlchemy then discards it and every
        connection pooled before it, and the transaction begins again once on a fresh one. This replaces
        pool pre-ping (three round trips on every checkout, docs/performance.md); a server that is down
        fails the second try too, as 503."""
        await _once_more_on_a_fresh_connection(session.connection, lambda: _rollback_quietly(session))

    async def ping(self) -> None:
        """Raise :class:`Unavailable` unless the database answers within the configured timeout.

        Like a transaction's first statement, tried once more on a fresh connection when it met a pooled
        one that died since its last use (the server restarted): readiness must not report the
        database down because of a connection the pool has just discarded."""

        async def select_one() -> None:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))

        try:
            async with asyncio.timeout(self.settings.db_timeout_s):
                await _once_more_on_a_fresh_connection(select_one)
        except Exception as exc:
            raise Unavailable("the database is unreachable; retry shortly") from exc

    async def check_isolation_enforced(self) -> None:
        """Refuse a PostgreSQL role that would bypass row-level security (superuser or BYPASSRLS)."""
        if self.dialect != "postgresql" or self.settings.allow_rls_bypass:
            return
        async with self.engine.connect() as conn:
            row = (
                await conn.execute(
                    text("SELECT rolsuper, rolbypassrls FROM pg_roles WHERE rolname = current_user")
                )
            ).one()
        if row.rolsuper or row.rolbypassrls:
            raise ConfigurationError(
                "the database role in KEYSERVER_DATABASE_URL is a superuser or has BYPASSRLS, which would"
                " disable tenant isolation in the database; connect as an ordinary role that owns nothing"
                " (see README, 'PostgreSQL'), or set KEYSERVER_ALLOW_RLS_BYPASS=true knowingly"
            )

    async def dispose(self) -> None:
        await self.engine.dispose()


async def _once_more_on_a_fresh_connection(
    first_statement: Callable[[], Awaitable[T]], reset: Callable[[], Awaitable[None]] | None = None
) -> T:
    """Run ``first_statement``; if it met a pooled connection that died since its last use (SQLAlchemy
    then discards it and every connection pooled before it), ``reset`` and run it once more. Only for a
    first statement: nothing of the caller's has run yet, so nothing runs twice (or, for
    :meth:`Database.call`, a statement whose repetition is harmless)."""
    try:
        return await first_statement()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        if reset is not None:
            await reset()
        return await first_statement()


async def _rollback_quietly(session: AsyncSession) -> None:
    """Roll back after a failure; if the rollback fails too (the connection is gone), the first failure
    is the one to report, and closing the session discards the connection."""
    try:
        await session.rollback()
    except Exception:
        log.debug("rollback after a failure failed as well", exc_info=True)


# SQLSTATEs (PostgreSQL) that say the database, not the request, failed: connection exceptions (08),
# transaction rollbacks the server chose (40: serialisation failure, deadlock), insufficient resources
# (53: disk full, out of memory, too many connections), operator intervention (57: query cancelled by
# statement_timeout, admin or crash shutdown, cannot connect now), system errors (58: I/O), a read-only
# transaction (25006: typically a standby after a failover), a lock not obtained in time (55P03).
_TRANSIENT_SQLSTATE_CLASSES = ("08", "40", "53", "57", "58")
_TRANSIENT_SQLSTATES = ("25006", "55P03")


def _sqlstate(exc: DBAPIError) -> str | None:
    code = getattr(exc.orig, "sqlstate", None) or getattr(exc.orig, "pgcode", None)
    return code if isinstance(code, str) else None


def _is_transient_error(exc: DBAPIError) -> bool:
    if exc.connection_invalidated or isinstance(exc, OperationalError):
        return True
    code = _sqlstate(exc)
    return code is not None and (code[:2] in _TRANSIENT_SQLSTATE_CLASSES or code in _TRANSIENT_SQLSTATES)


@contextmanager
def _database_failures_unavailable() -> Iterator[None]:
    """What :meth:`Database.transaction`, :meth:`Database.call` and :meth:`Database.call_sqlite` share:
    the database's failures raised inside as :class:`Unavailable`; anything else as it was raised."""
    try:
        yield
    except (TimeoutError, OperationalError, DBAPIError, OSError) as exc:
        _raise_unavailable_if_transient(exc)
        raise


def _raise_unavailable_if_transient(exc: BaseException) -> None:
    """:class:`Unavailable` for a failure of the database rather than of the request (see
    :meth:`Database.transaction`); anything else is the caller's to re-raise."""
    if isinstance(exc, DBAPIError) and not _is_transient_error(exc):
        return
    raise Unavailable(_unavailable_message(exc)) from exc


def _unavailable_message(exc: BaseException) -> str:
    """What a client may be told: the kind of failure, never the SQL or the server's text."""
    if isinstance(exc, TimeoutError):
        return "the database did not answer in time; retry shortly"
    code = _sqlstate(exc) if isinstance(exc, DBAPIError) else None
    if code == "25006":
        return "the database is read-only (a standby after a failover?); retry shortly"
    if code is not None and code[:2] == "40":
        return "the database aborted the transaction (conflict with a concurrent one); retry"
    return "the database is unreachable or failing; retry shortly"
