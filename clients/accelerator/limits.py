"""Hard limits: even a validly signed program cannot exhaust memory or run for long. The static ones
are checked when the program is verified (before anything runs), the dynamic ones before every
instruction."""

from __future__ import annotations

from typing import Final

# --- the document (checked before the signature) ---
MAX_SIGNED_PROGRAM_BYTES: Final = 40 * 1024  # the envelope's canonical bytes
MAX_PROGRAM_BYTES: Final = 32 * 1024  # the signed program's canonical bytes
MAX_JSON_DEPTH: Final = 16
MAX_JSON_NODES: Final = 8192

# --- the program (checked after the signature, before anything runs) ---
MAX_INSTRUCTIONS: Final = 256  # instruction objects, loop bodies included
MAX_LOOP_DEPTH: Final = 2
MAX_LOOP_ITERATIONS: Final = 4096  # a loop's declared "max"
MAX_STEPS: Final = 200_000  # worst-case instructions executed, loops unrolled at their "max"
MAX_REGISTERS: Final = 64
MAX_WEIGHTS: Final = 64
MAX_INPUTS: Final = 16
MAX_OUTPUTS: Final = 8
MAX_RANK: Final = 4
MAX_WINDOW: Final = 1024
MAX_CONSTANT_IDS: Final = 256
MAX_ID: Final = 2**31 - 1  # ids index tensors and vocabularies; int32 range is plenty
MAX_SAFE_INTEGER: Final = 2**53 - 1  # integer literals and int inputs (JSON-interoperable range)

# --- running (checked before every instruction) ---
MAX_TENSOR_ELEMENTS: Final = 1 << 21  # any one value (8 MiB of float32)
MAX_LIVE_ELEMENTS: Final = 1 << 23  # all registers together (32 MiB of float32)
MAX_WORK: Final = 500_000_000  # multiply-adds and element operations in one run (well under a second or two)
MAX_IDS: Final = 16_384  # length of an id sequence
MAX_TEXT_CHARS: Final = 4096  # text inputs and outputs
