"""The loader's receipt check against an honest log and every lie a keyserver could tell about it.

The log is real (the same Merkle tree and checkpoint code, a real Ed25519 key) and held in memory;
each lie is the smallest change that would let a key out without an auditable entry, and each must be
refused before the key is used.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.checkpoint import Checkpoint, sign_checkpoint
from audit.entry import canonical_bytes
from clients.loader.receipt import ExpectedRelease, ReceiptInvalid, verify_receipt
from clients.sdk.models import Receipt
from tests.test_audit_verifier import ORIGIN, MemoryLog

THUMBPRINT = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"
JWE_SHA256 = "ab" * 32
EXPECTED = ExpectedRelease("weights", 3, THUMBPRINT, jwe_sha256=JWE_SHA256)


def release_entry(**changes: Any) -> dict[str, Any]:
    entry = {
        "v": 1,
        "kind": "key-release",
        "time": "2026-12-02T04:00:00.000000Z",
        "principal": None,
        "decision": "granted",
        "reason": None,
        "key": {"name": "weights", "version": 3},
        "requester_thumbprint": THUMBPRINT,
        "requested_version": None,
        "jwe_sha256": JWE_SHA256,
    }
    entry.update(changes)
    return entry


def receipt_for(log: MemoryLog, index: int) -> Receipt:
    size = log.store.size
    return Receipt(index, size, log.signed(), list(log.inclusion_proof(index, size)), log.data[index])


@pytest.fixture
def log() -> MemoryLog:
    log = MemoryLog()
    log.add(*({"v": 1, "kind": "key-release", "n": n} for n in range(6)))
    log.add(release_entry())
    log.add(*({"v": 1, "kind": "policy-activated", "n": n} for n in range(4)))
    return log


def verify(receipt: Receipt, log: MemoryLog, **kwargs: Any) -> dict[str, Any]:
    return verify_receipt(receipt, log_verifier_key=log.vkey, origin=ORIGIN, expected=EXPECTED, **kwargs)


def refused(reason: str, receipt: Receipt, log: MemoryLog, **kwargs: Any) -> None:
    with pytest.raises(ReceiptInvalid) as caught:
        verify(receipt, log, **kwargs)
    assert caught.value.reason == reason, caught.value


def test_an_honest_receipt_verifies(log: MemoryLog) -> None:
    entry = verify(receipt_for(log, 6), log)
    assert entry["decision"] == "granted"
    assert entry["key"] == {"name": "weights", "version": 3}


def test_a_checkpoint_signed_by_another_key(log: MemoryLog) -> None:
    impostor = MemoryLog(Ed25519PrivateKey.generate())
    impostor.data, impostor.store = log.data, log.store
    refused(
        "receipt-checkpoint-invalid",
        dataclasses.replace(receipt_for(log, 6), checkpoint=impostor.signed()),
        log,
    )


def test_a_checkpoint_of_another_origin(log: MemoryLog) -> None:
    other = sign_checkpoint(
        Checkpoint("keyserver.test/other", log.store.size, log.store.root()), ORIGIN, log.key
    )
    refused("receipt-checkpoint-invalid", dataclasses.replace(receipt_for(log, 6), checkpoint=other), log)


def test_a_checkpoint_for_another_tree_size(log: MemoryLog) -> None:
    receipt = receipt_for(log, 6)
    refused("receipt-tree-size-mismatch", dataclasses.replace(receipt, tree_size=receipt.tree_size - 1), log)


def test_an_entry_that_is_not_in_the_log(log: MemoryLog) -> None:
    # The keyserver made the entry up (it was never appended): the proof of the real entry cannot fit it.
    forged = canonical_bytes(release_entry(time="2026-12-02T04:00:01.000000Z"))
    refused("receipt-inclusion-invalid", dataclasses.replace(receipt_for(log, 6), entry=forged), log)


def test_a_proof_for_another_index(log: MemoryLog) -> None:
    refused("receipt-inclusion-invalid", dataclasses.replace(receipt_for(log, 6), log_index=5), log)


def test_a_truncated_or_altered_proof(log: MemoryLog) -> None:
    receipt = receipt_for(log, 6)
    proof = list(receipt.inclusion_proof)
    refused("receipt-inclusion-invalid", dataclasses.replace(receipt, inclusion_proof=proof[:-1]), log)
    flipped = [bytes([proof[0][0] ^ 1]) + proof[0][1:], *proof[1:]]
    refused("receipt-inclusion-invalid", dataclasses.replace(receipt, inclusion_proof=flipped), log)


def test_a_receipt_without_its_entry(log: MemoryLog) -> None:
    refused("receipt-entry-missing", dataclasses.replace(receipt_for(log, 6), entry=None), log)


@pytest.mark.parametrize(
    "lie",
    [
        {"decision": "denied"},
        {"kind": "policy-activated"},
        {"key": {"name": "weights", "version": 2}},
        {"key": {"name": "other", "version": 3}},
        {"requester_thumbprint": "another-loader-s-key"},
        {"jwe_sha256": "cd" * 32},  # another JWE than the one received: swapped on the way
        {"jwe_sha256": None},
        {"requested_version": 1},  # someone on the path pinned an old version into the request
    ],
)
def test_a_logged_entry_about_another_release(lie: dict[str, Any]) -> None:
    # Logged and provable, but not *this* release: a denial, another key version, another requester.
    log = MemoryLog()
    log.add(release_entry(**lie))
    refused("receipt-entry-mismatch", receipt_for(log, 0), log)


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_in_the_entry_is_refused(position: int, bit: int) -> None:
    log = MemoryLog()
    log.add(release_entry())
    receipt = receipt_for(log, 0)
    assert receipt.entry is not None
    data = bytearray(receipt.entry)
    data[position % len(data)] ^= 1 << bit
    with pytest.raises(ReceiptInvalid):
        verify(dataclasses.replace(receipt, entry=bytes(data)), log)
