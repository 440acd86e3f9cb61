"""The loader's three keyserver calls over the standard library's ``http.client``.

The loader is measured code, so it carries no HTTP framework: a challenge, a release and an
attestation result are three JSON POSTs without credentials (the loader authenticates with hardware
evidence bound to the challenge). Answers are read strictly (``keyserver.strict_json``): a member that
is missing or of another type is :class:`KeyserverAnswerInvalid`, and a refusal is
:class:`KeyserverRefused` carrying the problem document's code and reason. No proxy or CA bundle comes
from the environment: what the loader trusts must be measured, and the environment is not.
The SDK (``clients.sdk``) offers the same calls to everyone else, asynchronously and over httpx.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import json
import re
import ssl
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keyserver.strict_json import loads_strict

NONCE_BYTES = 32
MAX_ANSWER_BYTES = 4 << 20  # a release answer holds a JWE and a receipt: far below this
PROBLEM_TYPE_PREFIX = "urn:keyserver:problem:"
_NAME = re.compile(r"[A-Za-z0-9._~-]+")
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")
_HEX = re.compile(r"(?:[0-9a-f]{2})+")


class KeyserverError(Exception):
    """The keyserver could not be asked, or did not answer as the API promises."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


class KeyserverUnreachable(KeyserverError):
    def __init__(self, message: str) -> None:
        super().__init__("keyserver-unreachable", message)


class KeyserverAnswerInvalid(KeyserverError):
    def __init__(self, message: str) -> None:
        super().__init__("keyserver-answer-invalid", message)


class KeyserverRefused(KeyserverError):
    """A problem document: ``reason`` is its ``reason`` member when it has one, else its code."""

    def __init__(self, status: int, code: str, reason: str | None, detail: str) -> None:
        super().__init__(reason or code, f"{status} {code}: {detail}")
        self.status, self.code, self.detail = status, code, detail


@dataclass(frozen=True)
class Challenge:
    id: str
    nonce: bytes


@dataclass(frozen=True)
class Receipt:
    """Where a release decision is in the tenant's log (checked by ``clients.loader.receipt``)."""

    log_index: int
    tree_size: int
    checkpoint: str
    inclusion_proof: list[bytes]
    entry: bytes | None


@dataclass(frozen=True)
class ReleaseGranted:
    jwe: str
    kid: str
    receipt: Receipt


