"""End-to-end encryption between caller and loader (clients/channel.py, docs/e2e-encryption.md)."""

from __future__ import annotations

import base64
import json
import os
import struct
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, hpke
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import given, settings
from hypothesis import strategies as st

from clients import channel
from clients.channel import (
    MAX_PAYLOAD_BYTES,
    CallerContext,
    ChannelAuthenticationError,
    ChannelError,
    ChannelFormatError,
    ChannelKeyError,
    LoaderPrivateKey,
    loader_public_jwk,
    message_from_text,
    message_to_text,
    open_request,
    seal_request,
)
from clients.weights import encrypt_weights
from keyserver.binding import jwk_thumbprint

KEY_FACTORIES: dict[str, Callable[[], LoaderPrivateKey]] = {
    "X25519": X25519PrivateKey.generate,
    "P-256": lambda: ec.generate_private_key(ec.SECP256R1()),
    "P-384": lambda: ec.generate_private_key(ec.SECP384R1()),
    "P-521": lambda: ec.generate_private_key(ec.SECP521R1()),
}
PROMPT = {"model": "m", "messages": [{"role": "user", "content": "what is the secret-marker-7f3a?"}]}
COMPLETION = {"choices": [{"message": {"role": "assistant", "content": "answer-marker-91bc"}}]}


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _jkt(jwk: dict[str, Any]) -> str:
    return _b64url(jwk_thumbprint(jwk))


def _seal(loader: LoaderPrivateKey, payload: dict[str, Any] = PROMPT) -> tuple[bytes, CallerContext]:
    jwk = loader_public_jwk(loader)
    return seal_request(jwk, payload, attested_jkt=_jkt(jwk))


@pytest.fixture(params=["X25519", "P-256"])
def loader(request: pytest.FixtureRequest) -> LoaderPrivateKey:
    return KEY_FACTORIES[request.param]()


# --- round trips ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("curve", sorted(KEY_FACTORIES))
def test_round_trip(curve: str) -> None:
    loader = KEY_FACTORIES[curve]()
    request, context = _seal(loader)
    payload, sealer = open_request(loader, request)
    assert payload == PROMPT
    response = sealer.seal(COMPLETION)
    assert context.open_response(response) == COMPLETION
    assert context.loader_jkt == _jkt(loader_public_jwk(loader))


def test_round_trip_through_text(loader: LoaderPrivateKey) -> None:
    request, context = _seal(loader, {"prompt": "héllo ☃", "n": [1, 2.5, None, True, {"deep": []}]})
    text = message_to_text(request)
    assert json.loads(json.dumps({"request": text}))["request"] == text
    payload, sealer = open_request(loader, message_from_text(text))
    assert payload == {"prompt": "héllo ☃", "n": [1, 2.5, None, True, {"deep": []}]}
    assert context.open_response(message_from_text(message_to_text(sealer.seal({})))) == {}


def test_the_ciphertexts_do_not_contain_the_plaintext(loader: LoaderPrivateKey) -> None:
    request, context = _seal(loader)
    _, sealer = open_request(loader, request)
    response = sealer.seal(COMPLETION)
    for message in (request, response):
        assert b"marker" not in message
        assert "marker" not in message_to_text(message)
    assert b"secret-marker-7f3a" in json.dumps(PROMPT).encode()  # the check above looks for something real
    # The same prompt sealed twice gives unrelated ciphertexts.
    again, _ = _seal(loader)
    assert again[40:] != request[40:]
    assert context.open_response(response) == COMPLETION


# --- who can open what ---------------------------------------------------------------------------------


def test_a_response_cannot_be_opened_by_another_caller(loader: LoaderPrivateKey) -> None:
    request_a, caller_a = _seal(loader)
    request_b, caller_b = _seal(loader)
    _, sealer_a = open_request(loader, request_a)
    _, sealer_b = open_request(loader, request_b)
    response_a, response_b = sealer_a.seal({"for": "a"}), sealer_b.seal({"for": "b"})
    with pytest.raises(ChannelAuthenticationError, match="answers another request"):
        caller_b.open_response(response_a)
    with pytest.raises(ChannelAuthenticationError):
        caller_a.open_response(response_b)
    # A failed attempt does not use the context up.
    assert caller_a.open_response(response_a) == {"for": "a"}
    assert caller_b.open_response(response_b) == {"for": "b"}


