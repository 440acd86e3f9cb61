"""Two requests creating the same first row at once (PostgreSQL; SQLite's BEGIN IMMEDIATE serialises
them): the loser's insert waits for the winner's commit, fails as a duplicate inside its savepoint, and the
request goes on as the second one — never a 500, never a transaction left failed.

- Enrolling the same TPM AK twice (``tpm_enrolment._trust_ak``) is idempotent: both get the AK.
- The first operator credential, made by several starts at once (``bootstrap``: every worker and replica
  checks for it): one credential, announced once (an advisory lock; before it, each start made one).
- The same reference values published twice (``reference_values.add_reference_values``): one version, returned
  to both, as a sequential republication is (a different content at once stays a conflict, retried).
- Adding the same TPM trust anchor twice (``tpm_enrolment.add_anchor``): one anchor, the second a conflict
  as if it had come after (migration 0014's unique index; before it, both were stored).
- A policy's first activation twice (``policies.activate``): both take effect in turn, each logged with the
  version the other left active.
- A scope's first release limit, a tenant's first witness configuration, set twice (``ratelimits.set_limit``,
  ``witness.tenant_config.set_config``): both take effect in turn.

The ordering is made, not hoped for: the winner inserts and holds its transaction open until PostgreSQL
shows the loser waiting on it (pg_locks), then commits.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from audit.cosignature import cosigner_vkey
from audit.entry import decode_entry
from keyserver.backends.software import SoftwareBackend
from keyserver.bootstrap import first_operator_token, initialise
from keyserver.config import Settings
from keyserver.db.models import (
    ApiToken,
    LogEntry,
    PolicyHead,
    ReferenceValueSet,
    Tenant,
    TenantWitnesses,
    TpmAk,
    TpmTrustAnchor,
)
from keyserver.db.session import Database, Scope
from keyserver.errors import Conflict
from keyserver.policies import activate, add_policy_version
from keyserver.ratelimits import TENANT, list_limits, set_limit
from keyserver.reference_values import add_reference_values
from keyserver.releaselog.signing import LogSigner
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import Role, create_tenant, issue_token, revoke_tenant_token
from keyserver.tpm_enrolment import _trust_ak, add_anchor
from keyserver.witness.tenant_config import parse_config, set_config

pytestmark = pytest.mark.asyncio

PRINCIPAL = uuid.UUID(int=7)
# A lock some session of this test's database waits for (other tests' databases share the cluster).
WAITING = text(
    "SELECT count(*) FROM pg_locks WHERE NOT granted"
    " AND pid IN (SELECT pid FROM pg_stat_activity WHERE datname = current_database())"
)
POLICY = {"version": 1, "tees": ["tpm"], "rules": [{"name": "r", "expr": "true"}]}


def _postgres_only(db: Database) -> None:
    if db.dialect != "postgresql":
        pytest.skip(
            "PostgreSQL only: SQLite's transactions take the write lock first and cannot interleave so"
        )


async def _loser_waits_for_winner(
    db: Database,
    tenant: Tenant,
    winner: Callable[[AsyncSession], Awaitable[Any]],
    loser: Callable[[AsyncSession], Awaitable[Any]],
) -> Any:
    """``winner`` runs and stays uncommitted until ``loser``, in a transaction of its own, waits on it."""
    async with db.transaction(Scope.for_tenant(tenant.id)) as session:
        await winner(session)

        async def second() -> Any:
            async with db.transaction(Scope.for_tenant(tenant.id)) as other:
                return await loser(other)

        task = asyncio.create_task(second())
        for _ in range(500):
            async with db.transaction(Scope.for_operator()) as watcher:
                waiting = (await watcher.execute(WAITING)).scalar_one()
            if waiting or task.done():
                break
            await asyncio.sleep(0.01)
        assert waiting, "the second request did not wait for the first (the race was not made)"
    return await task


@pytest.fixture
def log(migrated_db: Database) -> ReleaseLog:
    return ReleaseLog(LogSigner(SoftwareBackend.from_file(migrated_db.settings.effective_kek_file), "test"))


@pytest.fixture
async def tenant(migrated_db: Database) -> Tenant:
    _postgres_only(migrated_db)
    async with migrated_db.transaction(Scope.for_operator()) as session:
        return await create_tenant(session, "acme")


async def test_the_same_ak_enrolled_twice_at_once_is_one_ak_for_both(
    migrated_db: Database, log: ReleaseLog, tenant: Tenant
) -> None:
    now = datetime.now(UTC)

    async def enrol(session: AsyncSession) -> tuple[str, bytes]:
        ak = await _trust_ak(
            session,
            log,
            tenant,
            ak_public=b"the AK",
            ak_name="000b" + "ab" * 32,
            method="ak-certificate",
            ek_fingerprint=None,
            now=now,
            detail={},
        )
        return ak.ak_name, bytes(ak.ak_public)

    second = await _loser_waits_for_winner(migrated_db, tenant, enrol, enrol)
    assert second == ("000b" + "ab" * 32, b"the AK")
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        assert len((await session.execute(select(TpmAk))).scalars().all()) == 1


async def test_the_same_trust_anchor_added_twice_at_once_is_stored_once(
    migrated_db: Database, log: ReleaseLog, tenant: Tenant
) -> None:
    from cryptography.hazmat.primitives.serialization import Encoding

    from tests.tpm.helpers import ek_ca

    pem = ek_ca().root.public_bytes(Encoding.PEM)

    async def add(session: AsyncSession) -> uuid.UUID:
        anchor = await add_anchor(
            session, log, tenant, kind="ek-ca", name="root", certificate=pem, principal=PRINCIPAL
        )
        return anchor.id

    with pytest.raises(Conflict, match="already a ek-ca anchor"):
        await _loser_waits_for_winner(migrated_db, tenant, add, add)
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        assert len((await session.execute(select(TpmTrustAnchor))).scalars().all()) == 1
        entries = (await session.execute(select(LogEntry))).scalars().all()
    kinds = [decode_entry(bytes(e.entry))["kind"] for e in entries]
    assert kinds.count("tpm-trust-anchor-added") == 1


def _publishing(log: ReleaseLog, tenant: Tenant, value: str) -> Callable[[AsyncSession], Awaitable[int]]:
    async def publish(session: AsyncSession) -> int:
        published = await add_reference_values(
            session,
            log,
            tenant,
            name="loader",
            tee="sev-snp",
            document={"snp.measurement": [value * 48]},
            source=f"token:{PRINCIPAL}",
            validate=lambda _tee, _document: None,
        )
        return published.version

    return publish


async def test_the_same_reference_values_published_twice_at_once_are_one_version(
    migrated_db: Database, log: ReleaseLog, tenant: Tenant
) -> None:
    same = _publishing(log, tenant, "aa")
    assert await _loser_waits_for_winner(migrated_db, tenant, same, same) == 1
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        assert len((await session.execute(select(ReferenceValueSet))).scalars().all()) == 1
        entries = (await session.execute(select(LogEntry))).scalars().all()
    assert [decode_entry(bytes(e.entry))["kind"] for e in entries].count("reference-values-added") == 1
    with pytest.raises(Conflict, match="retry"):
        await _loser_waits_for_winner(
            migrated_db, tenant, _publishing(log, tenant, "bb"), _publishing(log, tenant, "cc")
        )


async def test_a_token_revoked_twice_at_once_is_revoked_and_logged_once(
    migrated_db: Database, log: ReleaseLog, tenant: Tenant
) -> None:
    """Found by review: both revocations read the token unrevoked, and each logged a token-revoked."""
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        issued = await issue_token(session, tenant_id=tenant.id, role=Role.AUDITOR)
    token_id = issued.token.id

    async def revoke(session: AsyncSession) -> Any:
        return (await revoke_tenant_token(session, log, tenant, None, token_id)).revoked_at

    first_revoked = await _loser_waits_for_winner(migrated_db, tenant, revoke, revoke)
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        entries = (await session.execute(select(LogEntry))).scalars().all()
    kinds = [decode_entry(bytes(e.entry))["kind"] for e in entries]
    assert kinds.count("token-revoked") == 1
    assert first_revoked is not None


async def test_a_policys_first_activation_twice_at_once_takes_effect_in_turn(
    migrated_db: Database, log: ReleaseLog, tenant: Tenant
) -> None:
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        for _ in range(2):
            await add_policy_version(session, log, tenant, name="p", document=POLICY, principal=PRINCIPAL)

    def activating(version: int) -> Callable[[AsyncSession], Awaitable[int]]:
        async def run(session: AsyncSession) -> int:
            return (await activate(session, log, tenant, "p", version, principal=PRINCIPAL)).active_version

        return run

    assert await _loser_waits_for_winner(migrated_db, tenant, activating(1), activating(2)) == 2
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        head = (await session.execute(select(PolicyHead))).scalar_one()
        entries = (await session.execute(select(LogEntry).order_by(LogEntry.idx))).scalars().all()
    assert head.active_version == 2
    activations = [decode_entry(bytes(e.entry)) for e in entries]
    activations = [e for e in activations if e["kind"] == "policy-activated"]
    assert [(a["policy"]["version"], a["previous_version"]) for a in activations] == [(1, None), (2, 1)]


async def test_a_scopes_first_release_limit_set_twice_at_once_takes_effect_in_turn(
    migrated_db: Database, log: ReleaseLog, tenant: Tenant
) -> None:

    def setting(max_releases: int) -> Callable[[AsyncSession], Awaitable[int | None]]:
        async def run(session: AsyncSession) -> int | None:
            row = await set_limit(session, log, tenant, TENANT, max_releases, 60, principal=PRINCIPAL)
            return row.max_releases

        return run

    assert await _loser_waits_for_winner(migrated_db, tenant, setting(5), setting(7)) == 7
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        assert [(r.scope, r.max_releases) for r in await list_limits(session, tenant.id)] == [(TENANT, 7)]


async def test_a_tenants_first_witness_configuration_set_twice_at_once_takes_effect_in_turn(
    migrated_db: Database, log: ReleaseLog, tenant: Tenant
) -> None:

    def configuring(name: str) -> Callable[[AsyncSession], Awaitable[None]]:
        key = Ed25519PrivateKey.generate().public_key()
        document = {"witnesses": [{"name": name, "url": f"https://{name}", "vkey": cosigner_vkey(name, key)}]}

        async def run(session: AsyncSession) -> None:
            await set_config(
                session, log, tenant, parse_config({**document, "quorum": 1}), principal=PRINCIPAL
            )

        return run

    await _loser_waits_for_winner(migrated_db, tenant, configuring("a.example"), configuring("b.example"))
    async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
        stored = (await session.execute(select(TenantWitnesses))).scalars().all()
    assert [decode_entry(bytes(r.document))["witnesses"][0]["name"] for r in stored] == ["b.example"]


async def test_starts_at_once_make_one_operator_credential(settings: Settings) -> None:
    """One start has made the credential and not committed yet; another start (its own pool, as another
    worker or replica) waits for it and then makes none."""
    if not settings.database_url or not settings.database_url.startswith("postgresql"):
        pytest.skip("PostgreSQL only: SQLite's transactions take the write lock first")
    first, second = Database(settings), Database(settings)  # the schema is at head: postgres_url's template
    announced: list[str] = []
    try:
        async with first.transaction(Scope.for_operator()) as session:
            assert await first_operator_token(session, first.dialect) is not None
            task = asyncio.create_task(initialise(second, announce=announced.append))
            for _ in range(500):
                async with first.transaction(Scope.for_operator()) as watcher:
                    waiting = (await watcher.execute(WAITING)).scalar_one()
                if waiting or task.done():
                    break
                await asyncio.sleep(0.01)
            assert waiting, "the second start did not wait for the first (it made its own credential)"
        await task
        async with first.transaction(Scope.for_operator()) as session:
            operators = (await session.execute(select(ApiToken).where(ApiToken.role == "operator"))).scalars()
            assert len(list(operators)) == 1
    finally:
        await first.dispose()
        await second.dispose()
    assert announced == []
