"""Signed accelerator programs: the envelope, its verification, and the program format.

A signed program is::

    {"alg": "Ed25519" | "ES256" | "ES384", "program": {...}, "signature": "<base64>", "signer": "<name>"}

with the signature over ``audit.entry.canonical_bytes(program)``. ``verify_program`` checks, in this
order, before it reads a single instruction: the envelope's members, the signer (trusted?), the
algorithm (the signer key's own?), the program's size and canonical encoding, the signature. Only then
is the program parsed — from the exact bytes that were signed — and statically checked: every operand
defined and of the right kind, every limit of ``limits.py`` that can be known before running.

The program (see docs/accelerator.md for the instruction set)::

    {"type": "accelerator-program", "version": 1, "name": "...",
     "weights": {"<tensor>": {"dtype": "F32" | "I32", "shape": [...]}, ...},
     "inputs": {"<name>": {"kind": "text", "max_length": N} | {"kind": "int", "min": A, "max": B}, ...},
     "body": [{"op": "...", ...}, ...],
     "outputs": {"<name>": "<register holding text or an int>", ...}}
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, TypeAlias

from audit.entry import EntryError, canonical_bytes, decode_entry
from clients.accelerator import limits
from clients.accelerator.errors import (
    PROGRAM_ALG_MISMATCH,
    PROGRAM_LIMIT_EXCEEDED,
    PROGRAM_MALFORMED,
    PROGRAM_SIGNATURE_INVALID,
    PROGRAM_SIGNER_UNKNOWN,
    PROGRAM_UNSIGNED,
    ProgramRejected,
)
from clients.accelerator.signatures import (
    ALGORITHMS,
    SignerPublicKey,
    algorithm_of,
    signature_is_valid,
)

PROGRAM_TYPE: Final = "accelerator-program"
PROGRAM_VERSION: Final = 1
PROGRAM_MEMBERS: Final = frozenset({"type", "version", "name", "weights", "inputs", "body", "outputs"})
ENVELOPE_MEMBERS: Final = frozenset({"alg", "program", "signature", "signer"})
# Program and signer names: the keyserver's naming rule for CI signers and reference values.
NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9._-]{0,99}\Z")
# Weights, inputs, registers and outputs: the tensor archive's naming rule.
VALUE_NAME_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,31}(\.[a-z][a-z0-9_]{0,31}){0,3}\Z")
MAX_SIGNATURE_CHARS: Final = 256

# The kinds of value a name can hold. Weights are "tensor" (F32) or "vocab" (I32, one dimension).
TENSOR: Final = "tensor"
VOCAB: Final = "vocab"
IDS: Final = "ids"
INT: Final = "int"
TEXT: Final = "text"
RNG: Final = "rng"
OUTPUT_KINDS: Final = frozenset({TEXT, INT})
WEIGHT_KINDS: Final[Mapping[str, str]] = {"F32": TENSOR, "I32": VOCAB}

# Literal parameters, checked when parsing: how each is spelled and bounded.
WINDOW_SIZE: Final = "window-size"
ID: Final = "id"
ID_LIST: Final = "id-list"
SHAPE: Final = "shape"
LOOP_MAX: Final = "loop-max"

Operand: TypeAlias = str | int  # a name, or (for int operands only) an integer literal
Parameter: TypeAlias = int | tuple[int, ...]


@dataclass(frozen=True)
class OpSpec:
    operands: Mapping[str, str]  # member -> the kind of value it names
    parameters: Mapping[str, str] = field(default_factory=dict)  # member -> literal parameter type
    result: str | None = None  # the kind written to "out"; None: no "out" member
    has_body: bool = False


OPS: Final[Mapping[str, OpSpec]] = {
    "encode": OpSpec({"text": TEXT, "vocab": VOCAB}, result=IDS),
    "decode": OpSpec({"ids": IDS, "vocab": VOCAB}, result=TEXT),
    "const_ids": OpSpec({}, {"values": ID_LIST}, result=IDS),
    "window": OpSpec({"ids": IDS}, {"size": WINDOW_SIZE, "pad": ID}, result=IDS),
    "append": OpSpec({"ids": IDS, "value": INT}, result=IDS),
    "gather": OpSpec({"table": TENSOR, "ids": IDS}, result=TENSOR),
    "reshape": OpSpec({"x": TENSOR}, {"shape": SHAPE}, result=TENSOR),
    "matmul": OpSpec({"a": TENSOR, "b": TENSOR}, result=TENSOR),
    "add": OpSpec({"a": TENSOR, "b": TENSOR}, result=TENSOR),
    "tanh": OpSpec({"x": TENSOR}, result=TENSOR),
    "softmax": OpSpec({"x": TENSOR}, result=TENSOR),
    "argmax": OpSpec({"x": TENSOR}, result=INT),
    "rng": OpSpec({"seed": INT}, result=RNG),
    "sample": OpSpec({"logits": TENSOR, "temperature_milli": INT, "rng": RNG}, result=INT),
    "loop": OpSpec({"count": INT}, {"max": LOOP_MAX}, has_body=True),
}


@dataclass(frozen=True)
class WeightSpec:
    dtype: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class TextInput:
    max_length: int


@dataclass(frozen=True)
class IntInput:
    minimum: int
    maximum: int


InputSpec: TypeAlias = TextInput | IntInput


@dataclass(frozen=True)
class Instruction:
    op: str
    operands: Mapping[str, Operand]
    parameters: Mapping[str, Parameter]
    out: str | None
    body: tuple[Instruction, ...]
    path: str  # where it is in the program ("body[3].body[0]"), for messages


@dataclass(frozen=True)
class Program:
    name: str
    weights: Mapping[str, WeightSpec]
    inputs: Mapping[str, InputSpec]
    body: tuple[Instruction, ...]
    outputs: Mapping[str, str]
    digest: str  # SHA-256 (hex) of the program's canonical bytes: what the signer signed
    worst_case_steps: int
    model: str | None = None  # optional member "model": the SHA-256 (hex) of the only model it may run on


# --- signing and verifying ---------------------------------------------------------------------------


def parse_signed_program(data: bytes) -> dict[str, Any]:
    """The envelope in ``data``, which must be its canonical bytes (any other spelling is refused)."""
    if len(data) > limits.MAX_SIGNED_PROGRAM_BYTES:
        raise ProgramRejected(
            PROGRAM_LIMIT_EXCEEDED,
            f"a signed program is at most {limits.MAX_SIGNED_PROGRAM_BYTES} bytes; this one is {len(data)}",
        )
    try:
        return decode_entry(data)
    except (ValueError, RecursionError):
        raise ProgramRejected(
            PROGRAM_MALFORMED,
            "a signed program is one JSON object in canonical form (UTF-8, sorted keys, no whitespace, "
            "no floats, no duplicate members)",
        ) from None


def verify_program(signed: Mapping[str, Any], trusted_signers: Mapping[str, SignerPublicKey]) -> Program:
    """The program in ``signed`` if a trusted signer signed it and it is well formed; ProgramRejected
    otherwise. Nothing in the program is interpreted before its signature has been verified."""
    if not isinstance(signed, Mapping):
        raise ProgramRejected(PROGRAM_MALFORMED, "a signed program is a JSON object")
    if signed.get("signature") in (None, ""):
        raise ProgramRejected(
            PROGRAM_UNSIGNED, "the program is not signed: only programs signed by a trusted CI signer run"
        )
    if set(signed) != ENVELOPE_MEMBERS:
        raise ProgramRejected(
            PROGRAM_MALFORMED,
            f"a signed program has exactly the members {', '.join(sorted(ENVELOPE_MEMBERS))}",
        )
    signer, alg, encoded_signature = signed["signer"], signed["alg"], signed["signature"]
    if not isinstance(signer, str) or signer not in trusted_signers:
        raise ProgramRejected(
            PROGRAM_SIGNER_UNKNOWN, "the program's signer is not one of this accelerator's trusted CI signers"
        )
    public_key = trusted_signers[signer]
    expected_alg = algorithm_of(public_key)
    if alg != expected_alg:
        shown = alg if isinstance(alg, str) and alg in ALGORITHMS else "an unsupported algorithm"
        raise ProgramRejected(
            PROGRAM_ALG_MISMATCH, f"signer {signer!r} signs with {expected_alg}; the envelope says {shown}"
        )
    message = _program_bytes(signed["program"])
    signature = _decode_signature(encoded_signature)
    if not signature_is_valid(public_key, message, signature):
        raise ProgramRejected(
            PROGRAM_SIGNATURE_INVALID,
            f"the signature does not verify with signer {signer!r}'s key over the program's canonical bytes",
        )
    # Parse the bytes that were verified, not the caller's object: what runs is exactly what was signed.
    return parse_program(json.loads(message))


def _program_bytes(program: Any) -> bytes:
    if not isinstance(program, Mapping):
        raise ProgramRejected(PROGRAM_MALFORMED, "the program is a JSON object")
    _check_bounds(program)
    try:
        message = canonical_bytes(dict(program))
    except EntryError as exc:
        raise ProgramRejected(PROGRAM_MALFORMED, f"the program is not canonical JSON: {exc}") from None
    if len(message) > limits.MAX_PROGRAM_BYTES:
        raise ProgramRejected(
            PROGRAM_LIMIT_EXCEEDED,
            f"a program is at most {limits.MAX_PROGRAM_BYTES} bytes (canonical); this one is {len(message)}",
        )
    return message


def _check_bounds(document: Mapping[str, Any]) -> None:
    """Depth, node count and string volume, before the document is serialised: bounded work even for
    an in-process caller that passes an enormous or cyclic structure."""
    stack: list[tuple[Any, int]] = [(document, 1)]
    nodes = characters = 0
    while stack:
        value, depth = stack.pop()
        nodes += 1
        if depth > limits.MAX_JSON_DEPTH or nodes > limits.MAX_JSON_NODES:
            raise ProgramRejected(
                PROGRAM_LIMIT_EXCEEDED,
                f"a program nests at most {limits.MAX_JSON_DEPTH} deep and has at most "
                f"{limits.MAX_JSON_NODES} JSON values",
            )
        if isinstance(value, str):
            characters += len(value)
        elif isinstance(value, Mapping):
            characters += sum(len(key) for key in value if isinstance(key, str))
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list | tuple):
            stack.extend((item, depth + 1) for item in value)
        if characters > limits.MAX_PROGRAM_BYTES:
            raise ProgramRejected(
                PROGRAM_LIMIT_EXCEEDED, f"a program is at most {limits.MAX_PROGRAM_BYTES} bytes (canonical)"
            )


def _decode_signature(encoded: Any) -> bytes:
    if isinstance(encoded, str) and len(encoded) <= MAX_SIGNATURE_CHARS:
        try:
            raw = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            pass
        else:
            # One spelling per signature: padding bits and padding characters must be canonical.
            if base64.b64encode(raw).decode("ascii") == encoded:
                return raw
    raise ProgramRejected(PROGRAM_SIGNATURE_INVALID, "the signature is not standard base64 of a signature")


# --- the program -------------------------------------------------------------------------------------


def parse_program(document: Any) -> Program:
    """The program in a (verified) document, statically checked. ``verify_program`` is the way in for
    anything that did not come from this process; this is public for CI-side checks and tests."""
    if not isinstance(document, dict):
        raise _malformed("the program is a JSON object")
    message = _program_bytes(document)
    _expect_members(document, PROGRAM_MEMBERS | ({"model"} & set(document)), "the program")
    model = document.get("model")
    if model is not None and (not isinstance(model, str) or not re.fullmatch(r"[0-9a-f]{64}", model)):
        raise _malformed('the program\'s "model" is the SHA-256 of a tensor archive, in lowercase hex')
    if document["type"] != PROGRAM_TYPE:
        raise _malformed(f'the program\'s "type" must be {PROGRAM_TYPE!r}')
    if document["version"] != PROGRAM_VERSION or isinstance(document["version"], bool):
        raise _malformed(f"program version {document['version']!r} is not supported (use {PROGRAM_VERSION})")
    name = document["name"]
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise _malformed("the program's name is 1-100 of a-z 0-9 . _ - starting with a letter or digit")
    weights = _parse_weights(document["weights"])
    inputs = _parse_inputs(document["inputs"])
    shared = sorted(set(weights) & set(inputs))
    if shared:
        raise _malformed(f"{shared[0]!r} is declared both as a weight and as an input")
    checker = _Checker(weights, inputs)
    body = checker.block(document["body"], "body", depth=0)
    outputs = _parse_outputs(document["outputs"], checker.kinds)
    steps = _worst_case_steps(body)
    if steps > limits.MAX_STEPS:
        raise ProgramRejected(
            PROGRAM_LIMIT_EXCEEDED,
            f"the program may execute {steps} instructions (loops at their max); "
            f"the limit is {limits.MAX_STEPS}",
        )
    return Program(name, weights, inputs, body, outputs, hashlib.sha256(message).hexdigest(), steps, model)


def _parse_weights(value: Any) -> dict[str, WeightSpec]:
    if not isinstance(value, dict) or not 1 <= len(value) <= limits.MAX_WEIGHTS:
        raise _malformed(f'"weights" is an object declaring 1 to {limits.MAX_WEIGHTS} tensors')
    weights: dict[str, WeightSpec] = {}
    for name, spec in value.items():
        _check_value_name(name, "weight")
        where = f"weight {name!r}"
        if not isinstance(spec, dict):
            raise _malformed(f"{where} is declared by an object")
        _expect_members(spec, frozenset({"dtype", "shape"}), where)
        dtype, shape = spec["dtype"], spec["shape"]
        if not isinstance(dtype, str) or dtype not in WEIGHT_KINDS:
            raise _malformed(f"{where}: dtype is F32 or I32")
        if (
            not isinstance(shape, list)
            or not 1 <= len(shape) <= limits.MAX_RANK
            or not all(_is_int(dim) and 0 <= dim <= limits.MAX_SAFE_INTEGER for dim in shape)
        ):
            raise _malformed(f"{where}: shape is a list of 1 to {limits.MAX_RANK} non-negative integers")
        if dtype == "I32" and len(shape) != 1:
            raise _malformed(f"{where}: an I32 weight is a vocabulary and has one dimension")
        weights[name] = WeightSpec(dtype, tuple(shape))
    return weights


def _parse_inputs(value: Any) -> dict[str, InputSpec]:
    if not isinstance(value, dict) or len(value) > limits.MAX_INPUTS:
        raise _malformed(f'"inputs" is an object declaring at most {limits.MAX_INPUTS} inputs')
    inputs: dict[str, InputSpec] = {}
    for name, spec in value.items():
        _check_value_name(name, "input")
        where = f"input {name!r}"
        if not isinstance(spec, dict):
            raise _malformed(f"{where} is declared by an object")
        kind = spec.get("kind")
        if kind == TEXT:
            _expect_members(spec, frozenset({"kind", "max_length"}), where)
            max_length = spec["max_length"]
            if not _is_int(max_length) or not 0 <= max_length <= limits.MAX_TEXT_CHARS:
                raise ProgramRejected(
                    PROGRAM_LIMIT_EXCEEDED,
                    f"{where}: max_length is an integer from 0 to {limits.MAX_TEXT_CHARS}",
                )
            inputs[name] = TextInput(max_length)
        elif kind == INT:
            _expect_members(spec, frozenset({"kind", "min", "max"}), where)
            minimum, maximum = spec["min"], spec["max"]
            if not _is_int(minimum) or not _is_int(maximum) or minimum > maximum:
                raise _malformed(f"{where}: min and max are integers with min <= max")
            inputs[name] = IntInput(minimum, maximum)
        else:
            raise _malformed(f'{where}: "kind" is "text" or "int"')
    return inputs


def _parse_outputs(value: Any, kinds: Mapping[str, str]) -> dict[str, str]:
    if not isinstance(value, dict) or not 1 <= len(value) <= limits.MAX_OUTPUTS:
        raise _malformed(f'"outputs" is an object naming 1 to {limits.MAX_OUTPUTS} outputs')
    outputs: dict[str, str] = {}
    for name, source in value.items():
        _check_value_name(name, "output")
        if not isinstance(source, str) or kinds.get(source) not in OUTPUT_KINDS:
            # The one gate between the accelerator's memory and the caller: only text and integers
            # leave it, never a tensor, an id sequence, a weight or a generator.
            raise _malformed(f"output {name!r} must name a register that holds text or an int")
        outputs[name] = source
    return outputs


class _Checker:
    """Parses instructions and checks, before anything runs, that every operand names a defined value
    of the kind its op needs, and that each register keeps one kind."""

    def __init__(self, weights: Mapping[str, WeightSpec], inputs: Mapping[str, InputSpec]) -> None:
        self.constants: dict[str, str] = {name: WEIGHT_KINDS[spec.dtype] for name, spec in weights.items()}
        self.constants.update(
            {name: TEXT if isinstance(spec, TextInput) else INT for name, spec in inputs.items()}
        )
        self.kinds: dict[str, str] = dict(self.constants)
        self.registers: set[str] = set()
        self.instructions = 0

    def block(self, value: Any, path: str, depth: int) -> tuple[Instruction, ...]:
        if not isinstance(value, list) or not value:
            raise _malformed(f"{path} is a non-empty list of instructions")
        return tuple(
            self.instruction(item, f"{path}[{position}]", depth) for position, item in enumerate(value)
        )

    def instruction(self, value: Any, path: str, depth: int) -> Instruction:
        self.instructions += 1
        if self.instructions > limits.MAX_INSTRUCTIONS:
            raise ProgramRejected(
                PROGRAM_LIMIT_EXCEEDED, f"a program has at most {limits.MAX_INSTRUCTIONS} instructions"
            )
        if not isinstance(value, dict) or not isinstance(value.get("op"), str) or value["op"] not in OPS:
            raise _malformed(f'{path} is an object whose "op" is one of {", ".join(sorted(OPS))}')
        op = value["op"]
        spec = OPS[op]
        members = {"op", *spec.operands, *spec.parameters}
        members |= {"out"} if spec.result is not None else set()
        members |= {"body"} if spec.has_body else set()
        _expect_members(value, frozenset(members), f"{path} ({op})")
        operands = {
            member: self.operand(value[member], kind, f"{path}.{member}")
            for member, kind in spec.operands.items()
        }
        parameters = {
            member: _parameter(value[member], kind, f"{path}.{member}")
            for member, kind in spec.parameters.items()
        }
        body: tuple[Instruction, ...] = ()
        if spec.has_body:
            if depth + 1 > limits.MAX_LOOP_DEPTH:
                raise ProgramRejected(
                    PROGRAM_LIMIT_EXCEEDED, f"{path}: loops nest at most {limits.MAX_LOOP_DEPTH} deep"
                )
            # Names first assigned inside a loop may never be assigned (zero iterations): they do not
            # exist after it. Names assigned before the loop keep their kind, so they remain valid.
            outer = dict(self.kinds)
            body = self.block(value["body"], f"{path}.body", depth + 1)
            self.kinds = outer
        out = None
        if spec.result is not None:
            out = self.assign(value["out"], spec.result, f"{path}.out")
        return Instruction(op, operands, parameters, out, body, path)

    def operand(self, value: Any, kind: str, path: str) -> Operand:
        if kind == INT and _is_int(value):
            if abs(value) > limits.MAX_SAFE_INTEGER:
                raise _malformed(f"{path}: integer literals are within ±(2**53 - 1)")
            return int(value)
        if not isinstance(value, str) or value not in self.kinds:
            raise _malformed(f"{path} names no defined value")
        if self.kinds[value] != kind:
            raise _malformed(f"{path}: {value!r} holds {self.kinds[value]}, and this operand needs {kind}")
        return value

    def assign(self, name: Any, kind: str, path: str) -> str:
        if not isinstance(name, str):
            raise _malformed(f"{path} is a register name")
        _check_value_name(name, "register")
        if name in self.constants:
            raise _malformed(f"{path}: {name!r} is a weight or an input, which cannot be written")
        if self.kinds.get(name, kind) != kind:
            raise _malformed(f"{path}: register {name!r} holds {self.kinds[name]} and cannot be given {kind}")
        self.registers.add(name)
        if len(self.registers) > limits.MAX_REGISTERS:
            raise ProgramRejected(
                PROGRAM_LIMIT_EXCEEDED, f"a program uses at most {limits.MAX_REGISTERS} registers"
            )
        self.kinds[name] = kind
        return name


def _parameter(value: Any, kind: str, path: str) -> Parameter:
    if kind == ID_LIST:
        if not isinstance(value, list) or len(value) > limits.MAX_CONSTANT_IDS:
            raise _malformed(f"{path} is a list of at most {limits.MAX_CONSTANT_IDS} ids")
        return tuple(_bounded_int(item, 0, limits.MAX_ID, path) for item in value)
    if kind == SHAPE:
        if not isinstance(value, list) or not 1 <= len(value) <= limits.MAX_RANK:
            raise _malformed(f"{path} is a list of 1 to {limits.MAX_RANK} dimensions")
        dims = tuple(_bounded_int(item, -1, limits.MAX_TENSOR_ELEMENTS, path) for item in value)
        if dims.count(-1) > 1 or 0 in dims:
            raise _malformed(f"{path}: dimensions are positive, and at most one is -1 (inferred)")
        return dims
    if kind == WINDOW_SIZE:
        return _bounded_int(value, 1, limits.MAX_WINDOW, path, limit=True)
    if kind == LOOP_MAX:
        return _bounded_int(value, 0, limits.MAX_LOOP_ITERATIONS, path, limit=True)
    return _bounded_int(value, 0, limits.MAX_ID, path)


def _bounded_int(value: Any, low: int, high: int, path: str, *, limit: bool = False) -> int:
    if not _is_int(value):
        raise _malformed(f"{path} is an integer")
    if not low <= value <= high:
        reason = PROGRAM_LIMIT_EXCEEDED if limit and value > high else PROGRAM_MALFORMED
        raise ProgramRejected(reason, f"{path} is an integer from {low} to {high}")
    return int(value)


def _worst_case_steps(body: Sequence[Instruction]) -> int:
    steps = 0
    for instruction in body:
        steps += 1
        if instruction.op == "loop":
            maximum = instruction.parameters["max"]
            assert isinstance(maximum, int)
            steps += maximum * _worst_case_steps(instruction.body)
    return steps


def _expect_members(value: dict[str, Any], expected: frozenset[str], where: str) -> None:
    if set(value) != expected:
        unknown = sorted(set(value) - expected)
        missing = sorted(expected - set(value))
        detail = f"unknown {unknown}" if unknown else f"missing {missing}"
        raise _malformed(f"{where} has exactly the members {', '.join(sorted(expected))} ({detail})")


def _check_value_name(name: Any, what: str) -> None:
    if not isinstance(name, str) or not VALUE_NAME_RE.match(name):
        shown = repr(name)[:40]
        raise _malformed(
            f"{what} name {shown} is not valid: dot-separated parts of a-z 0-9 _, each starting with a letter"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _malformed(message: str) -> ProgramRejected:
    return ProgramRejected(PROGRAM_MALFORMED, message)
