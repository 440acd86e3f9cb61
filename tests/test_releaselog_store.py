"""The stored release log on both databases: proofs, checkpoints, append-only rows, concurrency, cost."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import delete, event, select, text, update
from sqlalchemy.exc import DBAPIError

from audit import merkle
from audit.checkpoint import verify_checkpoint
from audit.entry import canonical_bytes, decode_entry
from keyserver.backends.base import BackendError
from keyserver.backends.software import SoftwareBackend
from keyserver.config import Settings
from keyserver.db.models import LogEntry, LogKey, LogNode, Tenant
from keyserver.db.session import Database, Scope
from keyserver.errors import InvalidRequest, NotFound
from keyserver.releaselog.signing import LogSigner
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import create_tenant

# SQLite: the triggers. PostgreSQL: the service's role has no UPDATE, DELETE or TRUNCATE on the log at
# all (tests/test_service_role.py); the triggers still refuse the owner.
APPEND_ONLY_REFUSAL = "append-only|permission denied for table"


def entry(n: int) -> dict[str, Any]:
    return {"v": 1, "kind": "test", "n": n}


@pytest.fixture
def release_log(settings: Settings) -> ReleaseLog:
    return ReleaseLog(LogSigner(SoftwareBackend.from_file(settings.effective_kek_file), "keyserver.test"))


@pytest.fixture
async def tenant(migrated_db: Database) -> Tenant:
    async with migrated_db.transaction(Scope.for_operator()) as session:
        return await create_tenant(session, f"t{uuid.uuid4().hex[:8]}")


async def append(db: Database, log: ReleaseLog, tenant: Tenant, entries: list[dict[str, Any]]) -> Any:
    async with db.transaction(Scope.for_tenant(tenant.id)) as session:
        return await log.append(session, tenant, entries)


async def test_appends_proofs_and_checkpoints_agree_with_the_reference(
    migrated_db: Database, release_log: ReleaseLog, tenant: Tenant
) -> None:
    reference = merkle.MemoryNodeStore()
    checkpoints = []
    for batch in ([entry(0)], [entry(1), entry(2)], [entry(i) for i in range(3, 14)], [entry(14)]):
        appended = await append(migrated_db, release_log, tenant, batch)
        assert appended.first_index == reference.size
        for item in batch:
            reference.append(canonical_bytes(item))
        assert appended.size == reference.size
        assert appended.root_hash == reference.root()
        checkpoints.append(appended)
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        log = await release_log.describe(session, tenant)
        stored = await release_log.entries(session, tenant, 0, 15)
        assert [decode_entry(data)["n"] for data in stored] == list(range(15))
        for appended in checkpoints:
            checkpoint = verify_checkpoint(appended.checkpoint, log.verifier_key)
            assert (checkpoint.size, checkpoint.root_hash) == (appended.size, appended.root_hash)
        for size in (1, 2, 7, 8, 15):
            for index in range(size):
                proof = await release_log.inclusion_proof(session, tenant, index, size)
                merkle.verify_inclusion(
                    merkle.leaf_hash(stored[index]), index, size, proof, reference.root(size)
                )
            for first in range(1, size + 1):
                proof = await release_log.consistency_proof(session, tenant, first, size)
                merkle.verify_consistency(first, size, reference.root(first), reference.root(size), proof)


async def test_out_of_range_requests_are_refused(
    migrated_db: Database, release_log: ReleaseLog, tenant: Tenant
) -> None:
    await append(migrated_db, release_log, tenant, [entry(0), entry(1)])
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        with pytest.raises(NotFound):
            await release_log.inclusion_proof(session, tenant, 0, 3)
        with pytest.raises(InvalidRequest):
            await release_log.inclusion_proof(session, tenant, 2, 2)
        with pytest.raises(InvalidRequest):
            await release_log.consistency_proof(session, tenant, 0, 2)
        with pytest.raises(NotFound):
            await release_log.entries(session, tenant, 0, 3)
        with pytest.raises(InvalidRequest):
            await release_log.entries(session, tenant, 1, 1)


async def test_empty_log_publishes_a_signed_size_zero_checkpoint(
    migrated_db: Database, release_log: ReleaseLog, tenant: Tenant
) -> None:
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        head = await release_log.head(session, tenant)
        log = await release_log.describe(session, tenant)
    checkpoint = verify_checkpoint(head.checkpoint, log.verifier_key)
    assert checkpoint.size == 0
    assert checkpoint.root_hash == merkle.EMPTY_ROOT
    assert checkpoint.origin == f"keyserver.test/{tenant.name}"


@pytest.mark.parametrize("model", [LogEntry, LogNode])
async def test_database_refuses_update_and_delete_of_log_rows(
    migrated_db: Database, release_log: ReleaseLog, tenant: Tenant, model: type[LogEntry] | type[LogNode]
) -> None:
    await append(migrated_db, release_log, tenant, [entry(0), entry(1)])
    column = model.entry if model is LogEntry else model.hash  # type: ignore[union-attr]
    refused = [update(model).values({column: b"\x00" * 32}), delete(model)]
    if migrated_db.dialect == "postgresql":
        # Statement-level triggers refuse even a change that touches no row (SQLite's are per row).
        refused.append(update(model).where(model.tenant_id == uuid.uuid4()).values({column: b"x"}))
    for statement in refused:
        with pytest.raises(DBAPIError, match=APPEND_ONLY_REFUSAL):
            async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
                await session.execute(statement)
    if migrated_db.dialect == "postgresql":
        with pytest.raises(DBAPIError, match=APPEND_ONLY_REFUSAL):
            async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
                await session.execute(text(f"TRUNCATE {model.__tablename__} CASCADE"))
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        assert len(await release_log.entries(session, tenant, 0, 2)) == 2


async def test_concurrent_appends_get_gap_free_indices_and_a_consistent_tree(
    migrated_db: Database, release_log: ReleaseLog, tenant: Tenant
) -> None:
    """50 concurrent writers x 20 appends each (one transaction per append, as releases make them)."""
    writers, appends = 50, 20

    async def writer(w: int) -> list[Any]:
        return [
            await append(migrated_db, release_log, tenant, [entry(w * appends + i)]) for i in range(appends)
        ]

    results = [r for batch in await asyncio.gather(*(writer(w) for w in range(writers))) for r in batch]
    total = writers * appends
    assert sorted(r.first_index for r in results) == list(range(total))
    assert sorted(r.size for r in results) == list(range(1, total + 1))
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        stored = await release_log.entries(session, tenant, 0, total)
        head = await release_log.head(session, tenant)
        log = await release_log.describe(session, tenant)
        assert sorted(decode_entry(data)["n"] for data in stored) == list(range(total))
        reference = merkle.MemoryNodeStore()
        reference.extend(stored)
        assert head.root_hash == reference.root()
        # Each append saw the tree exactly as the previous one left it, and signed what it saw.
        for result in results:
            assert result.root_hash == reference.root(result.size)
        checkpoint = verify_checkpoint(head.checkpoint, log.verifier_key)
        assert checkpoint.size == total
        # A valid inclusion proof for every entry, from the store.
        for index, data in enumerate(stored):
            proof = await release_log.inclusion_proof(session, tenant, index, total)
            merkle.verify_inclusion(merkle.leaf_hash(data), index, total, proof, checkpoint.root_hash)


@pytest.fixture
def statements(migrated_db: Database) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        seen.append(statement)

    event.listen(migrated_db.engine.sync_engine, "before_cursor_execute", count)
    yield seen
    event.remove(migrated_db.engine.sync_engine, "before_cursor_execute", count)


async def test_append_and_proof_cost_does_not_grow_with_the_log(
    migrated_db: Database, release_log: ReleaseLog, tenant: Tenant, statements: list[str]
) -> None:
    await append(migrated_db, release_log, tenant, [entry(n) for n in range(1000)])
    await append(migrated_db, release_log, tenant, [entry(1000)])  # the log key read once, then remembered
    costs = []
    for size in (1001, 1002):  # a small and a large tree are both just the next append
        statements.clear()
        await append(migrated_db, release_log, tenant, [entry(size)])
        costs.append(len(statements))
    assert costs[0] == costs[1]
    statements.clear()
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        await release_log.inclusion_proof(session, tenant, 517, 1002)
    node_reads = [s for s in statements if "FROM log_nodes" in s]
    assert len(node_reads) == 1, "one batched read per proof"


async def test_signing_key_is_wrapped_and_bound_to_its_tenant(
    migrated_db: Database, release_log: ReleaseLog, tenant: Tenant, settings: Settings
) -> None:
    await append(migrated_db, release_log, tenant, [entry(0)])
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        row = (await session.execute(select(LogKey))).scalar_one()
    backend = SoftwareBackend.from_file(settings.effective_kek_file)
    assert row.backend == "software"
    raw = await backend.unwrap(row.wrapped_private_key, b"keyserver/log-signing-key/v1/" + tenant.id.bytes)
    assert raw not in row.wrapped_private_key
    with pytest.raises(BackendError):
        await backend.unwrap(row.wrapped_private_key, b"keyserver/log-signing-key/v1/" + uuid.uuid4().bytes)


async def test_node_reads_are_index_lookups_on_sqlite(
    migrated_db: Database, release_log: ReleaseLog, tenant: Tenant
) -> None:
    """The node read must be one index lookup per address: a scan would make every append and proof
    cost grow with the log (it did, before the query was written this way)."""
    if migrated_db.dialect != "sqlite":
        pytest.skip("PostgreSQL picks plans by table statistics; the statement count test covers it")
    await append(migrated_db, release_log, tenant, [entry(n) for n in range(100)])
    captured: list[tuple[str, Any]] = []

    def capture(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_args: Any) -> None:
        if "FROM log_nodes" in statement:
            captured.append((statement, parameters))

    event.listen(migrated_db.engine.sync_engine, "before_cursor_execute", capture)
    try:
        async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
            await release_log.inclusion_proof(session, tenant, 37, 100)
    finally:
        event.remove(migrated_db.engine.sync_engine, "before_cursor_execute", capture)
    ((statement, parameters),) = captured
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        connection = await session.connection()
        plan = await connection.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, tuple(parameters))
        details = [str(row[-1]) for row in plan]
    assert not any(d.startswith("SCAN") for d in details), details
    lookups = [d for d in details if d.startswith("SEARCH")]
    assert lookups, details
    # Every lookup pins the whole primary key; a search on the tenant prefix alone reads all its nodes.
    assert all("level=? AND idx=?" in d for d in lookups), details


class _Sent:
    """The statements sent while in use (cursor events see the hot path's raw statements too)."""

    def __init__(self, db: Database) -> None:
        self.db, self.sent = db, list[str]()

    def _record(self, _conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        self.sent.append(statement)

    def __enter__(self) -> list[str]:
        event.listen(self.db.engine.sync_engine, "before_cursor_execute", self._record)
        return self.sent

    def __exit__(self, *_exc: object) -> None:
        event.remove(self.db.engine.sync_engine, "before_cursor_execute", self._record)


def _node_reads(sent: list[str]) -> int:
    return sum("FROM log_nodes" in statement for statement in sent)


async def test_remembered_root_nodes_are_used_only_for_the_same_tree(
    migrated_db: Database, settings: Settings, tenant: Tenant
) -> None:
    """Two processes' logs (two ReleaseLog instances) append in turn, and one append of each rolls back:
    a process skips reading the nodes it remembers only when the head is still the tree it appended;
    otherwise the other writer's tree is read. Every checkpoint and every proof stays right (a wrong
    remembered node would give a wrong root)."""
    backend = SoftwareBackend.from_file(settings.effective_kek_file)
    logs = [ReleaseLog(LogSigner(backend, "keyserver.test")) for _ in range(2)]
    reference = merkle.MemoryNodeStore()
    await append(migrated_db, logs[0], tenant, [entry(0)])  # the head and the log key exist from here
    reference.append(canonical_bytes(entry(0)))

    async def step(writer: int, n: int, *, roll_back: bool = False) -> int:
        with _Sent(migrated_db) as sent:
            try:
                async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
                    appended = await logs[writer].append(session, tenant, [entry(n)])
                    if roll_back:
                        raise RuntimeError("rolled back")
            except RuntimeError:
                return _node_reads(sent)
        reference.append(canonical_bytes(entry(n)))
        assert (appended.size, appended.root_hash) == (reference.size, reference.root())
        return _node_reads(sent)

    assert await step(0, 1) == 0, "its own tree: the root nodes are remembered"
    assert await step(1, 2) == 1, "a tree it did not append: read"
    assert await step(1, 3) == 0
    assert await step(0, 4) == 1, "the other writer appended meanwhile: read, not remembered"
    assert await step(0, 5, roll_back=True) == 0  # remembers the tree of 6 leaves it did not commit
    assert await step(1, 6) == 1, "writer 1 appends another 6th leaf instead"
    assert await step(0, 7) == 1, "the head's root is not the rolled-back tree's: read"
    for n in range(8, 40):
        await step(n % 3 % 2, n)
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        log = await logs[0].describe(session, tenant)
        head = await logs[0].head(session, tenant)
        checkpoint = verify_checkpoint(head.checkpoint, log.verifier_key)
        assert (checkpoint.size, checkpoint.root_hash) == (reference.size, reference.root())
        stored = await logs[0].entries(session, tenant, 0, reference.size)
        for index in range(reference.size):
            proof = await logs[1].inclusion_proof(session, tenant, index, reference.size)
            merkle.verify_inclusion(
                merkle.leaf_hash(stored[index]), index, reference.size, proof, reference.root()
            )


async def test_a_log_key_made_in_a_rolled_back_transaction_is_not_remembered(
    migrated_db: Database, release_log: ReleaseLog, tenant: Tenant
) -> None:
    """The first append makes the tenant's log key; rolled back, that key is gone, and the key the next
    append makes is the one its checkpoints are signed with (and the log's published key)."""

    async def append_then_fail() -> None:
        async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
            await release_log.append(session, tenant, [entry(0)])
            raise RuntimeError("rolled back")

    with pytest.raises(RuntimeError):
        await append_then_fail()
    for n in range(3):  # made, then read as committed and remembered, then served from memory
        appended = await append(migrated_db, release_log, tenant, [entry(n)])
        async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
            log = await release_log.describe(session, tenant)
            stored = (await session.execute(select(LogKey).where(LogKey.tenant_id == tenant.id))).scalar_one()
        assert log.public_key.public_bytes_raw() == stored.public_key
        verify_checkpoint(appended.checkpoint, log.verifier_key)
    # Another process (nothing remembered) publishes the same key.
    other = ReleaseLog(LogSigner(release_log.signer.backend, "keyserver.test"))
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        assert (await other.describe(session, tenant)).verifier_key == log.verifier_key


async def test_sqlite_appends_store_what_the_orm_stores(
    migrated_db: Database, release_log: ReleaseLog, tenant: Tenant
) -> None:
    """A tenant's first append runs through the ORM (it creates the head); the next ones, on SQLite, as
    one procedure in aiosqlite's thread (keyserver/releaselog/store.py). Both leave rows of one form,
    and the procedure refuses to write past a head that moved."""
    if migrated_db.dialect != "sqlite":
        pytest.skip("SQLite's procedures; PostgreSQL's statement is covered by the same log tests")
    await append(migrated_db, release_log, tenant, [entry(0)])  # ORM
    orm_head = await _raw(migrated_db, "SELECT typeof(size), typeof(root_hash), updated_at FROM log_heads")
    await append(migrated_db, release_log, tenant, [entry(1), entry(2)])  # the procedure
    head = await _raw(migrated_db, "SELECT typeof(size), typeof(root_hash), updated_at FROM log_heads")
    entries = await _raw(migrated_db, "SELECT idx, typeof(entry), created_at FROM log_entries ORDER BY idx")
    nodes = await _raw(migrated_db, "SELECT typeof(level), typeof(idx), typeof(hash) FROM log_nodes")
    assert [row[:2] for row in entries] == [(0, "blob"), (1, "blob"), (2, "blob")]
    times = [orm_head[0][2], head[0][2], *(row[2] for row in entries)]
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{6}", t) for t in times), times
    assert head[0][:2] == orm_head[0][:2] == ("integer", "blob")
    assert set(nodes) == {("integer", "integer", "blob")}
    # The ORM reads back what the procedure wrote, and the tree is the reference's.
    reference = merkle.MemoryNodeStore()
    for n in range(3):
        reference.append(canonical_bytes(entry(n)))
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        assert (await release_log.head(session, tenant)).root_hash == reference.root()
        stored = await release_log.entries(session, tenant, 0, 3)
    assert stored == [canonical_bytes(entry(n)) for n in range(3)]
    # A head that is not where the append began (3 entries, not 5): refused, nothing written.
    path = migrated_db.settings.effective_database_url.split("///", 1)[1]
    with pytest.raises(sqlite3.IntegrityError, match="moved"):
        _write_past_the_head(path, tenant.id.hex, first=5)
    assert len(await _raw(migrated_db, "SELECT idx FROM log_entries")) == 3


def _write_past_the_head(path: str, tenant: str, first: int) -> None:
    from keyserver.releaselog import store

    conn = sqlite3.connect(path)
    try:
        now = "2026-12-05 12:00:00.000000"
        store._sqlite_write_append(conn, tenant, first, [b"x"], now, [], (first + 1, b"r", "c"))
    finally:
        conn.rollback()
        conn.close()


async def _raw(db: Database, sql: str) -> list[tuple[Any, ...]]:
    async with db.engine.connect() as conn:
        return [tuple(row) for row in await conn.exec_driver_sql(sql)]
