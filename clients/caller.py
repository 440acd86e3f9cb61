"""The caller of a confidential-inference deployment: a user's side of the end-to-end channel.

Before it sends a prompt, the caller convinces itself that the key it will seal the prompt to lives in
a loader that the keyserver attested: it fetches the loader's public key and attestation-result token
through the (untrusted) inference server, verifies the token with the JWKS it fetches from the
keyserver itself (issuer, tenant, lifetime, ``cnf.jkt`` == the key's thumbprint), and checks the
attested claims against the values it expects (e.g. the loader's measured PCR as published by the CI
signer). Only then does it seal the request to that key; the completion comes back sealed to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from clients.channel import ChannelError, message_from_text, message_to_text, seal_request
from clients.sdk import KeyserverClient
from keyserver.attestation_token import verify_attestation_result
from keyserver.binding import jwk_thumbprint, jwk_thumbprint_b64url, parse_ephemeral_jwk
from keyserver.errors import EvidenceError, InvalidRequest
from keyserver.evidence.claims import Claims


class LoaderNotTrusted(Exception):
    """The loader behind the inference server could not be shown to be an attested, expected loader."""


class InferenceFailed(Exception):
    """The loader answered, but refused the request (e.g. a program without a valid signature)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class AttestedLoader:
    public_jwk: Mapping[str, Any]
    claims: Claims
    attested_jkt: str  # the thumbprint the verified token names (cnf.jkt): requests are sealed only to it


def check_expected_claims(
    claims: Mapping[str, Any], expected_claims: Mapping[str, AbstractSet[Any]], *, allow_debug: bool = False
) -> None:
    """Refuse claims that are not among the expected values, or of a debuggable TEE (unless allowed)."""
    if not allow_debug and claims.get("debug") is not False:
        raise LoaderNotTrusted(
            f"the loader's TEE does not claim debug: false ({claims.get('debug')!r}): its host could read"
            " the prompt; refusing (allow_debug=True to accept, for testing only)"
        )
    for name, accepted in expected_claims.items():
        value = claims.get(name)
        if isinstance(value, list | dict) or not any(type(value) is type(a) and value == a for a in accepted):
            raise LoaderNotTrusted(
                f"the loader's {name} is {claims.get(name)!r}, not one of the expected values"
            )


async def attested_loader(
    inference: httpx.AsyncClient,
    keyserver: KeyserverClient,
    *,
    tenant: str,
    issuer: str,
    expected_claims: Mapping[str, AbstractSet[Any]],
    now: datetime | None = None,
    allow_debug: bool = False,
) -> AttestedLoader:
    """The loader's key, once its attestation result verifies and its claims are among ``expected``.

    ``expected_claims`` maps a claim name to the set of values accepted for it; an empty mapping is
    refused (an empty policy would trust any attested machine). Whatever it says, the TEE must claim
    ``debug: false`` (a debuggable TEE's memory is open to its host) unless ``allow_debug`` is given.
    Values match by type as well as value (``1`` is not ``True``).
    """
    if not expected_claims:
        raise LoaderNotTrusted("no expected claims: say which loader you trust (e.g. its measured PCR)")
    for name, accepted in expected_claims.items():
        if not isinstance(accepted, AbstractSet):  # a str would match substrings, a list is ambiguous
            raise TypeError(f"expected_claims[{name!r}] is a set of accepted values")
    answer = await inference.get("/v1/attestation")
    if answer.status_code != 200:
        raise LoaderNotTrusted(f"the inference server answered {answer.status_code} for the attestation")
    try:
        document = answer.json()
    except ValueError:
        raise LoaderNotTrusted("the attestation is not JSON") from None
    jwk = document.get("public_key") if isinstance(document, dict) else None
    token = document.get("token") if isinstance(document, dict) else None
    if not isinstance(jwk, dict) or not isinstance(token, str):
        raise LoaderNotTrusted('the attestation is {"public_key": JWK, "token": EAR JWT}')
    try:
        parse_ephemeral_jwk(jwk)
        claims = verify_attestation_result(
            token,
            jwks=await keyserver.loader.jwks(),
            tenant=tenant,
            issuer=issuer,
            now=now or datetime.now(UTC),
            expected_jkt=jwk_thumbprint(jwk),
        )
    except (EvidenceError, InvalidRequest) as exc:
        raise LoaderNotTrusted(f"the loader's attestation does not verify: {exc.message}") from None
    check_expected_claims(claims, expected_claims, allow_debug=allow_debug)
    return AttestedLoader(jwk, claims, jwk_thumbprint_b64url(jwk))  # == cnf.jkt, verified above


async def complete(
    inference: httpx.AsyncClient,
    loader: AttestedLoader,
    program: Mapping[str, Any],
    inputs: Mapping[str, Any],
) -> dict[str, Any]:
    """Run a signed ``program`` on ``inputs`` in the attested loader; its outputs, opened here only."""
    request = {"program": dict(program), "inputs": dict(inputs)}
    message, context = seal_request(loader.public_jwk, request, attested_jkt=loader.attested_jkt)
    answer = await inference.post("/v1/completions", json={"message": message_to_text(message)})
    if answer.status_code != 200:
        raise InferenceFailed("inference-failed", f"the inference server answered {answer.status_code}")
    sealed = answer.json().get("message")
    if not isinstance(sealed, str):
        raise InferenceFailed("inference-failed", 'the answer is not {"message": <sealed response>}')
    try:
        payload = context.open_response(message_from_text(sealed))
    except ChannelError as exc:
        raise InferenceFailed("response-invalid", f"the answer does not open: {exc}") from None
    if "error" in payload:
        error = payload["error"]
        raise InferenceFailed(str(error.get("reason")), str(error.get("message")))
    outputs = payload.get("outputs")
    if not isinstance(outputs, dict):
        raise InferenceFailed("inference-failed", "the loader's answer has no outputs")
    return outputs
