"""The challenge, the release attempt and a key's grant in one call each (migrations/versions/0012-0013,
keyserver/db/hot.py).

On PostgreSQL ``ReleaseLimiter.issue_challenge``, ``admit_attempt`` and ``take_grant`` are one call each
of a SQL function; on SQLite the same steps are one procedure each, run in aiosqlite's thread in one
hand-off (keyserver/ratelimits.py, ``sqlite_take_limited``, ``sqlite_issue_challenge``). These tests hold
both to the Python reference (``effective_limit`` then ``take``) — the same counts and refusals for any
sequence of times and budgets (a differential run against it on the same database), the tenant's own
limit and no other's — and, on PostgreSQL, the scope gone when the statement ends and the attempt alone
not waiting for its WAL flush; and check, on both stores, what the limiter promises: a refusal writes
nothing, a purge touches one tenant's expired challenges only.
"""

from __future__ import annotations

import random
import uuid
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, text

from keyserver import challenges
from keyserver.config import Budget, Settings
from keyserver.db import hot
from keyserver.db.models import Challenge, ReleaseCounter, ReleaseLimit
from keyserver.db.session import Database, Scope
from keyserver.ratelimits import (
    _PG_TAKE_LIMITED,
    TENANT,
    RateLimited,
    ReleaseLimiter,
    _sqlite_take_limited,
    effective_limit,
    key_scope,
    sqlite_admit_attempt,
    take,
)
from keyserver.tenancy import create_tenant

pytestmark = pytest.mark.asyncio

T0 = datetime(2026, 12, 5, 12, 0, 0, tzinfo=UTC)


async def _tenants(db: Database, *names: str) -> list[uuid.UUID]:
    async with db.transaction(Scope.for_operator()) as session:
        return [(await create_tenant(session, name)).id for name in names]


def _postgres_only(db: Database) -> None:
    if db.dialect != "postgresql":
        pytest.skip("PostgreSQL only: the scope and commit settings of its functions")


