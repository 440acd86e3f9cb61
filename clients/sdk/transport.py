"""One HTTP exchange with the keyserver: send, then either a 2xx answer to read or a typed error.

The bearer token is added per request (never set on a shared ``httpx.AsyncClient``, which tests and
callers may reuse with other credentials), and never sent on the loader's and TPM's token-less routes.
Redirects are not followed: a keyserver does not redirect, and following one would hand the token to
whoever it points at.
"""

from __future__ import annotations

import json
import re
import urllib.parse
from collections.abc import Mapping
from typing import Any

import httpx

from clients.sdk.errors import (
    Conflict,
    EvidenceRejected,
    Forbidden,
    InvalidArgument,
    InvalidRequest,
    KeyserverAPIError,
    KeyserverUnreachable,
    NotFound,
    Problem,
    ReleaseDenied,
    Unauthenticated,
    Unavailable,
    UnexpectedResponse,
    redact,
)
from clients.sdk.models import Receipt
from clients.sdk.wire import Fields, items_of, loads

JSON_MEDIA_TYPE = "application/json"
PROBLEM_MEDIA_TYPE = "application/problem+json"
TEXT_MEDIA_TYPE = "text/plain"
_VISIBLE_ASCII = re.compile(r"[\x21-\x7e]+")
_BY_STATUS: dict[int, type[KeyserverAPIError]] = {
    400: InvalidRequest,
    401: Unauthenticated,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
}


def segment(value: str, what: str) -> str:
    """``value`` as one URL path segment. Names are path segments on this API: an empty name, a "/" or a
    dot segment would address another resource than the one meant, so they are refused, not escaped."""
    if not isinstance(value, str) or value in ("", ".", ".."):
        raise InvalidArgument(f"{what} must be a non-empty name, got {value!r}")
    if "/" in value:
        raise InvalidArgument(f"{what} {value!r} contains '/', which no keyserver name may contain")
    return urllib.parse.quote(value, safe="")


def encode_body(body: Mapping[str, Any], what: str) -> bytes:
    """The request body as strict JSON: NaN, infinities and non-JSON types are refused here, not sent."""
    try:
        return json.dumps(body, allow_nan=False, separators=(",", ":"), ensure_ascii=False).encode()
    except (TypeError, ValueError) as exc:
        raise InvalidArgument(f"{what}: the request cannot be sent as JSON ({exc})") from None


def check_token(token: str) -> str:
    # An Authorization header holds visible ASCII only; httpx would otherwise fail with the value in its
    # message. Say what is wrong without repeating the token.
    if not isinstance(token, str) or not _VISIBLE_ASCII.fullmatch(token):
        raise InvalidArgument("the token must be one line of visible ASCII (a keyserver token reads ks1.…)")
    return token


def media_type(response: httpx.Response) -> str:
    header: str = response.headers.get("content-type", "")
    return header.split(";", 1)[0].strip().lower()


class Reply:
    """A 2xx answer, read as the route documents it."""

    def __init__(self, response: httpx.Response, what: str) -> None:
        self.response = response
        self.status = response.status_code
        self.what = what

    def _require(self, expected: str) -> None:
        found = media_type(self.response)
        if found != expected:
            raise UnexpectedResponse(
                f"{self.what} answered {self.status} with content type {found or 'none'!r}, "
                f"expected {expected}",
                status=self.status,
                content_type=found,
            )

    def _json(self) -> Any:
        self._require(JSON_MEDIA_TYPE)
        try:
            return loads(self.response.content)
        except ValueError as exc:
            raise UnexpectedResponse(
                f"{self.what} answered {self.status} with a body that is not JSON ({exc})",
                status=self.status,
                content_type=JSON_MEDIA_TYPE,
            ) from None

    def fields(self) -> Fields:
        return Fields(self._json(), self.what, self.status)

    def items(self) -> list[Fields]:
        return items_of(self._json(), self.what, self.status)

    def text(self) -> str:
        self._require(TEXT_MEDIA_TYPE)
        try:
            return self.response.content.decode("utf-8")
        except UnicodeDecodeError:
            raise UnexpectedResponse(
                f"{self.what} answered text that is not UTF-8", status=self.status
            ) from None

    def nothing(self) -> None:
        if self.status != 204 and self.response.content:
            raise UnexpectedResponse(
                f"{self.what} answered {self.status} with a body where none is documented", status=self.status
            )


