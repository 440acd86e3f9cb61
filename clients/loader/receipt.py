"""The loader's check of a release receipt, before it touches the released key.

A keyserver answers a granted release with the key (a JWE) and a *receipt*: the index of the log entry
that records the decision, a signed checkpoint, an inclusion proof and the entry itself. The release
protocol promises that a key leaves only after its decision is committed to the tenant's append-only
log; the receipt is how the loader holds the keyserver to that promise. If the receipt does not prove
that *this* release is in a log signed by the key the loader was built to trust, the loader refuses the
key: a keyserver (or anyone on the path) that skips the log cannot feed it weights keys unseen by
auditors.

Pure: bytes and the pinned log key in, the decoded entry out, :class:`ReceiptInvalid` otherwise.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from audit import merkle
from audit.checkpoint import CheckpointError, verify_checkpoint
from audit.entry import EntryError, decode_entry

KEY_RELEASE = "key-release"
MAX_PROOF_HASHES = 64  # a tree of 2**64 entries has a shorter audit path


class ReceiptInvalid(Exception):
    """The receipt does not prove that this release was logged; the key must not be used."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Receipt:
    log_index: int
    tree_size: int
    checkpoint: str
    inclusion_proof: Sequence[bytes]
    entry: bytes | None


@dataclass(frozen=True)
class ExpectedRelease:
    """What the logged entry must say: this key version, released to this ephemeral key."""

    key_name: str
    key_version: int
    requester_thumbprint: str  # base64url RFC 7638 thumbprint of the loader's ephemeral public key


def receipt_from_json(document: Mapping[str, Any]) -> Receipt:
    """A receipt as the release endpoint returns it (hex proof, base64 entry); ``ReceiptInvalid`` if it
    is not one."""
    try:
        index, size = document["log_index"], document["tree_size"]
        checkpoint, proof, entry = document["checkpoint"], document["inclusion_proof"], document.get("entry")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in (index, size)):
            raise TypeError("log_index and tree_size are integers")
        if not isinstance(checkpoint, str) or not isinstance(proof, list) or len(proof) > MAX_PROOF_HASHES:
            raise TypeError("checkpoint is a string and inclusion_proof a list of hex hashes")
        hashes = [bytes.fromhex(h) for h in proof if isinstance(h, str)]
        if len(hashes) != len(proof):
            raise TypeError("inclusion_proof holds hex strings")
        raw = None if entry is None else base64.b64decode(entry, validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as exc:
        raise ReceiptInvalid("receipt-malformed", f"the receipt is not well formed ({exc})") from None
    return Receipt(index, size, checkpoint, hashes, raw)


def verify_receipt(
    receipt: Receipt, *, log_verifier_key: str, origin: str | None, expected: ExpectedRelease
) -> dict[str, Any]:
    """The logged entry for this release, once the receipt proves it is in the signed log.

    Checked in this order, so that nothing unauthenticated is believed: the checkpoint's signature with
    the pinned key (and its origin, when given), that it covers the receipt's tree size, the inclusion
    of ``SHA-256(0x00 ‖ entry)`` at ``log_index`` under the checkpoint's root, and only then what the
    entry says — a granted ``key-release`` of ``expected``'s key version to ``expected``'s ephemeral key.
    """
    if receipt.entry is None:
        raise ReceiptInvalid("receipt-entry-missing", "the receipt does not carry its log entry")
    try:
        checkpoint = verify_checkpoint(receipt.checkpoint, log_verifier_key, origin=origin)
    except CheckpointError as exc:
        raise ReceiptInvalid("receipt-checkpoint-invalid", f"the checkpoint does not verify: {exc}") from None
    if checkpoint.size != receipt.tree_size:
        raise ReceiptInvalid(
            "receipt-tree-size-mismatch",
            f"the checkpoint covers {checkpoint.size} entries, the receipt says {receipt.tree_size}",
        )
    try:
        merkle.verify_inclusion(
            merkle.leaf_hash(receipt.entry),
            receipt.log_index,
            receipt.tree_size,
            list(receipt.inclusion_proof),
            checkpoint.root_hash,
        )
    except merkle.MerkleError as exc:
        raise ReceiptInvalid(
            "receipt-inclusion-invalid", f"the entry is not at index {receipt.log_index} of the log: {exc}"
        ) from None
    try:
        entry = decode_entry(receipt.entry)
    except EntryError as exc:
        raise ReceiptInvalid("receipt-entry-malformed", f"the logged entry does not decode: {exc}") from None
    _check_entry(entry, expected)
    return entry


def _check_entry(entry: Mapping[str, Any], expected: ExpectedRelease) -> None:
    facts = {
        "kind": (entry.get("kind"), KEY_RELEASE),
        "decision": (entry.get("decision"), "granted"),
        "key": (entry.get("key"), {"name": expected.key_name, "version": expected.key_version}),
        "requester_thumbprint": (entry.get("requester_thumbprint"), expected.requester_thumbprint),
    }
    for name, (logged, wanted) in facts.items():
        if logged != wanted:
            raise ReceiptInvalid(
                "receipt-entry-mismatch",
                f"the logged entry's {name} is {logged!r}, but this release is {wanted!r}",
            )
