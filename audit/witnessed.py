"""The auditor's check of the log's witnesses: the latest cosigned checkpoint is the history it verified.

A keyserver keeps the largest checkpoint of a tenant's log that a quorum of its witnesses cosigned
(``GET …/log/checkpoint/cosigned``). Given the witnesses *the auditor* trusts (their keys and a quorum,
never taken from the keyserver), :func:`check_cosigned` verifies that checkpoint's log signature and its
cosignatures, and that it is a prefix of the tree the auditor has just rebuilt from every entry: the same
root at the same size, or a consistency proof to it. A log that showed its witnesses (and so its loaders)
one history and this auditor another fails here. Nothing here depends on ``keyserver``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from audit import merkle
from audit.checkpoint import Checkpoint, CheckpointError, verify_checkpoint
from audit.cosignature import CosignaturePolicy, VerifiedCosignature, require_quorum
from audit.verifier import AuditFailure

ConsistencyProof = Callable[[int, int], Sequence[bytes]]


@dataclass(frozen=True)
class CosignatureReport:
    size: int
    quorum: int
    cosignatures: tuple[VerifiedCosignature, ...]

    def as_json(self) -> dict[str, Any]:
        return {
            "cosigned_size": self.size,
            "quorum": self.quorum,
            "cosigners": {c.cosigner: c.time.isoformat().replace("+00:00", "Z") for c in self.cosignatures},
        }

    def summary(self) -> str:
        names = ", ".join(sorted(c.cosigner for c in self.cosignatures))
        return f"cosigned at size {self.size} by {len(self.cosignatures)} (quorum {self.quorum}): {names}"


def check_cosigned(
    note: str,
    verifier_key: str,
    policy: CosignaturePolicy,
    verified: Checkpoint,
    consistency_proof: ConsistencyProof,
    now: datetime,
) -> CosignatureReport:
    """The witnesses' cosignatures on ``note``, once it is shown to be part of the ``verified`` tree."""
    try:
        cosigned = verify_checkpoint(note, verifier_key)
    except CheckpointError as exc:
        raise AuditFailure(f"the cosigned checkpoint does not verify under the log key: {exc}") from None
    try:
        cosignatures = require_quorum(note, policy, now)
    except CheckpointError as exc:
        raise AuditFailure(f"the cosigned checkpoint lacks its witness quorum: {exc}") from None
    if cosigned.size > verified.size:
        raise AuditFailure(
            f"the witnesses cosigned size {cosigned.size}, larger than the {verified.size} entries verified"
        )
    if cosigned.size == verified.size:
        if cosigned.root_hash != verified.root_hash:
            raise AuditFailure(f"split view: the witnesses cosigned another root at size {cosigned.size}")
    elif cosigned.size > 0:
        try:
            merkle.verify_consistency(
                cosigned.size,
                verified.size,
                cosigned.root_hash,
                verified.root_hash,
                list(consistency_proof(cosigned.size, verified.size)),
            )
        except merkle.MerkleError as exc:
            raise AuditFailure(
                f"split view: what the witnesses cosigned at size {cosigned.size} is not a prefix of the"
                f" verified log ({exc})"
            ) from None
    return CosignatureReport(cosigned.size, policy.quorum, tuple(cosignatures))
