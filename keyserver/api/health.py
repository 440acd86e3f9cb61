"""Liveness and readiness."""

from __future__ import annotations

from litestar import get
from litestar.di import NamedDependency

from keyserver.api.problems import problem_responses
from keyserver.api.schemas import Status
from keyserver.backends.base import KeyBackend
from keyserver.db.session import Database


@get("/healthz", tags=["health"], summary="Liveness: the process answers", sync_to_thread=False)
def healthz() -> Status:
    return Status(status="ok")


@get(
    "/readyz",
    tags=["health"],
    summary="Readiness: the database and the key backend answer (503 otherwise)",
    responses=problem_responses(503),
)
async def readyz(db: NamedDependency[Database], key_backend: NamedDependency[KeyBackend]) -> Status:
    await db.ping()
    await key_backend.health()
    return Status(status="ready")
