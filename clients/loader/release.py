"""The release protocol, loader side (DESIGN.md "The release protocol"; docs/release-protocol.md).

challenge → ephemeral key → binding in the evidence → release → receipt verified → key unwrapped. The
ephemeral private key never leaves this process; the released key is returned only after the receipt
proves that the keyserver logged this very release (:mod:`clients.loader.receipt`).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from clients.loader.collectors.base import Collector
from clients.loader.keyserver_api import LoaderKeyserver
from clients.loader.receipt import ExpectedRelease, verify_receipt
from keyserver.binding import binding, jwk_thumbprint, jwk_thumbprint_b64url
from keyserver.errors import InvalidRequest
from keyserver.jwe_unwrap import unwrap_released

if TYPE_CHECKING:  # a type only: the witness check is a part (clients/loader/parts.py)
    from audit.cosignature import CosignaturePolicy


class ReleaseRefused(Exception):
    """The loader will not use what the keyserver answered (the JWE does not open, or names another key)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class LogTrust:
    """What the loader was built to trust about the release log (part of its measured configuration)."""

    verifier_key: str  # the tenant log's note verifier key (`keyserver audit key`)
    origin: str | None = None  # the checkpoint origin, "<keyserver origin>/<tenant>"
    # The witnesses whose quorum of cosignatures a receipt must carry (None: not required).
    cosignatures: CosignaturePolicy | None = None


@dataclass(frozen=True)
class KeyserverTrust:
    """One keyserver the loader accepts a key (or a share) from: part of its measured configuration."""

    name: str  # the configuration's label, matched to a run-time URL (``--keyserver NAME=URL``)
    tenant: str
    key: str
    log: LogTrust


class EphemeralKey:
    """The loader's P-256 key pair for one boot: releases are wrapped to it, and callers seal their
    requests to it (its thumbprint is what the keyserver's attestation result names)."""

    def __init__(self) -> None:
        self.private = ec.generate_private_key(ec.SECP256R1())
        self.public_jwk: dict[str, Any] = dict(
            ECKey.import_key(self.private.public_key()).as_dict(private=False)
        )
        self.thumbprint = jwk_thumbprint(self.public_jwk)

    @property
    def thumbprint_b64url(self) -> str:
        return jwk_thumbprint_b64url(self.public_jwk)


@dataclass(frozen=True)
class ReleasedKey:
    material: bytes
    kid: str  # "<name>/<version>"
    log_index: int
    entry: dict[str, Any]


def bound_evidence(client: LoaderKeyserver, collector: Collector, key: EphemeralKey) -> tuple[str, Any]:
    """A fresh challenge, and evidence that binds its nonce to ``key`` (the challenge id, the evidence)."""
    challenge = client.challenge()
    evidence = collector.collect(binding(challenge.nonce, key.public_jwk))
    return challenge.id, evidence


def release_key(
    client: LoaderKeyserver,
    collector: Collector,
    key: EphemeralKey,
    *,
    tenant: str,
    key_name: str,
    log: LogTrust,
    version: int | None = None,
) -> ReleasedKey:
    """Run the release protocol once and return the key, only if its receipt verifies.

    Raises ``KeyserverRefused`` when the keyserver says no, :class:`ReleaseRefused` when the
    answer is not a key for this loader, and ``ReceiptInvalid`` when the release is not provably logged.
    """
    challenge_id, evidence = bound_evidence(client, collector, key)
    granted = client.release(key_name, challenge_id, evidence, key.public_jwk, version)
    try:
        material, metadata = unwrap_released(granted.jwe, key.private)
    except InvalidRequest as exc:
        raise ReleaseRefused("release-jwe-invalid", exc.message) from None
    wrong_version = version is not None and metadata.version != version
    if metadata.tenant != tenant or metadata.name != key_name or wrong_version:
        raise ReleaseRefused(
            "release-wrong-key",
            f"asked for {tenant}/{key_name}, "
            f"the keyserver sent {metadata.tenant}/{metadata.name}/{metadata.version}",
        )
    entry = verify_receipt(
        granted.receipt,
        log_verifier_key=log.verifier_key,
        origin=log.origin,
        expected=ExpectedRelease(
            metadata.name,
            metadata.version,
            key.thumbprint_b64url,
            jwe_sha256=hashlib.sha256(granted.jwe.encode()).hexdigest(),
            requested_version=version,
        ),
        cosignatures=log.cosignatures,
    )
    return ReleasedKey(material, f"{metadata.name}/{metadata.version}", granted.receipt.log_index, entry)


def attestation_result(client: LoaderKeyserver, collector: Collector, key: EphemeralKey) -> str:
    """An attestation-result token (EAR JWT) naming ``key``: what callers check before sealing requests."""
    challenge_id, evidence = bound_evidence(client, collector, key)
    return client.attest(challenge_id, evidence, key.public_jwk)
