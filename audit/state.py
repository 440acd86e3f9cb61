"""A monitor's saved state: what it verified, so that a restarted monitor holds the log to it.

Without it a restarted monitor trusts whatever history the log shows it next: a keyserver that
rewrote an entry the monitor had already announced (and re-signed the tree) would be reported as fine.

The file is one JSON object, replaced atomically (a temporary file beside it, fsync, rename, fsync of
the directory) after every poll that verified a new checkpoint, so it always holds one complete state:

- ``format``: ``keyserver-audit-monitor-state/1``;
- ``verifier_key``: the pinned log key the state was verified with (a state for another log, or after
  the key was changed, is refused rather than silently restarted);
- ``checkpoint``: the signed checkpoint verified last, verbatim — the state's anchor, checked again with
  the pinned key on load;
- ``origin``, ``tree_size``, ``root_hash`` (hex): that checkpoint's contents, for people and ``jq``; they
  must agree with the signed checkpoint;
- ``leaf_hashes``: base64 of the RFC 9162 leaf hash of every entry the checkpoint covers, 32 bytes each,
  in order. They must hash to the checkpoint's root. They let a restarted monitor name the entry that
  changed, not just say that the root did (32 bytes per entry: 32 MB for a million entries).

Integrity model: the state adds no secret. A checkpoint in it verifies only if the log's key signed it,
and the leaf hashes must rebuild its root, so an edited, truncated or foreign file is refused with the
reason. What whoever can write the file can still do: put back an older genuine state of the same log
(the monitor then holds the log only to that older history) or delete it (the monitor then refuses to
start unless told to trust on first use). Keep the file where the pinned key is kept: whoever can change
the pinned key can make the monitor trust anything anyway.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from audit import merkle
from audit.checkpoint import CheckpointError, verify_checkpoint
from audit.verifier import CompactRange, VerifiedHistory

STATE_FORMAT = "keyserver-audit-monitor-state/1"
_FIELDS = {"format", "verifier_key", "origin", "tree_size", "root_hash", "checkpoint", "leaf_hashes"}


class StateError(Exception):
    """A saved monitor state that cannot be used: unreadable, damaged, edited, or of another log."""


@dataclass(frozen=True)
class MonitorState:
    verifier_key: str
    signed_checkpoint: str
    history: VerifiedHistory


def encode_state(state: MonitorState) -> bytes:
    checkpoint = state.history.checkpoint
    document = {
        "format": STATE_FORMAT,
        "verifier_key": state.verifier_key,
        "origin": checkpoint.origin,
        "tree_size": checkpoint.size,
        "root_hash": checkpoint.root_hash.hex(),
        "checkpoint": state.signed_checkpoint,
        "leaf_hashes": base64.b64encode(state.history.leaf_hashes).decode("ascii"),
    }
    return (json.dumps(document, indent=1) + "\n").encode("utf-8")


def decode_state(raw: bytes, verifier_key: str) -> MonitorState:
    """The state in ``raw``, checked against the pinned ``verifier_key``; :class:`StateError` says why not."""
    document = _parse(raw)
    if document.get("format") != STATE_FORMAT:
        raise StateError(f"it is not a monitor state (format {STATE_FORMAT!r} expected)")
    if set(document) != _FIELDS:
        raise StateError(f"it must hold exactly the fields {', '.join(sorted(_FIELDS))}")
    saved_key = document["verifier_key"]
    if saved_key != verifier_key:
        raise StateError(
            f"it was saved for the log key {str(saved_key)[:200]!r}, not the pinned key {verifier_key!r}:"
            " it is another log's state (or the pinned key changed; start a new state file)"
        )
    signed = document["checkpoint"]
    if not isinstance(signed, str):
        raise StateError("its checkpoint is not text")
    try:
        checkpoint = verify_checkpoint(signed, verifier_key)
    except CheckpointError as exc:
        raise StateError(f"its checkpoint does not verify with the pinned key: {exc}") from None
    described = (document["origin"], document["tree_size"], document["root_hash"])
    if described != (checkpoint.origin, checkpoint.size, checkpoint.root_hash.hex()) or isinstance(
        document["tree_size"], bool
    ):
        raise StateError("its origin, tree_size or root_hash disagree with its signed checkpoint")
    leaf_hashes = _leaf_hashes(document["leaf_hashes"])
    if len(leaf_hashes) != checkpoint.size * merkle.HASH_SIZE:
        raise StateError(
            f"it holds {len(leaf_hashes) // merkle.HASH_SIZE} leaf hashes for a checkpoint of"
            f" {checkpoint.size} entries (truncated?)"
        )
    tree = CompactRange()
    for offset in range(0, len(leaf_hashes), merkle.HASH_SIZE):
        tree.append(leaf_hashes[offset : offset + merkle.HASH_SIZE])
    if tree.root() != checkpoint.root_hash:
        raise StateError(
            "its leaf hashes do not hash to its checkpoint's root: the file was damaged or edited"
        )
    return MonitorState(verifier_key, signed, VerifiedHistory(checkpoint, leaf_hashes))


def load_state(path: Path, verifier_key: str) -> MonitorState:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise StateError(f"cannot read the state file {path}: {exc.strerror}") from None
    try:
        return decode_state(raw, verifier_key)
    except StateError as exc:
        raise StateError(f"the state file {path} is refused: {exc}") from None


def save_state(path: Path, state: MonitorState) -> None:
    """Replace ``path`` with ``state`` atomically: a crash leaves the old state or the new one, never half."""
    data = encode_state(state)
    directory = path.parent
    descriptor, temporary = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    # The rename is durable only once the directory entry is.
    directory_descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(directory_descriptor)
    finally:
        os.close(directory_descriptor)


def _parse(raw: bytes) -> dict[str, Any]:
    try:
        document = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicates)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise StateError("it is not a JSON document (damaged or truncated)") from None
    if not isinstance(document, dict):
        raise StateError("it is not a JSON object")
    return document


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    document = dict(pairs)
    if len(document) != len(pairs):
        raise ValueError("duplicate member")
    return document


def _leaf_hashes(value: Any) -> bytes:
    if not isinstance(value, str):
        raise StateError("its leaf_hashes are not base64 text")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise StateError("its leaf_hashes are not valid base64 (damaged or truncated)") from None
    return raw
