"""The caller of a confidential-inference deployment: a user's side of the end-to-end channel.

Before it sends a prompt, the caller convinces itself that the key it will seal the prompt to lives in
a loader that the keyserver attested: it fetches the loader's public key and attestation-result token
through the (untrusted) inference server, verifies the token with the JWKS it fetches from the
keyserver itself (issuer, tenant, lifetime, ``cnf.jkt`` == the key's thumbprint), and checks the
attested claims against the values it expects (e.g. the loader's measured PCR as published by the CI
signer). Only then does it seal the request to that key; the completion comes back sealed to it.

With k-of-n release (docs/threshold.md) the caller can require the same of k of n independent
keyservers: ``attested_loader_k_of_n`` seals only once k of them, each configured on its own (tenant,
issuer, JWKS fetched from it), signed an attestation result for the very key it seals to.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from clients.channel import ChannelError, message_from_text, message_to_text, seal_request
from clients.sdk import KeyserverClient, KeyserverClientError
from keyserver.attestation_token import verify_attestation_result
from keyserver.binding import jwk_thumbprint, jwk_thumbprint_b64url
from keyserver.ephemeral_key import parse_ephemeral_jwk
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


MAX_ATTESTATION_TOKENS = 32  # a loader presents one per keyserver; more is refused, not tried


@dataclass(frozen=True)
class TrustedKeyserver:
    """One of the n keyservers the caller accepts attestation results from, configured on its own."""

    label: str  # the caller's name for it, used in refusals
    tenant: str
    issuer: str  # its log origin, the attestation result's "iss"
    keyserver: KeyserverClient  # the JWKS is fetched from the keyserver itself, never via the loader


@dataclass(frozen=True)
class QuorumAttestedLoader(AttestedLoader):
    """A loader whose key k of n keyservers attested; ``claims`` are the first one's."""

    verified_by: Mapping[str, Claims] = field(default_factory=dict)  # label -> that keyserver's claims


def verify_attestation_quorum(
    public_jwk: Mapping[str, Any],
    tokens: Sequence[str],
    keyservers: Sequence[tuple[TrustedKeyserver, Mapping[str, Any] | None]],
    *,
    k: int,
    expected_claims: Mapping[str, AbstractSet[Any]],
    now: datetime,
    allow_debug: bool = False,
) -> QuorumAttestedLoader:
    """The loader, once attestation results of at least k of the ``keyservers`` (each with its JWKS,
    or None when it could not be fetched) verify for ``public_jwk`` and meet ``expected_claims``.

    A token counts for at most one keyserver and a keyserver at most once, so one keyserver's result
    can never stand in for another's. The refusal names every keyserver that did not verify, and why.
    """
    labels = [trusted.label for trusted, _ in keyservers]
    if len(set(labels)) != len(labels) or len({t.issuer for t, _ in keyservers}) != len(keyservers):
        raise ValueError("each keyserver needs its own label and issuer")
    if not 1 <= k <= len(keyservers):
        raise ValueError(f"k is 1..{len(keyservers)} (the keyservers configured), not {k}")
    _refuse_shared_keys(keyservers)
    _check_expectations(expected_claims)
    if len(tokens) > MAX_ATTESTATION_TOKENS:
        raise LoaderNotTrusted(f"the loader presented {len(tokens)} attestation results; at most 32")
    try:
        parse_ephemeral_jwk(public_jwk)
        jkt = jwk_thumbprint(public_jwk)
    except (EvidenceError, InvalidRequest) as exc:
        raise LoaderNotTrusted(f"the loader's key is not acceptable: {exc.message}") from None
    verified: dict[str, Claims] = {}
    failures: dict[str, str] = {}
    unused = list(range(len(tokens)))
    for trusted, jwks in keyservers:
        if jwks is None:
            failures[trusted.label] = "its JWKS could not be fetched"
            continue
        reasons: list[str] = []
        for index in list(unused):
            try:
                claims = verify_attestation_result(
                    tokens[index],
                    jwks=jwks,
                    tenant=trusted.tenant,
                    issuer=trusted.issuer,
                    now=now,
                    expected_jkt=jkt,
                )
                check_expected_claims(claims, expected_claims, allow_debug=allow_debug)
            except EvidenceError as exc:
                if exc.reason != "attestation-result-unknown-kid":  # another keyserver's: not news
                    reasons.append(exc.message)
                continue
            except (InvalidRequest, ValueError) as exc:
                reasons.append(str(exc))
                continue
            except LoaderNotTrusted as exc:
                reasons.append(str(exc))
                continue
            verified[trusted.label] = claims
            unused.remove(index)
            break
        else:
            failures[trusted.label] = reasons[0] if reasons else "no attestation result signed by it"
    if len(verified) < k:
        named = "; ".join(f"{label}: {why}" for label, why in failures.items())
        raise LoaderNotTrusted(
            f"{len(verified)} of the {k} required keyservers attested the loader's key"
            f" (verified: {sorted(verified) or 'none'}); refused by {named}"
        )
    first = next(iter(verified.values()))
    return QuorumAttestedLoader(public_jwk, first, jwk_thumbprint_b64url(public_jwk), verified)


