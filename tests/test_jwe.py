"""The release JWE (keyserver.jwe): round trips for every accepted recipient key type, interop both ways
with jwcrypto, the strictness of ``unwrap_released`` and the HSM (key-as-CEK) path."""

from __future__ import annotations

import base64
import json
import os
import zlib
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given
from hypothesis import strategies as st
from joserfc import jwe as joserfc_jwe
from joserfc.errors import UnsupportedAlgorithmError
from joserfc.jwk import ECKey, Key, OKPKey, RSAKey
from jwcrypto import jwe as jwcrypto_jwe  # type: ignore[import-untyped,unused-ignore]
from jwcrypto import jwk as jwcrypto_jwk  # type: ignore[import-untyped,unused-ignore]

from keyserver import jwe
from keyserver.ephemeral_key import parse_ephemeral_jwk
from keyserver.errors import EvidenceError, InvalidRequest
from keyserver.jwe import (
    ReleasedKeyMetadata,
    assemble_compact_jwe,
    cek_release_payload,
    jwe_protected_header_for_rsa_oaep,
    unwrap_released,
    wrap_for_parsed_recipient,
    wrap_for_recipient,
)

pytestmark = pytest.mark.fuzz

PrivateKey = ec.EllipticCurvePrivateKey | X25519PrivateKey | rsa.RSAPrivateKey

METADATA = ReleasedKeyMetadata(tenant="acme", name="weights", version=3)
KID = "weights/3"
DATA_KEY = bytes(range(32))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def joserfc_key(private: PrivateKey) -> Key:
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return ECKey(private, private)
    if isinstance(private, rsa.RSAPrivateKey):
        return RSAKey(private, private)
    return OKPKey(private, private)


def public_jwk(private: PrivateKey) -> dict[str, Any]:
    return dict(joserfc_key(private).as_dict(private=False))


def private_jwk(private: PrivateKey) -> dict[str, Any]:
    return dict(joserfc_key(private).as_dict(private=True))


KEY_KINDS = ["P-256", "P-384", "P-521", "X25519", "RSA-2048", "RSA-3072"]


def _generate(kind: str) -> PrivateKey:
    curves = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1(), "P-521": ec.SECP521R1()}
    if kind in curves:
        return ec.generate_private_key(curves[kind])
    if kind == "X25519":
        return X25519PrivateKey.generate()
    return rsa.generate_private_key(65537, int(kind.split("-")[1]))


_KEYS: dict[str, PrivateKey] = {}


def key(kind: str) -> PrivateKey:
    """One key per kind for the whole module: RSA generation is slow."""
    if kind not in _KEYS:
        _KEYS[kind] = _generate(kind)
    return _KEYS[kind]


def header_of(token: str) -> dict[str, Any]:
    decoded: dict[str, Any] = json.loads(b64url_decode(token.split(".")[0]))
    return decoded


