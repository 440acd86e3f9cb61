"""The keyserver's side of the binding (docs/binding.md): the strict gate every ephemeral public key
passes before the keyserver computes a binding for it or encrypts to it (:func:`parse_ephemeral_jwk`), and
the check that verified evidence carries the binding of a challenge to that key (:func:`check_binding`).

The loader's side — the thumbprint, the binding, where it goes in each TEE's evidence — is
:mod:`keyserver.binding`, which the loader's image holds; this module is server code and is not in it.
Pure: no I/O, no clock.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Mapping
from typing import Any, TypeAlias

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from keyserver.binding import _REQUIRED_MEMBERS, _invalid, binding, report_data_for
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

EphemeralPublicKey: TypeAlias = ec.EllipticCurvePublicKey | X25519PublicKey | rsa.RSAPublicKey


# Private-key members of any key type (RFC 7518 §6.2.2, §6.3.2, §6.4; RFC 8037 §2). A loader that sends
# one has sent its private key over the wire: refuse rather than quietly drop it, so the bug is seen.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
# Optional members a JWK library may add; anything else (x5c, x5u, jku, ...) is refused: keyserver
# fetches nothing and trusts no certificate on an ephemeral key.
_OPTIONAL_MEMBERS = frozenset({"kid", "alg", "use", "key_ops", "ext"})
_KEY_ALGS = {
    "EC": frozenset({"ECDH-ES+A256KW"}),
    "OKP": frozenset({"ECDH-ES+A256KW"}),
    "RSA": frozenset({"RSA-OAEP-256", "RSA-OAEP"}),
}
_KEY_OPS = frozenset({"encrypt", "wrapKey", "deriveKey", "deriveBits"})
_EC_CURVES: dict[str, tuple[ec.EllipticCurve, int]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
}
_X25519_BYTES = 32
_X25519_P = 2**255 - 19
MIN_RSA_BITS = 2048
MAX_RSA_BITS = 8192
_RSA_E = "AQAB"  # 65537, the only exponent accepted, in its one canonical encoding

# Bounds checked before any decoding: an 8192-bit modulus is 1366 base64url characters.
_MAX_MEMBERS = 16
_MAX_MEMBER_CHARS = 1400
_MAX_KID_CHARS = 256
_B64URL_RE = re.compile(r"[A-Za-z0-9_-]+")

_FIELD_NAMES = {
    TEE_SEV_SNP: "REPORT_DATA",
    TEE_TDX: "REPORTDATA",
    TEE_TPM: "qualifyingData (extraData)",
    TEE_NVIDIA_GPU: "SPDM nonce",
    TEE_AZURE_SNP_VTPM: "vTPM quote qualifyingData (extraData)",
    TEE_AZURE_TDX_VTPM: "vTPM quote qualifyingData (extraData)",
    TEE_AWS_NITRO: "attestation document nonce",
}


def check_binding(tee: str, report_data: bytes, nonce: bytes, jwk: Mapping[str, Any]) -> None:
    """``EvidenceError("binding-mismatch")`` unless ``report_data`` (the verified evidence's user data)
    binds ``nonce`` to ``jwk``. The comparison takes the same time wherever the bytes differ."""
    expected = report_data_for(tee, binding(nonce, jwk))
    if not hmac.compare_digest(expected, bytes(report_data)):
        # Both values are computable by anyone holding the nonce and the public key, so showing them
        # leaks nothing and tells a loader author which of the two inputs they got wrong.
        raise EvidenceError(
            "binding-mismatch",
            f"the evidence's {_FIELD_NAMES[tee]} is {bytes(report_data).hex() or '(empty)'} but this"
            f" challenge and ephemeral key bind to {expected.hex()}; compute it as docs/binding.md says",
        )


def _b64url_decode(value: object, what: str) -> bytes:
    """Strict base64url (RFC 7515 §2): no padding, no whitespace, and canonical (the unused low bits
    of the last character are zero), so that one byte string has exactly one encoding."""
    if not isinstance(value, str):
        raise _invalid(f"{what} must be a base64url string")
    if len(value) > _MAX_MEMBER_CHARS:
        raise _invalid(f"{what} is longer than {_MAX_MEMBER_CHARS} characters")
    if not _B64URL_RE.fullmatch(value) or len(value) % 4 == 1:
        raise _invalid(f"{what} is not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise _invalid(f"{what} is not unpadded base64url") from None
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != value:
        raise _invalid(f"{what} is not canonical base64url (non-zero trailing bits)")
    return raw


def _check_optional_members(jwk: Mapping[str, Any], kty: str) -> None:
    if "kid" in jwk and (not isinstance(jwk["kid"], str) or len(jwk["kid"]) > _MAX_KID_CHARS):
        raise _invalid(f'"kid" must be a string of at most {_MAX_KID_CHARS} characters')
    if "use" in jwk and jwk["use"] != "enc":
        raise _invalid('the ephemeral key is for encryption: "use", when present, must be "enc"')
    if "alg" in jwk and jwk["alg"] not in _KEY_ALGS[kty]:
        allowed = ", ".join(sorted(_KEY_ALGS[kty]))
        raise _invalid(f'an ephemeral {kty} key\'s "alg", when present, must be one of: {allowed}')
    if "key_ops" in jwk:
        ops = jwk["key_ops"]
        if (
            not isinstance(ops, list)
            or len(ops) > len(_KEY_OPS)
            or not all(isinstance(op, str) and op in _KEY_OPS for op in ops)
            or len(set(ops)) != len(ops)
        ):
            raise _invalid(f'"key_ops" must list distinct operations among: {", ".join(sorted(_KEY_OPS))}')
    if "ext" in jwk and not isinstance(jwk["ext"], bool):
        raise _invalid('"ext" must be a boolean')


def _parse_ec(jwk: Mapping[str, Any]) -> ec.EllipticCurvePublicKey:
    crv = jwk.get("crv")
    if not isinstance(crv, str) or crv not in _EC_CURVES:
        raise _invalid('an ephemeral EC key\'s "crv" must be "P-256", "P-384" or "P-521"')
    curve, size = _EC_CURVES[crv]
    x_raw = _b64url_decode(jwk.get("x"), '"x"')
    y_raw = _b64url_decode(jwk.get("y"), '"y"')
    # RFC 7518 §6.2.1.2-3: coordinates are the full field size, leading zeros included.
    if len(x_raw) != size or len(y_raw) != size:
        raise _invalid(f'{crv} coordinates "x" and "y" must each be {size} bytes')
    x, y = int.from_bytes(x_raw, "big"), int.from_bytes(y_raw, "big")
    try:
        key = ec.EllipticCurvePublicNumbers(x, y, curve).public_key()
    except ValueError:
        raise _invalid(f"the point (x, y) is not on {crv}") from None
    # OpenSSL reduces coordinates modulo p (x + p is accepted as x): such a key has a second encoding,
    # hence a second thumbprint. Only the reduced, canonical one is accepted.
    numbers = key.public_numbers()
    if numbers.x != x or numbers.y != y:
        raise _invalid(f"the point's coordinates are not reduced modulo the {crv} field prime")
    return key


def _parse_okp(jwk: Mapping[str, Any]) -> X25519PublicKey:
    if jwk.get("crv") != "X25519":
        raise _invalid('an ephemeral OKP key\'s "crv" must be "X25519" (Ed25519 keys cannot encrypt)')
    raw = _b64url_decode(jwk.get("x"), '"x"')
    if len(raw) != _X25519_BYTES:
        raise _invalid(f'an X25519 "x" must be {_X25519_BYTES} bytes')
    if int.from_bytes(raw, "little") >= _X25519_P:
        raise _invalid('the X25519 "x" is not a canonical field element (RFC 7748 §5)')
    key = X25519PublicKey.from_public_bytes(raw)
    # A low-order point makes every ECDH shared secret predictable (all zeros), which would hand the
    # released key to anyone. OpenSSL refuses to complete such an exchange; try one now so that the key
    # is refused here, with a reason, rather than at wrapping time.
    try:
        X25519PrivateKey.generate().exchange(key)
    except ValueError:
        raise _invalid("the X25519 key is a low-order point") from None
    return key


def _parse_rsa(jwk: Mapping[str, Any]) -> rsa.RSAPublicKey:
    if jwk.get("e") != _RSA_E:
        raise _invalid('an ephemeral RSA key\'s exponent must be 65537 ("e": "AQAB")')
    n_raw = _b64url_decode(jwk.get("n"), '"n"')
    # RFC 7518 §6.3.1.1: the modulus without leading zero octets (otherwise a second encoding).
    if n_raw[:1] == b"\x00":
        raise _invalid('"n" has a leading zero octet; encode the modulus in its minimal length')
    n = int.from_bytes(n_raw, "big")
    if not MIN_RSA_BITS <= n.bit_length() <= MAX_RSA_BITS:
        raise _invalid(
            f"an ephemeral RSA key has {MIN_RSA_BITS} to {MAX_RSA_BITS} bits, not {n.bit_length()}"
        )
    if n % 2 == 0:
        raise _invalid("the RSA modulus is even")
    try:
        return rsa.RSAPublicNumbers(65537, n).public_key()
    except ValueError:
        raise _invalid("the RSA public key is not valid") from None


def parse_ephemeral_jwk(jwk: object) -> tuple[EphemeralPublicKey, dict[str, str]]:
    """Validate a loader's ephemeral public JWK strictly; return the key and its normalised JWK.

    Accepted: EC P-256/P-384/P-521 and OKP X25519 (for ECDH-ES+A256KW), RSA of 2048 to 8192 bits with
    e = 65537 (for RSA-OAEP-256, or RSA-OAEP on the HSM path). The normalised JWK holds the thumbprint
    members only, unchanged: every accepted encoding is canonical, so its thumbprint is the one the
    loader computed. ``EvidenceError("ephemeral-key-invalid")`` otherwise, saying what is wrong.
    """
    if not isinstance(jwk, Mapping):
        raise _invalid("the ephemeral key must be a JWK (a JSON object)")
    if len(jwk) > _MAX_MEMBERS:
        raise _invalid(f"the ephemeral key has more than {_MAX_MEMBERS} members")
    if not all(isinstance(name, str) for name in jwk):
        raise _invalid("the ephemeral key's member names must be strings")
    private = sorted(_PRIVATE_MEMBERS.intersection(jwk))
    if private:
        # Name the members, never echo their values: they are secret.
        raise _invalid(
            f"the ephemeral key contains private-key members ({', '.join(private)}); a loader must send"
            " only its public key, and that private key must now be considered exposed"
        )
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in _REQUIRED_MEMBERS:
        raise _invalid('the ephemeral key\'s "kty" must be "EC", "OKP" or "RSA"')
    required = _REQUIRED_MEMBERS[kty]
    unknown = sorted(set(jwk) - set(required) - _OPTIONAL_MEMBERS)
    if unknown:
        raise _invalid(f"the ephemeral {kty} key has members keyserver does not accept: {', '.join(unknown)}")
    _check_optional_members(jwk, kty)
    key: EphemeralPublicKey
    if kty == "EC":
        key = _parse_ec(jwk)
    elif kty == "OKP":
        key = _parse_okp(jwk)
    else:
        key = _parse_rsa(jwk)
    normalized = {name: str(jwk[name]) for name in required}
    return key, normalized
