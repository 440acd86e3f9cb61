"""Keys: named and versioned per tenant, released under a named policy; material only ever stored
wrapped by the key backend, bound (wrapping context) to tenant, name and version.

Rotation adds a version (old versions stay releasable where the policy allows); a key can be disabled
(releases are denied and logged) and enabled again; a version or a whole key can be destroyed (its
wrapped material is erased; the row stays so that the log's references still resolve). Every change is a
release-log entry in the same transaction.
"""

from __future__ import annotations

import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.backends.base import KeyBackend
from keyserver.db import hot
from keyserver.db.models import Key, KeyVersion, Tenant
from keyserver.db.models import Policy as PolicyRow
from keyserver.db.types import utcnow
from keyserver.errors import Conflict, EvidenceError, InvalidRequest, NotFound
from keyserver.reference_values import check_name
from keyserver.releaselog import records
from keyserver.releaselog.store import ReleaseLog

KEY_BYTES = 32
KEY_CREATED = "key-created"
KEY_ROTATED = "key-rotated"
KEY_STATE_CHANGED = "key-state-changed"
KEY_VERSION_DESTROYED = "key-version-destroyed"


def wrapping_context(tenant_id: uuid.UUID, name: str, version: int) -> bytes:
    """Bound into the backend's wrapping: a blob of one key version unwraps as no other."""
    return b"keyserver/key/v1/" + tenant_id.bytes + b"/" + name.encode() + b"/" + str(version).encode()


@dataclass(frozen=True)
class ReleasableKey:
    key: Key
    version: KeyVersion

    @property
    def kid(self) -> str:
        return f"{self.key.name}/{self.version.version}"


async def create_key(
    session: AsyncSession,
    log: ReleaseLog,
    backend: KeyBackend,
    tenant: Tenant,
    *,
    name: str,
    policy_name: str,
    principal: uuid.UUID,
    material: bytes | None = None,
) -> ReleasableKey:
    """A new key at version 1: generated inside the backend, or ``material`` imported (the tenant's own)."""
    check_name(name, "key name")
    check_name(policy_name, "policy name")
    key = Key(
        tenant_id=tenant.id,
        name=name,
        policy_name=policy_name,
        state="enabled",
        backend=backend.name,
        created_at=utcnow(),
    )
    try:
        async with session.begin_nested():  # add inside: pending rows flush BEFORE a SAVEPOINT
            session.add(key)
            await session.flush()
    except IntegrityError:
        raise Conflict(f"a key named {name!r} already exists") from None
    version = await _new_version(session, backend, tenant, key, 1, material)
    await log.append(
        session,
        tenant,
        [
            records.record(
                KEY_CREATED,
                principal=f"token:{principal}",
                key={"name": name, "version": 1},
                policy=policy_name,
                backend=backend.name,
                imported=material is not None,
            )
        ],
    )
    return ReleasableKey(key, version)


async def rotate_key(
    session: AsyncSession,
    log: ReleaseLog,
    backend: KeyBackend,
    tenant: Tenant,
    name: str,
    *,
    principal: uuid.UUID,
    material: bytes | None = None,
) -> ReleasableKey:
    key = await _key(session, tenant, name, lock=True)
    if key.state == "destroyed":
        raise Conflict("this key was destroyed; create a new one")
    latest = (
        await session.execute(
            select(func.max(KeyVersion.version)).where(
                KeyVersion.tenant_id == tenant.id, KeyVersion.key_name == name
            )
        )
    ).scalar_one()
    version = await _new_version(session, backend, tenant, key, (latest or 0) + 1, material)
    await log.append(
        session,
        tenant,
        [
            records.record(
                KEY_ROTATED, principal=f"token:{principal}", key={"name": name, "version": version.version}
            )
        ],
    )
    return ReleasableKey(key, version)


