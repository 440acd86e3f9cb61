"""Tenants, principals and their tokens: who may do what, and in which tenant.

Every function takes the acting :class:`Principal` (or an explicit scope) and filters by tenant itself;
row-level security on PostgreSQL is the second line, not the first.
"""

from __future__ import annotations

import re
import uuid
import weakref
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.cache import BoundedCache
from keyserver.db.models import ApiToken, Tenant
from keyserver.db.session import Database, Scope
from keyserver.db.types import utcnow
from keyserver.errors import Conflict, Forbidden, InvalidRequest, NotFound, Unauthenticated
from keyserver.releaselog import records
from keyserver.tokens import hash_token, new_token, parse_token, token_matches

if TYPE_CHECKING:
    from keyserver.releaselog.store import ReleaseLog

TENANT_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\Z")
MAX_TOKEN_LIFETIME = timedelta(days=3650)


class Role(StrEnum):
    OPERATOR = "operator"
    TENANT_ADMIN = "tenant-admin"
    CI_SIGNER = "ci-signer"
    AUDITOR = "auditor"


TENANT_ROLES = (Role.TENANT_ADMIN, Role.CI_SIGNER, Role.AUDITOR)


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    token_id: uuid.UUID
    role: Role
    tenant_id: uuid.UUID | None
    tenant_name: str | None
    # When the caller's own token expires (None: never): a token it issues expires no later.
    expires_at: datetime | None = None

    @property
    def is_operator(self) -> bool:
        return self.role is Role.OPERATOR

    @property
    def scope(self) -> Scope:
        if self.tenant_id is None:
            return Scope.for_operator()
        return Scope.for_tenant(self.tenant_id)


@dataclass(frozen=True)
class IssuedToken:
    """A token as created: ``secret`` is the only copy of the credential and is shown once."""

    token: ApiToken
    secret: str


# --- authentication ---------------------------------------------------------------------------------


async def authenticate(db: Database, raw_token: str, now: datetime | None = None) -> Principal:
    parsed = parse_token(raw_token)
    scope = Scope.for_operator() if parsed.tenant_id is None else Scope.for_tenant(parsed.tenant_id)
    now = now or utcnow()
    async with db.transaction(scope) as session:
        row = await session.get(ApiToken, parsed.token_id)
        if row is None or row.tenant_id != parsed.tenant_id or not token_matches(raw_token, row.secret_hash):
            raise Unauthenticated("the bearer token is not valid for this keyserver")
        if row.revoked_at is not None:
            raise Unauthenticated("the bearer token was revoked; ask your tenant admin for a new one")
        if row.expires_at is not None and row.expires_at <= now:
            raise Unauthenticated(
                f"the bearer token expired at {row.expires_at.isoformat()}; ask for a new one"
            )
        tenant_name = None
        if row.tenant_id is not None:
            tenant = await session.get(Tenant, row.tenant_id)
            if tenant is None:  # cannot happen with the foreign key; fail closed all the same
                raise Unauthenticated("the bearer token's tenant no longer exists")
            tenant_name = tenant.name
    return Principal(
        token_id=row.id,
        role=Role(row.role),
        tenant_id=row.tenant_id,
        tenant_name=tenant_name,
        expires_at=row.expires_at,
    )


# --- authorisation ----------------------------------------------------------------------------------


def require_operator(principal: Principal) -> None:
    if not principal.is_operator:
        raise Forbidden("this action needs the operator credential")


def require_role(principal: Principal, *roles: Role) -> None:
    if principal.role not in roles:
        allowed = ", ".join(role.value for role in roles)
        raise Forbidden(f"this action needs one of the roles: {allowed}; this token is {principal.role}")


async def resolve_tenant(session: AsyncSession, principal: Principal, name: str) -> Tenant:
    """The tenant named in a request path, as far as ``principal`` may see it.

    Another tenant's name gives exactly the same answer as a name that does not exist, so a token
    cannot be used to probe which tenants a keyserver serves.
    """
    not_found = NotFound(f"no tenant named {name!r} is visible to this credential")
    if not principal.is_operator and principal.tenant_name != name:
        raise not_found
    query = select(Tenant).where(Tenant.name == name)
    if principal.tenant_id is not None:
        query = query.where(Tenant.id == principal.tenant_id)
    tenant = (await session.execute(query)).scalar_one_or_none()
    if tenant is None:
        raise not_found
    return tenant


