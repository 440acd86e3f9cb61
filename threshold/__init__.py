"""k-of-n release of a data key: Shamir shares over GF(2^8) bound to the key's identity (docs/threshold.md).

A pure package (the standard library only), so that the owner's tools, the SDK and the loader share it.
"""

from __future__ import annotations

from threshold.shares import (
    MAX_KEY_LENGTH,
    MIN_KEY_LENGTH,
    CommitmentMismatch,
    DuplicateShare,
    InvalidParameters,
    KeyCommitment,
    KeyIdentity,
    MalformedCommitment,
    MalformedShare,
    NotEnoughShares,
    Share,
    ShareParametersMismatch,
    ThresholdError,
    WrongIdentity,
    combine,
    share_index,
    split,
    wipe,
)

__all__ = [
    "MAX_KEY_LENGTH",
    "MIN_KEY_LENGTH",
    "CommitmentMismatch",
    "DuplicateShare",
    "InvalidParameters",
    "KeyCommitment",
    "KeyIdentity",
    "MalformedCommitment",
    "MalformedShare",
    "NotEnoughShares",
    "Share",
    "ShareParametersMismatch",
    "ThresholdError",
    "WrongIdentity",
    "combine",
    "share_index",
    "split",
    "wipe",
]