def document(material: bytes = DATA_KEY, **changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": 1, "kid": KID, "tenant": "acme", "name": "weights", "version": 3}
    doc["k"] = b64url(material)
    doc.update(changes)
    return {k: v for k, v in doc.items() if v is not None}


# --- round trips -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_round_trip(kind: str) -> None:
    private = key(kind)
    token = wrap_for_recipient(DATA_KEY, public_jwk(private), kid=KID, metadata=METADATA)
    assert unwrap_released(token, private_jwk(private)) == (DATA_KEY, METADATA)
    assert unwrap_released(token, private) == (DATA_KEY, METADATA)

    header = header_of(token)
    expected_alg = "RSA-OAEP-256" if kind.startswith("RSA") else "ECDH-ES+A256KW"
    assert header["alg"] == expected_alg
    assert header["enc"] == "A256GCM"
    assert header["kid"] == KID
    assert header["typ"] == "keyserver-release+jwe"
    assert header["cty"] == "keyserver-key+json"
    assert "zip" not in header
    assert set(header) == {"alg", "enc", "kid", "typ", "cty"} | ({"epk"} if "epk" in header else set())


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_wrapping_to_a_parsed_key_is_wrapping_to_its_jwk(kind: str) -> None:
    """The release parses the loader's JWK once and wraps to that parsed key: the same checks of the key
    material and names apply, and the loader's private key opens it."""
    private = key(kind)
    parsed, _ = parse_ephemeral_jwk(public_jwk(private))
    token = wrap_for_parsed_recipient(DATA_KEY, parsed, kid=KID, metadata=METADATA)
    assert unwrap_released(token, private) == (DATA_KEY, METADATA)
    assert header_of(token)["kid"] == KID
    with pytest.raises(ValueError, match="bytes"):
        wrap_for_parsed_recipient(b"short", parsed, kid=KID, metadata=METADATA)


@pytest.mark.parametrize("length", [16, 32, 64, 1024])
def test_key_lengths(length: int) -> None:
    private = key("P-256")
    material = os.urandom(length)
    token = wrap_for_recipient(material, public_jwk(private), kid=KID, metadata=METADATA)
    assert unwrap_released(token, private)[0] == material


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_jwcrypto_decrypts_ours(kind: str) -> None:
    private = key(kind)
    token = wrap_for_recipient(DATA_KEY, public_jwk(private), kid=KID, metadata=METADATA)
    peer = jwcrypto_jwe.JWE()
    peer.deserialize(token, jwcrypto_jwk.JWK(**private_jwk(private)))
    assert json.loads(peer.payload) == document()


def jwcrypto_token(
    private: PrivateKey,
    plaintext: bytes,
    *,
    alg: str,
    enc: str = "A256GCM",
    recipient: jwcrypto_jwk.JWK | None = None,
    **extra_header: Any,
) -> str:
    header = {"alg": alg, "enc": enc, "kid": KID, "typ": "keyserver-release+jwe", "cty": "keyserver-key+json"}
    header.update(extra_header)
    token = jwcrypto_jwe.JWE(
        plaintext,
        protected=json.dumps(header),
        algs=[alg, enc],
        recipient=recipient or jwcrypto_jwk.JWK(**public_jwk(private)),
    )
    serialized: str = token.serialize(compact=True)
    return serialized


@pytest.mark.parametrize("kind", KEY_KINDS)
def test_we_decrypt_jwcrypto(kind: str) -> None:
    private = key(kind)
    alg = "RSA-OAEP-256" if kind.startswith("RSA") else "ECDH-ES+A256KW"
    token = jwcrypto_token(private, json.dumps(document()).encode(), alg=alg)
    assert unwrap_released(token, private) == (DATA_KEY, METADATA)


# --- unwrap refuses ------------------------------------------------------------------------------------


def test_refuses_zip_even_when_authentic() -> None:
    private = key("P-256")
    plaintext = json.dumps(document()).encode()
    token = jwcrypto_token(private, plaintext, alg="ECDH-ES+A256KW", zip="DEF")
    with pytest.raises(InvalidRequest, match="zip"):
        unwrap_released(token, private)


def test_refuses_a_zip_bomb_before_decompressing() -> None:
    private = key("P-256")
    bomb = b"{" + b" " * (10 * 1024 * 1024) + b"}"
    assert len(zlib.compress(bomb)) < 20_000
    token = jwcrypto_token(private, bomb, alg="ECDH-ES+A256KW", zip="DEF")
    with pytest.raises(InvalidRequest, match="zip"):
        unwrap_released(token, private)


def test_refuses_rsa1_5() -> None:
    private = key("RSA-2048")
    token = jwcrypto_token(private, json.dumps(document()).encode(), alg="RSA1_5")
    with pytest.raises(InvalidRequest, match='"alg"'):
        unwrap_released(token, private)


def test_refuses_dir_and_a128kw() -> None:
    secret = jwcrypto_jwk.JWK.generate(kty="oct", size=256)
    private = key("P-256")
    direct = jwcrypto_token(private, json.dumps(document()).encode(), alg="dir", recipient=secret)
    kek = jwcrypto_jwk.JWK.generate(kty="oct", size=128)
    wrapped = jwcrypto_token(private, json.dumps(document()).encode(), alg="A128KW", recipient=kek)
    for token in (direct, wrapped):
        with pytest.raises(InvalidRequest, match='"alg"'):
            unwrap_released(token, private)


@pytest.mark.parametrize("enc", ["A128GCM", "A192GCM", "A256CBC-HS512", "A128CBC-HS256"])
def test_refuses_other_enc(enc: str) -> None:
    private = key("P-256")
    token = jwcrypto_token(private, json.dumps(document()).encode(), alg="ECDH-ES+A256KW", enc=enc)
    with pytest.raises(InvalidRequest, match='"enc"'):
        unwrap_released(token, private)


@pytest.mark.parametrize("alg", ["ECDH-ES", "ECDH-ES+A128KW"])
def test_refuses_other_ecdh_modes(alg: str) -> None:
    private = key("P-256")
    token = jwcrypto_token(private, json.dumps(document()).encode(), alg=alg)
    with pytest.raises(InvalidRequest, match='"alg"'):
        unwrap_released(token, private)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"typ": "JWT"}, '"typ"'),
        ({"cty": "JWT"}, '"cty"'),
        ({"x5u": "https://example.com/x"}, "unexpected members"),
        ({"jku": "https://example.com/jwks"}, "unexpected members"),
        ({"crit": ["exp"], "exp": 1}, "crit"),
        ({"kid": ""}, '"kid"'),
    ],
)
def test_refuses_unexpected_headers(extra: dict[str, Any], message: str) -> None:
    private = key("P-256")
    token = jwcrypto_token(private, json.dumps(document()).encode(), alg="ECDH-ES+A256KW", **extra)
    with pytest.raises(InvalidRequest, match=message):
        unwrap_released(token, private)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"not json", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (json.dumps(document(v=2)).encode(), '"v"'),
        (json.dumps(document(v=True)).encode(), '"v"'),
        (json.dumps(document(kid="other/1")).encode(), '"kid"'),
        (json.dumps(document(extra="x")).encode(), "exactly"),
        (json.dumps(document(cek=True)).encode(), 'one of "k" and "cek"'),
        (json.dumps(document(k=None)).encode(), 'one of "k" and "cek"'),
        (json.dumps(document(version=0)).encode(), '"version"'),
        (json.dumps(document(version="3")).encode(), '"version"'),
        (json.dumps(document(tenant=5)).encode(), '"tenant"'),
        (json.dumps(document(k="A")).encode(), "base64url"),
        (json.dumps(document(material=b"short")).encode(), "impossible length"),
        (b'{"v":1,"v":1}', "not JSON"),  # duplicate members
        (json.dumps(document(k=None, cek=True)).encode(), "RSA-OAEP only"),
        (b"{" + b" " * 5000 + b"}", "larger"),
    ],
)
def test_refuses_malformed_key_documents(payload: bytes, message: str) -> None:
    private = key("P-256")
    token = jwcrypto_token(private, payload, alg="ECDH-ES+A256KW")
    with pytest.raises(InvalidRequest, match=message):
        unwrap_released(token, private)


