"""Signed programs on the virtual accelerator: a signed program reproduces the reference generation, and
every refusal — unsigned, unknown signer, wrong key, tampered, alg confusion, limits — happens with its
reason and before anything runs (the accelerator's instruction counter stays at 0)."""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.entry import canonical_bytes
from clients.accelerator import limits
from clients.accelerator.accelerator import Accelerator
from clients.accelerator.errors import (
    PROGRAM_ALG_MISMATCH,
    PROGRAM_INPUT_INVALID,
    PROGRAM_LIMIT_EXCEEDED,
    PROGRAM_MALFORMED,
    PROGRAM_RUNTIME_ERROR,
    PROGRAM_SIGNATURE_INVALID,
    PROGRAM_SIGNER_UNKNOWN,
    PROGRAM_UNSIGNED,
    PROGRAM_WEIGHTS_MISMATCH,
    REASONS,
    ProgramRejected,
)
from clients.accelerator.program import parse_program, parse_signed_program, verify_program
from clients.accelerator.programs import generation_program
from clients.accelerator.signatures import SignerPrivateKey
from clients.accelerator.signing import encode_signed_program, sign, sign_program
from clients.model.charlm import EMBEDDING, HIDDEN_WEIGHT, OUTPUT_WEIGHT, VOCAB, vocabulary
from clients.model.corpus import load_corpus
from clients.model.generate import generate
from clients.model.tensors import Tensor
from clients.model.train import train

SIGNER = "ci-pipeline"
INPUTS: dict[str, Any] = {
    "prompt": "the keyserver ",
    "max_new_tokens": 40,
    "temperature_milli": 800,
    "seed": 7,
}
SIGNATURE_REASONS = {
    PROGRAM_UNSIGNED,
    PROGRAM_SIGNER_UNKNOWN,
    PROGRAM_ALG_MISMATCH,
    PROGRAM_SIGNATURE_INVALID,
    PROGRAM_MALFORMED,
    PROGRAM_LIMIT_EXCEEDED,
}


@pytest.fixture(scope="module")
def weights() -> dict[str, Tensor]:
    return train(load_corpus(), seed=0, steps=200).weights


@pytest.fixture(scope="module")
def ci_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def program(weights: dict[str, Tensor]) -> dict[str, Any]:
    return generation_program(weights, max_new_tokens=64)


@pytest.fixture(scope="module")
def signed(program: dict[str, Any], ci_key: ed25519.Ed25519PrivateKey) -> dict[str, Any]:
    return sign_program(program, SIGNER, ci_key)


@pytest.fixture
def accelerator(weights: dict[str, Tensor], ci_key: ed25519.Ed25519PrivateKey) -> Accelerator:
    return Accelerator(weights, {SIGNER: ci_key.public_key()})


def sign_raw(
    document: Any, key: SignerPrivateKey, signer: str = SIGNER, alg: str = "Ed25519"
) -> dict[str, Any]:
    """A signature over any document, valid or not, as a careless or hostile signer could make: the
    accelerator must survive what signers sign."""
    signature = sign(key, canonical_bytes(document))
    return {
        "alg": alg,
        "program": document,
        "signature": base64.b64encode(signature).decode(),
        "signer": signer,
    }


def refused(accelerator: Accelerator, signed: Any, inputs: dict[str, Any] | None = None) -> ProgramRejected:
    """The refusal, after checking that no instruction ran."""
    with pytest.raises(ProgramRejected) as caught:
        accelerator.run(signed, INPUTS if inputs is None else inputs)
    assert accelerator.instructions_executed == 0
    assert caught.value.reason in REASONS
    return caught.value


# --- the signed program reproduces the reference -----------------------------------------------------


@pytest.mark.parametrize("temperature_milli", [0, 500, 800, 1000, 2500])
def test_the_signed_program_reproduces_generate(
    accelerator: Accelerator, signed: dict[str, Any], weights: dict[str, Tensor], temperature_milli: int
) -> None:
    inputs = {**INPUTS, "temperature_milli": temperature_milli}
    outputs = accelerator.run(signed, inputs)
    expected = generate(
        weights, INPUTS["prompt"], INPUTS["max_new_tokens"], temperature_milli / 1000, INPUTS["seed"]
    )
    assert outputs == {"completion": expected}
    assert len(expected) == INPUTS["max_new_tokens"]
    assert accelerator.instructions_executed > 0


def _keys() -> Iterator[tuple[str, SignerPrivateKey]]:
    yield "Ed25519", ed25519.Ed25519PrivateKey.generate()
    yield "ES256", ec.generate_private_key(ec.SECP256R1())
    yield "ES384", ec.generate_private_key(ec.SECP384R1())


