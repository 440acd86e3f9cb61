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
from audit.entry import EntryError, canonical_bytes, decode_entry
from audit.verifier import AuditFailure, CompactRange, LogAuditor, VerifiedHistory
from tests.fuzzing import fuzz_settings
from tests.test_log_entry import HOSTILE_ENTRIES, hostile_bytes

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

    def add_raw(self, data: bytes) -> None:
        """Log bytes as they are: a hostile log commits to whatever it likes."""
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


@pytest.mark.parametrize("name", sorted(HOSTILE_ENTRIES))
def test_a_hostile_entry_fails_the_audit_naming_its_index(name: str) -> None:
    """The log signs a tree over a hostile entry: the audit fails on that entry, with its index."""
    data, reason = HOSTILE_ENTRIES[name]
    log = MemoryLog()
    log.add(*(release(n) for n in range(5)))
    log.add_raw(data)
    log.add(release(6))
    with pytest.raises(AuditFailure, match=f"entry 5 is not a canonical log entry: .*{reason}") as failure:
        LogAuditor(log, log.vkey).verify()
    assert failure.value.entry_index == 5


@given(st.lists(hostile_bytes, min_size=1, max_size=4), st.integers(min_value=0, max_value=3))
@fuzz_settings(60)
def test_any_bytes_as_entries_verify_or_fail_naming_the_first_bad_one(
    entries: list[bytes], honest_before: int
) -> None:
    log = MemoryLog()
    log.add(*(release(n) for n in range(honest_before)))
    for data in entries:
        log.add_raw(data)
    first_bad = next((honest_before + n for n, data in enumerate(entries) if not decodes(data)), None)
    if first_bad is None:
        assert LogAuditor(log, log.vkey).verify().checkpoint.size == honest_before + len(entries)
        return
    with pytest.raises(AuditFailure, match=f"^entry {first_bad} is not a canonical log entry") as failure:
        LogAuditor(log, log.vkey).verify()
    assert failure.value.entry_index == first_bad


def decodes(data: bytes) -> bool:
    try:
        decode_entry(data)
    except EntryError:
        return False
    return True


def history_of(log: MemoryLog) -> VerifiedHistory:
    auditor = LogAuditor(log, log.vkey, keep_leaf_hashes=True)
    report = auditor.verify()
    assert auditor.leaf_hashes is not None
    return VerifiedHistory(report.checkpoint, bytes(auditor.leaf_hashes))


def test_a_rewrite_re_signed_by_the_log_is_caught_only_with_what_an_earlier_run_verified() -> None:
    """The log rewrites entry 2, rebuilds its tree, and signs it: a fresh auditor sees a consistent log;
    one holding the earlier run's checkpoint and leaf hashes names entry 2."""
    honest = MemoryLog()
    honest.add(*(release(n) for n in range(10)))
    earlier = history_of(honest)
    saved = honest.signed()
    rewritten = MemoryLog(honest.key)
    rewritten.add(*(release(n) if n != 2 else release(2, "denied") for n in range(12)))

    assert LogAuditor(rewritten, rewritten.vkey).verify().checkpoint.size == 12  # what a forgetful one sees

    auditor = LogAuditor(rewritten, rewritten.vkey)
    auditor.earlier = earlier
    with pytest.raises(AuditFailure, match=r"entry 2 was rewritten: .* verified at size 10") as failure:
        auditor.verify(saved)
    assert failure.value.entry_index == 2


def test_an_earlier_run_of_an_honest_log_verifies_and_its_history_grows(log: MemoryLog) -> None:
    earlier = history_of(log)
    log.add(release(600), release(601))
    auditor = LogAuditor(log, log.vkey, keep_leaf_hashes=True)
    auditor.earlier = earlier
    seen: list[int] = []
    auditor.on_entry = lambda index, _entry, _data: seen.append(index)
    report = auditor.verify()
    assert report.checkpoint.size == 26
    assert auditor.leaf_hashes is not None
    assert bytes(auditor.leaf_hashes[: len(earlier.leaf_hashes)]) == earlier.leaf_hashes
    assert seen == list(range(26))  # every entry is verified again; the CLI announces only new ones


def test_verified_history_needs_one_leaf_hash_per_entry(log: MemoryLog) -> None:
    earlier = history_of(log)
    with pytest.raises(ValueError, match="leaf hashes"):
        VerifiedHistory(earlier.checkpoint, earlier.leaf_hashes[:-1])
