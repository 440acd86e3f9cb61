"""The per-tenant release log in the database.

Appends run inside the caller's transaction, so a log entry commits with the decision it records or
not at all. A tenant's appends are serialised on its ``log_heads`` row (``SELECT … FOR UPDATE`` on
PostgreSQL; on SQLite every write transaction already holds the database's single write lock), which
is what makes indices gap-free and the stored tree consistent under concurrent requests. Each append
writes the entry, at most log2(n)+1 perfect-subtree nodes and the new head, reading O(log n) nodes in
one query; proofs read O(log n) nodes in one query. Nothing is ever recomputed from the leaves.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import and_, bindparam, insert, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from audit import merkle
from audit.entry import EntryError, canonical_bytes
from keyserver.cache import BoundedCache
from keyserver.db import hot
from keyserver.db.models import LogEntry, LogHead, LogNode, Tenant
from keyserver.db.types import utcnow
from keyserver.db.upsert import insert_ignore
from keyserver.errors import InvalidRequest, NotFound
from keyserver.releaselog.signing import LogSigner, TenantLog

MAX_ENTRIES_PER_READ = 1000


# Built once (building a statement and its cache key costs ~0.15 ms of CPU: docs/performance.md):
# every release reads the head.
_HEAD = (
    select(LogHead)
    .where(LogHead.tenant_id == bindparam("tenant_id"))
    .execution_options(populate_existing=True)
)
_LOCKED_HEAD = _HEAD.with_for_update()
_PG_NODES = (
    "SELECT n.level, n.idx, n.hash FROM log_nodes n JOIN unnest($2::smallint[], $3::bigint[])"
    " AS w(level, idx) ON n.level = w.level AND n.idx = w.idx WHERE n.tenant_id = $1"
)


# The append on PostgreSQL (ReleaseLog._append_in_one_call): the head locked, then every entry, every node
# and the head's new state written by one statement (entries and nodes as unnested arrays, in
# data-modifying CTEs: all or nothing, like any statement, and each row under row-level security).
_PG_LOCKED_HEAD = "SELECT size, root_hash FROM log_heads WHERE tenant_id = $1 FOR UPDATE"
_PG_WRITE_APPEND = (
    "WITH entries AS ("
    "INSERT INTO log_entries (tenant_id, idx, entry, created_at)"
    " SELECT $1, u.idx, u.entry, $4 FROM unnest($2::bigint[], $3::bytea[]) AS u(idx, entry)"
    "), nodes AS ("
    "INSERT INTO log_nodes (tenant_id, level, idx, hash)"
    " SELECT $1, u.level, u.idx, u.hash FROM unnest($5::smallint[], $6::bigint[], $7::bytea[])"
    " AS u(level, idx, hash)"
    ") UPDATE log_heads SET size = $8, root_hash = $9, checkpoint = $10, updated_at = $4 WHERE tenant_id = $1"
)


# The same on SQLite, as procedures run in aiosqlite's thread (keyserver/db/hot.py); the database's write
# lock, held by every SQLite transaction here, stands for FOR UPDATE.
_SQLITE_HEAD = "SELECT size, root_hash FROM log_heads WHERE tenant_id = ?"
_SQLITE_INSERT_ENTRY = "INSERT INTO log_entries (tenant_id, idx, entry, created_at) VALUES (?, ?, ?, ?)"
_SQLITE_INSERT_NODE = "INSERT INTO log_nodes (tenant_id, level, idx, hash) VALUES (?, ?, ?, ?)"
_SQLITE_UPDATE_HEAD = (
    "UPDATE log_heads SET size = ?, root_hash = ?, checkpoint = ?, updated_at = ?"
    " WHERE tenant_id = ? AND size = ?"
)


def _sqlite_head(conn: sqlite3.Connection, tenant: str) -> tuple[int, bytes] | None:
    row = conn.execute(_SQLITE_HEAD, (tenant,)).fetchone()
    return None if row is None else (row[0], row[1])


def _sqlite_write_append(
    conn: sqlite3.Connection,
    tenant: str,
    first: int,
    encoded: list[bytes],
    now: str,
    created: list[tuple[merkle.Address, bytes]],
    head: tuple[int, bytes, str],
) -> None:
    """The entries, the nodes and the new head, in the caller's transaction; the head must still be at
    ``first`` entries (it is: the transaction holds the write lock since it read it), else nothing."""
    conn.executemany(_SQLITE_INSERT_ENTRY, [(tenant, first + i, data, now) for i, data in enumerate(encoded)])
    conn.executemany(_SQLITE_INSERT_NODE, [(tenant, level, idx, h) for (level, idx), h in created])
    size, root, checkpoint = head
    moved = conn.execute(_SQLITE_UPDATE_HEAD, (size, root, checkpoint, now, tenant, first)).rowcount != 1
    if moved:
        raise sqlite3.IntegrityError("the log head moved during the append")


async def _locked_size_and_root(session: AsyncSession, tenant_id: uuid.UUID) -> tuple[int, bytes] | None:
    """The tenant's head (size, root hash), its row locked for this transaction, in one call; None when
    the tenant has no head yet."""
    rows = await hot.fetch(session, _PG_LOCKED_HEAD, tenant_id)
    if rows is not None:
        return (rows[0]["size"], rows[0]["root_hash"]) if rows else None
    return await hot.run_sqlite(session, _sqlite_head, hot.sqlite_uuid(tenant_id))


@dataclass(frozen=True)
class Appended:
    """Where appended entries landed, and the checkpoint that covers them."""

    first_index: int
    size: int
    root_hash: bytes
    checkpoint: str
    entries: tuple[bytes, ...] = ()  # the canonical bytes stored, in order: what the leaf hashes cover
    # The tree nodes this append read or wrote, for the appended entries' inclusion proofs.
    nodes: Mapping[merkle.Address, bytes] = field(default_factory=dict, repr=False, compare=False)


class _Prefetched:
    """A NodeReader over nodes already read in one batch."""

    def __init__(self, nodes: Mapping[merkle.Address, bytes]) -> None:
        self._nodes = nodes

    def get_nodes(self, addresses: Sequence[merkle.Address]) -> dict[merkle.Address, bytes]:
        return {address: self._nodes[address] for address in addresses if address in self._nodes}


class ReleaseLog:
    def __init__(self, signer: LogSigner) -> None:
        self.signer = signer
        # The nodes at the root addresses of the tree this process last appended to, per tenant, keyed by
        # that tree's size and root hash: an append that finds the head at exactly that (size, root) —
        # no other writer appended since — skips reading them. The root hash commits to every leaf, so
        # the key is the complete input of the nodes (keyserver/cache.py's rule): a hit is right even if
        # the append that cached it rolled back, since only the same leaves give the same root.
        self._frontier: BoundedCache[tuple[uuid.UUID, int, bytes], dict[merkle.Address, bytes]] = (
            BoundedCache(65536)
        )

    async def describe(self, session: AsyncSession, tenant: Tenant) -> TenantLog:
        return await self.signer.log_for(session, tenant.id, tenant.name)

    async def append(
        self, session: AsyncSession, tenant: Tenant, entries: Sequence[dict[str, Any]]
    ) -> Appended:
        """Append ``entries`` (in order) to the tenant's log within the caller's transaction."""
        if not entries:
            raise ValueError("nothing to append")
        try:
            encoded = [canonical_bytes(entry) for entry in entries]
        except EntryError as exc:
            raise InvalidRequest(f"this cannot be logged: {exc}") from None
        log, signing_key = await self.signer.log_and_key(session, tenant.id, tenant.name)
        locked = await _locked_size_and_root(session, tenant.id)
        if locked is not None:  # an existing head: the append in two or three calls (keyserver/db/hot.py)
            size, root_hash = locked
            return await self._append_in_one_call(session, tenant, log, signing_key, size, root_hash, encoded)
        # The tenant's first append (no head yet): through the ORM, which creates the head.
        head = await self._locked_head(session, tenant, log)
        size_before = head.size
        created, size_after, nodes, root = await self._extend(
            session, tenant.id, size_before, head.root_hash, encoded
        )
        now = utcnow()
        await session.execute(
            insert(LogEntry),
            [
                {"tenant_id": tenant.id, "idx": size_before + offset, "entry": data, "created_at": now}
                for offset, data in enumerate(encoded)
            ],
        )
        await session.execute(
            insert(LogNode),
            [{"tenant_id": tenant.id, "level": lvl, "idx": idx, "hash": h} for (lvl, idx), h in created],
        )
        head.size, head.root_hash, head.updated_at = size_after, root, now
        head.checkpoint = self.signer.sign_with(signing_key, log, size_after, root)
        await session.flush()
        return Appended(size_before, size_after, root, head.checkpoint, tuple(encoded), nodes)

    async def _append_in_one_call(
        self,
        session: AsyncSession,
        tenant: Tenant,
        log: TenantLog,
        signing_key: Ed25519PrivateKey,
        size_before: int,
        root_before: bytes,
        encoded: list[bytes],
    ) -> Appended:
        """``append``'s steps with the head's row already locked: the nodes read (unless remembered), then
        the entries, the nodes and the head written in one call (PostgreSQL: one statement on asyncpg;
        SQLite: one procedure in aiosqlite's thread). The same rows as the ORM path writes (the suite runs
        the log's tests on both stores; tests/test_releaselog_store.py compares their stored forms)."""
        created, size_after, nodes, root = await self._extend(
            session, tenant.id, size_before, root_before, encoded
        )
        now = utcnow()
        checkpoint = self.signer.sign_with(signing_key, log, size_after, root)
        written = await hot.fetch(
            session,
            _PG_WRITE_APPEND,
            tenant.id,
            list(range(size_before, size_after)),
            encoded,
            now,
            [level for (level, _), _ in created],
            [idx for (_, idx), _ in created],
            [h for _, h in created],
            size_after,
            root,
            checkpoint,
        )
        if written is None:
            await hot.run_sqlite(
                session,
                _sqlite_write_append,
                hot.sqlite_uuid(tenant.id),
                size_before,
                encoded,
                hot.sqlite_time(now),
                created,
                (size_after, root, checkpoint),
            )
        return Appended(size_before, size_after, root, checkpoint, tuple(encoded), nodes)

    async def inclusion_proof_of_appended(
        self, session: AsyncSession, tenant: Tenant, appended: Appended, index: int
    ) -> list[bytes]:
        """The inclusion proof of an entry this transaction just appended, in the tree it made.

        Within the appending transaction the head is still locked and ``appended.size`` is the tree's
        size, so there is no need to read it again; the nodes the append read and wrote hold the whole
        path of its last entry (the roots of the perfect subtrees before it) and most of the others'.
        """
        if not appended.first_index <= index < appended.size:
            raise ValueError(f"entry {index} was not appended by this append")
        wanted = merkle.addresses_of(merkle.inclusion_proof_addresses(index, appended.size))
        missing = [address for address in wanted if address not in appended.nodes]
        nodes = {**appended.nodes, **await self._read_nodes(session, tenant.id, missing)}
        return merkle.inclusion_proof(index, appended.size, _Prefetched(nodes))

    async def head(self, session: AsyncSession, tenant: Tenant) -> LogHead:
        """The current head; an empty log gets its key and a signed size-0 checkpoint on first ask."""
        row = await self._head(session, tenant.id, lock=False)
        if row is not None:
            return row
        return await self._locked_head(session, tenant, await self.describe(session, tenant))

    async def entries(self, session: AsyncSession, tenant: Tenant, start: int, end: int) -> list[bytes]:
        size = (await self.head(session, tenant)).size
        if not 0 <= start < end:
            raise InvalidRequest("ask for entries with 0 <= start < end (end is exclusive)")
        if end > size:
            raise NotFound(f"the log has {size} entries; entries [{start}, {end}) go past its end")
        if end - start > MAX_ENTRIES_PER_READ:
            raise InvalidRequest(f"ask for at most {MAX_ENTRIES_PER_READ} entries at a time")
        query = (
            select(LogEntry.entry)
            .where(LogEntry.tenant_id == tenant.id, LogEntry.idx >= start, LogEntry.idx < end)
            .order_by(LogEntry.idx)
        )
        rows = list((await session.execute(query)).scalars())
        if len(rows) != end - start:
            raise RuntimeError("the log's entries table is missing rows below its head")
        return rows

    async def inclusion_proof(
        self, session: AsyncSession, tenant: Tenant, index: int, size: int
    ) -> list[bytes]:
        await self._check_size(session, tenant, size)
        if not 0 <= index < size:
            raise InvalidRequest(f"index {index} is not in a tree of {size} entries")
        elements = merkle.inclusion_proof_addresses(index, size)
        nodes = await self._read_nodes(session, tenant.id, merkle.addresses_of(elements))
        return merkle.inclusion_proof(index, size, _Prefetched(nodes))

    async def consistency_proof(
        self, session: AsyncSession, tenant: Tenant, first: int, second: int
    ) -> list[bytes]:
        await self._check_size(session, tenant, second)
        if not 0 < first <= second:
            raise InvalidRequest("ask for a consistency proof with 0 < first <= second")
        elements = merkle.consistency_proof_addresses(first, second)
        nodes = await self._read_nodes(session, tenant.id, merkle.addresses_of(elements))
        return merkle.consistency_proof(first, second, _Prefetched(nodes))

    async def leaf_hash(self, session: AsyncSession, tenant: Tenant, index: int) -> bytes:
        nodes = await self._read_nodes(session, tenant.id, [(0, index)])
        if (0, index) not in nodes:
            raise NotFound(f"the log has no entry {index}")
        return nodes[(0, index)]

    # --- internals ---------------------------------------------------------------------------------

    async def _extend(
        self, session: AsyncSession, tenant_id: uuid.UUID, size: int, root_hash: bytes, encoded: list[bytes]
    ) -> tuple[list[tuple[merkle.Address, bytes]], int, dict[merkle.Address, bytes], bytes]:
        """The tree of ``size`` leaves (root ``root_hash``) extended by ``encoded``: the nodes to store, the
        new size, every node read or made (for the proofs) and the new root; remembered for the next."""
        known = await self._root_nodes(session, tenant_id, size, root_hash)
        created = list(merkle.nodes_to_store_on_append_many(size, encoded, _Prefetched(known)))
        size_after = size + len(encoded)
        nodes = {**known, **dict(created)}
        root = merkle.root_at(size_after, _Prefetched(nodes))
        self._remember_root_nodes(tenant_id, size_after, root, nodes)
        return created, size_after, nodes, root

    async def _root_nodes(
        self, session: AsyncSession, tenant_id: uuid.UUID, size: int, root_hash: bytes
    ) -> dict[merkle.Address, bytes]:
        """The nodes at the root addresses of the tenant's tree of ``size`` leaves whose root is
        ``root_hash`` (what an append extends): remembered from this process's last append when the
        head is still that tree, else read."""
        remembered = self._frontier.get((tenant_id, size, root_hash))
        if remembered is not None:
            return dict(remembered)
        return await self._read_nodes(session, tenant_id, merkle.root_addresses(size))

    def _remember_root_nodes(
        self, tenant_id: uuid.UUID, size: int, root_hash: bytes, nodes: Mapping[merkle.Address, bytes]
    ) -> None:
        wanted = merkle.root_addresses(size)
        if all(address in nodes for address in wanted):
            self._frontier.put((tenant_id, size, root_hash), {address: nodes[address] for address in wanted})

    async def _check_size(self, session: AsyncSession, tenant: Tenant, size: int) -> None:
        current = (await self.head(session, tenant)).size
        if not 0 < size <= current:
            raise NotFound(f"the log has {current} entries; there is no tree of size {size} yet")

    async def _head(self, session: AsyncSession, tenant_id: uuid.UUID, *, lock: bool) -> LogHead | None:
        query = _LOCKED_HEAD if lock else _HEAD
        return (await session.execute(query, {"tenant_id": tenant_id})).scalar_one_or_none()

    async def _locked_head(self, session: AsyncSession, tenant: Tenant, log: TenantLog) -> LogHead:
        head = await self._head(session, tenant.id, lock=True)
        if head is not None:
            return head
        empty = await self.signer.sign(session, log, 0, merkle.EMPTY_ROOT)
        values = {
            "tenant_id": tenant.id,
            "size": 0,
            "root_hash": merkle.EMPTY_ROOT,
            "checkpoint": empty,
            "updated_at": utcnow(),
        }
        await insert_ignore(session, LogHead, values)
        head = await self._head(session, tenant.id, lock=True)
        assert head is not None
        return head

    async def _read_nodes(
        self, session: AsyncSession, tenant_id: uuid.UUID, addresses: Sequence[merkle.Address]
    ) -> dict[merkle.Address, bytes]:
        if not addresses:
            return {}
        # PostgreSQL (keyserver/db/hot.py): one statement for any number of addresses, each an index
        # lookup (the OR below is a new statement, compiled and cached, for every count of addresses).
        fast = await hot.fetch(
            session,
            _PG_NODES,
            tenant_id,
            [level for level, _ in addresses],
            [idx for _, idx in addresses],
        )
        if fast is not None:
            return {(row["level"], row["idx"]): row["hash"] for row in fast}
        # One full primary-key equality per address, OR-ed, so that each term is an index lookup on both
        # databases. (SQLite scanned the tenant's nodes for a row-value IN list, and also when the tenant
        # condition stood outside the OR: the cost grew with the log.)
        wanted = or_(
            *(
                and_(LogNode.tenant_id == tenant_id, LogNode.level == level, LogNode.idx == idx)
                for level, idx in addresses
            )
        )
        query = select(LogNode.level, LogNode.idx, LogNode.hash).where(wanted)
        return {(row.level, row.idx): row.hash for row in await session.execute(query)}
