"""Reference values: named, versioned sets of expected measurements, per tenant and tee.

They arrive by hand (tenant admin) or as **signed bundles** from a registered CI signer: the build
pipeline signs the canonical bytes (audit.entry) of a bundle naming the tenant, the set and its values,
with Ed25519 or ECDSA (P-256/SHA-256, P-384/SHA-384; DER signature). Every version is immutable; a
version can be revoked. Every change — signer registered or revoked, version added or revoked — is a
release-log entry in the same transaction.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any, TypeGuard

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
    load_pem_public_key,
)
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from audit.entry import EntryError, canonical_bytes
from keyserver.db.models import CiSigner, ReferenceValueSet, Tenant
from keyserver.db.types import utcnow
from keyserver.errors import Conflict, Forbidden, InvalidRequest, NotFound
from keyserver.evidence.claims import TEES
from keyserver.releaselog import records
from keyserver.releaselog.store import ReleaseLog

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}\Z")
BUNDLE_VERSION = 1

REFERENCE_VALUES_ADDED = "reference-values-added"
REFERENCE_VALUES_REVOKED = "reference-values-revoked"
CI_SIGNER_REGISTERED = "ci-signer-registered"
CI_SIGNER_REVOKED = "ci-signer-revoked"

# Checks a reference-value document's content (policy/document.py); raises InvalidRequest when invalid.
DocumentValidator = Callable[[str, dict[str, Any]], None]

SignerKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


def check_name(name: str, what: str) -> None:
    if not NAME_RE.match(name):
        raise InvalidRequest(
            f"{what} {name[:64]!r} is not valid: 1-100 of a-z 0-9 . _ - starting with a letter or digit"
        )


# --- CI signers ----------------------------------------------------------------------------------------


def load_signer_key(data: bytes) -> SignerKey:
    try:
        key = load_pem_public_key(data) if data.lstrip().startswith(b"-----") else load_der_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise InvalidRequest(f"the signer's public key cannot be parsed: {exc}") from None
    if isinstance(key, ed25519.Ed25519PublicKey):
        return key
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1 | ec.SECP384R1):
        return key
    raise InvalidRequest("a CI signer key is Ed25519 or ECDSA P-256/P-384")


def verify_bundle_signature(key: SignerKey, message: bytes, signature: bytes) -> None:
    """Ed25519, or ECDSA with SHA-256 (P-256) / SHA-384 (P-384) and a DER signature."""
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            digest = hashes.SHA256() if isinstance(key.curve, ec.SECP256R1) else hashes.SHA384()
            key.verify(signature, message, ec.ECDSA(digest))
    except (InvalidSignature, ValueError):
        raise Forbidden("the bundle's signature does not verify with the registered signer's key") from None


async def register_signer(
    session: AsyncSession,
    log: ReleaseLog,
    tenant: Tenant,
    *,
    name: str,
    public_key: bytes,
    principal: uuid.UUID,
) -> CiSigner:
    check_name(name, "signer name")
    key = load_signer_key(public_key)
    der = key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    signer = CiSigner(
        tenant_id=tenant.id,
        name=name,
        public_key=der,
        fingerprint=hashlib.sha256(der).hexdigest(),
        created_at=utcnow(),
    )
    try:
        async with session.begin_nested():  # add inside: pending rows flush BEFORE a SAVEPOINT
            session.add(signer)
            await session.flush()
    except IntegrityError:
        raise Conflict(f"a CI signer named {name!r} already exists") from None
    await log.append(
        session,
        tenant,
        [
            records.record(
                CI_SIGNER_REGISTERED, principal=f"token:{principal}", signer=name, sha256=signer.fingerprint
            )
        ],
    )
    return signer


async def revoke_signer(
    session: AsyncSession, log: ReleaseLog, tenant: Tenant, name: str, *, principal: uuid.UUID
) -> CiSigner:
    signer = await session.get(CiSigner, (tenant.id, name))
    if signer is None or signer.tenant_id != tenant.id:
        raise NotFound(f"no CI signer {name!r} in this tenant")
    if signer.revoked_at is None:
        signer.revoked_at = utcnow()
        await log.append(
            session, tenant, [records.record(CI_SIGNER_REVOKED, principal=f"token:{principal}", signer=name)]
        )
    return signer


async def list_signers(session: AsyncSession, tenant_id: uuid.UUID) -> list[CiSigner]:
    query = select(CiSigner).where(CiSigner.tenant_id == tenant_id).order_by(CiSigner.name)
    return list((await session.execute(query)).scalars())


# --- reference-value sets --------------------------------------------------------------------------------


async def add_reference_values(
    session: AsyncSession,
    log: ReleaseLog,
    tenant: Tenant,
    *,
    name: str,
    tee: str,
    document: dict[str, Any],
    source: str,
    validate: DocumentValidator,
    now: datetime | None = None,
) -> ReferenceValueSet:
    """Store ``document`` as the next version of set ``name``.

    Publishing exactly the content of the newest version again returns that version (a CI pipeline may
    publish a bundle twice), unless it was revoked. Any other content — including that of an older or a
    revoked version — becomes a new version, logged: going back is an explicit, visible act."""
    check_name(name, "reference-value set name")
    if tee not in TEES:
        raise InvalidRequest(f"tee must be one of {', '.join(TEES)}")
    validate(tee, document)
    try:
        data = canonical_bytes(document)
    except EntryError as exc:
        raise InvalidRequest(f"the reference values cannot be stored: {exc}") from None
    digest = hashlib.sha256(data).hexdigest()
    newest = await _newest(session, tenant, name)
    if _is_republication(newest, digest, tee):
        return newest
    latest = None if newest is None else newest.version
    row = ReferenceValueSet(
        tenant_id=tenant.id,
        name=name,
        version=(latest or 0) + 1,
        tee=tee,
        document=data,
        sha256=digest,
        source=source,
        created_at=now or utcnow(),
    )
    try:
        async with session.begin_nested():  # add inside: pending rows flush BEFORE a SAVEPOINT
            session.add(row)
            await session.flush()
    except IntegrityError:
        # Another request added this version first (this one waited for its commit). The same content
        # published twice at once is the republication above, not a conflict.
        newest = await _newest(session, tenant, name)
        if _is_republication(newest, digest, tee):
            return newest
        raise Conflict("another version of this set was added at the same time; retry") from None
    await log.append(
        session,
        tenant,
        [
            records.record(
                REFERENCE_VALUES_ADDED,
                principal=source,
                reference_values={"name": name, "version": row.version, "tee": tee, "sha256": digest},
            )
        ],
    )
    return row


async def _newest(session: AsyncSession, tenant: Tenant, name: str) -> ReferenceValueSet | None:
    query = (
        select(ReferenceValueSet)
        .where(ReferenceValueSet.tenant_id == tenant.id, ReferenceValueSet.name == name)
        .order_by(ReferenceValueSet.version.desc())
        .limit(1)
    )
    return (await session.execute(query)).scalar_one_or_none()


def _is_republication(
    newest: ReferenceValueSet | None, digest: str, tee: str
) -> TypeGuard[ReferenceValueSet]:
    """``newest`` holds exactly this content, live: publishing it again returns it."""
    return newest is not None and newest.sha256 == digest and newest.tee == tee and newest.revoked_at is None


async def publish_bundle(
    session: AsyncSession,
    log: ReleaseLog,
    tenant: Tenant,
    *,
    signer_name: str,
    bundle: dict[str, Any],
    signature: bytes,
    validate: DocumentValidator,
) -> ReferenceValueSet:
    """A CI signer's bundle: ``{"v": 1, "tenant", "name", "tee", "values": {…}}``, signed over its
    canonical bytes. The tenant inside the bundle must be this tenant: a bundle cannot be replayed
    into another tenant."""
    signer = await session.get(CiSigner, (tenant.id, signer_name))
    if signer is None or signer.tenant_id != tenant.id or signer.revoked_at is not None:
        raise Forbidden(f"no active CI signer {signer_name!r} in this tenant")
    try:
        message = canonical_bytes(bundle)
    except EntryError as exc:
        raise InvalidRequest(f"the bundle is not a canonical document: {exc}") from None
    verify_bundle_signature(load_signer_key(signer.public_key), message, signature)
    expected = {"v", "tenant", "name", "tee", "values"}
    if set(bundle) != expected:
        raise InvalidRequest(f"a bundle has exactly the members {', '.join(sorted(expected))}")
    if bundle["v"] != BUNDLE_VERSION:
        raise InvalidRequest(f"bundle version {bundle['v']!r} is not supported (use {BUNDLE_VERSION})")
    if bundle["tenant"] != tenant.name:
        raise Forbidden("this bundle was signed for another tenant")
    if (
        not isinstance(bundle["values"], dict)
        or not isinstance(bundle["name"], str)
        or not isinstance(bundle["tee"], str)
    ):
        raise InvalidRequest("a bundle's name and tee are strings and its values an object")
    return await add_reference_values(
        session,
        log,
        tenant,
        name=bundle["name"],
        tee=bundle["tee"],
        document=bundle["values"],
        source=f"ci-signer:{signer_name}",
        validate=validate,
    )


async def revoke_reference_values(
    session: AsyncSession, log: ReleaseLog, tenant: Tenant, name: str, version: int, *, principal: uuid.UUID
) -> ReferenceValueSet:
    row = await session.get(ReferenceValueSet, (tenant.id, name, version))
    if row is None or row.tenant_id != tenant.id:
        raise NotFound(f"no reference values {name!r} version {version} in this tenant")
    if row.revoked_at is None:
        row.revoked_at = utcnow()
        await log.append(
            session,
            tenant,
            [
                records.record(
                    REFERENCE_VALUES_REVOKED,
                    principal=f"token:{principal}",
                    reference_values={"name": name, "version": version, "sha256": row.sha256},
                )
            ],
        )
    return row


async def list_reference_values(session: AsyncSession, tenant_id: uuid.UUID) -> list[ReferenceValueSet]:
    query = (
        select(ReferenceValueSet)
        .where(ReferenceValueSet.tenant_id == tenant_id)
        .order_by(ReferenceValueSet.name, ReferenceValueSet.version)
    )
    return list((await session.execute(query)).scalars())


async def current_versions(
    session: AsyncSession, tenant_id: uuid.UUID, names: Sequence[str]
) -> list[ReferenceValueSet]:
    """The newest version of each named set, revoked or not (a revoked newest version denies: the
    appraisal never falls back to the version it superseded)."""
    found = []
    for name in names:
        query = (
            select(ReferenceValueSet)
            .where(ReferenceValueSet.tenant_id == tenant_id, ReferenceValueSet.name == name)
            .order_by(ReferenceValueSet.version.desc())
            .limit(1)
        )
        row = (await session.execute(query)).scalar_one_or_none()
        if row is not None:
            found.append(row)
    return found