# --- tenants ----------------------------------------------------------------------------------------


def validate_tenant_name(name: str) -> None:
    if not TENANT_NAME_RE.match(name):
        raise InvalidRequest(
            f"tenant name {name!r} is not valid: use 1-63 lowercase letters, digits and inner hyphens"
        )


async def create_tenant(session: AsyncSession, name: str) -> Tenant:
    """Operator scope only (row-level security refuses the insert otherwise)."""
    validate_tenant_name(name)
    tenant = Tenant(id=uuid.uuid4(), name=name, created_at=utcnow())
    try:
        async with session.begin_nested():  # add inside: pending rows flush BEFORE a SAVEPOINT
            session.add(tenant)
            await session.flush()
    except IntegrityError:
        raise Conflict(f"a tenant named {name!r} already exists") from None
    return tenant


async def list_tenants(session: AsyncSession) -> list[Tenant]:
    """Operator scope: every tenant."""
    return list((await session.execute(select(Tenant).order_by(Tenant.name))).scalars())


# --- tokens -----------------------------------------------------------------------------------------


def check_may_issue(principal: Principal, role: Role) -> None:
    """The operator bootstraps a tenant with a tenant-admin token; everything else is the tenant's."""
    if role is Role.OPERATOR:
        raise Forbidden("operator tokens are created on the server only: `keyserver token create --operator`")
    if principal.is_operator:
        if role is not Role.TENANT_ADMIN:
            raise Forbidden("the operator issues tenant-admin tokens only; the tenant admin issues the rest")
        return
    require_role(principal, Role.TENANT_ADMIN)


async def issue_token(
    session: AsyncSession,
    *,
    tenant_id: uuid.UUID | None,
    role: Role,
    description: str = "",
    expires_in: timedelta | None = None,
    created_by: uuid.UUID | None = None,
    not_after: datetime | None = None,
) -> IssuedToken:
    """Create a token. Callers check authorisation first (:func:`check_may_issue`). ``not_after``: the
    latest it may expire (its issuer's own expiry), whatever ``expires_in`` asks."""
    if (role is Role.OPERATOR) != (tenant_id is None):
        raise InvalidRequest("operator tokens have no tenant and every other token has exactly one")
    if expires_in is not None and not timedelta(0) < expires_in <= MAX_TOKEN_LIFETIME:
        raise InvalidRequest("a token's lifetime must be positive and at most ten years")
    if len(description) > 200:
        raise InvalidRequest("a token description is at most 200 characters")
    token_id = uuid.uuid4()
    secret = new_token(tenant_id, token_id)
    now = utcnow()
    token = ApiToken(
        id=token_id,
        tenant_id=tenant_id,
        role=role.value,
        secret_hash=hash_token(secret),
        description=description,
        created_at=now,
        expires_at=_earliest(now + expires_in if expires_in is not None else None, not_after),
        created_by=created_by,
    )
    session.add(token)
    await session.flush()
    return IssuedToken(token=token, secret=secret)


# Who made or revoked a tenant token when no token did: the server's own command line, on its host.
HOST = "host"


async def issue_tenant_token(
    session: AsyncSession,
    log: ReleaseLog,
    tenant: Tenant,
    principal: Principal | None,
    *,
    role: Role,
    description: str = "",
    expires_in: timedelta | None = None,
) -> IssuedToken:
    """A token of ``tenant`` issued by ``principal`` (checked with :func:`check_may_issue`), in a
    transaction in the tenant's scope, and logged there (``token-issued``): the tenant's auditors see every
    credential made for it — the operator's too. It expires no later than the token that issued it, so a
    token cannot outlive, through the tokens it made, the lifetime its issuer was given. ``principal``
    None: the server's own command line (``keyserver token create``), logged as issued by the host."""
    issued = await issue_token(
        session,
        tenant_id=tenant.id,
        role=role,
        description=description,
        expires_in=expires_in,
        created_by=None if principal is None else principal.token_id,
        not_after=None if principal is None else principal.expires_at,
    )
    await log.append(session, tenant, [_token_record(records.TOKEN_ISSUED, principal, issued.token)])
    return issued


def _token_record(kind: str, principal: Principal | None, token: ApiToken) -> dict[str, Any]:
    return records.record(
        kind,
        principal=None if principal is None else f"token:{principal.token_id}",
        issuer_role=HOST if principal is None else principal.role.value,
        token=_logged_token(token),
    )


