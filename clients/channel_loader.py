"""The loader's side of the caller channel (docs/e2e-encryption.md): the message format, opening a
request sealed to the loader's key, sealing its one response.

:mod:`clients.channel` describes the construction and holds the caller's side (``seal_request``,
``CallerContext``); it re-exports everything here. The loader imports only this module, so its measured
image holds no caller code.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import math
import re
import secrets
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from keyserver.binding import jwk_thumbprint
from keyserver.strict_json import loads_strict

PROTOCOL_VERSION: Final = 1
TYPE_REQUEST: Final = 1
TYPE_RESPONSE: Final = 2
# IANA HPKE registry identifiers (RFC 9180 §7): the suite is fixed per loader key type, never negotiated.
KDF_HKDF_SHA256: Final = 0x0001
AEAD_AES_256_GCM: Final = 0x0002
REQUEST_LABEL: Final = b"keyserver-inference-v1 request"
RESPONSE_KEY_LABEL: Final = b"keyserver-inference-v1 response key"
RESPONSE_NONCE_LABEL: Final = b"keyserver-inference-v1 response nonce"
REPLY_SECRET_BYTES: Final = 32
RESPONSE_NONCE_BYTES: Final = 32  # max(Nn, Nk) of AES-256-GCM, as RFC 9458 §4.4 has it
THUMBPRINT_BYTES: Final = 32
TAG_BYTES: Final = 16
# A prompt with a long context or a long completion is a few megabytes; 16 MiB bounds the work a message
# can cause before anything is decrypted.
MAX_PAYLOAD_BYTES: Final = 16 << 20
MAX_MESSAGE_BYTES: Final = MAX_PAYLOAD_BYTES + 1024
MAX_TEXT_CHARS: Final = -(-MAX_MESSAGE_BYTES * 4 // 3)

LoaderPrivateKey: TypeAlias = X25519PrivateKey | ec.EllipticCurvePrivateKey
LoaderPublicKey: TypeAlias = X25519PublicKey | ec.EllipticCurvePublicKey

# version, type, kem id, kdf id, aead id, loader key thumbprint
_REQUEST_HEADER: Final = struct.Struct(f">BBHHH{THUMBPRINT_BYTES}s")
# version, type, response nonce
_RESPONSE_HEADER: Final = struct.Struct(f">BB{RESPONSE_NONCE_BYTES}s")
_B64URL_RE: Final = re.compile(r"[A-Za-z0-9_-]*")


class ChannelError(Exception):
    """Base of every refusal of this module (catch it to fail closed); raised as such for misuse of a
    single-use context."""


class ChannelFormatError(ChannelError):
    """The message or its payload is malformed (the message says what is wrong)."""


class ChannelAuthenticationError(ChannelError):
    """The message does not authenticate: modified, sealed to another key, or not for this context."""


class ChannelKeyError(ChannelError):
    """The loader key cannot be used: not attested (thumbprint mismatch) or of a type HPKE cannot use."""


@dataclass(frozen=True)
class _Kem:
    iana_id: int
    kem: hpke.KEM
    enc_bytes: int
    curve: str


_KEMS: Final = {
    "X25519": _Kem(0x0020, hpke.KEM.X25519, 32, "X25519"),
    "P-256": _Kem(0x0010, hpke.KEM.P256, 65, "P-256"),
    "P-384": _Kem(0x0011, hpke.KEM.P384, 97, "P-384"),
    "P-521": _Kem(0x0012, hpke.KEM.P521, 133, "P-521"),
}
_EC_CURVE_NAMES: Final = {"secp256r1": "P-256", "secp384r1": "P-384", "secp521r1": "P-521"}
_EC_COORDINATE_BYTES: Final = {"P-256": 32, "P-384": 48, "P-521": 66}


def _suite(kem: _Kem) -> hpke.Suite:
    return hpke.Suite(kem.kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _request_info(header: bytes) -> bytes:
    return REQUEST_LABEL + b"\x00" + header


def _kem_for_private_key(key: object) -> _Kem:
    if isinstance(key, X25519PrivateKey):
        return _KEMS["X25519"]
    if isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name in _EC_CURVE_NAMES:
        return _KEMS[_EC_CURVE_NAMES[key.curve.name]]
    raise ChannelKeyError("a loader key is an X25519 or EC P-256/P-384/P-521 private key")


def loader_public_jwk(private_key: LoaderPrivateKey) -> dict[str, str]:
    """The public JWK of a loader key (thumbprint members only): what the loader publishes to callers."""
    kem = _kem_for_private_key(private_key)
    if isinstance(private_key, X25519PrivateKey):
        raw = private_key.public_key().public_bytes_raw()
        return {"crv": "X25519", "kty": "OKP", "x": _b64url(raw)}
    size = _EC_COORDINATE_BYTES[kem.curve]
    numbers = private_key.public_key().public_numbers()
    return {
        "crv": kem.curve,
        "kty": "EC",
        "x": _b64url(numbers.x.to_bytes(size, "big")),
        "y": _b64url(numbers.y.to_bytes(size, "big")),
    }


# --- payloads ------------------------------------------------------------------------------------------


def _check_json_value(value: object, depth: int = 0) -> None:
    # json.dumps would silently turn {1: "a"} into {"1": "a"} and a tuple into a list: the loader would
    # then see something the caller did not send. Refuse instead.
    if depth > 256:
        raise ValueError("the payload is nested more than 256 levels deep")
    if isinstance(value, Mapping):
        for name, member in value.items():
            if not isinstance(name, str):
                raise ValueError(f"payload member names must be strings, not {type(name).__name__}")
            _check_json_value(member, depth + 1)
    elif isinstance(value, list):
        for item in value:
            _check_json_value(item, depth + 1)
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("the payload contains a non-finite number, which JSON cannot carry")
    elif value is not None and not isinstance(value, str | int | bool):
        raise TypeError(f"the payload contains a {type(value).__name__}, which is not a JSON value")


def _encode_payload(payload: Mapping[str, Any]) -> bytes:
    if not isinstance(payload, Mapping):
        raise TypeError("the payload must be a JSON object (a Mapping)")
    _check_json_value(payload)
    try:
        raw = json.dumps(dict(payload), ensure_ascii=False, allow_nan=False, separators=(",", ":"))
        encoded = raw.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(
            "the payload contains a string that is not valid Unicode (a lone surrogate)"
        ) from None
    if len(encoded) > MAX_PAYLOAD_BYTES:
        raise ValueError(
            f"the payload is {len(encoded)} bytes of JSON; at most {MAX_PAYLOAD_BYTES} are allowed"
        )
    return encoded


def _decode_payload(raw: bytes) -> dict[str, Any]:
    # Only reached after authentication: a malformed payload here comes from the peer itself.
    try:
        value = loads_strict(raw)
    except ValueError as exc:
        raise ChannelFormatError(f"the payload is not strict JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ChannelFormatError("the payload is not a JSON object")
    return value


# --- transport -----------------------------------------------------------------------------------------


def message_to_text(message: bytes) -> str:
    """A message as unpadded base64url, for JSON transport."""
    return _b64url(bytes(message))


def message_from_text(text: str) -> bytes:
    """The message in ``text`` (unpadded, canonical base64url); ``ChannelFormatError`` otherwise."""
    if not isinstance(text, str):
        raise ChannelFormatError("a message in text form is a base64url string")
    if len(text) > MAX_TEXT_CHARS:
        raise ChannelFormatError(f"the message is longer than {MAX_TEXT_CHARS} characters")
    if not _B64URL_RE.fullmatch(text) or len(text) % 4 == 1:
        raise ChannelFormatError("the message is not unpadded base64url")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ChannelFormatError("the message is not unpadded base64url") from None
    if _b64url(raw) != text:
        raise ChannelFormatError("the message is not canonical base64url (non-zero trailing bits)")
    return raw


def _check_message(message: bytes, expected_type: int) -> memoryview:
    if not isinstance(message, bytes | bytearray | memoryview):
        raise ChannelFormatError("a message is bytes (use message_from_text for its text form)")
    view = memoryview(message).cast("B")
    if len(view) > MAX_MESSAGE_BYTES:
        raise ChannelFormatError(f"the message is longer than {MAX_MESSAGE_BYTES} bytes")
    if len(view) < 2:
        raise ChannelFormatError("the message is truncated: it has no header")
    if view[0] != PROTOCOL_VERSION:
        raise ChannelFormatError(
            f"protocol version {view[0]} is not supported (this peer speaks {PROTOCOL_VERSION})"
        )
    if view[1] != expected_type:
        names = {TYPE_REQUEST: "a request", TYPE_RESPONSE: "a response"}
        found = names.get(view[1], f"of unknown type {view[1]}")
        raise ChannelFormatError(f"the message is {found}, not {names[expected_type]}")
    return view


# --- responses -----------------------------------------------------------------------------------------


def _response_aead(reply_secret: bytes, enc: bytes, response_nonce: bytes) -> tuple[AESGCM, bytes]:
    """RFC 9458 §4.4's derivation, with the caller's reply secret where OHTTP has the HPKE exporter."""
    salt = enc + response_nonce

    def expand(label: bytes, length: int) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=label).derive(reply_secret)

    return AESGCM(expand(RESPONSE_KEY_LABEL, 32)), expand(RESPONSE_NONCE_LABEL, 12)


class ResponseSealer:
    """The loader's state for one opened request: seals its one response. Holds a secret: never log it."""

    __slots__ = ("_enc", "_lock", "_reply_secret", "_sealed")

    def __init__(self, reply_secret: bytes, enc: bytes) -> None:
        self._reply_secret = reply_secret
        self._enc = enc
        self._sealed = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ResponseSealer(request_id={self.request_id.hex()!r}, sealed={self._sealed})"

    @property
    def request_id(self) -> bytes:
        """SHA-256 of the request's encapsulated key: unique per sealed request (a replay has the same),
        for a loader that keeps the ids it has answered, for as long as its key lives, to refuse replays."""
        return hashlib.sha256(self._enc).digest()

    def seal(self, payload: Mapping[str, Any]) -> bytes:
        """The response carrying ``payload`` (a JSON object), readable only by the request's author."""
        plaintext = _encode_payload(payload)
        with self._lock:
            if self._sealed:
                raise ChannelError("this request has already been answered; a request has one response")
            self._sealed = True
        response_nonce = secrets.token_bytes(RESPONSE_NONCE_BYTES)
        header = _RESPONSE_HEADER.pack(PROTOCOL_VERSION, TYPE_RESPONSE, response_nonce)
        aead, nonce = _response_aead(self._reply_secret, self._enc, response_nonce)
        return header + aead.encrypt(nonce, plaintext, header)


