"""Challenges: single use under concurrency, expiry, tenant isolation — on both databases."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

import pytest

from keyserver.challenges import CHALLENGE_LIFETIME, consume_challenge, issue_challenge
from keyserver.db.models import Tenant
from keyserver.db.session import Database, Scope
from keyserver.db.types import utcnow
from keyserver.errors import EvidenceError
from keyserver.tenancy import create_tenant


@pytest.fixture
async def tenants(migrated_db: Database) -> tuple[Tenant, Tenant]:
    async with migrated_db.transaction(Scope.for_operator()) as session:
        return await create_tenant(session, "alpha"), await create_tenant(session, "beta")


async def consume(db: Database, tenant: Tenant, challenge_id: uuid.UUID) -> bytes:
    async with db.transaction(Scope.for_tenant(tenant.id)) as session:
        return await consume_challenge(session, tenant.id, challenge_id)


async def test_a_challenge_is_consumed_once_even_under_concurrency(
    migrated_db: Database, tenants: tuple[Tenant, Tenant]
) -> None:
    alpha, _ = tenants
    async with migrated_db.transaction(Scope.for_tenant(alpha.id)) as session:
        challenge = await issue_challenge(session, alpha.id)
    results = await asyncio.gather(
        *(consume(migrated_db, alpha, challenge.id) for _ in range(20)), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, bytes)]
    losers = [r for r in results if isinstance(r, EvidenceError)]
    assert winners == [challenge.nonce]
    assert len(losers) == 19
    assert {e.reason for e in losers} == {"challenge-replayed"}


async def test_expired_unknown_and_foreign_challenges_are_refused(
    migrated_db: Database, tenants: tuple[Tenant, Tenant]
) -> None:
    alpha, beta = tenants
    past = utcnow() - CHALLENGE_LIFETIME - timedelta(seconds=1)
    async with migrated_db.transaction(Scope.for_tenant(alpha.id)) as session:
        old = await issue_challenge(session, alpha.id, now=past)
        fresh = await issue_challenge(session, alpha.id)
    with pytest.raises(EvidenceError) as expired:
        await consume(migrated_db, alpha, old.id)
    assert expired.value.reason == "challenge-expired"
    with pytest.raises(EvidenceError) as unknown:
        await consume(migrated_db, alpha, uuid.uuid4())
    assert unknown.value.reason == "challenge-unknown"
    with pytest.raises(EvidenceError) as foreign:
        await consume(migrated_db, beta, fresh.id)
    assert foreign.value.reason == "challenge-unknown"
    assert await consume(migrated_db, alpha, fresh.id) == fresh.nonce


async def test_old_challenges_are_purged(migrated_db: Database, tenants: tuple[Tenant, Tenant]) -> None:
    alpha, _ = tenants
    async with migrated_db.transaction(Scope.for_tenant(alpha.id)) as session:
        ancient = await issue_challenge(session, alpha.id, now=utcnow() - timedelta(hours=3))
        await issue_challenge(session, alpha.id)
    with pytest.raises(EvidenceError) as gone:
        await consume(migrated_db, alpha, ancient.id)
    assert gone.value.reason == "challenge-unknown"