@pytest.mark.parametrize(("alg", "key"), list(_keys()), ids=["Ed25519", "ES256", "ES384"])
def test_each_algorithm_signs_and_verifies(
    weights: dict[str, Tensor], program: dict[str, Any], alg: str, key: SignerPrivateKey
) -> None:
    signed = sign_program(program, SIGNER, key)
    assert signed["alg"] == alg
    accelerator = Accelerator(weights, {SIGNER: key.public_key()})
    wire = encode_signed_program(signed)
    assert accelerator.run(wire, INPUTS) == accelerator.run(signed, INPUTS)


@settings(max_examples=25)
@given(
    data=st.data(),
    count=st.integers(0, 64),
    temperature_milli=st.integers(0, 3000),
    seed=st.integers(0, 2**53 - 1),
)
def test_signed_generation_equals_the_reference_for_any_inputs(
    weights: dict[str, Tensor],
    signed: dict[str, Any],
    ci_key: ed25519.Ed25519PrivateKey,
    data: st.DataObject,
    count: int,
    temperature_milli: int,
    seed: int,
) -> None:
    prompt = data.draw(st.text(alphabet=st.sampled_from(vocabulary(weights)), max_size=30))
    accelerator = Accelerator(weights, {SIGNER: ci_key.public_key()})
    inputs = {"prompt": prompt, "max_new_tokens": count, "temperature_milli": temperature_milli, "seed": seed}
    expected = generate(weights, prompt, count, temperature_milli / 1000, seed)
    assert accelerator.run(signed, inputs) == {"completion": expected}


def test_a_greedy_program_with_softmax_and_argmax_matches_temperature_zero(
    weights: dict[str, Tensor],
    program: dict[str, Any],
    ci_key: ed25519.Ed25519PrivateKey,
    accelerator: Accelerator,
) -> None:
    greedy = copy.deepcopy(program)
    greedy["name"] = "charlm-greedy"
    loop = greedy["body"][3]
    position = next(i for i, ins in enumerate(loop["body"]) if ins["op"] == "sample")
    loop["body"][position : position + 1] = [
        {"op": "softmax", "x": "logits", "out": "probabilities"},
        {"op": "argmax", "x": "probabilities", "out": "next"},
    ]
    greedy["outputs"]["last_token"] = "last"
    greedy["body"].insert(3, {"op": "argmax", "x": "output.bias", "out": "last"})
    loop["body"].append({"op": "add", "a": "probabilities", "b": "probabilities", "out": "doubled"})
    outputs = accelerator.run(sign_program(greedy, SIGNER, ci_key), {**INPUTS, "temperature_milli": 0})
    expected = generate(weights, INPUTS["prompt"], INPUTS["max_new_tokens"], 0.0, seed=0)
    assert outputs["completion"] == expected
    assert outputs["last_token"] == int(np.argmax(weights["output.bias"]))


def test_the_verified_program_is_what_was_signed(
    signed: dict[str, Any], ci_key: ed25519.Ed25519PrivateKey
) -> None:
    program = verify_program(signed, {SIGNER: ci_key.public_key()})
    assert program.digest == hashlib.sha256(canonical_bytes(signed["program"])).hexdigest()
    assert program.name == "charlm-generate"
    assert set(program.outputs) == {"completion"}
    assert program.worst_case_steps <= limits.MAX_STEPS


def test_the_accelerator_keeps_its_own_copy_of_the_weights(
    weights: dict[str, Tensor], signed: dict[str, Any], ci_key: ed25519.Ed25519PrivateKey
) -> None:
    mine = {name: array.copy() for name, array in weights.items()}
    accelerator = Accelerator(mine, {SIGNER: ci_key.public_key()})
    before = accelerator.run(signed, INPUTS)
    mine[OUTPUT_WEIGHT][:] = 0  # the caller's arrays change; the accelerator's do not
    assert accelerator.run(signed, INPUTS) == before


# --- signatures: refused before anything runs ---------------------------------------------------------


def test_a_bare_program_is_unsigned(accelerator: Accelerator, program: dict[str, Any]) -> None:
    assert refused(accelerator, program).reason == PROGRAM_UNSIGNED


@pytest.mark.parametrize("signature", [None, ""])
def test_an_empty_signature_is_unsigned(
    accelerator: Accelerator, signed: dict[str, Any], signature: Any
) -> None:
    assert refused(accelerator, {**signed, "signature": signature}).reason == PROGRAM_UNSIGNED


def test_a_signature_by_another_key_is_invalid(accelerator: Accelerator, program: dict[str, Any]) -> None:
    forged = sign_program(program, SIGNER, ed25519.Ed25519PrivateKey.generate())
    rejection = refused(accelerator, forged)
    assert rejection.reason == PROGRAM_SIGNATURE_INVALID
    assert SIGNER in rejection.message


def test_a_signature_by_an_unknown_signer_is_refused(
    accelerator: Accelerator, program: dict[str, Any]
) -> None:
    stranger = sign_program(program, "mallory", ed25519.Ed25519PrivateKey.generate())
    assert refused(accelerator, stranger).reason == PROGRAM_SIGNER_UNKNOWN
    for signer in [None, 7, ["ci-pipeline"], SIGNER.upper()]:
        assert refused(accelerator, {**stranger, "signer": signer}).reason == PROGRAM_SIGNER_UNKNOWN


