"""The virtual accelerator: decrypted weights in memory, trusted CI signers, and one entry point that
verifies a signed program and then runs it."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from clients.accelerator.errors import PROGRAM_WRONG_MODEL, ProgramRejected
from clients.accelerator.program import NAME_RE, parse_signed_program, verify_program
from clients.accelerator.signatures import SignerPublicKey, algorithm_of
from clients.accelerator.vm import Interpreter, Output
from clients.model.tensors import decode_tensors

_WEIGHT_DTYPES = (np.dtype(np.float32), np.dtype(np.int32))


class Accelerator:
    """Holds the weights (in memory only, read-only) and the CI signers it trusts. ``run`` is the only
    way to compute over the weights, and every refusal it makes is a ``ProgramRejected``."""

    def __init__(
        self,
        weights: Mapping[str, npt.NDArray[Any]],
        trusted_signers: Mapping[str, SignerPublicKey],
        *,
        model_sha256: bytes | None = None,
        model_bound_programs: bool = False,
    ) -> None:
        if not trusted_signers:
            raise ValueError(
                "an accelerator needs at least one trusted CI signer: it runs signed programs only"
            )
        for name, key in trusted_signers.items():
            if not NAME_RE.match(name):
                raise ValueError(f"signer name {name!r} is not valid: 1-100 of a-z 0-9 . _ - ")
            algorithm_of(key)  # refuses keys of other types now rather than at the first program
        self._signers: dict[str, SignerPublicKey] = dict(trusted_signers)
        self._weights: dict[str, npt.NDArray[Any]] = {}
        for name, array in weights.items():
            if array.dtype not in _WEIGHT_DTYPES:
                raise ValueError(f"weight {name!r} is {array.dtype}; the accelerator holds float32 and int32")
            # Our own copy, read-only: no caller can change the weights under a running program, and
            # no program can write them.
            owned = np.array(array, copy=True)
            owned.setflags(write=False)
            self._weights[name] = owned
        self._instructions_executed = 0
        # The tensor archive's SHA-256: a program naming another model is refused (and, with
        # model_bound_programs, a program naming none).
        self.model_sha256 = model_sha256
        self._model_bound = model_bound_programs
        if model_bound_programs and model_sha256 is None:
            raise ValueError("model-bound programs need the model's digest")

    @classmethod
    def from_archive(
        cls,
        archive: bytes,
        trusted_signers: Mapping[str, SignerPublicKey],
        *,
        model_bound_programs: bool = False,
    ) -> Accelerator:
        """From the decrypted tensor archive (``TensorArchiveError`` if it is malformed)."""
        digest = hashlib.sha256(archive).digest()
        return cls(
            decode_tensors(archive),
            trusted_signers,
            model_sha256=digest,
            model_bound_programs=model_bound_programs,
        )

    @property
    def instructions_executed(self) -> int:
        """Instructions completed over all runs: refused programs add nothing."""
        return self._instructions_executed

    def run(self, signed_program: Mapping[str, Any] | bytes, inputs: Mapping[str, Any]) -> dict[str, Output]:
        """Verifies the signed program (a parsed envelope, or its canonical bytes), binds the weights and
        inputs, runs it, and returns its declared outputs (text and integers only)."""
        envelope = (
            parse_signed_program(signed_program) if isinstance(signed_program, bytes) else signed_program
        )
        program = verify_program(envelope, self._signers)
        if program.model is None and self._model_bound:
            raise ProgramRejected(PROGRAM_WRONG_MODEL, "this loader runs only programs that name its model")
        if program.model is not None and (
            self.model_sha256 is None or program.model != self.model_sha256.hex()
        ):
            raise ProgramRejected(PROGRAM_WRONG_MODEL, "the program was signed for another model")
        interpreter = Interpreter(program, self._weights, inputs)
        try:
            return interpreter.run()
        finally:
            self._instructions_executed += interpreter.executed