def _replace_segment(token: str, index: int, transform: Any) -> str:
    parts = token.split(".")
    parts[index] = b64url(transform(b64url_decode(parts[index])))
    return ".".join(parts)


def _flip_first(data: bytes) -> bytes:
    return bytes([data[0] ^ 1]) + data[1:]


@pytest.mark.parametrize("kind", ["P-256", "X25519", "RSA-2048"])
@pytest.mark.parametrize(("index", "part"), [(1, "encrypted key"), (2, "iv"), (3, "ciphertext"), (4, "tag")])
def test_refuses_tampering(kind: str, index: int, part: str) -> None:
    private = key(kind)
    token = wrap_for_recipient(DATA_KEY, public_jwk(private), kid=KID, metadata=METADATA)
    tampered = _replace_segment(token, index, _flip_first)
    with pytest.raises(InvalidRequest, match="does not decrypt"):
        unwrap_released(tampered, private)


def test_refuses_a_tampered_header() -> None:
    private = key("P-256")
    token = wrap_for_recipient(DATA_KEY, public_jwk(private), kid=KID, metadata=METADATA)
    header = header_of(token)
    header["kid"] = "weights/4"  # still a valid header: only the authentication catches it
    parts = token.split(".")
    parts[0] = b64url(json.dumps(header, separators=(",", ":")).encode())
    with pytest.raises(InvalidRequest, match="does not decrypt"):
        unwrap_released(".".join(parts), private)


def test_refuses_a_substituted_epk() -> None:
    private = key("P-256")
    token = wrap_for_recipient(DATA_KEY, public_jwk(private), kid=KID, metadata=METADATA)
    header = header_of(token)
    header["epk"] = public_jwk(ec.generate_private_key(ec.SECP256R1()))
    parts = token.split(".")
    parts[0] = b64url(json.dumps(header).encode())
    with pytest.raises(InvalidRequest, match="does not decrypt"):
        unwrap_released(".".join(parts), private)


