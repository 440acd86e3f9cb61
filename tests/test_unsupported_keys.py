"""Public keys on a curve ``cryptography`` does not support (secp224k1): a valid SubjectPublicKeyInfo that
``load_*_public_key`` refuses with ``UnsupportedAlgorithm`` — not a ``ValueError``, so parsers that caught
only that answered 500 (found by review: a CI signer, a pinned EK and a measured loader configuration,
the last one on the release path, where the request was neither denied nor logged). Each place now refuses
it with its own typed error; and any other exception a verifier raises on hostile evidence is a logged
denial (``evidence-unverifiable``), never a 500."""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy.exc import DBAPIError, InvalidRequestError

from audit.entry import canonical_bytes
from clients.loader.config import ConfigError, LoaderConfig
from clients.loader.safeguards import SafeguardConfigError, parse_safeguards
from keyserver.errors import EvidenceError, InvalidRequest, NotFound
from keyserver.evidence import dispatch
from keyserver.evidence.tpm.loader_config import _fingerprints, verify_loader_config
from keyserver.evidence.tpm.quote import AkPublic
from keyserver.reference_values import load_signer_key
from tests.clients.test_loader_parts import document
from tests.clients.test_safeguards import _member

_EC_PUBLIC_KEY = bytes.fromhex("06072a8648ce3d0201")  # OID 1.2.840.10045.2.1
_SECP224K1 = bytes.fromhex("06052b81040020")  # OID 1.3.132.0.32
_POINT = b"\x04" + bytes(range(1, 57))


def _der(tag: int, body: bytes) -> bytes:
    assert len(body) < 128
    return bytes([tag, len(body)]) + body


SPKI_DER = _der(0x30, _der(0x30, _EC_PUBLIC_KEY + _SECP224K1) + _der(0x03, b"\x00" + _POINT))
SPKI_PEM = (
    "-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(SPKI_DER).decode() + "-----END PUBLIC KEY-----\n"
)


def test_the_key_is_one_cryptography_refuses_as_unsupported() -> None:
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    with pytest.raises(UnsupportedAlgorithm):
        load_der_public_key(SPKI_DER)


@pytest.mark.parametrize("encoded", [SPKI_DER, SPKI_PEM.encode()], ids=["der", "pem"])
def test_a_ci_signer_key_on_an_unsupported_curve_is_a_400(encoded: bytes) -> None:
    with pytest.raises(InvalidRequest, match="cannot be parsed"):
        load_signer_key(encoded)


@pytest.mark.parametrize("encoded", [SPKI_DER, SPKI_PEM.encode()], ids=["der", "pem"])
def test_a_bare_ak_or_pinned_ek_on_an_unsupported_curve_is_refused(encoded: bytes) -> None:
    with pytest.raises(EvidenceError) as refused:
        AkPublic.from_public_key(encoded)
    assert refused.value.reason == "tpm-ak-invalid"


def test_a_measured_configuration_naming_such_a_key_is_a_refusal() -> None:
    with pytest.raises(EvidenceError, match="does not parse"):
        _fingerprints({"a": SPKI_PEM}, "program_signers")


@pytest.mark.parametrize("member", ["program_signers", "classifier_keys"])
def test_a_quoted_configuration_naming_such_a_key_is_a_typed_refusal(member: str) -> None:
    """On the release path: the measured configuration replays against the quoted PCR, and names the key."""
    document: dict[str, Any] = {"v": 2, "tee": "tpm", "program_signers": {"ci": SPKI_PEM}}
    if member == "classifier_keys":
        signer = ed25519.Ed25519PrivateKey.generate().public_key()
        document["program_signers"] = {
            "ci": signer.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
        }
        document["safeguards"] = {"classifier_keys": {"safety": SPKI_PEM}}
    with pytest.raises(EvidenceError, match="does not parse"):
        verify_loader_config(*_member(canonical_bytes(document), []))


def test_the_loader_refuses_such_a_key_in_its_own_configuration() -> None:
    with pytest.raises(ConfigError, match="not a PEM public key"):
        LoaderConfig.from_document(document(program_signers={"ci": SPKI_PEM}))
    with pytest.raises(SafeguardConfigError, match="not a PEM public key"):
        parse_safeguards({"classifier_keys": {"safety": SPKI_PEM}})


# --- a verifier's unexpected exception on hostile evidence --------------------------------------------


async def _verify_with(monkeypatch: pytest.MonkeyPatch, error: BaseException) -> Any:
    async def raising(*_args: Any, **_kwargs: Any) -> Any:
        raise error

    monkeypatch.setattr(dispatch, "_verify_tpm", raising)
    return await dispatch.verify_evidence(
        None,  # type: ignore[arg-type]  # never reached: the verifier raises first
        uuid.uuid4(),
        {"tee": "tpm"},
        nonce=b"n" * 32,
        ephemeral_jwk={},
        now=datetime.now(UTC),
    )


async def test_a_verifier_bug_reached_by_evidence_is_a_refusal(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(EvidenceError) as refused:
        await _verify_with(monkeypatch, ZeroDivisionError("a bug"))
    assert refused.value.reason == "evidence-unverifiable"
    assert "ZeroDivisionError" in refused.value.message
    assert "a bug" not in refused.value.message  # the exception's text may carry the input: not echoed


@pytest.mark.parametrize(
    "error",
    [
        NotFound("a typed refusal keeps its own code"),
        DBAPIError("SELECT 1", None, Exception("connection lost")),
        InvalidRequestError("a session in a failed transaction"),
        TimeoutError(),
        OSError("the database's socket"),
    ],
    ids=["typed", "database", "session", "timeout", "os"],
)
async def test_refusals_and_database_failures_pass_through(
    monkeypatch: pytest.MonkeyPatch, error: BaseException
) -> None:
    with pytest.raises(type(error)):
        await _verify_with(monkeypatch, error)
