"""Refusals that need no server: the SDK's share import and the caller's k-of-n configuration."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from clients.caller import LoaderNotTrusted, TrustedKeyserver, verify_attestation_quorum
from clients.sdk import InvalidArgument, KeyserverClient
from clients.sdk.threshold import import_shares, split_key
from threshold import KeyIdentity, combine

JWK = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False)
EXPECTED: dict[str, AbstractSet[Any]] = {"tpm.pcrs.sha256.10": {"00" * 32}}


def jwks(seed: int) -> dict[str, Any]:
    key = ECKey.import_key(ec.derive_private_key(seed, ec.SECP256R1()).public_key()).as_dict(private=False)
    return {"keys": [{**key, "kid": f"k{seed}"}]}


async def test_import_shares_refuses_a_count_mismatch_and_one_keyserver_twice() -> None:
    shares, commitment = split_key(bytes(32), name="weights", version=1, k=2, n=3)
    assert combine(shares[1:], commitment, KeyIdentity("weights", 1, 2, 3)) == bytes(32)
    async with httpx.AsyncClient(base_url="http://127.0.0.1:9") as nowhere:
        admin = KeyserverClient(http=nowhere, tenant="acme").admin
        other = KeyserverClient(http=nowhere, tenant="acme").admin
        with pytest.raises(InvalidArgument, match="3 shares need 3 keyservers, 2 given"):
            await import_shares([admin, other], shares, key_name="weights-share", policy="prod")
        with pytest.raises(InvalidArgument, match="different keyserver"):
            await import_shares([admin, other, admin], shares, key_name="weights-share", policy="prod")


def test_caller_configuration_errors() -> None:
    client = KeyserverClient(base_url="http://127.0.0.1:9")

    def trusted(label: str, issuer: str) -> TrustedKeyserver:
        return TrustedKeyserver(label, "acme", issuer, client)

    now = datetime.now(UTC)
    a, b = (trusted("a", "ks-a"), jwks(1)), (trusted("b", "ks-b"), jwks(2))
    for configured, k, message in (
        ([a, (trusted("a", "ks-c"), jwks(3))], 1, "its own label and issuer"),
        ([a, (trusted("c", "ks-a"), jwks(3))], 1, "its own label and issuer"),
        ([a, b], 3, "k is 1..2"),
        ([a, b], 0, "k is 1..2"),
        ([a, (trusted("b", "ks-b"), jwks(1))], 1, "not independent"),
    ):
        with pytest.raises(ValueError, match=message):
            verify_attestation_quorum(JWK, [], configured, k=k, expected_claims=EXPECTED, now=now)
    with pytest.raises(LoaderNotTrusted, match="no expected claims"):
        verify_attestation_quorum(JWK, [], [a, b], k=1, expected_claims={}, now=now)
    with pytest.raises(LoaderNotTrusted, match="33 attestation results"):
        verify_attestation_quorum(JWK, ["x"] * 33, [a, b], k=1, expected_claims=EXPECTED, now=now)
    with pytest.raises(LoaderNotTrusted, match="not acceptable"):
        verify_attestation_quorum({"kty": "oct"}, [], [a, b], k=1, expected_claims=EXPECTED, now=now)
    # Garbage tokens: named per keyserver, never a crash.
    with pytest.raises(LoaderNotTrusted, match=r"0 of the 1 required.*a: .*; b: "):
        verify_attestation_quorum(JWK, ["x", "a.b.c"], [a, b], k=1, expected_claims=EXPECTED, now=now)
