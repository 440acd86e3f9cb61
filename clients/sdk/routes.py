"""What every role's group of calls shares: the transport and the tenant its paths are under."""

from __future__ import annotations

import uuid

from clients.sdk.errors import InvalidArgument
from clients.sdk.transport import Transport, segment


class TenantRoutes:
    def __init__(self, transport: Transport, tenant: str | None) -> None:
        self._transport = transport
        self._tenant = tenant

    def _path(self, *parts: str) -> str:
        """``/v1/tenants/<tenant>/<parts…>``; ``parts`` are route words or names already through
        :func:`segment`."""
        if self._tenant is None:
            raise InvalidArgument(
                "this client has no tenant: build it with tenant=… or use client.for_tenant(name)"
            )
        return "/".join(["/v1/tenants", segment(self._tenant, "tenant"), *parts])


def uuid_text(value: str | uuid.UUID, what: str) -> str:
    """A UUID path segment or body member, checked before it is sent."""
    try:
        return str(value if isinstance(value, uuid.UUID) else uuid.UUID(value))
    except (ValueError, TypeError, AttributeError):
        raise InvalidArgument(f"{what} must be a UUID, got {value!r}") from None


def positive(value: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{what} must be a positive integer, got {value!r}")
    return value
