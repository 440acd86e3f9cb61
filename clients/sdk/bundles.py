"""Signed reference-value bundles, made and signed exactly as the keyserver verifies them
(keyserver/reference_values.py): the signature covers the bundle's canonical bytes (audit.entry:
sorted-key compact JSON), with Ed25519, or ECDSA P-256/SHA-256 or P-384/SHA-384 (DER signature)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from audit.entry import EntryError, canonical_bytes
from clients.sdk.errors import InvalidArgument

BUNDLE_VERSION = 1
BUNDLE_MEMBERS = frozenset({"v", "tenant", "name", "tee", "values"})

SignerPrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def make_bundle(tenant: str, name: str, tee: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """A bundle naming its tenant, so that it cannot be replayed into another tenant."""
    return {"v": BUNDLE_VERSION, "tenant": tenant, "name": name, "tee": tee, "values": dict(values)}


def bundle_bytes(bundle: Mapping[str, Any]) -> bytes:
    """The bytes a bundle's signature covers."""
    if set(bundle) != BUNDLE_MEMBERS:
        raise InvalidArgument(f"a bundle has exactly the members {', '.join(sorted(BUNDLE_MEMBERS))}")
    try:
        return canonical_bytes(dict(bundle))
    except EntryError as exc:
        raise InvalidArgument(f"the bundle cannot be signed: {exc}") from None


def sign_bundle(bundle: Mapping[str, Any], private_key: SignerPrivateKey) -> bytes:
    """The signature the keyserver verifies with the CI signer's registered public key."""
    message = bundle_bytes(bundle)
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(message)
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        if isinstance(private_key.curve, ec.SECP256R1):
            return private_key.sign(message, ec.ECDSA(hashes.SHA256()))
        if isinstance(private_key.curve, ec.SECP384R1):
            return private_key.sign(message, ec.ECDSA(hashes.SHA384()))
    raise InvalidArgument("a CI signer key is Ed25519 or ECDSA P-256/P-384; the keyserver accepts no other")
