"""The offline auditor: verify a tenant's release log with nothing but the log's public key.

It fetches the signed checkpoint, every entry and a sample of the log's own proofs through a
:class:`LogSource`, and checks that:

1. the checkpoint is signed by the pinned key (and names that key's log);
2. every entry's bytes are canonical (audit.entry) and the tree built from them has the checkpoint's
   root — the log cannot show an auditor one history and sign another;
3. a previously saved checkpoint is consistent with the new one: the same key signed it, it is not
   larger, the recomputed tree had its root at its size, and the log's own consistency proof verifies —
   the log only ever grew;
4. the log's inclusion proofs (which loaders check in their release receipts) verify for a sample of
   entries, including the newest;
5. given what an earlier run verified (:class:`VerifiedHistory`, a monitor's saved state: audit.state),
   every entry it covered is served again with the same leaf hash — a rewritten entry is named.

Failures raise :class:`AuditFailure` saying which check failed (and which entry, when it is about one).
Nothing here depends on ``keyserver``.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from audit import merkle
from audit.checkpoint import Checkpoint, CheckpointError, verify_checkpoint
from audit.entry import EntryError, decode_entry

PAGE_SIZE = 1000
INCLUSION_SAMPLES = 8

Progress = Callable[[int, int], None]
# on_entry(index, decoded entry, the entry's canonical bytes as served and hashed)
EntryCallback = Callable[[int, dict[str, Any], bytes], None]


class AuditFailure(Exception):
    """The log failed a check: it is inconsistent, forged, or not the log the key belongs to.

    ``entry_index`` names the entry at fault when the failure is about one entry.
    """

    def __init__(self, message: str, *, entry_index: int | None = None) -> None:
        super().__init__(message)
        self.entry_index = entry_index


class LogSource(Protocol):
    """Where the auditor reads a log from (HTTP in practice; see audit.http)."""

    def checkpoint(self) -> str: ...

    def entries(self, start: int, end: int) -> Sequence[bytes]: ...

    def inclusion_proof(self, index: int, tree_size: int) -> Sequence[bytes]: ...

    def consistency_proof(self, first: int, second: int) -> Sequence[bytes]: ...


@dataclass
class AuditReport:
    checkpoint: Checkpoint
    signed_checkpoint: str
    entries_checked: int
    kinds: Counter[str] = field(default_factory=Counter)
    # decisions["<key name>"] = Counter({"granted": n, "denied": m})
    decisions: dict[str, Counter[str]] = field(default_factory=dict)
    previous_size: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "origin": self.checkpoint.origin,
            "tree_size": self.checkpoint.size,
            "root_hash": self.checkpoint.root_hash.hex(),
            "entries_checked": self.entries_checked,
            "consistent_with_size": self.previous_size,
            "kinds": dict(self.kinds),
            "decisions_by_key": {key: dict(counts) for key, counts in sorted(self.decisions.items())},
        }


@dataclass(frozen=True)
class VerifiedHistory:
    """A checkpoint an earlier run verified, with the leaf hash of every entry it covers (in order)."""

    checkpoint: Checkpoint
    leaf_hashes: bytes

    def __post_init__(self) -> None:
        if len(self.leaf_hashes) != self.checkpoint.size * merkle.HASH_SIZE:
            raise ValueError(f"{self.checkpoint.size} entries need {self.checkpoint.size} leaf hashes")

    def leaf_hash(self, index: int) -> bytes:
        return self.leaf_hashes[index * merkle.HASH_SIZE : (index + 1) * merkle.HASH_SIZE]


class CompactRange:
    """The right edge of a Merkle tree: one perfect-subtree hash per set bit of its size.

    Enough to compute the root and to keep appending, in O(log n) memory: an auditor of a log of
    millions of entries holds a few dozen hashes, not the tree.
    """

    def __init__(self) -> None:
        self.size = 0
        self._peaks: list[bytes] = []  # largest subtree first

    def append(self, leaf: bytes) -> None:
        node, size = leaf, self.size
        while size & 1:
            node = merkle.node_hash(self._peaks.pop(), node)
            size >>= 1
        self._peaks.append(node)
        self.size += 1

    def root(self) -> bytes:
        if not self._peaks:
            return merkle.EMPTY_ROOT
        root = self._peaks[-1]
        for peak in reversed(self._peaks[:-1]):
            root = merkle.node_hash(peak, root)
        return root


class LogAuditor:
    """Verifies a log, and keeps its compact range so that a monitor only fetches what is new."""

    def __init__(
        self,
        source: LogSource,
        verifier_key: str,
        *,
        progress: Progress | None = None,
        keep_leaf_hashes: bool = False,
    ) -> None:
        self.source = source
        self.verifier_key = verifier_key
        self.progress = progress
        self.tree = CompactRange()
        self.kinds: Counter[str] = Counter()
        self.decisions: dict[str, Counter[str]] = {}
        self.last: Checkpoint | None = None
        self.on_entry: EntryCallback | None = None
        # The leaf hash of every entry verified so far (32 bytes each), for a monitor's saved state; kept
        # only when asked for, so that a one-off audit stays in O(log n) memory.
        self.leaf_hashes: bytearray | None = bytearray() if keep_leaf_hashes else None
        # What an earlier run verified (a monitor's saved state): each entry served again must hash the same.
        self.earlier: VerifiedHistory | None = None

    def verify(self, previous_signed_checkpoint: str | None = None) -> AuditReport:
        signed = self.source.checkpoint()
        checkpoint = self._open(signed, "the log's current checkpoint")
        previous = self.last
        if previous_signed_checkpoint is not None:
            previous = self._open(previous_signed_checkpoint, "the saved checkpoint")
        if previous is not None and previous.size > checkpoint.size:
            raise AuditFailure(
                f"the log went backwards: it now signs size {checkpoint.size}, but size {previous.size} was"
                " signed before"
            )
        start = self.tree.size
        if start > checkpoint.size:
            raise AuditFailure("the log shrank below the entries this auditor already verified")
        if previous is not None and previous.size < start and previous != self.last:
            raise AuditFailure("a saved checkpoint older than this monitor's own state cannot be rechecked")
        sample = self._sample(start, checkpoint.size)
        leaves, previous_root = self._ingest(start, checkpoint.size, sample, previous)
        if self.tree.root() != checkpoint.root_hash:
            raise AuditFailure(
                f"the entries served do not hash to the signed root at size {checkpoint.size}: the log"
                " shows a different history from the one it signed"
            )
        if previous is not None and previous.size > 0:
            if previous_root is not None and previous_root != previous.root_hash:
                raise AuditFailure(
                    f"the saved checkpoint's root at size {previous.size} is not the root of the entries"
                    " now served: the log rewrote its history"
                )
            self._check_consistency(previous, checkpoint)
        self._check_inclusion(leaves, checkpoint)
        self.last = checkpoint
        return AuditReport(
            checkpoint=checkpoint,
            signed_checkpoint=signed,
            entries_checked=checkpoint.size - start,
            kinds=Counter(self.kinds),
            decisions={key: Counter(counts) for key, counts in self.decisions.items()},
            previous_size=None if previous is None else previous.size,
        )

    # --- internals ---------------------------------------------------------------------------------

    def _open(self, signed: str, what: str) -> Checkpoint:
        try:
            return verify_checkpoint(signed, self.verifier_key)
        except CheckpointError as exc:
            raise AuditFailure(f"{what} does not verify with the pinned log key: {exc}") from None

    @staticmethod
    def _sample(start: int, end: int) -> set[int]:
        """Entries whose inclusion proofs are checked: the newest, and a few picked at random."""
        if end <= start:
            return set()
        # Unpredictable to the log: it must not know which proofs will be checked.
        rng = random.SystemRandom()
        return {end - 1, *rng.sample(range(start, end), min(INCLUSION_SAMPLES, end - start))}

    def _ingest(
        self, start: int, end: int, sample: set[int], previous: Checkpoint | None
    ) -> tuple[dict[int, bytes], bytes | None]:
        leaves: dict[int, bytes] = {}
        previous_root = self.tree.root() if previous is not None and previous.size == start else None
        for page_start in range(start, end, PAGE_SIZE):
            page_end = min(page_start + PAGE_SIZE, end)
            page = self.source.entries(page_start, page_end)
            if len(page) != page_end - page_start:
                raise AuditFailure(f"asked for entries [{page_start}, {page_end}) and got {len(page)}")
            for offset, data in enumerate(page):
                index = page_start + offset
                leaf = merkle.leaf_hash(data)
                self._check_against_earlier_run(index, leaf)
                self._record(index, data)
                self.tree.append(leaf)
                if self.leaf_hashes is not None:
                    self.leaf_hashes += leaf
                if index in sample:
                    leaves[index] = leaf
                if previous is not None and self.tree.size == previous.size:
                    previous_root = self.tree.root()
            if self.progress is not None:
                self.progress(page_end, end)
        return leaves, previous_root

    def _check_against_earlier_run(self, index: int, leaf: bytes) -> None:
        if self.earlier is None or index >= self.earlier.checkpoint.size:
            return
        known = self.earlier.leaf_hash(index)
        if known != leaf:
            raise AuditFailure(
                f"entry {index} was rewritten: the log now serves an entry with leaf hash {leaf.hex()}, but"
                f" entry {index} had leaf hash {known.hex()} when the log was verified at size"
                f" {self.earlier.checkpoint.size} (root {self.earlier.checkpoint.root_hash.hex()}): the log"
                " rewrote its history",
                entry_index=index,
            )

    def _record(self, index: int, data: bytes) -> None:
        try:
            entry = decode_entry(data)
        except EntryError as exc:
            raise AuditFailure(
                f"entry {index} is not a canonical log entry: {exc}", entry_index=index
            ) from None
        # Only strings are counted by value: a hostile entry may put anything here.
        kind = entry.get("kind")
        self.kinds[kind if isinstance(kind, str) else "?"] += 1
        decision = entry.get("decision")
        if isinstance(decision, str):
            key = entry.get("key")
            name = key.get("name") if isinstance(key, dict) else None
            self.decisions.setdefault(name if isinstance(name, str) else "-", Counter())[decision] += 1
        if self.on_entry is not None:
            self.on_entry(index, entry, data)

    def _check_consistency(self, previous: Checkpoint, current: Checkpoint) -> None:
        proof = self.source.consistency_proof(previous.size, current.size)
        try:
            merkle.verify_consistency(
                previous.size, current.size, previous.root_hash, current.root_hash, proof
            )
        except merkle.MerkleError as exc:
            raise AuditFailure(
                f"the log's consistency proof {previous.size}->{current.size} fails: {exc}"
            ) from None

    def _check_inclusion(self, leaves: dict[int, bytes], checkpoint: Checkpoint) -> None:
        for index, leaf in sorted(leaves.items()):
            proof = self.source.inclusion_proof(index, checkpoint.size)
            try:
                merkle.verify_inclusion(leaf, index, checkpoint.size, proof, checkpoint.root_hash)
            except merkle.MerkleError as exc:
                raise AuditFailure(f"the log's inclusion proof for entry {index} fails: {exc}") from None
