"""Unwrapping a released key: the loader's half of :mod:`keyserver.jwe` (docs/binding.md, "The release
response").

``unwrap_released`` is strict: an explicit algorithm allow-list, no ``zip`` (a JWE "zip bomb" is a denial
of service on the loader), exact ``typ``/``cty``, size limits before any parsing. It lives apart from the
wrapping code (:mod:`keyserver.jwe`, which re-exports everything here) so that the loader's measured
image holds only what the loader runs.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from joserfc import jwe
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey, import_key

from keyserver.errors import InvalidRequest
from keyserver.strict_json import loads_object

ENC = "A256GCM"
ALG_ECDH_ES = "ECDH-ES+A256KW"
ALG_RSA_OAEP_256 = "RSA-OAEP-256"
# RSA-OAEP with SHA-1 and MGF1-SHA-1 (RFC 7518 §4.3). SHA-1's collision weakness does not touch OAEP;
# it is here only because it is the one OAEP SoftHSM2 2.6 implements, for the in-token re-wrap.
ALG_RSA_OAEP = "RSA-OAEP"
RELEASE_TYP = "keyserver-release+jwe"
RELEASE_CTY = "keyserver-key+json"
PAYLOAD_VERSION = 1

# A released key is a symmetric data key: at least 128 bits; the upper bound only keeps the token small.
MIN_KEY_BYTES = 16
MAX_KEY_BYTES = 1024
CEK_BYTES = 32  # A256GCM's key: on the CEK path the data key must be exactly this
MAX_KID_CHARS = 256
# An 8192-bit RSA recipient makes a 1366-character encrypted key; a P-521 ``epk`` a ~500-character
# header; the payload is a few hundred bytes. 16 KiB is ample and bounds work before any decoding.
MAX_TOKEN_CHARS = 16 * 1024
MAX_PAYLOAD_BYTES = 4096
_GCM_IV_BYTES = 12
_GCM_TAG_BYTES = 16

_HEADER_MEMBERS = frozenset({"alg", "enc", "kid", "typ", "cty"})
_ECDH_HEADER_MEMBERS = _HEADER_MEMBERS | {"epk"}
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class ReleasedKeyMetadata:
    """What a released key is: travels, authenticated, inside the JWE next to the key."""

    tenant: str
    name: str
    version: int


class _ReleaseRegistry(jwe.JWERegistry):
    # joserfc's default cap on the encrypted key (1024 base64url characters) stops at 6144-bit RSA;
    # ephemeral_key.parse_ephemeral_jwk accepts up to 8192 bits.
    max_encrypted_key_length = 1400


def _registry(alg: str) -> jwe.JWERegistry:
    """A registry allowing exactly ``alg`` with A256GCM: everything else (other algorithms, every
    ``zip``) is refused by joserfc itself, whatever the header says."""
    return _ReleaseRegistry(algorithms=[alg, ENC])


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64url_decode(value: str, what: str) -> bytes:
    if not _B64URL_RE.fullmatch(value) or len(value) % 4 == 1:
        raise InvalidRequest(f"the released-key JWE's {what} is not base64url")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise InvalidRequest(f"the released-key JWE's {what} is not base64url") from None
    # Canonical only (unused trailing bits zero): otherwise one token would have several spellings,
    # and a "tampered" token could still decrypt.
    if _b64url(raw) != value:
        raise InvalidRequest(f"the released-key JWE's {what} is not canonical base64url")
    return raw


def _loads_object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        return loads_object(raw)
    except ValueError as exc:
        raise InvalidRequest(f"the released-key JWE's {what} is {exc}") from None


def _decode_header(segment: str) -> dict[str, Any]:
    return _loads_object(_b64url_decode(segment, "protected header"), "protected header")


def _check_header(header: Mapping[str, Any]) -> str:
    """The header's ``alg`` after checking every member; ``InvalidRequest`` otherwise."""
    if "zip" in header:
        raise InvalidRequest('the released-key JWE is compressed ("zip"); keyserver never compresses')
    if "crit" in header:
        raise InvalidRequest('the released-key JWE has critical extensions ("crit"); none are defined')
    alg = header.get("alg")
    if alg not in (ALG_ECDH_ES, ALG_RSA_OAEP_256, ALG_RSA_OAEP):
        raise InvalidRequest(
            f'the released-key JWE\'s "alg" must be {ALG_ECDH_ES}, {ALG_RSA_OAEP_256} or {ALG_RSA_OAEP}'
        )
    assert isinstance(alg, str)
    if header.get("enc") != ENC:
        raise InvalidRequest(f'the released-key JWE\'s "enc" must be {ENC}')
    allowed = _ECDH_HEADER_MEMBERS if alg == ALG_ECDH_ES else _HEADER_MEMBERS
    if alg == ALG_ECDH_ES and "epk" not in header:
        raise InvalidRequest('an ECDH-ES released-key JWE needs "epk"')
    unknown = sorted(set(header) - allowed)
    if unknown:
        raise InvalidRequest(f"the released-key JWE's header has unexpected members: {', '.join(unknown)}")
    if header.get("typ") != RELEASE_TYP or header.get("cty") != RELEASE_CTY:
        raise InvalidRequest(f'the released-key JWE must have "typ" {RELEASE_TYP} and "cty" {RELEASE_CTY}')
    kid = header.get("kid")
    if not isinstance(kid, str) or not kid or len(kid) > MAX_KID_CHARS:
        raise InvalidRequest('the released-key JWE\'s "kid" must be a non-empty string')
    return alg


