"""RFC 9162 (Certificate Transparency v2) Merkle tree hashing over a node store.

The release log is an append-only Merkle tree. Recomputing it from the leaves would cost O(n) per
request, so the log keeps the hashes of its *perfect* (complete) subtrees, addressed by
``(level, index)``: level 0 holds the leaf hashes, and node ``(l, i)`` covers the leaves
``[i * 2**l, (i + 1) * 2**l)``. A perfect subtree never changes once its last leaf is appended, so
every stored node is written exactly once, which is what lets the database refuse updates.

The RFC 9162 tree of a size that is not a power of two has nodes on its right edge that are *not*
perfect; they are never stored. Each is the hash of the O(log n) perfect subtrees its range
decomposes into, folded from the right, and is recomputed on demand.

Everything here is pure: the functions that need stored hashes first compute the addresses they
need (exposed as ``*_addresses``) and then ask a :class:`NodeReader` for all of them in one batch,
so that a database answers a whole proof with one query. Nothing here depends on ``keyserver``: the
offline auditor uses this module on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, TypeAlias

# Verification lives in its own module (the loader imports only that half); re-exported here.
from audit.merkle_verify import (
    EMPTY_ROOT,
    HASH_SIZE,
    MAX_TREE_SIZE,
    InvalidTreeRange,
    MerkleError,
    ProofError,
    _check_consistency_args,
    _check_inclusion_args,
    _consistency_start,
    _path_length,
    consistency_proof_length,
    leaf_hash,
    node_hash,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "Address",
    "Element",
    "InvalidTreeRange",
    "MemoryNodeStore",
    "MerkleError",
    "MissingNode",
    "NodeReader",
    "ProofError",
    "addresses_of",
    "append_read_addresses",
    "consistency_proof",
    "consistency_proof_addresses",
    "consistency_proof_length",
    "inclusion_proof",
    "inclusion_proof_addresses",
    "inclusion_proof_length",
    "leaf_hash",
    "node_hash",
    "nodes_to_store_on_append",
    "nodes_to_store_on_append_many",
    "root_addresses",
    "root_at",
    "root_from_inclusion_proof",
    "verify_consistency",
    "verify_inclusion",
]

Address: TypeAlias = tuple[int, int]
"""``(level, index)`` of a perfect subtree: it covers leaves ``[index << level, (index + 1) << level)``."""

Element: TypeAlias = tuple[Address, ...]
"""One hash of a proof, as the perfect subtrees (left to right) whose right fold it is.

