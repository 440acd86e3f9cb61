"""A :class:`audit.verifier.LogSource` over a keyserver's HTTP API (DESIGN.md, "The release log on the
wire"), with httpx. Bounded timeouts; any non-200 answer is an error that says what the server said."""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Sequence
from typing import Any

import httpx


class LogFetchError(Exception):
    """The keyserver did not answer as a log should (HTTP error, malformed body)."""


class HttpLogSource:
    def __init__(self, url: str, tenant: str, token: str, *, timeout: float = 30.0) -> None:
        self.client = httpx.Client(
            base_url=f"{url.rstrip('/')}/v1/tenants/{tenant}/log",
            headers={"Authorization": f"Bearer {token}"},
            timeout=timeout,
        )

    def close(self) -> None:
        self.client.close()

    def _get(self, path: str, **params: int) -> httpx.Response:
        try:
            response = self.client.get(path, params=params)
        except httpx.HTTPError as exc:
            raise LogFetchError(f"cannot reach the keyserver: {exc}") from None
        if response.status_code != 200:
            detail = response.text[:500]
            with contextlib.suppress(ValueError):
                detail = response.json().get("detail", detail)
            raise LogFetchError(f"GET {response.request.url} answered {response.status_code}: {detail}")
        return response

    def _json(self, path: str, **params: int) -> dict[str, Any]:
        try:
            body = self._get(path, **params).json()
        except (ValueError, RecursionError):  # RecursionError: nested deeper than the decoder goes
            raise LogFetchError(f"GET {path} did not return JSON that can be read") from None
        if not isinstance(body, dict):
            raise LogFetchError(f"GET {path} returned {type(body).__name__}, not an object")
        return body

    def checkpoint(self) -> str:
        return self._get("/checkpoint").text

    def cosigned_checkpoint(self) -> str:
        """The latest checkpoint a quorum of the log's witnesses cosigned (audit.witnessed checks it)."""
        return self._get("/checkpoint/cosigned").text

    def verifier_key(self) -> str:
        key = self._json("/key").get("verifier_key")
        if not isinstance(key, str):
            raise LogFetchError("GET /key did not return a verifier_key")
        return key

    def entries(self, start: int, end: int) -> Sequence[bytes]:
        body = self._json("/entries", start=start, end=end)
        try:
            return [base64.b64decode(item["data"], validate=True) for item in body["entries"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise LogFetchError(f"malformed entries page [{start}, {end}): {exc}") from None

    def inclusion_proof(self, index: int, tree_size: int) -> Sequence[bytes]:
        return _hashes(self._json("/proofs/inclusion", index=index, tree_size=tree_size), "audit_path")

    def consistency_proof(self, first: int, second: int) -> Sequence[bytes]:
        return _hashes(self._json("/proofs/consistency", first=first, second=second), "proof")


def _hashes(body: dict[str, Any], field: str) -> list[bytes]:
    try:
        return [bytes.fromhex(value) for value in body[field]]
    except (KeyError, TypeError, ValueError) as exc:
        raise LogFetchError(f"malformed proof: {exc}") from None
