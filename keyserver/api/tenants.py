"""Tenants and their tokens."""

from __future__ import annotations

import uuid
from datetime import timedelta

from litestar import Controller, delete, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from keyserver.api.auth import SECURITY, tenant_session
from keyserver.api.problems import TOKEN_READ, TOKEN_WRITE, problem_responses
from keyserver.api.schemas import TenantCreate, TenantOut, TokenCreate, TokenIssued, TokenOut, WhoAmI
from keyserver.db.models import Tenant
from keyserver.db.session import Database, Scope
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import (
    Principal,
    Role,
    check_may_issue,
    create_tenant,
    issue_tenant_token,
    list_tenants,
    list_tokens,
    require_operator,
    require_role,
    resolve_tenant,
    revoke_tenant_token,
)


@get(
    "/v1/whoami",
    tags=["auth"],
    security=SECURITY,
    summary="The caller's token, role and tenant",
    responses=problem_responses(401, 503),
)
async def whoami(principal: NamedDependency[Principal]) -> WhoAmI:
    return WhoAmI(token_id=str(principal.token_id), role=principal.role, tenant=principal.tenant_name)


class TenantController(Controller):
    path = "/v1/tenants"
    tags = ("tenants",)
    security = SECURITY

    @post(
        "/", summary="Create a tenant (operator)", responses=problem_responses(400, 401, 403, 409, 413, 503)
    )
    async def create(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        data: JSONBody[TenantCreate],
    ) -> TenantOut:
        require_operator(principal)
        async with db.transaction(Scope.for_operator()) as session:
            tenant = await create_tenant(session, data.name)
        return TenantOut.of(tenant)

    @get("/", summary="List tenants (operator)", responses=problem_responses(401, 403, 503))
    async def list_all(
        self, principal: NamedDependency[Principal], db: NamedDependency[Database]
    ) -> list[TenantOut]:
        require_operator(principal)
        async with db.transaction(Scope.for_operator()) as session:
            return [TenantOut.of(t) for t in await list_tenants(session)]

    @get("/{tenant:str}", summary="One tenant (operator, or the tenant's own tokens)", responses=TOKEN_READ)
    async def show(
        self, principal: NamedDependency[Principal], db: NamedDependency[Database], tenant: FromPath[str]
    ) -> TenantOut:
        async with db.transaction(principal.scope) as session:
            return TenantOut.of(await resolve_tenant(session, principal, tenant))

    @post(
        "/{tenant:str}/tokens",
        summary="Issue a token (tenant-admin; the operator issues tenant-admin)",
        responses=TOKEN_WRITE,
    )
    async def create_token(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        data: JSONBody[TokenCreate],
    ) -> TokenIssued:
        role = Role(data.role)
        check_may_issue(principal, role)
        target = await _target(db, principal, tenant)
        # In the tenant's scope, whoever issues it (the operator too): the token is logged in its log.
        async with db.transaction(Scope.for_tenant(target.id)) as session:
            issued = await issue_tenant_token(
                session,
                release_log,
                target,
                principal,
                role=role,
                description=data.description,
                expires_in=(timedelta(seconds=data.expires_in_seconds) if data.expires_in_seconds else None),
            )
        return TokenIssued(token=issued.secret, info=TokenOut.of(issued.token, target.name))

    @get(
        "/{tenant:str}/tokens",
        summary="List a tenant's tokens (tenant-admin, operator)",
        responses=TOKEN_READ,
    )
    async def tokens(
        self, principal: NamedDependency[Principal], db: NamedDependency[Database], tenant: FromPath[str]
    ) -> list[TokenOut]:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN, Role.OPERATOR) as (
            session,
            target,
        ):
            return [TokenOut.of(t, target.name) for t in await list_tokens(session, target.id)]

    @delete(
        "/{tenant:str}/tokens/{token_id:uuid}",
        status_code=200,
        summary="Revoke a token (tenant-admin, operator)",
        responses=TOKEN_WRITE,
    )
    async def revoke(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        token_id: FromPath[uuid.UUID],
    ) -> TokenOut:
        require_role(principal, Role.TENANT_ADMIN, Role.OPERATOR)
        target = await _target(db, principal, tenant)
        async with db.transaction(Scope.for_tenant(target.id)) as session:
            token = await revoke_tenant_token(session, release_log, target, principal, token_id)
            return TokenOut.of(token, target.name)


async def _target(db: Database, principal: Principal, name: str) -> Tenant:
    """The tenant named in the path, as far as the caller may see it (the operator: any)."""
    async with db.transaction(principal.scope) as session:
        return await resolve_tenant(session, principal, name)
