"""The auditor's witness check (audit/witnessed.py): a cosigned checkpoint must be the history verified."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import Checkpoint, format_checkpoint, sign_checkpoint, vkey_for
from audit.cosignature import CosignaturePolicy, CosignerKey, cosign_checkpoint
from audit.merkle import MemoryNodeStore
from audit.verifier import AuditFailure
from audit.witnessed import CosignatureReport, check_cosigned

ORIGIN = "keyserver.example/acme"
NOW = datetime(2026, 12, 4, tzinfo=UTC)
LOG = Ed25519PrivateKey.generate()
WITNESSES = {f"w{i}.example": Ed25519PrivateKey.generate() for i in range(3)}
POLICY = CosignaturePolicy(
    tuple(CosignerKey.from_public_key(n, k.public_key()) for n, k in WITNESSES.items()), 2, timedelta(hours=1)
)


def tree(entries: list[bytes]) -> MemoryNodeStore:
    store = MemoryNodeStore()
    store.extend(entries)
    return store


def cosigned(store: MemoryNodeStore, size: int, by: int = 3, age: timedelta = timedelta(0)) -> str:
    checkpoint = Checkpoint(ORIGIN, size, store.root(size))
    note = sign_checkpoint(checkpoint, ORIGIN, LOG)
    stamp = int((NOW - age).timestamp())
    lines = [
        cosign_checkpoint(format_checkpoint(checkpoint), n, k, stamp) for n, k in list(WITNESSES.items())[:by]
    ]
    return note + "".join(lines)


def check(note: str, verified: MemoryNodeStore) -> CosignatureReport:
    head = Checkpoint(ORIGIN, verified.size, verified.root())
    return check_cosigned(
        note, vkey_for(ORIGIN, LOG.public_key()), POLICY, head, verified.consistency_proof, NOW
    )


HONEST = tree([b"e%d" % i for i in range(7)])


def test_a_cosigned_prefix_or_the_head_itself_passes() -> None:
    report = check(cosigned(HONEST, 7), HONEST)
    assert report.size == 7
    assert check(cosigned(HONEST, 4, by=2), HONEST).size == 4


def test_a_split_view_is_named() -> None:
    fork = tree([b"e0", b"e1", b"e2", b"forked", b"e4", b"e5", b"e6"])
    with pytest.raises(AuditFailure, match="split view"):
        check(cosigned(fork, 7), HONEST)  # same size, other root
    with pytest.raises(AuditFailure, match="split view"):
        check(cosigned(fork, 5), HONEST)  # smaller, not a prefix


def test_too_few_stale_or_larger_cosignatures_fail() -> None:
    with pytest.raises(AuditFailure, match="quorum"):
        check(cosigned(HONEST, 7, by=1), HONEST)
    with pytest.raises(AuditFailure, match="quorum"):
        check(cosigned(HONEST, 7, age=timedelta(hours=2)), HONEST)
    with pytest.raises(AuditFailure, match="larger"):
        check(cosigned(HONEST, 7), tree([b"e%d" % i for i in range(5)]))
    other_log = sign_checkpoint(Checkpoint(ORIGIN, 7, HONEST.root()), ORIGIN, Ed25519PrivateKey.generate())
    with pytest.raises(AuditFailure, match="log key"):
        check(other_log, HONEST)
