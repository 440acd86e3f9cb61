"""Attestation result tokens (keyserver.attestation_token): EAR JWTs bound to tenant, issuer, time and the
ephemeral key, and a verifier that fails closed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st
from joserfc import jws
from joserfc.jwk import ECKey
from jwcrypto import jwk as jwcrypto_jwk  # type: ignore[import-untyped,unused-ignore]
from jwcrypto import jws as jwcrypto_jws  # type: ignore[import-untyped,unused-ignore]

from keyserver.attestation_token import (
    EAR_PROFILE,
    MAX_LIFETIME,
    SigningKey,
    VerifyingKey,
    issue_attestation_result,
    jwks_for,
    verify_attestation_result,
)
from keyserver.errors import EvidenceError

pytestmark = pytest.mark.fuzz

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
LIFETIME = timedelta(minutes=5)
TENANT = "acme"
ISSUER = "https://keyserver.example/v1/tenants/acme"
JKT = hashlib.sha256(b"the loader's ephemeral key").digest()
CLAIMS: dict[str, Any] = {
    "tee": "sev-snp",
    "debug": False,
    "report_data": "00" * 64,
    "snp.measurement": "ab" * 48,
    "snp.vmpl": 0,
    "snp.reported_tcb.snp": 22,
    "tdx.advisory_ids": ["INTEL-SA-00001"],
    "tdx.tcb_status": None,
}
ED_KEY = Ed25519PrivateKey.generate()
EC_KEY = ec.generate_private_key(ec.SECP256R1())
SIGNING_KEYS: dict[str, SigningKey | VerifyingKey] = {"ed-1": ED_KEY, "ec-1": EC_KEY.public_key()}
JWKS = jwks_for(SIGNING_KEYS)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


def issue(signing_key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey = ED_KEY, **changes: Any) -> str:
    arguments: dict[str, Any] = {
        "tenant": TENANT,
        "ephemeral_jwk_thumbprint": JKT,
        "signing_key": signing_key,
        "kid": "ed-1" if isinstance(signing_key, Ed25519PrivateKey) else "ec-1",
        "issuer": ISSUER,
        "now": NOW,
        "lifetime": LIFETIME,
    }
    arguments.update(changes)
    claims = arguments.pop("claims", CLAIMS)
    return issue_attestation_result(claims, **arguments)


def verify(token: str, **changes: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "jwks": JWKS,
        "tenant": TENANT,
        "issuer": ISSUER,
        "now": NOW,
        "expected_jkt": JKT,
    }
    arguments.update(changes)
    return dict(verify_attestation_result(token, **arguments))


def parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _signature = token.split(".")
    return json.loads(b64url_decode(header)), json.loads(b64url_decode(payload))


def resign(header: dict[str, Any], payload: dict[str, Any], key: Ed25519PrivateKey = ED_KEY) -> str:
    """A token with any header and payload, validly signed with a published Ed25519 key: it isolates
    each claim check from the signature check."""
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    return signing_input + "." + b64url(key.sign(signing_input.encode()))


def reason_of(token: str, **changes: Any) -> str:
    with pytest.raises(EvidenceError) as exc:
        verify(token, **changes)
    assert exc.value.message
    return exc.value.reason


# --- round trips ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("signing_key", [ED_KEY, EC_KEY], ids=["Ed25519", "ES256"])
def test_round_trip(signing_key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> None:
    token = issue(signing_key)
    assert verify(token) == CLAIMS
    header, payload = parts(token)
    assert header == {
        "alg": "Ed25519" if isinstance(signing_key, Ed25519PrivateKey) else "ES256",
        "kid": "ed-1" if isinstance(signing_key, Ed25519PrivateKey) else "ec-1",
        "typ": "eat+jwt",
    }
    assert payload["eat_profile"] == EAR_PROFILE == "tag:github.com,2023:veraison/ear"
    assert payload["iss"] == ISSUER
    assert payload["aud"] == TENANT
    assert payload["iat"] == payload["nbf"] == int(NOW.timestamp())
    assert payload["exp"] == int(NOW.timestamp()) + 300
    assert payload["cnf"] == {"jkt": b64url(JKT)}
    assert payload["ear.verifier-id"]["developer"] == "keyserver"
    assert payload["submods"] == {"sev-snp": {"ear.status": "affirming", "ear.keyserver.claims": CLAIMS}}
    assert len(b64url_decode(payload["jti"])) == 16


def test_tokens_are_unique() -> None:
    assert parts(issue())[1]["jti"] != parts(issue())[1]["jti"]


@pytest.mark.parametrize("signing_key", [ED_KEY, EC_KEY], ids=["Ed25519", "ES256"])
def test_jwcrypto_verifies_ours_with_the_published_jwks(
    signing_key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey,
) -> None:
    token = issue(signing_key)
    keyset = jwcrypto_jwk.JWKSet.from_json(json.dumps(JWKS))
    kid = "ed-1" if isinstance(signing_key, Ed25519PrivateKey) else "ec-1"
    peer = jwcrypto_jws.JWS()
    peer.deserialize(token)
    peer.verify(keyset.get_key(kid))
    assert json.loads(peer.payload)["submods"]["sev-snp"]["ear.keyserver.claims"] == CLAIMS


def test_jwks_is_public_only() -> None:
    text = json.dumps(JWKS)
    assert '"d"' not in text
    assert [(k["kid"], k["kty"], k["alg"], k["use"]) for k in JWKS["keys"]] == [
        ("ed-1", "OKP", "Ed25519", "sig"),
        ("ec-1", "EC", "ES256", "sig"),
    ]
    assert jwks_for([("a", ED_KEY.public_key())])["keys"][0]["x"] == JWKS["keys"][0]["x"]
    with pytest.raises(ValueError, match="own kid"):
        jwks_for([("a", ED_KEY.public_key()), ("a", EC_KEY.public_key())])
    with pytest.raises(TypeError):
        jwks_for({"p384": ec.generate_private_key(ec.SECP384R1())})


# --- time ----------------------------------------------------------------------------------------------


def test_expiry_with_bounded_skew() -> None:
    expires = NOW + LIFETIME
    verify(issue(), now=expires + timedelta(seconds=59))  # within the 60 s skew
    assert reason_of(issue(), now=expires + timedelta(seconds=60)) == "attestation-result-expired"
    assert reason_of(issue(), now=NOW + timedelta(days=1)) == "attestation-result-expired"
    assert reason_of(issue(), now=expires, max_skew=timedelta(0)) == "attestation-result-expired"


def test_future_iat() -> None:
    verify(issue(), now=NOW - timedelta(seconds=60))
    assert reason_of(issue(), now=NOW - timedelta(seconds=61)) == "attestation-result-not-yet-valid"
    assert reason_of(issue(now=NOW + timedelta(hours=1))) == "attestation-result-not-yet-valid"


def test_future_nbf() -> None:
    header, payload = parts(issue())
    payload["nbf"] = payload["iat"] + 120
    assert reason_of(resign(header, payload)) == "attestation-result-not-yet-valid"
    del payload["nbf"]  # optional: iat stands in for it
    assert verify(resign(header, payload)) == CLAIMS


@pytest.mark.parametrize(
    "change",
    [
        {"exp": "later"},
        {"iat": 1.5},
        {"exp": True},
        {"exp": 0},  # before iat
        {"exp": int(NOW.timestamp()) + 3601},  # longer than an hour
    ],
)
def test_malformed_times(change: dict[str, Any]) -> None:
    header, payload = parts(issue())
    payload.update(change)
    assert reason_of(resign(header, payload)) == "attestation-result-invalid"


def test_time_must_be_aware() -> None:
    with pytest.raises(ValueError, match="timezone"):
        issue(now=NOW.replace(tzinfo=None))
    with pytest.raises(ValueError, match="timezone"):
        verify(issue(), now=NOW.replace(tzinfo=None))


# --- binding to tenant, issuer and key ----------------------------------------------------------------


def test_wrong_tenant() -> None:
    assert reason_of(issue(), tenant="globex") == "attestation-result-wrong-tenant"
    assert reason_of(issue(tenant="globex")) == "attestation-result-wrong-tenant"


def test_wrong_issuer() -> None:
    assert reason_of(issue(), issuer="https://other.example") == "attestation-result-wrong-issuer"


def test_wrong_jkt() -> None:
    assert reason_of(issue(), expected_jkt=bytes(32)) == "attestation-result-key-mismatch"
    assert reason_of(issue(ephemeral_jwk_thumbprint=bytes(32))) == "attestation-result-key-mismatch"


@pytest.mark.parametrize("cnf", [{}, {"jkt": 5}, {"jkt": b64url(JKT), "jwk": {}}, "jkt", None])
def test_malformed_cnf(cnf: Any) -> None:
    header, payload = parts(issue())
    payload["cnf"] = cnf
    assert reason_of(resign(header, payload)) == "attestation-result-invalid"


def test_non_ascii_claims_compare_safely() -> None:
    header, payload = parts(issue())
    payload["aud"] = "\u00e4\ud800"
    assert reason_of(resign(header, payload)) == "attestation-result-wrong-tenant"


# --- algorithms and keys -----------------------------------------------------------------------------


def test_alg_none() -> None:
    header, payload = parts(issue())
    header["alg"] = "none"
    unsigned = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode()) + "."
    assert reason_of(unsigned) == "attestation-result-invalid"


@pytest.mark.parametrize("secret_form", ["raw", "pem", "openssh", "jwk"])
def test_hs256_with_the_public_key_as_secret(secret_form: str) -> None:
    """The classic type confusion: HMAC "signed" with the verifier's own public key as the secret."""
    public = ED_KEY.public_key()
    secrets_by_form = {
        "raw": public.public_bytes_raw(),
        "pem": public.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        "openssh": public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        "jwk": json.dumps(JWKS["keys"][0]).encode(),
    }
    header, payload = parts(issue())
    header["alg"] = "HS256"
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(payload).encode())
    mac = hmac.new(secrets_by_form[secret_form], signing_input.encode(), hashlib.sha256).digest()
    with pytest.raises(EvidenceError) as exc:
        verify(signing_input + "." + b64url(mac))
    assert exc.value.reason == "attestation-result-invalid"
    assert "HS256" in exc.value.message


