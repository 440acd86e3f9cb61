"""A released key, wrapped to the loader's ephemeral public key as a compact JWE (docs/binding.md,
"The release response").

Two shapes, both with ``enc`` A256GCM and the protected header
``{"alg", "enc", "kid", "typ": "keyserver-release+jwe", "cty": "keyserver-key+json"}`` (plus ``epk`` for
ECDH-ES):

* **key in the payload** (the default): ``alg`` ECDH-ES+A256KW for EC/OKP recipients, RSA-OAEP-256 for
  RSA recipients; the plaintext is the key document with ``"k"``, the key itself.
* **key as the CEK** (the PKCS#11 path, where the key never enters keyserver memory): ``alg`` RSA-OAEP
  (OAEP with SHA-1, the only OAEP SoftHSM2 2.6 offers); the token wraps the data key itself as the
  content-encryption key, and the plaintext is the key document with ``"cek": true`` instead of
  ``"k"``. The loader recovers the key by RSA-OAEP-decrypting the JWE Encrypted Key.

``wrap_for_recipient`` is keyserver's side; ``unwrap_released`` is the loader's (and the tests'), in
:mod:`keyserver.jwe_unwrap` and re-exported here, and is strict: an explicit algorithm allow-list, no
``zip`` (a JWE "zip bomb" is a denial of service on the loader), exact ``typ``/``cty``, size limits
before any parsing. The unwrap's algorithms come from joserfc, always through a registry that allows
exactly the algorithms in use. The wrap is written on pyca/cryptography's primitives (ECDH, the Concat
KDF, AES key wrap, AES-GCM, RSA-OAEP) to RFC 7518 directly: a release's JWE is on the hot path, and
joserfc's generic machinery around the same primitives cost twice as much (docs/performance.md, "Sixth
pass"). Two implementations, then: tests/test_jwe.py holds the wrap to joserfc's unwrap and to jwcrypto.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.concatkdf import ConcatKDFHash
from cryptography.hazmat.primitives.keywrap import aes_key_wrap

from keyserver.ephemeral_key import EphemeralPublicKey, parse_ephemeral_jwk

# The loader's side, in its own module so that the loader's measured image holds no wrapping code;
# re-exported here, where the server and the tests have always found it.
from keyserver.jwe_unwrap import (
    _GCM_IV_BYTES,
    _GCM_TAG_BYTES,
    _HEADER_MEMBERS,
    ALG_ECDH_ES,
    ALG_RSA_OAEP,
    ALG_RSA_OAEP_256,
    CEK_BYTES,
    ENC,
    MAX_KEY_BYTES,
    MAX_KID_CHARS,
    MAX_PAYLOAD_BYTES,
    MAX_TOKEN_CHARS,
    MIN_KEY_BYTES,
    PAYLOAD_VERSION,
    RELEASE_CTY,
    RELEASE_TYP,
    PrivateKey,
    ReleasedKeyMetadata,
    _b64url,
    _decode_header,
    _registry,
    _ReleaseRegistry,
    unwrap_released,
)

__all__ = [
    "ALG_ECDH_ES",
    "ALG_RSA_OAEP",
    "ALG_RSA_OAEP_256",
    "CEK_BYTES",
    "ENC",
    "MAX_KEY_BYTES",
    "MAX_KID_CHARS",
    "MAX_PAYLOAD_BYTES",
    "MAX_TOKEN_CHARS",
    "MIN_KEY_BYTES",
    "PAYLOAD_VERSION",
    "RELEASE_CTY",
    "RELEASE_TYP",
    "PrivateKey",
    "ReleasedKeyMetadata",
    "_ReleaseRegistry",
    "_registry",
    "assemble_compact_jwe",
    "cek_release_payload",
    "jwe_protected_header_for_rsa_oaep",
    "unwrap_released",
    "wrap_for_parsed_recipient",
    "wrap_for_recipient",
]


def _check_kid(kid: str) -> None:
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS:
        raise ValueError(f"kid must be a non-empty string of at most {MAX_KID_CHARS} characters")


def _check_metadata(metadata: ReleasedKeyMetadata) -> None:
    if not isinstance(metadata, ReleasedKeyMetadata):
        raise TypeError("metadata must be a ReleasedKeyMetadata")
    if isinstance(metadata.version, bool) or not isinstance(metadata.version, int) or metadata.version < 1:
        raise ValueError("a key version is an integer from 1")


def _json(document: Mapping[str, Any]) -> bytes:
    # Sorted and without whitespace: the same key and metadata always make the same plaintext.
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _payload(kid: str, metadata: ReleasedKeyMetadata, key_member: Mapping[str, Any]) -> bytes:
    return _json(
        {
            "v": PAYLOAD_VERSION,
            "kid": kid,
            "tenant": metadata.tenant,
            "name": metadata.name,
            "version": metadata.version,
            **key_member,
        }
    )


def _header(alg: str, kid: str) -> dict[str, str]:
    return {"alg": alg, "enc": ENC, "kid": kid, "typ": RELEASE_TYP, "cty": RELEASE_CTY}


def wrap_for_recipient(
    key_material: bytes, recipient_jwk: Mapping[str, Any], *, kid: str, metadata: ReleasedKeyMetadata
) -> str:
    """``key_material`` as a compact JWE to the loader's ephemeral public key.

    ECDH-ES+A256KW for EC (P-256/384/521) and OKP (X25519) keys, RSA-OAEP-256 for RSA keys; A256GCM.
    ``kid`` names the released key (keyserver uses ``<name>/<version>``). The recipient key is validated
    with ``ephemeral_key.parse_ephemeral_jwk`` (``EvidenceError`` if it is not acceptable).
    """
    public, _normalized = parse_ephemeral_jwk(recipient_jwk)
    return wrap_for_parsed_recipient(key_material, public, kid=kid, metadata=metadata)


def wrap_for_parsed_recipient(
    key_material: bytes, recipient: EphemeralPublicKey, *, kid: str, metadata: ReleasedKeyMetadata
) -> str:
    """:func:`wrap_for_recipient` to a key that ``ephemeral_key.parse_ephemeral_jwk`` already accepted
    (the release parses the loader's JWK once, to bind it to the evidence, and wraps to that same key).
    ``recipient`` must come from that function: nothing here checks its curve or size again."""
    _check_kid(kid)
    _check_metadata(metadata)
    if not MIN_KEY_BYTES <= len(key_material) <= MAX_KEY_BYTES:
        raise ValueError(f"key material is {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, not {len(key_material)}")
    plaintext = _payload(kid, metadata, {"k": _b64url(bytes(key_material))})
    return _encrypt(recipient, kid, plaintext)


def _encrypt(public: EphemeralPublicKey, kid: str, plaintext: bytes) -> str:
    """RFC 7516 compact JWE of ``plaintext`` to ``public``: a fresh 256-bit CEK and 96-bit IV, A256GCM with
    the protected header's base64url form as the additional data (RFC 7516 §5.1)."""
    cek = os.urandom(CEK_BYTES)
    if isinstance(public, RSAPublicKey):
        header: dict[str, Any] = _header(ALG_RSA_OAEP_256, kid)
        oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
        encrypted_key = public.encrypt(cek, oaep)
    else:
        epk, shared = _agree(public)
        header = {**_header(ALG_ECDH_ES, kid), "epk": epk}
        encrypted_key = aes_key_wrap(_concat_kdf(shared), cek)
    protected = _b64url(_json(header))
    iv = os.urandom(_GCM_IV_BYTES)
    sealed = AESGCM(cek).encrypt(iv, plaintext, protected.encode("ascii"))
    ciphertext, tag = sealed[:-_GCM_TAG_BYTES], sealed[-_GCM_TAG_BYTES:]
    return ".".join([protected, _b64url(encrypted_key), _b64url(iv), _b64url(ciphertext), _b64url(tag)])


_CURVE_NAMES = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}


