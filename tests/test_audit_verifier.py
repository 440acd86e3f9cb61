"""The offline auditor against honest and lying logs.

The log here is a real one held in memory (the same Merkle and checkpoint code, a real Ed25519 key);
each lie is the smallest change a dishonest keyserver could make, and each must be caught.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from audit import merkle
from audit.checkpoint import Checkpoint, sign_checkpoint, vkey_for
from audit.entry import canonical_bytes
from audit.verifier import AuditFailure, CompactRange, LogAuditor

ORIGIN = "keyserver.test/acme"


class MemoryLog:
    """An honest log; tests override pieces of it to lie."""

    def __init__(self, key: Ed25519PrivateKey | None = None) -> None:
        self.key = key or Ed25519PrivateKey.generate()
        self.store = merkle.MemoryNodeStore()
        self.data: list[bytes] = []

    @property
    def vkey(self) -> str:
        return vkey_for(ORIGIN, self.key.public_key())

    def add(self, *entries: dict[str, Any]) -> None:
        for entry in entries:
            data = canonical_bytes(entry)
            self.data.append(data)
            self.store.append(data)

    def signed(self, size: int | None = None, root: bytes | None = None) -> str:
        size = self.store.size if size is None else size
        root = self.store.root(size) if root is None else root
        return sign_checkpoint(Checkpoint(ORIGIN, size, root), ORIGIN, self.key)

    def checkpoint(self) -> str:
        return self.signed()

    def entries(self, start: int, end: int) -> Sequence[bytes]:
        return self.data[start:end]

    def inclusion_proof(self, index: int, tree_size: int) -> Sequence[bytes]:
        return self.store.inclusion_proof(index, tree_size)

    def consistency_proof(self, first: int, second: int) -> Sequence[bytes]:
        return self.store.consistency_proof(first, second)


def release(n: int, decision: str = "granted", key: str = "weights") -> dict[str, Any]:
    return {"v": 1, "kind": "key-release", "decision": decision, "key": {"name": key, "version": 1}, "n": n}


@pytest.fixture
def log() -> MemoryLog:
    log = MemoryLog()
    log.add(*(release(n, "denied" if n % 4 == 0 else "granted") for n in range(23)))
    log.add({"v": 1, "kind": "policy-activated", "policy": {"name": "p", "version": 2}})
    return log


def test_honest_log_verifies_with_a_summary(log: MemoryLog) -> None:
    report = LogAuditor(log, log.vkey).verify()
    assert report.checkpoint.size == 24
    assert report.kinds == {"key-release": 23, "policy-activated": 1}
    assert report.decisions["weights"] == {"granted": 17, "denied": 6}


def test_growth_since_a_saved_checkpoint_verifies(log: MemoryLog) -> None:
    saved = log.signed()
    log.add(*(release(n) for n in range(100, 140)))
    report = LogAuditor(log, log.vkey).verify(saved)
    assert report.previous_size == 24
    assert report.checkpoint.size == 64


def test_wrong_key_is_refused(log: MemoryLog) -> None:
    other = vkey_for(ORIGIN, Ed25519PrivateKey.generate().public_key())
    with pytest.raises(AuditFailure, match="pinned log key"):
        LogAuditor(log, other).verify()


def test_checkpoint_of_another_log_is_refused(log: MemoryLog) -> None:
    log.checkpoint = lambda: sign_checkpoint(  # type: ignore[method-assign]
        Checkpoint("keyserver.test/globex", log.store.size, log.store.root()), ORIGIN, log.key
    )
    with pytest.raises(AuditFailure, match="origin"):
        LogAuditor(log, log.vkey).verify()


def test_altered_entry_is_caught(log: MemoryLog) -> None:
    log.data[7] = canonical_bytes({**release(7), "n": 700})
    with pytest.raises(AuditFailure, match="do not hash to the signed root"):
        LogAuditor(log, log.vkey).verify()


def test_dropped_entry_is_caught(log: MemoryLog) -> None:
    original = log.entries

    def short(start: int, end: int) -> Sequence[bytes]:
        return original(start, end)[:-1]

    log.entries = short  # type: ignore[method-assign]
    with pytest.raises(AuditFailure, match="got"):
        LogAuditor(log, log.vkey).verify()


def test_non_canonical_entry_is_caught(log: MemoryLog) -> None:
    log.data[3] = b'{"kind": "key-release"}'
    with pytest.raises(AuditFailure, match="entry 3 is not a canonical"):
        LogAuditor(log, log.vkey).verify()


def test_forked_history_is_caught() -> None:
    """The log signs size 10, then rewrites entry 2 and signs size 12 over the new history."""
    honest = MemoryLog()
    honest.add(*(release(n) for n in range(10)))
    saved = honest.signed()
    forked = MemoryLog(honest.key)
    forked.add(*(release(n) if n != 2 else release(2, "denied") for n in range(12)))
    with pytest.raises(AuditFailure, match="rewrote its history"):
        LogAuditor(forked, forked.vkey).verify(saved)


def test_shrinking_log_is_caught(log: MemoryLog) -> None:
    saved = log.signed()
    log.data.pop()
    log.store = merkle.MemoryNodeStore()
    log.store.extend(log.data)
    with pytest.raises(AuditFailure, match="backwards"):
        LogAuditor(log, log.vkey).verify(saved)


def test_lying_consistency_proof_is_caught(log: MemoryLog) -> None:
    saved = log.signed(10)
    log.consistency_proof = lambda first, second: [b"\x00" * 32]  # type: ignore[method-assign]
    with pytest.raises(AuditFailure, match="consistency proof"):
        LogAuditor(log, log.vkey).verify(saved)


def test_lying_inclusion_proof_is_caught(log: MemoryLog) -> None:
    honest = log.inclusion_proof

    def lie(index: int, tree_size: int) -> Sequence[bytes]:
        proof = list(honest(index, tree_size))
        proof[0] = bytes(32)
        return proof

    log.inclusion_proof = lie  # type: ignore[method-assign]
    with pytest.raises(AuditFailure, match="inclusion proof"):
        LogAuditor(log, log.vkey).verify()


def test_monitor_state_fetches_only_new_entries(log: MemoryLog) -> None:
    auditor = LogAuditor(log, log.vkey)
    seen: list[int] = []
    auditor.on_entry = lambda index, _entry, _data: seen.append(index)
    auditor.verify()
    log.add(release(500), release(501))
    report = auditor.verify()
    assert report.entries_checked == 2
    assert seen == list(range(26))
    assert report.previous_size == 24


@settings(max_examples=40, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=70), st.integers(min_value=0, max_value=69))
def test_compact_range_root_matches_the_tree(leaves: list[bytes], cut: int) -> None:
    compact = CompactRange()
    store = merkle.MemoryNodeStore()
    for index, data in enumerate(leaves):
        compact.append(merkle.leaf_hash(data))
        store.append(data)
        if index == cut:
            assert compact.root() == store.root()
    assert compact.root() == store.root()
    assert compact.size == len(leaves)


def test_signature_mangling_is_refused(log: MemoryLog) -> None:
    text = log.signed()
    body, signature_line = text.rsplit("\n\n", 1)
    name, blob = signature_line.strip().rsplit(" ", 1)
    raw = bytearray(base64.b64decode(blob))
    raw[-1] ^= 1
    log.checkpoint = lambda: f"{body}\n\n{name} {base64.b64encode(bytes(raw)).decode()}\n"  # type: ignore[method-assign]
    with pytest.raises(AuditFailure):
        LogAuditor(log, log.vkey).verify()