@pytest.mark.parametrize("alg", ["EdDSA", "ES384", "ES512", "RS256", "PS256", "HS512", "Ed448", "ES256K", ""])
def test_other_algorithms_are_refused(alg: str) -> None:
    header, payload = parts(issue())
    header["alg"] = alg
    assert reason_of(resign(header, payload)) == "attestation-result-invalid"


def test_eddsa_alias_refused_even_when_the_signature_is_valid() -> None:
    # An Ed25519 signature is the same bytes under "EdDSA": only the allow-list refuses it.
    header, payload = parts(issue())
    header["alg"] = "EdDSA"
    with pytest.raises(EvidenceError, match="'EdDSA' is refused"):
        verify(resign(header, payload))


def test_unknown_kid() -> None:
    assert reason_of(issue(kid="ed-2")) == "attestation-result-unknown-kid"
    other = Ed25519PrivateKey.generate()
    assert reason_of(issue(other), jwks=jwks_for({"ec-1": EC_KEY})) == "attestation-result-unknown-kid"


def test_kid_of_the_wrong_key_type() -> None:
    # ES256 header naming the Ed25519 key: refused on the key type before any signature check.
    assert reason_of(issue(EC_KEY, kid="ed-1")) == "attestation-result-invalid"
    assert reason_of(issue(ED_KEY, kid="ec-1")) == "attestation-result-invalid"


