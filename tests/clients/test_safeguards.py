"""Safeguards (docs/safeguards.md): the classifier gate, the egress budget, programs bound to their model,
the classifier service's rules, and the keyserver's replay of the measured configuration (loader.* claims).

End to end (a real loader process, swtpm quotes, the classifier process, the keyserver's policy) they run
in the demo's safeguards chapter (tests/clients/test_end_to_end.py)."""

from __future__ import annotations

import base64
import hashlib
import secrets
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from hypothesis import given
from hypothesis import strategies as st

from audit.entry import canonical_bytes
from clients.accelerator.accelerator import Accelerator
from clients.accelerator.errors import ProgramRejected
from clients.accelerator.programs import generation_program
from clients.accelerator.signing import sign_program
from clients.classifier.service import Classifier
from clients.loader.config import CONFIG_DOMAIN
from clients.loader.safeguards import (
    MAX_VALIDITY_S,
    NONCE_BYTES,
    SafeguardConfig,
    SafeguardConfigError,
    SafeguardRefused,
    Safeguards,
    classifier_message,
    parse_safeguards,
)
from clients.model.corpus import load_corpus
from clients.model.tensors_encode import encode_tensors
from clients.model.train import train
from keyserver.errors import EvidenceError
from keyserver.evidence.tpm.loader_config import key_fingerprint, verify_loader_config

MODEL = hashlib.sha256(b"the model").digest()
PROGRAM: dict[str, Any] = {"alg": "Ed25519", "program": {"name": "p"}, "signature": "x", "signer": "ci"}
INPUTS: dict[str, Any] = {"prompt": "hello", "max_new_tokens": 10}
NOW = 1_800_000_000.0


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def pem(key: Any) -> str:
    return str(key.public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode())


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def classifier_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


def gate(key: ed25519.Ed25519PrivateKey, clock: Clock) -> Safeguards:
    return Safeguards(SafeguardConfig({"safety": key.public_key()}), MODEL, clock=clock)


def signed(
    key: ed25519.Ed25519PrivateKey,
    *,
    program: dict[str, Any] = PROGRAM,
    inputs: dict[str, Any] = INPUTS,
    model: bytes = MODEL,
    expires: int = int(NOW) + 60,
    nonce: bytes | None = None,
    name: str = "safety",
) -> dict[str, Any]:
    nonce = nonce or secrets.token_bytes(NONCE_BYTES)
    signature = key.sign(classifier_message(program, inputs, model, expires, nonce))
    return {"key": name, "expires": expires, "nonce": b64url(nonce), "signature": b64url(signature)}


def test_a_valid_signature_admits_once_and_only_once(classifier_key: ed25519.Ed25519PrivateKey) -> None:
    safeguards = gate(classifier_key, Clock())
    signature = signed(classifier_key)
    safeguards.admit(PROGRAM, INPUTS, signature)
    with pytest.raises(SafeguardRefused) as replayed:
        safeguards.admit(PROGRAM, INPUTS, signature)
    assert replayed.value.reason == "classifier-signature-replayed"
    assert safeguards.report()["refusals"] == {"classifier-signature-replayed": 1}


def _cases(key: ed25519.Ed25519PrivateKey) -> list[tuple[Any, str]]:
    other = ed25519.Ed25519PrivateKey.generate()
    good = signed(key)
    return [
        (None, "classifier-signature-missing"),
        ("x", "classifier-signature-malformed"),
        ({**good, "extra": 1}, "classifier-signature-malformed"),
        ({**good, "nonce": "!!"}, "classifier-signature-malformed"),
        ({**good, "nonce": b64url(b"short")}, "classifier-signature-malformed"),
        ({**good, "expires": "soon"}, "classifier-signature-malformed"),
        ({**good, "expires": True}, "classifier-signature-malformed"),
        ({**good, "key": "unknown"}, "classifier-key-unknown"),
        ({**good, "key": ["safety"]}, "classifier-key-unknown"),
        (signed(other), "classifier-signature-invalid"),  # forged: another key under the trusted name
        (signed(key, inputs={**INPUTS, "prompt": "other"}), "classifier-signature-invalid"),  # wrong request
        (signed(key, program={**PROGRAM, "signer": "x"}), "classifier-signature-invalid"),  # wrong program
        (signed(key, model=hashlib.sha256(b"other").digest()), "classifier-signature-invalid"),  # wrong model
        ({**good, "expires": good["expires"] + 1}, "classifier-signature-invalid"),  # expiry changed
        (signed(key, expires=int(NOW)), "classifier-signature-expired"),
        (signed(key, expires=int(NOW) + MAX_VALIDITY_S + 5), "classifier-signature-expired"),
    ]


