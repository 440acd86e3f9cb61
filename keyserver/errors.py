"""Typed errors. Every error a user can see carries a stable ``code`` and a message they can act on.

The HTTP layer maps ``code`` to an RFC 9457 problem ``type`` (``urn:keyserver:problem:<code>``) and
``http_status`` to the response status; the CLI prints ``message`` and exits non-zero.
"""

from __future__ import annotations


class KeyserverError(Exception):
    """Base of every error keyserver raises on purpose."""

    code: str = "internal"
    http_status: int = 500
    title: str = "Internal error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(KeyserverError):
    code = "invalid-request"
    http_status = 400
    title = "The request is not valid"


class Unauthenticated(KeyserverError):
    code = "unauthenticated"
    http_status = 401
    title = "Authentication required"


class Forbidden(KeyserverError):
    code = "forbidden"
    http_status = 403
    title = "Not allowed"


class NotFound(KeyserverError):
    code = "not-found"
    http_status = 404
    title = "Not found"


class Conflict(KeyserverError):
    code = "conflict"
    http_status = 409
    title = "Conflict with the current state"


class Unavailable(KeyserverError):
    code = "unavailable"
    http_status = 503
    title = "A backing service is unavailable"


class ConfigurationError(KeyserverError):
    """The service is configured in a way that is unsafe or cannot work; raised at start-up."""

    code = "configuration"
    http_status = 500
    title = "Configuration error"


class EvidenceError(KeyserverError):
    """Evidence failed verification (authenticity). ``reason`` is a stable machine-readable code
    such as ``signature-invalid`` or ``nonce-mismatch``; ``message`` says what to fix."""

    code = "evidence-rejected"
    http_status = 403
    title = "Evidence rejected"

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