def test_a_signature_by_an_unpublished_key_under_a_published_kid() -> None:
    impostor = Ed25519PrivateKey.generate()
    assert reason_of(issue(impostor, kid="ed-1")) == "attestation-result-invalid"
    impostor_ec = ec.generate_private_key(ec.SECP256R1())
    assert reason_of(issue(impostor_ec, kid="ec-1")) == "attestation-result-invalid"


def test_jwks_misconfiguration_is_loud() -> None:
    with pytest.raises(ValueError, match="private"):
        verify(issue(), jwks={"keys": [{**JWKS["keys"][0], "d": "AAAA"}]})
    with pytest.raises(ValueError, match="key list"):
        verify(issue(), jwks={})
    assert (
        reason_of(issue(), jwks={"keys": [JWKS["keys"][0], JWKS["keys"][0]]}) == "attestation-result-invalid"
    )
    assert (
        reason_of(issue(), jwks={"keys": [{**JWKS["keys"][0], "alg": "ES256"}]})
        == "attestation-result-invalid"
    )
    assert (
        reason_of(issue(), jwks={"keys": [{**JWKS["keys"][0], "use": "enc"}]}) == "attestation-result-invalid"
    )


# --- header and payload shape --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        {"typ": "JWT"},
        {"typ": None},
        {"jku": "https://attacker.example/jwks"},
        {"jwk": {"kty": "OKP"}},
        {"crit": ["b64"], "b64": False},
        {"kid": ""},
        {"kid": 1},
    ],
)
def test_header_checks(change: dict[str, Any]) -> None:
    header, payload = parts(issue())
    header.update(change)
    header = {k: v for k, v in header.items() if v is not None}
    assert reason_of(resign(header, payload)) in {
        "attestation-result-invalid",
        "attestation-result-unknown-kid",
    }


