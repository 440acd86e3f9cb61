"""A cache of parsed and authenticated TDX collateral, for speed (as the SEV-SNP chain cache,
keyserver/evidence/snp/cache.py).

An entry is keyed by the SHA-256 of the **exact** dcap-qvl collateral bytes, and a hit also compares the
bytes, so no other input can ever be answered by it. It holds the parsed :class:`Collateral` and, once a
verification with it has fully succeeded, the SHA-256 of the trusted root it was verified against.

What a hit skips is only what depends neither on time nor on the quote: parsing, the TCB info and QE
identity issuer chains' structure and anchoring to the root, the signatures over the TCB info and QE
identity, the root CA CRL's issuer and signature, the PCK CRL issuer chain's anchoring, and the TCB signing
certificates' revocation. What it never skips (:func:`verify_collateral_checks` with ``authenticated``):
the validity windows of every certificate, the freshness of both CRLs and of the TCB info and QE identity at
the caller's ``now``, and everything that depends on the quote's PCK chain (the PCK CRL's issuer and
signature, the PCK CRL issuer chain naming the quote's CA, the revocation of the PCK leaf and CA), in
:func:`verify_collateral`'s order, so a cached verification fails exactly as an uncached one would.

The skip is granted only to the very :class:`Collateral` object this cache parsed (by identity) and only for
the root it was authenticated against; any other object or root is verified in full. A failed parse or
verification stores nothing. Everything cached is a pure function of public bytes, so sharing it between
tenants changes only speed. Bounded (LRU) and thread-safe.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from .collateral import Collateral, parse_dcap_qvl_collateral, verify_collateral_checks


@dataclass
class _Entry:
    data: bytes
    collateral: Collateral
    root_sha256: bytes | None = None  # set once a verification against that root fully succeeded


class CollateralCache:
    """LRU cache of parsed dcap-qvl collateral and of its time- and quote-independent verification."""

    def __init__(self, max_entries: int = 256) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._entries: OrderedDict[bytes, _Entry] = OrderedDict()
        self._by_object: dict[int, _Entry] = {}  # id(entry.collateral) -> entry, for entries held above
        self._lock = threading.Lock()
        self.parse_hits = 0
        self.parse_misses = 0
        self.verify_hits = 0
        self.verify_misses = 0

    def parse(self, data: bytes) -> Collateral:
        """:func:`parse_dcap_qvl_collateral` of ``data``, once per exact bytes (errors propagate; nothing
        is stored for them)."""
        digest = hashlib.sha256(data).digest()
        with self._lock:
            entry = self._entries.get(digest)
            if entry is not None and entry.data == data:
                self._entries.move_to_end(digest)
                self.parse_hits += 1
                return entry.collateral
            self.parse_misses += 1
        collateral = parse_dcap_qvl_collateral(data)
        with self._lock:
            self._store(digest, _Entry(bytes(data), collateral))
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
        quote-independent checks for collateral this cache parsed and already authenticated against
        ``root`` (see the module docstring)."""
        root_sha256 = root.fingerprint(hashes.SHA256())
        with self._lock:
            entry = self._by_object.get(id(collateral))
            if entry is not None and entry.collateral is not collateral:
                entry = None
            authenticated = entry is not None and entry.root_sha256 == root_sha256
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
        if entry is not None and not authenticated:
            with self._lock:
                # Only a full success reaches here; the entry may have been evicted meanwhile.
                if self._by_object.get(id(collateral)) is entry:
                    entry.root_sha256 = root_sha256

    def _store(self, digest: bytes, entry: _Entry) -> None:
        old = self._entries.pop(digest, None)
        if old is not None:
            self._by_object.pop(id(old.collateral), None)
        self._entries[digest] = entry
        self._by_object[id(entry.collateral)] = entry
        while len(self._entries) > self._max:
            _, evicted = self._entries.popitem(last=False)
            self._by_object.pop(id(evicted.collateral), None)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
            self._by_object.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
