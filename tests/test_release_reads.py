"""A release's first statement (keyserver/release_reads.py) on both stores: the challenge consumed as
``consume_challenge`` consumes it (the same refusals with the same reasons), and the AK the evidence names
read as ``trusted_ak`` reads it — its tenant's, enrolled and unrevoked, or none. (Its key reads are held
to ``release_inputs`` and the ORM in tests/test_release_inputs.py.)"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import pytest
from sqlalchemy import select, update

from keyserver import appraisal
from keyserver.backends.software import SoftwareBackend
from keyserver.challenges import issue_challenge
from keyserver.config import Budget
from keyserver.db.models import ReferenceValueSet as ReferenceValueRow
from keyserver.db.models import ReleaseCounter, ReleaseLimit, Tenant, TpmAk
from keyserver.db.session import Database, Scope
from keyserver.db.types import utcnow
from keyserver.errors import EvidenceError
from keyserver.policies import add_policy_version
from keyserver.ratelimits import KeyLimitRead, ReleaseBudgetExhausted, ReleaseLimiter, key_scope
from keyserver.reference_values import add_reference_values
from keyserver.release_reads import first_reads
from keyserver.releaselog.signing import LogSigner
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import create_tenant
from keyserver.tpm_enrolment import EnrolledAk
from policy.document import ReferenceValueSet

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


async def _set_versions(db: Database, tenant: Tenant, name: str, tee: str, count: int) -> None:
    log = ReleaseLog(LogSigner(SoftwareBackend(bytes(32)), "test"))
    claim = "tpm.pcrs.sha256.7" if tee == "tpm" else "snp.vmpl"
    for n in range(count):
        # Each version's content tells it apart (its tenant's and its own number).
        value = f"{tenant.name[0]}{n}".encode().hex() * 16 if tee == "tpm" else n
        async with db.transaction(Scope.for_tenant(tenant.id)) as session:
            await add_reference_values(
                session,
                log,
                tenant,
                name=name,
                tee=tee,
                document={"version": 1, "expected": {claim: [value]}},
                source="test",
                validate=appraisal.validate_reference_values,
            )


def _described(sets: Sequence[ReferenceValueSet]) -> list[tuple[object, ...]]:
    return sorted((s.name, s.tee, s.version, s.revoked, repr(s.values)) for s in sets)


async def test_the_sets_read_ahead_are_what_reference_sets_reads(migrated_db: Database) -> None:
    """The sets a release's first statement reads ahead (for the names its key's policy named last time)
    are the ones ``appraisal.reference_sets`` reads: this tenant's newest version of each, per tee, a
    revoked newest one as revoked — never another tenant's set of the same name."""
    acme, other = await _tenants(migrated_db)
    await _set_versions(migrated_db, other, "base", "tpm", 3)  # ahead of acme's in every way
    await _set_versions(migrated_db, acme, "base", "tpm", 2)
    await _set_versions(migrated_db, acme, "base", "sev-snp", 1)  # a set's versions count across tees
    await _set_versions(migrated_db, acme, "gone", "tpm", 1)
    async with migrated_db.transaction(Scope.for_tenant(acme.id)) as session:
        await session.execute(
            update(ReferenceValueRow)
            .where(ReferenceValueRow.tenant_id == acme.id, ReferenceValueRow.name == "gone")
            .values(revoked_at=utcnow())
        )
    names = ("base", "gone", "absent")
    expected = {
        acme.id: [("base", "sev-snp", 3, False), ("base", "tpm", 2, False), ("gone", "tpm", 1, True)],
        other.id: [("base", "tpm", 3, False)],
    }
    for tenant in (acme, other):
        appraisal._named_last.put((tenant.id, "w"), names)
        async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
            challenge = await issue_challenge(session, tenant.id)
            first = await first_reads(session, tenant, challenge.id, utcnow(), {}, "w", None)
            read = await appraisal.reference_sets(session, tenant.id, names)
        assert (first.sets_ahead.tenant_id, first.sets_ahead.names) == (tenant.id, names)
        ahead = appraisal._sets_from_rows(first.sets_ahead.rows)
        assert _described(ahead) == _described(read)
        assert [d[:4] for d in _described(ahead)] == expected[tenant.id]
    # With no names to read ahead, the statement reads none.
    appraisal._named_last.put((acme.id, "w"), ())
    async with migrated_db.transaction(Scope.for_tenant(acme.id)) as session:
        challenge = await issue_challenge(session, acme.id)
        first = await first_reads(session, acme, challenge.id, utcnow(), {}, "w", None)
    assert (first.sets_ahead.names, first.sets_ahead.rows) == ((), ())


