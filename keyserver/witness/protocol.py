"""The C2SP tlog-witness ``add-checkpoint`` call: its wire format and the witness's decision, pure.

Request body (c2sp.org/tlog-witness): ``old <size>\\n``, zero to 63 lines of base64 consistency-proof
hashes, an empty line, then the signed checkpoint note. The witness answers 200 with cosignature
lines, or refuses:

- 400 malformed request, or old size larger than the checkpoint's size;
- 404 the checkpoint's origin is not a log this witness is configured for;
- 403 no signature on the checkpoint verifies under that log's key (or one that claims to, fails);
- 409 the old size is not the size of the latest checkpoint this witness cosigned (body: that size
  in decimal and a newline, content type ``text/x.tlog.size``), or the same size with another root;
- 422 the consistency proof from the latest cosigned checkpoint does not verify.

:func:`decide` is the whole decision given what the witness last cosigned for the origin; storing the
result atomically (compare-and-swap on that latest state) is the caller's part (:mod:`.store`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from audit.checkpoint import (
    Checkpoint,
    CheckpointError,
    NoteVerifier,
    VerificationError,
    open_note,
    parse_checkpoint_body,
    parse_note,
)
from audit.merkle import EMPTY_ROOT, MerkleError, verify_consistency

__all__ = [
    "MAX_PROOF_LINES",
    "MAX_REQUEST_BYTES",
    "SIZE_CONTENT_TYPE",
    "AddCheckpoint",
    "Cosigned",
    "LatestCheckpoint",
    "WitnessRefusal",
    "decide",
    "format_add_checkpoint",
    "parse_add_checkpoint",
]

MAX_PROOF_LINES = 63
# A checkpoint with a handful of signatures and 63 proof lines is a few KiB; this bounds the work.
MAX_REQUEST_BYTES = 64 * 1024
SIZE_CONTENT_TYPE = "text/x.tlog.size"
_HASH_SIZE = 32


class WitnessRefusal(Exception):
    """The witness will not cosign; ``status`` is the HTTP status the specification gives."""

    def __init__(self, status: int, reason: str, *, latest_size: int | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.latest_size = latest_size


@dataclass(frozen=True)
class AddCheckpoint:
    """A parsed ``add-checkpoint`` request (nothing in it verified yet)."""

    old_size: int
    proof: tuple[bytes, ...]
    note: str


@dataclass(frozen=True)
class LatestCheckpoint:
    """What the witness last cosigned for one origin."""

    size: int
    root_hash: bytes


@dataclass(frozen=True)
class Cosigned:
    """A checkpoint the witness may cosign, and the state it was checked against (for the swap)."""

    checkpoint: Checkpoint
    body: str
    previous: LatestCheckpoint | None


def _decimal(line: str, what: str) -> int:
    if not line or any(char not in "0123456789" for char in line) or (len(line) > 1 and line[0] == "0"):
        raise WitnessRefusal(400, f"{what} {line[:32]!r} is not a decimal number without leading zeroes")
    if len(line) > 20 or int(line) >= 2**64:
        raise WitnessRefusal(400, f"{what} does not fit in 64 bits")
    return int(line)


def parse_add_checkpoint(body: bytes) -> AddCheckpoint:
    """Parse a request body; :class:`WitnessRefusal` (400) for anything not in the format."""
    if len(body) > MAX_REQUEST_BYTES:
        raise WitnessRefusal(400, f"request body is larger than {MAX_REQUEST_BYTES} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise WitnessRefusal(400, "request body is not UTF-8") from None
    head, separator, note = text.partition("\n\n")
    if not separator:
        raise WitnessRefusal(400, "request has no empty line before the checkpoint")
    lines = head.split("\n")
    if not lines[0].startswith("old "):
        raise WitnessRefusal(400, "request must start with 'old <size>'")
    old_size = _decimal(lines[0][len("old ") :], "old size")
    proof_lines = lines[1:]
    if len(proof_lines) > MAX_PROOF_LINES:
        raise WitnessRefusal(400, f"more than {MAX_PROOF_LINES} consistency proof lines")
    proof = []
    for number, line in enumerate(proof_lines):
        try:
            value = base64.b64decode(line, validate=True)
        except (binascii.Error, ValueError):
            raise WitnessRefusal(400, f"consistency proof line {number} is not base64") from None
        if len(value) != _HASH_SIZE or base64.b64encode(value).decode("ascii") != line:
            raise WitnessRefusal(400, f"consistency proof line {number} is not one canonical 32-byte hash")
        proof.append(value)
    return AddCheckpoint(old_size, tuple(proof), note)


def format_add_checkpoint(old_size: int, proof: Sequence[bytes], note: str) -> bytes:
    """The request body a log sends to a witness."""
    lines = [f"old {old_size}", *(base64.b64encode(h).decode("ascii") for h in proof)]
    return ("\n".join(lines) + "\n\n" + note).encode("utf-8")


def decide(
    request: AddCheckpoint,
    logs: Mapping[str, Sequence[NoteVerifier]],
    latest_for: Mapping[str, LatestCheckpoint],
) -> Cosigned:
    """Check a request against the configured logs and the latest cosigned state; raise or allow.

    ``logs`` maps each witnessed origin to the keys trusted to sign its checkpoints; ``latest_for``
    holds what was last cosigned per origin (absent: never). The order of checks follows the spec,
    so that each refusal carries the status a conforming log expects.
    """
    try:
        body, _ = parse_note(request.note)
        checkpoint = parse_checkpoint_body(body)
    except CheckpointError as exc:
        raise WitnessRefusal(400, f"malformed checkpoint: {exc}") from None
    verifiers = logs.get(checkpoint.origin)
    if verifiers is None:
        raise WitnessRefusal(404, f"unknown log origin {checkpoint.origin!r}")
    try:
        open_note(request.note, verifiers)
    except VerificationError as exc:
        raise WitnessRefusal(403, f"checkpoint signature: {exc}") from None
    except CheckpointError as exc:
        raise WitnessRefusal(400, f"malformed checkpoint: {exc}") from None
    if checkpoint.size == 0 and checkpoint.root_hash != EMPTY_ROOT:
        raise WitnessRefusal(400, "a checkpoint of size 0 must carry the empty tree's root hash")
    if request.old_size > checkpoint.size:
        raise WitnessRefusal(
            400, f"old size {request.old_size} is larger than the checkpoint's {checkpoint.size}"
        )
    latest = latest_for.get(checkpoint.origin)
    latest_size = latest.size if latest is not None else 0
    if request.old_size != latest_size:
        raise WitnessRefusal(
            409,
            f"old size {request.old_size} is not the latest cosigned size {latest_size}",
            latest_size=latest_size,
        )
    if latest is None:
        if request.proof:
            raise WitnessRefusal(422, "the consistency proof from size 0 must be empty")
    elif checkpoint.size == latest.size:
        if checkpoint.root_hash != latest.root_hash:
            raise WitnessRefusal(
                409,
                f"a different root hash for the cosigned size {latest.size}: a forked log",
                latest_size=latest.size,
            )
        if request.proof:
            raise WitnessRefusal(422, "the consistency proof between equal sizes must be empty")
    else:
        try:
            verify_consistency(
                latest.size, checkpoint.size, latest.root_hash, checkpoint.root_hash, request.proof
            )
        except MerkleError as exc:
            raise WitnessRefusal(422, f"consistency proof: {exc}") from None
    return Cosigned(checkpoint, body, latest)
