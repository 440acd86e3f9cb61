"""The loader's calls (no token: it authenticates with hardware evidence bound to a challenge).

The loader builds the evidence itself (docs/binding.md); these calls carry it. A release that the
keyserver refuses raises ``ReleaseDenied`` with the reason and the receipt of the logged denial.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any

from clients.sdk.errors import InvalidArgument
from clients.sdk.models import Challenge, ReleaseGranted
from clients.sdk.routes import TenantRoutes, positive, uuid_text
from clients.sdk.transport import segment

# JWK members that hold private key material (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2).
PRIVATE_JWK_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


def public_jwk(jwk: Mapping[str, Any]) -> dict[str, Any]:
    """The ephemeral key as sent: refused if it holds private material, which must never leave the TEE."""
    if not isinstance(jwk, Mapping):
        raise InvalidArgument("the ephemeral key is a JWK (a JSON object)")
    private = sorted(PRIVATE_JWK_MEMBERS & set(jwk))
    if private:
        raise InvalidArgument(
            f"the ephemeral JWK holds private members ({', '.join(private)}); send its public part only"
        )
    return dict(jwk)


def evidence_object(evidence: Mapping[str, Any]) -> dict[str, Any]:
    if not isinstance(evidence, Mapping):
        raise InvalidArgument("evidence is a JSON object such as {'tee': 'tpm', …} (docs/binding.md)")
    return dict(evidence)


class LoaderApi(TenantRoutes):
    async def challenge(self) -> Challenge:
        """A fresh single-use nonce (two minutes) to bind into the evidence."""
        reply = await self._transport.call("POST", self._path("challenges"), authenticated=False)
        return Challenge.parse(reply.fields())

    async def release(
        self,
        key: str,
        challenge_id: str | uuid.UUID,
        evidence: Mapping[str, Any],
        ephemeral_jwk: Mapping[str, Any],
        version: int | None = None,
    ) -> ReleaseGranted:
        """The key, wrapped to ``ephemeral_jwk``, and the receipt of the logged grant. Verify the receipt
        (``clients.loader.receipt``, with the witness keys and quorum you pin: ``cosignatures=``) before
        using the key."""
        body: dict[str, Any] = {
            "challenge": uuid_text(challenge_id, "challenge id"),
            "evidence": evidence_object(evidence),
            "ephemeral_key": public_jwk(ephemeral_jwk),
        }
        if version is not None:
            body["version"] = positive(version, "version")
        path = self._path("keys", segment(key, "key name"), "release")
        reply = await self._transport.call("POST", path, body=body, authenticated=False)
        return ReleaseGranted.parse(reply.fields())

    async def attest(
        self, challenge_id: str | uuid.UUID, evidence: Mapping[str, Any], ephemeral_jwk: Mapping[str, Any]
    ) -> str:
        """An attestation-result token (EAR JWT, five minutes) bound to ``ephemeral_jwk``; present it to
        :meth:`release` as evidence ``{"tee": "attestation-result", "token": …}``."""
        body = {
            "challenge": uuid_text(challenge_id, "challenge id"),
            "evidence": evidence_object(evidence),
            "ephemeral_key": public_jwk(ephemeral_jwk),
        }
        reply = await self._transport.call("POST", self._path("attest"), body=body, authenticated=False)
        return reply.fields().string("token")

    async def jwks(self) -> dict[str, Any]:
        """The JWK Set that verifies this tenant's attestation-result tokens."""
        fields = (
            await self._transport.call("GET", self._path("attest", "jwks"), authenticated=False)
        ).fields()
        fields.mappings("keys")  # a JWK Set has its keys, or it is not one
        return fields.raw
