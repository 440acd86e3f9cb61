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
before any parsing. Algorithms come from joserfc, always
through a registry that allows exactly the algorithms in use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from joserfc import jwe
from joserfc.jwk import import_key

from keyserver.ephemeral_key import parse_ephemeral_jwk

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
    _check_kid(kid)
    _check_metadata(metadata)
    if not MIN_KEY_BYTES <= len(key_material) <= MAX_KEY_BYTES:
        raise ValueError(f"key material is {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, not {len(key_material)}")
    _public, normalized = parse_ephemeral_jwk(recipient_jwk)
    alg = ALG_RSA_OAEP_256 if normalized["kty"] == "RSA" else ALG_ECDH_ES
    key_dict: dict[str, str | list[str]] = dict(normalized)
    recipient = import_key(key_dict)
    plaintext = _payload(kid, metadata, {"k": _b64url(bytes(key_material))})
    return jwe.encrypt_compact(_header(alg, kid), plaintext, recipient, registry=_registry(alg))


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
