"""The interpreter: runs a verified program over the weights and the caller's inputs, within hard limits.

Before anything runs, the weights the program declares are bound (each must exist with the declared
dtype and shape) and the inputs checked against their declarations. Before every instruction the
interpreter computes the shape of its result and the work it costs and refuses, before computing, what
would exceed ``limits.py``: elements of one value, elements held by all registers, total work, id and
text lengths, loop iterations. Weights are never written (the accelerator holds them read-only, and no
op works in place). Only the declared outputs leave, and the parser allows only text and integers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, Final, TypeAlias, cast

import numpy as np
import numpy.typing as npt

from clients.accelerator import limits
from clients.accelerator.errors import (
    PROGRAM_INPUT_INVALID,
    PROGRAM_LIMIT_EXCEEDED,
    PROGRAM_RUNTIME_ERROR,
    PROGRAM_WEIGHTS_MISMATCH,
    ProgramRejected,
)
from clients.accelerator.program import Instruction, IntInput, Operand, Program, TextInput
from clients.model.sampling import new_generator, sample_index

FloatArray: TypeAlias = npt.NDArray[np.float32]
IdArray: TypeAlias = npt.NDArray[np.int64]
VocabArray: TypeAlias = npt.NDArray[np.int32]
Value: TypeAlias = FloatArray | IdArray | VocabArray | int | str | np.random.Generator
Output: TypeAlias = str | int

_DTYPES: Final = {"F32": np.dtype(np.float32), "I32": np.dtype(np.int32)}
# The sampler divides by temperature_milli / 1000; beyond 1000x the distribution is uniform anyway.
MAX_TEMPERATURE_MILLI: Final = 1_000_000


class Interpreter:
    """One run of one program. ``executed`` counts the instructions that completed: a run refused
    before its first instruction leaves it at 0."""

    def __init__(
        self, program: Program, weights: Mapping[str, npt.NDArray[Any]], inputs: Mapping[str, Any]
    ) -> None:
        self.program = program
        self.executed = 0
        self.work = 0
        self._values: dict[str, Value] = {}
        self._live: dict[str, int] = {}  # register -> elements it holds (weights and inputs excluded)
        self._vocabularies: dict[str, dict[str, int]] = {}
        self._bind_weights(weights)
        self._bind_inputs(inputs)

    def run(self) -> dict[str, Output]:
        # Overflow to inf/nan is not an error in itself; sample and argmax refuse non-finite values.
        with np.errstate(all="ignore"):
            self._block(self.program.body)
        outputs: dict[str, Output] = {}
        for name, register in self.program.outputs.items():
            value = self._values[register]
            if isinstance(value, str | int):
                outputs[name] = value
            else:  # the parser admits only text and int outputs; fail closed all the same
                raise ProgramRejected(PROGRAM_RUNTIME_ERROR, f"output {name!r} is neither text nor an int")
        return outputs

    # --- binding ---------------------------------------------------------------------------------------

    def _bind_weights(self, weights: Mapping[str, npt.NDArray[Any]]) -> None:
        for name, spec in self.program.weights.items():
            array = weights.get(name)
            if array is None:
                raise ProgramRejected(
                    PROGRAM_WEIGHTS_MISMATCH, f"the program needs weight {name!r}, which is not loaded"
                )
            if array.dtype != _DTYPES[spec.dtype] or array.shape != spec.shape:
                raise ProgramRejected(
                    PROGRAM_WEIGHTS_MISMATCH,
                    f"weight {name!r} is {array.dtype}{list(array.shape)}; the program declares "
                    f"{spec.dtype}{list(spec.shape)}",
                )
            self._values[name] = array

    def _bind_inputs(self, inputs: Mapping[str, Any]) -> None:
        if not isinstance(inputs, Mapping) or set(inputs) != set(self.program.inputs):
            raise ProgramRejected(
                PROGRAM_INPUT_INVALID,
                f"the program takes exactly the inputs {', '.join(sorted(self.program.inputs)) or '(none)'}",
            )
        for name, spec in self.program.inputs.items():
            value = inputs[name]
            if isinstance(spec, TextInput):
                if not isinstance(value, str) or len(value) > spec.max_length:
                    raise ProgramRejected(
                        PROGRAM_INPUT_INVALID,
                        f"input {name!r} is text of at most {spec.max_length} characters",
                    )
            elif not _is_int(value) or not spec.minimum <= value <= spec.maximum:
                assert isinstance(spec, IntInput)
                raise ProgramRejected(
                    PROGRAM_INPUT_INVALID,
                    f"input {name!r} is an integer from {spec.minimum} to {spec.maximum}",
                )
            self._values[name] = value

    # --- execution -------------------------------------------------------------------------------------

    def _block(self, body: tuple[Instruction, ...]) -> None:
        for instruction in body:
            if self.executed >= limits.MAX_STEPS:
                raise ProgramRejected(
                    PROGRAM_LIMIT_EXCEEDED, f"a run executes at most {limits.MAX_STEPS} instructions"
                )
            if instruction.op == "loop":
                self._loop(instruction)
            else:
                try:
                    value = _OPS[instruction.op](self, instruction)
                except ProgramRejected:
                    raise
                except (ValueError, ArithmeticError, LookupError, MemoryError) as exc:
                    # The pre-checks should leave nothing for numpy to refuse; if it does, say where,
                    # without values.
                    raise self._failed(instruction, f"it failed ({type(exc).__name__})") from None
                assert instruction.out is not None
                self._store(instruction.out, value)
            self.executed += 1

    def _loop(self, instruction: Instruction) -> None:
        count = self._int(instruction.operands["count"])
        maximum = instruction.parameters["max"]
        assert isinstance(maximum, int)
        if count < 0:
            raise self._failed(instruction, "the iteration count is negative")
        if count > maximum:
            raise ProgramRejected(
                PROGRAM_LIMIT_EXCEEDED,
                f"{instruction.path}: {count} iterations; the loop allows at most {maximum}",
            )
        for _ in range(count):
            self._block(instruction.body)

    def _admit(self, instruction: Instruction, elements: int, work: int) -> None:
        """Refuses, before it is computed, a result or a cost beyond the limits."""
        if elements > limits.MAX_TENSOR_ELEMENTS:
            raise ProgramRejected(
                PROGRAM_LIMIT_EXCEEDED,
                f"{instruction.path} ({instruction.op}) would make {elements} elements; "
                f"a value holds at most {limits.MAX_TENSOR_ELEMENTS}",
            )
        assert instruction.out is not None
        live = sum(self._live.values()) - self._live.get(instruction.out, 0) + elements
        if live > limits.MAX_LIVE_ELEMENTS:
            raise ProgramRejected(
                PROGRAM_LIMIT_EXCEEDED,
                f"{instruction.path} ({instruction.op}): registers would hold {live} elements; "
                f"the limit is {limits.MAX_LIVE_ELEMENTS}",
            )
        if self.work + work > limits.MAX_WORK:
            raise ProgramRejected(
                PROGRAM_LIMIT_EXCEEDED,
                f"{instruction.path} ({instruction.op}): the run would exceed {limits.MAX_WORK} operations",
            )
        self.work += work

    def _store(self, name: str, value: Value) -> None:
        self._values[name] = value
        self._live[name] = (
            value.size if isinstance(value, np.ndarray) else len(value) if isinstance(value, str) else 0
        )

    # --- operand access (kinds are checked statically; these checks make a mistake fail closed) -------

    def _get(self, operand: Operand) -> Value:
        return operand if isinstance(operand, int) else self._values[operand]

    def _tensor(self, operand: Operand) -> FloatArray:
        value = self._get(operand)
        if not isinstance(value, np.ndarray) or value.dtype != np.float32:
            raise ProgramRejected(PROGRAM_RUNTIME_ERROR, f"{operand!r} is not a float32 tensor")
        return cast(FloatArray, value)  # its dtype was just checked

    def _ids(self, operand: Operand) -> IdArray:
        value = self._get(operand)
        if not isinstance(value, np.ndarray) or value.dtype != np.int64 or value.ndim != 1:
            raise ProgramRejected(PROGRAM_RUNTIME_ERROR, f"{operand!r} is not an id sequence")
        return cast(IdArray, value)  # its dtype was just checked

    def _int(self, operand: Operand) -> int:
        value = self._get(operand)
        if not _is_int(value):
            raise ProgramRejected(PROGRAM_RUNTIME_ERROR, f"{operand!r} is not an integer")
        assert isinstance(value, int)
        return value

    def _text(self, operand: Operand) -> str:
        value = self._get(operand)
        if not isinstance(value, str):
            raise ProgramRejected(PROGRAM_RUNTIME_ERROR, f"{operand!r} is not text")
        return value

    def _rng(self, operand: Operand) -> np.random.Generator:
        value = self._get(operand)
        if not isinstance(value, np.random.Generator):
            raise ProgramRejected(PROGRAM_RUNTIME_ERROR, f"{operand!r} is not a random generator")
        return value

    def _vocabulary(self, operand: Operand) -> dict[str, int]:
        """The vocab weight as character -> id, checked once per run: distinct Unicode scalar values."""
        assert isinstance(operand, str)
        if operand not in self._vocabularies:
            value = self._values[operand]
            if not isinstance(value, np.ndarray) or value.dtype != np.int32 or value.ndim != 1:
                raise ProgramRejected(PROGRAM_RUNTIME_ERROR, f"{operand!r} is not a vocabulary")
            points = [int(point) for point in value]
            if any(not 0 <= point <= 0x10FFFF or 0xD800 <= point <= 0xDFFF for point in points):
                raise ProgramRejected(
                    PROGRAM_RUNTIME_ERROR, f"{operand!r} holds a value that is not a character"
                )
            characters = {chr(point): position for position, point in enumerate(points)}
            if len(characters) != len(points):
                raise ProgramRejected(PROGRAM_RUNTIME_ERROR, f"{operand!r} names a character twice")
            self._vocabularies[operand] = characters
        return self._vocabularies[operand]

    def _failed(self, instruction: Instruction, problem: str) -> ProgramRejected:
        return ProgramRejected(PROGRAM_RUNTIME_ERROR, f"{instruction.path} ({instruction.op}): {problem}")

    # --- the instructions ------------------------------------------------------------------------------

    def _encode(self, instruction: Instruction) -> Value:
        text = self._text(instruction.operands["text"])
        index = self._vocabulary(instruction.operands["vocab"])
        if len(text) > limits.MAX_IDS:
            raise ProgramRejected(
                PROGRAM_LIMIT_EXCEEDED, f"{instruction.path}: text longer than {limits.MAX_IDS}"
            )
        unknown = sum(1 for character in text if character not in index)
        if unknown:
            # The count only: the text may be a user's prompt, which no error message carries.
            raise ProgramRejected(
                PROGRAM_INPUT_INVALID,
                f"{instruction.path}: {unknown} character(s) of the text are not in the model's vocabulary",
            )
        self._admit(instruction, len(text), len(text))
        return np.array([index[character] for character in text], dtype=np.int64)

    def _decode(self, instruction: Instruction) -> Value:
        ids = self._ids(instruction.operands["ids"])
        characters = list(self._vocabulary(instruction.operands["vocab"]))
        if len(ids) > limits.MAX_TEXT_CHARS:
            raise ProgramRejected(
                PROGRAM_LIMIT_EXCEEDED,
                f"{instruction.path}: text is at most {limits.MAX_TEXT_CHARS} characters",
            )
        if len(ids) and (ids.min() < 0 or ids.max() >= len(characters)):
            raise self._failed(instruction, "an id is outside the vocabulary")
        self._admit(instruction, len(ids), len(ids))
        return "".join(characters[int(token)] for token in ids)

    def _const_ids(self, instruction: Instruction) -> Value:
        values = instruction.parameters["values"]
        assert isinstance(values, tuple)
        self._admit(instruction, len(values), len(values))
        return np.array(values, dtype=np.int64)

    def _window(self, instruction: Instruction) -> Value:
        ids = self._ids(instruction.operands["ids"])
        size, pad = instruction.parameters["size"], instruction.parameters["pad"]
        assert isinstance(size, int)
        assert isinstance(pad, int)
        self._admit(instruction, size, size)
        recent = ids[-size:]
        return np.concatenate([np.full(size - len(recent), pad, dtype=np.int64), recent])

    def _append(self, instruction: Instruction) -> Value:
        ids = self._ids(instruction.operands["ids"])
        value = self._int(instruction.operands["value"])
        if not 0 <= value <= limits.MAX_ID:
            raise self._failed(instruction, f"ids are integers from 0 to {limits.MAX_ID}")
        if len(ids) + 1 > limits.MAX_IDS:
            raise ProgramRejected(
                PROGRAM_LIMIT_EXCEEDED, f"{instruction.path}: id sequences hold at most {limits.MAX_IDS} ids"
            )
        self._admit(instruction, len(ids) + 1, len(ids) + 1)
        return np.append(ids, np.int64(value))

    def _gather(self, instruction: Instruction) -> Value:
        table = self._tensor(instruction.operands["table"])
        ids = self._ids(instruction.operands["ids"])
        if table.ndim != 2:
            raise self._failed(instruction, f"the table must be a matrix, not of rank {table.ndim}")
        if len(ids) and (ids.min() < 0 or ids.max() >= table.shape[0]):
            raise self._failed(instruction, f"an id is outside the table's {table.shape[0]} rows")
        elements = len(ids) * table.shape[1]
        self._admit(instruction, elements, elements)
        return table[ids]

    def _reshape(self, instruction: Instruction) -> Value:
        x = self._tensor(instruction.operands["x"])
        dims = instruction.parameters["shape"]
        assert isinstance(dims, tuple)
        known = 1
        for dim in dims:
            known *= dim if dim != -1 else 1
        if -1 in dims:
            if x.size % known:
                raise self._failed(instruction, f"{x.size} elements do not fill shape {list(dims)}")
            dims = tuple(x.size // known if dim == -1 else dim for dim in dims)
        elif known != x.size:
            raise self._failed(instruction, f"{x.size} elements cannot take shape {list(dims)}")
        self._admit(instruction, x.size, 1)
        return x.reshape(dims)

    def _matmul(self, instruction: Instruction) -> Value:
        a, b = self._tensor(instruction.operands["a"]), self._tensor(instruction.operands["b"])
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
            raise self._failed(instruction, f"cannot multiply {list(a.shape)} by {list(b.shape)}")
        self._admit(instruction, a.shape[0] * b.shape[1], a.shape[0] * a.shape[1] * b.shape[1])
        result: FloatArray = np.matmul(a, b)
        return result

    def _add(self, instruction: Instruction) -> Value:
        a, b = self._tensor(instruction.operands["a"]), self._tensor(instruction.operands["b"])
        # The same shape, or a bias vector along the last axis: no other broadcasting, so the result is
        # never larger than ``a``.
        if a.shape != b.shape and not (b.ndim == 1 and a.ndim >= 1 and a.shape[-1] == b.shape[0]):
            raise self._failed(instruction, f"cannot add {list(b.shape)} to {list(a.shape)}")
        self._admit(instruction, a.size, a.size)
        result: FloatArray = a + b
        return result

    def _tanh(self, instruction: Instruction) -> Value:
        x = self._tensor(instruction.operands["x"])
        self._admit(instruction, x.size, x.size)
        result: FloatArray = np.tanh(x)
        return result

    def _softmax(self, instruction: Instruction) -> Value:
        x = self._tensor(instruction.operands["x"])
        if x.ndim == 0 or x.shape[-1] == 0:
            raise self._failed(instruction, "softmax needs a non-empty last axis")
        self._admit(instruction, x.size, 3 * x.size)
        exponentials = np.exp(x - x.max(axis=-1, keepdims=True))
        result: FloatArray = exponentials / exponentials.sum(axis=-1, keepdims=True)
        return result

    def _argmax(self, instruction: Instruction) -> Value:
        x = self._tensor(instruction.operands["x"])
        if x.ndim != 1 or x.shape[0] == 0 or not np.isfinite(x).all():
            raise self._failed(instruction, "argmax needs a non-empty vector of finite values")
        self._admit(instruction, 0, x.size)
        return int(np.argmax(x))

    def _rng_op(self, instruction: Instruction) -> Value:
        seed = self._int(instruction.operands["seed"])
        if not 0 <= seed <= limits.MAX_SAFE_INTEGER:
            raise self._failed(instruction, "the seed is a non-negative integer")
        self._admit(instruction, 0, 1)
        return new_generator(seed)

    def _sample(self, instruction: Instruction) -> Value:
        logits = self._tensor(instruction.operands["logits"])
        temperature_milli = self._int(instruction.operands["temperature_milli"])
        generator = self._rng(instruction.operands["rng"])
        if not 0 <= temperature_milli <= MAX_TEMPERATURE_MILLI:
            raise self._failed(instruction, f"temperature_milli is from 0 to {MAX_TEMPERATURE_MILLI}")
        if logits.ndim != 1 or logits.shape[0] == 0 or not np.isfinite(logits).all():
            raise self._failed(instruction, "sampling needs a non-empty vector of finite logits")
        self._admit(instruction, 0, 4 * logits.size)
        return sample_index(logits, temperature_milli / 1000, generator)


_OPS: Final[Mapping[str, Callable[[Interpreter, Instruction], Value]]] = {
    "encode": Interpreter._encode,
    "decode": Interpreter._decode,
    "const_ids": Interpreter._const_ids,
    "window": Interpreter._window,
    "append": Interpreter._append,
    "gather": Interpreter._gather,
    "reshape": Interpreter._reshape,
    "matmul": Interpreter._matmul,
    "add": Interpreter._add,
    "tanh": Interpreter._tanh,
    "softmax": Interpreter._softmax,
    "argmax": Interpreter._argmax,
    "rng": Interpreter._rng_op,
    "sample": Interpreter._sample,
}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