def test_a_replayed_request_gets_a_response_only_the_original_caller_can_read(
    loader: LoaderPrivateKey,
) -> None:
    request, caller = _seal(loader)
    _, bystander = _seal(loader)
    _, first = open_request(loader, request)
    _, replayed = open_request(loader, request)
    assert replayed.request_id == first.request_id
    assert open_request(loader, _seal(loader)[0])[1].request_id != first.request_id
    response = replayed.seal(COMPLETION)
    with pytest.raises(ChannelAuthenticationError):
        bystander.open_response(response)
    assert caller.open_response(response) == COMPLETION


def test_a_request_cannot_be_opened_with_another_loader_key(loader: LoaderPrivateKey) -> None:
    request, _ = _seal(loader)
    other = (
        X25519PrivateKey.generate()
        if isinstance(loader, X25519PrivateKey)
        else ec.generate_private_key(ec.SECP256R1())
    )
    with pytest.raises(ChannelAuthenticationError, match="not to this loader's"):
        open_request(other, request)
    # Rewriting the header's thumbprint to the other key's does not help: the key cannot open it.
    forged = request[:8] + jwk_thumbprint(loader_public_jwk(other)) + request[40:]
    with pytest.raises(ChannelAuthenticationError, match="does not authenticate"):
        open_request(other, forged)


def test_a_request_for_another_key_type_is_refused() -> None:
    p256, x25519 = KEY_FACTORIES["P-256"](), KEY_FACTORIES["X25519"]()
    request, _ = _seal(p256)
    with pytest.raises(ChannelAuthenticationError, match="not to this loader's"):
        open_request(x25519, request)
    # The right thumbprint with another suite in the header: refused before any decryption.
    forged = request[:2] + struct.pack(">H", 0x0020) + request[4:]
    with pytest.raises(ChannelFormatError, match="HPKE suite"):
        open_request(p256, forged)


# --- the caller seals only to the attested key ---------------------------------------------------------


def test_seal_request_refuses_a_key_that_is_not_the_attested_one(loader: LoaderPrivateKey) -> None:
    jwk = loader_public_jwk(loader)
    other = loader_public_jwk(X25519PrivateKey.generate())
    with pytest.raises(ChannelKeyError, match="not the attested"):
        seal_request(jwk, PROMPT, attested_jkt=_jkt(other))
    with pytest.raises(ChannelKeyError, match="not the attested"):
        seal_request(jwk, PROMPT, attested_jkt=_jkt(jwk)[:-1])


def test_rsa_and_other_loader_keys_are_refused() -> None:
    numbers = rsa.generate_private_key(65537, 2048).public_key().public_numbers()
    rsa_jwk = {
        "kty": "RSA",
        "e": "AQAB",
        "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
    }
    with pytest.raises(ChannelKeyError, match="HPKE has no RSA KEM"):
        seal_request(rsa_jwk, PROMPT, attested_jkt=_jkt(rsa_jwk))
    ed_jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(bytes(32))}
    with pytest.raises(ChannelKeyError, match="not valid"):
        seal_request(ed_jwk, PROMPT, attested_jkt=_jkt(ed_jwk))
    private_jwk = {**loader_public_jwk(X25519PrivateKey.generate()), "d": _b64url(bytes(32))}
    with pytest.raises(ChannelKeyError, match="private-key members"):
        seal_request(private_jwk, PROMPT, attested_jkt=_jkt(private_jwk))
    with pytest.raises(ChannelKeyError, match="X25519 or EC"):
        open_request(rsa.generate_private_key(65537, 2048), b"\x01\x01")  # type: ignore[arg-type]
    with pytest.raises(ChannelKeyError, match="X25519 or EC"):
        loader_public_jwk(ed25519.Ed25519PrivateKey.generate())  # type: ignore[arg-type]
    with pytest.raises(ChannelKeyError, match="X25519 or EC"):
        loader_public_jwk(ec.generate_private_key(ec.SECP256K1()))


# --- tampering -----------------------------------------------------------------------------------------


def test_every_flipped_bit_of_a_request_is_refused() -> None:
    loader = X25519PrivateKey.generate()
    request, _ = _seal(loader, {"p": "x"})
    for position in range(len(request)):
        for mask in (0x01, 0x80):
            tampered = bytearray(request)
            tampered[position] ^= mask
            with pytest.raises(ChannelError):
                open_request(loader, bytes(tampered))


