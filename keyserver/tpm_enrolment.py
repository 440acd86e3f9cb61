"""TPM attestation-key enrolment, per tenant (the service side of keyserver.evidence.tpm).

An AK is trusted only after one of:

- **credential activation** (like Keylime's registrar): the EK is trusted — its certificate chains to one
  of the tenant's ``ek-ca`` anchors, or the tenant admin pinned its public key — and the TPM proves, with
  TPM2_ActivateCredential, that it holds that EK and an AK of exactly this Name. The keyserver makes the
  credential in software (MakeCredential), keeps only a hash of the secret, and accepts it back once,
  within five minutes, if the EK is trusted still (its pin, or an anchor its certificate chained to, may
  have been removed meanwhile);
- **an AK certificate** chaining to one of the tenant's ``ak-ca`` anchors (cloud vTPMs, e.g. GCE).

Every change to what a tenant trusts is a release-log entry, in the same transaction.

Beginning an enrolment takes no token and stores a row, as issuing a challenge does, so it is budgeted and
purged as challenges are: each counts against the tenant's challenge budget (KEYSERVER_CHALLENGE_LIMIT),
and the tenant's enrolments that expired over an hour ago without being activated are deleted when a new
one is begun (at most once a minute per process). An activated enrolment is kept: the tpm-ak-enrolled
entry names it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import uuid
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.cache import BoundedCache
from keyserver.challenges import purge_before
from keyserver.db import hot
from keyserver.db.models import Tenant, TpmAk, TpmEnrolment, TpmPinnedEk, TpmTrustAnchor
from keyserver.db.types import utcnow
from keyserver.errors import Conflict, EvidenceError, InvalidRequest, NotFound
from keyserver.evidence.tpm.credential import make_credential
from keyserver.evidence.tpm.ek import load_ca_certificates, verify_ak_certificate, verify_ek_certificate
from keyserver.evidence.tpm.quote import AkPublic, PublicKey
from keyserver.evidence.tpm.structures import TpmtPublic, parse_tpm2b_public
from keyserver.releaselog import records
from keyserver.releaselog.store import ReleaseLog

ENROLMENT_LIFETIME = timedelta(minutes=5)
# When this process last purged each tenant's expired enrolments (keyserver.challenges.purge_before).
_last_purge: BoundedCache[uuid.UUID, datetime] = BoundedCache(65536)
CREDENTIAL_BYTES = 32
ANCHOR_KINDS = ("ek-ca", "ak-ca")
MAX_BLOB_BYTES = 16 * 1024


@dataclass(frozen=True)
class Challenge:
    """What the enrolling TPM needs for TPM2_ActivateCredential (TPM wire structures, with sizes)."""

    enrolment: TpmEnrolment
    credential_blob: bytes  # TPM2B_ID_OBJECT
    encrypted_secret: bytes  # TPM2B_ENCRYPTED_SECRET


def decode_b64(value: str, what: str) -> bytes:
    try:
        data = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"{what} is not valid base64") from None
    if not data or len(data) > MAX_BLOB_BYTES:
        raise InvalidRequest(f"{what} must be 1 to {MAX_BLOB_BYTES} bytes")
    return data


def key_fingerprint(key: PublicKey) -> str:
    """SHA-256 of the SubjectPublicKeyInfo DER, hex: how EKs are pinned and named."""
    return hashlib.sha256(key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)).hexdigest()


def _principal(token_id: uuid.UUID | None) -> str | None:
    return None if token_id is None else f"token:{token_id}"


# --- what the tenant trusts (tenant admin) ----------------------------------------------------------


async def add_anchor(
    session: AsyncSession,
    log: ReleaseLog,
    tenant: Tenant,
    *,
    kind: str,
    name: str,
    certificate: bytes,
    principal: uuid.UUID,
) -> TpmTrustAnchor:
    if kind not in ANCHOR_KINDS:
        raise InvalidRequest(f"an anchor's kind is one of {', '.join(ANCHOR_KINDS)}")
    try:
        certs = load_ca_certificates(certificate)
    except EvidenceError as exc:
        raise InvalidRequest(f"the anchor certificate cannot be parsed: {exc.message}") from None
    if len(certs) != 1:
        raise InvalidRequest("give one certificate per anchor (add a bundle's certificates one by one)")
    der = certs[0].public_bytes(Encoding.DER)
    fingerprint = hashlib.sha256(der).hexdigest()
    anchor = TpmTrustAnchor(
        tenant_id=tenant.id,
        id=uuid.uuid4(),
        kind=kind,
        name=name,
        certificate=der,
        fingerprint=fingerprint,
        created_at=utcnow(),
    )
    # The unique index on (tenant, kind, fingerprint) decides, so that two adds of one certificate at
    # once cannot both store it (the second waits for the first's commit, then is this conflict).
    try:
        async with session.begin_nested():  # add inside: pending rows flush BEFORE a SAVEPOINT
            session.add(anchor)
            await session.flush()
    except IntegrityError:
        raise Conflict(f"this certificate is already a {kind} anchor of the tenant") from None
    await log.append(
        session,
        tenant,
        [
            records.record(
                records.TPM_TRUST_ANCHOR_ADDED,
                principal=_principal(principal),
                anchor={
                    "id": str(anchor.id),
                    "kind": kind,
                    "name": name,
                    "sha256": fingerprint,
                    "subject": _subject(certs[0]),
                },
            )
        ],
    )
    return anchor


async def list_anchors(session: AsyncSession, tenant_id: uuid.UUID) -> list[TpmTrustAnchor]:
    query = (
        select(TpmTrustAnchor)
        .where(TpmTrustAnchor.tenant_id == tenant_id)
        .order_by(TpmTrustAnchor.created_at)
    )
    return list((await session.execute(query)).scalars())


async def remove_anchor(
    session: AsyncSession, log: ReleaseLog, tenant: Tenant, anchor_id: uuid.UUID, *, principal: uuid.UUID
) -> None:
    anchor = await session.get(TpmTrustAnchor, (tenant.id, anchor_id))
    if anchor is None or anchor.tenant_id != tenant.id:
        raise NotFound(f"no trust anchor {anchor_id} in this tenant")
    await session.delete(anchor)
    await log.append(
        session,
        tenant,
        [
            records.record(
                records.TPM_TRUST_ANCHOR_REMOVED,
                principal=_principal(principal),
                anchor={
                    "id": str(anchor.id),
                    "kind": anchor.kind,
                    "name": anchor.name,
                    "sha256": anchor.fingerprint,
                },
            )
        ],
    )


def _subject(certificate: x509.Certificate) -> str:
    # Some TPM CAs (Google's) carry names longer than X.520 allows; cryptography warns and renders them.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return certificate.subject.rfc4514_string()


def load_ek_public(data: bytes) -> TpmtPublic | PublicKey:
    """An EK as a TPM2B_PUBLIC, or a PEM/DER SubjectPublicKeyInfo."""
    if data.lstrip().startswith(b"-----") or data[:1] == b"\x30":
        return AkPublic.from_public_key(data).key
    return parse_tpm2b_public(data)


async def pin_ek(
    session: AsyncSession,
    log: ReleaseLog,
    tenant: Tenant,
    *,
    ek_public: bytes,
    description: str,
    principal: uuid.UUID,
) -> TpmPinnedEk:
    loaded = load_ek_public(ek_public)
    key = loaded.public_key() if isinstance(loaded, TpmtPublic) else loaded
    pinned = TpmPinnedEk(
        tenant_id=tenant.id, fingerprint=key_fingerprint(key), description=description, created_at=utcnow()
    )
    try:
        async with session.begin_nested():  # add inside: pending rows flush BEFORE a SAVEPOINT
            session.add(pinned)
            await session.flush()
    except IntegrityError:
        raise Conflict("this EK is already pinned") from None
    await log.append(
        session,
        tenant,
        [
            records.record(
                records.TPM_EK_PINNED,
                principal=_principal(principal),
                ek_sha256=pinned.fingerprint,
                description=description,
            )
        ],
    )
    return pinned


async def list_pinned_eks(session: AsyncSession, tenant_id: uuid.UUID) -> list[TpmPinnedEk]:
    query = (
        select(TpmPinnedEk)
        .where(TpmPinnedEk.tenant_id == tenant_id)
        .order_by(TpmPinnedEk.created_at, TpmPinnedEk.fingerprint)
    )
    return list((await session.execute(query)).scalars())


async def unpin_ek(
    session: AsyncSession, log: ReleaseLog, tenant: Tenant, fingerprint: str, *, principal: uuid.UUID
) -> None:
    """Stop vouching for the EK of this SHA-256 (SubjectPublicKeyInfo, hex). It enrols no AK from now on,
    and an enrolment it began is refused at activation; the AKs it enrolled stay until revoked, as those
    of a removed anchor do (docs/tpm.md). Logged."""
    # One statement, so that two removals at once are one removal and one 404 (the second's DELETE waits
    # for the first's commit and then matches nothing), never a 500 from a row that vanished between a
    # read and its delete.
    removed = await session.execute(
        delete(TpmPinnedEk)
        .where(TpmPinnedEk.tenant_id == tenant.id, TpmPinnedEk.fingerprint == fingerprint)
        .returning(TpmPinnedEk.description)
        .execution_options(synchronize_session=False)
    )
    description = removed.scalar_one_or_none()
    if description is None:
        raise NotFound(f"no pinned EK sha256:{fingerprint} in this tenant")
    await log.append(
        session,
        tenant,
        [
            records.record(
                records.TPM_EK_UNPINNED,
                principal=_principal(principal),
                ek_sha256=fingerprint,
                description=description,
            )
        ],
    )


# --- enrolment (the TPM's side; authenticated by the TPM itself) -------------------------------------


async def begin_enrolment(
    session: AsyncSession,
    tenant: Tenant,
    *,
    ek_public: bytes,
    ak_public: bytes,
    ek_certificate: bytes | None,
    ek_intermediates: Sequence[bytes] = (),
    now: datetime | None = None,
) -> Challenge:
    now = now or utcnow()
    ek = parse_tpm2b_public(ek_public)
    ak = AkPublic.from_tpm2b_public(ak_public)
    fingerprint = key_fingerprint(ek.public_key())
    ek_anchors: str | None = None
    if ek_certificate is not None:
        anchors = await _anchors(session, tenant.id, "ek-ca")
        if not anchors:
            raise EvidenceError("ek-untrusted", "this tenant trusts no EK CA yet; its admin must add one")
        verified = verify_ek_certificate(
            ek_certificate, roots=anchors, intermediates=list(ek_intermediates), now=now, ek_public=ek
        )
        ek_anchors = " ".join(_anchors_in_chain(verified.chain[1:], anchors))
        trust = "certificate"
    else:
        if await session.get(TpmPinnedEk, (tenant.id, fingerprint)) is None:
            raise EvidenceError(
                "ek-untrusted",
                "this EK has no certificate and is not pinned by the tenant: send its EK certificate, or ask"
                f" the tenant admin to pin EK sha256:{fingerprint}",
            )
        trust = "pinned"
    assert ak.public is not None
    secret = secrets.token_bytes(CREDENTIAL_BYTES)
    made = make_credential(ek, secret, ak.public.name())
    enrolment = TpmEnrolment(
        tenant_id=tenant.id,
        id=uuid.uuid4(),
        ak_public=ak_public,
        ak_name=ak.public.name().hex(),
        ek_fingerprint=fingerprint,
        ek_trust=trust,
        ek_anchors=ek_anchors,
        secret_hash=hashlib.sha256(secret).digest(),
        created_at=now,
        expires_at=now + ENROLMENT_LIFETIME,
    )
    # Counted against the challenge budget by the caller, before any of this (keyserver/api/tpm.py).
    purge = purge_before(tenant.id, now, last_purge=_last_purge)
    if purge is not None:
        await session.execute(
            delete(TpmEnrolment).where(
                TpmEnrolment.tenant_id == tenant.id,
                TpmEnrolment.expires_at < purge,
                # An activated enrolment stays: the tpm-ak-enrolled entry names it (``enrolment``).
                TpmEnrolment.completed_at.is_(None),
            )
        )
    session.add(enrolment)
    await session.flush()
    return Challenge(enrolment, made.credential_blob, made.encrypted_secret)


async def activate(
    session: AsyncSession,
    log: ReleaseLog,
    tenant: Tenant,
    enrolment_id: uuid.UUID,
    secret: bytes,
    now: datetime | None = None,
) -> TpmAk:
    now = now or utcnow()
    query = (
        select(TpmEnrolment)
        .where(TpmEnrolment.tenant_id == tenant.id, TpmEnrolment.id == enrolment_id)
        .with_for_update()
    )
    enrolment = (await session.execute(query)).scalar_one_or_none()
    if enrolment is None:
        raise NotFound(f"no enrolment {enrolment_id} in this tenant")
    if enrolment.completed_at is not None:
        raise Conflict("this enrolment was already completed; start a new one")
    if enrolment.expires_at <= now:
        raise EvidenceError("enrolment-expired", "the credential challenge expired; start a new enrolment")
    if not hmac.compare_digest(hashlib.sha256(secret).digest(), enrolment.secret_hash):
        raise EvidenceError(
            "credential-mismatch",
            "the returned secret is not the credential: the TPM does not hold both this EK and this AK",
        )
    # After the secret: only the TPM the credential was made for learns whether its EK is trusted still.
    await _check_ek_still_trusted(session, tenant.id, enrolment)
    enrolment.completed_at = now
    return await _trust_ak(
        session,
        log,
        tenant,
        ak_public=enrolment.ak_public,
        ak_name=enrolment.ak_name,
        method="credential-activation",
        ek_fingerprint=enrolment.ek_fingerprint,
        now=now,
        detail={"ek_trust": enrolment.ek_trust, "enrolment": str(enrolment.id)},
    )


def _anchors_in_chain(chain: Sequence[x509.Certificate], anchors: Sequence[x509.Certificate]) -> list[str]:
    """The fingerprints (as ``add_anchor`` stores them) of the anchors among the EK certificate's verified
    issuers: what activation requires to be anchors still."""
    configured = {_der_sha256(anchor) for anchor in anchors}
    found = [fingerprint for fingerprint in map(_der_sha256, chain) if fingerprint in configured]
    if not found:
        # A verified chain ends in the store it was verified against; refuse rather than record nothing.
        raise EvidenceError("ek-untrusted", "the EK certificate chains to none of this tenant's EK CAs")
    return found


def _der_sha256(certificate: x509.Certificate) -> str:
    return hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()


async def _check_ek_still_trusted(
    session: AsyncSession, tenant_id: uuid.UUID, enrolment: TpmEnrolment
) -> None:
    """Refuse the activation unless the EK that began the enrolment is trusted now: its pin is there, or
    one of the anchors its certificate chained to is. The tenant admin may have removed either since.

    Read FOR SHARE (PostgreSQL; SQLite's write lock serialises anyway): a removal waits for this
    activation to commit, or this activation waits for the removal and then finds nothing, so the AK's
    enrolment and the removal are logged in the order they took effect."""
    if enrolment.ek_trust == "pinned":
        pin = (
            select(TpmPinnedEk.fingerprint)
            .where(TpmPinnedEk.tenant_id == tenant_id, TpmPinnedEk.fingerprint == enrolment.ek_fingerprint)
            .with_for_update(read=True)
        )
        if (await session.execute(pin)).first() is None:
            raise EvidenceError(
                "ek-untrusted",
                f"EK sha256:{enrolment.ek_fingerprint} is no longer pinned by this tenant (its pin was"
                " removed after the enrolment began); the AK was not enrolled",
            )
        return
    anchors = (enrolment.ek_anchors or "").split() if enrolment.ek_trust == "certificate" else []
    if anchors:
        anchor = (
            select(TpmTrustAnchor.id)
            .where(
                TpmTrustAnchor.tenant_id == tenant_id,
                TpmTrustAnchor.kind == "ek-ca",
                TpmTrustAnchor.fingerprint.in_(anchors),
            )
            .with_for_update(read=True)
        )
        if (await session.execute(anchor)).first() is not None:
            return
    raise EvidenceError(
        "ek-untrusted",
        "the EK certificate no longer chains to an EK CA of this tenant (the anchor it chained to was removed"
        " after the enrolment began); the AK was not enrolled",
    )


async def enrol_certified(
    session: AsyncSession,
    log: ReleaseLog,
    tenant: Tenant,
    *,
    ak_public: bytes,
    ak_certificate: bytes,
    intermediates: Sequence[bytes] = (),
    now: datetime | None = None,
) -> TpmAk:
    now = now or utcnow()
    ak = AkPublic.from_tpm2b_public(ak_public)
    anchors = await _anchors(session, tenant.id, "ak-ca")
    if not anchors:
        raise EvidenceError("ak-untrusted", "this tenant trusts no AK CA; its admin must add one")
    certified = verify_ak_certificate(
        ak_certificate, roots=anchors, intermediates=list(intermediates), now=now, ak_public=ak.key
    )
    assert ak.public is not None
    return await _trust_ak(
        session,
        log,
        tenant,
        ak_public=ak_public,
        ak_name=ak.public.name().hex(),
        method="ak-certificate",
        ek_fingerprint=None,
        now=now,
        detail={
            "ak_certificate_sha256": hashlib.sha256(
                certified.certificate.public_bytes(Encoding.DER)
            ).hexdigest()
        },
    )


async def _trust_ak(
    session: AsyncSession,
    log: ReleaseLog,
    tenant: Tenant,
    *,
    ak_public: bytes,
    ak_name: str,
    method: str,
    ek_fingerprint: str | None,
    now: datetime,
    detail: dict[str, str],
) -> TpmAk:
    existing = await session.get(TpmAk, (tenant.id, ak_name))
    if existing is None:
        ak = TpmAk(
            tenant_id=tenant.id,
            ak_name=ak_name,
            ak_public=ak_public,
            method=method,
            ek_fingerprint=ek_fingerprint,
            enrolled_at=now,
        )
        try:
            async with session.begin_nested():  # add inside: pending rows flush BEFORE a SAVEPOINT
                session.add(ak)
                await session.flush()
        except IntegrityError:
            # The same AK enrolled by another request at the same time, committed since this one read:
            # the enrolment is idempotent, so this one answers with that AK as if it had come second.
            existing = await session.get(TpmAk, (tenant.id, ak_name), populate_existing=True)
            if existing is None:
                raise
    if existing is not None:
        if existing.revoked_at is not None:
            raise Conflict("this AK was revoked by the tenant; create a new AK")
        return existing
    await log.append(
        session,
        tenant,
        [
            records.record(
                records.TPM_AK_ENROLLED,
                principal=None,
                now=now,
                ak_name=ak_name,
                method=method,
                ek_sha256=ek_fingerprint,
                **detail,
            )
        ],
    )
    return ak


# --- the enrolled AKs (tenant admin; the release flow) ----------------------------------------------


async def list_aks(session: AsyncSession, tenant_id: uuid.UUID) -> list[TpmAk]:
    query = select(TpmAk).where(TpmAk.tenant_id == tenant_id).order_by(TpmAk.enrolled_at)
    return list((await session.execute(query)).scalars())


async def revoke_ak(
    session: AsyncSession, log: ReleaseLog, tenant: Tenant, ak_name: str, *, principal: uuid.UUID
) -> TpmAk:
    ak = await session.get(TpmAk, (tenant.id, ak_name))
    if ak is None or ak.tenant_id != tenant.id:
        raise NotFound(f"no AK {ak_name} in this tenant")
    if ak.revoked_at is None:
        ak.revoked_at = utcnow()
        await log.append(
            session,
            tenant,
            [
                records.record(
                    records.TPM_AK_REVOKED,
                    principal=_principal(principal),
                    ak_name=ak_name,
                )
            ],
        )
    return ak


@dataclass(frozen=True)
class EnrolledAk:
    """What the tenant's AK table holds for ``name`` in this transaction: the enrolled, unrevoked AK's
    TPM2B_PUBLIC, or None. Read with a release's first statement (keyserver/release_reads.py) so that
    the quote's verification need not read it again."""

    name: str
    public: bytes | None


async def trusted_ak(
    session: AsyncSession, tenant_id: uuid.UUID, ak_name: str, known: EnrolledAk | None = None
) -> AkPublic:
    """The enrolled, unrevoked AK of this Name, ready for quote verification; refused otherwise.
    ``known``: that AK as already read in this transaction (used only if it names the same AK)."""
    ak_public: bytes | None
    if known is not None and known.name == ak_name:
        ak_public = known.public
    else:
        ak_public = await _enrolled_ak_public(session, tenant_id, ak_name)
    if ak_public is None:
        raise EvidenceError(
            "ak-not-enrolled", "the quote's AK is not enrolled with this tenant (or was revoked)"
        )
    return _parsed_ak(ak_public)


async def _enrolled_ak_public(session: AsyncSession, tenant_id: uuid.UUID, ak_name: str) -> bytes | None:
    rows = await hot.fetch(session, _PG_TRUSTED_AK, tenant_id, ak_name)
    if rows is not None:  # PostgreSQL (keyserver/db/hot.py)
        return rows[0]["ak_public"] if rows else None
    # SQLite: the same statement, one hand-off to its thread
    found = await hot.fetch_sqlite(session, SQLITE_TRUSTED_AK, hot.sqlite_uuid(tenant_id), ak_name)
    return found[0][0] if found else None


# For any two parameter numbers: a release's first statement reads it too (keyserver/release_reads.py).
PG_TRUSTED_AK = (
    "SELECT ak_public FROM tpm_aks WHERE tenant_id = {tenant} AND ak_name = {name} AND revoked_at IS NULL"
)
_PG_TRUSTED_AK = PG_TRUSTED_AK.format(tenant="$1", name="$2")
SQLITE_TRUSTED_AK = "SELECT ak_public FROM tpm_aks WHERE tenant_id = ? AND ak_name = ? AND revoked_at IS NULL"


# Enrolled AKs parsed from their exact TPM2B_PUBLIC bytes (the key is those bytes: a hit is the same AK).
# Whether the AK is still enrolled is read from the database on every use, never cached.
_parsed_aks: BoundedCache[bytes, AkPublic] = BoundedCache(4096)


def _parsed_ak(tpm2b_public: bytes) -> AkPublic:
    return _parsed_aks.get_or_compute(bytes(tpm2b_public), lambda: AkPublic.from_tpm2b_public(tpm2b_public))


async def _anchors(session: AsyncSession, tenant_id: uuid.UUID, kind: str) -> list[x509.Certificate]:
    query = select(TpmTrustAnchor.certificate).where(
        TpmTrustAnchor.tenant_id == tenant_id, TpmTrustAnchor.kind == kind
    )
    return [x509.load_der_x509_certificate(der) for der in (await session.execute(query)).scalars()]
