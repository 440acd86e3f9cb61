"""The untrusted inference server: the public HTTP front of a confidential-inference deployment.

It runs outside the confidential VM, next to the load balancer, and is not trusted with anything: it
forwards the loader's public attestation (key + keyserver-signed token) to callers, and callers'
sealed requests to the loader and the sealed completions back. It never holds a key that opens them,
so prompts, completions and weights stay ciphertext here (tests/clients/test_end_to_end.py
searches this process's memory and traffic for them). It checks sizes and shapes only.

``python -m clients.inference --loader URL [--host H] [--port P]``
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import httpx
import uvicorn
from litestar import Litestar, Response, get, post
from litestar.params import JSONBody

MAX_MESSAGE_CHARS = 1 << 20


def create_inference_app(loader_url: str, *, timeout: float = 60.0) -> Litestar:
    client = httpx.AsyncClient(base_url=loader_url, timeout=timeout)

    async def forward(method: str, path: str, body: dict[str, Any] | None = None) -> Response[Any]:
        try:
            answer = await client.request(method, path, json=body)
        except httpx.HTTPError:
            return Response({"error": "the loader is unreachable"}, status_code=502)
        if answer.headers.get("content-type", "").split(";")[0] != "application/json":
            return Response({"error": "the loader answered something other than JSON"}, status_code=502)
        return Response(answer.json(), status_code=answer.status_code)

    @get("/healthz", sync_to_thread=False)
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @get("/v1/attestation")
    async def attestation() -> Response[Any]:
        """The loader's public key and attestation-result token, as the loader gave them."""
        return await forward("GET", "/v1/attestation")

    @post("/v1/completions", status_code=200)
    async def completions(data: JSONBody[dict[str, Any]]) -> Response[Any]:
        """A sealed request in, the sealed completion out; both opaque here."""
        message = data.get("message")
        if set(data) != {"message"} or not isinstance(message, str) or len(message) > MAX_MESSAGE_CHARS:
            return Response({"error": 'a request is {"message": <sealed request>}'}, status_code=400)
        return await forward("POST", "/v1/run", {"message": message})

    async def close_client() -> None:
        await client.aclose()

    return Litestar(
        route_handlers=[healthz, attestation, completions],
        on_shutdown=[close_client],
        openapi_config=None,
        request_max_body_size=2 * MAX_MESSAGE_CHARS,
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m clients.inference", description="The untrusted inference front."
    )
    p.add_argument("--loader", required=True, help="the loader's base URL")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8100)
    args = p.parse_args(argv)
    uvicorn.run(create_inference_app(args.loader), host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
