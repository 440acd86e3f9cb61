"""CI-signer keys and their algorithms: Ed25519, ES256 (P-256/SHA-256) and ES384 (P-384/SHA-384).

ECDSA signatures are DER-encoded, as for the reference-value bundles the same CI signer publishes to
the keyserver, so one signer key and one signing tool serve both.
"""

from __future__ import annotations

from typing import Final, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

SignerPublicKey: TypeAlias = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey
SignerPrivateKey: TypeAlias = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey

ALG_ED25519: Final = "Ed25519"
ALG_ES256: Final = "ES256"
ALG_ES384: Final = "ES384"
ALGORITHMS: Final = frozenset({ALG_ED25519, ALG_ES256, ALG_ES384})


def algorithm_of(key: SignerPublicKey | SignerPrivateKey) -> str:
    """The one algorithm a key is used with; ``ValueError`` for any other key (RSA, other curves)."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return ALG_ED25519
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        if isinstance(key.curve, ec.SECP256R1):
            return ALG_ES256
        if isinstance(key.curve, ec.SECP384R1):
            return ALG_ES384
    raise ValueError("a CI signer key is Ed25519 or ECDSA P-256/P-384")


def signature_is_valid(public_key: SignerPublicKey, message: bytes, signature: bytes) -> bool:
    try:
        if isinstance(public_key, ed25519.Ed25519PublicKey):
            public_key.verify(signature, message)
        else:
            public_key.verify(signature, message, ec.ECDSA(_hash_for(algorithm_of(public_key))))
    except (InvalidSignature, ValueError):
        return False
    return True


def _hash_for(alg: str) -> hashes.HashAlgorithm:
    return hashes.SHA256() if alg == ALG_ES256 else hashes.SHA384()