class Transport:
    def __init__(self, http: httpx.AsyncClient, token: str | None, *, owns_http: bool) -> None:
        self.http = http
        self._token = None if token is None else check_token(token)
        self.owns_http = owns_http

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def with_token(self, token: str | None) -> Transport:
        """The same connection pool with another credential; the new transport does not own the pool."""
        return Transport(self.http, token, owns_http=False)

    def shared(self) -> Transport:
        """The same pool and credential, not owning the pool."""
        return Transport(self.http, self._token, owns_http=False)

    async def aclose(self) -> None:
        if self.owns_http:
            await self.http.aclose()

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, int] | None = None,
        authenticated: bool = True,
    ) -> Reply:
        what = f"{method} {path}"
        headers = {"Accept": f"{JSON_MEDIA_TYPE}, {PROBLEM_MEDIA_TYPE}, {TEXT_MEDIA_TYPE}"}
        if authenticated:
            if self._token is None:
                raise InvalidArgument(f"{what} needs a token; build the client with token=…")
            headers["Authorization"] = f"Bearer {self._token}"
        content = None if body is None else encode_body(body, what)
        if content is not None:
            headers["Content-Type"] = JSON_MEDIA_TYPE
        try:
            response = await self.http.request(
                method, path, content=content, params=params, headers=headers, follow_redirects=False
            )
        except httpx.TimeoutException as exc:
            raise KeyserverUnreachable(
                f"{what}: no answer in time ({type(exc).__name__})", timed_out=True
            ) from None
        except httpx.HTTPError as exc:
            # from None: the httpx exception holds the request, and with it the Authorization header.
            raise KeyserverUnreachable(
                f"{what}: cannot reach the keyserver ({type(exc).__name__}: {exc})"
            ) from None
        if 200 <= response.status_code < 300:
            return Reply(response, what)
        raise error_for(response, what)


def error_for(response: httpx.Response, what: str) -> KeyserverAPIError | UnexpectedResponse:
    """The typed error for a non-2xx answer; ``UnexpectedResponse`` unless it is a keyserver problem."""
    status = response.status_code
    found = media_type(response)
    if found != PROBLEM_MEDIA_TYPE:
        # A proxy's error page, say: quote a little of it, unless it is binary.
        excerpt = redact(response.text[:200]) if found.startswith("text/") or "json" in found else ""
        return UnexpectedResponse(
            f"{what} answered {status} with content type {found or 'none'!r}, not a problem document"
            + (f": {excerpt!r}" if excerpt else ""),
            status=status,
            content_type=found,
        )
    try:
        document = loads(response.content)
    except ValueError as exc:
        return UnexpectedResponse(
            f"{what} answered {status} with a problem document that is not JSON ({exc})",
            status=status,
            content_type=found,
        )
    try:
        return _problem_error(Fields(document, f"{what} (problem, status {status})", status))
    except UnexpectedResponse as exc:
        return exc


def _problem_error(fields: Fields) -> KeyserverAPIError:
    status = fields.status or 0
    problem = Problem(
        type=fields.string("type"),
        title=fields.string("title"),
        status=status,
        detail=fields.string("detail"),
        instance=_optional_text(fields, "instance"),
        request_id=_optional_text(fields, "request_id"),
        reason=_optional_text(fields, "reason"),
    )
    if status == 403 and problem.code == "release-denied":
        return ReleaseDenied(status, fields.raw, problem, _logged_receipt(fields))
    if status == 503:
        receipt = _logged_receipt(fields) if "receipt" in fields.raw else None
        return Unavailable(status, fields.raw, problem, receipt)
    if problem.code == "evidence-rejected":
        return EvidenceRejected(status, fields.raw, problem)
    return _BY_STATUS.get(status, KeyserverAPIError)(status, fields.raw, problem)


def _optional_text(fields: Fields, name: str) -> str | None:
    return fields.optional_string(name) if name in fields.raw else None


def _logged_receipt(fields: Fields) -> Receipt:
    """A logged refusal names its entry twice (``log_index`` and ``receipt``); they must agree."""
    receipt = Receipt.parse(fields.fields("receipt"))
    if fields.integer("log_index") != receipt.log_index:
        raise fields.error("log_index and receipt.log_index differ")
    return receipt
