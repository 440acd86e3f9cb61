"""Verifying RFC 9162 (Certificate Transparency v2) Merkle proofs: inclusion and consistency.

The half of :mod:`audit.merkle` a verifier needs, and nothing that builds or stores a tree: the
trusted loader checks its release receipt's inclusion proof with it, and its measured image should
hold only what it runs. :mod:`audit.merkle` imports everything here and re-exports it, so callers of
either module see the same functions and the same exception classes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "InvalidTreeRange",
    "MerkleError",
    "ProofError",
    "consistency_proof_length",
    "leaf_hash",
    "node_hash",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
# Tree sizes and indices are unsigned 64-bit integers everywhere else (Go's uint64 in the other
# transparency-log implementations, the checkpoint's size line); refuse anything beyond so that a
# proof we accept is one every other verifier could check.
MAX_TREE_SIZE = 2**64 - 1

EMPTY_ROOT = hashlib.sha256(b"").digest()
"""MTH({}) = SHA-256() (RFC 9162 §2.1.1)."""

_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"


class MerkleError(Exception):
    """Base class of every error raised by this module."""


class ProofError(MerkleError):
    """A proof (or the sizes, indices and hashes given with it) does not verify."""


class InvalidTreeRange(MerkleError):
    """A proof or root was requested for an index or sizes that do not make sense."""


# --- hashing --------------------------------------------------------------------------------------


def leaf_hash(entry: bytes) -> bytes:
    """MTH({d}) = SHA-256(0x00 || d): the hash of one log entry."""
    return hashlib.sha256(_LEAF_PREFIX + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the hash of an interior node."""
    return hashlib.sha256(_NODE_PREFIX + left + right).digest()


def _check_hash(what: str, value: bytes) -> None:
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} is {len(value)} bytes long, a SHA-256 hash is {HASH_SIZE}")


# --- proof shapes ---------------------------------------------------------------------------------


def _path_length(level: int, index: int, size: int) -> int:
    inner = (index ^ ((size - 1) >> level)).bit_length()
    return inner + (index >> inner).bit_count()


def _check_inclusion_args(index: int, size: int, error: type[MerkleError]) -> None:
    if size < 0 or size > MAX_TREE_SIZE:
        raise error(f"tree size {size} is outside [0, 2^64)")
    if index < 0 or index >= size:
        raise error(f"leaf index {index} is not in a tree of size {size}")


def _consistency_start(first: int) -> tuple[int, int]:
    # The proof starts from the largest perfect subtree that ends where the first tree ends; every
    # later element is a sibling on that subtree's path to the root of the second tree.
    level = (first & -first).bit_length() - 1
    return level, (first >> level) - 1


def _check_consistency_args(first: int, second: int, error: type[MerkleError]) -> None:
    if first < 0 or second > MAX_TREE_SIZE:
        raise error(f"tree sizes {first} and {second} are outside [0, 2^64)")
    if first > second:
        raise error(f"first tree size {first} is larger than second tree size {second}")


def consistency_proof_length(first: int, second: int) -> int:
    """Number of hashes in the consistency proof between tree sizes ``first`` and ``second``."""
    _check_consistency_args(first, second, InvalidTreeRange)
    if first in (0, second):
        return 0
    level, index = _consistency_start(first)
    return (0 if index == 0 else 1) + _path_length(level, index, second)


# --- verification (RFC 9162 §2.1.3.2 and §2.1.4.2) ---------------------------------------------


def _shift_until_lsb_or_zero(fn: int, sn: int) -> tuple[int, int]:
    # Skips the levels where the node has no sibling: the ephemeral right edge of the tree.
    while not fn & 1 and fn != 0:
        fn >>= 1
        sn >>= 1
    return fn, sn