def test_every_flipped_bit_of_a_response_is_refused(loader: LoaderPrivateKey) -> None:
    request, context = _seal(loader)
    response = open_request(loader, request)[1].seal({"c": "y"})
    for position in range(len(response)):
        for mask in (0x01, 0x80):
            tampered = bytearray(response)
            tampered[position] ^= mask
            with pytest.raises(ChannelError):
                context.open_response(bytes(tampered))
    assert context.open_response(response) == {"c": "y"}


def test_truncated_and_extended_messages_are_refused(loader: LoaderPrivateKey) -> None:
    request, context = _seal(loader, {"p": "x"})
    response = open_request(loader, request)[1].seal({"c": "y"})
    for length in range(len(request)):
        with pytest.raises(ChannelError):
            open_request(loader, request[:length])
    for length in range(len(response)):
        with pytest.raises(ChannelError):
            context.open_response(response[:length])
    with pytest.raises(ChannelAuthenticationError):
        open_request(loader, request + b"\x00")
    with pytest.raises(ChannelAuthenticationError):
        context.open_response(response + b"\x00")


def test_cross_protocol_swaps_are_refused(loader: LoaderPrivateKey) -> None:
    request, context = _seal(loader)
    response = open_request(loader, request)[1].seal(COMPLETION)
    with pytest.raises(ChannelFormatError, match="is a response, not a request"):
        open_request(loader, response)
    with pytest.raises(ChannelFormatError, match="is a request, not a response"):
        context.open_response(request)
    weights_blob = encrypt_weights(b"w", os.urandom(32), key_id="weights/1")
    with pytest.raises(ChannelFormatError, match="version"):
        open_request(loader, weights_blob)
    with pytest.raises(ChannelFormatError, match="version"):
        context.open_response(weights_blob)
    with pytest.raises(ChannelFormatError, match="version 2 is not supported"):
        open_request(loader, b"\x02" + request[1:])
    with pytest.raises(ChannelFormatError, match="unknown type 3"):
        open_request(loader, request[:1] + b"\x03" + request[2:])
    assert context.open_response(response) == COMPLETION


def test_one_response_per_request(loader: LoaderPrivateKey) -> None:
    request, context = _seal(loader)
    _, sealer = open_request(loader, request)
    response = sealer.seal(COMPLETION)
    with pytest.raises(ChannelError, match="already been answered"):
        sealer.seal(COMPLETION)
    assert context.open_response(response) == COMPLETION
    with pytest.raises(ChannelError, match="already been opened"):
        context.open_response(response)


def test_secrets_are_not_in_reprs(loader: LoaderPrivateKey) -> None:
    request, context = _seal(loader)
    _, sealer = open_request(loader, request)
    for holder in (context, sealer):
        secret = holder._reply_secret
        assert secret.hex() not in repr(holder)
        assert repr(secret) not in repr(holder)


# --- payloads ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ({"x": float("nan")}, ValueError),
        ({"x": [float("inf")]}, ValueError),
        ({1: "a"}, ValueError),
        ({"x": ("a", "b")}, TypeError),
        ({"x": b"bytes"}, TypeError),
        ({"x": "\ud800"}, ValueError),
        (["not", "an", "object"], TypeError),
        ({"x": "a" * MAX_PAYLOAD_BYTES}, ValueError),
    ],
)
def test_payloads_that_are_not_json_objects_are_refused(
    loader: LoaderPrivateKey, payload: Any, error: type[Exception]
) -> None:
    jwk = loader_public_jwk(loader)
    with pytest.raises(error):
        seal_request(jwk, payload, attested_jkt=_jkt(jwk))
    _, sealer = open_request(loader, _seal(loader)[0])
    with pytest.raises(error):
        sealer.seal(payload)
    sealer.seal({})  # a refused payload does not use the sealer up


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(st.text(), json_values, max_size=6))
def test_any_json_object_round_trips(payload: dict[str, Any]) -> None:
    loader = X25519PrivateKey.generate()
    request, context = _seal(loader, payload)
    opened, sealer = open_request(loader, request)
    assert opened == payload
    assert context.open_response(sealer.seal(payload)) == payload


# --- from the spec alone (docs/e2e-encryption.md) ------------------------------------------------------


def _spec_request(
    loader: LoaderPrivateKey, payload: bytes, kem_id: int, kem: hpke.KEM, reply_secret: bytes
) -> bytes:
    header = struct.pack(">BBHHH", 1, 1, kem_id, 0x0001, 0x0002) + jwk_thumbprint(loader_public_jwk(loader))
    suite = hpke.Suite(kem, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)
    info = b"keyserver-inference-v1 request" + b"\x00" + header
    return header + suite.encrypt(reply_secret + payload, loader.public_key(), info=info)