def _agree(public: ec.EllipticCurvePublicKey | X25519PublicKey) -> tuple[dict[str, str], bytes]:
    """A fresh ephemeral key on the recipient's curve: its public JWK (``epk``) and the shared secret Z."""
    if isinstance(public, ec.EllipticCurvePublicKey):
        ephemeral = ec.generate_private_key(public.curve)
        shared = ephemeral.exchange(ec.ECDH(), public)
        numbers = ephemeral.public_key().public_numbers()
        size = (public.curve.key_size + 7) // 8  # RFC 7518 §6.2.1.2: full-length coordinates
        epk = {
            "kty": "EC",
            "crv": _CURVE_NAMES[public.curve.name],
            "x": _b64url(numbers.x.to_bytes(size, "big")),
            "y": _b64url(numbers.y.to_bytes(size, "big")),
        }
        return epk, shared
    x25519 = X25519PrivateKey.generate()
    raw = x25519.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "X25519", "x": _b64url(raw)}, x25519.exchange(public)


# RFC 7518 §4.6.2: the Concat KDF's OtherInfo for ECDH-ES+A256KW with no PartyUInfo/PartyVInfo (the
# loader sends none, and a release is bound to its key by the evidence, not by apu/apv).
_ALGORITHM_ID = ALG_ECDH_ES.encode("ascii")
_OTHER_INFO = (
    len(_ALGORITHM_ID).to_bytes(4, "big")
    + _ALGORITHM_ID
    + (0).to_bytes(4, "big")  # PartyUInfo: empty
    + (0).to_bytes(4, "big")  # PartyVInfo: empty
    + (256).to_bytes(4, "big")  # SuppPubInfo: keydatalen in bits (A256KW's key)
)


