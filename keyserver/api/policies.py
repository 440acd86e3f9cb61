"""Release policies over HTTP: versions, explicit activation, and a dry run that explains each check."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from keyserver import policies
from keyserver.api.auth import SECURITY, tenant_session
from keyserver.api.problems import TOKEN_READ, TOKEN_WRITE
from keyserver.api.schemas import Version, VersionPath
from keyserver.appraisal import decide, prepare
from keyserver.db.models import Policy
from keyserver.db.session import Database
from keyserver.db.types import utcnow
from keyserver.errors import NotFound
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import Principal, Role

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class PolicyCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    document: dict[str, Any]  # policy/document.py's format (docs/policy.md)


class PolicyOut(msgspec.Struct):
    name: str
    version: int
    sha256: str
    active: bool
    created_at: datetime
    document: dict[str, Any]

    @classmethod
    def of(cls, row: Policy, active: bool) -> PolicyOut:
        return cls(row.name, row.version, row.sha256, active, row.created_at, json.loads(row.document))


class DryRun(msgspec.Struct, forbid_unknown_fields=True):
    claims: dict[str, Any]
    version: Version | None = None  # default: the active version


class DryRunOut(msgspec.Struct):
    granted: bool
    reason: str | None
    detail: str
    policy: dict[str, Any] | None
    reference_values: list[dict[str, Any]]
    results: list[dict[str, Any]]


class PolicyController(Controller):
    path = "/v1/tenants/{tenant:str}/policies"
    tags = ("policies",)
    security = SECURITY

    @post(
        "/",
        summary="Add a policy version (tenant-admin); it takes effect only when activated",
        responses=TOKEN_WRITE,
    )
    async def add(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        data: JSONBody[PolicyCreate],
    ) -> PolicyOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            row = await policies.add_policy_version(
                session,
                release_log,
                target,
                name=data.name,
                document=data.document,
                principal=principal.token_id,
            )
        return PolicyOut.of(row, active=False)

    @get("/", summary="Every version of every policy, with the active ones marked", responses=TOKEN_READ)
    async def list_all(
        self, principal: NamedDependency[Principal], db: NamedDependency[Database], tenant: FromPath[str]
    ) -> list[PolicyOut]:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN, Role.AUDITOR) as (
            session,
            target,
        ):
            return [
                PolicyOut.of(row, active) for row, active in await policies.list_policies(session, target.id)
            ]

    @post(
        "/{name:str}/{version:int}/activate",
        status_code=200,
        summary="Activate a version (runs its examples)",
        responses=TOKEN_WRITE,
    )
    async def activate(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        name: FromPath[str],
        version: VersionPath,
    ) -> PolicyOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            await policies.activate(session, release_log, target, name, version, principal=principal.token_id)
            row = await session.get(Policy, (target.id, name, version))
            assert row is not None
        return PolicyOut.of(row, active=True)

    @post(
        "/{name:str}/dry-run",
        status_code=200,
        summary="Say, check by check, what the policy decides on claims",
        responses=TOKEN_WRITE,
    )
    async def dry_run(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        tenant: FromPath[str],
        name: FromPath[str],
        data: JSONBody[DryRun],
    ) -> DryRunOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN, Role.AUDITOR) as (
            session,
            target,
        ):
            if data.version is None:
                row = await policies.active_policy(session, target.id, name)
            else:
                row = await session.get(Policy, (target.id, name, data.version))
            if row is None or row.tenant_id != target.id:
                raise NotFound(f"no such version of policy {name!r} (or none is active)")
            prepared = await prepare(session, target.id, row)
        # After the transaction: the evaluation holds no lock and no pooled connection while it runs.
        result = await decide(prepared, data.claims, utcnow())
        return DryRunOut(
            result.granted,
            result.reason,
            result.detail,
            result.policy_ref,
            result.reference_value_refs,
            result.results,
        )
