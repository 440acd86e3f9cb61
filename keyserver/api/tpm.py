"""TPM attestation keys over HTTP: the tenant admin's trust settings, and the TPM's own enrolment.

The enrolment routes take no token: the TPM authenticates itself (EK certificate or pinned EK, then
credential activation). They do nothing unless the tenant's admin has configured what to trust.
"""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from keyserver import tpm_enrolment as tpm
from keyserver.api.auth import SECURITY, tenant_session
from keyserver.api.problems import LOADER, TOKEN_READ, TOKEN_WRITE
from keyserver.db.models import Tenant, TpmAk, TpmPinnedEk, TpmTrustAnchor
from keyserver.db.session import Database, Scope
from keyserver.db.types import utcnow
from keyserver.evidence.tpm.ek import MAX_INTERMEDIATES
from keyserver.release import ReleaseService
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import Principal, Role, lookup_tenant

B64 = Annotated[str, msgspec.Meta(min_length=1, max_length=24_000)]


class AnchorCreate(msgspec.Struct, forbid_unknown_fields=True):
    kind: Literal["ek-ca", "ak-ca"]
    name: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    certificate: Annotated[str, msgspec.Meta(min_length=1, max_length=24_000)]  # PEM, or base64 DER


class AnchorOut(msgspec.Struct):
    id: str
    kind: str
    name: str
    sha256: str
    created_at: datetime

    @classmethod
    def of(cls, anchor: TpmTrustAnchor) -> AnchorOut:
        return cls(str(anchor.id), anchor.kind, anchor.name, anchor.fingerprint, anchor.created_at)


class PinnedEkCreate(msgspec.Struct, forbid_unknown_fields=True):
    ek_public: B64  # base64 TPM2B_PUBLIC, or base64 SubjectPublicKeyInfo DER
    description: Annotated[str, msgspec.Meta(max_length=200)] = ""


class PinnedEkOut(msgspec.Struct):
    sha256: str
    description: str
    created_at: datetime

    @classmethod
    def of(cls, pinned: TpmPinnedEk) -> PinnedEkOut:
        return cls(pinned.fingerprint, pinned.description, pinned.created_at)


class EnrolmentCreate(msgspec.Struct, forbid_unknown_fields=True):
    ek_public: B64  # base64 TPM2B_PUBLIC
    ak_public: B64  # base64 TPM2B_PUBLIC
    ek_certificate: B64 | None = None  # base64 DER
    # Bounded before anything is decoded; the verifier holds the same bound (ek.MAX_INTERMEDIATES).
    ek_intermediates: Annotated[list[B64], msgspec.Meta(max_length=MAX_INTERMEDIATES)] = msgspec.field(
        default_factory=list
    )


class EnrolmentChallenge(msgspec.Struct):
    enrolment_id: str
    ak_name: str
    credential_blob: str  # base64 TPM2B_ID_OBJECT
    encrypted_secret: str  # base64 TPM2B_ENCRYPTED_SECRET
    expires_at: datetime


class Activation(msgspec.Struct, forbid_unknown_fields=True):
    secret: B64  # base64 of what TPM2_ActivateCredential returned


class CertifiedAkCreate(msgspec.Struct, forbid_unknown_fields=True):
    ak_public: B64
    ak_certificate: B64  # base64 DER
    intermediates: Annotated[list[B64], msgspec.Meta(max_length=MAX_INTERMEDIATES)] = msgspec.field(
        default_factory=list
    )


class AkOut(msgspec.Struct):
    ak_name: str
    method: str
    ek_sha256: str | None
    enrolled_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, ak: TpmAk) -> AkOut:
        return cls(ak.ak_name, ak.method, ak.ek_fingerprint, ak.enrolled_at, ak.revoked_at)


def _certificate_bytes(text: str) -> bytes:
    return text.encode() if "-----BEGIN" in text else tpm.decode_b64(text, "certificate")