def _concat_kdf(shared: bytes) -> bytes:
    return ConcatKDFHash(hashes.SHA256(), 32, _OTHER_INFO).derive(shared)


def jwe_protected_header_for_rsa_oaep(kid: str) -> bytes:
    """The protected header (JSON bytes) for the in-backend (PKCS#11) release: ``alg`` RSA-OAEP,
    ``enc`` A256GCM, the data key as the CEK. The backend base64url-encodes exactly these bytes and
    authenticates them as the AES-GCM additional data."""
    _check_kid(kid)
    return _json(_header(ALG_RSA_OAEP, kid))


def cek_release_payload(*, kid: str, metadata: ReleasedKeyMetadata) -> bytes:
    """The plaintext of an in-backend release: the key document with ``"cek": true`` (no ``"k"``):
    the key is the JWE's content-encryption key."""
    _check_kid(kid)
    _check_metadata(metadata)
    return _payload(kid, metadata, {"cek": True})


def assemble_compact_jwe(
    protected_b64: bytes | str, encrypted_key: bytes, iv: bytes, ciphertext: bytes, tag: bytes
) -> str:
    """The JWE Compact Serialization (RFC 7516 §7.1) of parts a backend produced, after checking that
    they have the shape of an RSA-OAEP + A256GCM release (the header says so, 96-bit IV, 128-bit tag);
    it cannot check the cryptography, which only the recipient can."""
    protected = protected_b64.decode("ascii") if isinstance(protected_b64, bytes) else protected_b64
    header = _decode_header(protected)
    if header.get("alg") != ALG_RSA_OAEP or header.get("enc") != ENC:
        raise ValueError(f"an assembled release is {ALG_RSA_OAEP} with {ENC}")
    if set(header) != _HEADER_MEMBERS:
        raise ValueError(f"an assembled release's header has exactly: {', '.join(sorted(_HEADER_MEMBERS))}")
    if len(iv) != _GCM_IV_BYTES or len(tag) != _GCM_TAG_BYTES:
        raise ValueError("A256GCM takes a 12-byte IV and makes a 16-byte tag")
    if not encrypted_key or not ciphertext:
        raise ValueError("the encrypted key and the ciphertext must not be empty")
    return ".".join([protected, _b64url(encrypted_key), _b64url(iv), _b64url(ciphertext), _b64url(tag)])