async def _counters(db: Database, tenant_id: uuid.UUID) -> list[tuple[str, int, int, int]]:
    async with db.transaction(Scope.for_tenant(tenant_id)) as session:
        rows = await session.execute(
            select(
                ReleaseCounter.scope,
                ReleaseCounter.window_seconds,
                ReleaseCounter.window_start,
                ReleaseCounter.count,
            )
            .where(ReleaseCounter.tenant_id == tenant_id)
            .order_by(ReleaseCounter.window_start)
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


async def _attempt(
    db: Database, tenant_id: uuid.UUID, budget: Budget | None, now: datetime
) -> tuple[object, ...]:
    if db.dialect == "sqlite":  # the procedure, as a transaction of its own as admit_attempt runs it
        return await sqlite_admit_attempt(db, tenant_id, budget, now)
    rows = await db.call(
        "SELECT max_releases, window_seconds, retry_after FROM keyserver_admit_attempt($1, $2, $3, $4)",
        tenant_id,
        None if budget is None else budget.max_releases,
        None if budget is None else budget.window_seconds,
        now.timestamp(),
    )
    assert rows is not None
    (row,) = rows
    return tuple(row)


@pytest.mark.parametrize("seed", range(4))
async def test_the_attempt_function_counts_and_refuses_as_take_does(migrated_db: Database, seed: int) -> None:
    """Differential: one tenant counted by the function (SQLite: the procedure), another by ``take``
    (Python), the same times and budgets — window edges, fractions of a second, refusals, new windows that
    drop old counters."""
    by_function, by_python = await _tenants(migrated_db, "fn", "py")
    rng = random.Random(seed)
    budget = Budget(rng.randint(1, 4), rng.choice([1, 2, 5, 60]))
    now = T0 + timedelta(seconds=rng.random())
    for _ in range(60):
        now += timedelta(seconds=rng.choice([0.0, 0.001, 0.4, 0.999, 1.0, 2.5, budget.window_seconds]))
        if rng.random() < 0.1:
            budget = Budget(rng.randint(1, 4), rng.choice([1, 2, 5, 60]))  # the operator changed it
        max_releases, window_seconds, retry_after = await _attempt(migrated_db, by_function, budget, now)
        assert (max_releases, window_seconds) == (budget.max_releases, budget.window_seconds)
        async with migrated_db.transaction(Scope.for_tenant(by_python)) as session:
            expected = await take(session, by_python, TENANT, budget, now)
        assert retry_after == expected, now
        assert await _counters(migrated_db, by_function) == await _counters(migrated_db, by_python)


@pytest.mark.parametrize("seed", range(3))
async def test_the_grant_function_counts_and_refuses_as_the_python_does(
    migrated_db: Database, seed: int
) -> None:
    """Differential (migrations/versions/0013, ``keyserver_take_limited``, inside a transaction as a
    release runs it) against ``effective_limit`` then ``take``: a key's stored limit set, changed, set to
    "no limit" and deleted, the default present or not, over times that cross windows. SQLite: its
    procedure, the same way."""
    by_function, by_python = await _tenants(migrated_db, "fn", "py")
    rng = random.Random(seed)
    scope = key_scope("weights")
    now = T0 + timedelta(seconds=rng.random())
    for step in range(60):
        now += timedelta(seconds=rng.choice([0.0, 0.001, 0.4, 0.999, 1.0, 2.5, 5.0]))
        default = rng.choice([None, Budget(2, 5), Budget(3, 1)])
        if rng.random() < 0.15:  # the tenant (both) sets, changes or lifts the key's own limit
            choices: list[str | Budget] = ["none", "unlimited", Budget(1, 2), Budget(4, 5)]
            stored = rng.choice(choices)
            for tenant_id in (by_function, by_python):
                async with migrated_db.transaction(Scope.for_tenant(tenant_id)) as session:
                    row = await session.get(ReleaseLimit, (tenant_id, scope))
                    if row is not None:
                        await session.delete(row)
                        await session.flush()
                    if stored != "none":
                        session.add(
                            ReleaseLimit(
                                tenant_id=tenant_id,
                                scope=scope,
                                max_releases=None if isinstance(stored, str) else stored.max_releases,
                                window_seconds=60 if isinstance(stored, str) else stored.window_seconds,
                                updated_at=now,
                                updated_by="test",
                            )
                        )
        async with migrated_db.transaction(Scope.for_tenant(by_function)) as session:
            rows = await hot.fetch(
                session,
                _PG_TAKE_LIMITED,
                by_function,
                scope,
                None if default is None else default.max_releases,
                None if default is None else default.window_seconds,
                now.timestamp(),
            )
            if rows is None:  # SQLite
                rows = [await _sqlite_take_limited(session, by_function, scope, default, now)]
        (max_releases, window_seconds, retry_after) = rows[0]
        settings = replace(migrated_db.settings, release_limit_key=default)
        async with migrated_db.transaction(Scope.for_tenant(by_python)) as session:
            budget = (await effective_limit(session, settings, by_python, scope)).budget
            expected = None if budget is None else await take(session, by_python, scope, budget, now)
        assert (max_releases, window_seconds) == (
            (None, None) if budget is None else (budget.max_releases, budget.window_seconds)
        ), step
        assert retry_after == expected, step
        assert await _counters(migrated_db, by_function) == await _counters(migrated_db, by_python)


async def test_the_attempt_function_reads_its_own_tenants_limit(migrated_db: Database) -> None:
    strict, unlimited, other = await _tenants(migrated_db, "strict", "unlimited", "other")
    for tenant_id, max_releases in ((strict, 1), (unlimited, None)):
        async with migrated_db.transaction(Scope.for_tenant(tenant_id)) as session:
            session.add(
                ReleaseLimit(
                    tenant_id=tenant_id,
                    scope=TENANT,
                    max_releases=max_releases,
                    window_seconds=30,
                    updated_at=T0,
                    updated_by="test",
                )
            )
    default = Budget(3, 60)
    assert await _attempt(migrated_db, strict, default, T0) == (1, 30, None)
    assert await _attempt(migrated_db, strict, default, T0) == (1, 30, 30)  # its own 1 per 30 s
    for _ in range(5):  # a stored "no limit" overrides the default and counts nothing
        assert await _attempt(migrated_db, unlimited, default, T0) == (None, None, None)
    assert await _counters(migrated_db, unlimited) == []
    # Another tenant gets the default: the strict tenant's row is not its (row-level security and the
    # function's own filter both say so).
    assert [await _attempt(migrated_db, other, default, T0) for _ in range(4)] == [(3, 60, None)] * 3 + [
        (3, 60, 60)
    ]
    # No default and nothing stored: no budget, nothing counted.
    fresh = (await _tenants(migrated_db, "fresh"))[0]
    assert await _attempt(migrated_db, fresh, None, T0) == (None, None, None)
    assert await _counters(migrated_db, fresh) == []


async def test_only_the_attempt_skips_waiting_for_its_flush_and_no_scope_outlives_the_call(
    migrated_db: Database,
) -> None:
    _postgres_only(migrated_db)
    (acme,) = await _tenants(migrated_db, "acme")
    limiter = ReleaseLimiter(migrated_db, Settings(data_dir=migrated_db.settings.data_dir))
    async with migrated_db.transaction(Scope.for_operator()) as session:
        before = (await session.execute(text("SELECT current_setting('synchronous_commit')"))).scalar_one()
        await session.execute(
            text("SELECT keyserver_issue_challenge(:t, :i, :n, :c, :e, NULL, NULL, 0, NULL)"),
            {"t": acme, "i": uuid.uuid4(), "n": b"\0" * 32, "c": T0, "e": T0 + timedelta(minutes=2)},
        )
        assert (
            await session.execute(text("SELECT current_setting('synchronous_commit')"))
        ).scalar_one() == before
        await session.execute(text("SELECT * FROM keyserver_admit_attempt(:t, 5, 60, 0)"), {"t": acme})
        assert (
            await session.execute(text("SELECT current_setting('synchronous_commit')"))
        ).scalar_one() == "off"
        # Inside one explicit transaction the scope set by the function stays (the caller's own risk):
        # the limiter never calls it so; in its own transaction the scope ends with the statement.
        assert (
            await session.execute(text("SELECT current_setting('keyserver.tenant_id')"))
        ).scalar_one() == str(acme)
    await limiter.issue_challenge(await _tenant(migrated_db, acme), T0)
    rows = await migrated_db.call(
        "SELECT coalesce(current_setting('keyserver.tenant_id', true), '') AS tenant,"
        " (SELECT count(*) FROM challenges) AS visible"
    )
    assert rows is not None
    assert (rows[0]["tenant"], rows[0]["visible"]) == ("", 0), "a scope outlived its statement"


async def _tenant(db: Database, tenant_id: uuid.UUID):  # type: ignore[no-untyped-def]
    from keyserver.db.models import Tenant

    async with db.transaction(Scope.for_operator()) as session:
        tenant = await session.get(Tenant, tenant_id)
        assert tenant is not None
        return tenant


async def _challenge_ids(db: Database, tenant_id: uuid.UUID) -> set[uuid.UUID]:
    async with db.transaction(Scope.for_tenant(tenant_id)) as session:
        return set(
            (await session.execute(select(Challenge.id).where(Challenge.tenant_id == tenant_id))).scalars()
        )


async def test_a_refused_challenge_writes_nothing_and_the_budget_is_per_tenant(migrated_db: Database) -> None:
    """Both stores, through the limiter."""
    acme_id, other_id = await _tenants(migrated_db, "acme", "other")
    acme, other = await _tenant(migrated_db, acme_id), await _tenant(migrated_db, other_id)
    settings = Settings(data_dir=migrated_db.settings.data_dir, challenge_limit=Budget(2, 60))
    limiter = ReleaseLimiter(migrated_db, settings)
    now = T0 + timedelta(seconds=10)
    issued = [await limiter.issue_challenge(acme, now) for _ in range(2)]
    with pytest.raises(RateLimited) as refused:
        await limiter.issue_challenge(acme, now)
    assert refused.value.retry_after == 50
    assert await _challenge_ids(migrated_db, acme_id) == {c.id for c in issued}
    # The stored challenge is the one handed out: consumed once, for its tenant only.
    async with migrated_db.transaction(Scope.for_tenant(acme_id)) as session:
        assert await challenges.consume_challenge(session, acme_id, issued[0].id, now) == issued[0].nonce
    assert (await limiter.issue_challenge(other, now)).tenant_id == other_id
    # The next window issues again.
    assert (await limiter.issue_challenge(acme, now + timedelta(seconds=50))).tenant_id == acme_id


async def test_issuing_purges_only_this_tenants_long_expired_challenges(migrated_db: Database) -> None:
    """Both stores, through the limiter."""
    acme_id, other_id = await _tenants(migrated_db, "acme", "other")
    acme = await _tenant(migrated_db, acme_id)
    limiter = ReleaseLimiter(
        migrated_db, Settings(data_dir=migrated_db.settings.data_dir, challenge_limit=None)
    )
    stale, recent = T0 - challenges.PURGE_AFTER - timedelta(minutes=5), T0 - timedelta(minutes=5)
    stale_ids: dict[uuid.UUID, uuid.UUID] = {}
    recent_ids: dict[uuid.UUID, uuid.UUID] = {}
    for tenant_id in (acme_id, other_id):
        stale_ids[tenant_id], recent_ids[tenant_id] = uuid.uuid4(), uuid.uuid4()
        async with migrated_db.transaction(Scope.for_tenant(tenant_id)) as session:
            session.add_all(
                Challenge(tenant_id=tenant_id, id=id_, nonce=b"\1" * 32, created_at=at, expires_at=at)
                for id_, at in ((stale_ids[tenant_id], stale), (recent_ids[tenant_id], recent))
            )
    challenges._last_purge.clear()
    fresh = await limiter.issue_challenge(acme, T0)
    assert await _challenge_ids(migrated_db, acme_id) == {fresh.id, recent_ids[acme_id]}
    assert await _challenge_ids(migrated_db, other_id) == {stale_ids[other_id], recent_ids[other_id]}
    # Within PURGE_INTERVAL this process does not purge again (one DELETE less per challenge).
    async with migrated_db.transaction(Scope.for_tenant(acme_id)) as session:
        session.add(
            Challenge(
                tenant_id=acme_id,
                id=stale_ids[other_id],
                nonce=b"\1" * 32,
                created_at=stale,
                expires_at=stale,
            )
        )
    again = await limiter.issue_challenge(acme, T0 + timedelta(seconds=1))
    assert await _challenge_ids(migrated_db, acme_id) == {
        fresh.id,
        again.id,
        recent_ids[acme_id],
        stale_ids[other_id],
    }


async def test_a_new_window_drops_only_its_own_scopes_old_counters(migrated_db: Database) -> None:
    acme_id, other_id = await _tenants(migrated_db, "acme", "other")
    acme = await _tenant(migrated_db, acme_id)
    settings = Settings(data_dir=migrated_db.settings.data_dir, challenge_limit=Budget(5, 60))
    await ReleaseLimiter(migrated_db, settings).issue_challenge(acme, T0)
    budget = Budget(5, 60)
    for tenant_id in (acme_id, other_id):
        assert await _attempt(migrated_db, tenant_id, budget, T0) == (5, 60, None)
    start = int(T0.timestamp()) // 60 * 60
    assert await _counters(migrated_db, acme_id) == [("challenges", 60, start, 1), (TENANT, 60, start, 1)]
    assert await _attempt(migrated_db, acme_id, budget, T0 + timedelta(seconds=60)) == (5, 60, None)
    assert await _counters(migrated_db, acme_id) == [
        ("challenges", 60, start, 1),
        (TENANT, 60, start + 60, 1),
    ]
    assert await _counters(migrated_db, other_id) == [(TENANT, 60, start, 1)]
