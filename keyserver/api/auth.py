"""Bearer-token authentication as a Litestar dependency."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Request
from litestar.di import NamedDependency
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.backends.base import KeyBackend
from keyserver.db.models import Tenant
from keyserver.db.session import Database
from keyserver.errors import Unauthenticated
from keyserver.readiness import Readiness
from keyserver.release import ReleaseService
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import Principal, Role, authenticate, require_role, resolve_tenant

BEARER_SCHEME = "BearerToken"
SECURITY: tuple[dict[str, list[str]], ...] = ({BEARER_SCHEME: []},)


async def provide_principal(request: Request[Any, Any, Any], db: NamedDependency[Database]) -> Principal:
    # Depending on ``db`` keeps the two resolved one after the other: Litestar resolves sibling
    # dependencies in a task group, which would wrap our typed errors in an ExceptionGroup.
    header = request.headers.get("authorization")
    if not header:
        raise Unauthenticated("send a keyserver token as `Authorization: Bearer <token>`")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthenticated("the Authorization header must be `Bearer <token>`")
    return await authenticate(db, value.strip())


async def _ready(request: Request[Any, Any, Any]) -> None:
    # Nothing touches the store before the start-up checks have passed (keyserver.readiness): 503.
    readiness: Readiness = request.app.state.readiness
    await readiness.ensure()


async def provide_db(request: Request[Any, Any, Any]) -> Database:
    await _ready(request)
    db: Database = request.app.state.db
    return db


async def provide_release_log(request: Request[Any, Any, Any]) -> ReleaseLog:
    await _ready(request)
    release_log: ReleaseLog = request.app.state.release_log
    return release_log


def provide_key_backend(request: Request[Any, Any, Any]) -> KeyBackend:
    backend: KeyBackend = request.app.state.key_backend
    return backend


async def provide_release_service(request: Request[Any, Any, Any]) -> ReleaseService:
    await _ready(request)
    service: ReleaseService = request.app.state.release_service
    return service


@asynccontextmanager
async def tenant_session(
    db: Database, principal: Principal, tenant: str, *roles: Role
) -> AsyncIterator[tuple[AsyncSession, Tenant]]:
    """The common opening of a tenant route: the caller has one of ``roles``, one transaction in the
    caller's scope, and the tenant named in the path as far as the caller may see it."""
    require_role(principal, *roles)
    async with db.transaction(principal.scope) as session:
        yield session, await resolve_tenant(session, principal, tenant)