# --- requests ------------------------------------------------------------------------------------------


def open_request(
    loader_private_key: LoaderPrivateKey, message: bytes
) -> tuple[dict[str, Any], ResponseSealer]:
    """The payload of a request sealed to this loader, and the sealer for its one response."""
    own_kem = _kem_for_private_key(loader_private_key)
    own_thumbprint = jwk_thumbprint(loader_public_jwk(loader_private_key))
    view = _check_message(message, TYPE_REQUEST)
    if len(view) < _REQUEST_HEADER.size:
        raise ChannelFormatError("the request is truncated: its header is incomplete")
    header = bytes(view[: _REQUEST_HEADER.size])
    _, _, kem_id, kdf_id, aead_id, thumbprint = _REQUEST_HEADER.unpack(header)
    if not hmac.compare_digest(thumbprint, own_thumbprint):
        raise ChannelAuthenticationError(
            f"the request is sealed to loader key {_b64url(thumbprint)}, not to this loader's"
            f" {_b64url(own_thumbprint)}"
        )
    if (kem_id, kdf_id, aead_id) != (own_kem.iana_id, KDF_HKDF_SHA256, AEAD_AES_256_GCM):
        raise ChannelFormatError(
            f"the request's HPKE suite (KEM {kem_id:#06x}, KDF {kdf_id:#06x}, AEAD {aead_id:#06x}) is not"
            f" this loader's (KEM {own_kem.iana_id:#06x}, HKDF-SHA256, AES-256-GCM)"
        )
    sealed = bytes(view[_REQUEST_HEADER.size :])
    if len(sealed) < own_kem.enc_bytes + REPLY_SECRET_BYTES + TAG_BYTES:
        raise ChannelFormatError("the request is truncated")
    try:
        plaintext = _suite(own_kem).decrypt(sealed, loader_private_key, info=_request_info(header))
    except (InvalidTag, ValueError):
        # ValueError: an encapsulated key that is not a valid point (OpenSSL refuses the exchange).
        raise ChannelAuthenticationError(
            "the request does not authenticate: it was modified, or it is not sealed to this loader's key"
        ) from None
    payload = _decode_payload(plaintext[REPLY_SECRET_BYTES:])
    return payload, ResponseSealer(plaintext[:REPLY_SECRET_BYTES], sealed[: own_kem.enc_bytes])