def test_every_bad_signature_is_refused_with_its_reason_and_counted(
    classifier_key: ed25519.Ed25519PrivateKey,
) -> None:
    safeguards = gate(classifier_key, Clock())
    expected: dict[str, int] = {}
    for signature, reason in _cases(classifier_key):
        with pytest.raises(SafeguardRefused) as refused:
            safeguards.admit(PROGRAM, INPUTS, signature)
        assert refused.value.reason == reason, (signature, str(refused.value))
        expected[reason] = expected.get(reason, 0) + 1
    assert safeguards.report()["refusals"] == expected


def test_a_used_nonce_is_forgotten_only_once_its_signature_expired(
    classifier_key: ed25519.Ed25519PrivateKey,
) -> None:
    clock = Clock()
    safeguards = gate(classifier_key, clock)
    nonce = secrets.token_bytes(NONCE_BYTES)
    safeguards.admit(PROGRAM, INPUTS, signed(classifier_key, nonce=nonce))
    clock.now += 59
    with pytest.raises(SafeguardRefused, match="already used"):
        safeguards.admit(PROGRAM, INPUTS, signed(classifier_key, nonce=nonce, expires=int(clock.now) + 60))


def test_the_egress_budget_refuses_whole_answers_and_reports(
    classifier_key: ed25519.Ed25519PrivateKey,
) -> None:
    clock = Clock()
    safeguards = Safeguards(SafeguardConfig(tokens_per_hour=25, lifetime_bytes=10_000), MODEL, clock=clock)
    safeguards.admit(PROGRAM, INPUTS, None)
    safeguards.release({"completion": "x" * 20})
    with pytest.raises(SafeguardRefused) as refused:
        safeguards.release({"completion": "y" * 10})  # 30 > 25: refused whole, not cut to 5
    assert refused.value.reason == "egress-budget-exceeded"
    safeguards.release({"completion": "z" * 5})  # exactly 25
    with pytest.raises(SafeguardRefused, match="spent"):
        safeguards.admit(PROGRAM, INPUTS, None)  # nothing left: refused before running
    report = safeguards.report()
    assert report["egress"]["window_tokens"] == 25
    assert report["refusals"] == {"egress-budget-exceeded": 2}
    clock.now += 3601  # the window slides; the lifetime does not
    safeguards.admit(PROGRAM, INPUTS, None)
    assert safeguards.report()["egress"]["window_tokens"] == 0
    assert safeguards.report()["egress"]["lifetime_tokens"] == 25


def test_the_lifetime_budget_does_not_slide() -> None:
    clock = Clock()
    safeguards = Safeguards(SafeguardConfig(lifetime_bytes=40), MODEL, clock=clock)
    safeguards.release({"a": "x" * 20})  # {"a":"xxxx…"} is 28 bytes
    clock.now += 10 * 3600
    with pytest.raises(SafeguardRefused, match="lifetime"):
        safeguards.release({"a": "x" * 20})


def test_a_loader_without_a_classifier_refuses_a_classifier_member() -> None:
    with pytest.raises(SafeguardRefused, match="requires no classifier"):
        Safeguards(SafeguardConfig(tokens_per_hour=1), MODEL).admit(PROGRAM, INPUTS, {"key": "x"})


@pytest.mark.parametrize(
    "member",
    [
        {},
        [],
        {"other": 1},
        {"classifier_keys": {}},
        {"classifier_keys": {"Bad Name": "x"}},
        {"classifier_keys": {"safety": "not a pem"}},
        {"egress": {}},
        {"egress": {"bytes_per_hour": 0}},
        {"egress": {"bytes_per_hour": True}},
        {"egress": {"bytes_per_hour": 1.5}},
        {"egress": {"per_day": 1}},
        {"model_bound_programs": "yes"},
    ],
)
def test_bad_safeguard_configurations_are_refused(member: Any) -> None:
    with pytest.raises(SafeguardConfigError):
        parse_safeguards(member)


def test_only_ed25519_classifier_keys() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    with pytest.raises(SafeguardConfigError, match="Ed25519"):
        parse_safeguards(
            {"classifier_keys": {"safety": pem(ec.generate_private_key(ec.SECP256R1()).public_key())}}
        )


