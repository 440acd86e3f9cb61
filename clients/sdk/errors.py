"""The SDK's one exception hierarchy.

Everything the SDK raises on purpose is a :class:`KeyserverClientError`:

- :class:`InvalidArgument`: refused before any request (a name that cannot be a path segment, a private
  JWK where a public one belongs, a signing key the server would not accept);
- :class:`KeyserverUnreachable`: no answer (connection refused, DNS, TLS, timeout);
- :class:`UnexpectedResponse`: an answer that is not what the API documents (wrong content type,
  missing members, a redirect, an error without a problem document) — the SDK fails closed on it;
- :class:`KeyserverAPIError` and its subclasses: the keyserver answered with an RFC 9457 problem.

No message, ``str`` or ``repr`` of these carries a token: messages are passed through :func:`redact`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clients.sdk.models import Receipt

PROBLEM_TYPE_PREFIX = "urn:keyserver:problem:"

# ks1.<tenant id or "operator">.<token id>.<secret>; matched loosely so that a mangled token is hidden too.
_TOKEN_RE = re.compile(r"(ks1\.[A-Za-z0-9]+\.[A-Za-z0-9-]+\.)[A-Za-z0-9_\-]+")


def redact(text: str) -> str:
    """``text`` with the secret part of anything that looks like a keyserver token replaced."""
    return _TOKEN_RE.sub(r"\1<redacted>", text)


class KeyserverClientError(Exception):
    """Base of every error the SDK raises on purpose."""

    def __init__(self, message: str) -> None:
        self.message = redact(message)
        super().__init__(self.message)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class InvalidArgument(KeyserverClientError, ValueError):
    """An argument the SDK refuses before sending anything."""


class KeyserverUnreachable(KeyserverClientError):
    """The keyserver did not answer: connection, TLS or protocol failure, or a timeout (``timed_out``)."""

    def __init__(self, message: str, *, timed_out: bool = False) -> None:
        super().__init__(message)
        self.timed_out = timed_out


class UnexpectedResponse(KeyserverClientError):
    """The keyserver (or something in front of it) answered, but not as the API documents."""

    def __init__(self, message: str, *, status: int | None = None, content_type: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.content_type = content_type


@dataclass(frozen=True)
class Problem:
    """The members of an RFC 9457 problem document the keyserver sends (docs/api.md)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None
    request_id: str | None
    reason: str | None

    @property
    def code(self) -> str:
        """The stable code after ``urn:keyserver:problem:`` (e.g. ``not-found``); branch on it."""
        return self.type.removeprefix(PROBLEM_TYPE_PREFIX)


class KeyserverAPIError(KeyserverClientError):
    """The keyserver refused the request with a problem document. ``problem`` is the whole document;
    ``code``, ``detail``, ``reason`` and ``request_id`` are its most useful members."""

    def __init__(self, status: int, problem: dict[str, Any], parsed: Problem) -> None:
        self.status = status
        self.problem = problem
        self.parsed = parsed
        super().__init__(self._describe())

    @property
    def code(self) -> str:
        return self.parsed.code

    @property
    def title(self) -> str:
        return self.parsed.title

    @property
    def detail(self) -> str:
        return self.parsed.detail

    @property
    def reason(self) -> str | None:
        return self.parsed.reason

    @property
    def request_id(self) -> str | None:
        return self.parsed.request_id

    @property
    def errors(self) -> list[Any]:
        """For ``invalid-request``: the fields the server found invalid (may be empty)."""
        found = self.problem.get("errors")
        return list(found) if isinstance(found, list) else []

    def _describe(self) -> str:
        text = f"{self.status} {self.parsed.code}: {self.parsed.detail or self.parsed.title}"
        notes = []
        if self.parsed.reason:
            notes.append(f"reason {self.parsed.reason}")
        if self.parsed.request_id:
            notes.append(f"request id {self.parsed.request_id}")
        return f"{text} ({'; '.join(notes)})" if notes else text


class InvalidRequest(KeyserverAPIError):
    """400: malformed body, a value out of range, an unknown field (see ``errors``)."""


class Unauthenticated(KeyserverAPIError):
    """401: no token, or a malformed, unknown, revoked or expired one."""


class Forbidden(KeyserverAPIError):
    """403: the token's role may not do this (or a signature or trust check refused it)."""


class NotFound(KeyserverAPIError):
    """404: no such resource — or one that belongs to another tenant (the same answer, on purpose)."""


class Conflict(KeyserverAPIError):
    """409: the state does not allow it (a name taken, an enrolment already used, …)."""


class EvidenceRejected(KeyserverAPIError):
    """403 ``evidence-rejected``: evidence failed verification; ``reason`` names the check."""


class LoggedRefusal(KeyserverAPIError):
    """A release refusal that the keyserver logged: ``log_index`` and ``receipt`` locate its entry."""

    def __init__(
        self, status: int, problem: dict[str, Any], parsed: Problem, receipt: Receipt | None
    ) -> None:
        self.receipt = receipt
        super().__init__(status, problem, parsed)

    @property
    def log_index(self) -> int | None:
        return None if self.receipt is None else self.receipt.log_index

    def _describe(self) -> str:
        text = super()._describe()
        return text if self.receipt is None else f"{text} [log index {self.receipt.log_index}]"


class ReleaseDenied(LoggedRefusal):
    """403 ``release-denied``: the keyserver logged a denial; ``reason`` says which check failed."""

    receipt: Receipt

    def __init__(self, status: int, problem: dict[str, Any], parsed: Problem, receipt: Receipt) -> None:
        super().__init__(status, problem, parsed, receipt)

    @property
    def log_index(self) -> int:
        return self.receipt.log_index


class Unavailable(LoggedRefusal):
    """503: the database or the key backend did not answer; retry later. A release refused this way is
    logged too, and then carries its ``receipt``."""
