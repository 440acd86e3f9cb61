"""The binding spec (keyserver.binding, docs/binding.md): RFC 7638 thumbprints, the binding, where it goes
per tee, and the strict validation of ephemeral keys.

The pinned vectors live in tests/data/binding-vectors.json, which docs/binding.md embeds verbatim (the
test below checks that the two are identical, so the published vectors cannot drift from what is tested).
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jwk import thumbprint as joserfc_thumbprint
from jwcrypto import jwk as jwcrypto_jwk  # type: ignore[import-untyped,unused-ignore]

from keyserver.binding import binding, jwk_thumbprint, report_data_for
from keyserver.ephemeral_key import check_binding, parse_ephemeral_jwk
from keyserver.errors import EvidenceError

pytestmark = pytest.mark.fuzz

REPO = Path(__file__).resolve().parent.parent
VECTORS_PATH = REPO / "tests" / "data" / "binding-vectors.json"
DOC_PATH = REPO / "docs" / "binding.md"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text())["vectors"]
TEES = ("sev-snp", "tdx", "tpm")

# RFC 7638 §3.1, verbatim (with its "alg" and "kid", which must not change the thumbprint).
RFC7638_JWK = {
    "kty": "RSA",
    "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiF"
        "V4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c"
        "7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF"
        "44-csFCur-kEgU8awapJzKnqDKgw"
    ),
    "e": "AQAB",
    "alg": "RS256",
    "kid": "2011-04-29",
}
RFC7638_THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
# RFC 8037 §A.3: the thumbprint of an OKP key.
RFC8037_JWK = {"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
RFC8037_THUMBPRINT = "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def reason(exc: pytest.ExceptionInfo[EvidenceError]) -> str:
    return exc.value.reason


# --- thumbprints ------------------------------------------------------------------------------------


def test_rfc7638_example_thumbprint() -> None:
    assert b64url(jwk_thumbprint(RFC7638_JWK)) == RFC7638_THUMBPRINT


def test_rfc8037_okp_thumbprint() -> None:
    assert b64url(jwk_thumbprint(RFC8037_JWK)) == RFC8037_THUMBPRINT


def test_thumbprint_ignores_optional_members_and_member_order() -> None:
    reordered = dict(reversed(list(RFC7638_JWK.items())))
    extended = {**RFC7638_JWK, "use": "enc", "key_ops": ["encrypt"]}
    assert jwk_thumbprint(reordered) == jwk_thumbprint(extended) == jwk_thumbprint(RFC7638_JWK)


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "oct", "k": "AAAA"},
        {"kty": "EC", "crv": "P-256", "x": "AAAA"},  # no y
        {"kty": "RSA", "n": 5, "e": "AQAB"},
        {"kty": "EC", "crv": "P-256", "x": 'A"A', "y": "AAAA"},  # would need JSON escaping
        {"crv": "P-256", "x": "AAAA", "y": "AAAA"},
        ["kty", "EC"],
    ],
)
def test_thumbprint_refuses_what_it_cannot_hash_unambiguously(jwk: Any) -> None:
    with pytest.raises(EvidenceError) as exc:
        jwk_thumbprint(jwk)
    assert reason(exc) == "ephemeral-key-invalid"


# --- the pinned vectors -------------------------------------------------------------------------------


def test_vectors_cover_every_accepted_key_type() -> None:
    kinds = {(v["jwk"]["kty"], v["jwk"].get("crv")) for v in VECTORS}
    assert kinds == {("EC", "P-256"), ("EC", "P-384"), ("EC", "P-521"), ("OKP", "X25519"), ("RSA", None)}


def test_doc_embeds_the_vectors_verbatim() -> None:
    """docs/binding.md carries tests/data/binding-vectors.json byte for byte between its markers."""
    doc = DOC_PATH.read_text()
    match = re.search(
        r"<!-- binding-vectors:begin -->\n```json\n(.*?)```\n<!-- binding-vectors:end -->", doc, re.DOTALL
    )
    assert match is not None, "docs/binding.md lost its binding-vectors block"
    assert match.group(1) == VECTORS_PATH.read_text()


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_pinned_vector(vector: dict[str, Any]) -> None:
    nonce = bytes.fromhex(vector["nonce"])
    jwk = vector["jwk"]
    # The hash input is spelled out in the vector so that a loader author can diff theirs against it.
    assert hashlib.sha256(vector["thumbprint_input"].encode()).hexdigest() == vector["thumbprint"]
    assert jwk_thumbprint(jwk).hex() == vector["thumbprint"]
    assert b64url(jwk_thumbprint(jwk)) == vector["thumbprint_b64url"]
    # An independent spelling of the construction, straight from DESIGN.md.
    expected = hashlib.sha512(
        b"keyserver-binding-v1" + b"\x00" + nonce + bytes.fromhex(vector["thumbprint"])
    ).hexdigest()
    assert binding(nonce, jwk).hex() == vector["binding"] == expected
    for tee in TEES:
        assert report_data_for(tee, binding(nonce, jwk)).hex() == vector["report_data"][tee]
        check_binding(tee, bytes.fromhex(vector["report_data"][tee]), nonce, jwk)
    assert vector["report_data"]["tpm"] == vector["binding"][:64]
    assert vector["report_data"]["sev-snp"] == vector["report_data"]["tdx"] == vector["binding"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_vector_keys_are_accepted_and_normalised_without_changing_the_thumbprint(
    vector: dict[str, Any],
) -> None:
    _key, normalized = parse_ephemeral_jwk(vector["jwk"])
    assert set(normalized) <= {"kty", "crv", "x", "y", "n", "e"}
    assert jwk_thumbprint(normalized).hex() == vector["thumbprint"]


@pytest.mark.parametrize("vector", VECTORS, ids=[v["name"] for v in VECTORS])
def test_thumbprints_agree_with_joserfc_and_jwcrypto(vector: dict[str, Any]) -> None:
    _key, normalized = parse_ephemeral_jwk(vector["jwk"])
    assert joserfc_thumbprint(dict(normalized)) == vector["thumbprint_b64url"]
    assert jwcrypto_jwk.JWK(**normalized).thumbprint() == vector["thumbprint_b64url"]


# --- check_binding --------------------------------------------------------------------------------------

VECTOR = VECTORS[0]
NONCE = bytes.fromhex(VECTOR["nonce"])
JWK = VECTOR["jwk"]


@pytest.mark.parametrize("tee", TEES)
def test_binding_mismatch_on_any_changed_input(tee: str) -> None:
    good = bytes.fromhex(VECTOR["report_data"][tee])
    other_key = VECTORS[1]["jwk"]
    flipped = bytes([good[0] ^ 1]) + good[1:]
    last_flipped = good[:-1] + bytes([good[-1] ^ 0x80])
    cases = [
        (flipped, NONCE, JWK),
        (last_flipped, NONCE, JWK),
        (good, bytes(32), JWK),
        (good, NONCE, other_key),
        (b"", NONCE, JWK),
        (good + b"\x00", NONCE, JWK),
    ]
    for report_data, nonce, jwk in cases:
        with pytest.raises(EvidenceError) as exc:
            check_binding(tee, report_data, nonce, jwk)
        assert reason(exc) == "binding-mismatch"
        assert "docs/binding.md" in exc.value.message


def test_tpm_takes_only_the_first_32_bytes() -> None:
    full = bytes.fromhex(VECTOR["binding"])
    with pytest.raises(EvidenceError):
        check_binding("tpm", full, NONCE, JWK)  # 64 bytes where the TPM carries 32
    with pytest.raises(EvidenceError):
        check_binding("sev-snp", full[:32], NONCE, JWK)  # a TPM-sized value for SNP
    check_binding("tpm", full[:32], NONCE, JWK)


def test_report_data_for_refuses_unknown_tees_and_wrong_lengths() -> None:
    with pytest.raises(ValueError, match="unknown tee"):
        report_data_for("sgx", bytes(64))
    with pytest.raises(ValueError, match="64 bytes"):
        report_data_for("tdx", bytes(32))


def test_binding_needs_a_real_nonce() -> None:
    with pytest.raises(ValueError, match="nonce"):
        binding(b"short", JWK)


# --- parse_ephemeral_jwk: what is accepted -------------------------------------------------------------


def public_jwk(private: Any) -> dict[str, Any]:
    public = private.public_key()
    if isinstance(public, ec.EllipticCurvePublicKey):
        return dict(ECKey(public, public).as_dict(private=False))
    if isinstance(public, rsa.RSAPublicKey):
        return dict(RSAKey(public, public).as_dict(private=False))
    return dict(OKPKey(public, public).as_dict(private=False))


def private_jwk(private: Any) -> dict[str, Any]:
    if isinstance(private, ec.EllipticCurvePrivateKey):
        return dict(ECKey(private, private).as_dict(private=True))
    if isinstance(private, rsa.RSAPrivateKey):
        return dict(RSAKey(private, private).as_dict(private=True))
    return dict(OKPKey(private, private).as_dict(private=True))


@pytest.fixture(scope="module")
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="module")
def ec_private() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()], ids=lambda c: c.name)
def test_accepts_fresh_ec_keys(curve: ec.EllipticCurve) -> None:
    private = ec.generate_private_key(curve)
    key, normalized = parse_ephemeral_jwk(public_jwk(private))
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert key.public_numbers() == private.public_key().public_numbers()
    assert set(normalized) == {"kty", "crv", "x", "y"}


def test_accepts_x25519_and_rsa(rsa_private: rsa.RSAPrivateKey) -> None:
    parse_ephemeral_jwk(public_jwk(X25519PrivateKey.generate()))
    key, normalized = parse_ephemeral_jwk(public_jwk(rsa_private))
    assert isinstance(key, rsa.RSAPublicKey)
    assert key.key_size == 2048
    assert normalized["e"] == "AQAB"


def test_accepts_the_optional_members_jwk_libraries_add(ec_private: ec.EllipticCurvePrivateKey) -> None:
    jwk = {
        **public_jwk(ec_private),
        "kid": "eph",
        "use": "enc",
        "alg": "ECDH-ES+A256KW",
        "key_ops": [],  # what WebCrypto exports for an ECDH public key
        "ext": True,
    }
    _key, normalized = parse_ephemeral_jwk(jwk)
    assert set(normalized) == {"kty", "crv", "x", "y"}


def _odd_modulus(bits: int) -> str:
    # A public-key parse checks shape, not primality: any odd number of the right size will do.
    n = (1 << (bits - 1)) | 1 | (0x5A5A << 16)
    return b64url(n.to_bytes((bits + 7) // 8, "big"))


def test_rsa_size_bounds() -> None:
    parse_ephemeral_jwk({"kty": "RSA", "e": "AQAB", "n": _odd_modulus(8192)})
    for bits in (2047, 8193):
        with pytest.raises(EvidenceError, match="2048 to 8192 bits"):
            parse_ephemeral_jwk({"kty": "RSA", "e": "AQAB", "n": _odd_modulus(bits)})


# --- parse_ephemeral_jwk: what is refused --------------------------------------------------------------


@pytest.mark.parametrize("member", ["d", "p", "q", "dp", "dq", "qi", "oth", "k"])
def test_refuses_private_members_without_echoing_them(
    member: str, rsa_private: rsa.RSAPrivateKey, ec_private: ec.EllipticCurvePrivateKey
) -> None:
    source = private_jwk(ec_private if member == "d" else rsa_private)
    jwk = {**public_jwk(rsa_private), member: source.get(member, "c2VjcmV0LXZhbHVl")}
    with pytest.raises(EvidenceError) as exc:
        parse_ephemeral_jwk(jwk)
    assert reason(exc) == "ephemeral-key-invalid"
    assert "private" in exc.value.message
    assert member in exc.value.message
    assert str(jwk[member]) not in exc.value.message


def test_refuses_a_whole_private_jwk(ec_private: ec.EllipticCurvePrivateKey) -> None:
    with pytest.raises(EvidenceError, match="private-key members"):
        parse_ephemeral_jwk(private_jwk(ec_private))
    with pytest.raises(EvidenceError, match="private-key members"):
        parse_ephemeral_jwk(private_jwk(X25519PrivateKey.generate()))


def _p521_jwk_with_unreduced_x() -> dict[str, str]:
    public = ec.generate_private_key(ec.SECP521R1()).public_key().public_numbers()
    x = public.x + (2**521 - 1)  # the same point, spelled x + p (fits in 66 bytes)
    return {
        "kty": "EC",
        "crv": "P-521",
        "x": b64url(x.to_bytes(66, "big")),
        "y": b64url(public.y.to_bytes(66, "big")),
    }


def _refusals() -> list[tuple[str, Any]]:
    ec_jwk = public_jwk(ec.generate_private_key(ec.SECP256R1()))
    x25519 = public_jwk(X25519PrivateKey.generate())
    rsa_jwk = {"kty": "RSA", "e": "AQAB", "n": _odd_modulus(2048)}
    x_raw = base64.urlsafe_b64decode(ec_jwk["x"] + "=")
    p256_p = 2**256 - 2**224 + 2**192 + 2**96 - 1
    return [
        ("not an object", ["kty", "EC"]),
        ("null", None),
        ("no kty", {k: v for k, v in ec_jwk.items() if k != "kty"}),
        ("kty oct", {"kty": "oct", "kid": "x"}),
        ("kty lowercase", {**ec_jwk, "kty": "ec"}),
        ("crv P-192", {**ec_jwk, "crv": "P-192"}),
        ("crv secp256k1", {**ec_jwk, "crv": "secp256k1"}),
        ("OKP Ed25519", {**x25519, "crv": "Ed25519"}),
        ("OKP X448", {**x25519, "crv": "X448"}),
        ("padding", {**ec_jwk, "x": ec_jwk["x"] + "="}),
        ("standard alphabet", {**ec_jwk, "x": ec_jwk["x"].replace("-", "+").replace("_", "/") + "+"}),
        ("whitespace", {**ec_jwk, "x": ec_jwk["x"][:10] + " " + ec_jwk["x"][10:]}),
        ("bad length", {**ec_jwk, "x": ec_jwk["x"] + "A"}),
        ("non-canonical trailing bits", {**ec_jwk, "x": ec_jwk["x"][:-1] + chr(ord(ec_jwk["x"][-1]) ^ 1)}),
        ("short coordinate", {**ec_jwk, "x": b64url(x_raw[1:])}),
        ("long coordinate", {**ec_jwk, "x": b64url(b"\x00" + x_raw)}),
        ("not on the curve", {**ec_jwk, "y": b64url(bytes(31) + b"\x01")}),
        ("x >= p", {**ec_jwk, "x": b64url(p256_p.to_bytes(32, "big"))}),
        ("unreduced coordinate", _p521_jwk_with_unreduced_x()),
        ("x25519 all-zero point", {**x25519, "x": b64url(bytes(32))}),
        ("x25519 order-1 point", {**x25519, "x": b64url((1).to_bytes(32, "little"))}),
        ("x25519 non-canonical", {**x25519, "x": b64url(b"\xff" * 31 + b"\x7f")}),
        ("x25519 high bit", {**x25519, "x": b64url(b"\x09" + bytes(30) + b"\x80")}),
        ("x25519 short", {**x25519, "x": b64url(bytes(31))}),
        ("rsa e=3", {**rsa_jwk, "e": "Aw"}),
        ("rsa e=65537 non-minimal", {**rsa_jwk, "e": "AAEAAQ"}),
        ("rsa 1024", {**rsa_jwk, "n": _odd_modulus(1024)}),
        (
            "rsa leading zero",
            {**rsa_jwk, "n": b64url(b"\x00" + base64.urlsafe_b64decode(rsa_jwk["n"] + "=="))},
        ),
        (
            "rsa even",
            {
                **rsa_jwk,
                "n": b64url((int.from_bytes(bytes([0x80]) + bytes(255), "big")).to_bytes(256, "big")),
            },
        ),
        ("rsa oversized", {**rsa_jwk, "n": "A" * 5000}),
        ("unknown member x5c", {**ec_jwk, "x5c": ["MIIB"]}),
        ("unknown member jku", {**ec_jwk, "jku": "https://example.com/jwks"}),
        ("too many members", {**ec_jwk, **{f"m{i}": "x" for i in range(20)}}),
        ("use sig", {**ec_jwk, "use": "sig"}),
        ("alg RSA1_5", {**rsa_jwk, "alg": "RSA1_5"}),
        ("alg ECDH-ES direct", {**ec_jwk, "alg": "ECDH-ES"}),
        ("alg for the other key type", {**ec_jwk, "alg": "RSA-OAEP-256"}),
        ("key_ops sign", {**ec_jwk, "key_ops": ["sign"]}),
        ("key_ops repeated", {**ec_jwk, "key_ops": ["encrypt", "encrypt"]}),
        ("kid not a string", {**ec_jwk, "kid": 7}),
        ("ext not a bool", {**ec_jwk, "ext": "yes"}),
        ("x not a string", {**ec_jwk, "x": 12}),
        ("non-string member name", {**ec_jwk, 1: "x"}),
    ]


@pytest.mark.parametrize(("case", "jwk"), _refusals(), ids=[case for case, _ in _refusals()])
def test_refuses(case: str, jwk: Any) -> None:
    with pytest.raises(EvidenceError) as exc:
        parse_ephemeral_jwk(jwk)
    assert reason(exc) == "ephemeral-key-invalid", case
    assert exc.value.message


def test_refusal_does_not_mutate_input(ec_private: ec.EllipticCurvePrivateKey) -> None:
    jwk = {**public_jwk(ec_private), "kid": "k"}
    before = copy.deepcopy(jwk)
    parse_ephemeral_jwk(jwk)
    assert jwk == before


# --- property: any input gives a key or EvidenceError, nothing else ------------------------------------

_json_scalars = st.none() | st.booleans() | st.integers() | st.text(max_size=20)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
)
_member_names = st.sampled_from(
    ["kty", "crv", "x", "y", "n", "e", "d", "kid", "alg", "use", "key_ops", "ext"]
)
_member_values = (
    st.sampled_from(
        ["EC", "OKP", "RSA", "P-256", "P-384", "P-521", "X25519", "AQAB", "enc", "ECDH-ES+A256KW"]
    )
    | st.binary(max_size=70).map(b64url)
    | _json_values
)


@given(st.dictionaries(_member_names | st.text(max_size=8), _member_values, max_size=8) | _json_values)
def test_arbitrary_input_gives_a_key_or_a_typed_error(jwk: Any) -> None:
    reasons = []
    try:
        parse_ephemeral_jwk(jwk)
    except EvidenceError as exc:
        reasons.append(exc.reason)
    assert reasons in ([], ["ephemeral-key-invalid"])


@given(
    st.sampled_from(VECTORS),
    st.integers(min_value=0, max_value=10_000),
    st.integers(min_value=1, max_value=255),
)
def test_flipping_any_key_byte_changes_the_binding_or_is_refused(
    vector: dict[str, Any], position: int, delta: int
) -> None:
    jwk = dict(vector["jwk"])
    member = "n" if jwk["kty"] == "RSA" else "x"
    raw = bytearray(base64.urlsafe_b64decode(jwk[member] + "=" * (-len(jwk[member]) % 4)))
    raw[position % len(raw)] ^= delta
    jwk[member] = b64url(bytes(raw))
    nonce = bytes.fromhex(vector["nonce"])
    try:
        parse_ephemeral_jwk(jwk)
    except EvidenceError:
        return
    with pytest.raises(EvidenceError):
        check_binding("sev-snp", bytes.fromhex(vector["binding"]), nonce, jwk)
