"""Each tenant's log has its own Ed25519 checkpoint-signing key, created on first use.

The private key is stored wrapped by the key backend, bound to the tenant (wrapping context), and
kept unwrapped in this process's memory once used, so that signing a checkpoint per append costs one
Ed25519 signature and no backend round trip.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from audit.checkpoint import Checkpoint, sign_checkpoint, vkey_for
from keyserver.backends.base import KeyBackend
from keyserver.cache import BoundedCache
from keyserver.db import hot
from keyserver.db.models import LogKey
from keyserver.db.types import utcnow
from keyserver.db.upsert import insert_ignore
from keyserver.tenant_keys import UnwrappedKeys, new_wrapped_ed25519

# Built once (building a statement and its cache key costs ~0.15 ms of CPU: docs/performance.md):
# every release reads its log's key row.
_LOG_KEY = select(LogKey).where(LogKey.tenant_id == bindparam("tenant_id"))
_PG_LOG_KEY = (
    "SELECT origin, public_key, wrapped_private_key, backend, created_at FROM log_keys WHERE tenant_id = $1"
)


# session.info: this transaction created a tenant's log key (see LogSigner._key_row).
_CREATED_LOG_KEY = "keyserver.releaselog.created_log_key"


@dataclass(frozen=True)
class TenantLog:
    """What identifies a tenant's log: its tenant and its checkpoint origin (the signing key's name)."""

    tenant_id: uuid.UUID
    origin: str
    public_key: Ed25519PublicKey

    @property
    def verifier_key(self) -> str:
        """The note verifier key (``<name>+<id>+<key>``) auditors pin to check checkpoints."""
        return vkey_for(self.origin, self.public_key)


def _wrapping_context(tenant_id: uuid.UUID) -> bytes:
    return b"keyserver/log-signing-key/v1/" + tenant_id.bytes


class LogSigner:
    def __init__(self, backend: KeyBackend, origin_prefix: str) -> None:
        self.backend = backend
        self.origin_prefix = origin_prefix.rstrip("/")
        self._keys = UnwrappedKeys(backend)
        # A tenant's log key row, once read as committed: the service never changes or deletes one (a
        # log's key is its identity; there is no rotation), so every batch need not read it again.
        self._rows: BoundedCache[uuid.UUID, LogKey] = BoundedCache(65536)

    async def log_for(self, session: AsyncSession, tenant_id: uuid.UUID, tenant_name: str) -> TenantLog:
        return _log_of(tenant_id, await self._key_row(session, tenant_id, tenant_name))

    async def log_and_key(
        self, session: AsyncSession, tenant_id: uuid.UUID, tenant_name: str
    ) -> tuple[TenantLog, Ed25519PrivateKey]:
        """The tenant's log and its private signing key, from one read of the key row."""
        row = await self._key_row(session, tenant_id, tenant_name)
        return _log_of(tenant_id, row), await self._unwrap(tenant_id, row)

    @staticmethod
    def sign_with(private_key: Ed25519PrivateKey, log: TenantLog, size: int, root_hash: bytes) -> str:
        return sign_checkpoint(
            Checkpoint(origin=log.origin, size=size, root_hash=root_hash), log.origin, private_key
        )

    async def sign(self, session: AsyncSession, log: TenantLog, size: int, root_hash: bytes) -> str:
        return self.sign_with(await self._private_key(session, log), log, size, root_hash)

    async def _key_row(self, session: AsyncSession, tenant_id: uuid.UUID, tenant_name: str) -> LogKey:
        cached = self._rows.get(tenant_id)
        if cached is not None:
            return cached
        # Cached only when read from a transaction that did not create a key: a row this transaction
        # inserted is not committed yet, and may be rolled back while another request's key wins.
        cacheable = not session.info.get(_CREATED_LOG_KEY)
        # On PostgreSQL's asyncpg connection (keyserver/db/hot.py), detached.
        fast = await hot.fetch(session, _PG_LOG_KEY, tenant_id)
        if fast:
            found = fast[0]
            row = LogKey(
                tenant_id=tenant_id,
                origin=found["origin"],
                public_key=found["public_key"],
                wrapped_private_key=found["wrapped_private_key"],
                backend=found["backend"],
                created_at=found["created_at"],
            )
            if cacheable:
                self._rows.put(tenant_id, row)
            return row
        stored = (await session.execute(_LOG_KEY, {"tenant_id": tenant_id})).scalar_one_or_none()
        if stored is not None:
            if cacheable:
                session.expunge(stored)  # detached: the cache outlives the session
                self._rows.put(tenant_id, stored)
            return stored
        session.info[_CREATED_LOG_KEY] = True
        public, wrapped = await new_wrapped_ed25519(self.backend, _wrapping_context(tenant_id))
        await insert_ignore(
            session,
            LogKey,
            {
                "tenant_id": tenant_id,
                "origin": f"{self.origin_prefix}/{tenant_name}",
                "public_key": public,
                "wrapped_private_key": wrapped,
                "backend": self.backend.name,
                "created_at": utcnow(),
            },
        )
        # Another request may have won the race to create it: whichever row is stored is the key.
        return (await session.execute(_LOG_KEY, {"tenant_id": tenant_id})).scalar_one()

    async def _private_key(self, session: AsyncSession, log: TenantLog) -> Ed25519PrivateKey:
        row = (await session.execute(_LOG_KEY, {"tenant_id": log.tenant_id})).scalar_one()
        return await self._unwrap(log.tenant_id, row)

    async def _unwrap(self, tenant_id: uuid.UUID, row: LogKey) -> Ed25519PrivateKey:
        return await self._keys.get(
            tenant_id, row.public_key, row.wrapped_private_key, _wrapping_context(tenant_id)
        )


def _log_of(tenant_id: uuid.UUID, row: LogKey) -> TenantLog:
    return TenantLog(tenant_id, row.origin, Ed25519PublicKey.from_public_bytes(row.public_key))
