"""audit.merkle against published vectors and against a direct transcription of RFC 9162 §2.1."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from audit import merkle, merkle_verify
from audit.merkle import (
    EMPTY_ROOT,
    Address,
    InvalidTreeRange,
    MemoryNodeStore,
    MerkleError,
    MissingNode,
    ProofError,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from tests.fuzzing import fuzz_settings

pytestmark = pytest.mark.fuzz

DATA = Path(__file__).parent / "data" / "merkle"
MAX_EXHAUSTIVE = 64

# --- the oracle: RFC 9162 §2.1, transcribed as directly as possible ----------------------------


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


class Reference:
    """Recursive MTH / PATH / PROOF over a list of entries; slow and obviously right."""

    def __init__(self, entries: Sequence[bytes]) -> None:
        self.entries = list(entries)
        self.mth = cache(self._mth)

    def _mth(self, start: int, end: int) -> bytes:
        n = end - start
        if n == 0:
            return hashlib.sha256(b"").digest()
        if n == 1:
            return hashlib.sha256(b"\x00" + self.entries[start]).digest()
        k = _split(n)
        return hashlib.sha256(b"\x01" + self.mth(start, start + k) + self.mth(start + k, end)).digest()

    def path(self, m: int, start: int, end: int) -> list[bytes]:
        """PATH(m, D[start:end]) (RFC 9162 §2.1.3.1)."""
        n = end - start
        if n == 1:
            return []
        k = _split(n)
        if m < k:
            return [*self.path(m, start, start + k), self.mth(start + k, end)]
        return [*self.path(m - k, start + k, end), self.mth(start, start + k)]

    def subproof(self, m: int, start: int, end: int, whole: bool) -> list[bytes]:
        """SUBPROOF(m, D[start:end], b) (RFC 9162 §2.1.4.1)."""
        n = end - start
        if m == n:
            return [] if whole else [self.mth(start, end)]
        k = _split(n)
        if m <= k:
            return [*self.subproof(m, start, start + k, whole), self.mth(start + k, end)]
        return [*self.subproof(m - k, start + k, end, False), self.mth(start, start + k)]

    def inclusion(self, index: int, size: int) -> list[bytes]:
        return self.path(index, 0, size)

    def consistency(self, first: int, second: int) -> list[bytes]:
        return self.subproof(first, 0, second, True)


def _entry(i: int) -> bytes:
    return f"release-log-entry-{i}".encode()


@pytest.fixture(scope="module")
def small() -> tuple[MemoryNodeStore, Reference]:
    entries = [_entry(i) for i in range(MAX_EXHAUSTIVE)]
    store = MemoryNodeStore()
    for entry in entries:
        store.append(entry)
    return store, Reference(entries)


LARGE_SIZE = 1500
_LARGE_ENTRIES = [_entry(i) for i in range(LARGE_SIZE)]
_LARGE_STORE = MemoryNodeStore()
_LARGE_STORE.extend(_LARGE_ENTRIES)
_LARGE_REFERENCE = Reference(_LARGE_ENTRIES)


class CountingReader:
    """Wraps a NodeReader and records every batch it is asked for."""

    def __init__(self, inner: merkle.NodeReader) -> None:
        self.inner = inner
        self.batches: list[list[Address]] = []

    def get_nodes(self, addresses: Sequence[Address]) -> Mapping[Address, bytes]:
        self.batches.append(list(addresses))
        return self.inner.get_nodes(addresses)

    @property
    def reads(self) -> int:
        return sum(len(batch) for batch in self.batches)


# --- the oracle itself against the RFC 6962 reference vectors ---------------------------------


def _ct_vectors() -> dict[str, Any]:
    vectors: dict[str, Any] = json.loads((DATA / "ct_reference_vectors.json").read_text())
    return vectors


def _hexes(values: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(value) for value in values]


def test_hash_primitives_match_rfc_definitions() -> None:
    assert EMPTY_ROOT.hex() == _ct_vectors()["empty_root"]
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    assert node_hash(b"L" * 32, b"R" * 32) == hashlib.sha256(b"\x01" + b"L" * 32 + b"R" * 32).digest()


def test_reference_oracle_reproduces_published_roots_and_proofs() -> None:
    vectors = _ct_vectors()
    reference = Reference(_hexes(vectors["leaves"]))
    assert [reference.mth(0, n).hex() for n in range(1, 9)] == vectors["roots"]
    for case in vectors["inclusion"]:
        assert [h.hex() for h in reference.inclusion(case["leaf"] - 1, case["size"])] == case["proof"]
    for case in vectors["consistency"]:
        assert [h.hex() for h in reference.consistency(case["size1"], case["size2"])] == case["proof"]


# --- the node store against the published vectors ---------------------------------------------


@pytest.fixture(scope="module")
def ct_store() -> MemoryNodeStore:
    store = MemoryNodeStore()
    for leaf in _hexes(_ct_vectors()["leaves"]):
        store.append(leaf)
    return store


def test_store_roots_match_published_roots(ct_store: MemoryNodeStore) -> None:
    assert ct_store.root(0) == EMPTY_ROOT
    assert [ct_store.root(n).hex() for n in range(1, 9)] == _ct_vectors()["roots"]


@pytest.mark.parametrize("case", _ct_vectors()["inclusion"], ids=lambda c: f"leaf{c['leaf']}-size{c['size']}")
def test_store_inclusion_proofs_match_published(ct_store: MemoryNodeStore, case: dict[str, Any]) -> None:
    vectors = _ct_vectors()
    index, size = case["leaf"] - 1, case["size"]
    proof = ct_store.inclusion_proof(index, size)
    assert [h.hex() for h in proof] == case["proof"]
    leaf = leaf_hash(bytes.fromhex(vectors["leaves"][index]))
    verify_inclusion(leaf, index, size, proof, bytes.fromhex(vectors["roots"][size - 1]))


@pytest.mark.parametrize("case", _ct_vectors()["consistency"], ids=lambda c: f"{c['size1']}-{c['size2']}")
def test_store_consistency_proofs_match_published(ct_store: MemoryNodeStore, case: dict[str, Any]) -> None:
    roots = _hexes(_ct_vectors()["roots"])
    first, second = case["size1"], case["size2"]
    proof = ct_store.consistency_proof(first, second)
    assert [h.hex() for h in proof] == case["proof"]
    verify_consistency(first, second, roots[first - 1], roots[second - 1], proof)


def _probe_files(kind: str) -> list[Path]:
    files = sorted((DATA / "transparency-dev" / kind).glob("*/*.json"))
    assert files, f"no {kind} vectors found"
    return files


def _b64s(values: Sequence[str] | None) -> list[bytes]:
    return [base64.b64decode(value) for value in values or []]


@pytest.mark.parametrize("path", _probe_files("inclusion"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_transparency_dev_inclusion_probes(path: Path) -> None:
    probe = json.loads(path.read_text())
    args = (
        base64.b64decode(probe["leafHash"]),
        probe["leafIdx"],
        probe["treeSize"],
        _b64s(probe["proof"]),
        base64.b64decode(probe["root"]),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    else:
        verify_inclusion(*args)


@pytest.mark.parametrize("path", _probe_files("consistency"), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_transparency_dev_consistency_probes(path: Path) -> None:
    probe = json.loads(path.read_text())
    args = (
        probe["size1"],
        probe["size2"],
        base64.b64decode(probe["root1"]),
        base64.b64decode(probe["root2"]),
        _b64s(probe["proof"]),
    )
    if probe["wantErr"]:
        with pytest.raises(ProofError):
            verify_consistency(*args)
    else:
        verify_consistency(*args)


# --- corruptions: every one of them must be refused -------------------------------------------

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def _flip(value: bytes, bit: int) -> bytes:
    changed = bytearray(value)
    changed[bit // 8] ^= 1 << (bit % 8)
    return bytes(changed)


def _proof_corruptions(proof: Sequence[bytes], extra: bytes) -> Iterator[tuple[str, list[bytes]]]:
    """Altered proofs, none of which may verify: bit flips, dropped, added and swapped hashes."""
    proof = list(proof)
    for i, element in enumerate(proof):
        for bit in (0, 3, 4, 7, 8 * i + 5, 255):
            yield f"bit {bit} of #{i} flipped", [*proof[:i], _flip(element, bit), *proof[i + 1 :]]
        yield f"#{i} dropped", proof[:i] + proof[i + 1 :]
        yield f"#{i} duplicated", [*proof[: i + 1], element, *proof[i + 1 :]]
        yield f"#{i} replaced", [*proof[:i], SOME_HASH, *proof[i + 1 :]]
        for j in range(i + 1, len(proof)):
            if proof[i] != proof[j]:
                swapped = list(proof)
                swapped[i], swapped[j] = swapped[j], swapped[i]
                yield f"#{i} and #{j} swapped", swapped
    for where, value in (("garbage", SOME_HASH), ("extra", extra), ("empty-tree root", EMPTY_ROOT)):
        yield f"{where} appended", [*proof, value]
        yield f"{where} prepended", [value, *proof]


def _assert_inclusion_refused(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes, why: str
) -> None:
    try:
        verify_inclusion(leaf, index, size, proof, root)
    except ProofError:
        return
    pytest.fail(f"inclusion of {index} in {size} verified with {why}")


def _check_inclusion_corruptions(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> None:
    for why, bad in _proof_corruptions(proof, root):
        _assert_inclusion_refused(leaf, index, size, bad, root, why)
    # Another index: the direction pattern of a path identifies its leaf in a given tree.
    for other in range(size):
        if other != index:
            _assert_inclusion_refused(leaf, other, size, proof, root, f"index {other}")
    for bad_size in (size * 2, size // 2, 0):
        _assert_inclusion_refused(leaf, index, bad_size, proof, root, f"size {bad_size}")
    _assert_inclusion_refused(leaf, index + size, size, proof, root, "index beyond the tree")
    _assert_inclusion_refused(_flip(leaf, 0), index, size, proof, root, "another leaf")
    _assert_inclusion_refused(leaf, index, size, proof, _flip(root, 9), "another root")
    _assert_inclusion_refused(leaf, index, size, proof, EMPTY_ROOT, "the empty-tree root")


def _assert_consistency_refused(
    first: int, second: int, root1: bytes, root2: bytes, proof: list[bytes], why: str
) -> None:
    try:
        verify_consistency(first, second, root1, root2, proof)
    except ProofError:
        return
    pytest.fail(f"consistency {first}->{second} verified with {why}")


def _check_consistency_corruptions(
    first: int, second: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> None:
    for why, bad in _proof_corruptions(proof, root1):
        _assert_consistency_refused(first, second, root1, root2, bad, why)
    _assert_consistency_refused(first, second, _flip(root1, 0), root2, proof, "another first root")
    if first > 0:  # from the empty tree nothing is proved about the second root
        _assert_consistency_refused(first, second, root1, _flip(root2, 0), proof, "another second root")
    if root1 != root2:
        _assert_consistency_refused(first, second, root2, root1, proof, "swapped roots")
    if first < second:
        _assert_consistency_refused(second, first, root1, root2, proof, "swapped sizes")
    if 0 < first < second:
        _assert_consistency_refused(first, second, root1, root2, [], "an empty proof")
    for bad_first in {first - 1, first + 1, first ^ 2} - {first}:
        if 0 <= bad_first <= second and proof:
            _assert_consistency_refused(bad_first, second, root1, root2, proof, f"first size {bad_first}")
    if proof:
        for bad_second in (second * 2, second // 2):
            _assert_consistency_refused(first, bad_second, root1, root2, proof, f"second size {bad_second}")


@pytest.mark.parametrize("case", _ct_vectors()["inclusion"], ids=lambda c: f"leaf{c['leaf']}-size{c['size']}")
def test_corrupted_published_inclusion_proofs_fail(case: dict[str, Any]) -> None:
    vectors = _ct_vectors()
    index, size = case["leaf"] - 1, case["size"]
    leaf = leaf_hash(bytes.fromhex(vectors["leaves"][index]))
    root = bytes.fromhex(vectors["roots"][size - 1])
    _check_inclusion_corruptions(leaf, index, size, _hexes(case["proof"]), root)


@pytest.mark.parametrize("case", _ct_vectors()["consistency"], ids=lambda c: f"{c['size1']}-{c['size2']}")
def test_corrupted_published_consistency_proofs_fail(case: dict[str, Any]) -> None:
    roots = _hexes(_ct_vectors()["roots"])
    first, second = case["size1"], case["size2"]
    _check_consistency_corruptions(first, second, roots[first - 1], roots[second - 1], _hexes(case["proof"]))


# --- exhaustive: every size, index and pair up to MAX_EXHAUSTIVE ------------------------------


def test_store_root_equals_reference_for_every_size(small: tuple[MemoryNodeStore, Reference]) -> None:
    store, reference = small
    for size in range(MAX_EXHAUSTIVE + 1):
        assert store.root(size) == reference.mth(0, size), size


def test_every_inclusion_proof_matches_reference_and_resists_tampering(
    small: tuple[MemoryNodeStore, Reference],
) -> None:
    store, reference = small
    for size in range(1, MAX_EXHAUSTIVE + 1):
        root = reference.mth(0, size)
        for index in range(size):
            proof = store.inclusion_proof(index, size)
            assert proof == reference.inclusion(index, size), (index, size)
            assert len(proof) == merkle.inclusion_proof_length(index, size)
            leaf = leaf_hash(reference.entries[index])
            verify_inclusion(leaf, index, size, proof, root)
            _check_inclusion_corruptions(leaf, index, size, proof, root)


def test_every_consistency_proof_matches_reference_and_resists_tampering(
    small: tuple[MemoryNodeStore, Reference],
) -> None:
    store, reference = small
    for second in range(MAX_EXHAUSTIVE + 1):
        root2 = reference.mth(0, second)
        for first in range(second + 1):
            root1 = reference.mth(0, first)
            proof = store.consistency_proof(first, second)
            expected = reference.consistency(first, second) if first else []
            assert proof == expected, (first, second)
            assert len(proof) == merkle.consistency_proof_length(first, second)
            verify_consistency(first, second, root1, root2, proof)
            _check_consistency_corruptions(first, second, root1, root2, proof)


def test_inclusion_proof_of_one_size_is_refused_against_every_other_root(
    small: tuple[MemoryNodeStore, Reference],
) -> None:
    # The size a proof is checked at may coincide in shape with another size (leaf 0 has the same
    # path shape in trees of 5 to 8 leaves); what makes it fail is the root, which the signed
    # checkpoint binds to its size.
    store, reference = small
    for size in range(1, 33):
        for index in range(size):
            proof = store.inclusion_proof(index, size)
            leaf = leaf_hash(reference.entries[index])
            for other in range(index + 1, 33):
                if other != size:
                    _assert_inclusion_refused(
                        leaf, index, other, proof, reference.mth(0, other), f"size {other}"
                    )


def test_length_checks_alone_reject_wrong_lengths(small: tuple[MemoryNodeStore, Reference]) -> None:
    store, reference = small
    for size in range(1, MAX_EXHAUSTIVE + 1):
        for index in range(size):
            proof = store.inclusion_proof(index, size)
            leaf, root = leaf_hash(reference.entries[index]), reference.mth(0, size)
            for bad in ([*proof, SOME_HASH], proof[:-1] if proof else None):
                if bad is not None:
                    with pytest.raises(ProofError, match=rf"needs {len(proof)}$"):
                        verify_inclusion(leaf, index, size, bad, root)
        for first in range(1, size):
            proof = store.consistency_proof(first, size)
            roots = reference.mth(0, first), reference.mth(0, size)
            for bad in ([*proof, SOME_HASH], proof[:-1]):
                with pytest.raises(ProofError, match=rf"need {len(proof)}$"):
                    verify_consistency(first, size, *roots, bad)


def test_rfc9162_algorithms_alone_reject_wrong_lengths(small: tuple[MemoryNodeStore, Reference]) -> None:
    # The RFC's own sn tests, without the up-front length check in front of them.
    store, reference = small
    for size in range(1, MAX_EXHAUSTIVE + 1):
        for index in range(size):
            proof = store.inclusion_proof(index, size)
            leaf = leaf_hash(reference.entries[index])
            assert merkle_verify._rfc9162_inclusion_root(leaf, index, size, proof) == reference.mth(0, size)
            with pytest.raises(ProofError, match="longer"):
                merkle_verify._rfc9162_inclusion_root(leaf, index, size, [*proof, SOME_HASH])
            if proof:
                with pytest.raises(ProofError, match="shorter"):
                    merkle_verify._rfc9162_inclusion_root(leaf, index, size, proof[:-1])
        for first in range(1, size):
            proof = store.consistency_proof(first, size)
            first_root = reference.mth(0, first)
            roots = merkle_verify._rfc9162_consistency_roots(first, size, first_root, proof)
            assert roots == (first_root, reference.mth(0, size))
            with pytest.raises(ProofError, match="longer"):
                merkle_verify._rfc9162_consistency_roots(first, size, first_root, [*proof, SOME_HASH])
            with pytest.raises(ProofError, match=r"shorter|empty"):
                merkle_verify._rfc9162_consistency_roots(first, size, first_root, proof[:-1])


# --- property-based, on a larger tree ----------------------------------------------------------


@fuzz_settings(300)
@given(data=st.data())
def test_large_tree_proofs_match_reference(data: st.DataObject) -> None:
    size = data.draw(st.integers(1, LARGE_SIZE), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    first = data.draw(st.integers(0, size), label="first")
    root = _LARGE_REFERENCE.mth(0, size)
    assert _LARGE_STORE.root(size) == root
    proof = _LARGE_STORE.inclusion_proof(index, size)
    assert proof == _LARGE_REFERENCE.inclusion(index, size)
    verify_inclusion(leaf_hash(_LARGE_ENTRIES[index]), index, size, proof, root)
    consistency = _LARGE_STORE.consistency_proof(first, size)
    assert consistency == (_LARGE_REFERENCE.consistency(first, size) if first else [])
    verify_consistency(first, size, _LARGE_REFERENCE.mth(0, first), root, consistency)


@fuzz_settings(300)
@given(data=st.data())
def test_any_single_bit_flip_in_a_proof_is_refused(data: st.DataObject) -> None:
    size = data.draw(st.integers(2, LARGE_SIZE), label="size")
    index = data.draw(st.integers(0, size - 1), label="index")
    first = data.draw(st.integers(1, size - 1), label="first")
    root = _LARGE_REFERENCE.mth(0, size)
    proof = _LARGE_STORE.inclusion_proof(index, size)
    position = data.draw(st.integers(0, len(proof) - 1), label="position")
    bit = data.draw(st.integers(0, 255), label="bit")
    proof[position] = _flip(proof[position], bit)
    with pytest.raises(ProofError):
        verify_inclusion(leaf_hash(_LARGE_ENTRIES[index]), index, size, proof, root)
    consistency = _LARGE_STORE.consistency_proof(first, size)
    position = data.draw(st.integers(0, len(consistency) - 1), label="consistency position")
    consistency[position] = _flip(consistency[position], bit)
    with pytest.raises(ProofError):
        verify_consistency(first, size, _LARGE_REFERENCE.mth(0, first), root, consistency)


@fuzz_settings(100)
@given(
    entries=st.lists(st.binary(max_size=40), max_size=80),
    cuts=st.lists(st.integers(0, 80), max_size=6),
)
def test_batched_appends_equal_single_appends(entries: list[bytes], cuts: list[int]) -> None:
    one_by_one = MemoryNodeStore()
    for entry in entries:
        one_by_one.append(entry)
    batched = MemoryNodeStore()
    bounds = sorted({0, len(entries), *(min(cut, len(entries)) for cut in cuts)})
    for start, end in itertools.pairwise(bounds):
        batched.extend(entries[start:end])
    addresses = _perfect_subtrees(len(entries))
    expected = one_by_one.get_nodes(addresses)
    assert len(expected) == len(addresses)
    assert batched.get_nodes(addresses) == expected
    assert batched.root() == Reference(entries).mth(0, len(entries))


def _perfect_subtrees(size: int) -> list[Address]:
    return [(level, index) for level in range(size.bit_length()) for index in range(size >> level)]


# --- efficiency: how many nodes each operation touches ----------------------------------------


def _trailing_ones(n: int) -> int:
    count = 0
    while n & 1:
        count += 1
        n >>= 1
    return count


def test_append_reads_and_writes_only_log_n_nodes() -> None:
    store = MemoryNodeStore()
    written: list[Address] = []
    for size in range(2048):
        reader = CountingReader(store)
        created = merkle.nodes_to_store_on_append(size, _entry(size), reader)
        # One node per level the new leaf completes, plus the leaf itself: <= log2(n) + 1.
        assert len(created) == 1 + _trailing_ones(size)
        assert reader.reads == _trailing_ones(size) <= max(size.bit_length(), 1)
        assert len(reader.batches) == (1 if _trailing_ones(size) else 0)
        assert created[0] == ((0, size), leaf_hash(_entry(size)))
        assert not store.get_nodes([address for address, _ in created]), "append rewrote a node"
        store.append(_entry(size))
        assert store.get_nodes([address for address, _ in created]) == dict(created)
        written.extend(address for address, _ in created)
    # Every perfect subtree of the final tree was written exactly once, and nothing else.
    assert sorted(written) == sorted(_perfect_subtrees(2048))


def test_batched_append_reads_one_batch_of_root_nodes() -> None:
    store = MemoryNodeStore()
    store.extend([_entry(i) for i in range(1000)])
    for batch_size in (0, 1, 7, 24, 100, 3000):
        reader = CountingReader(store)
        created = merkle.nodes_to_store_on_append_many(1000, [b"x"] * batch_size, reader)
        assert len(reader.batches) <= 1
        assert set(reader.batches[0] if reader.batches else []) <= set(merkle.root_addresses(1000))
        assert len(created) >= batch_size
    reader = CountingReader(store)
    assert merkle.nodes_to_store_on_append_many(1000, [], reader) == []
    assert reader.batches == []


@pytest.mark.parametrize(
    ("operation", "bound"),
    [
        (lambda r, i, n: merkle.inclusion_proof(i, n, r), lambda n: 2 * n.bit_length()),
        (lambda r, i, n: merkle.consistency_proof(i, n, r), lambda n: 2 * n.bit_length() + 1),
        (lambda r, i, n: merkle.root_at(n, r), lambda n: n.bit_length()),
    ],
    ids=["inclusion", "consistency", "root"],
)
def test_reads_are_one_batch_of_log_n_nodes(
    operation: Callable[[CountingReader, int, int], object], bound: Callable[[int], int]
) -> None:
    for size in [*range(1, 130), 1000, 1023, 1024, 1025, LARGE_SIZE]:
        for index in {0, 1, size // 3, size // 2, size - 2, size - 1} & set(range(size)):
            reader = CountingReader(_LARGE_STORE)
            operation(reader, index, size)
            assert len(reader.batches) <= 1, (size, index)
            assert reader.reads <= bound(size), (size, index, reader.reads)
            assert all(len(set(batch)) == len(batch) for batch in reader.batches)


def test_right_edge_of_a_tree_is_never_a_stored_node() -> None:
    # size 7: the root is H((2,0), H((1,2), (0,6))); [4,8) is not perfect and must not be read.
    assert merkle.root_addresses(7) == ((2, 0), (1, 2), (0, 6))
    assert merkle.inclusion_proof_addresses(0, 7) == [((0, 1),), ((1, 1),), ((1, 2), (0, 6))]
    assert merkle.consistency_proof_addresses(6, 7) == [((1, 2),), ((0, 6),), ((2, 0),)]
    assert merkle.consistency_proof_addresses(4, 7) == [((1, 2), (0, 6))]
    assert merkle.addresses_of([((1, 2), (0, 6)), ((1, 2),)]) == [(1, 2), (0, 6)]


# --- argument checking and store integrity -----------------------------------------------------


@pytest.mark.parametrize(("index", "size"), [(0, 0), (1, 1), (5, 3), (-1, 4), (0, -1), (0, 2**64)])
def test_inclusion_proof_refuses_impossible_requests(index: int, size: int) -> None:
    with pytest.raises(InvalidTreeRange):
        merkle.inclusion_proof_addresses(index, size)
    with pytest.raises(ProofError):
        verify_inclusion(EMPTY_ROOT, index, size, [], EMPTY_ROOT)


@pytest.mark.parametrize(("first", "second"), [(3, 2), (-1, 4), (1, 0), (0, 2**64)])
def test_consistency_proof_refuses_impossible_requests(first: int, second: int) -> None:
    with pytest.raises(InvalidTreeRange):
        merkle.consistency_proof_addresses(first, second)
    with pytest.raises(ProofError):
        verify_consistency(first, second, EMPTY_ROOT, EMPTY_ROOT, [])


def test_trivial_consistency_cases() -> None:
    root = leaf_hash(b"a")
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    verify_consistency(0, 5, EMPTY_ROOT, SOME_HASH, [])
    verify_consistency(3, 3, root, root, [])
    cases = [
        (0, 5, root, SOME_HASH, []),  # the empty tree has only one root
        (0, 0, EMPTY_ROOT, SOME_HASH, []),
        (3, 3, root, SOME_HASH, []),  # same size, different roots: the log forked
        (3, 3, root, root, [root]),  # nothing to prove, so nothing may be sent
        (0, 5, EMPTY_ROOT, SOME_HASH, [SOME_HASH]),
    ]
    for first, second, root1, root2, proof in cases:
        with pytest.raises(ProofError):
            verify_consistency(first, second, root1, root2, proof)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_hashes_of_the_wrong_length_are_refused(length: int) -> None:
    store = MemoryNodeStore()
    store.extend([_entry(i) for i in range(6)])
    leaf, root = leaf_hash(_entry(2)), store.root()
    proof = store.inclusion_proof(2, 6)
    bad = b"\x00" * length
    for args in (
        (bad, 2, 6, proof, root),
        (leaf, 2, 6, proof, bad),
        (leaf, 2, 6, [*proof[:-1], bad], root),
    ):
        with pytest.raises(ProofError):
            verify_inclusion(*args)
    consistency = store.consistency_proof(3, 6)
    with pytest.raises(ProofError):
        verify_consistency(3, 6, store.root(3), root, [*consistency[:-1], bad])
    # With nothing to hash, only the length check stands between a malformed value and acceptance.
    with pytest.raises(ProofError, match="SHA-256 hash"):
        verify_inclusion(bad, 0, 1, [], bad)
    with pytest.raises(ProofError, match="SHA-256 hash"):
        verify_consistency(3, 3, bad, bad, [])
    with pytest.raises(ProofError):
        verify_consistency(3, 6, bad, root, consistency)


def test_missing_or_corrupt_nodes_fail_closed() -> None:
    store = MemoryNodeStore()
    store.extend([_entry(i) for i in range(5)])
    with pytest.raises(MissingNode):
        merkle.root_at(9, store)
    with pytest.raises(InvalidTreeRange):
        store.root(9)

    class Truncating:
        def get_nodes(self, addresses: Sequence[Address]) -> Mapping[Address, bytes]:
            return {address: b"short" for address in addresses}

    with pytest.raises(MissingNode):
        merkle.inclusion_proof(0, 5, Truncating())


def test_store_refuses_to_overwrite_a_node() -> None:
    store = MemoryNodeStore()
    store.extend([b"a", b"b"])
    with pytest.raises(MerkleError):
        store._store([((0, 1), leaf_hash(b"not b"))])
    store._store([((0, 1), leaf_hash(b"b"))])  # rewriting the same hash is harmless
    assert store.root() == Reference([b"a", b"b"]).mth(0, 2)


def test_the_verify_only_module_is_the_same_code_merkle_exports() -> None:
    # The loader imports audit.merkle_verify alone; the server audit.merkle. One implementation, one set
    # of exception classes: a ProofError from either is caught as the other's.
    for name in merkle_verify.__all__:
        assert getattr(merkle, name) is getattr(merkle_verify, name), name
    for name in merkle.__all__:
        assert hasattr(merkle, name), name
