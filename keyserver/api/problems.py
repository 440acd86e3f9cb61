"""Errors as RFC 9457 ``application/problem+json``.

``type`` is ``urn:keyserver:problem:<code>``; the codes are stable and listed in docs/api.md, so
clients can branch on them. ``detail`` is written for the person reading it.
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi import ResponseSpec

from keyserver.errors import EvidenceError, KeyserverError
from keyserver.logs import request_id_var
from keyserver.ratelimits import RateLimited

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:keyserver:problem:"

log = logging.getLogger("keyserver.errors")


class Problem(msgspec.Struct, omit_defaults=True):
    """An RFC 9457 problem document as this keyserver writes it (docs/api.md, "Errors")."""

    type: str  # urn:keyserver:problem:<code>
    title: str
    status: int
    detail: str
    instance: str
    request_id: str | None = None
    errors: list[dict[str, Any]] | None = None  # invalid-request: which fields, and why
    reason: str | None = None  # evidence-rejected, release-denied: which check
    log_index: int | None = None  # release-denied: the denial's entry in the release log
    receipt: dict[str, Any] | None = None  # release-denied: as a granted release's receipt


_DESCRIPTIONS = {
    400: "invalid-request: malformed JSON, a field out of range, an unknown field",
    401: "unauthenticated: no token, or a malformed, unknown, revoked or expired one",
    403: "forbidden (the token's role may not do this), or evidence-rejected / release-denied",
    404: "not-found: no such tenant or resource, or one that belongs to another tenant",
    409: "conflict with the current state",
    413: "payload-too-large: the body is over KEYSERVER_MAX_REQUEST_BYTES",
    429: "rate-limited: the tenant's or the key's release budget is spent; retry after Retry-After",
    503: "unavailable: the database or the key backend did not answer; retry",
}


def problem_responses(*statuses: int) -> dict[int, ResponseSpec]:
    """The OpenAPI description of the problem documents a route may answer with."""
    return {
        status: ResponseSpec(
            data_container=Problem,
            media_type=PROBLEM_MEDIA_TYPE,
            description=_DESCRIPTIONS[status],
            generate_examples=False,
        )
        for status in statuses
    }


# The problems each kind of route may answer with (the fuzz tests check that no route answers another).
TOKEN_READ = problem_responses(400, 401, 403, 404, 503)
TOKEN_WRITE = problem_responses(400, 401, 403, 404, 409, 413, 503)
LOADER = problem_responses(400, 403, 404, 409, 413, 429, 503)

# Litestar's own HTTP errors, mapped onto our codes.
_HTTP_CODES = {
    400: ("invalid-request", "The request is not valid"),
    401: ("unauthenticated", "Authentication required"),
    403: ("forbidden", "Not allowed"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    413: ("payload-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    429: ("rate-limited", "Too many requests"),
}


# Details may quote what the caller sent (an unknown field's name, a bad value): whatever it sent, the
# answer stays small.
MAX_DETAIL_CHARS = 512


def bounded_detail(detail: str) -> str:
    return detail if len(detail) <= MAX_DETAIL_CHARS else detail[: MAX_DETAIL_CHARS - 1] + "\u2026"


def problem(
    status: int,
    code: str,
    title: str,
    detail: str,
    request: Request[Any, Any, Any],
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> Response[dict[str, Any]]:
    body: dict[str, Any] = {
        "type": TYPE_PREFIX + code,
        "title": title,
        "status": status,
        "detail": bounded_detail(detail),
        "instance": request.url.path[:MAX_DETAIL_CHARS],
    }
    request_id = request_id_var.get()
    if request_id:
        body["request_id"] = request_id
    body.update(extra)
    if status == 401:
        headers = {**(headers or {}), "WWW-Authenticate": 'Bearer realm="keyserver"'}
    return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)


def keyserver_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, KeyserverError)
    extra: dict[str, Any] = {}
    headers = None
    if isinstance(exc, EvidenceError):
        extra["reason"] = exc.reason
    if isinstance(exc, RateLimited):
        extra["retry_after"] = exc.retry_after
        headers = {"Retry-After": str(exc.retry_after)}
    if exc.http_status >= 500:
        log.error("request failed: %s", exc.message, extra={"fields": {"code": exc.code}})
    return problem(exc.http_status, exc.code, exc.title, exc.message, request, headers, **extra)


def http_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    code, title = _HTTP_CODES.get(status, (f"http-{status}", "HTTP error"))
    extra: dict[str, Any] = {}
    detail = str(exc.detail)
    if isinstance(exc, ValidationException):
        detail = "the request body or parameters are not valid; see `errors`"
        extra["errors"] = exc.extra if isinstance(exc.extra, list) else []
    elif status == 404:
        detail = f"no route {request.method} {request.url.path}"
    elif status == 413:
        detail = "the request body is larger than this keyserver accepts (KEYSERVER_MAX_REQUEST_BYTES)"
    if status >= 500:
        log.error("request failed: %s", detail, exc_info=exc)
    return problem(status, code, title, detail, request, **extra)


def unexpected_error_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    # The exception text may hold anything (SQL, paths); it goes to the log, never to the client.
    log.exception("unhandled error", exc_info=exc)
    return problem(
        500,
        "internal",
        "Internal error",
        "the keyserver hit an unexpected error; quote the request id to its operator",
        request,
    )


def exception_group_handler(request: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    """Concurrently resolved dependencies raise groups; answer with the first typed error inside."""
    assert isinstance(exc, ExceptionGroup)
    for inner in exc.exceptions:
        if isinstance(inner, KeyserverError):
            return keyserver_error_handler(request, inner)
        if isinstance(inner, HTTPException):
            return http_error_handler(request, inner)
    return unexpected_error_handler(request, exc)


EXCEPTION_HANDLERS = {
    ExceptionGroup: exception_group_handler,
    KeyserverError: keyserver_error_handler,
    HTTPException: http_error_handler,
    Exception: unexpected_error_handler,
}
