"""Liveness and readiness."""

from __future__ import annotations

import asyncio
from typing import Any

from litestar import Request, get
from litestar.di import NamedDependency

from keyserver import evaluation
from keyserver.api.problems import problem_responses
from keyserver.api.schemas import Status
from keyserver.backends.base import KeyBackend
from keyserver.config import Settings
from keyserver.db.session import Database
from keyserver.errors import Unavailable
from keyserver.kek_identity import check_kek_identity


@get("/healthz", tags=["health"], summary="Liveness: the process answers", sync_to_thread=False)
def healthz() -> Status:
    return Status(status="ok")


@get(
    "/readyz",
    tags=["health"],
    summary="Readiness: the database and the key backend answer (503 otherwise)",
    responses=problem_responses(503),
)
async def readyz(
    db: NamedDependency[Database], key_backend: NamedDependency[KeyBackend], request: Request[Any, Any, Any]
) -> Status:
    settings: Settings = request.app.state.settings
    pool = evaluation.pool()
    if not pool.warmed.is_set():
        # Only while the service starts: its policy evaluation workers are being started (a second or
        # so); a replica that cannot evaluate yet is not ready.
        await asyncio.to_thread(pool.warmed.wait, evaluation.START_TIMEOUT_S)
    # Its own deadline: a probe must answer (503) even when a backend call hangs behind a wedged one.
    try:
        async with asyncio.timeout(settings.readyz_timeout_s):
            await db.ping()
            await key_backend.health()
            # The backend holds the KEK the database's keys were wrapped under (keyserver/kek_identity.py).
            await check_kek_identity(db, key_backend)
    except TimeoutError:
        raise Unavailable(
            f"the database or the key backend did not answer within {settings.readyz_timeout_s:g} s"
        ) from None
    return Status(status="ready")