def test_a_changed_member_breaks_the_signature(accelerator: Accelerator, signed: dict[str, Any]) -> None:
    changes: list[Callable[[dict[str, Any]], None]] = [
        lambda p: p["inputs"]["max_new_tokens"].update(max=63),
        lambda p: p.update(name="charlm-generate2"),
        lambda p: p["body"][3]["body"][0].update(size=1),
        lambda p: p["outputs"].update(completion="tokens"),
        lambda p: p["weights"][EMBEDDING].update(shape=[1, 1]),
        lambda p: p["body"].pop(),
    ]
    for change in changes:
        tampered = copy.deepcopy(signed)
        change(tampered["program"])
        assert refused(accelerator, tampered).reason == PROGRAM_SIGNATURE_INVALID


def test_every_single_byte_change_of_the_wire_form_is_refused(
    accelerator: Accelerator, signed: dict[str, Any]
) -> None:
    wire = encode_signed_program(signed)
    reasons: set[str] = set()
    for position in range(len(wire)):
        tampered = wire[:position] + bytes([wire[position] ^ 0x01]) + wire[position + 1 :]
        with pytest.raises(ProgramRejected) as caught:
            accelerator.run(tampered, INPUTS)
        reasons.add(caught.value.reason)
    assert accelerator.instructions_executed == 0
    assert reasons <= SIGNATURE_REASONS
    assert {
        PROGRAM_SIGNATURE_INVALID,
        PROGRAM_MALFORMED,
        PROGRAM_SIGNER_UNKNOWN,
        PROGRAM_ALG_MISMATCH,
    } <= reasons
    assert accelerator.run(wire, INPUTS)["completion"]  # the untouched bytes still run


@pytest.mark.parametrize("alg", ["ES256", "ES384", "none", "HS256", "EdDSA", "ed25519", None, 1, ["Ed25519"]])
def test_an_alg_other_than_the_signer_keys_is_refused(
    accelerator: Accelerator, signed: dict[str, Any], alg: Any
) -> None:
    assert refused(accelerator, {**signed, "alg": alg}).reason == PROGRAM_ALG_MISMATCH


def test_an_ecdsa_signature_cannot_pose_as_another_curve(
    weights: dict[str, Tensor], program: dict[str, Any]
) -> None:
    p256 = ec.generate_private_key(ec.SECP256R1())
    accelerator = Accelerator(weights, {SIGNER: p256.public_key()})
    signed = sign_program(program, SIGNER, p256)
    assert refused(accelerator, {**signed, "alg": "ES384"}).reason == PROGRAM_ALG_MISMATCH
    assert refused(accelerator, {**signed, "alg": "Ed25519"}).reason == PROGRAM_ALG_MISMATCH
    # An Ed25519 signature by the "same" signer name, labelled as it is: still not the signer's key type.
    ed_signed = sign_program(program, SIGNER, ed25519.Ed25519PrivateKey.generate())
    assert refused(accelerator, ed_signed).reason == PROGRAM_ALG_MISMATCH


@pytest.mark.parametrize(
    "signature",
    ["not base64!", "AAAA====", " " + "A" * 88, "A" * 300, 12, ["AAAA"]],
)
def test_a_garbled_signature_is_invalid(
    accelerator: Accelerator, signed: dict[str, Any], signature: Any
) -> None:
    assert refused(accelerator, {**signed, "signature": signature}).reason == PROGRAM_SIGNATURE_INVALID


def test_a_signature_with_non_canonical_base64_is_invalid(
    accelerator: Accelerator, signed: dict[str, Any]
) -> None:
    raw = base64.b64decode(signed["signature"])
    assert len(raw) == 64  # Ed25519: 88 characters ending in "==", with 4 unused bits before the padding
    encoded = signed["signature"]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet[alphabet.index(encoded[-3]) ^ 1]  # its low 4 bits are padding
    sloppy = encoded[:-3] + last + "=="  # same bytes, different unused bits
    assert base64.b64decode(sloppy) == raw
    assert refused(accelerator, {**signed, "signature": sloppy}).reason == PROGRAM_SIGNATURE_INVALID


@pytest.mark.parametrize(
    "envelope",
    [
        [],
        "program",
        {"program": {}, "signer": SIGNER, "alg": "Ed25519", "signature": "AA==", "note": "x"},
        {"program": {}, "alg": "Ed25519", "signature": "AA=="},
    ],
)
def test_malformed_envelopes_are_refused(accelerator: Accelerator, envelope: Any) -> None:
    assert refused(accelerator, envelope).reason == PROGRAM_MALFORMED


@pytest.mark.parametrize("document", [None, [], "text", {"a": 1.5}, {"é": 1}, {"a": {1, 2}}])
def test_a_program_that_is_not_canonical_json_is_refused(
    accelerator: Accelerator, signed: dict[str, Any], document: Any
) -> None:
    assert refused(accelerator, {**signed, "program": document}).reason == PROGRAM_MALFORMED


