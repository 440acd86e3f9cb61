"""Errors as RFC 9457 ``application/problem+json``.

``type`` is ``urn:keyserver:problem:<code>``; the codes are stable and listed in docs/api.md, so
clients can branch on them. ``detail`` is written for the person reading it.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from keyserver.errors import EvidenceError, KeyserverError
from keyserver.logs import request_id_var
from keyserver.ratelimits import RateLimited

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:keyserver:problem:"

log = logging.getLogger("keyserver.errors")

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
        "detail": detail,
        "instance": request.url.path,
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