async def attested_loader_k_of_n(
    inference: httpx.AsyncClient,
    keyservers: Sequence[TrustedKeyserver],
    *,
    k: int,
    expected_claims: Mapping[str, AbstractSet[Any]],
    now: datetime | None = None,
    allow_debug: bool = False,
) -> QuorumAttestedLoader:
    """Like ``attested_loader``, but k of the n ``keyservers`` must have attested the loader's key.

    The inference server's ``/v1/attestation`` answers ``{"public_key": JWK, "tokens": [EAR JWT, ...]}``
    (one attestation result per keyserver that attested the loader; a single ``"token"`` counts as a
    list of one). Each keyserver's JWKS is fetched from that keyserver; one that cannot be reached
    counts as a refusal, named.
    """
    _check_expectations(expected_claims)
    answer = await inference.get("/v1/attestation")
    if answer.status_code != 200:
        raise LoaderNotTrusted(f"the inference server answered {answer.status_code} for the attestation")
    try:
        document = answer.json()
    except ValueError:
        raise LoaderNotTrusted("the attestation is not JSON") from None
    jwk = document.get("public_key") if isinstance(document, dict) else None
    tokens = document.get("tokens", [document.get("token")]) if isinstance(document, dict) else None
    well_formed = isinstance(tokens, list) and all(isinstance(t, str) for t in tokens)
    if not isinstance(jwk, dict) or not well_formed or not isinstance(tokens, list):
        raise LoaderNotTrusted('the attestation is {"public_key": JWK, "tokens": [EAR JWT, ...]}')
    with_jwks: list[tuple[TrustedKeyserver, Mapping[str, Any] | None]] = []
    for trusted in keyservers:
        try:
            with_jwks.append((trusted, await trusted.keyserver.for_tenant(trusted.tenant).loader.jwks()))
        except KeyserverClientError:
            with_jwks.append((trusted, None))
    return verify_attestation_quorum(
        jwk,
        tokens,
        with_jwks,
        k=k,
        expected_claims=expected_claims,
        now=now or datetime.now(UTC),
        allow_debug=allow_debug,
    )


def _check_expectations(expected_claims: Mapping[str, AbstractSet[Any]]) -> None:
    if not expected_claims:
        raise LoaderNotTrusted("no expected claims: say which loader you trust (e.g. its measured PCR)")
    for name, accepted in expected_claims.items():
        if not isinstance(accepted, AbstractSet):  # a str would match substrings, a list is ambiguous
            raise TypeError(f"expected_claims[{name!r}] is a set of accepted values")


def _refuse_shared_keys(keyservers: Sequence[tuple[TrustedKeyserver, Mapping[str, Any] | None]]) -> None:
    """Two "independent" keyservers publishing one signing key are one keyserver: a configuration error."""
    seen: dict[str, str] = {}
    for trusted, jwks in keyservers:
        entries = jwks.get("keys") if isinstance(jwks, Mapping) else None
        for entry in entries if isinstance(entries, list) else []:
            if not isinstance(entry, Mapping):
                continue
            public = json.dumps({m: entry.get(m) for m in ("kty", "crv", "x", "y", "n", "e")}, sort_keys=True)
            if seen.setdefault(public, trusted.label) != trusted.label:
                raise ValueError(
                    f"keyservers {seen[public]} and {trusted.label} publish the same signing key:"
                    " they are not independent"
                )


async def complete(
    inference: httpx.AsyncClient,
    loader: AttestedLoader,
    program: Mapping[str, Any],
    inputs: Mapping[str, Any],
    *,
    classifier: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run a signed ``program`` on ``inputs`` in the attested loader; its outputs, opened here only.
    ``classifier``: a safety classifier's signature for this request, when the loader requires one."""
    request: dict[str, Any] = {"program": dict(program), "inputs": dict(inputs)}
    if classifier is not None:
        request["classifier"] = dict(classifier)
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
