"""The keyserver client: one connection pool, one credential, one tenant, calls grouped by role."""

from __future__ import annotations

from types import TracebackType

import httpx

from clients.sdk.admin import AdminApi
from clients.sdk.auditor import AuditorApi
from clients.sdk.ci import CiApi
from clients.sdk.errors import InvalidArgument
from clients.sdk.loader import LoaderApi
from clients.sdk.models import Tenant, WhoAmI
from clients.sdk.operator import OperatorApi
from clients.sdk.transport import Transport, segment

DEFAULT_TIMEOUT_SECONDS = 30.0


class KeyserverClient:
    """Talk to a keyserver.

    Build it from a base URL (the client owns its connection pool and closes it) or from an existing
    ``httpx.AsyncClient`` (``http=``; the caller keeps ownership). ``token`` is the bearer credential
    (none for a loader); ``tenant`` the tenant whose routes the role groups address::

        async with KeyserverClient("https://ks.example", token=admin_token, tenant="acme") as ks:
            await ks.admin.create_key("weights", policy="prod")

    Groups: ``operator``, ``admin``, ``ci``, ``loader``, ``auditor``. The server decides what a token
    may do; the groups only say which role each call is meant for.
    """

    def __init__(
        self,
        base_url: str | None = None,
        *,
        http: httpx.AsyncClient | None = None,
        token: str | None = None,
        tenant: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        trust_env: bool = True,
    ) -> None:
        if (base_url is None) == (http is None):
            raise InvalidArgument("give either base_url or http (an httpx.AsyncClient), not both or neither")
        if http is not None:
            transport = Transport(http, token, owns_http=False)
        else:
            # trust_env=False: no proxy or CA bundle from the environment (the loader's choice: what it
            # trusts must be measured, and the environment is not).
            pool = httpx.AsyncClient(
                base_url=_base_url(base_url or ""),
                timeout=timeout,
                follow_redirects=False,
                trust_env=trust_env,
            )
            transport = Transport(pool, token, owns_http=True)
        self._setup(transport, tenant)

    def _setup(self, transport: Transport, tenant: str | None) -> None:
        if tenant is not None:
            segment(tenant, "tenant")
        self._transport = transport
        self.tenant = tenant
        self.operator = OperatorApi(transport)
        self.admin = AdminApi(transport, tenant)
        self.ci = CiApi(transport, tenant)
        self.loader = LoaderApi(transport, tenant)
        self.auditor = AuditorApi(transport, tenant)

    @classmethod
    def _sharing(cls, transport: Transport, tenant: str | None) -> KeyserverClient:
        client = cls.__new__(cls)
        client._setup(transport, tenant)
        return client

    def with_token(self, token: str | None) -> KeyserverClient:
        """A client on the same connection pool with another credential (it does not own the pool:
        close the original, not this one)."""
        return self._sharing(self._transport.with_token(token), self.tenant)

    def for_tenant(self, tenant: str) -> KeyserverClient:
        """A client for another tenant's routes, same credential and pool (not owned)."""
        return self._sharing(self._transport.shared(), tenant)

    @property
    def http(self) -> httpx.AsyncClient:
        return self._transport.http

    async def whoami(self) -> WhoAmI:
        """The caller's token id, role and tenant."""
        return WhoAmI.parse((await self._transport.call("GET", "/v1/whoami")).fields())

    async def get_tenant(self, name: str | None = None) -> Tenant:
        """One tenant (default: this client's), as the operator or the tenant's own tokens see it."""
        tenant = name or self.tenant
        if tenant is None:
            raise InvalidArgument("name a tenant, or build the client with tenant=…")
        reply = await self._transport.call("GET", f"/v1/tenants/{segment(tenant, 'tenant')}")
        return Tenant.parse(reply.fields())

    async def aclose(self) -> None:
        await self._transport.aclose()

    async def __aenter__(self) -> KeyserverClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        # Never the token itself.
        credential = "a token" if self._transport.has_token else "no token"
        return f"<KeyserverClient {self.http.base_url} tenant={self.tenant!r} with {credential}>"


def _base_url(base_url: str) -> str:
    try:
        url = httpx.URL(base_url)
    except (httpx.InvalidURL, TypeError):
        raise InvalidArgument(f"{base_url!r} is not a URL") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise InvalidArgument(f"the keyserver URL is http(s)://host[:port][/prefix], not {base_url!r}")
    if url.userinfo:
        raise InvalidArgument("put no credentials in the keyserver URL; pass token=… instead")
    return str(url)
