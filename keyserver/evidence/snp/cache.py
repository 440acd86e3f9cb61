"""A cache of verified VCEK/VLEK chains, for speed. It stores only the outcome of the **time-independent**
checks of a leaf certificate (structure, AMD extensions, RSA-PSS signature by the ASK/ASVK, names), keyed by
the SHA-256 of the leaf's exact DER and the signing-key kind, and bound to the SHA-256 of the intermediate
and ARK it was verified against.

What it never skips: the validity window of the leaf, intermediate and ARK at the caller's ``now``, the CRL,
product consistency, the report signature, the TCB and chip-id bindings. An entry is used only if the
intermediate and ARK it was verified against are byte-identical (by SHA-256) to the ones the current
:class:`~keyserver.evidence.snp.trust.SnpRoots` hold for the product; otherwise the chain is verified again.
Only successes are cached. Bounded (LRU) and thread-safe.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import ec

from .certs import AmdExtensions
from .report import SigningKey, SnpProduct


@dataclass(frozen=True)
class VerifiedLeaf:
    """A VCEK/VLEK whose time-independent checks passed against (issuer_sha256, ark_sha256)."""

    kind: SigningKey
    product: SnpProduct
    leaf_sha256: str
    issuer_sha256: str
    ark_sha256: str
    public_key: ec.EllipticCurvePublicKey
    not_before: datetime
    not_after: datetime
    extensions: AmdExtensions


class ChainCache:
    """LRU cache of :class:`VerifiedLeaf` keyed by ``(signing key kind, leaf SHA-256)``."""

    def __init__(self, max_entries: int = 1024) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._entries: OrderedDict[tuple[SigningKey, str], VerifiedLeaf] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, kind: SigningKey, leaf_sha256: str) -> VerifiedLeaf | None:
        with self._lock:
            entry = self._entries.get((kind, leaf_sha256))
            if entry is None:
                self.misses += 1
                return None
            self._entries.move_to_end((kind, leaf_sha256))
            self.hits += 1
            return entry

    def put(self, leaf: VerifiedLeaf) -> None:
        with self._lock:
            key = (leaf.kind, leaf.leaf_sha256)
            self._entries[key] = leaf
            self._entries.move_to_end(key)
            while len(self._entries) > self._max:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
