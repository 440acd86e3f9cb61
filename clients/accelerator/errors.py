"""The one exception the accelerator raises for anything it refuses, with a stable reason code."""

from __future__ import annotations

from typing import Final

# The envelope has no signature at all (or is a bare program).
PROGRAM_UNSIGNED: Final = "program-unsigned"
# The envelope names a signer the accelerator does not trust.
PROGRAM_SIGNER_UNKNOWN: Final = "program-signer-unknown"
# The envelope's alg is not the algorithm of the named signer's key (or not an algorithm at all).
PROGRAM_ALG_MISMATCH: Final = "program-alg-mismatch"
# The signature does not verify over the program's canonical bytes with the signer's key.
PROGRAM_SIGNATURE_INVALID: Final = "program-signature-invalid"
# Not a well-formed envelope or program: unknown or missing members, wrong types, non-canonical bytes,
# undefined or ill-typed operands.
PROGRAM_MALFORMED: Final = "program-malformed"
# A static or run-time limit: document size, instructions, loop bounds, tensor elements, work, text.
PROGRAM_LIMIT_EXCEEDED: Final = "program-limit-exceeded"
# The program declares weights the accelerator does not hold, or holds with another dtype or shape.
PROGRAM_WEIGHTS_MISMATCH: Final = "program-weights-mismatch"
# The caller's inputs are not those the program declares (names, kinds, bounds, vocabulary).
PROGRAM_INPUT_INVALID: Final = "program-input-invalid"
# A validly signed program failed while running: a shape mismatch, an id out of range, non-finite logits.
PROGRAM_RUNTIME_ERROR: Final = "program-runtime-error"
# The program names the model it may run on (its "model": SHA-256 of the tensor archive), and this is another.
PROGRAM_WRONG_MODEL: Final = "program-wrong-model"

REASONS: Final = frozenset(
    {
        PROGRAM_UNSIGNED,
        PROGRAM_SIGNER_UNKNOWN,
        PROGRAM_ALG_MISMATCH,
        PROGRAM_SIGNATURE_INVALID,
        PROGRAM_MALFORMED,
        PROGRAM_LIMIT_EXCEEDED,
        PROGRAM_WEIGHTS_MISMATCH,
        PROGRAM_INPUT_INVALID,
        PROGRAM_RUNTIME_ERROR,
        PROGRAM_WRONG_MODEL,
    }
)


class ProgramRejected(Exception):
    """The accelerator refused a program or its inputs. ``reason`` is one of ``REASONS``; the message
    says what to fix and never contains weight or input values."""

    def __init__(self, reason: str, message: str) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown rejection reason {reason!r}")
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return f"{self.reason}: {self.message}"