def test_a_request_and_response_built_from_the_spec() -> None:
    loader = ec.generate_private_key(ec.SECP256R1())
    reply_secret = os.urandom(32)
    request = _spec_request(loader, b'{"prompt":"from the spec"}', 0x0010, hpke.KEM.P256, reply_secret)
    payload, sealer = open_request(loader, request)
    assert payload == {"prompt": "from the spec"}
    response = sealer.seal({"completion": "ok"})
    assert response[:2] == b"\x01\x02"
    assert len(response) == 34 + len(b'{"completion":"ok"}') + 16
    enc, response_nonce = request[40 : 40 + 65], response[2:34]

    def expand(label: bytes, length: int) -> bytes:
        return HKDF(hashes.SHA256(), length, enc + response_nonce, label).derive(reply_secret)

    aead_key = expand(b"keyserver-inference-v1 response key", 32)
    aead_nonce = expand(b"keyserver-inference-v1 response nonce", 12)
    assert AESGCM(aead_key).decrypt(aead_nonce, response[34:], response[:34]) == b'{"completion":"ok"}'


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b'{"a":1,"a":2}', "duplicate member"),
        (b'{"a":NaN}', "NaN is not JSON"),
        (b'{"a":-Infinity}', "Infinity is not JSON"),
        (b'["not an object"]', "not a JSON object"),
        (b"\xff{}", "not strict JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "not strict JSON"),
        (b"", "not strict JSON"),
    ],
)
def test_the_loader_parses_payloads_strictly(raw: bytes, message: str) -> None:
    loader = X25519PrivateKey.generate()
    request = _spec_request(loader, raw, 0x0020, hpke.KEM.X25519, os.urandom(32))
    with pytest.raises(ChannelFormatError, match=message):
        open_request(loader, request)


# --- hypothesis: the parsers raise only the typed errors -----------------------------------------------

_LOADER = X25519PrivateKey.generate()
_REQUEST, _ = _seal(_LOADER, {"p": "hypothesis"})


@settings(max_examples=300)
@given(st.binary(max_size=300))
def test_arbitrary_bytes_raise_only_typed_errors(data: bytes) -> None:
    with pytest.raises(ChannelError):
        open_request(_LOADER, data)
    with pytest.raises(ChannelError):
        open_request(_LOADER, _REQUEST[:40] + data)
    _, context = _seal(_LOADER)
    with pytest.raises(ChannelError):
        context.open_response(data)
    with pytest.raises(ChannelError):
        context.open_response(b"\x01\x02" + data)


@settings(max_examples=300)
@given(st.data())
def test_mutated_requests_are_always_refused(data: st.DataObject) -> None:
    message = bytearray(_REQUEST)
    position = data.draw(st.integers(0, len(message) - 1))
    kind = data.draw(st.sampled_from(["replace", "delete", "insert"]))
    if kind == "replace":
        message[position] = data.draw(st.integers(0, 255).filter(lambda b: b != message[position]))
    elif kind == "delete":
        del message[position : position + data.draw(st.integers(1, 40))]
    else:
        message[position:position] = data.draw(st.binary(min_size=1, max_size=40))
    with pytest.raises(ChannelError):
        open_request(_LOADER, bytes(message))


@settings(max_examples=300)
@given(st.text(max_size=200))
def test_message_from_text_accepts_only_canonical_base64url(text: str) -> None:
    try:
        raw = message_from_text(text)
    except ChannelFormatError:
        return
    assert message_to_text(raw) == text


def test_message_from_text_refusals() -> None:
    with pytest.raises(ChannelFormatError, match="not unpadded base64url"):
        message_from_text("AQI=")
    with pytest.raises(ChannelFormatError, match="not canonical"):
        message_from_text("AR")
    with pytest.raises(ChannelFormatError, match="longer than"):
        message_from_text("A" * (channel.MAX_TEXT_CHARS + 1))
    with pytest.raises(ChannelFormatError, match="is bytes"):
        open_request(_LOADER, message_to_text(_REQUEST))  # type: ignore[arg-type]


def test_the_loader_s_channel_module_is_what_clients_channel_exports() -> None:
    # The loader imports clients.channel_loader alone (no caller code in its measured image); callers
    # import clients.channel. One implementation behind both names.
    from clients import channel_loader

    for name in ("open_request", "ResponseSealer", "ChannelError", "message_from_text", "MAX_TEXT_CHARS"):
        assert getattr(channel, name) is getattr(channel_loader, name), name