@pytest.mark.parametrize(
    ("kind", "other"), [("P-256", "P-256"), ("X25519", "X25519"), ("RSA-2048", "RSA-3072")]
)
def test_wrong_recipient_key_fails(kind: str, other: str) -> None:
    token = wrap_for_recipient(DATA_KEY, public_jwk(key(kind)), kid=KID, metadata=METADATA)
    stranger = _generate(other) if kind == other else key(other)
    with pytest.raises(InvalidRequest, match="does not decrypt"):
        unwrap_released(token, stranger)


@pytest.mark.parametrize(
    ("kind", "other"), [("P-256", "RSA-2048"), ("RSA-2048", "X25519"), ("P-256", "P-384")]
)
def test_wrong_key_type_fails(kind: str, other: str) -> None:
    token = wrap_for_recipient(DATA_KEY, public_jwk(key(kind)), kid=KID, metadata=METADATA)
    with pytest.raises(InvalidRequest):
        unwrap_released(token, key(other))


def test_needs_the_private_key() -> None:
    private = key("P-256")
    token = wrap_for_recipient(DATA_KEY, public_jwk(private), kid=KID, metadata=METADATA)
    with pytest.raises(InvalidRequest, match="private"):
        unwrap_released(token, public_jwk(private))
    with pytest.raises(InvalidRequest, match="cannot be imported"):
        unwrap_released(token, {"kty": "EC", "crv": "P-256"})


def test_refuses_oversized_and_non_compact_tokens() -> None:
    private = key("P-256")
    token = wrap_for_recipient(DATA_KEY, public_jwk(private), kid=KID, metadata=METADATA)
    with pytest.raises(InvalidRequest, match="at most"):
        unwrap_released(token + "A" * jwe.MAX_TOKEN_CHARS, private)
    with pytest.raises(InvalidRequest, match="five"):
        unwrap_released(token + ".x", private)
    with pytest.raises(InvalidRequest, match="ASCII"):
        unwrap_released(token[:5] + "\u00c4" + token[6:], private)


def test_refuses_a_non_canonical_spelling_of_the_same_bytes() -> None:
    """A 16-byte tag is 22 characters whose last carries 4 unused bits: setting one spells the same
    bytes differently. Refused, so that a token has exactly one spelling."""
    private = key("P-256")
    token = wrap_for_recipient(DATA_KEY, public_jwk(private), kid=KID, metadata=METADATA)
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    respelled = token[:-1] + alphabet[alphabet.index(token[-1]) | 1]
    if respelled == token:
        respelled = token[:-1] + alphabet[alphabet.index(token[-1]) | 2]
    assert b64url_decode(respelled.split(".")[4]) == b64url_decode(token.split(".")[4])
    with pytest.raises(InvalidRequest, match="canonical"):
        unwrap_released(respelled, private)


def test_registry_covers_8192_bit_recipients() -> None:
    # An 8192-bit RSA-OAEP encrypted key is 1024 bytes: 1366 base64url characters.
    assert jwe._ReleaseRegistry.max_encrypted_key_length >= 1366


# --- wrap refuses ----------------------------------------------------------------------------------


def test_wrap_validates_the_recipient() -> None:
    private = key("P-256")
    with pytest.raises(EvidenceError) as exc:
        wrap_for_recipient(DATA_KEY, private_jwk(private), kid=KID, metadata=METADATA)
    assert exc.value.reason == "ephemeral-key-invalid"
    with pytest.raises(EvidenceError):
        wrap_for_recipient(
            DATA_KEY, {"kty": "OKP", "crv": "X25519", "x": b64url(bytes(32))}, kid=KID, metadata=METADATA
        )


def test_wrap_validates_its_arguments() -> None:
    recipient = public_jwk(key("P-256"))
    with pytest.raises(ValueError, match="key material"):
        wrap_for_recipient(b"x" * 8, recipient, kid=KID, metadata=METADATA)
    with pytest.raises(ValueError, match="kid"):
        wrap_for_recipient(DATA_KEY, recipient, kid="", metadata=METADATA)
    with pytest.raises(ValueError, match="version"):
        wrap_for_recipient(DATA_KEY, recipient, kid=KID, metadata=ReleasedKeyMetadata("acme", "w", 0))


