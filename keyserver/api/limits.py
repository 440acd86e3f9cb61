"""A tenant's release limits over HTTP (tenant-admin sets; auditors read). keyserver/ratelimits.py has the
rules; docs/api.md the routes; docs/security.md why they are what they are."""

from __future__ import annotations

from typing import Annotated

import msgspec
from litestar import Controller, delete, get, put
from litestar.datastructures import State
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from keyserver import ratelimits
from keyserver.api.auth import SECURITY, tenant_session
from keyserver.api.problems import TOKEN_READ, TOKEN_WRITE
from keyserver.config import MAX_LIMIT_RELEASES, MAX_LIMIT_WINDOW_S, Settings
from keyserver.db.session import Database
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import Principal, Role


class LimitIn(msgspec.Struct, forbid_unknown_fields=True):
    # null: no limit for this scope (overrides the operator's default); DELETE returns to the default.
    max_releases: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT_RELEASES)] | None
    window_seconds: Annotated[int, msgspec.Meta(ge=1, le=MAX_LIMIT_WINDOW_S)]


class LimitOut(msgspec.Struct):
    scope: str  # "tenant" or "key/<name>"
    counts: str  # "attempts" (tenant: every release and attestation request) or "grants" (a key)
    max_releases: int | None  # null: unlimited
    window_seconds: int | None
    source: str  # "tenant" (set here) or "default" (the keyserver's configuration)

    @classmethod
    def of(cls, limit: ratelimits.Limit) -> LimitOut:
        budget = limit.budget
        return cls(
            scope=limit.scope,
            counts="attempts" if limit.scope == ratelimits.TENANT else "grants",
            max_releases=None if budget is None else budget.max_releases,
            window_seconds=None if budget is None else budget.window_seconds,
            source=limit.source,
        )


class LimitsOut(msgspec.Struct):
    tenant: LimitOut  # in force for the tenant's attempts
    keys: list[LimitOut]  # set for particular keys
    key_default: LimitOut  # in force for every other key


def _settings(state: State) -> Settings:
    settings: Settings = state.settings
    return settings


class ReleaseLimitController(Controller):
    path = "/v1/tenants/{tenant:str}/release-limits"
    tags = ("release limits",)
    security = SECURITY

    @get("/", summary="The release limits in force (tenant-admin, auditor)", responses=TOKEN_READ)
    async def show(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        state: State,
        tenant: FromPath[str],
    ) -> LimitsOut:
        settings = _settings(state)
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN, Role.AUDITOR) as (
            session,
            target,
        ):
            tenant_limit = await ratelimits.effective_limit(session, settings, target.id, ratelimits.TENANT)
            rows = await ratelimits.list_limits(session, target.id)
        keys = [ratelimits.Limit.set_by_tenant(row) for row in rows if row.scope != ratelimits.TENANT]
        default = ratelimits.Limit("key/*", settings.release_limit_key, "default")
        return LimitsOut(LimitOut.of(tenant_limit), [LimitOut.of(k) for k in keys], LimitOut.of(default))

    @put(
        "/tenant",
        summary="Limit the tenant's release and attestation requests per window (tenant-admin)",
        responses=TOKEN_WRITE,
    )
    async def set_tenant(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        state: State,
        tenant: FromPath[str],
        data: JSONBody[LimitIn],
    ) -> LimitOut:
        return await self._set(principal, db, release_log, _settings(state), tenant, ratelimits.TENANT, data)

    @delete(
        "/tenant",
        status_code=200,
        summary="Back to the keyserver's default (tenant-admin)",
        responses=TOKEN_WRITE,
    )
    async def remove_tenant(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        state: State,
        tenant: FromPath[str],
    ) -> LimitOut:
        return await self._remove(principal, db, release_log, _settings(state), tenant, ratelimits.TENANT)

    @put(
        "/keys/{name:str}",
        summary="Limit a key's granted releases per window (tenant-admin)",
        responses=TOKEN_WRITE,
    )
    async def set_key(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        state: State,
        tenant: FromPath[str],
        name: FromPath[str],
        data: JSONBody[LimitIn],
    ) -> LimitOut:
        scope = ratelimits.key_scope(name)
        return await self._set(principal, db, release_log, _settings(state), tenant, scope, data)

    @delete(
        "/keys/{name:str}",
        status_code=200,
        summary="Back to the keyserver's default (tenant-admin)",
        responses=TOKEN_WRITE,
    )
    async def remove_key(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        state: State,
        tenant: FromPath[str],
        name: FromPath[str],
    ) -> LimitOut:
        scope = ratelimits.key_scope(name)
        return await self._remove(principal, db, release_log, _settings(state), tenant, scope)

    async def _set(
        self,
        principal: Principal,
        db: Database,
        release_log: ReleaseLog,
        settings: Settings,
        tenant: str,
        scope: str,
        data: LimitIn,
    ) -> LimitOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            await ratelimits.set_limit(
                session,
                release_log,
                target,
                scope,
                data.max_releases,
                data.window_seconds,
                principal=principal.token_id,
            )
            limit = await ratelimits.effective_limit(session, settings, target.id, scope)
        return LimitOut.of(limit)

    async def _remove(
        self,
        principal: Principal,
        db: Database,
        release_log: ReleaseLog,
        settings: Settings,
        tenant: str,
        scope: str,
    ) -> LimitOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            await ratelimits.remove_limit(session, release_log, target, scope, principal=principal.token_id)
            limit = await ratelimits.effective_limit(session, settings, target.id, scope)
        return LimitOut.of(limit)