def test_the_wire_form_must_be_canonical(accelerator: Accelerator, signed: dict[str, Any]) -> None:
    pretty = json.dumps(signed, indent=1, sort_keys=True).encode()
    assert refused(accelerator, pretty).reason == PROGRAM_MALFORMED
    wire = encode_signed_program(signed)
    duplicated = wire[:-1] + b',"signer":"' + SIGNER.encode() + b'"}'
    assert refused(accelerator, duplicated).reason == PROGRAM_MALFORMED
    assert refused(accelerator, b"\xff").reason == PROGRAM_MALFORMED
    assert parse_signed_program(wire) == signed


def test_oversized_documents_are_refused_before_their_signature_is_checked(
    accelerator: Accelerator, program: dict[str, Any], ci_key: ed25519.Ed25519PrivateKey
) -> None:
    assert refused(accelerator, b" " * (limits.MAX_SIGNED_PROGRAM_BYTES + 1)).reason == PROGRAM_LIMIT_EXCEEDED
    padding = [{"op": "const_ids", "values": list(range(200)), "out": "padding"}] * 60
    bulky = {**program, "body": padding + program["body"]}
    assert len(canonical_bytes(bulky)) > limits.MAX_PROGRAM_BYTES
    # Signed by the trusted key, and still refused: nobody parses 32 KiB programs.
    assert refused(accelerator, sign_raw(bulky, ci_key)).reason == PROGRAM_LIMIT_EXCEEDED
    deep: Any = 0
    for _ in range(limits.MAX_JSON_DEPTH + 1):
        deep = [deep]
    assert refused(accelerator, {**sign_raw(program, ci_key), "program": {"x": deep}}).reason == (
        PROGRAM_LIMIT_EXCEEDED
    )
    cyclic: dict[str, Any] = {}
    cyclic["self"] = cyclic
    assert (
        refused(accelerator, {**sign_raw(program, ci_key), "program": cyclic}).reason
        == PROGRAM_LIMIT_EXCEEDED
    )


# --- validly signed, and still refused: limits, weights, inputs, outputs ------------------------------


def _loop_program(maximum: int, body: list[dict[str, Any]], count: Any = "n") -> dict[str, Any]:
    return {
        "type": "accelerator-program",
        "version": 1,
        "name": "loops",
        "weights": {"unused": {"dtype": "F32", "shape": [0]}},
        "inputs": {"n": {"kind": "int", "min": 0, "max": 2**40}},
        "body": [
            {"op": "const_ids", "values": [], "out": "ids"},
            {"op": "loop", "count": count, "max": maximum, "body": body},
        ],
        "outputs": {"n_out": "n"},
    }


APPEND = {"op": "append", "ids": "ids", "value": 1, "out": "ids"}


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        (_loop_program(limits.MAX_LOOP_ITERATIONS + 1, [APPEND]), "from 0 to"),
        (
            _loop_program(
                limits.MAX_LOOP_ITERATIONS,
                [{"op": "loop", "count": 10, "max": limits.MAX_LOOP_ITERATIONS, "body": [APPEND]}],
            ),
            "may execute",
        ),
        (
            _loop_program(
                1,
                [
                    {
                        "op": "loop",
                        "count": 1,
                        "max": 1,
                        "body": [{"op": "loop", "count": 1, "max": 1, "body": [APPEND]}],
                    }
                ],
            ),
            "nest",
        ),
        (_loop_program(1, [APPEND] * limits.MAX_INSTRUCTIONS), "instructions"),
        (
            _loop_program(
                1, [{"op": "window", "ids": "ids", "size": limits.MAX_WINDOW + 1, "pad": 0, "out": "w"}]
            ),
            "from 1",
        ),
        (
            _loop_program(
                1, [{"op": "const_ids", "values": [], "out": f"r{i}"} for i in range(limits.MAX_REGISTERS)]
            ),
            "registers",
        ),
    ],
)
def test_statically_excessive_programs_are_refused_before_running(
    accelerator: Accelerator, ci_key: ed25519.Ed25519PrivateKey, document: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ProgramRejected, match=problem) as caught:
        sign_program(document, SIGNER, ci_key)  # the CI side learns it first
    assert caught.value.reason == PROGRAM_LIMIT_EXCEEDED
    rejection = refused(accelerator, sign_raw(document, ci_key), {"n": 1})
    assert rejection.reason == PROGRAM_LIMIT_EXCEEDED


def test_a_loop_count_above_its_max_is_refused(ci_key: ed25519.Ed25519PrivateKey) -> None:
    accelerator = Accelerator({"unused": np.zeros(0, dtype=np.float32)}, {SIGNER: ci_key.public_key()})
    signed = sign_program(_loop_program(5, [APPEND]), SIGNER, ci_key)
    assert accelerator.run(signed, {"n": 5}) == {"n_out": 5}
    executed = accelerator.instructions_executed
    with pytest.raises(ProgramRejected) as caught:
        accelerator.run(signed, {"n": 6})
    assert caught.value.reason == PROGRAM_LIMIT_EXCEEDED
    assert accelerator.instructions_executed == executed + 1  # const_ids ran; the loop did not start


