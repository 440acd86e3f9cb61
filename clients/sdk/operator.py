"""The operator's calls: tenants, and each tenant's first tenant-admin token."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from clients.sdk.errors import InvalidArgument
from clients.sdk.models import IssuedToken, Tenant, TokenInfo
from clients.sdk.routes import uuid_text
from clients.sdk.transport import Transport, segment

MAX_TOKEN_LIFETIME = timedelta(days=10 * 365)  # the server's limit (keyserver/api/schemas.py)


def token_request(role: str, description: str, expires_in: timedelta | None) -> dict[str, Any]:
    body: dict[str, Any] = {"role": role, "description": description}
    if expires_in is not None:
        seconds = int(expires_in.total_seconds())
        if not 0 < seconds <= MAX_TOKEN_LIFETIME.total_seconds():
            raise InvalidArgument("expires_in must be between one second and ten years (omit it: no expiry)")
        body["expires_in_seconds"] = seconds
    return body


class OperatorApi:
    """Operator-token calls. Operator tokens themselves are never issued over HTTP."""

    def __init__(self, transport: Transport) -> None:
        self._transport = transport

    async def create_tenant(self, name: str) -> Tenant:
        reply = await self._transport.call("POST", "/v1/tenants", body={"name": name})
        return Tenant.parse(reply.fields())

    async def list_tenants(self) -> list[Tenant]:
        reply = await self._transport.call("GET", "/v1/tenants")
        return [Tenant.parse(f) for f in reply.items()]

    async def issue_tenant_admin_token(
        self, tenant: str, *, description: str = "", expires_in: timedelta | None = None
    ) -> IssuedToken:
        """A tenant's ``tenant-admin`` token (the operator may issue no other role)."""
        path = f"/v1/tenants/{segment(tenant, 'tenant')}/tokens"
        reply = await self._transport.call(
            "POST", path, body=token_request("tenant-admin", description, expires_in)
        )
        return IssuedToken.parse(reply.fields())

    async def list_tokens(self, tenant: str) -> list[TokenInfo]:
        reply = await self._transport.call("GET", f"/v1/tenants/{segment(tenant, 'tenant')}/tokens")
        return [TokenInfo.parse(f) for f in reply.items()]

    async def revoke_token(self, tenant: str, token_id: str | uuid.UUID) -> TokenInfo:
        path = f"/v1/tenants/{segment(tenant, 'tenant')}/tokens/{uuid_text(token_id, 'token id')}"
        reply = await self._transport.call("DELETE", path)
        return TokenInfo.parse(reply.fields())