PrivateKey = ec.EllipticCurvePrivateKey | X25519PrivateKey | rsa.RSAPrivateKey


def _import_private(private_key: Mapping[str, Any] | PrivateKey) -> Key:
    key: Key
    if isinstance(private_key, ec.EllipticCurvePrivateKey):
        key = ECKey(private_key, private_key)
    elif isinstance(private_key, X25519PrivateKey):
        key = OKPKey(private_key, private_key)
    elif isinstance(private_key, rsa.RSAPrivateKey):
        key = RSAKey(private_key, private_key)
    elif isinstance(private_key, Mapping):
        try:
            key = import_key(dict(private_key))
        except Exception as exc:  # joserfc raises many types for a bad JWK; all mean the same here
            # Only the error's type: its text could quote a private member.
            raise InvalidRequest(f"the private JWK cannot be imported ({type(exc).__name__})") from None
    else:
        raise TypeError("the private key must be a JWK mapping or a cryptography private key")
    if not key.is_private:
        raise InvalidRequest("unwrapping a released key needs the ephemeral *private* key")
    return key


def _allowed_algs(key: Key) -> frozenset[str]:
    if isinstance(key, RSAKey):
        return frozenset({ALG_RSA_OAEP_256, ALG_RSA_OAEP})
    if isinstance(key, ECKey | OKPKey):
        return frozenset({ALG_ECDH_ES})
    return frozenset()


def _parse_payload(plaintext: bytes, kid: str) -> tuple[dict[str, Any], ReleasedKeyMetadata]:
    if len(plaintext) > MAX_PAYLOAD_BYTES:
        raise InvalidRequest("the released-key JWE's payload is larger than a key document can be")
    document = _loads_object(plaintext, "payload")
    if document.get("v") != PAYLOAD_VERSION or isinstance(document.get("v"), bool):
        raise InvalidRequest(f'the released-key document\'s "v" must be {PAYLOAD_VERSION}')
    key_members = {"k", "cek"}.intersection(document)
    if len(key_members) != 1:
        raise InvalidRequest('the released-key document has exactly one of "k" and "cek"')
    expected = {"v", "kid", "tenant", "name", "version"} | key_members
    if set(document) != expected:
        raise InvalidRequest(f"the released-key document has exactly: {', '.join(sorted(expected))}")
    if not isinstance(document["kid"], str) or document["kid"] != kid:
        raise InvalidRequest("the released-key document's \"kid\" differs from the JWE header's")
    tenant, name, version = document["tenant"], document["name"], document["version"]
    if not isinstance(tenant, str) or not isinstance(name, str):
        raise InvalidRequest('the released-key document\'s "tenant" and "name" must be strings')
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise InvalidRequest('the released-key document\'s "version" must be an integer from 1')
    return document, ReleasedKeyMetadata(tenant=tenant, name=name, version=version)