@pytest.mark.parametrize(
    "change",
    [
        {"eat_profile": "tag:github.com,2022:veraison/ear"},
        {"submods": {}},
        {"submods": {"sev-snp": {"ear.status": "affirming"}}},
        {"submods": {"tdx": {"ear.status": "affirming", "ear.keyserver.claims": CLAIMS}}},
        {
            "submods": {
                "sev-snp": {"ear.status": "affirming", "ear.keyserver.claims": {"tee": "sev-snp", "x": 1.5}}
            }
        },
        {"submods": {"a": {}, "b": {}}},
        {"extra": 1},
        {"jti": 5},
        {"ear.verifier-id": "keyserver"},
    ],
)
def test_payload_checks(change: dict[str, Any]) -> None:
    header, payload = parts(issue())
    payload.update(change)
    assert reason_of(resign(header, payload)) == "attestation-result-invalid"


@pytest.mark.parametrize("status", ["warning", "contraindicated", "none"])
def test_only_affirming_results_are_accepted(status: str) -> None:
    header, payload = parts(issue())
    payload["submods"]["sev-snp"]["ear.status"] = status
    assert reason_of(resign(header, payload)) == "attestation-result-not-affirming"


def test_missing_claims() -> None:
    header, payload = parts(issue())
    for name in ("exp", "iat", "aud", "iss", "cnf", "eat_profile", "submods", "jti"):
        reduced = {k: v for k, v in payload.items() if k != name}
        assert reason_of(resign(header, reduced)) == "attestation-result-invalid", name