async def test_an_appraisal_uses_the_sets_read_ahead_only_for_exactly_its_policys_names(
    migrated_db: Database,
) -> None:
    acme, other = await _tenants(migrated_db)
    await _set_versions(migrated_db, acme, "base", "tpm", 1)
    log = ReleaseLog(LogSigner(SoftwareBackend(bytes(32)), "test"))
    document = {"version": 1, "tees": ["tpm"], "reference_values": ["base"], "rules": []}
    async with migrated_db.transaction(Scope.for_tenant(acme.id)) as session:
        policy = await add_policy_version(
            session, log, acme, name="p", document=document, principal=uuid.UUID(int=7)
        )
    # Rows that are not what the store holds: an appraisal that used them shows version 99.
    planted: tuple[appraisal.SetRow, ...] = (
        (
            "base",
            "tpm",
            99,
            b'{"version": 1, "expected": {"tpm.pcrs.sha256.7": ["' + b"99" * 32 + b'"]}}',
            False,
        ),
    )
    stored = [("base", "tpm", 1, False)]

    async def prepared(ahead: appraisal.SetsReadAhead) -> list[tuple[object, ...]]:
        async with migrated_db.transaction(Scope.for_tenant(acme.id)) as session:
            result = await appraisal.prepare(session, acme.id, policy, ahead)
        return [(s.name, s.tee, s.version, s.revoked) for s in result.sets]

    appraisal._named_last.put((acme.id, "w"), ("stale",))
    # Exactly the policy's names: the rows read ahead are the ones used.
    assert await prepared(appraisal.SetsReadAhead(acme.id, "w", ("base",), planted)) == [
        ("base", "tpm", 99, False)
    ]
    # Other names (the key's policy changed since): read again, and the next guess is the policy's names.
    assert await prepared(appraisal.SetsReadAhead(acme.id, "w", ("stale",), planted)) == stored
    assert appraisal.names_to_read_ahead(acme.id, "w") == ("base",)
    assert await prepared(appraisal.SetsReadAhead(acme.id, "w", ("base", "more"), planted)) == stored
    assert await prepared(appraisal.SetsReadAhead(acme.id, "w", (), ())) == stored
    # Read ahead for another tenant: not used, and no guess is learned for it.
    assert await prepared(appraisal.SetsReadAhead(other.id, "w", ("base",), planted)) == stored
    assert appraisal.names_to_read_ahead(other.id, "w") == ()


async def test_the_keys_limit_is_read_and_a_grant_is_counted_only_where_a_budget_applies(
    migrated_db: Database,
) -> None:
    """The first statement reads the key's own ``release_limits`` row (this tenant's only); ``take_grant``
    sends nothing where that read shows no budget applies, and counts as before wherever one does (a
    limit, or the operator's default with no row of the tenant's)."""
    acme, other = await _tenants(migrated_db)
    limits = {"limited": 2, "unlimited": None}
    for tenant in (other, acme):
        for name, max_releases in limits.items():
            if tenant is other and name == "limited":
                continue
            async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
                session.add(
                    ReleaseLimit(
                        tenant_id=tenant.id,
                        scope=key_scope(name if tenant is acme else "limited"),
                        max_releases=max_releases,
                        window_seconds=60,
                        updated_by="test",
                    )
                )
    # other's row names "limited" too (unlimited there): acme must read its own.

    async def read(tenant: Tenant, key_name: str) -> KeyLimitRead:
        async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
            challenge = await issue_challenge(session, tenant.id)
            return (await first_reads(session, tenant, challenge.id, utcnow(), {}, key_name, None)).key_limit

    assert await read(acme, "limited") == KeyLimitRead("key/limited", True, 2)
    assert await read(acme, "unlimited") == KeyLimitRead("key/unlimited", True, None)
    assert await read(acme, "none") == KeyLimitRead("key/none", False, None)
    assert await read(other, "limited") == KeyLimitRead("key/limited", True, None)
    assert await read(other, "unlimited") == KeyLimitRead("key/unlimited", False, None)

    async def grants(key_name: str, limit_read: KeyLimitRead, default: Budget | None = None) -> list[object]:
        limiter = ReleaseLimiter(migrated_db, replace(migrated_db.settings, release_limit_key=default))
        outcomes: list[object] = []
        for _ in range(3):
            async with migrated_db.transaction(Scope.for_tenant(acme.id)) as session:
                try:
                    await limiter.take_grant(session, acme, key_name, utcnow(), limit_read=limit_read)
                    outcomes.append("granted")
                except ReleaseBudgetExhausted:
                    outcomes.append("exhausted")
        return outcomes

    async def counted(key_name: str) -> int:
        async with migrated_db.transaction(Scope.for_tenant(acme.id)) as session:
            rows = await session.execute(
                select(ReleaseCounter.count).where(
                    ReleaseCounter.tenant_id == acme.id, ReleaseCounter.scope == key_scope(key_name)
                )
            )
            return sum(rows.scalars())

    assert await grants("limited", await read(acme, "limited")) == ["granted", "granted", "exhausted"]
    assert await counted("limited") == 2
    for name in ("unlimited", "none"):  # nothing to count: no statement, no counter
        assert await grants(name, await read(acme, name)) == ["granted"] * 3
        assert await counted(name) == 0
    # No row, but the operator's default is a budget: counted against it.
    by_default = await grants("none", await read(acme, "none"), Budget(1, 60))
    assert by_default == ["granted", "exhausted", "exhausted"]
    assert await counted("none") == 1
    # A read of another key's limit says nothing about this one: counted as if nothing had been read.
    assert await grants("limited", KeyLimitRead("key/unlimited", True, None)) == ["exhausted"] * 3
