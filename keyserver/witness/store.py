"""A witness's durable state: the latest checkpoint it cosigned per log, swapped atomically.

The one rule that makes a witness worth having: it never cosigns two checkpoints that are not
consistent with each other. Checking a request against the stored state and storing the new state
must therefore be one atomic step, or two concurrent requests could both pass the check (the race
in c2sp.org/tlog-witness). Here the step is a compare-and-swap: the row is updated only where it still
holds the size and root the request was checked against (or inserted only where none exists), and the
loser re-reads and is checked again. That works the same on SQLite and PostgreSQL, with no lock held
across the signature checks.

Refused checkpoints that carry a valid log signature (a fork or a rollback: evidence against the
log) are kept, the first :data:`MAX_EVIDENCE_PER_LOG` per log, so an operator can show them.
The witness has its own database, never the keyserver's: it is meant to be run by someone else.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from audit.checkpoint import Checkpoint
from keyserver.witness.protocol import LatestCheckpoint

__all__ = ["MAX_EVIDENCE_PER_LOG", "RefusalRecord", "WitnessStore"]

MAX_EVIDENCE_PER_LOG = 100
_MAX_NOTE_CHARS = 16 * 1024

metadata = MetaData()

latest_table = Table(
    "witness_latest_v1",
    metadata,
    Column("origin", String(1024), primary_key=True),
    # BIGINT is signed: compare_and_swap refuses sizes of 2^63 and more (no log comes near them).
    Column("size", BigInteger, nullable=False),
    Column("root_hash", LargeBinary(32), nullable=False),
    Column("note", Text, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

refusals_table = Table(
    "witness_refusals_v1",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("origin", String(1024), nullable=False, index=True),
    Column("status", Integer, nullable=False),
    Column("reason", Text, nullable=False),
    Column("note", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class RefusalRecord:
    origin: str
    status: int
    reason: str
    note: str
    at: datetime


class WitnessStore:
    """The witness's database (SQLite or PostgreSQL through SQLAlchemy's async engines)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    def from_url(cls, url: str) -> WitnessStore:
        return cls(create_async_engine(url, pool_pre_ping=True))

    async def create_schema(self) -> None:
        """Create the witness's two tables if missing (its own database: no migrations to share)."""
        async with self.engine.begin() as connection:
            await connection.run_sync(metadata.create_all)

    async def close(self) -> None:
        await self.engine.dispose()

    async def latest(self, origin: str) -> LatestCheckpoint | None:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    select(latest_table.c.size, latest_table.c.root_hash).where(
                        latest_table.c.origin == origin
                    )
                )
            ).first()
        return None if row is None else LatestCheckpoint(int(row.size), bytes(row.root_hash))

    async def latest_note(self, origin: str) -> str | None:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(select(latest_table.c.note).where(latest_table.c.origin == origin))
            ).first()
        return None if row is None else str(row.note)

    async def compare_and_swap(
        self, origin: str, previous: LatestCheckpoint | None, checkpoint: Checkpoint, note: str
    ) -> bool:
        """Store ``checkpoint`` as the latest for ``origin`` iff the latest is still ``previous``."""
        if checkpoint.size >= 2**63:
            raise ValueError("tree sizes of 2^63 and more are not stored")
        now = datetime.now(UTC)
        values = {"size": checkpoint.size, "root_hash": checkpoint.root_hash, "note": note, "updated_at": now}
        async with self.engine.begin() as connection:
            if previous is None:
                dialect = connection.dialect.name
                statement = (pg_insert if dialect == "postgresql" else sqlite_insert)(latest_table)
                result = await connection.execute(
                    statement.values(origin=origin, **values).on_conflict_do_nothing(
                        index_elements=["origin"]
                    )
                )
            else:
                result = await connection.execute(
                    update(latest_table)
                    .where(
                        latest_table.c.origin == origin,
                        latest_table.c.size == previous.size,
                        latest_table.c.root_hash == previous.root_hash,
                    )
                    .values(**values)
                )
            return result.rowcount == 1

    async def record_refusal(self, origin: str, status: int, reason: str, note: str) -> bool:
        """Keep a refused, log-signed checkpoint as evidence (the first few per log); True if kept."""
        async with self.engine.begin() as connection:
            count = (
                await connection.execute(
                    select(func.count()).select_from(refusals_table).where(refusals_table.c.origin == origin)
                )
            ).scalar_one()
            if count >= MAX_EVIDENCE_PER_LOG:
                return False
            await connection.execute(
                insert(refusals_table).values(
                    origin=origin,
                    status=status,
                    reason=reason[:1024],
                    note=note[:_MAX_NOTE_CHARS],
                    at=datetime.now(UTC),
                )
            )
        return True

    async def refusals(self, origin: str) -> list[RefusalRecord]:
        async with self.engine.connect() as connection:
            rows = (
                await connection.execute(
                    select(refusals_table)
                    .where(refusals_table.c.origin == origin)
                    .order_by(refusals_table.c.id)
                )
            ).all()
        return [RefusalRecord(r.origin, r.status, r.reason, r.note, r.at) for r in rows]
