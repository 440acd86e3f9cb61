"""PostgreSQL failing at each step of a release: stopped, crashed and restarted, the transaction's
connection killed, the transaction turned read-only, a statement cancelled by its timeout, the log head
held by another transaction past the service's timeout, a failing statement injected through a SQLAlchemy
event hook. A cluster of this module's own (pg_ctl stop / start), a real swtpm quote per release.

What each case proves is in tests/fault_rig.py: no key without a committed entry, the challenge consumed
iff the entry committed, a consistent and provable log, 503 problem documents, recovery on its own.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable, Iterator

import asyncpg
import pytest
import pytest_asyncio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.config import Settings
from keyserver.faults import ReleaseStep
from tests.fault_rig import (
    ALL_STEPS,
    IN_TRANSACTION,
    Expect,
    Fault,
    Rig,
    bites,
    injected_error,
    running_rig,
)
from tests.fixtures.postgres import APP_ROLE, PostgresCluster, throwaway_cluster
from tests.fixtures.swtpm import SwtpmInstance

pytestmark = [pytest.mark.postgres, pytest.mark.swtpm, pytest.mark.asyncio(loop_scope="module")]

# Small, so that a hung statement fails fast: asyncpg's command timeout is twice this.
DB_TIMEOUT_S = 1.0


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    with throwaway_cluster(crash_safe=True) as running:
        yield running


@pytest.fixture(scope="module")
def database_name(cluster: PostgresCluster) -> str:
    return cluster.create_migrated_database()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(
    cluster: PostgresCluster,
    database_name: str,
    swtpm: SwtpmInstance,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[Rig]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("faults-pg"),
        database_url=cluster.url(database_name),
        db_timeout_s=DB_TIMEOUT_S,
    )
    async with running_rig(settings, swtpm) as running:
        yield running


# --- the faults -------------------------------------------------------------------------------------


def _terminate(cluster: PostgresCluster, database: str, pid: int | None = None) -> None:
    which = f"pid = {pid}" if pid is not None else f"datname = '{database}' AND usename = '{APP_ROLE}'"
    cluster.admin(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE {which}")  # noqa: S608


def killed(cluster: PostgresCluster, database: str) -> Fault:
    """The transaction's connection is terminated by the server (an administrator, an OOM kill, a
    network cut); outside a transaction, every pooled connection is."""

    async def inject(session: AsyncSession | None) -> None:
        pid = None
        if session is not None:
            pid = (await session.execute(text("SELECT pg_backend_pid()"))).scalar_one()
        await asyncio.to_thread(_terminate, cluster, database, pid)

    # Outside a transaction, the next transaction's first statement meets the dead connection and
    # begins again on a fresh one (keyserver/db/session.py): no request fails.
    return Fault("connection-killed", inject, bites(IN_TRANSACTION, Expect.UNAVAILABLE))


def stopped(cluster: PostgresCluster) -> Fault:
    """The server shuts down (open transactions rolled back) and stays down until healed."""

    async def inject(_session: AsyncSession | None) -> None:
        await asyncio.to_thread(cluster.stop, "fast")

    async def heal() -> None:
        if not await asyncio.to_thread(cluster.is_running):
            await asyncio.to_thread(cluster.start)

    expect = bites((ReleaseStep.START, *IN_TRANSACTION), Expect.UNAVAILABLE)
    return Fault("stopped", inject, expect, heal, persistent=True)


def crashed(cluster: PostgresCluster) -> Fault:
    """The server crashes (no checkpoint: crash recovery at the restart) and is back at once."""

    async def inject(_session: AsyncSession | None) -> None:
        await asyncio.to_thread(cluster.stop, "immediate")
        await asyncio.to_thread(cluster.start)

    return Fault("crashed-and-restarted", inject, bites(IN_TRANSACTION, Expect.UNAVAILABLE))


def read_only() -> Fault:
    """The transaction can no longer write (what a failover to a standby does to writes)."""

    async def inject(session: AsyncSession | None) -> None:
        assert session is not None
        await session.execute(text("SET LOCAL transaction_read_only = on"))

    # Writes left after the step: the log append. After it only reads remain, and the commit.
    writes_left = IN_TRANSACTION[: IN_TRANSACTION.index(ReleaseStep.LOG_APPENDED)]
    return Fault("read-only", inject, bites(writes_left, Expect.UNAVAILABLE))


def statement_timeout() -> Fault:
    """A statement runs past its statement_timeout and the server cancels it (SQLSTATE 57014)."""

    async def inject(session: AsyncSession | None) -> None:
        assert session is not None
        await session.execute(text("SET LOCAL statement_timeout = '20ms'"))
        await session.execute(text("SELECT pg_sleep(2)"))

    return Fault("statement-timeout", inject, bites(IN_TRANSACTION, Expect.UNAVAILABLE))


class LogHeadHolder:
    """Another transaction holding the tenant's log head (``FOR UPDATE``) on a thread of its own."""

    def __init__(self, cluster: PostgresCluster, database: str) -> None:
        self.cluster, self.database = cluster, database
        self.locked, self.done = threading.Event(), threading.Event()
        self.thread: threading.Thread | None = None

    def start(self) -> None:
        self.locked.clear()
        self.done.clear()
        self.thread = threading.Thread(target=asyncio.run, args=(self._hold(),), daemon=True)
        self.thread.start()
        assert self.locked.wait(10), "could not lock the log head"

    async def _hold(self) -> None:
        conn = await asyncpg.connect(
            host=self.cluster.host, port=self.cluster.port, user="postgres", database=self.database
        )
        try:
            async with conn.transaction():
                await conn.execute("SELECT 1 FROM log_heads FOR UPDATE")
                self.locked.set()
                await asyncio.to_thread(self.done.wait, 30)
        finally:
            await conn.close()

    def release(self) -> None:
        self.done.set()
        if self.thread is not None:
            self.thread.join(10)


def log_head_locked(cluster: PostgresCluster, database: str) -> Fault:
    holder = LogHeadHolder(cluster, database)

    async def inject(_session: AsyncSession | None) -> None:
        await asyncio.to_thread(holder.start)

    async def heal() -> None:
        await asyncio.to_thread(holder.release)

    # The append waits for the lock until the command timeout (twice DB_TIMEOUT_S), then gives up.
    return Fault("log-head-locked-past-timeout", inject, bites(IN_TRANSACTION, Expect.UNAVAILABLE), heal)


CASES: list[tuple[str, ReleaseStep]] = [
    *((name, step) for name in ("connection-killed", "stopped", "crashed", "injected") for step in ALL_STEPS),
    *(("read-only", step) for step in IN_TRANSACTION),
    *(("statement-timeout", step) for step in IN_TRANSACTION),
    ("log-head-locked", ReleaseStep.CHALLENGE_CONSUMED),
    ("log-head-locked", ReleaseStep.KEY_WRAPPED),
]


@pytest.mark.parametrize(("kind", "step"), CASES, ids=[f"{k}@{s}" for k, s in CASES])
async def test_release_under_a_database_fault(
    rig: Rig, cluster: PostgresCluster, database_name: str, kind: str, step: ReleaseStep
) -> None:
    faults: dict[str, Callable[[], Fault]] = {
        "connection-killed": lambda: killed(cluster, database_name),
        "stopped": lambda: stopped(cluster),
        "crashed": lambda: crashed(cluster),
        "injected": lambda: injected_error(rig),
        "read-only": read_only,
        "statement-timeout": statement_timeout,
        "log-head-locked": lambda: log_head_locked(cluster, database_name),
    }
    await rig.run(faults[kind](), step)