def root_from_inclusion_proof(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` leads to from ``leaf_hash`` at ``index`` (RFC 9162 §2.1.3.2 steps 1-4).

    Raises :class:`ProofError` if the proof cannot be a proof for that index and size at all.
    """
    _check_inclusion_args(index, size, ProofError)
    _check_hash("the leaf hash", leaf_hash)
    for position, element in enumerate(proof):
        _check_hash(f"inclusion proof hash #{position}", element)
    expected = _path_length(0, index, size)
    if len(proof) != expected:
        raise ProofError(
            f"inclusion proof has {len(proof)} hashes; leaf {index} of a tree of size {size} needs {expected}"
        )
    return _rfc9162_inclusion_root(leaf_hash, index, size, proof)


def _rfc9162_inclusion_root(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """RFC 9162 §2.1.3.2 steps 2-5, as written.

    The length check before it makes its sn tests redundant on purpose: either one alone rejects a
    proof of the wrong length.
    """
    fn, sn, r = index, size - 1, leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            fn, sn = _shift_until_lsb_or_zero(fn, sn)
        else:
            r = node_hash(r, p)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    return r


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that ``leaf_hash`` is leaf ``index`` of the tree of ``size`` leaves whose root is ``root``.

    Raises :class:`ProofError` on any failure, including index >= size and malformed hashes.
    """
    _check_hash("the root hash", root)
    computed = root_from_inclusion_proof(leaf_hash, index, size, proof)
    if computed != root:
        raise ProofError(f"inclusion proof for leaf {index} does not lead to the root of tree size {size}")


def verify_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree of ``second`` leaves (``second_root``) extends the one of ``first`` leaves.

    Implements RFC 9162 §2.1.4.2 for 0 < first < second. The RFC leaves the other cases out; here
    equal sizes need equal roots and an empty proof, and the empty tree (first == 0) needs the
    empty-tree root and an empty proof (stricter than transparency-dev/merkle, which ignores the
    first root then). Raises :class:`ProofError` on any failure.
    """
    _check_consistency_args(first, second, ProofError)
    _check_hash("the first root", first_root)
    _check_hash("the second root", second_root)
    for position, element in enumerate(proof):
        _check_hash(f"consistency proof hash #{position}", element)
    if first in (0, second):
        _verify_trivial_consistency(first, second, first_root, second_root, proof)
        return
    expected = consistency_proof_length(first, second)
    if len(proof) != expected:
        raise ProofError(
            f"consistency proof has {len(proof)} hashes; tree sizes {first} and {second} need {expected}"
        )
    fr, sr = _rfc9162_consistency_roots(first, second, first_root, proof)
    if fr != first_root:
        raise ProofError(f"consistency proof does not lead to the root of tree size {first}")
    if sr != second_root:
        raise ProofError(f"consistency proof does not lead to the root of tree size {second}")


def _verify_trivial_consistency(
    first: int, second: int, first_root: bytes, second_root: bytes, proof: Sequence[bytes]
) -> None:
    if proof:
        raise ProofError(f"consistency proof between sizes {first} and {second} must be empty")
    if first == 0 and first_root != EMPTY_ROOT:
        raise ProofError("the root of the empty tree must be SHA-256 of the empty string")
    if first == second and first_root != second_root:
        raise ProofError(f"two different roots for the same tree size {first}")


def _rfc9162_consistency_roots(
    first: int, second: int, first_root: bytes, proof: Sequence[bytes]
) -> tuple[bytes, bytes]:
    """RFC 9162 §2.1.4.2 steps 1-7 up to the root comparisons: the recomputed (first, second) roots.

    As written in the RFC; like the inclusion check, its sn tests and the length check before it
    each reject a proof of the wrong length on their own.
    """
    path = list(proof)
    if not path:
        raise ProofError("consistency proof is empty")
    if first & (first - 1) == 0:
        path.insert(0, first_root)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = node_hash(c, fr)
            sr = node_hash(c, sr)
            fn, sn = _shift_until_lsb_or_zero(fn, sn)
        else:
            sr = node_hash(sr, c)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path to the root")
    return fr, sr
