"""The loader's check of a release receipt, before it touches the released key.

A keyserver answers a granted release with the key (a JWE) and a *receipt*: the index of the log entry
that records the decision, a signed checkpoint, an inclusion proof and the entry itself. The release
protocol promises that a key leaves only after its decision is committed to the tenant's append-only
log; the receipt is how the loader holds the keyserver to that promise. If the receipt does not prove
that *this* release — this key version, to this ephemeral key, as exactly the JWE received — is in a
log signed by the key the loader was built to trust, the loader refuses the key. Anyone on the path who
swaps the JWE (the ephemeral key is public, so anyone can make one) or skips the log is caught. What a
receipt alone cannot catch is a *malicious keyserver* that signs a forked log shown only to this loader:
that needs witnesses cosigning the checkpoints (C2SP tlog-witness). A loader configured with witnesses
(their keys, a quorum m and a maximum age: its *own* measured configuration, never the keyserver's word)
also requires m valid, fresh cosignatures on the very checkpoint the inclusion proof is against; a split
view then needs m witnesses to collude (docs/release-log.md, "Witnesses").

Pure: bytes and the pinned log key in, the decoded entry out, :class:`ReceiptInvalid` otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

from audit import merkle_verify as merkle  # the verify-only half: no tree building in the image
from audit.checkpoint import CheckpointError, verify_checkpoint
from audit.entry import EntryError, decode_entry
from clients.loader.parts import WITNESSES, load_part

if TYPE_CHECKING:  # a type only: the cosignature check is a part, loaded when configured (parts.py)
    from audit.cosignature import CosignaturePolicy

# The kind keyserver.releaselog.records.KEY_RELEASE names; not imported from there, because that module
# brings the database layer into the loader.
KEY_RELEASE = "key-release"


class Receipt(Protocol):
    """A receipt as the loader's client (``clients.loader.keyserver_api``) or the SDK reads it."""

    @property
    def log_index(self) -> int: ...
    @property
    def tree_size(self) -> int: ...
    @property
    def checkpoint(self) -> str: ...
    @property
    def inclusion_proof(self) -> list[bytes]: ...
    @property
    def entry(self) -> bytes | None: ...


class ReceiptInvalid(Exception):
    """The receipt does not prove that this release was logged; the key must not be used."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(f"{reason}: {message}")
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class ExpectedRelease:
    """What the logged entry must say: this key version, asked for as the loader asked, released to this
    ephemeral key, as exactly the JWE the loader received."""

    key_name: str
    key_version: int
    requester_thumbprint: str  # base64url RFC 7638 thumbprint of the loader's ephemeral public key
    jwe_sha256: str  # hex SHA-256 of the compact JWE received: a JWE swapped on the way is not this one
    requested_version: int | None = None  # what the loader asked for (None: the newest live version)


def verify_receipt(
    receipt: Receipt,
    *,
    log_verifier_key: str,
    origin: str | None,
    expected: ExpectedRelease,
    cosignatures: CosignaturePolicy | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The logged entry for this release, once the receipt proves it is in the signed log.

    Checked in this order, so that nothing unauthenticated is believed: the checkpoint's signature with
    the pinned key (and its origin, when given), that it covers the receipt's tree size, the inclusion
    of ``SHA-256(0x00 ‖ entry)`` at ``log_index`` under the checkpoint's root, and only then what the
    entry says — a granted ``key-release`` of ``expected``'s key version to ``expected``'s ephemeral key.
    With ``cosignatures``, the same note (the checkpoint whose root the proof is checked against) must
    also carry the policy's quorum of valid cosignatures from its witnesses, none older than its max age.
    """
    if receipt.entry is None:
        raise ReceiptInvalid("receipt-entry-missing", "the receipt does not carry its log entry")
    try:
        checkpoint = verify_checkpoint(receipt.checkpoint, log_verifier_key, origin=origin)
    except CheckpointError as exc:
        raise ReceiptInvalid("receipt-checkpoint-invalid", f"the checkpoint does not verify: {exc}") from None
    if cosignatures is not None:
        load_part(WITNESSES).require_cosignatures(receipt.checkpoint, cosignatures, now or datetime.now(UTC))
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
        "requested_version": (entry.get("requested_version", "absent"), expected.requested_version),
        "jwe_sha256": (entry.get("jwe_sha256"), expected.jwe_sha256),
    }
    for name, (logged, wanted) in facts.items():
        if logged != wanted:
            raise ReceiptInvalid(
                "receipt-entry-mismatch",
                f"the logged entry's {name} is {logged!r}, but this release is {wanted!r}",
            )
