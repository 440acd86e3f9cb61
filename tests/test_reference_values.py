"""Reference values and CI-signed bundles at the service layer, on both databases."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import select

from audit.entry import canonical_bytes, decode_entry
from keyserver import reference_values as rv
from keyserver.backends.software import SoftwareBackend
from keyserver.config import Settings
from keyserver.db.models import LogEntry, Tenant
from keyserver.db.session import Database, Scope
from keyserver.errors import Conflict, Forbidden, InvalidRequest
from keyserver.releaselog.signing import LogSigner
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import create_tenant

PRINCIPAL = uuid.uuid4()
VALUES = {"snp.measurement": ["ab" * 48]}


def accept_any(_tee: str, _document: dict[str, Any]) -> None:
    """The content check belongs to policy/; these tests are about storage, versions and signatures."""


@pytest.fixture
def release_log(settings: Settings) -> ReleaseLog:
    return ReleaseLog(LogSigner(SoftwareBackend.from_file(settings.effective_kek_file), "test"))


@pytest.fixture
async def tenants(migrated_db: Database) -> tuple[Tenant, Tenant]:
    async with migrated_db.transaction(Scope.for_operator()) as session:
        return await create_tenant(session, "alpha"), await create_tenant(session, "beta")


def bundle(
    tenant: str = "alpha", name: str = "loader", values: dict[str, Any] | None = None
) -> dict[str, Any]:
    return {"v": 1, "tenant": tenant, "name": name, "tee": "sev-snp", "values": values or VALUES}


def spki(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)


def sign(key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey, document: dict[str, Any]) -> bytes:
    message = canonical_bytes(document)
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    return key.sign(message, ec.ECDSA(hashes.SHA256() if key.curve.name == "secp256r1" else hashes.SHA384()))


@pytest.mark.parametrize("curve", ["ed25519", "p256", "p384"])
async def test_signed_bundles_become_versions(
    migrated_db: Database, release_log: ReleaseLog, tenants: tuple[Tenant, Tenant], curve: str
) -> None:
    alpha, _ = tenants
    key: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey = (
        ed25519.Ed25519PrivateKey.generate()
        if curve == "ed25519"
        else ec.generate_private_key(ec.SECP256R1() if curve == "p256" else ec.SECP384R1())
    )
    async with migrated_db.transaction(Scope.for_tenant(alpha.id)) as session:
        await rv.register_signer(
            session, release_log, alpha, name="ci", public_key=spki(key), principal=PRINCIPAL
        )
        first = await rv.publish_bundle(
            session,
            release_log,
            alpha,
            signer_name="ci",
            bundle=bundle(),
            signature=sign(key, bundle()),
            validate=accept_any,
        )
        again = await rv.publish_bundle(
            session,
            release_log,
            alpha,
            signer_name="ci",
            bundle=bundle(),
            signature=sign(key, bundle()),
            validate=accept_any,
        )
        newer = bundle(values={"snp.measurement": ["cd" * 48]})
        second = await rv.publish_bundle(
            session,
            release_log,
            alpha,
            signer_name="ci",
            bundle=newer,
            signature=sign(key, newer),
            validate=accept_any,
        )
        entries = [
            decode_entry(e)
            for e in (await session.execute(select(LogEntry.entry).order_by(LogEntry.idx))).scalars()
        ]
    assert (first.version, again.version, second.version) == (1, 1, 2)
    assert first.source == "ci-signer:ci"
    assert [e["kind"] for e in entries] == [
        "ci-signer-registered",
        "reference-values-added",
        "reference-values-added",
    ]


async def test_forged_replayed_and_revoked_bundles_are_refused(
    migrated_db: Database, release_log: ReleaseLog, tenants: tuple[Tenant, Tenant]
) -> None:
    alpha, beta = tenants
    key, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    async with migrated_db.transaction(Scope.for_tenant(alpha.id)) as session:
        await rv.register_signer(
            session, release_log, alpha, name="ci", public_key=spki(key), principal=PRINCIPAL
        )
    async with migrated_db.transaction(Scope.for_tenant(beta.id)) as session:
        await rv.register_signer(
            session, release_log, beta, name="ci", public_key=spki(key), principal=PRINCIPAL
        )

    async def publish(tenant: Tenant, document: dict[str, Any], signature: bytes) -> None:
        async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
            await rv.publish_bundle(
                session,
                release_log,
                tenant,
                signer_name="ci",
                bundle=document,
                signature=signature,
                validate=accept_any,
            )

    with pytest.raises(Forbidden, match="does not verify"):
        await publish(alpha, bundle(), sign(other, bundle()))
    tampered = bundle(values={"snp.measurement": ["00" * 48]})
    with pytest.raises(Forbidden, match="does not verify"):
        await publish(alpha, tampered, sign(key, bundle()))
    # Signed for alpha, presented to beta (whose signer has the same key): refused.
    with pytest.raises(Forbidden, match="another tenant"):
        await publish(beta, bundle("alpha"), sign(key, bundle("alpha")))
    extra = {**bundle(), "extra": 1}
    with pytest.raises(InvalidRequest, match="exactly the members"):
        await publish(alpha, extra, sign(key, extra))
    async with migrated_db.transaction(Scope.for_tenant(alpha.id)) as session:
        await rv.revoke_signer(session, release_log, alpha, "ci", principal=PRINCIPAL)
    with pytest.raises(Forbidden, match="no active CI signer"):
        await publish(alpha, bundle(), sign(key, bundle()))


async def test_admin_versions_revocation_and_current(
    migrated_db: Database, release_log: ReleaseLog, tenants: tuple[Tenant, Tenant]
) -> None:
    alpha, beta = tenants
    async with migrated_db.transaction(Scope.for_tenant(alpha.id)) as session:
        for value in ("aa", "bb", "cc"):
            await rv.add_reference_values(
                session,
                release_log,
                alpha,
                name="loader",
                tee="sev-snp",
                document={"snp.measurement": [value * 48]},
                source=f"token:{PRINCIPAL}",
                validate=accept_any,
            )
        await rv.revoke_reference_values(session, release_log, alpha, "loader", 3, principal=PRINCIPAL)
        current = await rv.current_versions(session, alpha.id, ["loader", "missing"])
    # The newest version stands even when revoked: the appraisal denies, never falls back to version 2.
    assert [(c.name, c.version, c.revoked_at is not None) for c in current] == [("loader", 3, True)]
    async with migrated_db.transaction(Scope.for_tenant(beta.id)) as session:
        assert await rv.current_versions(session, beta.id, ["loader"]) == []
    for bad_name, tee in (("Bad Name", "sev-snp"), ("ok", "sgx")):
        with pytest.raises(InvalidRequest):
            async with migrated_db.transaction(Scope.for_tenant(alpha.id)) as session:
                await rv.add_reference_values(
                    session,
                    release_log,
                    alpha,
                    name=bad_name,
                    tee=tee,
                    document={},
                    source="x",
                    validate=accept_any,
                )


async def test_signer_keys_and_names(
    migrated_db: Database, release_log: ReleaseLog, tenants: tuple[Tenant, Tenant]
) -> None:
    alpha, _ = tenants
    rsa_like = ec.generate_private_key(ec.SECP521R1())
    async with migrated_db.transaction(Scope.for_tenant(alpha.id)) as session:
        with pytest.raises(InvalidRequest, match="P-256/P-384"):
            await rv.register_signer(
                session, release_log, alpha, name="ci", public_key=spki(rsa_like), principal=PRINCIPAL
            )
        with pytest.raises(InvalidRequest, match="cannot be parsed"):
            await rv.register_signer(
                session, release_log, alpha, name="ci", public_key=b"garbage", principal=PRINCIPAL
            )
        key = ed25519.Ed25519PrivateKey.generate()
        await rv.register_signer(
            session, release_log, alpha, name="ci", public_key=spki(key), principal=PRINCIPAL
        )
        with pytest.raises(Conflict):
            await rv.register_signer(
                session, release_log, alpha, name="ci", public_key=spki(key), principal=PRINCIPAL
            )


async def test_a_release_reads_its_own_tenants_newest_sets(
    migrated_db: Database, release_log: ReleaseLog, tenants: tuple[Tenant, Tenant]
) -> None:
    """``reference_sets`` (the release path's read, one statement on either store): the newest version of
    each named set of this tenant only, even where another tenant has a set of the same name, tee and
    version (SQLite has no row-level security: its statement must name the tenant in both halves)."""
    from keyserver.appraisal import reference_sets, validate_reference_values

    alpha, beta = tenants

    def values(pcr7: str) -> dict[str, Any]:
        return {"version": 1, "expected": {"tpm.pcrs.sha256.7": [pcr7 * 32]}}

    for tenant, documents in ((alpha, ["aa"]), (beta, ["b1", "b2"])):
        for document in documents:
            async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
                await rv.add_reference_values(
                    session,
                    release_log,
                    tenant,
                    name="base",
                    tee="tpm",
                    document=values(document),
                    source="test",
                    validate=validate_reference_values,
                )
    for tenant, version, pcr7 in ((alpha, 1, "aa"), (beta, 2, "b2")):
        async with migrated_db.transaction(Scope.for_tenant(tenant.id)) as session:
            (found,) = await reference_sets(session, tenant.id, ("base", "absent"))
        assert (found.name, found.tee, found.version, found.revoked) == ("base", "tpm", version, False)
        assert pcr7 * 32 in repr(found.values)
