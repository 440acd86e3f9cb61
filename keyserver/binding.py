"""The binding between a loader's evidence and its ephemeral key (DESIGN.md "Binding"; docs/binding.md).

A loader proves that the key it wants a release wrapped to lives inside the attested TEE by putting

    binding = SHA-512("keyserver-binding-v1" || 0x00 || nonce || JWK-thumbprint-SHA-256(ephemeral public key))

into the evidence's user-data field: all 64 bytes in SEV-SNP ``REPORT_DATA``, TDX ``REPORTDATA`` and an AWS
Nitro document's ``nonce``, the first 32 in a TPM quote's ``qualifyingData`` (an Azure CVM's vTPM quote's
too: a TPM bounds it by its largest digest, and 32 bytes is what every TPM accepts). The thumbprint is
RFC 7638's, raw 32 bytes. The label and the 0x00 separate this hash from any other use of SHA-512 over a
nonce; the thumbprint has a fixed length at the end, so the concatenation parses one way only whatever
the nonce's length.

Everything here is pure: no I/O, no clock. This is the half the loader runs (its image holds it); the
keyserver's half — ``parse_ephemeral_jwk``, the strict gate every ephemeral key passes before the keyserver
computes a binding for it or encrypts to it, and ``check_binding`` — is :mod:`keyserver.ephemeral_key`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Mapping
from typing import Any

from keyserver.errors import EvidenceError
from keyserver.evidence.claims import (
    TEE_AWS_NITRO,
    TEE_AZURE_SNP_VTPM,
    TEE_AZURE_TDX_VTPM,
    TEE_NVIDIA_GPU,
    TEE_SEV_SNP,
    TEE_TDX,
    TEE_TPM,
)

BINDING_LABEL = b"keyserver-binding-v1"
BINDING_BYTES = 64
THUMBPRINT_BYTES = 32
TPM_QUALIFYING_DATA_BYTES = 32
GPU_NONCE_BYTES = 32  # an SPDM nonce
# keyserver's challenges are 32 bytes; anything much shorter would not be a nonce worth binding to.
MIN_NONCE_BYTES = 16

REASON_INVALID = "ephemeral-key-invalid"

# RFC 7638 §3.2: the members a thumbprint covers, per key type. The JSON is built from these only.
_REQUIRED_MEMBERS: dict[str, tuple[str, ...]] = {
    "EC": ("crv", "kty", "x", "y"),
    "OKP": ("crv", "kty", "x"),
    "RSA": ("e", "kty", "n"),
}
# Thumbprint member values must need no JSON escaping, so that the hash input is the same whatever JSON
# encoder a loader uses (RFC 7638 §3.3). Curve names and base64url both fit.
_THUMBPRINT_VALUE_RE = re.compile(r"[A-Za-z0-9_.+-]{1,1400}")


def _invalid(message: str) -> EvidenceError:
    return EvidenceError(REASON_INVALID, message)


def jwk_thumbprint(jwk: Mapping[str, Any]) -> bytes:
    """The RFC 7638 JWK thumbprint (SHA-256, raw 32 bytes) of an EC, OKP or RSA key.

    Only the required members enter the hash, in lexicographic order, as JSON without whitespace;
    ``kid``, ``alg`` and the like never change a key's thumbprint. Values are hashed as given: use
    ``keyserver.ephemeral_key.parse_ephemeral_jwk`` first when the key comes from outside, which refuses
    non-canonical encodings (two encodings of one key would otherwise have two thumbprints).
    """
    if not isinstance(jwk, Mapping):
        raise _invalid("the ephemeral key must be a JWK (a JSON object)")
    kty = jwk.get("kty")
    members = _REQUIRED_MEMBERS.get(kty) if isinstance(kty, str) else None
    if members is None:
        raise _invalid('the ephemeral key\'s "kty" must be "EC", "OKP" or "RSA"')
    canonical: dict[str, str] = {}
    for name in members:
        value = jwk.get(name)
        if not isinstance(value, str) or not _THUMBPRINT_VALUE_RE.fullmatch(value):
            raise _invalid(f'the ephemeral {kty} key\'s "{name}" is missing or not a base64url string')
        canonical[name] = value
    text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("ascii")).digest()


def jwk_thumbprint_b64url(jwk: Mapping[str, Any]) -> str:
    """The thumbprint as the log (``requester_thumbprint``) and attestation results (``cnf.jkt``) write
    it: base64url without padding. Loaders and callers compare against exactly this."""
    return base64.urlsafe_b64encode(jwk_thumbprint(jwk)).rstrip(b"=").decode("ascii")


def binding(nonce: bytes, jwk: Mapping[str, Any]) -> bytes:
    """The 64-byte binding of ``nonce`` (the challenge) to the ephemeral public key ``jwk``."""
    if len(nonce) < MIN_NONCE_BYTES:
        raise ValueError(f"a challenge nonce has at least {MIN_NONCE_BYTES} bytes, not {len(nonce)}")
    return hashlib.sha512(BINDING_LABEL + b"\x00" + bytes(nonce) + jwk_thumbprint(jwk)).digest()


def report_data_for(tee: str, binding_value: bytes) -> bytes:
    """What the evidence of ``tee`` must carry in its user-data field for ``binding_value``."""
    if len(binding_value) != BINDING_BYTES:
        raise ValueError(f"a binding is {BINDING_BYTES} bytes, not {len(binding_value)}")
    if tee in (TEE_SEV_SNP, TEE_TDX, TEE_AWS_NITRO):
        return bytes(binding_value)
    # Azure CVMs: the binding is in the vTPM quote (the paravisor owns REPORT_DATA), so it is a TPM's.
    if tee in (TEE_TPM, TEE_AZURE_SNP_VTPM, TEE_AZURE_TDX_VTPM):
        return bytes(binding_value[:TPM_QUALIFYING_DATA_BYTES])
    if tee == TEE_NVIDIA_GPU:  # the SPDM GET_MEASUREMENTS nonce of every GPU report (docs/binding.md)
        return bytes(binding_value[:GPU_NONCE_BYTES])
    raise ValueError(f"unknown tee {tee!r}")
