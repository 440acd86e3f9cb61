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

from dataclasses import dataclass
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import ec

from keyserver.cache import BoundedCache

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
    """LRU cache of :class:`VerifiedLeaf` keyed by ``(signing key kind, leaf SHA-256)``: the project's one
    bounded cache (:class:`keyserver.cache.BoundedCache`), with the keys this cache's callers use."""

    def __init__(self, max_entries: int = 1024) -> None:
        self._cache: BoundedCache[tuple[SigningKey, str], VerifiedLeaf] = BoundedCache(max_entries)

    @property
    def hits(self) -> int:
        return self._cache.hits

    @property
    def misses(self) -> int:
        return self._cache.misses

    def get(self, kind: SigningKey, leaf_sha256: str) -> VerifiedLeaf | None:
        return self._cache.get((kind, leaf_sha256))

    def put(self, leaf: VerifiedLeaf) -> None:
        self._cache.put((leaf.kind, leaf.leaf_sha256), leaf)

    def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)
