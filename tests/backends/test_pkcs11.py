"""The pkcs11 backend against a real SoftHSM2 token.

What must hold: data keys are generated in the token and leave it only wrapped; blobs are bound to
their context by the token itself; the KEK cannot be read out; a release can be made inside the token
as a standard JWE whose content-encryption key is the data key; a wrong PIN or a missing token is a
clear BackendError (and a wrong PIN is not retried).
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from typing import cast

import pkcs11
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.keywrap import InvalidUnwrap, aes_key_unwrap_with_padding
from hypothesis import given, settings
from hypothesis import strategies as st
from joserfc import jwe as joserfc_jwe
from joserfc.jwk import RSAKey

# jwcrypto (the interop peer) ships no type information.
from jwcrypto import jwe as jwcrypto_jwe
from jwcrypto import jwk as jwcrypto_jwk
from pkcs11 import Attribute, KeyType, Mechanism, MechanismFlag, ObjectClass, Session
from pkcs11.exceptions import AttributeSensitive, KeyUnextractable
from pkcs11.types import WrapMixin

from keyserver.backends.base import BackendError, JweParts, KeyBackend
from keyserver.backends.pkcs11 import Pkcs11Backend, expected_kwp_bytes, parse_blob
from tests.backends.conftest import unique
from tests.fixtures.softhsm import SoftHsmToken

pytestmark = pytest.mark.softhsm

HEADER = json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM", "kid": "tenant-a/key/1"}).encode()
CONTEXT = b"keyserver/key/v1/tenant-a/key/1"


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _oaep_sha1() -> padding.OAEP:
    return padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303


def test_is_a_key_backend(hsm: Pkcs11Backend) -> None:
    backend: KeyBackend = hsm  # checked by mypy: the class satisfies the protocol
    assert backend.name == "pkcs11"


async def test_generate_and_unwrap(hsm: Pkcs11Backend) -> None:
    wrapped = await hsm.generate_data_key(CONTEXT)
    # 0x11, length 32, RFC 5649 output of a 32-byte key.
    assert wrapped[:3] == b"\x11\x00\x20"
    assert len(wrapped) == 3 + expected_kwp_bytes(32) == 43
    key = await hsm.unwrap_to_memory(wrapped, CONTEXT)
    assert len(key) == 32
    other = await hsm.unwrap_to_memory(await hsm.generate_data_key(CONTEXT), CONTEXT)
    assert key != other


@pytest.mark.parametrize("length", [16, 17, 24, 32, 33, 48, 64])
async def test_generate_any_length(hsm: Pkcs11Backend, length: int) -> None:
    wrapped = await hsm.generate_data_key(CONTEXT, length)
    assert parse_blob(wrapped)[0] == length
    assert len(await hsm.unwrap_to_memory(wrapped, CONTEXT)) == length


@pytest.mark.parametrize("length", [16, 31, 32, 64])
async def test_import_round_trip(hsm: Pkcs11Backend, length: int) -> None:
    material = bytes(range(100, 100 + length))
    wrapped = await hsm.import_data_key(material, CONTEXT)
    assert material not in wrapped
    assert await hsm.unwrap_to_memory(wrapped, CONTEXT) == material


async def test_wrap_for_the_release_log(hsm: Pkcs11Backend) -> None:
    # The release log wraps its Ed25519 signing keys (32 raw bytes) with wrap/unwrap.
    secret = bytes(range(32))
    context = b"keyserver/log-signing-key/v1/" + uuid.uuid4().bytes
    wrapped = await hsm.wrap(secret, context)
    assert await hsm.unwrap(wrapped, context) == secret
    # Longer secrets (a PKCS#8 document, say) fit too.
    document = bytes(300)
    assert await hsm.unwrap(await hsm.wrap(document, context), context) == document


async def test_context_binding(hsm: Pkcs11Backend) -> None:
    wrapped = await hsm.generate_data_key(CONTEXT)
    for other in (b"keyserver/key/v1/tenant-b/key/1", CONTEXT + b"0", CONTEXT[:-1], b""):
        with pytest.raises(BackendError, match="does not unwrap"):
            await hsm.unwrap_to_memory(wrapped, other)
    # The length field is in clear but part of the derivation: changing it breaks the unwrap.
    length, kwp = parse_blob(wrapped)
    relabelled = b"\x11" + (length - 1).to_bytes(2, "big") + kwp
    with pytest.raises(BackendError, match="does not unwrap"):
        await hsm.unwrap_to_memory(relabelled, CONTEXT)


async def test_another_kek_does_not_unwrap(hsm: Pkcs11Backend, softhsm_token: SoftHsmToken) -> None:
    wrapped = await hsm.generate_data_key(CONTEXT)
    other = Pkcs11Backend(
        softhsm_token.module_path, softhsm_token.label, softhsm_token.user_pin, unique("kek")
    )
    try:
        with pytest.raises(BackendError, match="does not unwrap"):
            await other.unwrap_to_memory(wrapped, CONTEXT)
    finally:
        await other.aclose()


async def test_blob_is_not_rfc5649_under_any_key_we_know(hsm: Pkcs11Backend) -> None:
    # Sanity check on the format: the RFC 5649 part is a real key wrap (it is not the key in clear, and
    # a random KEK does not open it).
    wrapped = await hsm.import_data_key(b"\x42" * 32, CONTEXT)
    _, kwp = parse_blob(wrapped)
    assert b"\x42" * 8 not in kwp
    with pytest.raises(InvalidUnwrap):
        aes_key_unwrap_with_padding(bytes(32), kwp)


async def test_kek_is_non_extractable(hsm: Pkcs11Backend, pkcs11_session: Session) -> None:
    await hsm.generate_data_key(CONTEXT)  # creates the KEK
    (kek,) = pkcs11_session.get_objects(
        {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: hsm._kek_label}
    )
    assert kek[Attribute.TOKEN] is True
    assert kek[Attribute.SENSITIVE] is True
    assert kek[Attribute.EXTRACTABLE] is False
    assert kek[Attribute.NEVER_EXTRACTABLE] is True
    # Its only use is deriving the per-context wrapping keys.
    assert kek[Attribute.DERIVE] is True
    assert not any(kek[a] for a in (Attribute.WRAP, Attribute.UNWRAP, Attribute.ENCRYPT, Attribute.DECRYPT))
    with pytest.raises(AttributeSensitive):
        kek[Attribute.VALUE]
    other = pkcs11_session.generate_key(KeyType.AES, 256, capabilities=MechanismFlag.WRAP)
    assert isinstance(other, WrapMixin)
    with pytest.raises(KeyUnextractable):
        other.wrap_key(kek, mechanism=Mechanism.AES_KEY_WRAP_PAD)  # type: ignore[arg-type]


async def test_existing_kek_is_found_not_recreated(hsm: Pkcs11Backend, softhsm_token: SoftHsmToken) -> None:
    wrapped = await hsm.generate_data_key(CONTEXT)
    await hsm.aclose()
    again = Pkcs11Backend(
        softhsm_token.module_path, softhsm_token.label, softhsm_token.user_pin, hsm._kek_label
    )
    try:
        assert len(await again.unwrap_to_memory(wrapped, CONTEXT)) == 32
    finally:
        await again.aclose()


async def test_unfit_or_ambiguous_kek_is_refused(
    softhsm_token: SoftHsmToken, pkcs11_session: Session
) -> None:
    extractable, twice = unique("kek"), unique("kek")
    pkcs11_session.generate_key(
        KeyType.AES,
        256,
        label=extractable,
        store=True,
        capabilities=MechanismFlag.DERIVE,
        template={Attribute.EXTRACTABLE: True, Attribute.SENSITIVE: False},
    )
    for _ in range(2):
        pkcs11_session.generate_key(
            KeyType.AES,
            256,
            label=twice,
            store=True,
            capabilities=MechanismFlag.DERIVE,
            template={Attribute.EXTRACTABLE: False},
        )
    for label, message in ((extractable, "extractable"), (twice, "exactly one KEK")):
        backend = Pkcs11Backend(softhsm_token.module_path, softhsm_token.label, softhsm_token.user_pin, label)
        try:
            with pytest.raises(BackendError, match=message):
                await backend.generate_data_key(CONTEXT)
        finally:
            await backend.aclose()
    backend = Pkcs11Backend(
        softhsm_token.module_path,
        softhsm_token.label,
        softhsm_token.user_pin,
        unique("absent"),
        create_kek=False,
    )
    with pytest.raises(BackendError, match="there is no key labelled"):
        await backend.health()
    await backend.aclose()


# -- release inside the token --------------------------------------------------------------------


async def _release(
    hsm: Pkcs11Backend, recipient: rsa.RSAPrivateKey, payload: bytes
) -> tuple[bytes, JweParts]:
    wrapped = await hsm.generate_data_key(CONTEXT)
    parts = await hsm.rewrap_for_recipient(wrapped, CONTEXT, recipient.public_key(), HEADER, payload)
    assert parts is not None
    return wrapped, parts


async def test_rewrap_is_a_jwe_for_joserfc(hsm: Pkcs11Backend, recipient_key: rsa.RSAPrivateKey) -> None:
    payload = json.dumps({"kid": "tenant-a/key/1", "log_index": 7}).encode()
    _, parts = await _release(hsm, recipient_key, payload)
    # RSA-OAEP (SHA-1) is outside joserfc's recommended set: allowed explicitly, as a loader would.
    registry = joserfc_jwe.JWERegistry(algorithms=["RSA-OAEP", "A256GCM"])
    for token in (parts.compact(),):
        decrypted = joserfc_jwe.decrypt_compact(token, RSAKey.import_key(recipient_key), registry=registry)
        assert decrypted.plaintext == payload
        assert decrypted.protected == json.loads(HEADER)
    # The flattened JSON serialisation too (joserfc types it as a TypedDict; ours is a plain dict).
    serialised = cast(joserfc_jwe.FlattenedJSONSerialization, parts.flattened())
    flattened = joserfc_jwe.decrypt_json(serialised, RSAKey.import_key(recipient_key), registry=registry)
    assert flattened.plaintext == payload


async def test_rewrap_is_a_jwe_for_jwcrypto(hsm: Pkcs11Backend, recipient_key: rsa.RSAPrivateKey) -> None:
    payload = b"model-weights-key for tenant-a"
    _, parts = await _release(hsm, recipient_key, payload)
    token = jwcrypto_jwe.JWE()
    token.deserialize(parts.compact(), key=jwcrypto_jwk.JWK.from_pyca(recipient_key))
    assert token.payload == payload


async def test_rewrap_cek_is_the_data_key(hsm: Pkcs11Backend, recipient_key: rsa.RSAPrivateKey) -> None:
    payload = b"{}"
    wrapped, parts = await _release(hsm, recipient_key, payload)
    # What a loader does: RSA-OAEP-decrypt encrypted_key, and that is the released key.
    cek = recipient_key.decrypt(parts.encrypted_key, _oaep_sha1())
    # Compared through the memory path, in the test only.
    assert cek == await hsm.unwrap_to_memory(wrapped, CONTEXT)
    aad = parts.compact().split(".")[0].encode("ascii")
    # The header as sent, re-serialised without whitespace (see rewrap_protected_header).
    assert json.loads(_b64url_decode(aad.decode())) == json.loads(HEADER)
    assert b" " not in _b64url_decode(aad.decode())
    assert AESGCM(cek).decrypt(parts.iv, parts.ciphertext + parts.tag, aad) == payload
    assert len(parts.iv) == 12
    assert len(parts.tag) == 16


async def test_rewrap_empty_payload(hsm: Pkcs11Backend, recipient_key: rsa.RSAPrivateKey) -> None:
    _, parts = await _release(hsm, recipient_key, b"")
    registry = joserfc_jwe.JWERegistry(algorithms=["RSA-OAEP", "A256GCM"])
    assert (
        joserfc_jwe.decrypt_compact(
            parts.compact(), RSAKey.import_key(recipient_key), registry=registry
        ).plaintext
        == b""
    )


async def test_rewrap_refuses_what_it_cannot_do(hsm: Pkcs11Backend, recipient_key: rsa.RSAPrivateKey) -> None:
    public = recipient_key.public_key()
    wrapped = await hsm.generate_data_key(CONTEXT)
    # A 16-byte key cannot be an A256GCM CEK: the caller is told to use the memory path.
    short = await hsm.generate_data_key(CONTEXT, 16)
    assert await hsm.rewrap_for_recipient(short, CONTEXT, public, HEADER, b"x") is None
    for header in (
        json.dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM"}).encode(),
        json.dumps({"alg": "RSA-OAEP", "enc": "A128GCM"}).encode(),
        json.dumps({"alg": "RSA-OAEP", "enc": "A256GCM", "zip": "DEF"}).encode(),
        b"[]",
        b"not json",
    ):
        with pytest.raises(ValueError, match=r"protected header|alg|zip"):
            await hsm.rewrap_for_recipient(wrapped, CONTEXT, public, header, b"x")
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()  # noqa: S505
    with pytest.raises(ValueError, match="at least 2048"):
        await hsm.rewrap_for_recipient(wrapped, CONTEXT, weak, HEADER, b"x")
    with pytest.raises(BackendError, match="does not unwrap"):
        await hsm.rewrap_for_recipient(wrapped, b"tenant-b", public, HEADER, b"x")


# -- failures ------------------------------------------------------------------------------------


async def test_wrong_pin_is_a_backend_error_and_not_retried(
    softhsm_token: SoftHsmToken, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = Pkcs11Backend(softhsm_token.module_path, softhsm_token.label, "not-the-pin", unique("kek"))
    with pytest.raises(BackendError, match=r"login to token .* failed: the PIN is incorrect"):
        await backend.health()
    # Later calls fail the same way without another login attempt (which could lock a real HSM's PIN).
    attempts: list[object] = []
    original = pkcs11.Token.open

    def counting_open(self: pkcs11.Token, *args: object, **kwargs: object) -> Session:
        attempts.append(kwargs)
        return original(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(pkcs11.Token, "open", counting_open)
    with pytest.raises(BackendError, match="PIN is incorrect"):
        await backend.generate_data_key(CONTEXT)
    assert attempts == []
    await backend.aclose()


async def test_missing_token_is_a_backend_error(softhsm_token: SoftHsmToken) -> None:
    backend = Pkcs11Backend(softhsm_token.module_path, "no-such-token", softhsm_token.user_pin)
    with pytest.raises(BackendError, match=r"no token labelled 'no-such-token'.*missing or was removed"):
        await backend.health()
    await backend.aclose()


async def test_unloadable_module_is_a_backend_error(softhsm_token: SoftHsmToken) -> None:
    backend = Pkcs11Backend("/nonexistent/libpkcs11.so", softhsm_token.label, softhsm_token.user_pin)
    with pytest.raises(BackendError, match="cannot be loaded"):
        await backend.health()


async def test_lost_session_is_reopened(hsm: Pkcs11Backend) -> None:
    wrapped = await hsm.generate_data_key(CONTEXT)
    # As if the token had been pulled and put back: the session the backend holds is gone.
    assert hsm._session is not None
    hsm._session.close()
    assert len(await hsm.unwrap_to_memory(wrapped, CONTEXT)) == 32
    await hsm.health()


async def test_closed_backend_refuses(hsm: Pkcs11Backend) -> None:
    await hsm.health()
    await hsm.aclose()
    with pytest.raises(BackendError, match="closed"):
        await hsm.generate_data_key(CONTEXT)


async def test_concurrent_use(hsm: Pkcs11Backend, recipient_key: rsa.RSAPrivateKey) -> None:
    # SoftHSM runs without its own locking under python-pkcs11; the backend's lock serialises calls
    # that the event loop starts concurrently on several worker threads.
    async def one(i: int) -> None:
        context = CONTEXT + str(i).encode()
        wrapped = await hsm.generate_data_key(context)
        key = await hsm.unwrap_to_memory(wrapped, context)
        parts = await hsm.rewrap_for_recipient(wrapped, context, recipient_key.public_key(), HEADER, b"p")
        assert parts is not None
        assert recipient_key.decrypt(parts.encrypted_key, _oaep_sha1()) == key

    await asyncio.gather(*(one(i) for i in range(40)))


def test_parse_blob_rejects_malformed() -> None:
    for blob in (
        b"",
        b"\x11",
        b"\x11\x00",
        b"\x11\x00\x20" + bytes(39),
        b"\x11\x00\x00" + bytes(8),
        b"\x01" + bytes(60),
    ):
        with pytest.raises(BackendError):
            parse_blob(blob)


@given(blob=st.binary(max_size=120))
def test_parse_blob_only_raises_backend_error(blob: bytes) -> None:
    try:
        length, kwp = parse_blob(blob)
    except BackendError:
        return
    assert len(kwp) == expected_kwp_bytes(length)


@settings(max_examples=60)
@given(data=st.data())
def test_malformed_blobs_through_the_token_only_raise_backend_error(
    softhsm_token: SoftHsmToken, data: st.DataObject
) -> None:
    # Well-formed headers with altered or random RFC 5649 parts reach the token: still BackendError.
    length = data.draw(st.sampled_from([16, 32, 40]))
    kwp = data.draw(st.binary(min_size=expected_kwp_bytes(length), max_size=expected_kwp_bytes(length)))
    blob = b"\x11" + length.to_bytes(2, "big") + kwp

    async def attempt() -> None:
        backend = Pkcs11Backend(
            softhsm_token.module_path, softhsm_token.label, softhsm_token.user_pin, _FUZZ_KEK
        )
        try:
            with pytest.raises(BackendError):
                await backend.unwrap_to_memory(blob, CONTEXT)
            if length == 32:
                with pytest.raises(BackendError):
                    await backend.rewrap_for_recipient(
                        blob, CONTEXT, _FUZZ_RECIPIENT.public_key(), HEADER, b"x"
                    )
        finally:
            await backend.aclose()

    asyncio.run(attempt())


_FUZZ_KEK = unique("kek-fuzz")
_FUZZ_RECIPIENT = rsa.generate_private_key(public_exponent=65537, key_size=2048)


async def test_vanished_kek_is_not_silently_replaced(hsm: Pkcs11Backend, softhsm_token: SoftHsmToken) -> None:
    wrapped = await hsm.generate_data_key(CONTEXT)
    # Someone deletes the KEK from the token while keyserver runs.
    lib = pkcs11.lib(softhsm_token.module_path)
    with lib.get_token(token_label=softhsm_token.label).open(rw=True) as session:  # shares the login
        (kek,) = session.get_objects(
            {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: hsm._kek_label}
        )
        kek.destroy()
    with pytest.raises(BackendError, match="there is no key labelled"):
        await hsm.health()
    with pytest.raises(BackendError, match="there is no key labelled"):
        await hsm.unwrap_to_memory(wrapped, CONTEXT)