def _single_weight_program(
    weight: str, shape: list[int], body: list[dict[str, Any]], output: str
) -> dict[str, Any]:
    return {
        "type": "accelerator-program",
        "version": 1,
        "name": "probe",
        "weights": {weight: {"dtype": "F32", "shape": shape}},
        "inputs": {},
        "body": body,
        "outputs": {"result": output},
    }


def test_a_value_beyond_the_element_limit_is_refused_before_it_is_computed(
    ci_key: ed25519.Ed25519PrivateKey,
) -> None:
    columns = limits.MAX_TENSOR_ELEMENTS // limits.MAX_WINDOW + 1
    wide = np.zeros((2, columns), dtype=np.float32)
    accelerator = Accelerator({"wide": wide}, {SIGNER: ci_key.public_key()})
    body: list[dict[str, Any]] = [
        {"op": "const_ids", "values": [1], "out": "ids"},
        {"op": "window", "ids": "ids", "size": limits.MAX_WINDOW, "pad": 0, "out": "rows"},
        {"op": "gather", "table": "wide", "ids": "rows", "out": "big"},
        {"op": "reshape", "x": "big", "shape": [-1], "out": "flat"},
        {"op": "argmax", "x": "flat", "out": "index"},
    ]
    signed = sign_program(_single_weight_program("wide", [2, columns], body, "index"), SIGNER, ci_key)
    with pytest.raises(ProgramRejected, match="elements") as caught:
        accelerator.run(signed, {})
    assert caught.value.reason == PROGRAM_LIMIT_EXCEEDED
    assert accelerator.instructions_executed == 2  # const_ids and window; the gather never ran


def test_registers_cannot_together_exceed_the_live_limit(ci_key: ed25519.Ed25519PrivateKey) -> None:
    columns = limits.MAX_TENSOR_ELEMENTS // limits.MAX_WINDOW  # one gather = exactly the per-value limit
    accelerator = Accelerator(
        {"wide": np.ones((2, columns), dtype=np.float32)}, {SIGNER: ci_key.public_key()}
    )
    # The ids (1) and the window (MAX_WINDOW) are live too.
    admitted = (limits.MAX_LIVE_ELEMENTS - 1 - limits.MAX_WINDOW) // limits.MAX_TENSOR_ELEMENTS
    copies = admitted + 1
    body: list[dict[str, Any]] = [
        {"op": "const_ids", "values": [1], "out": "ids"},
        {"op": "window", "ids": "ids", "size": limits.MAX_WINDOW, "pad": 0, "out": "rows"},
        *({"op": "gather", "table": "wide", "ids": "rows", "out": f"copy{i}"} for i in range(copies)),
        {"op": "argmax", "x": "wide", "out": "index"},
    ]
    signed = sign_program(_single_weight_program("wide", [2, columns], body, "index"), SIGNER, ci_key)
    with pytest.raises(ProgramRejected, match="registers would hold") as caught:
        accelerator.run(signed, {})
    assert caught.value.reason == PROGRAM_LIMIT_EXCEEDED
    assert accelerator.instructions_executed == 2 + admitted


def test_a_signed_program_cannot_run_forever(ci_key: ed25519.Ed25519PrivateKey) -> None:
    size = 512
    accelerator = Accelerator(
        {"square": np.full((size, size), 0.001, dtype=np.float32)}, {SIGNER: ci_key.public_key()}
    )
    document = {
        "type": "accelerator-program",
        "version": 1,
        "name": "spin",
        "weights": {"square": {"dtype": "F32", "shape": [size, size]}},
        "inputs": {},
        "body": [
            {"op": "reshape", "x": "square", "shape": [size, size], "out": "x"},
            {
                "op": "loop",
                "count": limits.MAX_LOOP_ITERATIONS,
                "max": limits.MAX_LOOP_ITERATIONS,
                "body": [{"op": "matmul", "a": "x", "b": "square", "out": "x"}],
            },
            {"op": "const_ids", "values": [], "out": "none"},
            {"op": "argmax", "x": "square", "out": "index"},
        ],
        "outputs": {"index": "index"},
    }
    signed = sign_program(document, SIGNER, ci_key)  # statically fine: 2 + 4096 steps
    with pytest.raises(ProgramRejected, match="operations") as caught:
        accelerator.run(signed, {})
    assert caught.value.reason == PROGRAM_LIMIT_EXCEEDED
    matmuls_within_budget = limits.MAX_WORK // size**3
    assert accelerator.instructions_executed == 1 + matmuls_within_budget