async def set_state(
    session: AsyncSession, log: ReleaseLog, tenant: Tenant, name: str, state: str, *, principal: uuid.UUID
) -> Key:
    if state not in ("enabled", "disabled", "destroyed"):
        raise InvalidRequest("a key's state is enabled, disabled or destroyed")
    key = await _key(session, tenant, name, lock=True)
    if key.state == "destroyed" and state != "destroyed":
        raise Conflict("a destroyed key cannot come back")
    if state == "destroyed":
        versions = (
            await session.execute(
                select(KeyVersion).where(KeyVersion.tenant_id == tenant.id, KeyVersion.key_name == name)
            )
        ).scalars()
        for version in versions:
            version.wrapped, version.destroyed_at = None, version.destroyed_at or utcnow()
    if key.state != state:
        previous, key.state = key.state, state
        await log.append(
            session,
            tenant,
            [
                records.record(
                    KEY_STATE_CHANGED,
                    principal=f"token:{principal}",
                    key={"name": name, "version": None},
                    state=state,
                    previous=previous,
                )
            ],
        )
    return key


async def destroy_version(
    session: AsyncSession, log: ReleaseLog, tenant: Tenant, name: str, version: int, *, principal: uuid.UUID
) -> KeyVersion:
    await _key(session, tenant, name, lock=True)
    row = await session.get(KeyVersion, (tenant.id, name, version))
    if row is None or row.tenant_id != tenant.id:
        raise NotFound(f"key {name!r} has no version {version}")
    if row.wrapped is not None:
        row.wrapped, row.destroyed_at = None, utcnow()
        await log.append(
            session,
            tenant,
            [
                records.record(
                    KEY_VERSION_DESTROYED,
                    principal=f"token:{principal}",
                    key={"name": name, "version": version},
                )
            ],
        )
    return row


async def list_keys(session: AsyncSession, tenant_id: uuid.UUID) -> list[tuple[Key, list[KeyVersion]]]:
    keys = (
        (await session.execute(select(Key).where(Key.tenant_id == tenant_id).order_by(Key.name)))
        .scalars()
        .all()
    )
    out = []
    for key in keys:
        versions = (
            await session.execute(
                select(KeyVersion)
                .where(KeyVersion.tenant_id == tenant_id, KeyVersion.key_name == key.name)
                .order_by(KeyVersion.version)
            )
        ).scalars()
        out.append((key, list(versions)))
    return out


# The release path's statements, built once (building a statement and its cache key costs ~0.15 ms
# of CPU: docs/performance.md).
_RELEASABLE_KEY = (
    select(Key)
    .where(Key.tenant_id == bindparam("tenant_id"), Key.name == bindparam("name"))
    .with_for_update(read=True)
    .execution_options(populate_existing=True)
)
_LIVE_VERSIONS = select(KeyVersion).where(
    KeyVersion.tenant_id == bindparam("tenant_id"),
    KeyVersion.key_name == bindparam("name"),
    KeyVersion.wrapped.is_not(None),
)
_NEWEST_LIVE_VERSION = _LIVE_VERSIONS.order_by(KeyVersion.version.desc()).limit(1)
_LIVE_VERSION = _LIVE_VERSIONS.where(KeyVersion.version == bindparam("version"))
# What a release reads, in one round trip on PostgreSQL (migrations/versions/0013): the two reads above,
# then the key's active policy, each statement in turn (a lock is held before the next row is read).
_PG_RELEASE_INPUTS = "SELECT * FROM keyserver_release_inputs($1, $2, $3)"


# The same reads on SQLite, as a procedure run in aiosqlite's thread (keyserver/db/hot.py): the steps and
# the answer of keyserver_release_inputs, column for column (SQLite's write lock, held by every
# transaction here, stands for the FOR SHARE locks).
_SQLITE_KEY = "SELECT policy_name, state, backend, created_at FROM keys WHERE tenant_id = ? AND name = ?"
_SQLITE_LIVE_VERSION = (
    "SELECT version, wrapped, created_at, destroyed_at FROM key_versions"
    " WHERE tenant_id = ? AND key_name = ? AND wrapped IS NOT NULL AND (? IS NULL OR version = ?)"
    " ORDER BY version DESC LIMIT 1"
)
_SQLITE_POLICY_HEAD = "SELECT active_version FROM policy_heads WHERE tenant_id = ? AND name = ?"
_SQLITE_POLICY = (
    "SELECT document, sha256, created_at, created_by FROM policies"
    " WHERE tenant_id = ? AND name = ? AND version = ?"
)
_RELEASE_INPUT_COLUMNS = (
    "key_found",
    "policy_name",
    "state",
    "backend",
    "key_created_at",
    "version",
    "wrapped",
    "version_created_at",
    "destroyed_at",
    "policy_version",
    "document",
    "sha256",
    "policy_created_at",
    "created_by",
)
_TIME_COLUMNS = ("key_created_at", "version_created_at", "destroyed_at", "policy_created_at")


