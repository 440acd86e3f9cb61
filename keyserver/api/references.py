"""Reference values and CI signers over HTTP."""

from __future__ import annotations

import base64
import binascii
import json
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from keyserver import reference_values as rv
from keyserver.api.auth import SECURITY, tenant_session
from keyserver.api.problems import TOKEN_READ, TOKEN_WRITE
from keyserver.api.schemas import VersionPath
from keyserver.appraisal import validate_reference_values
from keyserver.db.models import CiSigner, ReferenceValueSet
from keyserver.db.session import Database
from keyserver.errors import InvalidRequest
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import Principal, Role, require_role, resolve_tenant

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class SignerCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    public_key: Annotated[str, msgspec.Meta(min_length=1, max_length=8000)]  # PEM SubjectPublicKeyInfo


class SignerOut(msgspec.Struct):
    name: str
    sha256: str
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def of(cls, signer: CiSigner) -> SignerOut:
        return cls(signer.name, signer.fingerprint, signer.created_at, signer.revoked_at)


class ReferenceValuesCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    tee: str
    values: dict[str, Any]


class BundleCreate(msgspec.Struct, forbid_unknown_fields=True):
    signer: Name
    bundle: dict[str, Any]  # {"v": 1, "tenant", "name", "tee", "values"}
    signature: Annotated[str, msgspec.Meta(min_length=1, max_length=2000)]  # base64


class ReferenceValuesOut(msgspec.Struct):
    name: str
    version: int
    tee: str
    sha256: str
    source: str
    created_at: datetime
    revoked_at: datetime | None
    values: dict[str, Any]

    @classmethod
    def of(cls, row: ReferenceValueSet) -> ReferenceValuesOut:
        values = json.loads(row.document)
        return cls(
            row.name, row.version, row.tee, row.sha256, row.source, row.created_at, row.revoked_at, values
        )


class ReferenceController(Controller):
    path = "/v1/tenants/{tenant:str}"
    tags = ("reference values",)
    security = SECURITY

    @post("/ci-signers", summary="Register a CI signer's public key (tenant-admin)", responses=TOKEN_WRITE)
    async def add_signer(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        data: JSONBody[SignerCreate],
    ) -> SignerOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            signer = await rv.register_signer(
                session,
                release_log,
                target,
                name=data.name,
                public_key=data.public_key.encode(),
                principal=principal.token_id,
            )
        return SignerOut.of(signer)

    @get("/ci-signers", summary="The tenant's CI signers", responses=TOKEN_READ)
    async def signers(
        self, principal: NamedDependency[Principal], db: NamedDependency[Database], tenant: FromPath[str]
    ) -> list[SignerOut]:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN, Role.AUDITOR) as (
            session,
            target,
        ):
            return [SignerOut.of(s) for s in await rv.list_signers(session, target.id)]

    @post(
        "/ci-signers/{name:str}/revoke",
        status_code=200,
        summary="Revoke a CI signer (tenant-admin)",
        responses=TOKEN_WRITE,
    )
    async def revoke_signer(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        name: FromPath[str],
    ) -> SignerOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            return SignerOut.of(
                await rv.revoke_signer(session, release_log, target, name, principal=principal.token_id)
            )

    @post(
        "/reference-values",
        summary="Add a version of a reference-value set by hand (tenant-admin)",
        responses=TOKEN_WRITE,
    )
    async def add(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        data: JSONBody[ReferenceValuesCreate],
    ) -> ReferenceValuesOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            row = await rv.add_reference_values(
                session,
                release_log,
                target,
                name=data.name,
                tee=data.tee,
                document=data.values,
                source=f"token:{principal.token_id}",
                validate=validate_reference_values,
            )
        return ReferenceValuesOut.of(row)

    @post(
        "/reference-values/bundles",
        summary="Publish a signed bundle (ci-signer or tenant-admin token)",
        responses=TOKEN_WRITE,
    )
    async def bundle(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        data: JSONBody[BundleCreate],
    ) -> ReferenceValuesOut:
        require_role(principal, Role.CI_SIGNER, Role.TENANT_ADMIN)
        try:
            signature = base64.b64decode(data.signature, validate=True)
        except (binascii.Error, ValueError):
            raise InvalidRequest("signature is not valid base64") from None
        async with db.transaction(principal.scope) as session:
            target = await resolve_tenant(session, principal, tenant)
            row = await rv.publish_bundle(
                session,
                release_log,
                target,
                signer_name=data.signer,
                bundle=data.bundle,
                signature=signature,
                validate=validate_reference_values,
            )
        return ReferenceValuesOut.of(row)

    @get("/reference-values", summary="Every version of every set", responses=TOKEN_READ)
    async def list_all(
        self, principal: NamedDependency[Principal], db: NamedDependency[Database], tenant: FromPath[str]
    ) -> list[ReferenceValuesOut]:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN, Role.AUDITOR, Role.CI_SIGNER) as (
            session,
            target,
        ):
            return [ReferenceValuesOut.of(r) for r in await rv.list_reference_values(session, target.id)]

    @post(
        "/reference-values/{name:str}/{version:int}/revoke",
        status_code=200,
        summary="Revoke a version",
        responses=TOKEN_WRITE,
    )
    async def revoke(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        name: FromPath[str],
        version: VersionPath,
    ) -> ReferenceValuesOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            row = await rv.revoke_reference_values(
                session, release_log, target, name, version, principal=principal.token_id
            )
            return ReferenceValuesOut.of(row)