def test_weights_the_accelerator_does_not_hold_are_refused(
    accelerator: Accelerator, program: dict[str, Any], ci_key: ed25519.Ed25519PrivateKey
) -> None:
    other_shape = copy.deepcopy(program)
    other_shape["weights"][HIDDEN_WEIGHT]["shape"][0] += 1
    assert refused(accelerator, sign_program(other_shape, SIGNER, ci_key)).reason == PROGRAM_WEIGHTS_MISMATCH
    missing = copy.deepcopy(program)
    missing["weights"]["secret.layer"] = {"dtype": "F32", "shape": [1]}
    assert refused(accelerator, sign_program(missing, SIGNER, ci_key)).reason == PROGRAM_WEIGHTS_MISMATCH


def test_a_weight_of_another_dtype_is_refused(ci_key: ed25519.Ed25519PrivateKey) -> None:
    accelerator = Accelerator({"table": np.zeros(3, dtype=np.float32)}, {SIGNER: ci_key.public_key()})
    document = {
        "type": "accelerator-program",
        "version": 1,
        "name": "as-vocab",
        "weights": {"table": {"dtype": "I32", "shape": [3]}},
        "inputs": {},
        "body": [
            {"op": "const_ids", "values": [], "out": "none"},
            {"op": "decode", "ids": "none", "vocab": "table", "out": "text"},
        ],
        "outputs": {"text": "text"},
    }
    rejection = refused(accelerator, sign_program(document, SIGNER, ci_key), {})
    assert rejection.reason == PROGRAM_WEIGHTS_MISMATCH
    assert "float32[3]" in rejection.message


@pytest.mark.parametrize(
    "inputs",
    [
        {},
        {**INPUTS, "extra": 1},
        {key: value for key, value in INPUTS.items() if key != "seed"},
        {**INPUTS, "prompt": "the " * 200},
        {**INPUTS, "prompt": 7},
        {**INPUTS, "prompt": "THE KEYSERVER"},
        {**INPUTS, "max_new_tokens": 65},
        {**INPUTS, "max_new_tokens": -1},
        {**INPUTS, "max_new_tokens": True},
        {**INPUTS, "max_new_tokens": 4.0},
        {**INPUTS, "temperature_milli": 5001},
        {**INPUTS, "seed": -1},
        {**INPUTS, "seed": "7"},
    ],
)
def test_invalid_inputs_are_refused_before_running(
    accelerator: Accelerator, signed: dict[str, Any], inputs: dict[str, Any]
) -> None:
    rejection = refused(accelerator, signed, inputs)
    assert rejection.reason == PROGRAM_INPUT_INVALID
    assert "THE" not in rejection.message  # no prompt text in error messages


def test_programs_cannot_output_weights_or_tensors(
    accelerator: Accelerator, program: dict[str, Any], ci_key: ed25519.Ed25519PrivateKey
) -> None:
    sources = [*program["weights"], "tokens", "generated", "rng"]
    for source in sources:
        leaky = copy.deepcopy(program)
        leaky["outputs"]["leak"] = source
        with pytest.raises(ProgramRejected, match="text or an int"):
            sign_program(leaky, SIGNER, ci_key)
        rejection = refused(accelerator, sign_raw(leaky, ci_key))
        assert rejection.reason == PROGRAM_MALFORMED
    loop_local = copy.deepcopy(program)
    loop_local["outputs"]["leak"] = "logits"  # a tensor, and defined only inside the loop
    assert refused(accelerator, sign_raw(loop_local, ci_key)).reason == PROGRAM_MALFORMED


