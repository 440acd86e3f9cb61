"""Release policies: immutable versions per name, activated explicitly.

A version is validated when it is stored (policy/document.py); activating it first runs its examples
(every "grant" example must grant and every "deny" example deny, against the tenant's current reference
values), then points the policy's head at it. Both are release-log entries.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from audit.entry import EntryError, canonical_bytes
from keyserver import appraisal
from keyserver.db.models import Policy, PolicyHead, Tenant
from keyserver.db.types import utcnow
from keyserver.errors import Conflict, InvalidRequest, NotFound
from keyserver.reference_values import check_name
from keyserver.releaselog import records
from keyserver.releaselog.store import ReleaseLog

POLICY_ADDED = "policy-version-added"
POLICY_ACTIVATED = "policy-activated"


async def add_policy_version(
    session: AsyncSession,
    log: ReleaseLog,
    tenant: Tenant,
    *,
    name: str,
    document: dict[str, Any],
    principal: uuid.UUID,
) -> Policy:
    check_name(name, "policy name")
    appraisal.parse_policy(document)  # refuses what could never be evaluated, with the reason
    try:
        data = canonical_bytes(document)
    except EntryError as exc:
        raise InvalidRequest(f"the policy cannot be stored: {exc}") from None
    latest = (
        await session.execute(
            select(func.max(Policy.version)).where(Policy.tenant_id == tenant.id, Policy.name == name)
        )
    ).scalar_one()
    row = Policy(
        tenant_id=tenant.id,
        name=name,
        version=(latest or 0) + 1,
        document=data,
        sha256=hashlib.sha256(data).hexdigest(),
        created_at=utcnow(),
        created_by=f"token:{principal}",
    )
    try:
        async with session.begin_nested():  # add inside: pending rows flush BEFORE a SAVEPOINT
            session.add(row)
            await session.flush()
    except IntegrityError:
        raise Conflict("another version of this policy was added at the same time; retry") from None
    await log.append(
        session,
        tenant,
        [
            records.record(
                POLICY_ADDED,
                principal=f"token:{principal}",
                policy={"name": name, "version": row.version, "sha256": row.sha256},
            )
        ],
    )
    return row


async def activate(
    session: AsyncSession,
    log: ReleaseLog,
    tenant: Tenant,
    name: str,
    version: int,
    *,
    principal: uuid.UUID,
    now: datetime | None = None,
) -> PolicyHead:
    row = await session.get(Policy, (tenant.id, name, version))
    if row is None or row.tenant_id != tenant.id:
        raise NotFound(f"no policy {name!r} version {version} in this tenant")
    failures = await appraisal.failing_examples(session, tenant.id, row, now or utcnow())
    if failures:
        raise InvalidRequest(
            "activation refused: the policy's examples do not behave as declared: " + "; ".join(failures)
        )
    # Locked: two activations of one policy at once are logged in the order they take effect, each
    # naming the version the other left active.
    head = await _locked_head(session, tenant.id, name)
    if head is None:
        created = PolicyHead(tenant_id=tenant.id, name=name, active_version=version, activated_at=utcnow())
        try:
            async with session.begin_nested():  # add inside: pending rows flush BEFORE a SAVEPOINT
                session.add(created)
                await session.flush()
        except IntegrityError:
            # The policy's first activation, by another request at the same time: this one comes second.
            head = await _locked_head(session, tenant.id, name)
            if head is None:
                raise
    if head is None:
        head, previous = created, None
    else:
        previous = head.active_version
        head.active_version, head.activated_at = version, utcnow()
        await session.flush()
    await log.append(
        session,
        tenant,
        [
            records.record(
                POLICY_ACTIVATED,
                principal=f"token:{principal}",
                policy={"name": name, "version": version, "sha256": row.sha256},
                previous_version=previous,
            )
        ],
    )
    return head


async def _locked_head(session: AsyncSession, tenant_id: uuid.UUID, name: str) -> PolicyHead | None:
    found = await session.execute(
        select(PolicyHead)
        .where(PolicyHead.tenant_id == tenant_id, PolicyHead.name == name)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return found.scalar_one_or_none()


async def active_policy(session: AsyncSession, tenant_id: uuid.UUID, name: str) -> Policy | None:
    head = await session.get(PolicyHead, (tenant_id, name))
    if head is None or head.tenant_id != tenant_id:
        return None
    return await session.get(Policy, (tenant_id, name, head.active_version))


async def list_policies(session: AsyncSession, tenant_id: uuid.UUID) -> list[tuple[Policy, bool]]:
    rows = (
        (
            await session.execute(
                select(Policy).where(Policy.tenant_id == tenant_id).order_by(Policy.name, Policy.version)
            )
        )
        .scalars()
        .all()
    )
    heads = {
        h.name: h.active_version
        for h in (
            await session.execute(select(PolicyHead).where(PolicyHead.tenant_id == tenant_id))
        ).scalars()
    }
    return [(row, heads.get(row.name) == row.version) for row in rows]