def sqlite_release_inputs(
    conn: sqlite3.Connection, tenant: str, name: str, version: int | None
) -> dict[str, Any]:
    """keyserver_release_inputs on SQLite: the key, its live version, its policy's head and active
    version, each read only when the one before allows (times as SQLite stores them)."""
    row: dict[str, Any] = dict.fromkeys(_RELEASE_INPUT_COLUMNS)
    key = conn.execute(_SQLITE_KEY, (tenant, name)).fetchone()
    row["key_found"] = key is not None
    if key is None:
        return row
    row.update(zip(("policy_name", "state", "backend", "key_created_at"), key, strict=True))
    if row["state"] != "enabled":
        return row
    live = conn.execute(_SQLITE_LIVE_VERSION, (tenant, name, version, version)).fetchone()
    if live is None:
        return row
    row.update(zip(("version", "wrapped", "version_created_at", "destroyed_at"), live, strict=True))
    head = conn.execute(_SQLITE_POLICY_HEAD, (tenant, row["policy_name"])).fetchone()
    if head is None:
        return row
    row["policy_version"] = head[0]
    policy = conn.execute(_SQLITE_POLICY, (tenant, row["policy_name"], head[0])).fetchone()
    if policy is not None:
        row.update(zip(("document", "sha256", "policy_created_at", "created_by"), policy, strict=True))
    return row


@dataclass(frozen=True)
class ReleaseInputs:
    """What a release reads of its tenant's configuration before it appraises the evidence."""

    key: ReleasableKey
    policy: PolicyRow | None  # the active version of the key's policy; None when it has none


async def release_inputs(
    session: AsyncSession, tenant: Tenant, name: str, version: int | None = None
) -> ReleaseInputs:
    """The key version a release asks for (as :func:`releasable`: denied with ``EvidenceError`` when the
    key is unknown, disabled or destroyed) and the active version of the key's policy, read after it
    (keyserver/appraisal.py, ``active_policy_row``) — in one call of the same statements on either store
    (PostgreSQL: migrations/versions/0013; SQLite: ``sqlite_release_inputs``). A release reads the same
    within its first statement (keyserver/release_reads.py); this reads them alone."""
    rows = await hot.fetch(session, _PG_RELEASE_INPUTS, tenant.id, name, version)
    if rows is None:  # SQLite: the same reads as one procedure, one hand-off to its thread
        r = await hot.run_sqlite(session, sqlite_release_inputs, hot.sqlite_uuid(tenant.id), name, version)
        return release_inputs_from_sqlite(tenant, name, version, r)
    return release_inputs_from_row(tenant, name, version, rows[0])


def release_inputs_from_sqlite(
    tenant: Tenant, name: str, version: int | None, r: dict[str, Any]
) -> ReleaseInputs:
    """:func:`release_inputs_from_row` of :func:`sqlite_release_inputs`'s answer (times as SQLite stores
    them)."""
    for column in _TIME_COLUMNS:
        r[column] = hot.from_sqlite_time(r[column])
    return release_inputs_from_row(tenant, name, version, r)


