"""A release's first statement (keyserver/release_reads.py) on both stores: the challenge consumed as
``consume_challenge`` consumes it (the same refusals with the same reasons), and the AK the evidence names
read as ``trusted_ak`` reads it — its tenant's, enrolled and unrevoked, or none. (Its key reads are held
to ``release_inputs`` and the ORM in tests/test_release_inputs.py.)"""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest

from keyserver.challenges import issue_challenge
from keyserver.db.models import Tenant, TpmAk
from keyserver.db.session import Database, Scope
from keyserver.db.types import utcnow
from keyserver.errors import EvidenceError
from keyserver.release_reads import first_reads
from keyserver.tenancy import create_tenant
from keyserver.tpm_enrolment import EnrolledAk

pytestmark = pytest.mark.asyncio


async def _tenants(db: Database) -> tuple[Tenant, Tenant]:
    async with db.transaction(Scope.for_operator()) as session:
        return await create_tenant(session, "acme"), await create_tenant(session, "other")


def _tpm(ak_name: object) -> dict[str, object]:
    return {"tee": "tpm", "ak_name": ak_name}


async def _read(db: Database, tenant: Tenant, challenge: uuid.UUID, evidence: object) -> object:
    async with db.transaction(Scope.for_tenant(tenant.id)) as session:
        try:
            first = await first_reads(session, tenant, challenge, utcnow(), evidence, "w", None)
        except EvidenceError as refused:
            return ("refused", refused.reason)
        return first.nonce, first.ak


async def test_the_challenge_is_consumed_once_and_refused_as_consume_challenge_refuses(
    migrated_db: Database,
) -> None:
    acme, other = await _tenants(migrated_db)
    async with migrated_db.transaction(Scope.for_tenant(acme.id)) as session:
        fresh = await issue_challenge(session, acme.id)
        expired = await issue_challenge(session, acme.id, utcnow() - timedelta(hours=1))
    async with migrated_db.transaction(Scope.for_tenant(other.id)) as session:
        others = await issue_challenge(session, other.id)
    assert await _read(migrated_db, acme, fresh.id, {}) == (fresh.nonce, None)
    assert await _read(migrated_db, acme, fresh.id, {}) == ("refused", "challenge-replayed")
    assert await _read(migrated_db, acme, expired.id, {}) == ("refused", "challenge-expired")
    assert await _read(migrated_db, acme, uuid.uuid4(), {}) == ("refused", "challenge-unknown")
    # Another tenant's challenge is unknown here, and stays unused for its own tenant.
    assert await _read(migrated_db, acme, others.id, {}) == ("refused", "challenge-unknown")
    assert await _read(migrated_db, other, others.id, {}) == (others.nonce, None)


async def test_the_ak_read_is_the_tenants_enrolled_unrevoked_ak(migrated_db: Database) -> None:
    acme, other = await _tenants(migrated_db)
    now = utcnow()
    async with migrated_db.transaction(Scope.for_tenant(other.id)) as session:
        # The other tenant enrolled every name acme asks about: a read that forgot its tenant finds these.
        for name in ("0b01", "0b02", "0b03"):
            session.add(
                TpmAk(tenant_id=other.id, ak_name=name, ak_public=b"other's", method="ak-certificate")
            )
    async with migrated_db.transaction(Scope.for_tenant(acme.id)) as session:
        session.add(TpmAk(tenant_id=acme.id, ak_name="0b01", ak_public=b"acme's", method="ak-certificate"))
        session.add(
            TpmAk(
                tenant_id=acme.id,
                ak_name="0b02",
                ak_public=b"revoked",
                method="ak-certificate",
                revoked_at=now,
            )
        )
    cases = {
        "enrolled": (_tpm("0b01"), EnrolledAk("0b01", b"acme's")),
        "revoked": (_tpm("0b02"), EnrolledAk("0b02", None)),
        "only the other tenant's": (_tpm("0b03"), EnrolledAk("0b03", None)),
        "not a string": (_tpm(7), None),
        "not TPM evidence": ({"tee": "sev-snp", "ak_name": "0b01"}, None),
        "no evidence object": ("tpm", None),
    }
    for label, (evidence, expected) in cases.items():
        async with migrated_db.transaction(Scope.for_tenant(acme.id)) as session:
            challenge = await issue_challenge(session, acme.id)
        assert await _read(migrated_db, acme, challenge.id, evidence) == (challenge.nonce, expected), label