def _logged_token(token: ApiToken) -> dict[str, Any]:
    # Never the secret nor its hash; the description is the issuer's own text, not logged either.
    expires = token.expires_at
    return {
        "id": str(token.id),
        "role": token.role,
        "expires_at": None if expires is None else records.timestamp(expires),
    }


def _earliest(first: datetime | None, second: datetime | None) -> datetime | None:
    """The earlier of two expiries (None: never)."""
    if first is None or second is None:
        return first or second
    return min(first, second)


async def list_tokens(session: AsyncSession, tenant_id: uuid.UUID | None) -> list[ApiToken]:
    """The tokens of one tenant (``None``: the operator tokens)."""
    query = select(ApiToken).order_by(ApiToken.created_at)
    if tenant_id is None:
        query = query.where(ApiToken.tenant_id.is_(None))
    else:
        query = query.where(ApiToken.tenant_id == tenant_id)
    return list((await session.execute(query)).scalars())


async def revoke_tenant_token(
    session: AsyncSession, log: ReleaseLog, tenant: Tenant, principal: Principal | None, token_id: uuid.UUID
) -> ApiToken:
    """:func:`revoke_token` of one of ``tenant``'s tokens, logged (``token-revoked``) when it takes effect:
    revoking a revoked token again changes nothing and logs nothing."""
    # Locked: two revocations at once are one revocation and one entry (the second sees the first's).
    token = await _token_of(session, tenant.id, token_id, for_update=True)
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        await session.flush()
        await log.append(session, tenant, [_token_record(records.TOKEN_REVOKED, principal, token)])
    return token


async def _token_of(
    session: AsyncSession, tenant_id: uuid.UUID | None, token_id: uuid.UUID, *, for_update: bool = False
) -> ApiToken:
    query = select(ApiToken).where(ApiToken.id == token_id)
    if for_update:
        # populate_existing: a row this session already holds is read afresh once its lock is granted.
        query = query.with_for_update().execution_options(populate_existing=True)
    if tenant_id is None:
        query = query.where(ApiToken.tenant_id.is_(None))
    else:
        query = query.where(ApiToken.tenant_id == tenant_id)
    token = (await session.execute(query)).scalar_one_or_none()
    if token is None:
        raise NotFound(f"no token {token_id} in this tenant")
    return token


async def revoke_token(session: AsyncSession, tenant_id: uuid.UUID | None, token_id: uuid.UUID) -> ApiToken:
    """Revoke a token (the operator's, from the server's command line; a tenant's: revoke_tenant_token)."""
    token = await _token_of(session, tenant_id, token_id)
    if token.revoked_at is None:
        token.revoked_at = utcnow()
        await session.flush()
    return token


async def has_operator_token(session: AsyncSession) -> bool:
    query = select(ApiToken.id).where(ApiToken.role == Role.OPERATOR.value).limit(1)
    return (await session.execute(query)).first() is not None


# name -> (id, name, created_at) of tenants found, per database: a loader's release and its challenge
# each resolve the tenant, a transaction of their own. Tenants are never renamed or deleted; the TTL
# bounds how long a change would go unseen should that ever be added. Unknown names are not cached.
TENANT_LOOKUP_TTL_S = 60.0
_lookups: weakref.WeakKeyDictionary[Database, BoundedCache[str, tuple[uuid.UUID, str, datetime]]] = (
    weakref.WeakKeyDictionary()
)


async def lookup_tenant(db: Database, name: str) -> Tenant:
    """The tenant named in an unauthenticated request (loaders, enrolling TPMs): registry only."""
    cache = _lookups.get(db)
    if cache is None:
        cache = _lookups.setdefault(db, BoundedCache(4096, ttl_s=TENANT_LOOKUP_TTL_S))
    known = cache.get(name)
    if known is not None:
        # A fresh, transient row each time: callers never share one ORM instance between sessions.
        return Tenant(id=known[0], name=known[1], created_at=known[2])
    async with db.transaction(Scope.for_tenant_lookup()) as session:
        query = select(Tenant).where(Tenant.name == name)
        tenant = (await session.execute(query)).scalar_one_or_none()
    if tenant is None:
        raise NotFound(f"no tenant named {name!r}")
    cache.put(name, (tenant.id, tenant.name, tenant.created_at))
    return tenant
