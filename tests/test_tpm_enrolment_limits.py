"""TPM enrolments begun without a token are budgeted and purged as challenges are, on both databases.

Beginning an enrolment stores a row for a caller that holds no token (the TPM proves itself later), so it
counts against the tenant's challenge budget (KEYSERVER_CHALLENGE_LIMIT: the same counter, the same 429),
and the tenant's enrolments that expired long ago without being activated are deleted when a new one is
begun. Before this, 700 enrolments with a (public) pinned EK stored 700 rows, and none was ever deleted.
"""

from __future__ import annotations

import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from keyserver import challenges
from keyserver import tpm_enrolment as tpm
from keyserver.config import Budget, Settings
from keyserver.db.models import TpmEnrolment
from keyserver.db.session import Database, Scope
from keyserver.db.types import utcnow
from keyserver.ratelimits import REFUSALS
from tests.conftest import Service, bearer
from tests.test_tenancy import TenantFixture, make_tenant
from tests.test_tpm_enrolment import SoftTpm, pin
from tests.tpm.helpers import ec_key

BUDGET = 3


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", database_url=database_url, challenge_limit=Budget(BUDGET, 3600)
    )


async def _tenant_id(service: Service, tenant: TenantFixture) -> uuid.UUID:
    response = await service.client.get(f"/v1/tenants/{tenant.name}", headers=bearer(tenant.admin))
    return uuid.UUID(response.json()["id"])


async def _enrolment_ids(db: Database, tenant_id: uuid.UUID) -> set[uuid.UUID]:
    async with db.transaction(Scope.for_tenant(tenant_id)) as session:
        query = select(TpmEnrolment.id).where(TpmEnrolment.tenant_id == tenant_id)
        return set((await session.execute(query)).scalars())


async def test_enrolments_count_against_the_challenge_budget(service: Service, db: Database) -> None:
    acme, globex = await make_tenant(service, "acme"), await make_tenant(service, "globex")
    tpm_ = SoftTpm(ec_key("secp256r1", 13), ec_key("secp256r1", 14))
    await pin(service, acme, tpm_)
    body = {"ek_public": tpm_.ek_public, "ak_public": tpm_.ak_public}
    # Counted before its EK is checked, so a refused start costs the budget too (found by review: counted
    # after the costly certificate checks, refused starts were free to repeat).
    stranger = SoftTpm(ec_key("secp256r1", 15), ec_key("secp256r1", 16))
    untrusted = await service.client.post(
        "/v1/tenants/acme/tpm/enrolments",
        json={"ek_public": stranger.ek_public, "ak_public": stranger.ak_public},
    )
    assert untrusted.status_code == 403
    # One budget for all: that refused start, a challenge and the enrolments spend it.
    assert (await service.client.post("/v1/tenants/acme/challenges")).status_code == 201
    for _ in range(BUDGET - 2):
        started = await service.client.post("/v1/tenants/acme/tpm/enrolments", json=body)
        assert started.status_code == 201, started.text
    refusals = REFUSALS.labels(limit="challenges")._value.get()
    refused = await service.client.post("/v1/tenants/acme/tpm/enrolments", json=body)
    assert refused.status_code == 429, refused.text
    problem = refused.json()
    assert problem["type"] == "urn:keyserver:problem:rate-limited"
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    assert problem["retry_after"] == int(refused.headers["Retry-After"])
    assert "TPM enrolments" in problem["detail"]
    assert REFUSALS.labels(limit="challenges")._value.get() == refusals + 1
    # The refused enrolment stored nothing; challenges are refused as well now.
    assert len(await _enrolment_ids(db, await _tenant_id(service, acme))) == BUDGET - 2
    assert (await service.client.post("/v1/tenants/acme/challenges")).status_code == 429
    # Another tenant's budget is its own.
    assert (await service.client.post(f"/v1/tenants/{globex.name}/challenges")).status_code == 201


async def test_expired_enrolments_are_purged_and_activated_ones_kept(service: Service, db: Database) -> None:
    acme, globex = await make_tenant(service, "acme"), await make_tenant(service, "globex")
    tpm_ = SoftTpm(ec_key("secp256r1", 13), ec_key("secp256r1", 14))
    await pin(service, acme, tpm_)
    acme_id, globex_id = await _tenant_id(service, acme), await _tenant_id(service, globex)
    now = utcnow()
    stale = now - challenges.PURGE_AFTER - timedelta(minutes=5)
    recent = now - timedelta(minutes=5)
    rows: dict[str, tuple[uuid.UUID, uuid.UUID]] = {}
    for label, tenant_id, expires_at, completed in (
        ("stale", acme_id, stale, False),
        ("stale, activated", acme_id, stale, True),
        ("recently expired", acme_id, recent, False),
        ("another tenant's stale", globex_id, stale, False),
    ):
        rows[label] = (tenant_id, uuid.uuid4())
        async with db.transaction(Scope.for_tenant(tenant_id)) as session:
            session.add(
                TpmEnrolment(
                    tenant_id=tenant_id,
                    id=rows[label][1],
                    ak_public=b"\0",
                    ak_name="000b" + "00" * 32,
                    ek_fingerprint="0" * 64,
                    ek_trust="pinned",
                    secret_hash=bytes(32),
                    created_at=expires_at - tpm.ENROLMENT_LIFETIME,
                    expires_at=expires_at,
                    completed_at=expires_at - timedelta(minutes=1) if completed else None,
                )
            )
    # The tenant is new: this process has not purged its enrolments yet, so the next begin purges them.
    body = {"ek_public": tpm_.ek_public, "ak_public": tpm_.ak_public}
    started = await service.client.post("/v1/tenants/acme/tpm/enrolments", json=body)
    assert started.status_code == 201, started.text
    fresh = uuid.UUID(started.json()["enrolment_id"])
    kept = {rows[label][1] for label in ("stale, activated", "recently expired")}
    assert await _enrolment_ids(db, acme_id) == kept | {fresh}
    assert await _enrolment_ids(db, globex_id) == {rows["another tenant's stale"][1]}
    # The purge does not touch the challenges' schedule (each kind keeps its own).
    assert challenges._last_purge.get(acme_id) is None
    # Within PURGE_INTERVAL this process does not purge again (one DELETE less per enrolment).
    again_stale = uuid.uuid4()
    async with db.transaction(Scope.for_tenant(acme_id)) as session:
        session.add(
            TpmEnrolment(
                tenant_id=acme_id,
                id=again_stale,
                ak_public=b"\0",
                ak_name="000b" + "00" * 32,
                ek_fingerprint="0" * 64,
                ek_trust="pinned",
                secret_hash=bytes(32),
                created_at=stale - tpm.ENROLMENT_LIFETIME,
                expires_at=stale,
            )
        )
    again = await service.client.post("/v1/tenants/acme/tpm/enrolments", json=body)
    assert again.status_code == 201, again.text
    assert again_stale in await _enrolment_ids(db, acme_id)
