"""The witness's HTTP edge: ``POST /add-checkpoint`` (c2sp.org/tlog-witness) and a description page.

Thin on purpose: the body goes to :meth:`WitnessService.add_checkpoint` and its answer comes back as
it is. There is no authentication beyond the checkpoint's own signature, as the specification says.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response, get, post

from keyserver.witness.protocol import MAX_REQUEST_BYTES
from keyserver.witness.service import WitnessService

__all__ = ["create_witness_app"]


def create_witness_app(service: WitnessService) -> Litestar:
    @post("/add-checkpoint", status_code=200, sync_to_thread=False)
    async def add_checkpoint(request: Request[Any, Any, Any]) -> Response[bytes]:
        answer = await service.add_checkpoint(await request.body())
        return Response(answer.body, status_code=answer.status, media_type=answer.content_type)

    @get("/", sync_to_thread=False)
    async def describe() -> Response[str]:
        # What an operator configuring a log or a loader needs: who this is, and which logs it witnesses.
        lines = [f"witness {service.config.name}", f"vkey {service.vkey}"]
        lines += [f"log {origin}" for origin in sorted(service.config.logs)]
        return Response("\n".join(lines) + "\n", media_type="text/plain; charset=utf-8")

    @get("/healthz", sync_to_thread=False)
    async def healthz() -> Response[str]:
        return Response("ok\n", media_type="text/plain; charset=utf-8")

    @asynccontextmanager
    async def lifespan(_: Litestar) -> AsyncIterator[None]:
        await service.store.create_schema()
        try:
            yield
        finally:
            await service.store.close()

    return Litestar(
        route_handlers=[add_checkpoint, describe, healthz],
        lifespan=[lifespan],
        request_max_body_size=MAX_REQUEST_BYTES,
        openapi_config=None,
    )
