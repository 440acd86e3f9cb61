"""The release protocol over HTTP: challenges and key releases (no token — the loader authenticates by
evidence), and the tenant admin's keys."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import Annotated, Any

import msgspec
from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import FromPath, JSONBody

from keyserver.api.problems import (
    LOADER,
    MAX_DETAIL_CHARS,
    PROBLEM_MEDIA_TYPE,
    TYPE_PREFIX,
    bounded_detail,
    problem_responses,
)
from keyserver.api.schemas import Version
from keyserver.db.session import Scope
from keyserver.db.types import utcnow
from keyserver.logs import request_id_var
from keyserver.release import Outcome, ReleaseRequest, ReleaseService
from keyserver.tenancy import lookup_tenant

Name = Annotated[str, msgspec.Meta(min_length=1, max_length=100)]


class ChallengeOut(msgspec.Struct):
    id: str
    nonce: str  # base64url, no padding: the bytes that go into the binding
    expires_at: datetime


class ReleaseBody(msgspec.Struct, forbid_unknown_fields=True):
    challenge: uuid.UUID
    evidence: dict[str, Any]
    ephemeral_key: dict[str, Any]  # public JWK
    version: Version | None = None


class AttestBody(msgspec.Struct, forbid_unknown_fields=True):
    challenge: uuid.UUID
    evidence: dict[str, Any]
    ephemeral_key: dict[str, Any]


class AttestOut(msgspec.Struct):
    token: str  # an EAR JWT; present it to release as {"tee": "attestation-result", "token": …}


class ReceiptOut(msgspec.Struct):
    log_index: int
    tree_size: int
    checkpoint: str
    inclusion_proof: list[str]  # hex, RFC 9162 audit path
    entry: str  # base64: the logged entry's canonical bytes (its leaf hash is SHA-256(0x00 || entry))


class ReleaseOut(msgspec.Struct):
    jwe: str
    kid: str
    receipt: ReceiptOut


def receipt_out(outcome: Outcome) -> ReceiptOut:
    r = outcome.receipt
    return ReceiptOut(
        r.log_index,
        r.tree_size,
        r.checkpoint,
        [h.hex() for h in r.inclusion_proof],
        base64.b64encode(r.entry).decode(),
    )


class ProtocolController(Controller):
    """The loader's endpoints. Each depends on ``release_service`` alone (its ``db`` is the app's): Litestar
    resolves two sibling dependencies in an anyio task group, which measured ~13 % of a challenge's
    server CPU (docs/performance.md, "Seventh pass")."""

    path = "/v1/tenants/{tenant:str}"
    tags = ("release",)

    @post(
        "/challenges",
        summary="A fresh single-use nonce for one release (no token)",
        responses=problem_responses(404, 429, 503),
    )
    async def challenge(
        self,
        release_service: NamedDependency[ReleaseService],
        tenant: FromPath[str],
    ) -> ChallengeOut:
        target = await lookup_tenant(release_service.db, tenant)
        issued = await release_service.limiter.issue_challenge(target, utcnow())
        nonce = base64.urlsafe_b64encode(issued.nonce).rstrip(b"=").decode()
        return ChallengeOut(id=str(issued.id), nonce=nonce, expires_at=issued.expires_at)

    @post(
        "/keys/{name:str}/release",
        status_code=200,
        summary="Release a key wrapped to the ephemeral key (403 with the reason and log index if denied)",
        responses=LOADER,
    )
    async def release(
        self,
        release_service: NamedDependency[ReleaseService],
        tenant: FromPath[str],
        name: FromPath[str],
        data: JSONBody[ReleaseBody],
    ) -> Response[Any]:
        target = await lookup_tenant(release_service.db, tenant)
        outcome = await release_service.release(
            target, ReleaseRequest(name, data.version, data.challenge, data.evidence, data.ephemeral_key)
        )
        if outcome.granted:
            assert outcome.jwe is not None
            assert outcome.kid is not None
            return Response(ReleaseOut(outcome.jwe, outcome.kid, receipt_out(outcome)))
        if outcome.unavailable:
            status, code, title = 503, "unavailable", "A backing service is unavailable"
        elif outcome.retry_after is not None:
            status, code, title = 429, "rate-limited", "Release budget spent"
        else:
            status, code, title = 403, "release-denied", "Release denied"
        body = {
            "type": TYPE_PREFIX + code,
            "title": title,
            "status": status,
            "detail": bounded_detail(outcome.detail),
            "reason": outcome.reason,
            "instance": f"/v1/tenants/{tenant}/keys/{name}/release"[:MAX_DETAIL_CHARS],
            "log_index": outcome.receipt.log_index,
            "receipt": msgspec.to_builtins(receipt_out(outcome)),
            "request_id": request_id_var.get(),
        }
        headers = None
        if outcome.retry_after is not None:
            body["retry_after"] = outcome.retry_after
            headers = {"Retry-After": str(outcome.retry_after)}
        return Response(body, status_code=status, media_type=PROBLEM_MEDIA_TYPE, headers=headers)

    @post(
        "/attest",
        status_code=200,
        summary="Verify evidence once; get an attestation-result token (EAR JWT)",
        responses=LOADER,
    )
    async def attest(
        self,
        release_service: NamedDependency[ReleaseService],
        tenant: FromPath[str],
        data: JSONBody[AttestBody],
    ) -> AttestOut:
        target = await lookup_tenant(release_service.db, tenant)
        token = await release_service.attest(target, data.challenge, data.evidence, data.ephemeral_key)
        return AttestOut(token=token)

    @get(
        "/attest/jwks",
        summary="The JWK Set that verifies this tenant's attestation-result tokens",
        responses=problem_responses(404, 503),
    )
    async def jwks(
        self,
        release_service: NamedDependency[ReleaseService],
        tenant: FromPath[str],
    ) -> dict[str, Any]:
        target = await lookup_tenant(release_service.db, tenant)
        async with release_service.db.transaction(Scope.for_tenant(target.id)) as session:
            return await release_service.attestation.jwks(session, target.id)
