"""The release log on the wire (DESIGN.md): checkpoint, entries and proofs, for auditors and admins."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

import msgspec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from litestar import Controller, Request, Response, get
from litestar.di import NamedDependency, Provide
from litestar.params import FromPath, Parameter
from sqlalchemy.ext.asyncio import AsyncSession

from audit.entry import decode_entry
from keyserver.api.auth import SECURITY, provide_principal, tenant_session
from keyserver.api.problems import TOKEN_READ
from keyserver.api.schemas import MAX_INT64
from keyserver.config import Settings
from keyserver.db.models import Tenant
from keyserver.db.session import Database, Scope
from keyserver.errors import NotFound
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import Principal, Role, lookup_tenant
from keyserver.witness.tenant_config import latest_cosigned

LOG_READERS = (Role.AUDITOR, Role.TENANT_ADMIN)
NonNegative = Annotated[int, Parameter(ge=0, le=MAX_INT64)]


class LogKeyOut(msgspec.Struct):
    origin: str
    verifier_key: str
    public_key: str  # base64, raw Ed25519


class EntryOut(msgspec.Struct):
    index: int
    data: str  # base64 of the canonical bytes the leaf hash is computed over
    entry: dict[str, Any]


class EntriesOut(msgspec.Struct):
    start: int
    end: int
    entries: list[EntryOut]


class InclusionOut(msgspec.Struct):
    index: int
    tree_size: int
    leaf_hash: str
    audit_path: list[str]


class ConsistencyOut(msgspec.Struct):
    first: int
    second: int
    proof: list[str]


async def provide_log_reader(
    request: Request[Any, Any, Any], db: NamedDependency[Database]
) -> Principal | None:
    """The caller's token, or None when there is none and the tenant's log is public (checked in
    :func:`log_session`, where the tenant is known). A token that is sent is always checked."""
    if request.headers.get("authorization") is None:
        settings: Settings = request.app.state.settings
        if request.path_params.get("tenant") in settings.public_logs:
            return None
    return await provide_principal(request, db)


@asynccontextmanager
async def log_session(
    db: Database, reader: Principal | None, tenant: str
) -> AsyncIterator[tuple[AsyncSession, Tenant]]:
    """A reader's transaction on a tenant's log: an auditor's or admin's token, or no token for a log
    the operator made public (KEYSERVER_PUBLIC_LOGS)."""
    if reader is not None:
        async with tenant_session(db, reader, tenant, *LOG_READERS) as opened:
            yield opened
        return
    target = await lookup_tenant(db, tenant)
    async with db.transaction(Scope.for_tenant(target.id)) as session:
        yield session, target


class LogController(Controller):
    path = "/v1/tenants/{tenant:str}/log"
    tags = ("release log",)
    security = SECURITY
    dependencies = {"reader": Provide(provide_log_reader)}  # noqa: RUF012 (Litestar's class attribute)

    @get(
        "/checkpoint",
        summary="The latest signed checkpoint (C2SP signed note)",
        media_type="text/plain",
        responses=TOKEN_READ,
    )
    async def checkpoint(
        self,
        reader: NamedDependency[Principal | None],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
    ) -> Response[str]:
        async with log_session(db, reader, tenant) as (session, target):
            head = await release_log.head(session, target)
        return Response(head.checkpoint, media_type="text/plain; charset=utf-8")

    @get(
        "/checkpoint/cosigned",
        summary="The latest checkpoint its witnesses' quorum cosigned (C2SP signed note with cosignatures)",
        media_type="text/plain",
        responses=TOKEN_READ,
    )
    async def cosigned_checkpoint(
        self,
        reader: NamedDependency[Principal | None],
        db: NamedDependency[Database],
        tenant: FromPath[str],
    ) -> Response[str]:
        async with log_session(db, reader, tenant) as (session, target):
            head = await latest_cosigned(session, target.id)
        if head is None:
            raise NotFound("no checkpoint of this log has been cosigned by a quorum of its witnesses")
        return Response(head.note, media_type="text/plain; charset=utf-8")

    @get("/key", summary="The log's checkpoint-signing public key (pin it out of band)", responses=TOKEN_READ)
    async def key(
        self,
        reader: NamedDependency[Principal | None],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
    ) -> LogKeyOut:
        async with log_session(db, reader, tenant) as (session, target):
            log = await release_log.describe(session, target)
        raw = log.public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return LogKeyOut(
            origin=log.origin, verifier_key=log.verifier_key, public_key=base64.b64encode(raw).decode()
        )

    @get(
        "/entries",
        summary="Entries [start, end): canonical bytes (base64) and decoded JSON; at most 1000",
        responses=TOKEN_READ,
    )
    async def entries(
        self,
        reader: NamedDependency[Principal | None],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        start: NonNegative,
        end: NonNegative,
    ) -> EntriesOut:
        async with log_session(db, reader, tenant) as (session, target):
            rows = await release_log.entries(session, target, start, end)
        return EntriesOut(
            start=start,
            end=end,
            entries=[
                EntryOut(index=start + offset, data=base64.b64encode(data).decode(), entry=decode_entry(data))
                for offset, data in enumerate(rows)
            ],
        )

    @get(
        "/proofs/inclusion",
        summary="Audit path of entry `index` in the tree of `tree_size` entries",
        responses=TOKEN_READ,
    )
    async def inclusion(
        self,
        reader: NamedDependency[Principal | None],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        index: NonNegative,
        tree_size: NonNegative,
    ) -> InclusionOut:
        async with log_session(db, reader, tenant) as (session, target):
            proof = await release_log.inclusion_proof(session, target, index, tree_size)
            leaf = await release_log.leaf_hash(session, target, index)
        return InclusionOut(
            index=index, tree_size=tree_size, leaf_hash=leaf.hex(), audit_path=[h.hex() for h in proof]
        )

    @get(
        "/proofs/consistency",
        summary="Consistency proof between the trees of `first` and `second` entries",
        responses=TOKEN_READ,
    )
    async def consistency(
        self,
        reader: NamedDependency[Principal | None],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        first: NonNegative,
        second: NonNegative,
    ) -> ConsistencyOut:
        async with log_session(db, reader, tenant) as (session, target):
            proof = await release_log.consistency_proof(session, target, first, second)
        return ConsistencyOut(first=first, second=second, proof=[h.hex() for h in proof])
