"""Challenges: single-use nonces with a short lifetime (release protocol, step 1).

A challenge is consumed atomically — ``UPDATE … WHERE used_at IS NULL AND expires_at > now`` — so that
of any number of concurrent requests presenting it, exactly one gets its nonce. Expired challenges are
purged per tenant when new ones are issued.
"""

from __future__ import annotations

import secrets
import uuid
from datetime import datetime, timedelta
from typing import NoReturn

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.cache import BoundedCache
from keyserver.db import hot
from keyserver.db.models import Challenge
from keyserver.db.types import utcnow
from keyserver.errors import EvidenceError

CHALLENGE_LIFETIME = timedelta(seconds=120)
NONCE_BYTES = 32
PURGE_AFTER = timedelta(hours=1)
# Purging is hygiene (an expired challenge can never be consumed), so a process purges a tenant's old
# challenges at most once a minute instead of on every issue: one DELETE less per release.
PURGE_INTERVAL = timedelta(minutes=1)
_last_purge: BoundedCache[uuid.UUID, datetime] = BoundedCache(65536)


async def issue_challenge(
    session: AsyncSession, tenant_id: uuid.UUID, now: datetime | None = None
) -> Challenge:
    """A new challenge stored in ``session``'s transaction, uncounted. The service issues challenges with
    ``ReleaseLimiter.issue_challenge`` (counted, one call on either store); this is the building block
    the tests use to make challenges in a transaction of their own."""
    now = now or utcnow()
    purge = purge_before(tenant_id, now)
    if purge is not None:
        await session.execute(
            delete(Challenge).where(Challenge.tenant_id == tenant_id, Challenge.expires_at < purge)
        )
    challenge = new_challenge(tenant_id, now)
    # PostgreSQL: one INSERT on the asyncpg connection (keyserver/db/hot.py), the row left detached.
    inserted = await hot.fetch(
        session,
        _PG_ISSUE,
        tenant_id,
        challenge.id,
        challenge.nonce,
        challenge.created_at,
        challenge.expires_at,
    )
    if inserted is None:
        session.add(challenge)
        await session.flush()
    return challenge


def new_challenge(tenant_id: uuid.UUID, now: datetime) -> Challenge:
    """A fresh challenge (not yet stored): a random nonce, living CHALLENGE_LIFETIME from ``now``."""
    return Challenge(
        tenant_id=tenant_id,
        id=uuid.uuid4(),
        nonce=secrets.token_bytes(NONCE_BYTES),
        created_at=now,
        expires_at=now + CHALLENGE_LIFETIME,
    )


def purge_before(
    tenant_id: uuid.UUID, now: datetime, *, last_purge: BoundedCache[uuid.UUID, datetime] = _last_purge
) -> datetime | None:
    """The expiry before which the tenant's challenges are to be deleted with this issue, or None when
    this process purged them less than PURGE_INTERVAL ago. ``last_purge``: when this process last purged
    each tenant, for another kind of short-lived row purged the same way (TPM enrolments)."""
    last = last_purge.get(tenant_id)
    if last is not None and abs(now - last) < PURGE_INTERVAL:
        return None
    last_purge.put(tenant_id, now)
    return now - PURGE_AFTER


# Also the first part of a release's first statement (keyserver/release_reads.py), parameters and all.
PG_CONSUME = (
    "UPDATE challenges SET used_at = $3 WHERE tenant_id = $1 AND id = $2 AND used_at IS NULL"
    " AND expires_at > $3 RETURNING nonce"
)
# Also read by keyserver/release_reads.py, with the release's other first reads.
SQLITE_CONSUME = (
    "UPDATE challenges SET used_at = ? WHERE tenant_id = ? AND id = ? AND used_at IS NULL"
    " AND expires_at > ? RETURNING nonce"
)
_PG_ISSUE = (
    "INSERT INTO challenges (tenant_id, id, nonce, created_at, expires_at) VALUES ($1, $2, $3, $4, $5)"
)


async def consume_challenge(
    session: AsyncSession, tenant_id: uuid.UUID, challenge_id: uuid.UUID, now: datetime | None = None
) -> bytes:
    """The challenge's nonce, marking it used; ``EvidenceError`` if unknown, used or expired."""
    now = now or utcnow()
    fast = await hot.fetch(session, PG_CONSUME, tenant_id, challenge_id, now)
    if fast is not None:  # PostgreSQL (keyserver/db/hot.py)
        nonce = fast[0]["nonce"] if fast else None
    else:  # SQLite: the same statement, one hand-off to its thread
        at = hot.sqlite_time(now)
        rows = await hot.fetch_sqlite(
            session, SQLITE_CONSUME, at, hot.sqlite_uuid(tenant_id), hot.sqlite_uuid(challenge_id), at
        )
        nonce = rows[0][0] if rows else None
    if nonce is not None:
        return bytes(nonce)
    await refuse_unconsumed(session, tenant_id, challenge_id)


async def refuse_unconsumed(session: AsyncSession, tenant_id: uuid.UUID, challenge_id: uuid.UUID) -> NoReturn:
    """Raise the ``EvidenceError`` that says why a challenge could not be consumed (unknown, used, or
    expired): read once the consuming UPDATE found no row to mark."""
    row = (
        await session.execute(
            select(Challenge).where(Challenge.tenant_id == tenant_id, Challenge.id == challenge_id)
        )
    ).scalar_one_or_none()
    if row is None:
        raise EvidenceError("challenge-unknown", "no such challenge for this tenant; ask for a new one")
    if row.used_at is not None:
        raise EvidenceError("challenge-replayed", "this challenge was already used; ask for a new one")
    raise EvidenceError("challenge-expired", "this challenge expired; ask for a new one and answer it sooner")
