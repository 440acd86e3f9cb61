"""Release policies over HTTP: versions, explicit activation, and a dry run that explains each check."""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver import policies
from keyserver.api.auth import SECURITY, tenant_session
from keyserver.api.problems import TOKEN_READ, TOKEN_WRITE
from keyserver.api.schemas import Version, VersionPath
from keyserver.appraisal import decide, prepare
from keyserver.binding import MIN_NONCE_BYTES
from keyserver.db.models import Policy
from keyserver.db.session import Database
from keyserver.db.types import utcnow
from keyserver.ephemeral_key import parse_ephemeral_jwk
from keyserver.errors import EvidenceError, InvalidRequest, NotFound
from keyserver.evidence.claims import Claims
from keyserver.evidence.dispatch import check_evidence_binding, verify_evidence
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import Principal, Role

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
MAX_DRY_RUN_NONCE_BYTES = 64
_BASE64URL = re.compile(r"[A-Za-z0-9_-]{1,100}")


class PolicyCreate(msgspec.Struct, forbid_unknown_fields=True):
    name: Name
    document: dict[str, Any]  # policy/document.py's format (docs/policy.md)


class PolicyOut(msgspec.Struct):
    name: str
    version: int
    sha256: str
    active: bool
    created_at: datetime
    document: dict[str, Any]

    @classmethod
    def of(cls, row: Policy, active: bool) -> PolicyOut:
        return cls(row.name, row.version, row.sha256, active, row.created_at, json.loads(row.document))


class DryRun(msgspec.Struct, forbid_unknown_fields=True):
    # Either claims, or raw evidence that the server verifies first (as a release would, except that
    # the nonce is the one the evidence was made for, not a challenge issued and consumed here: a dry
    # run proves nothing about freshness and releases nothing).
    claims: dict[str, Any] | None = None
    evidence: dict[str, Any] | None = None
    nonce: str | None = None  # base64url: the bytes the evidence was bound to
    ephemeral_key: dict[str, Any] | None = None  # the public JWK the evidence was bound to
    version: Version | None = None  # default: the active version


class DryRunOut(msgspec.Struct):
    granted: bool
    reason: str | None
    detail: str
    policy: dict[str, Any] | None
    reference_values: list[dict[str, Any]]
    results: list[dict[str, Any]]
    # What was appraised: the claims given, or those the evidence verified to (None if it did not).
    claims: dict[str, Any] | None = None
    evidence_verified: bool | None = None  # None: claims were given, no evidence


class PolicyController(Controller):
    path = "/v1/tenants/{tenant:str}/policies"
    tags = ("policies",)
    security = SECURITY

    @post(
        "/",
        summary="Add a policy version (tenant-admin); it takes effect only when activated",
        responses=TOKEN_WRITE,
    )
    async def add(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        data: JSONBody[PolicyCreate],
    ) -> PolicyOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            row = await policies.add_policy_version(
                session,
                release_log,
                target,
                name=data.name,
                document=data.document,
                principal=principal.token_id,
            )
        return PolicyOut.of(row, active=False)

    @get("/", summary="Every version of every policy, with the active ones marked", responses=TOKEN_READ)
    async def list_all(
        self, principal: NamedDependency[Principal], db: NamedDependency[Database], tenant: FromPath[str]
    ) -> list[PolicyOut]:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN, Role.AUDITOR) as (
            session,
            target,
        ):
            return [
                PolicyOut.of(row, active) for row, active in await policies.list_policies(session, target.id)
            ]

    @post(
        "/{name:str}/{version:int}/activate",
        status_code=200,
        summary="Activate a version (runs its examples)",
        responses=TOKEN_WRITE,
    )
    async def activate(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        release_log: NamedDependency[ReleaseLog],
        tenant: FromPath[str],
        name: FromPath[str],
        version: VersionPath,
    ) -> PolicyOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN) as (session, target):
            await policies.activate(session, release_log, target, name, version, principal=principal.token_id)
            row = await session.get(Policy, (target.id, name, version))
            assert row is not None
        return PolicyOut.of(row, active=True)

    @post(
        "/{name:str}/dry-run",
        status_code=200,
        summary="Say, check by check, what the policy decides on claims",
        responses=TOKEN_WRITE,
    )
    async def dry_run(
        self,
        principal: NamedDependency[Principal],
        db: NamedDependency[Database],
        tenant: FromPath[str],
        name: FromPath[str],
        data: JSONBody[DryRun],
    ) -> DryRunOut:
        async with tenant_session(db, principal, tenant, Role.TENANT_ADMIN, Role.AUDITOR) as (
            session,
            target,
        ):
            if data.version is None:
                row = await policies.active_policy(session, target.id, name)
            else:
                row = await session.get(Policy, (target.id, name, data.version))
            if row is None or row.tenant_id != target.id:
                raise NotFound(f"no such version of policy {name!r} (or none is active)")
            now = utcnow()
            if data.evidence is None:
                if data.claims is None:
                    raise InvalidRequest("a dry run needs either claims or evidence")
                claims, verified = data.claims, None
            else:
                try:
                    claims = await _verified_claims(session, target.id, data, now)
                except EvidenceError as exc:
                    return DryRunOut(False, exc.reason, exc.message, None, [], [], None, False)
                verified = True
            prepared = await prepare(session, target.id, row)
        # After the transaction: the evaluation holds no lock and no pooled connection while it runs.
        result = await decide(prepared, claims, now)
        return DryRunOut(
            result.granted,
            result.reason,
            result.detail,
            result.policy_ref,
            result.reference_value_refs,
            result.results,
            dict(claims),
            verified,
        )


def _nonce(text: str) -> bytes:
    """The nonce as the challenge route hands it out: unpadded base64url of 16 to 64 bytes."""
    if not _BASE64URL.fullmatch(text):
        raise InvalidRequest("nonce must be unpadded base64url, as the challenge route gives it")
    try:
        nonce = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidRequest("nonce must be unpadded base64url, as the challenge route gives it") from None
    if not MIN_NONCE_BYTES <= len(nonce) <= MAX_DRY_RUN_NONCE_BYTES:
        raise InvalidRequest(
            f"a nonce has {MIN_NONCE_BYTES} to {MAX_DRY_RUN_NONCE_BYTES} bytes, not {len(nonce)}"
        )
    return nonce


async def _verified_claims(
    session: AsyncSession, tenant_id: uuid.UUID, data: DryRun, now: datetime
) -> Claims:
    """The claims of evidence that verifies, bound to the nonce and key the caller says it was made for."""
    if data.claims is not None:
        raise InvalidRequest("give either claims or evidence, not both")
    if data.nonce is None or data.ephemeral_key is None:
        raise InvalidRequest(
            "evidence is bound to a nonce and an ephemeral key: give the ones it was made for "
            "(nonce as base64url, ephemeral_key as a public JWK)"
        )
    nonce = _nonce(data.nonce)
    _key, jwk = parse_ephemeral_jwk(data.ephemeral_key)
    assert data.evidence is not None
    verified = await verify_evidence(
        session, tenant_id, data.evidence, nonce=nonce, ephemeral_jwk=jwk, now=now
    )
    check_evidence_binding(verified, nonce, jwk)
    return verified.claims