A stored node is a 1-tuple; an ephemeral node on the right edge of the tree has several parts.
"""


class MissingNode(MerkleError):
    """The node store lacks a node that must exist: the store is incomplete or corrupt."""


class NodeReader(Protocol):
    """Read access to the stored perfect-subtree hashes.

    Implementations return the hashes they have for the requested addresses; an absent address is
    simply left out of the mapping (the caller turns that into :class:`MissingNode`). Callers pass
    all the addresses one operation needs at once, so that a database can answer in one query.
    """

    def get_nodes(self, addresses: Sequence[Address]) -> Mapping[Address, bytes]: ...


# --- hashing ----------------------------------------------------------------------------------


def _fold_right(hashes: Sequence[bytes]) -> bytes:
    # The RFC tree splits at the largest power of two below n, so a range that decomposes into
    # perfect subtrees of strictly decreasing size hashes as H(a, H(b, H(c, d))): a right fold.
    result = hashes[-1]
    for left in reversed(hashes[:-1]):
        result = node_hash(left, result)
    return result


# --- argument checks ---------------------------------------------------------------------------


def _check_tree_size(name: str, size: int) -> None:
    if size < 0 or size > MAX_TREE_SIZE:
        raise InvalidTreeRange(f"{name} {size} is outside [0, 2^64)")


# --- which perfect subtrees an operation needs (pure) -----------------------------------------


def _descending_subtrees(begin: int, count: int) -> Element:
    """Perfect subtrees covering ``[begin, begin + count)``, largest first.

    ``begin`` must be a multiple of the smallest power of two above ``count``; that holds for the
    whole tree (begin 0) and for every right-edge subtree of the RFC tree, the only ranges asked for.
    """
    nodes: list[Address] = []
    position = begin
    for level in range(count.bit_length() - 1, -1, -1):
        if count >> level & 1:
            nodes.append((level, position >> level))
            position += 1 << level
    return tuple(nodes)


def root_addresses(size: int) -> Element:
    """The perfect subtrees whose right fold is the root of the tree of ``size`` leaves.

    One per set bit of ``size``; empty for the empty tree (whose root is :data:`EMPTY_ROOT`).
    """
    _check_tree_size("tree size", size)
    return _descending_subtrees(0, size)


def append_read_addresses(size_before: int) -> Element:
    """The stored nodes that appending leaf number ``size_before`` hashes with.

    The new leaf completes one perfect subtree per trailing 1 bit of ``size_before``: each is the
    hash of an existing left sibling and the subtree just completed on its right.
    """
    _check_tree_size("tree size", size_before)
    if size_before == MAX_TREE_SIZE:
        raise InvalidTreeRange("the tree is full")
    addresses: list[Address] = []
    index, level = size_before, 0
    while index & 1:
        addresses.append((level, index - 1))
        index >>= 1
        level += 1
    return tuple(addresses)


def _path_elements(level: int, index: int, size: int) -> list[Element]:
    """Audit path of the perfect subtree ``(level, index)`` in the RFC tree of ``size`` leaves.

    Below level ``inner`` the path runs inside the perfect subtree that holds both the node and the
    tree's last leaf: siblings alternate sides per the bits of ``index``, and only the topmost of
    them can reach past ``size`` (it then is the ephemeral right edge, decomposed into perfect
    subtrees). Above, the node is on the right border of the tree and its siblings are the perfect
    left subtrees given by the remaining 1 bits of ``index``.
    """
    last = (size - 1) >> level
    inner = (index ^ last).bit_length()
    elements: list[Element] = []
    for step in range(inner):
        node_level = level + step
        sibling = (index >> step) ^ 1
        begin = sibling << node_level
        if begin + (1 << node_level) <= size:
            elements.append(((node_level, sibling),))
        else:
            elements.append(_descending_subtrees(begin, size - begin))
    border = index >> inner
    step = inner
    while border:
        if border & 1:
            elements.append(((level + step, border - 1),))
        border >>= 1
        step += 1
    return elements


def inclusion_proof_length(index: int, size: int) -> int:
    """Number of hashes in the inclusion proof of leaf ``index`` in a tree of ``size`` leaves."""
    _check_inclusion_args(index, size, InvalidTreeRange)
    return _path_length(0, index, size)


def inclusion_proof_addresses(index: int, size: int) -> list[Element]:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1, as the perfect subtrees each hash is made of."""
    _check_inclusion_args(index, size, InvalidTreeRange)
    return _path_elements(0, index, size)


def consistency_proof_addresses(first: int, second: int) -> list[Element]:
    """PROOF(first, D[second]) of RFC 9162 §2.1.4.1, as the perfect subtrees each hash is made of.

    Empty when ``first`` is 0 or equals ``second``: nothing needs proving then.
    """
    _check_consistency_args(first, second, InvalidTreeRange)
    if first in (0, second):
        return []
    level, index = _consistency_start(first)
    # When the first tree is itself perfect (index 0) the verifier already has its hash: the
    # checkpoint's root. RFC 9162 leaves it out of the proof.
    head: list[Element] = [] if index == 0 else [((level, index),)]
    return head + _path_elements(level, index, second)


def addresses_of(elements: Iterable[Element]) -> list[Address]:
    """Every address the elements need, each once, in first-use order: one batch for the store."""
    return list(dict.fromkeys(address for element in elements for address in element))


# --- reading from a store ----------------------------------------------------------------------


def _read(reader: NodeReader, addresses: Sequence[Address]) -> dict[Address, bytes]:
    if not addresses:
        return {}
    found = reader.get_nodes(addresses)
    nodes: dict[Address, bytes] = {}
    for address in addresses:
        value = found.get(address)
        if value is None:
            raise MissingNode(f"the node store has no node at (level, index) {address}")
        if len(value) != HASH_SIZE:
            raise MissingNode(f"the node store holds a {len(value)}-byte value at {address}")
        nodes[address] = bytes(value)
    return nodes


def _resolve(elements: Sequence[Element], reader: NodeReader) -> list[bytes]:
    nodes = _read(reader, addresses_of(elements))
    return [_fold_right([nodes[address] for address in element]) for element in elements]


def root_at(size: int, reader: NodeReader) -> bytes:
    """MTH(D[size]): the root of the first ``size`` leaves, from O(log n) stored nodes."""
    addresses = root_addresses(size)
    if not addresses:
        return EMPTY_ROOT
    return _resolve([addresses], reader)[0]


