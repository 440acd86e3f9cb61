"""Challenges over the release endpoint (both databases): expired, unknown, and raced — each denied and
logged; of 20 concurrent releases presenting one challenge, at most one gets past it."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey
from sqlalchemy import update

from keyserver.db.models import Challenge
from keyserver.db.session import Database, Scope
from keyserver.db.types import utcnow
from tests.conftest import Service, bearer
from tests.test_tenancy import logged, make_tenant

JWK = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False)
EVIDENCE = {"tee": "sev-snp", "report": "AAAA"}  # never reached when the challenge is refused


async def release(service: Service, challenge: str) -> Any:
    return await service.client.post(
        "/v1/tenants/acme/keys/weights/release",
        json={"challenge": challenge, "evidence": EVIDENCE, "ephemeral_key": JWK},
    )


async def test_expired_unknown_and_raced_challenges(service: Service, db: Database) -> None:
    acme = await make_tenant(service, "acme")
    auditor = bearer(acme.auditor)
    expired = (await service.client.post("/v1/tenants/acme/challenges")).json()
    tenant_id = uuid.UUID((await service.client.get("/v1/tenants/acme", headers=auditor)).json()["id"])
    async with db.transaction(Scope.for_tenant(tenant_id)) as session:
        await session.execute(
            update(Challenge)
            .where(Challenge.id == uuid.UUID(expired["id"]))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    reasons = []
    for challenge in (expired["id"], str(uuid.uuid4())):
        response = await release(service, challenge)
        assert response.status_code == 403
        reasons.append(response.json()["reason"])
    assert reasons == ["challenge-expired", "challenge-unknown"]

    raced = (await service.client.post("/v1/tenants/acme/challenges")).json()["id"]
    responses = await asyncio.gather(*(release(service, raced) for _ in range(20)))
    raced_reasons = sorted(r.json()["reason"] for r in responses)
    # One request consumed the challenge (and then failed on the dummy evidence); 19 saw it used.
    assert raced_reasons.count("challenge-replayed") == 19
    assert all(r.status_code == 403 for r in responses)
    kinds = [e["reason"] for e in await logged(service, "acme", auditor)]
    assert kinds[:2] == ["challenge-expired", "challenge-unknown"]
    assert kinds[2:].count("challenge-replayed") == 19
