"""The loader's API to the untrusted side: the "virtual accelerator".

Two routes, both safe to expose to an untrusted inference server:

- ``GET /v1/attestation``: the loader's public key and a fresh attestation-result token from the
  keyserver that names it (``cnf.jkt``). A caller checks the token with the keyserver's JWKS, then seals
  requests to that key. Nothing secret.
- ``POST /v1/run`` ``{"message": <sealed request>}`` → ``{"message": <sealed response>}``. The sealed
  request holds a program signed by the CI signer and its inputs; the loader opens it, verifies the
  program's signature *before* anything runs (:mod:`clients.accelerator`), runs it over the weights it
  holds in memory, and seals the outputs so only the caller can read them. A refused program is answered
  the same way (sealed, status 200), so the untrusted side learns nothing from status codes. A message
  that does not open is a 400 without detail.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from litestar import Litestar, Response, get, post
from litestar.params import JSONBody

from clients.accelerator.accelerator import Accelerator
from clients.accelerator.errors import ProgramRejected
from clients.channel import ChannelError, message_from_text, message_to_text, open_request
from clients.loader.collectors.errors import CollectorError
from clients.loader.release import EphemeralKey
from clients.sdk import KeyserverClientError

log = logging.getLogger(__name__)
# Attestation results live five minutes; fetch a new one well before the old one lapses.
TOKEN_REFRESH_SECONDS = 120.0
MAX_MESSAGE_CHARS = 1 << 20
_REQUEST_MEMBERS = frozenset({"program", "inputs"})


@dataclass
class TokenCache:
    """The current attestation-result token, renewed by ``fetch`` when older than the refresh age."""

    fetch: Callable[[], Awaitable[str]]
    refresh_after: float = TOKEN_REFRESH_SECONDS
    _token: str | None = None
    _at: float = 0.0

    def __post_init__(self) -> None:
        self._lock = asyncio.Lock()

    async def get(self) -> str:
        async with self._lock:
            if self._token is None or time.monotonic() - self._at > self.refresh_after:
                self._token = await self.fetch()
                self._at = time.monotonic()
            return self._token


@dataclass
class LoaderState:
    tenant: str
    key: EphemeralKey
    accelerator: Accelerator
    tokens: TokenCache


def _run_sealed(loader: LoaderState, message: str) -> str:
    """Open, verify, run, seal. Runs in a worker thread: programs are CPU-bound numpy work."""
    request, reply = open_request(loader.key.private, message_from_text(message))
    if set(request) != _REQUEST_MEMBERS or not isinstance(request["inputs"], dict):
        outcome: dict[str, Any] = {
            "error": {"reason": "request-malformed", "message": 'a request is {"program", "inputs"}'}
        }
    else:
        try:
            outcome = {"outputs": loader.accelerator.run(request["program"], request["inputs"])}
        except ProgramRejected as exc:
            outcome = {"error": {"reason": exc.reason, "message": str(exc)}}
        except Exception:
            # A bug, not a refusal: the caller still gets a sealed answer, the untrusted side no detail.
            log.exception("a program failed unexpectedly")
            outcome = {"error": {"reason": "program-failed", "message": "the loader failed to run it"}}
    return message_to_text(reply.seal(outcome))


def create_loader_app(loader: LoaderState) -> Litestar:
    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/v1/attestation")
    async def attestation() -> Response[Any]:
        try:
            token = await loader.tokens.get()
        except (KeyserverClientError, CollectorError) as exc:
            # No fresh attestation, no key to offer: callers must not seal to an unattested loader.
            return Response(
                {"error": f"the keyserver did not attest this loader now: {exc}"}, status_code=503
            )
        return Response({"tenant": loader.tenant, "public_key": loader.key.public_jwk, "token": token})

    @post("/v1/run", status_code=200)
    async def run(data: JSONBody[dict[str, Any]]) -> Response[Any]:
        message = data.get("message")
        if set(data) != {"message"} or not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
            return Response({"error": 'a request is {"message": <sealed request>}'}, status_code=400)
        try:
            sealed = await asyncio.to_thread(_run_sealed, loader, message)
        except ChannelError:
            return Response({"error": "the message does not open with this loader's key"}, status_code=400)
        return Response({"message": sealed})

    return Litestar(
        route_handlers=[healthz, attestation, run],
        openapi_config=None,
        request_max_body_size=2 * MAX_MESSAGE_CHARS,
    )