@pytest.mark.parametrize(
    ("edit", "problem"),
    [
        (lambda p: p["body"].insert(0, {"op": "tanh", "x": "vocab", "out": "t"}), "holds vocab"),
        (lambda p: p["body"].insert(0, {"op": "tanh", "x": "nowhere", "out": "t"}), "no defined value"),
        (
            lambda p: p["body"].insert(0, {"op": "tanh", "x": EMBEDDING, "out": EMBEDDING}),
            "cannot be written",
        ),
        (lambda p: p["body"].insert(0, {"op": "tanh", "x": EMBEDDING, "out": "prompt"}), "cannot be written"),
        (lambda p: p["body"].insert(4, {"op": "tanh", "x": "logits", "out": "t"}), "no defined value"),
        (lambda p: p["body"].insert(3, {"op": "tanh", "x": EMBEDDING, "out": "tokens"}), "cannot be given"),
        (lambda p: p["body"].insert(0, {"op": "tanh", "x": EMBEDDING}), "exactly the members"),
        (
            lambda p: p["body"].insert(0, {"op": "tanh", "x": EMBEDDING, "out": "t", "y": 1}),
            "exactly the members",
        ),
        (lambda p: p["body"].insert(0, {"op": "exec", "x": EMBEDDING, "out": "t"}), "one of"),
        (
            lambda p: p["body"].insert(0, {"op": "reshape", "x": EMBEDDING, "shape": [-1, -1], "out": "t"}),
            "at most one",
        ),
        (lambda p: p["body"].insert(0, {"op": "rng", "seed": 2**53, "out": "r"}), "is not canonical"),
        (lambda p: p.update(extra=1), "exactly the members"),
        (lambda p: p.update(version=2), "version"),
        (lambda p: p.update(version=True), "version"),
        (lambda p: p.update(type="other"), "type"),
        (lambda p: p.update(name="Bad Name"), "name"),
        (lambda p: p.update(body=[]), "non-empty"),
        (lambda p: p.update(outputs={}), "outputs"),
        (lambda p: p["inputs"].update(prompt={"kind": "bytes", "max_length": 3}), "kind"),
        (lambda p: p["inputs"].update(seed={"kind": "int", "min": 5, "max": 1}), "min <= max"),
        (lambda p: p["inputs"].update(vocab={"kind": "int", "min": 0, "max": 1}), "both"),
        (lambda p: p["weights"][VOCAB].update(shape=[2, 2]), "one dimension"),
        (lambda p: p["weights"][VOCAB].update(dtype=["I32"]), "dtype"),
    ],
)
def test_ill_formed_programs_are_refused_even_when_signed(
    accelerator: Accelerator,
    program: dict[str, Any],
    ci_key: ed25519.Ed25519PrivateKey,
    edit: Callable[[dict[str, Any]], None],
    problem: str,
) -> None:
    document = copy.deepcopy(program)
    edit(document)
    with pytest.raises(ProgramRejected, match=problem) as at_signing:
        sign_program(document, SIGNER, ci_key)
    assert at_signing.value.reason == PROGRAM_MALFORMED
    try:
        signed = sign_raw(document, ci_key)
    except ValueError:  # not even canonical JSON: it cannot be signed
        return
    rejection = refused(accelerator, signed)
    assert rejection.reason == PROGRAM_MALFORMED


RUNTIME_ERRORS: list[tuple[list[dict[str, Any]], str]] = [
    (
        [
            {"op": "const_ids", "values": [3], "out": "ids"},
            {"op": "gather", "table": "table", "ids": "ids", "out": "x"},
        ],
        "outside",
    ),
    ([{"op": "matmul", "a": "table", "b": "table", "out": "x"}], "cannot multiply"),
    ([{"op": "add", "a": "table", "b": "flat", "out": "x"}], "cannot add"),
    ([{"op": "reshape", "x": "table", "shape": [4], "out": "x"}], "cannot take shape"),
    ([{"op": "reshape", "x": "table", "shape": [4, -1], "out": "x"}], "do not fill"),
    ([{"op": "argmax", "x": "table", "out": "i"}], "vector"),
    ([{"op": "rng", "seed": -1, "out": "r"}], "seed"),
    (
        [
            {"op": "rng", "seed": 1, "out": "r"},
            {"op": "sample", "logits": "flat", "temperature_milli": -1, "rng": "r", "out": "i"},
        ],
        "temperature_milli",
    ),
    (
        [
            {"op": "const_ids", "values": [], "out": "ids"},
            {"op": "append", "ids": "ids", "value": -1, "out": "ids"},
        ],
        "ids are",
    ),
]


@pytest.mark.parametrize(("instructions", "problem"), RUNTIME_ERRORS)
def test_runtime_errors_in_a_signed_program_are_refusals(
    ci_key: ed25519.Ed25519PrivateKey, instructions: list[dict[str, Any]], problem: str
) -> None:
    accelerator = Accelerator({"table": np.zeros((3, 2), dtype=np.float32)}, {SIGNER: ci_key.public_key()})
    body = [
        {"op": "reshape", "x": "table", "shape": [-1], "out": "flat"},
        *instructions,
        {"op": "argmax", "x": "flat", "out": "result"},  # fine, if it were reached
    ]
    signed = sign_program(_single_weight_program("table", [3, 2], body, "result"), SIGNER, ci_key)
    with pytest.raises(ProgramRejected, match=problem) as caught:
        accelerator.run(signed, {})
    assert caught.value.reason == PROGRAM_RUNTIME_ERROR
    assert accelerator.instructions_executed == len(instructions)  # the reshape and those before the failure


def test_the_accelerator_refuses_untrustworthy_configuration(weights: dict[str, Tensor]) -> None:
    with pytest.raises(ValueError, match="at least one"):
        Accelerator(weights, {})
    with pytest.raises(ValueError, match="P-256/P-384"):
        Accelerator(weights, {SIGNER: ec.generate_private_key(ec.SECP521R1()).public_key()})
    rsa_key: Any = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    with pytest.raises(ValueError, match="P-256/P-384"):
        Accelerator(weights, {SIGNER: rsa_key})
    with pytest.raises(ValueError, match="signer name"):
        Accelerator(weights, {"Not A Name": ed25519.Ed25519PrivateKey.generate().public_key()})
    with pytest.raises(ValueError, match="float32 and int32"):
        Accelerator({"x": np.zeros(2)}, {SIGNER: ed25519.Ed25519PrivateKey.generate().public_key()})