def inclusion_proof(index: int, size: int, reader: NodeReader) -> list[bytes]:
    """The RFC 9162 inclusion proof (audit path) of leaf ``index`` in the tree of ``size`` leaves."""
    return _resolve(inclusion_proof_addresses(index, size), reader)


def consistency_proof(first: int, second: int, reader: NodeReader) -> list[bytes]:
    """The RFC 9162 consistency proof between the trees of ``first`` and ``second`` leaves."""
    return _resolve(consistency_proof_addresses(first, second), reader)


# --- appending ---------------------------------------------------------------------------------


def _completed_nodes(index: int, hash_: bytes, nodes: Mapping[Address, bytes]) -> list[tuple[Address, bytes]]:
    """The leaf node ``(0, index)`` and every perfect subtree its arrival completes."""
    created = [((0, index), hash_)]
    level = 0
    while index & 1:
        hash_ = node_hash(nodes[(level, index - 1)], hash_)
        index >>= 1
        level += 1
        created.append(((level, index), hash_))
    return created


def nodes_to_store_on_append(
    size_before: int, entry: bytes, reader: NodeReader
) -> list[tuple[Address, bytes]]:
    """The nodes to write when ``entry`` becomes leaf number ``size_before``.

    Reads at most log2(n) nodes in one batch and returns at most log2(n) + 1 new ones, the first
    being the leaf hash at ``(0, size_before)``. None of them can already exist in a consistent store.
    """
    nodes = _read(reader, append_read_addresses(size_before))
    return _completed_nodes(size_before, leaf_hash(entry), nodes)


def nodes_to_store_on_append_many(
    size_before: int, entries: Sequence[bytes], reader: NodeReader
) -> list[tuple[Address, bytes]]:
    """The nodes to write when ``entries`` become leaves ``size_before``, ``size_before + 1``, ….

    Every left sibling the batch hashes with is either created by the batch or is one of the
    perfect subtrees that make up the tree before it (its root addresses), so one batched read of
    at most log2(n) nodes suffices, whatever the number of entries.
    """
    size_after = size_before + len(entries)
    _check_tree_size("tree size", size_before)
    _check_tree_size("tree size after the append", size_after)
    # A root-address node (l, i) is a left child (i is even); it is hashed only if the batch
    # completes its parent, which covers [i << l, (i + 2) << l).
    needed = [(level, i) for level, i in root_addresses(size_before) if (i + 2) << level <= size_after]
    nodes = _read(reader, needed)
    created: list[tuple[Address, bytes]] = []
    for offset, entry in enumerate(entries):
        new = _completed_nodes(size_before + offset, leaf_hash(entry), nodes)
        nodes.update(new)
        created.extend(new)
    return created


# --- an in-memory store ------------------------------------------------------------------------


class MemoryNodeStore:
    """A dict-backed :class:`NodeReader` with an append helper, for tests and the offline auditor.

    Like the database, it never overwrites a node: a second, different hash for an address means
    the append logic or the store is broken, and is refused.
    """

    def __init__(self) -> None:
        self._nodes: dict[Address, bytes] = {}
        self._size = 0

    @property
    def size(self) -> int:
        """Number of leaves appended so far."""
        return self._size

    def get_nodes(self, addresses: Sequence[Address]) -> dict[Address, bytes]:
        return {address: self._nodes[address] for address in addresses if address in self._nodes}

    def append(self, entry: bytes) -> int:
        """Append one entry; return its leaf index."""
        self._store(nodes_to_store_on_append(self._size, entry, self))
        self._size += 1
        return self._size - 1

    def extend(self, entries: Sequence[bytes]) -> None:
        """Append several entries with one batched read."""
        self._store(nodes_to_store_on_append_many(self._size, entries, self))
        self._size += len(entries)

    def root(self, size: int | None = None) -> bytes:
        """Root of the first ``size`` leaves (default: all of them)."""
        return root_at(self._bounded(size), self)

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return inclusion_proof(index, self._bounded(size), self)

    def consistency_proof(self, first: int, second: int | None = None) -> list[bytes]:
        return consistency_proof(first, self._bounded(second), self)

    def _bounded(self, size: int | None) -> int:
        if size is None:
            return self._size
        if size > self._size:
            raise InvalidTreeRange(f"tree size {size} is larger than the log ({self._size} entries)")
        return size

    def _store(self, nodes: Iterable[tuple[Address, bytes]]) -> None:
        for address, value in nodes:
            existing = self._nodes.get(address)
            if existing is not None and existing != value:
                raise MerkleError(f"refusing to overwrite node {address} with a different hash")
            self._nodes[address] = value