class _Object:
    """Typed members of one JSON object of an answer; anything else is :class:`KeyserverAnswerInvalid`."""

    def __init__(self, value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise KeyserverAnswerInvalid(f"{where}: expected a JSON object")
        self.raw: dict[str, Any] = value
        self.where = where

    def _get(self, name: str, kind: type, what: str) -> Any:
        value = self.raw.get(name)
        if not isinstance(value, kind) or isinstance(value, bool):
            raise KeyserverAnswerInvalid(f"{self.where}: member {name!r} should be {what}")
        return value

    def string(self, name: str) -> str:
        value: str = self._get(name, str, "a string")
        return value

    def integer(self, name: str) -> int:
        value: int = self._get(name, int, "an integer")
        if value < 0:
            raise KeyserverAnswerInvalid(f"{self.where}: member {name!r} is negative")
        return value

    def object(self, name: str) -> _Object:
        return _Object(self.raw.get(name), f"{self.where} {name}")

    def decoded(self, name: str, alphabet: re.Pattern[str], decode: Any) -> bytes:
        text = self.string(name)
        if not alphabet.fullmatch(text):
            raise KeyserverAnswerInvalid(f"{self.where}: member {name!r} is not in its documented encoding")
        try:
            data: bytes = decode(text)
        except (binascii.Error, ValueError):
            raise KeyserverAnswerInvalid(f"{self.where}: member {name!r} does not decode") from None
        return data


def _base64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _receipt(f: _Object) -> Receipt:
    proof = f.raw.get("inclusion_proof")
    if not isinstance(proof, list) or not all(isinstance(h, str) and _HEX.fullmatch(h) for h in proof):
        raise KeyserverAnswerInvalid(f"{f.where}: inclusion_proof should be a list of hex hashes")
    entry = None
    if f.raw.get("entry") is not None:
        entry = f.decoded(
            "entry", re.compile(r"[A-Za-z0-9+/]*={0,2}"), lambda t: base64.b64decode(t, validate=True)
        )
    return Receipt(
        f.integer("log_index"),
        f.integer("tree_size"),
        f.string("checkpoint"),
        [bytes.fromhex(h) for h in proof],
        entry,
    )


class LoaderKeyserver:
    """One tenant's loader routes on one keyserver (``http`` or ``https`` with the system's CAs)."""

    def __init__(self, base_url: str, *, tenant: str, timeout: float) -> None:
        url = urllib.parse.urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname or url.username or url.query:
            raise KeyserverUnreachable(
                f"the keyserver URL is http(s)://host[:port][/prefix], not {base_url!r}"
            )
        if not _NAME.fullmatch(tenant):
            raise KeyserverUnreachable(f"{tenant!r} is not a tenant name")
        self._url, self._prefix = url, url.path.rstrip("/")
        self._tenant, self._timeout = tenant, timeout

    def _connection(self) -> http.client.HTTPConnection:
        host, port = self._url.hostname or "", self._url.port
        if self._url.scheme == "https":
            return http.client.HTTPSConnection(
                host, port, timeout=self._timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(host, port, timeout=self._timeout)

    def _post(self, route: str, body: Mapping[str, Any] | None) -> _Object:
        path = f"{self._prefix}/v1/tenants/{self._tenant}/{route}"
        what = f"POST {path}"
        content = b"" if body is None else json.dumps(body, allow_nan=False, separators=(",", ":")).encode()
        headers = {"Accept": "application/json, application/problem+json", "Content-Type": "application/json"}
        connection = self._connection()
        try:
            connection.request("POST", path, body=content, headers=headers)
            response = connection.getresponse()
            data = response.read(MAX_ANSWER_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise KeyserverUnreachable(f"{what}: {type(exc).__name__}: {exc}") from None
        finally:
            connection.close()
        if len(data) > MAX_ANSWER_BYTES:
            raise KeyserverAnswerInvalid(f"{what}: the answer is larger than {MAX_ANSWER_BYTES} bytes")
        media = (response.getheader("content-type") or "").split(";", 1)[0].strip().lower()
        try:
            value = loads_strict(data) if media in ("application/json", "application/problem+json") else None
        except ValueError as exc:
            raise KeyserverAnswerInvalid(f"{what}: the answer is not JSON ({exc})") from None
        if 200 <= response.status < 300 and media == "application/json":
            return _Object(value, what)
        if media == "application/problem+json" and isinstance(value, dict):
            problem = _Object(value, what)
            code = str(value.get("type", "")).removeprefix(PROBLEM_TYPE_PREFIX)
            reason = value.get("reason") if isinstance(value.get("reason"), str) else None
            detail = value.get("detail") or value.get("title") or ""
            raise KeyserverRefused(
                response.status, code or "unknown", reason, str(detail)[:500] or problem.where
            )
        raise KeyserverAnswerInvalid(
            f"{what}: answered {response.status} with content type {media or 'none'!r}"
        )

    def challenge(self) -> Challenge:
        f = self._post("challenges", None)
        nonce = f.decoded("nonce", _BASE64URL, _base64url)
        if len(nonce) != NONCE_BYTES:
            raise KeyserverAnswerInvalid(f"{f.where}: the nonce is {len(nonce)} bytes, not {NONCE_BYTES}")
        return Challenge(f.string("id"), nonce)

    def release(
        self,
        key: str,
        challenge_id: str,
        evidence: Mapping[str, Any],
        ephemeral_jwk: Mapping[str, Any],
        version: int | None,
    ) -> ReleaseGranted:
        if not _NAME.fullmatch(key):
            raise KeyserverUnreachable(f"{key!r} is not a key name")
        body: dict[str, Any] = {
            "challenge": challenge_id,
            "evidence": dict(evidence),
            "ephemeral_key": dict(ephemeral_jwk),
        }
        if version is not None:
            body["version"] = version
        f = self._post(f"keys/{key}/release", body)
        return ReleaseGranted(f.string("jwe"), f.string("kid"), _receipt(f.object("receipt")))

    def attest(self, challenge_id: str, evidence: Mapping[str, Any], ephemeral_jwk: Mapping[str, Any]) -> str:
        body = {"challenge": challenge_id, "evidence": dict(evidence), "ephemeral_key": dict(ephemeral_jwk)}
        return self._post("attest", body).string("token")