def test_signing_refuses_bad_signer_names_and_keys(program: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="signer name"):
        sign_program(program, "CI Pipeline", ed25519.Ed25519PrivateKey.generate())
    with pytest.raises(ValueError, match="P-256/P-384"):
        sign_program(program, SIGNER, ec.generate_private_key(ec.SECP521R1()))


def test_parse_program_accepts_the_generation_program(program: dict[str, Any]) -> None:
    parsed = parse_program(program)
    assert [instruction.op for instruction in parsed.body] == ["encode", "const_ids", "rng", "loop", "decode"]


# --- hypothesis: the parser behind a valid signature --------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53) + 1, 2**53 - 1) | st.text(max_size=12),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(alphabet=st.characters(codec="ascii"), max_size=10), children, max_size=4)
    ),
    max_leaves=16,
)
PROGRAM_WORDS = "op out body loop max count x a b ids tokens logits embedding vocab prompt seed rng text int"
program_words = st.sampled_from(
    [*PROGRAM_WORDS.split(), "F32", "I32", "kind", "shape", "dtype", "max_length"]
)
mutant_values = json_values | program_words | st.integers(-2, 5000)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found.extend(_paths(item, (*prefix, key)))
    elif isinstance(value, list):
        for position, item in enumerate(value):
            found.extend(_paths(item, (*prefix, position)))
    return found


def _mutate(document: dict[str, Any], path: tuple[Any, ...], action: str, value: Any) -> dict[str, Any]:
    mutated = copy.deepcopy(document)
    if not path:
        return mutated
    parent = mutated
    for step in path[:-1]:
        parent = parent[step]
    last = path[-1]
    if action == "replace":
        parent[last] = value
    elif action == "delete":
        del parent[last]
    elif isinstance(parent, dict) and isinstance(value, str) and value.isascii():
        parent[value] = copy.deepcopy(parent[last])  # add a member (or overwrite one) with a copied value
    elif isinstance(parent, list):
        parent.insert(last, copy.deepcopy(parent[last]))
    return mutated


def _run_signed(
    accelerator: Accelerator, document: Any, key: ed25519.Ed25519PrivateKey, inputs: dict[str, Any]
) -> None:
    """The contract: a ProgramRejected with a known reason, or outputs that are text and integers."""
    try:
        outputs = accelerator.run(sign_raw(document, key), inputs)
    except ProgramRejected as exc:
        outputs = {"reason": exc.reason}
        rejected = True
    else:
        rejected = False
    assert all(isinstance(value, str | int) for value in outputs.values())
    assert not rejected or outputs["reason"] in REASONS


@settings(max_examples=300)
@given(data=st.data())
def test_mutated_signed_programs_are_refused_or_run_within_bounds(
    weights: dict[str, Tensor],
    program: dict[str, Any],
    ci_key: ed25519.Ed25519PrivateKey,
    data: st.DataObject,
) -> None:
    accelerator = Accelerator(weights, {SIGNER: ci_key.public_key()})
    paths = _paths(program)
    path = data.draw(st.sampled_from(paths))
    action = data.draw(st.sampled_from(["replace", "delete", "duplicate"]))
    mutated = _mutate(program, path, action, data.draw(mutant_values))
    _run_signed(accelerator, mutated, ci_key, {**INPUTS, "max_new_tokens": 3})


@settings(max_examples=200)
@given(document=json_values)
def test_arbitrary_signed_documents_are_refused_cleanly(
    weights: dict[str, Tensor], ci_key: ed25519.Ed25519PrivateKey, document: Any
) -> None:
    accelerator = Accelerator(weights, {SIGNER: ci_key.public_key()})
    if isinstance(document, dict):
        _run_signed(accelerator, document, ci_key, INPUTS)
    else:
        assert refused(accelerator, {**sign_raw({}, ci_key), "program": document}).reason == PROGRAM_MALFORMED


@settings(max_examples=200)
@given(envelope=st.dictionaries(st.sampled_from(["program", "signer", "alg", "signature", "x"]), json_values))
def test_arbitrary_envelopes_never_verify(
    ci_key: ed25519.Ed25519PrivateKey, envelope: dict[str, Any]
) -> None:
    with pytest.raises(ProgramRejected) as caught:
        verify_program(envelope, {SIGNER: ci_key.public_key()})
    assert caught.value.reason in SIGNATURE_REASONS


@given(st.binary(max_size=200))
def test_arbitrary_bytes_are_refused_as_signed_programs(data: bytes) -> None:
    reason = PROGRAM_MALFORMED
    try:
        parse_signed_program(data)
    except ProgramRejected as exc:
        reason = exc.reason
    assert reason == PROGRAM_MALFORMED


def test_rejections_name_known_reasons_only() -> None:
    with pytest.raises(ValueError, match="unknown rejection reason"):
        ProgramRejected("program-oops", "no")
    rejection = ProgramRejected(PROGRAM_MALFORMED, "the program is a JSON object")
    assert str(rejection) == "program-malformed: the program is a JSON object"