def test_each_wrap_is_fresh() -> None:
    recipient = public_jwk(key("P-256"))
    first = wrap_for_recipient(DATA_KEY, recipient, kid=KID, metadata=METADATA)
    second = wrap_for_recipient(DATA_KEY, recipient, kid=KID, metadata=METADATA)
    assert first != second
    assert header_of(first)["epk"] != header_of(second)["epk"]


# --- the HSM path: the data key is the CEK ----------------------------------------------------------


def hsm_release(recipient: rsa.RSAPublicKey, data_key: bytes, header: bytes | None = None) -> str:
    """What the PKCS#11 backend does, in software: RSA-OAEP(SHA-1) of the data key, then AES-256-GCM of
    the key document under the data key with the base64url protected header as additional data."""
    protected = b64url(header or jwe_protected_header_for_rsa_oaep(KID)).encode()
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA1()), algorithm=hashes.SHA1(), label=None)  # noqa: S303
    encrypted_key = recipient.encrypt(data_key, oaep)
    iv = os.urandom(12)
    sealed = AESGCM(data_key).encrypt(iv, cek_release_payload(kid=KID, metadata=METADATA), protected)
    return assemble_compact_jwe(protected, encrypted_key, iv, sealed[:-16], sealed[-16:])


def test_rsa_oaep_header_shape() -> None:
    header = json.loads(jwe_protected_header_for_rsa_oaep(KID))
    assert header == {
        "alg": "RSA-OAEP",
        "enc": "A256GCM",
        "kid": KID,
        "typ": "keyserver-release+jwe",
        "cty": "keyserver-key+json",
    }
    assert json.loads(cek_release_payload(kid=KID, metadata=METADATA)) == document(k=None, cek=True)


@pytest.mark.parametrize("kind", ["RSA-2048", "RSA-3072"])
def test_hsm_path_round_trip(kind: str) -> None:
    private = key(kind)
    assert isinstance(private, rsa.RSAPrivateKey)
    data_key = os.urandom(32)
    token = hsm_release(private.public_key(), data_key)
    assert unwrap_released(token, private) == (data_key, METADATA)
    assert unwrap_released(token, private_jwk(private)) == (data_key, METADATA)
    # jwcrypto (a loader using another library) decrypts it too, and sees the CEK document.
    peer = jwcrypto_jwe.JWE()
    peer.deserialize(token, jwcrypto_jwk.JWK(**private_jwk(private)))
    assert json.loads(peer.payload) == document(k=None, cek=True)


def test_hsm_path_tampering_and_wrong_key() -> None:
    private = key("RSA-2048")
    assert isinstance(private, rsa.RSAPrivateKey)
    token = hsm_release(private.public_key(), os.urandom(32))
    for index in (1, 2, 3, 4):
        with pytest.raises(InvalidRequest):
            unwrap_released(_replace_segment(token, index, _flip_first), private)
    with pytest.raises(InvalidRequest):
        unwrap_released(token, key("RSA-3072"))


def test_cek_document_only_with_rsa_oaep_and_key_document_never_with_it() -> None:
    private = key("RSA-2048")
    cek_doc = cek_release_payload(kid=KID, metadata=METADATA)
    via_oaep256 = jwcrypto_token(private, cek_doc, alg="RSA-OAEP-256")
    with pytest.raises(InvalidRequest, match="RSA-OAEP only"):
        unwrap_released(via_oaep256, private)
    key_doc_via_oaep = jwcrypto_token(private, json.dumps(document()).encode(), alg="RSA-OAEP")
    with pytest.raises(InvalidRequest, match="in the payload only"):
        unwrap_released(key_doc_via_oaep, private)


def test_assemble_checks_shapes() -> None:
    protected = b64url(jwe_protected_header_for_rsa_oaep(KID))
    parts = (b"k" * 256, os.urandom(12), b"c", os.urandom(16))
    assert assemble_compact_jwe(protected.encode(), *parts).startswith(protected + ".")
    wrong_alg = b64url(json.dumps({"alg": "RSA-OAEP-256", "enc": "A256GCM", "kid": KID}).encode())
    with pytest.raises(ValueError, match="RSA-OAEP"):
        assemble_compact_jwe(wrong_alg, *parts)
    zipped = json.loads(jwe_protected_header_for_rsa_oaep(KID))
    zipped["zip"] = "DEF"
    with pytest.raises(ValueError, match="header has exactly"):
        assemble_compact_jwe(b64url(json.dumps(zipped).encode()), *parts)
    with pytest.raises(ValueError, match="IV"):
        assemble_compact_jwe(protected, parts[0], os.urandom(16), parts[2], parts[3])
    with pytest.raises(ValueError, match="tag"):
        assemble_compact_jwe(protected, parts[0], parts[1], parts[2], os.urandom(12))
    with pytest.raises(ValueError, match="empty"):
        assemble_compact_jwe(protected, b"", parts[1], parts[2], parts[3])