# --- tampering -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("signing_key", [ED_KEY, EC_KEY], ids=["Ed25519", "ES256"])
def test_tampered_payload(signing_key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> None:
    token = issue(signing_key)
    header_b64, _payload_b64, signature = token.split(".")
    _header, payload = parts(token)
    payload["submods"]["sev-snp"]["ear.keyserver.claims"]["debug"] = True
    forged = header_b64 + "." + b64url(json.dumps(payload).encode()) + "." + signature
    assert reason_of(forged) == "attestation-result-invalid"


@pytest.mark.parametrize("signing_key", [ED_KEY, EC_KEY], ids=["Ed25519", "ES256"])
def test_tampered_signature(signing_key: Ed25519PrivateKey | ec.EllipticCurvePrivateKey) -> None:
    token = issue(signing_key)
    head, signature = token.rsplit(".", 1)
    raw = b64url_decode(signature)
    for flipped in (bytes([raw[0] ^ 1]) + raw[1:], raw[:-1] + bytes([raw[-1] ^ 0x80]), b"", raw + b"\x00"):
        assert reason_of(head + "." + b64url(flipped)) == "attestation-result-invalid"


def test_tampered_header() -> None:
    token = issue()
    _head, payload_b64, signature = token.split(".")
    header = {"alg": "Ed25519", "kid": "ed-1", "typ": "eat+jwt"}
    respelled = b64url(json.dumps(header, indent=1).encode())  # same members, other bytes
    assert reason_of(respelled + "." + payload_b64 + "." + signature) == "attestation-result-invalid"


def test_duplicate_json_members_are_refused() -> None:
    header, payload = parts(issue())
    body = json.dumps(payload)[:-1] + ', "aud": "globex"}'
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(body.encode())
    token = signing_input + "." + b64url(ED_KEY.sign(signing_input.encode()))
    assert reason_of(token) == "attestation-result-invalid"


# --- issuing refuses -------------------------------------------------------------------------------------


def test_issue_validates_its_arguments() -> None:
    with pytest.raises(ValueError, match="tee"):
        issue(claims={"debug": False})
    with pytest.raises(ValueError, match="list claim"):
        issue(claims={"tee": "tpm", "x": [1]})
    with pytest.raises(ValueError, match="scalar"):
        issue(claims={"tee": "tpm", "x": {"y": 1}})
    with pytest.raises(ValueError, match="thumbprint"):
        issue(ephemeral_jwk_thumbprint=b"short")
    with pytest.raises(ValueError, match="lives"):
        issue(lifetime=MAX_LIFETIME + timedelta(seconds=1))
    with pytest.raises(ValueError, match="lives"):
        issue(lifetime=timedelta(0))
    with pytest.raises(TypeError):
        issue(rsa.generate_private_key(65537, 2048), kid="rsa")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        issue(ec.generate_private_key(ec.SECP384R1()), kid="p384")
    with pytest.raises(ValueError, match="kid"):
        issue(kid="")


def test_joserfc_itself_agrees_on_the_signature() -> None:
    token = issue(EC_KEY)
    public = EC_KEY.public_key()
    verified = jws.deserialize_compact(token, ECKey(public, public), algorithms=["ES256"])
    assert json.loads(verified.payload)["aud"] == TENANT


# --- properties ----------------------------------------------------------------------------------------

VALID = issue()


@given(st.text(max_size=300))
def test_arbitrary_strings_give_a_typed_error(token: str) -> None:
    with pytest.raises(EvidenceError):
        verify(token)


@given(st.lists(st.binary(max_size=80).map(b64url), min_size=3, max_size=3))
def test_arbitrary_jws_shapes_give_a_typed_error(segments: list[str]) -> None:
    with pytest.raises(EvidenceError):
        verify(".".join(segments))


@given(st.integers(min_value=0), st.sampled_from("ABCDEFabcdef0123456789-_.=+/ "))
def test_any_single_character_change_is_refused(position: int, replacement: str) -> None:
    index = position % len(VALID)
    if VALID[index] == replacement:
        return
    with pytest.raises(EvidenceError):
        verify(VALID[:index] + replacement + VALID[index + 1 :])


@given(
    st.dictionaries(
        st.sampled_from(
            ["eat_profile", "iss", "aud", "iat", "nbf", "exp", "jti", "cnf", "ear.verifier-id", "submods"]
        ),
        st.none()
        | st.booleans()
        | st.integers()
        | st.text(max_size=10)
        | st.dictionaries(st.text(max_size=5), st.integers()),
        max_size=10,
    )
)
def test_arbitrary_payloads_signed_by_us_give_a_typed_error(payload: dict[str, Any]) -> None:
    header = {"alg": "Ed25519", "kid": "ed-1", "typ": "eat+jwt"}
    with pytest.raises(EvidenceError):
        verify(resign(header, payload))