class TpmAdminController(Controller):
    """What the tenant trusts for TPMs (tenant-admin; anchors, pinned EKs and AKs also readable by
    auditors)."""

    path = "/v1/tenants/{tenant:str}/tpm"
    tags = ("tpm",)
    security = SECURITY

    @post(
        "/anchors",
        summary="Trust a CA for EK certificates (ek-ca) or AK certificates (ak-ca)",
        responses=TOKEN_WRITE,
    )
    async def add_anchor(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        data: JSONBody[AnchorCreate],
    ) -> AnchorOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            anchor = await tpm.add_anchor(
                session,
                release_log,
                target,
                kind=data.kind,
                name=data.name,
                certificate=_certificate_bytes(data.certificate),
                principal=principal.token_id,
            )
        return AnchorOut.of(anchor)

    @get("/anchors", summary="The tenant's TPM trust anchors", responses=TOKEN_READ)
    async def anchors(
        self, principal: NamedDependency[Principal], db: NamedDependency[Database], tenant: FromPath[str]
    ) -> list[AnchorOut]:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN, Role.AUDITOR) as (
            session,
            target,
        ):
            return [AnchorOut.of(a) for a in await tpm.list_anchors(session, target.id)]

    @delete(
        "/anchors/{anchor_id:uuid}", status_code=204, summary="Stop trusting an anchor", responses=TOKEN_WRITE
    )
    async def remove_anchor(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        anchor_id: FromPath[uuid.UUID],
    ) -> None:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            await tpm.remove_anchor(session, release_log, target, anchor_id, principal=principal.token_id)

    @post("/pinned-eks", summary="Vouch for one EK public key directly", responses=TOKEN_WRITE)
    async def pin_ek(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        data: JSONBody[PinnedEkCreate],
    ) -> PinnedEkOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            pinned = await tpm.pin_ek(
                session,
                release_log,
                target,
                ek_public=tpm.decode_b64(data.ek_public, "ek_public"),
                description=data.description,
                principal=principal.token_id,
            )
        return PinnedEkOut.of(pinned)

    @get("/pinned-eks", summary="The EKs the tenant vouches for directly", responses=TOKEN_READ)
    async def pinned_eks(
        self, principal: NamedDependency[Principal], db: NamedDependency[Database], tenant: FromPath[str]
    ) -> list[PinnedEkOut]:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN, Role.AUDITOR) as (
            session,
            target,
        ):
            return [PinnedEkOut.of(p) for p in await tpm.list_pinned_eks(session, target.id)]

    @delete(
        "/pinned-eks/{fingerprint:str}",
        status_code=204,
        summary="Stop vouching for an EK (its SHA-256); AKs it enrolled stay until revoked",
        responses=TOKEN_WRITE,
    )
    async def unpin_ek(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        fingerprint: FromPath[str],
    ) -> None:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            await tpm.unpin_ek(session, release_log, target, fingerprint, principal=principal.token_id)

    @get("/aks", summary="The tenant's enrolled attestation keys", responses=TOKEN_READ)
    async def aks(
        self, principal: NamedDependency[Principal], db: NamedDependency[Database], tenant: FromPath[str]
    ) -> list[AkOut]:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN, Role.AUDITOR) as (
            session,
            target,
        ):
            return [AkOut.of(ak) for ak in await tpm.list_aks(session, target.id)]

    @delete("/aks/{ak_name:str}", status_code=200, summary="Revoke an attestation key", responses=TOKEN_WRITE)
    async def revoke_ak(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        ak_name: FromPath[str],
    ) -> AkOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            return AkOut.of(
                await tpm.revoke_ak(session, release_log, target, ak_name, principal=principal.token_id)
            )


class TpmEnrolmentController(Controller):
    """The TPM's side of enrolment. No token: the TPM proves what it is."""

    path = "/v1/tenants/{tenant:str}/tpm"
    tags = ("tpm",)

    @post(
        "/enrolments",
        summary="Start enrolling an AK: get a credential for TPM2_ActivateCredential",
        responses=LOADER,
    )
    async def begin(
        self,
        release_service: NamedDependency[ReleaseService],
        tenant: FromPath[str],
        data: JSONBody[EnrolmentCreate],
    ) -> EnrolmentChallenge:
        db = release_service.db
        target = await lookup_tenant(db, tenant)
        await _count_against_challenges(release_service, target)
        async with db.transaction(_scope(target.id)) as session:
            challenge = await tpm.begin_enrolment(
                session,
                target,
                ek_public=tpm.decode_b64(data.ek_public, "ek_public"),
                ak_public=tpm.decode_b64(data.ak_public, "ak_public"),
                ek_certificate=tpm.decode_b64(data.ek_certificate, "ek_certificate")
                if data.ek_certificate
                else None,
                ek_intermediates=[tpm.decode_b64(i, "ek_intermediates") for i in data.ek_intermediates],
            )
        return EnrolmentChallenge(
            enrolment_id=str(challenge.enrolment.id),
            ak_name=challenge.enrolment.ak_name,
            credential_blob=base64.b64encode(challenge.credential_blob).decode(),
            encrypted_secret=base64.b64encode(challenge.encrypted_secret).decode(),
            expires_at=challenge.enrolment.expires_at,
        )

    @post(
        "/enrolments/{enrolment_id:uuid}/activate",
        summary="Finish: return the activated credential",
        responses=LOADER,
    )
    async def activate(
        self,
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        enrolment_id: FromPath[uuid.UUID],
        data: JSONBody[Activation],
    ) -> AkOut:
        target = await lookup_tenant(db, tenant)
        async with db.transaction(_scope(target.id)) as session:
            ak = await tpm.activate(
                session, release_log, target, enrolment_id, tpm.decode_b64(data.secret, "secret")
            )
        return AkOut.of(ak)

    @post("/enrolments/certified", summary="Enrol an AK by its certificate (cloud vTPMs)", responses=LOADER)
    async def certified(
        self,
        release_service: NamedDependency[ReleaseService],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        data: JSONBody[CertifiedAkCreate],
    ) -> AkOut:
        db = release_service.db
        target = await lookup_tenant(db, tenant)
        await _count_against_challenges(release_service, target)
        async with db.transaction(_scope(target.id)) as session:
            ak = await tpm.enrol_certified(
                session,
                release_log,
                target,
                ak_public=tpm.decode_b64(data.ak_public, "ak_public"),
                ak_certificate=tpm.decode_b64(data.ak_certificate, "ak_certificate"),
                intermediates=[tpm.decode_b64(i, "intermediates") for i in data.intermediates],
            )
        return AkOut.of(ak)


async def _count_against_challenges(release_service: ReleaseService, tenant: Tenant) -> None:
    """An enrolment begun without a token is counted against the tenant's challenge budget first, in a
    short transaction of its own — before its certificate chain is verified (the costly part), and
    whatever it then becomes: a refused start costs the budget as a used challenge does (found by review:
    counted after the verification, refused starts were free to repeat)."""
    async with release_service.db.transaction(_scope(tenant.id)) as session:
        await release_service.limiter.take_challenge(session, tenant, utcnow())


def _scope(tenant_id: uuid.UUID) -> Scope:
    return Scope.for_tenant(tenant_id)
