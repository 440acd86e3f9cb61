"""Bearer-token authentication as a Litestar dependency."""

from __future__ import annotations

from typing import Any

from litestar import Request
from litestar.di import NamedDependency

from keyserver.backends.base import KeyBackend
from keyserver.db.session import Database
from keyserver.errors import Unauthenticated
from keyserver.release import ReleaseService
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import Principal, authenticate

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


def provide_db(request: Request[Any, Any, Any]) -> Database:
    db: Database = request.app.state.db
    return db


def provide_release_log(request: Request[Any, Any, Any]) -> ReleaseLog:
    release_log: ReleaseLog = request.app.state.release_log
    return release_log


def provide_key_backend(request: Request[Any, Any, Any]) -> KeyBackend:
    backend: KeyBackend = request.app.state.key_backend
    return backend


def provide_release_service(request: Request[Any, Any, Any]) -> ReleaseService:
    service: ReleaseService = request.app.state.release_service
    return service
