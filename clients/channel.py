"""End-to-end encryption of inference requests and completions between a caller and the trusted loader,
through an untrusted inference server (docs/e2e-encryption.md).

The construction is Oblivious HTTP's (RFC 9458 §4.3-4.4) over HPKE (RFC 9180, base mode, from
``cryptography.hazmat.primitives.hpke``):

* **request**: the caller HPKE-seals ``reply_secret || payload`` to the loader's attested public key,
  with ``info = "keyserver-inference-v1 request" || 0x00 || header``; the header names the protocol
  version, the message type, the HPKE suite and the RFC 7638 thumbprint of the loader key, so every one
  of those is authenticated by the key schedule.
* **response**: the loader seals the completion with AES-256-GCM under a key derived (HKDF-SHA256) from
  the caller's fresh ``reply_secret``, the request's encapsulated key and a fresh response nonce. Only
  whoever chose ``reply_secret`` — the caller — can read it, even when the request was replayed.

Why a ``reply_secret`` rather than RFC 9458's HPKE exporter: cryptography's HPKE API is single-shot
(``Suite.encrypt``/``decrypt``) and exposes neither the exporter secret nor AAD (only ``info``). A secret
carried inside the sealed request gives the response the same property (it is readable only by the
request's author) with nothing but the public API.

The caller must know which key to seal to: the loader's attestation-result token (an EAR JWT issued by
keyserver) carries only its thumbprint (``cnf.jkt``), so ``seal_request`` takes the JWK *and* the
attested thumbprint and refuses a JWK that does not match it.

Replay: the loader cannot tell a replayed request from the original on its own (it keeps no state); it
answers again, and the answer is readable only by the original caller. ``ResponseSealer.request_id``
lets a loader that wants to refuse replays remember what it has answered for as long as its key lives.
"""

from __future__ import annotations

import hmac
import secrets
import threading
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

# The loader's side (the message format, opening requests, sealing responses) is its own module, the
# only one the loader imports: its measured image holds no caller code. Re-exported here.
from clients.channel_loader import (
    _EC_CURVE_NAMES,
    _KEMS,
    _REQUEST_HEADER,
    _RESPONSE_HEADER,
    AEAD_AES_256_GCM,
    KDF_HKDF_SHA256,
    MAX_MESSAGE_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_TEXT_CHARS,
    PROTOCOL_VERSION,
    REPLY_SECRET_BYTES,
    TAG_BYTES,
    TYPE_REQUEST,
    TYPE_RESPONSE,
    ChannelAuthenticationError,
    ChannelError,
    ChannelFormatError,
    ChannelKeyError,
    LoaderPrivateKey,
    LoaderPublicKey,
    ResponseSealer,
    _b64url,
    _check_message,
    _decode_payload,
    _encode_payload,
    _Kem,
    _request_info,
    _response_aead,
    _suite,
    loader_public_jwk,
    message_from_text,
    message_to_text,
    open_request,
)
from keyserver.binding import jwk_thumbprint
from keyserver.ephemeral_key import parse_ephemeral_jwk
from keyserver.errors import EvidenceError

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_PAYLOAD_BYTES",
    "MAX_TEXT_CHARS",
    "PROTOCOL_VERSION",
    "CallerContext",
    "ChannelAuthenticationError",
    "ChannelError",
    "ChannelFormatError",
    "ChannelKeyError",
    "LoaderPrivateKey",
    "LoaderPublicKey",
    "ResponseSealer",
    "loader_public_jwk",
    "message_from_text",
    "message_to_text",
    "open_request",
    "seal_request",
]


class CallerContext:
    """The caller's state for one request: opens its one response. Holds a secret: never log it."""

    __slots__ = ("_enc", "_loader_jkt", "_lock", "_opened", "_reply_secret")

    def __init__(self, reply_secret: bytes, enc: bytes, loader_jkt: str) -> None:
        self._reply_secret = reply_secret
        self._enc = enc
        self._loader_jkt = loader_jkt
        self._opened = False
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"CallerContext(loader_jkt={self._loader_jkt!r}, opened={self._opened})"

    @property
    def loader_jkt(self) -> str:
        """The thumbprint (base64url) of the loader key the request was sealed to."""
        return self._loader_jkt

    def open_response(self, message: bytes) -> dict[str, Any]:
        """The completion in the loader's ``message``. Once: a second response to one request is refused."""
        view = _check_message(message, TYPE_RESPONSE)
        if len(view) < _RESPONSE_HEADER.size + TAG_BYTES:
            raise ChannelFormatError("the response is truncated")
        header = bytes(view[: _RESPONSE_HEADER.size])
        _, _, response_nonce = _RESPONSE_HEADER.unpack(header)
        aead, nonce = _response_aead(self._reply_secret, self._enc, response_nonce)
        with self._lock:
            if self._opened:
                raise ChannelError(
                    "this request's response has already been opened; a request has one response"
                )
            try:
                plaintext = aead.decrypt(nonce, view[_RESPONSE_HEADER.size :], header)
            except InvalidTag:
                raise ChannelAuthenticationError(
                    "the response does not authenticate: it was modified, or it answers another request"
                ) from None
            self._opened = True
        return _decode_payload(plaintext)


# --- requests -------------------------------------------------------------------------------------------


def _attested_public_key(
    loader_public_jwk: Mapping[str, Any], attested_jkt: str
) -> tuple[LoaderPublicKey, _Kem, bytes]:
    try:
        key, normalized = parse_ephemeral_jwk(loader_public_jwk)
    except EvidenceError as exc:
        raise ChannelKeyError(f"the loader key is not valid: {exc.message}") from None
    thumbprint = jwk_thumbprint(normalized)
    if not isinstance(attested_jkt, str) or not hmac.compare_digest(_b64url(thumbprint), attested_jkt):
        raise ChannelKeyError(
            f"the loader key's thumbprint is {_b64url(thumbprint)}, not the attested {attested_jkt!r}: seal"
            " only to the key named by cnf.jkt in the loader's verified attestation-result token"
        )
    if isinstance(key, X25519PublicKey):
        return key, _KEMS["X25519"], thumbprint
    if isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in _EC_CURVE_NAMES:
        return key, _KEMS[_EC_CURVE_NAMES[key.curve.name]], thumbprint
    raise ChannelKeyError(
        "the loader key is an RSA key, and HPKE has no RSA KEM: the loader must use an X25519 or EC key"
    )


def seal_request(
    loader_public_jwk: Mapping[str, Any], payload: Mapping[str, Any], *, attested_jkt: str
) -> tuple[bytes, CallerContext]:
    """Seal ``payload`` (a JSON object) to the loader; return the request and the context that opens
    its response.

    ``attested_jkt`` is ``cnf.jkt`` from the loader's attestation-result token, which the caller has
    verified (keyserver.attestation_token); ``loader_public_jwk`` came from anywhere, and is refused
    (``ChannelKeyError``) unless its RFC 7638 thumbprint is exactly that.
    """
    public_key, kem, thumbprint = _attested_public_key(loader_public_jwk, attested_jkt)
    header = _REQUEST_HEADER.pack(
        PROTOCOL_VERSION, TYPE_REQUEST, kem.iana_id, KDF_HKDF_SHA256, AEAD_AES_256_GCM, thumbprint
    )
    reply_secret = secrets.token_bytes(REPLY_SECRET_BYTES)
    sealed = _suite(kem).encrypt(
        reply_secret + _encode_payload(payload), public_key, info=_request_info(header)
    )
    return header + sealed, CallerContext(reply_secret, sealed[: kem.enc_bytes], _b64url(thumbprint))
