"""A cache of parsed and authenticated TDX collateral, for speed (as the SEV-SNP chain cache,
keyserver/evidence/snp/cache.py).

**Only authenticated collateral is kept.** :meth:`CollateralCache.parse` parses a dcap-qvl document and
then authenticates it (:func:`~keyserver.evidence.tdx.collateral.authenticate_collateral`: the TCB info and
QE identity signatures over the exact served bytes, by the TCB Signing certificate issued by the trusted
root, the root CA CRL's issuer and signature, the PCK CRL issuer chain's anchoring, the TCB signing
certificates' revocation). Collateral that fails is returned uncached: :meth:`CollateralCache.verify`
then verifies it in full and refuses it exactly as an uncached verification would, and the next request
with the same bytes parses it again. So what a caller can make the cache hold is Intel's signed
collateral, not bytes of its own (found by review: unauthenticated collateral with a padded advisoryIDs
list was kept after its 403, ~10 MB each, 256 entries per worker).

An entry is keyed by the SHA-256 of the **exact** dcap-qvl collateral bytes, and a hit also compares the
bytes, so no other input can ever be answered by it. It holds the bytes, the parsed :class:`Collateral`
and the SHA-256 of the root it was authenticated against. The cache is bounded in entries and in bytes
held: an entry is charged :data:`RESIDENT_BYTES_PER_DOCUMENT_BYTE` times its document's length (measured:
dcap-qvl's 16 KB document is ~90 KB resident once parsed and kept), least recently used entries are
evicted past either bound, and a document whose charge alone exceeds the byte bound is never kept.

Authenticity is a pure function of the bytes and the root: it does not depend on time or on the quote,
so it is established once per exact bytes. What a hit skips is only that (and parsing). What it never
skips (:func:`verify_collateral_checks` with ``authenticated``): the validity windows of every
certificate, the freshness of both CRLs and of the TCB info and QE identity at the caller's ``now``, and
everything that depends on the quote's PCK chain (the PCK CRL's issuer and signature, the PCK CRL issuer
chain naming the quote's CA, the revocation of the PCK leaf and CA), in :func:`verify_collateral`'s order,
so a cached verification fails exactly as an uncached one would. Stale but authentic collateral is kept
and refused on every use until it is evicted.

The skip is granted only to the very :class:`Collateral` object this cache holds (by identity) and only for
the root it was authenticated against; any other object or root is verified in full, and
:meth:`~CollateralCache.verify` never changes the cache. Everything cached is a pure function of public
bytes, so sharing it between tenants changes only speed. Thread-safe.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from keyserver.errors import EvidenceError

from .certs import intel_sgx_root_ca
from .collateral import (
    Collateral,
    authenticate_collateral,
    parse_dcap_qvl_collateral,
    verify_collateral_checks,
)

# What an entry is charged per byte of its document: the bytes themselves plus the parsed collateral
# (certificates, CRLs, TCB levels), measured at ~5.6x for dcap-qvl's real document.
RESIDENT_BYTES_PER_DOCUMENT_BYTE = 6
DEFAULT_MAX_ENTRIES = 256
DEFAULT_MAX_BYTES = 32 * 1024 * 1024


@dataclass
class _Entry:
    data: bytes
    collateral: Collateral
    root_sha256: bytes  # the root it was authenticated against
    cost: int


class CollateralCache:
    """LRU cache of parsed and authenticated dcap-qvl collateral (see the module docstring)."""

    def __init__(self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        if max_bytes < 1:
            raise ValueError("max_bytes must be at least 1")
        self._max = max_entries
        self._max_bytes = max_bytes
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._by_object: dict[int, _Entry] = {}  # id(entry.collateral) -> entry, for entries held above
        self._bytes = 0
        self._lock = threading.Lock()
        self.parse_hits = 0
        self.parse_misses = 0
        self.unauthenticated = 0  # parsed, failed authentication, not kept
        self.verify_hits = 0
        self.verify_misses = 0

    def parse(self, data: bytes, *, root: x509.Certificate | None = None) -> Collateral:
        """:func:`parse_dcap_qvl_collateral` of ``data``, once per exact bytes that authenticate against
        ``root`` (default: the pinned Intel SGX Root CA). Parse errors propagate and store nothing;
        collateral that parses but does not authenticate is returned without being stored (its
        verification refuses it)."""
        digest = hashlib.sha256(data).digest()
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None and entry.data == data:
                self._entries.move_to_end(digest)
                self.parse_hits += 1
                return entry.collateral
            self.parse_misses += 1
        collateral = parse_dcap_qvl_collateral(data)
        trusted = intel_sgx_root_ca() if root is None else root
        try:
            authenticate_collateral(collateral, root=trusted)
        except EvidenceError:
            with self._lock:
                self.unauthenticated += 1
            return collateral
        cost = RESIDENT_BYTES_PER_DOCUMENT_BYTE * len(data)
        if cost <= self._max_bytes:
            entry = _Entry(bytes(data), collateral, trusted.fingerprint(hashes.SHA256()), cost)
            with self._lock:
                self._store(digest, entry)
        return collateral

    def verify(
        self,
        collateral: Collateral,
        *,
        pck_leaf: x509.Certificate,
        pck_intermediate: x509.Certificate,
        root: x509.Certificate,
        now: datetime,
    ) -> None:
        """:func:`~keyserver.evidence.tdx.collateral.verify_collateral`, skipping the time- and
        quote-independent checks for collateral this cache holds, authenticated against ``root`` (see the
        module docstring). Changes nothing in the cache."""
        root_sha256 = root.fingerprint(hashes.SHA256())
        with self._lock:
            entry = self._by_object.get(id(collateral))
            authenticated = (
                entry is not None and entry.collateral is collateral and entry.root_sha256 == root_sha256
            )
            if authenticated:
                self.verify_hits += 1
            else:
                self.verify_misses += 1
        verify_collateral_checks(
            collateral,
            pck_leaf=pck_leaf,
            pck_intermediate=pck_intermediate,
            root=root,
            now=now,
            authenticated=authenticated,
        )

    def _store(self, digest: bytes, entry: _Entry) -> None:
        self._discard(self._entries.pop(digest, None))
        self._entries[digest] = entry
        self._by_object[id(entry.collateral)] = entry
        self._bytes += entry.cost
        while len(self._entries) > self._max or self._bytes > self._max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self._discard(evicted)

    def _discard(self, entry: _Entry | None) -> None:
        if entry is not None:
            self._by_object.pop(id(entry.collateral), None)
            self._bytes -= entry.cost

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_object.clear()
            self._bytes = 0

    @property
    def bytes_held(self) -> int:
        """What the entries held are charged (see :data:`RESIDENT_BYTES_PER_DOCUMENT_BYTE`)."""
        with self._lock:
            return self._bytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