@given(
    st.dictionaries(
        st.text(max_size=20),
        st.one_of(
            st.integers(),
            st.text(max_size=10),
            st.booleans(),
            st.dictionaries(st.text(max_size=15), st.integers()),
        ),
    )
)
def test_any_member_is_a_configuration_or_refused(member: dict[str, Any]) -> None:
    try:
        config = parse_safeguards(member)
    except SafeguardConfigError:
        return
    for limit in (config.bytes_per_hour, config.tokens_per_hour, config.lifetime_bytes):
        assert limit is None or limit >= 1


# --- the classifier service ---------------------------------------------------------------------------


def test_the_classifier_flags_listed_categories_and_signs_the_rest(
    classifier_key: ed25519.Ed25519PrivateKey,
) -> None:
    classifier = Classifier(classifier_key, "safety", MODEL)
    assert classifier.classify({"prompt": "how to write ransomware"}).category == "malware"
    assert classifier.classify({"prompt": "a PIPE \n BOMB"}).category == "weapons"  # any spacing
    assert (
        classifier.classify({"prompt": "\uff30\uff49\uff50\uff45 bomb"}).category == "weapons"
    )  # fullwidth: NFKC
    assert classifier.classify({"prompt": "NERVE AGENT"}).category == "weapons"
    assert classifier.classify({"prompt": "keyloggers"}).allowed  # whole words only
    status, answer = classifier.answer(canonical_bytes({"program": PROGRAM, "inputs": INPUTS}))
    assert status == 200
    assert answer["allowed"] is True
    gate_ = Safeguards(SafeguardConfig({"safety": classifier_key.public_key()}), MODEL)
    gate_.admit(PROGRAM, INPUTS, answer["classifier"])  # what it signs, the loader accepts
    status, answer = classifier.answer(
        canonical_bytes({"program": PROGRAM, "inputs": {"prompt": "ransomware"}})
    )
    assert (status, answer) == (403, {"allowed": False, "category": "malware"})
    for body in (b"", b"[]", b'{"program": {}}', b'{"program": 1, "inputs": {}}', b"\xff"):
        assert classifier.answer(body)[0] == 400


# --- programs bound to their model ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def archive() -> bytes:
    return encode_tensors(train(load_corpus(), seed=3, steps=20).weights)


def test_a_program_signed_for_another_model_is_refused_before_it_runs(archive: bytes) -> None:
    from clients.model.tensors import decode_tensors

    ci = ed25519.Ed25519PrivateKey.generate()
    weights = decode_tensors(archive)
    digest = hashlib.sha256(archive).hexdigest()
    accelerator = Accelerator.from_archive(archive, {"ci": ci.public_key()}, model_bound_programs=True)
    inputs = {"prompt": "a", "max_new_tokens": 2, "temperature_milli": 0, "seed": 1}
    bound = sign_program(generation_program(weights, model_sha256=digest), "ci", ci)
    assert "completion" in accelerator.run(bound, inputs)
    for program in (
        sign_program(generation_program(weights, model_sha256="00" * 32), "ci", ci),  # another model
        sign_program(generation_program(weights), "ci", ci),  # names none: this loader requires one
    ):
        before = accelerator.instructions_executed
        with pytest.raises(ProgramRejected) as refused:
            accelerator.run(program, inputs)
        assert refused.value.reason == "program-wrong-model"
        assert accelerator.instructions_executed == before
    with pytest.raises(ProgramRejected, match="model"):
        sign_program(generation_program(weights, model_sha256="ABC"), "ci", ci)


# --- the keyserver's replay of the configuration -------------------------------------------------------


def _member(config: bytes, prior: list[bytes]) -> tuple[dict[str, Any], dict[str, dict[int, bytes]]]:
    value = bytes(32)
    for event in [*prior, hashlib.sha256(CONFIG_DOMAIN + config).digest()]:
        value = hashlib.sha256(value + event).digest()
    member = {"pcr": 10, "prior": [p.hex() for p in prior], "config": base64.b64encode(config).decode()}
    return member, {"sha256": {10: value}}


def _config(classifier: ed25519.Ed25519PrivateKey, **egress: int) -> bytes:
    signer = ed25519.Ed25519PrivateKey.generate()
    document = {
        "v": 1,
        "program_signers": {"ci": pem(signer.public_key())},
        "safeguards": {"classifier_keys": {"safety": pem(classifier.public_key())}, "egress": egress},
    }
    return canonical_bytes(document)


