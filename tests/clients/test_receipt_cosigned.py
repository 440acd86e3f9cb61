"""The loader's receipt check with witnesses (clients/loader/receipt.py): pure, on a log built here.

Any single-byte change to a receipt's cosigned note, and any truncation, is refused when every trusted
witness must have cosigned; cosignatures dated in the future or older than the max age do not count; a
receipt whose proof is against another checkpoint than the cosigned one is refused."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from audit.checkpoint import Checkpoint, format_checkpoint, sign_checkpoint, vkey_for
from audit.cosignature import CosignaturePolicy, CosignerKey, cosign_checkpoint
from audit.entry import canonical_bytes
from audit.merkle import MemoryNodeStore
from clients.loader.keyserver_api import Receipt
from clients.loader.receipt import ExpectedRelease, ReceiptInvalid, verify_receipt

ORIGIN = "keyserver.example/acme"
NOW = datetime(2026, 12, 4, 12, tzinfo=UTC)
LOG = Ed25519PrivateKey.generate()
WITNESSES = {f"w{i}.example": Ed25519PrivateKey.generate() for i in range(3)}
KEYS = tuple(CosignerKey.from_public_key(n, k.public_key()) for n, k in WITNESSES.items())
ENTRY = {
    "v": 1,
    "kind": "key-release",
    "time": "2026-12-04T12:00:00.000000Z",
    "principal": None,
    "decision": "granted",
    "key": {"name": "weights", "version": 1},
    "requester_thumbprint": "thumb",
    "requested_version": None,
    "jwe_sha256": "ab" * 32,
}
EXPECTED = ExpectedRelease("weights", 1, "thumb", "ab" * 32)


def receipt(size: int = 5, ages: tuple[int, ...] = (0, 0, 0)) -> Receipt:
    tree = MemoryNodeStore()
    tree.extend([b"other %d" % i for i in range(size - 1)] + [canonical_bytes(ENTRY)])
    checkpoint = Checkpoint(ORIGIN, size, tree.root())
    note = sign_checkpoint(checkpoint, ORIGIN, LOG)
    for (name, key), age in zip(WITNESSES.items(), ages, strict=False):
        note += cosign_checkpoint(format_checkpoint(checkpoint), name, key, int(NOW.timestamp()) - age)
    return Receipt(size - 1, size, note, tree.inclusion_proof(size - 1), canonical_bytes(ENTRY))


def check(r: Receipt, quorum: int = 3, max_age: timedelta = timedelta(minutes=10)) -> None:
    verify_receipt(
        r,
        log_verifier_key=vkey_for(ORIGIN, LOG.public_key()),
        origin=ORIGIN,
        expected=EXPECTED,
        cosignatures=CosignaturePolicy(KEYS, quorum, max_age),
        now=NOW,
    )


GOOD = receipt()


def test_a_cosigned_receipt_is_accepted() -> None:
    check(GOOD)


@given(position=st.integers(0, len(GOOD.checkpoint.encode()) - 1), value=st.integers(0, 255))
def test_any_changed_byte_of_the_note_is_refused(position: int, value: int) -> None:
    raw = bytearray(GOOD.checkpoint.encode())
    if raw[position] == value:
        return
    raw[position] = value
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return  # not a string a loader's JSON client could hand over
    with pytest.raises(ReceiptInvalid):
        check(Receipt(GOOD.log_index, GOOD.tree_size, text, GOOD.inclusion_proof, GOOD.entry))


@given(cut=st.integers(0, len(GOOD.checkpoint) - 1))
def test_a_truncated_note_is_refused(cut: int) -> None:
    with pytest.raises(ReceiptInvalid):
        check(
            Receipt(GOOD.log_index, GOOD.tree_size, GOOD.checkpoint[:cut], GOOD.inclusion_proof, GOOD.entry)
        )


def test_stale_future_and_too_few_cosignatures_are_refused() -> None:
    check(receipt(ages=(0, 0, 900)), quorum=2)  # one stale, two fresh: 2 of 3 still count
    for ages, quorum in (((0, 900, 900), 2), ((0, 0), 3), ((-3600, 0, 0), 3)):
        with pytest.raises(ReceiptInvalid) as refused:
            check(receipt(ages=ages), quorum=quorum)
        assert refused.value.reason == "receipt-cosignatures-insufficient"


def test_cosignatures_must_be_on_the_checkpoint_the_proof_is_against() -> None:
    other = receipt(size=6)
    # The proof and log signature of size 6, the cosignature lines of size 5.
    body_and_log_line = (
        other.checkpoint.split("\n\n")[0] + "\n\n" + other.checkpoint.split("\n\n")[1].splitlines()[0]
    )
    moved = body_and_log_line + "\n" + "".join(GOOD.checkpoint.splitlines(keepends=True)[5:])
    with pytest.raises(ReceiptInvalid) as refused:
        check(Receipt(other.log_index, other.tree_size, moved, other.inclusion_proof, other.entry))
    assert refused.value.reason == "receipt-cosignature-invalid"
    # The cosigned note of size 5 with the proof for size 6: the tree size does not match.
    with pytest.raises(ReceiptInvalid):
        check(Receipt(other.log_index, other.tree_size, GOOD.checkpoint, other.inclusion_proof, other.entry))