def test_joserfc_refuses_zip_with_our_registry() -> None:
    """Belt and braces: even past our header check, the registry we hand joserfc allows no zip."""
    registry = jwe._registry("ECDH-ES+A256KW")
    with pytest.raises(UnsupportedAlgorithmError):
        registry.get_zip("DEF")
    with pytest.raises(UnsupportedAlgorithmError):
        registry.get_alg("RSA1_5")
    assert isinstance(registry, joserfc_jwe.JWERegistry)


# --- properties ----------------------------------------------------------------------------------------

_TOKEN = ""


def _valid_token() -> str:
    global _TOKEN
    if not _TOKEN:
        _TOKEN = wrap_for_recipient(DATA_KEY, public_jwk(key("P-256")), kid=KID, metadata=METADATA)
    return _TOKEN


@given(st.text(max_size=400) | st.binary(max_size=300).map(lambda b: b.decode("latin-1")))
def test_arbitrary_strings_give_a_typed_error(token: str) -> None:
    with pytest.raises(InvalidRequest):
        unwrap_released(token, key("P-256"))


@given(st.lists(st.binary(max_size=60).map(b64url), min_size=5, max_size=5))
def test_arbitrary_compact_shapes_give_a_typed_error(parts: list[str]) -> None:
    with pytest.raises(InvalidRequest):
        unwrap_released(".".join(parts), key("P-256"))


@given(
    st.dictionaries(
        st.sampled_from(["alg", "enc", "kid", "typ", "cty", "epk", "zip", "crit", "x"]),
        st.sampled_from(
            ["ECDH-ES+A256KW", "A256GCM", KID, "keyserver-release+jwe", "keyserver-key+json", "DEF"]
        )
        | st.integers()
        | st.none()
        | st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=3),
        max_size=8,
    )
)
def test_arbitrary_headers_give_a_typed_error(header: dict[str, Any]) -> None:
    parts = _valid_token().split(".")
    parts[0] = b64url(json.dumps(header).encode())
    with pytest.raises(InvalidRequest):
        unwrap_released(".".join(parts), key("P-256"))


@given(st.integers(min_value=0), st.sampled_from("ABCDEFabcdef0123456789-_.=+/ "))
def test_any_single_character_change_is_refused(position: int, replacement: str) -> None:
    token = _valid_token()
    index = position % len(token)
    if token[index] == replacement:
        return
    mutated = token[:index] + replacement + token[index + 1 :]
    with pytest.raises(InvalidRequest):
        unwrap_released(mutated, key("P-256"))


def test_doc_examples_are_what_keyserver_sends() -> None:
    """docs/binding.md shows both key documents literally; they must stay byte-identical to ours."""
    doc = (Path(__file__).resolve().parent.parent / "docs" / "binding.md").read_text()
    private = key("P-256")
    token = wrap_for_recipient(DATA_KEY, public_jwk(private), kid=KID, metadata=METADATA)
    peer = jwcrypto_jwe.JWE()
    peer.deserialize(token, jwcrypto_jwk.JWK(**private_jwk(private)))
    assert f"```json\n{peer.payload.decode()}\n```" in doc
    assert f"```json\n{cek_release_payload(kid=KID, metadata=METADATA).decode()}\n```" in doc


def test_the_loader_s_unwrap_module_is_what_keyserver_jwe_exports() -> None:
    # The loader imports keyserver.jwe_unwrap alone (its measured image holds no wrapping code); the
    # server and these tests import keyserver.jwe. One implementation behind both names.
    from keyserver import jwe_unwrap

    shared = ("unwrap_released", "ReleasedKeyMetadata", "MAX_TOKEN_CHARS", "_registry", "_ReleaseRegistry")
    for name in shared:
        assert getattr(jwe, name) is getattr(jwe_unwrap, name), name