def unwrap_released(
    token: str, private_jwk: Mapping[str, Any] | PrivateKey
) -> tuple[bytes, ReleasedKeyMetadata]:
    """The key and its metadata from a release JWE, with the loader's ephemeral private key.

    ``InvalidRequest`` for anything but a well-formed, authentic release: wrong recipient key,
    tampering, an algorithm off the allow-list (RSA1_5, dir, A128KW, ...), another ``enc``, ``zip``,
    ``crit``, unexpected header members, a payload that is not a key document.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS:
        raise InvalidRequest(f"a released-key JWE is a string of at most {MAX_TOKEN_CHARS} characters")
    if not token.isascii():
        raise InvalidRequest("a released-key JWE is ASCII")
    segments = token.split(".")
    if len(segments) != 5:
        raise InvalidRequest("a released-key JWE has five dot-separated parts (compact serialization)")
    header = _decode_header(segments[0])
    alg = _check_header(header)
    kid = header["kid"]
    key = _import_private(private_jwk)
    if alg not in _allowed_algs(key):
        raise InvalidRequest(f"a JWE with alg {alg} cannot be for this private key's type")
    for what, segment in zip(("encrypted key", "IV", "ciphertext", "tag"), segments[1:], strict=True):
        _b64url_decode(segment, what)
    try:
        decrypted = jwe.decrypt_compact(token, key, registry=_registry(alg))
    except Exception as exc:
        # joserfc signals failures with its own errors, ValueError and even AssertionError; to a loader
        # they all mean "not a release for this key". Chained for debugging; no secret in the message.
        raise InvalidRequest(
            "the released-key JWE does not decrypt with this key (wrong key, or tampered with)"
        ) from exc
    plaintext = decrypted.plaintext
    if plaintext is None:  # pragma: no cover - joserfc sets it on success
        raise InvalidRequest("the released-key JWE has no plaintext")
    document, metadata = _parse_payload(plaintext, kid)
    if "k" in document:
        if alg == ALG_RSA_OAEP:
            raise InvalidRequest(
                f"keyserver sends the key in the payload only with {ALG_ECDH_ES} or RSA-OAEP-256"
            )
        if not isinstance(document["k"], str):
            raise InvalidRequest('the released-key document\'s "k" must be a base64url string')
        material = _b64url_decode(document["k"], 'key ("k")')
        if not MIN_KEY_BYTES <= len(material) <= MAX_KEY_BYTES:
            raise InvalidRequest("the released key has an impossible length")
        return material, metadata
    if document["cek"] is not True or alg != ALG_RSA_OAEP:
        raise InvalidRequest(f'"cek": true is the in-backend release, which is {ALG_RSA_OAEP} only')
    # The JWE decrypted, so the encrypted key is authentic and decrypts; do it again to keep the CEK,
    # which joserfc does not expose. It is the released data key.
    private = key.private_key
    assert isinstance(private, rsa.RSAPrivateKey)
    oaep = padding.OAEP(mgf=padding.MGF1(algorithm=hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
    try:
        cek = private.decrypt(_b64url_decode(segments[1], "encrypted key"), oaep)
    except ValueError:  # pragma: no cover - joserfc just did the same decryption
        raise InvalidRequest("the released-key JWE's encrypted key does not decrypt") from None
    if len(cek) != CEK_BYTES:  # pragma: no cover - A256GCM would not have accepted another length
        raise InvalidRequest("the released key has an impossible length")
    return cek, metadata
