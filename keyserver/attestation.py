"""Attestation results: one verification, several releases (DESIGN.md).

``POST /v1/tenants/{t}/attest`` verifies evidence exactly as a release does (challenge, verifier,
binding) and answers with a short-lived EAR JWT signed by the tenant's own Ed25519 key and bound to the
ephemeral key (``cnf.jkt``). A release may then present ``{"tee": "attestation-result", "token": …}``
instead of evidence: the token is verified against the tenant's JWKS and must be bound to the same
ephemeral key; its claims are appraised like fresh ones. The key is created on first use and stored
wrapped by the key backend, bound to the tenant.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.attestation_token import issue_attestation_result, jwks_for, verify_attestation_result
from keyserver.backends.base import KeyBackend
from keyserver.db.models import AttestationKey, Tenant
from keyserver.db.types import utcnow
from keyserver.db.upsert import insert_ignore
from keyserver.evidence.claims import Claims
from keyserver.tenant_keys import UnwrappedKeys, new_wrapped_ed25519

TOKEN_LIFETIME = timedelta(minutes=5)
ATTESTATION_RESULT = "attestation-result"


def _context(tenant_id: uuid.UUID) -> bytes:
    return b"keyserver/attestation-key/v1/" + tenant_id.bytes


class AttestationIssuer:
    def __init__(self, backend: KeyBackend, issuer: str) -> None:
        self.backend = backend
        self.issuer = issuer
        self._keys = UnwrappedKeys(backend)

    async def _row(self, session: AsyncSession, tenant_id: uuid.UUID) -> AttestationKey:
        query = select(AttestationKey).where(AttestationKey.tenant_id == tenant_id)
        row = (await session.execute(query)).scalar_one_or_none()
        if row is not None:
            return row
        public, wrapped = await new_wrapped_ed25519(self.backend, _context(tenant_id))
        await insert_ignore(
            session,
            AttestationKey,
            {
                "tenant_id": tenant_id,
                "kid": hashlib.sha256(public).hexdigest()[:16],
                "public_key": public,
                "wrapped_private_key": wrapped,
                "backend": self.backend.name,
                "created_at": utcnow(),
            },
        )
        return (await session.execute(query)).scalar_one()

    async def jwks(self, session: AsyncSession, tenant_id: uuid.UUID) -> dict[str, Any]:
        row = await self._row(session, tenant_id)
        return jwks_for({row.kid: Ed25519PublicKey.from_public_bytes(row.public_key)})

    async def issue(
        self,
        session: AsyncSession,
        tenant: Tenant,
        claims: Mapping[str, Any],
        thumbprint: bytes,
        now: datetime,
    ) -> str:
        row = await self._row(session, tenant.id)
        private = await self._keys.get(
            tenant.id, row.public_key, row.wrapped_private_key, _context(tenant.id)
        )
        return issue_attestation_result(
            dict(claims),
            tenant=tenant.name,
            ephemeral_jwk_thumbprint=thumbprint,
            signing_key=private,
            kid=row.kid,
            issuer=self.issuer,
            now=now,
            lifetime=TOKEN_LIFETIME,
        )

    async def verify(
        self, session: AsyncSession, tenant: Tenant, token: str, thumbprint: bytes, now: datetime
    ) -> Claims:
        return verify_attestation_result(
            token,
            jwks=await self.jwks(session, tenant.id),
            tenant=tenant.name,
            issuer=self.issuer,
            now=now,
            expected_jkt=thumbprint,
        )