def release_inputs_from_row(tenant: Tenant, name: str, version: int | None, r: Any) -> ReleaseInputs:
    """What :func:`release_inputs` answers for keyserver_release_inputs's row ``r`` (read by it, or by a
    statement that reads it with others: keyserver/release_reads.py): denied with ``EvidenceError`` when
    the key is unknown, disabled or destroyed."""
    if not r["key_found"]:
        raise EvidenceError("key-unknown", f"this tenant has no key named {name!r}")
    if r["state"] != "enabled":
        raise EvidenceError(f"key-{r['state']}", f"the key {name!r} is {r['state']}")
    if r["version"] is None:
        raise EvidenceError(
            "key-version-unavailable", f"key {name!r} has no live version {version or ''}".rstrip()
        )
    # Detached (transient) rows: the release path only reads them.
    key_row = Key(
        tenant_id=tenant.id,
        name=name,
        policy_name=r["policy_name"],
        state=r["state"],
        backend=r["backend"],
        created_at=r["key_created_at"],
    )
    version_row = KeyVersion(
        tenant_id=tenant.id,
        key_name=name,
        version=r["version"],
        wrapped=r["wrapped"],
        created_at=r["version_created_at"],
        destroyed_at=r["destroyed_at"],
    )
    policy = None
    if r["document"] is not None:
        policy = PolicyRow(
            tenant_id=tenant.id,
            name=r["policy_name"],
            version=r["policy_version"],
            document=r["document"],
            sha256=r["sha256"],
            created_at=r["policy_created_at"],
            created_by=r["created_by"],
        )
    return ReleaseInputs(ReleasableKey(key_row, version_row), policy)


async def releasable(
    session: AsyncSession, tenant: Tenant, name: str, version: int | None = None
) -> ReleasableKey:
    """The key version a release asks for (default: the newest live one); denied (``EvidenceError``,
    logged by the caller) when the key is unknown, disabled or destroyed.

    Through the ORM, statement by statement: the reference :func:`release_inputs`'s one-call forms are
    held to (tests/test_release_inputs.py); a release reads the same with its first statement
    (keyserver/release_reads.py)."""
    # FOR SHARE (PostgreSQL; SQLite's transactions hold the database's write lock anyway): a change of
    # the key's state (disable, destroy, rotate: FOR UPDATE) waits until this release has committed,
    # and a release waits for a change in flight and then reads its result. So the release follows
    # whichever committed first, and its log entry lands on the same side of the change's entry.
    key = (
        await session.execute(_RELEASABLE_KEY, {"tenant_id": tenant.id, "name": name})
    ).scalar_one_or_none()
    if key is None or key.tenant_id != tenant.id:
        raise EvidenceError("key-unknown", f"this tenant has no key named {name!r}")
    if key.state != "enabled":
        raise EvidenceError(f"key-{key.state}", f"the key {name!r} is {key.state}")
    if version is None:
        query, values = _NEWEST_LIVE_VERSION, {"tenant_id": tenant.id, "name": name}
    else:
        query, values = _LIVE_VERSION, {"tenant_id": tenant.id, "name": name, "version": version}
    row = (await session.execute(query, values)).scalar_one_or_none()
    if row is None:
        raise EvidenceError(
            "key-version-unavailable", f"key {name!r} has no live version {version or ''}".rstrip()
        )
    return ReleasableKey(key, row)


async def _key(session: AsyncSession, tenant: Tenant, name: str, *, lock: bool) -> Key:
    query = select(Key).where(Key.tenant_id == tenant.id, Key.name == name)
    if lock:
        query = query.with_for_update()
    key = (await session.execute(query)).scalar_one_or_none()
    if key is None:
        raise NotFound(f"this tenant has no key named {name!r}")
    return key


async def _new_version(
    session: AsyncSession,
    backend: KeyBackend,
    tenant: Tenant,
    key: Key,
    number: int,
    material: bytes | None,
    now: datetime | None = None,
) -> KeyVersion:
    context = wrapping_context(tenant.id, key.name, number)
    if material is None:
        wrapped = await backend.generate_data_key(context, KEY_BYTES)
    else:
        if not 16 <= len(material) <= 64:
            raise InvalidRequest("imported key material is 16 to 64 bytes")
        wrapped = await backend.import_data_key(material, context)
    row = KeyVersion(
        tenant_id=tenant.id, key_name=key.name, version=number, wrapped=wrapped, created_at=now or utcnow()
    )
    session.add(row)
    await session.flush()
    return row
