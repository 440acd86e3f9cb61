"""Request and response bodies. Request bodies forbid unknown fields: a typo is an error, not a no-op."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec
from litestar.params import PathParameter

from keyserver.db.models import ApiToken, Tenant

# Log indexes are stored as 64-bit integers, versions too; a larger number names nothing and must be a
# 400 before it reaches the database (where it would overflow the column, a 500). Versions are also
# written into release-log entries, whose canonical JSON carries integers up to 2^53 - 1 only (I-JSON,
# RFC 7493): a release naming a larger version could be neither granted nor logged.
MAX_INT64 = 2**63 - 1
MAX_VERSION = 2**53 - 1
Version = Annotated[int, msgspec.Meta(ge=1, le=MAX_VERSION)]
VersionPath = Annotated[int, PathParameter(ge=1, le=MAX_VERSION)]

TenantName = Annotated[
    str, msgspec.Meta(min_length=1, max_length=63, pattern=r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
]
TenantRoleName = Literal["tenant-admin", "ci-signer", "auditor"]


class TenantCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: TenantName


class TenantOut(msgspec.Struct):
    id: str
    name: str
    created_at: datetime

    @classmethod
    def of(cls, tenant: Tenant) -> TenantOut:
        return cls(id=str(tenant.id), name=tenant.name, created_at=tenant.created_at)


class TokenCreate(msgspec.Struct, forbid_unknown_fields=True):
    role: TenantRoleName
    description: Annotated[str, msgspec.Meta(max_length=200)] = ""
    # Omitted: the token does not expire (revoke it instead). At most ten years.
    expires_in_seconds: Annotated[int, msgspec.Meta(gt=0, le=10 * 365 * 86400)] | None = None


class TokenOut(msgspec.Struct):
    id: str
    tenant: str | None
    role: str
    description: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    # The token that issued this one (None: made on the server's command line, or at first start).
    created_by: str | None = None

    @classmethod
    def of(cls, token: ApiToken, tenant_name: str | None) -> TokenOut:
        return cls(
            id=str(token.id),
            tenant=tenant_name,
            role=token.role,
            description=token.description,
            created_at=token.created_at,
            expires_at=token.expires_at,
            revoked_at=token.revoked_at,
            created_by=None if token.created_by is None else str(token.created_by),
        )


class TokenIssued(msgspec.Struct):
    """``token`` is the credential itself; it is shown here once and stored nowhere in clear."""

    token: str
    info: TokenOut


class WhoAmI(msgspec.Struct):
    token_id: str
    role: str
    tenant: str | None


class Status(msgspec.Struct):
    status: str