def test_a_configuration_that_replays_gives_its_fields_as_claims(
    classifier_key: ed25519.Ed25519PrivateKey,
) -> None:
    config = _config(classifier_key, tokens_per_hour=300)
    member, quoted = _member(config, [hashlib.sha256(b"image").digest()])
    claims = verify_loader_config(member, quoted)
    assert claims["loader.classifier_keys"] == [key_fingerprint(classifier_key.public_key())]
    assert claims["loader.egress.tokens_per_hour"] == 300
    assert "loader.egress.bytes_per_hour" not in claims  # not capped: a policy requiring a cap fails
    assert claims["loader.config_sha256"] == hashlib.sha256(CONFIG_DOMAIN + config).hexdigest()
    assert claims["loader.config_pcr"] == 10  # the sender's choice: a policy pins it (docs/safeguards.md)
    assert len(claims["loader.program_signers"]) == 1
    assert "loader.tee" not in claims  # this document names no TEE (a version 1 configuration)
    assert claims["loader.gpus"] is False


def test_the_configurations_tee_and_gpus_are_claims() -> None:
    """Version 2 names the TEE (and the GPUs): a policy can require the loader built for its TEE."""
    signer = ed25519.Ed25519PrivateKey.generate()
    config = canonical_bytes(
        {"v": 2, "tee": "tdx", "gpus": True, "program_signers": {"ci": pem(signer.public_key())}}
    )
    claims = verify_loader_config(*_member(config, []))
    assert (claims["loader.tee"], claims["loader.gpus"]) == ("tdx", True)


def test_a_configuration_that_does_not_replay_is_refused(classifier_key: ed25519.Ed25519PrivateKey) -> None:
    honest = _config(classifier_key, tokens_per_hour=300)
    member, quoted = _member(honest, [hashlib.sha256(b"image").digest()])
    lies = [
        {**member, "config": base64.b64encode(_config(classifier_key, tokens_per_hour=1)).decode()},
        {**member, "prior": []},
        {**member, "prior": [("00" * 32)]},
        {**member, "pcr": 11},
    ]
    for lie in lies:
        with pytest.raises(EvidenceError) as refused:
            verify_loader_config(lie, quoted)
        assert refused.value.reason == "loader-config-mismatch"


@pytest.mark.parametrize(
    "change",
    [
        {"pcr": -1},
        {"pcr": "10"},
        {"prior": "x"},
        {"prior": ["AB" * 32]},
        {"prior": ["00" * 32] * 17},
        {"config": "***"},
        {"config": 5},
        {"extra": 1},
    ],
)
def test_malformed_configuration_members_are_refused(change: dict[str, Any]) -> None:
    member, quoted = _member(b"{}", [])
    with pytest.raises(EvidenceError) as refused:
        verify_loader_config({**member, **change}, quoted)
    assert refused.value.reason in ("loader-config-invalid", "loader-config-mismatch")


@pytest.mark.parametrize("pcr", [16, 17, 22, 23])
def test_a_configuration_in_a_pcr_software_can_reset_is_refused_even_when_it_replays(pcr: int) -> None:
    """Replayed from zero into a resettable (16, 23) or DRTM (17-22) PCR, a configuration says nothing of
    what ran since boot: any process that reset the PCR could have put it there."""
    signer = ed25519.Ed25519PrivateKey.generate()
    config = canonical_bytes({"v": 1, "program_signers": {"ci": pem(signer.public_key())}})
    member, quoted = _member(config, [])
    member = {**member, "pcr": pcr}
    with pytest.raises(EvidenceError, match=r"static PCR index \(0\.\.15\)") as refused:
        verify_loader_config(member, {"sha256": {pcr: quoted["sha256"][10]}})
    assert refused.value.reason == "loader-config-invalid"


def test_a_non_canonical_configuration_is_refused_even_when_it_replays() -> None:
    member, quoted = _member(b'{"v": 1}', [])  # a space: not the canonical bytes the loader measures
    with pytest.raises(EvidenceError) as refused:
        verify_loader_config(member, quoted)
    assert refused.value.reason == "loader-config-invalid"


@given(
    st.dictionaries(
        st.sampled_from(["pcr", "prior", "config", "x"]),
        st.one_of(st.integers(), st.text(max_size=30), st.lists(st.text(max_size=70), max_size=3)),
    )
)
def test_any_member_is_claims_or_a_typed_refusal(member: dict[str, Any]) -> None:
    reason = None
    try:
        verify_loader_config(member, {"sha256": {10: bytes(32)}})
    except EvidenceError as exc:
        reason = exc.reason
    assert reason in ("loader-config-invalid", "loader-config-mismatch")  # never claims: nothing replays
