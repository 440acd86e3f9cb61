"""The TDX collateral cache (keyserver/evidence/tdx/cache.py) on real Intel collateral: a hit answers exactly
as a full verification does (claims, or the same refusal at a time outside validity or with another
quote), never for other bytes, never for another root; only authenticated collateral is kept, and the
cache is bounded in entries and in bytes."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.errors import EvidenceError
from keyserver.evidence import dispatch
from keyserver.evidence.claims import Claims
from keyserver.evidence.tdx import (
    Collateral,
    CollateralCache,
    intel_sgx_root_ca,
    parse_quote,
    verify_pck_chain,
)
from keyserver.evidence.tdx.cache import RESIDENT_BYTES_PER_DOCUMENT_BYTE
from keyserver.evidence.tdx.collateral import (
    parse_crl,
    parse_dcap_qvl_collateral,
    raw_members,
    verify_collateral,
)
from keyserver.evidence.tdx.verify import verify_tdx_quote
from tests.fuzzing import fuzz_settings

from .helpers import (
    AZURE,
    DCAP_QVL,
    DCAP_QVL_NOW,
    GCP,
    GO_TDX_GUEST_NOW,
    NOW,
    PCK_PLATFORM_CHAIN,
    SPR,
    TCB_CHAIN_2018,
    TRUSTEE_4,
    TRUSTEE_6,
    ZKDCAP_NOW,
    make_crl,
    make_pki,
    pem,
    qe_identity_obj,
    raw_sign,
    tcb_info_obj,
    utc,
    vec,
)


def _dcap_qvl_document(tcb_info: str, qe_identity: str, pck_crl: str, root_ca_crl: str) -> bytes:
    """Intel PCS pieces (real vectors) as one dcap-qvl collateral document: the signed JSON values are
    carried as their exact served text, so the signatures still verify."""

    def signed(rel: str, member: str) -> tuple[str, str]:
        members = raw_members(vec(rel).decode(), rel)
        return members[member][1], str(members["signature"][0])

    tcb_text, tcb_signature = signed(tcb_info, "tcbInfo")
    qe_text, qe_signature = signed(qe_identity, "enclaveIdentity")
    tcb_chain = TCB_CHAIN_2018.read_text()
    return json.dumps(
        {
            "pck_crl_issuer_chain": PCK_PLATFORM_CHAIN.read_text(),
            "root_ca_crl": parse_crl(vec(root_ca_crl), root_ca_crl).public_bytes(Encoding.DER).hex(),
            "pck_crl": parse_crl(vec(pck_crl), pck_crl).public_bytes(Encoding.DER).hex(),
            "tcb_info_issuer_chain": tcb_chain,
            "tcb_info": tcb_text,
            "tcb_info_signature": tcb_signature,
            "qe_identity_issuer_chain": tcb_chain,
            "qe_identity": qe_text,
            "qe_identity_signature": qe_signature,
        },
        sort_keys=True,
    ).encode()


@functools.cache
def collaterals() -> dict[str, tuple[bytes, datetime]]:
    """Real collateral documents and an instant at which each is current."""
    return {
        "dcap-qvl": (vec("tdx/dcap-qvl/tdx_quote_collateral.json"), utc(DCAP_QVL_NOW)),
        "go-tdx-guest": (
            _dcap_qvl_document(
                "tdx/go-tdx-guest/sample_tcbInfo_response",
                "tdx/go-tdx-guest/sample_qeIdentity_response",
                "tdx/go-tdx-guest/pckcrl",
                "tdx/go-tdx-guest/rootcrl.der",
            ),
            utc(GO_TDX_GUEST_NOW),
        ),
        "zkdcap": (
            _dcap_qvl_document(
                "tdx/zkdcap/tcbinfov3_00806f050000.json",
                "tdx/zkdcap/qeidentityv2_tdx.json",
                "tdx/zkdcap/pck_platform_crl.der",
                "tdx/zkdcap/intel_root_ca_crl.der",
            ),
            utc(ZKDCAP_NOW),
        ),
    }


# (quote, collateral) pairs that verify, with their TCB status (tests/tdx/test_collateral.py).
VERIFYING = (
    (DCAP_QVL, "dcap-qvl", "UpToDate"),
    (TRUSTEE_4, "go-tdx-guest", "UpToDate"),
    (GCP, "zkdcap", "UpToDate"),
    (AZURE, "zkdcap", "OutOfDate"),
)
QUOTES = (DCAP_QVL, TRUSTEE_4, TRUSTEE_6, SPR, GCP, AZURE)


@dataclass(frozen=True)
class Outcome:
    claims: Claims | None
    reason: str | None
    message: str | None


def _outcome(quote: str, collateral: Collateral, now: datetime, cache: CollateralCache | None) -> Outcome:
    try:
        claims = verify_tdx_quote(vec(quote), now=now, collateral=collateral, collateral_cache=cache)
    except EvidenceError as exc:
        return Outcome(None, exc.reason, exc.message)
    return Outcome(claims, None, None)


def uncached(quote: str, document: bytes, now: datetime) -> Outcome:
    return _outcome(quote, parse_dcap_qvl_collateral(document), now, None)


def cached(cache: CollateralCache, quote: str, document: bytes, now: datetime) -> Outcome:
    return _outcome(quote, cache.parse(document), now, cache)


def warm(cache: CollateralCache, quote: str, name: str) -> None:
    """Verify ``name``'s collateral through the cache: authenticated when parsed, even its first use is a
    hit, and it is held afterwards."""
    document, now = collaterals()[name]
    before = cache.verify_hits
    assert cached(cache, quote, document, now).claims is not None
    assert cache.verify_hits == before + 1
    assert cache.parse(document) is cache.parse(document)


def _pck(quote: str, now: datetime) -> tuple[x509.Certificate, x509.Certificate]:
    chain = verify_pck_chain(parse_quote(vec(quote)).pck_chain_pem, root=intel_sgx_root_ca(), now=now)
    return chain.leaf, chain.intermediate


# ------------------------------------------------------------------------------------------ hits


@pytest.mark.parametrize(("quote", "name", "status"), VERIFYING)
def test_a_hit_returns_the_same_claims_as_a_miss(quote: str, name: str, status: str) -> None:
    document, now = collaterals()[name]
    expected = uncached(quote, document, now)
    assert expected.claims is not None
    assert expected.claims["tdx.tcb_status"] == status
    cache = CollateralCache()
    first = cached(cache, quote, document, now)
    # Authenticated when first parsed, so its first verification already skips that part.
    assert (cache.parse_misses, cache.verify_misses, cache.verify_hits, len(cache)) == (1, 0, 1, 1)
    hit = cached(cache, quote, document, now)
    assert (cache.parse_hits, cache.verify_hits) == (1, 2)
    assert first == hit == expected


def test_the_same_bytes_parse_to_the_same_object() -> None:
    document, _ = collaterals()["dcap-qvl"]
    cache = CollateralCache()
    assert cache.parse(document) is cache.parse(bytes(document))
    assert len(cache) == 1


@pytest.mark.parametrize(
    ("delta", "reason"),
    [
        (timedelta(seconds=1), "collateral-expired"),  # the TCB info's nextUpdate
        (timedelta(days=-30), "collateral-not-yet-valid"),  # before the QE identity's issueDate
        (timedelta(days=365 * 10), "certificate-expired"),  # the TCB signing certificate
        (timedelta(days=-365 * 10), "certificate-not-yet-valid"),
    ],
)
def test_a_hit_outside_validity_is_refused_exactly_like_a_miss(delta: timedelta, reason: str) -> None:
    document, now = collaterals()["dcap-qvl"]
    cache = CollateralCache()
    warm(cache, DCAP_QVL, "dcap-qvl")
    # The quote's own PCK chain is valid at every instant below, so the collateral decides.
    at = now + delta
    collateral = cache.parse(document)
    leaf, intermediate = _pck(DCAP_QVL, now)
    with pytest.raises(EvidenceError) as miss:  # a fresh object: the full verification
        verify_collateral(
            parse_dcap_qvl_collateral(document),
            pck_leaf=leaf,
            pck_intermediate=intermediate,
            root=intel_sgx_root_ca(),
            now=at,
        )
    hits = cache.verify_hits
    with pytest.raises(EvidenceError) as hit:
        cache.verify(
            collateral, pck_leaf=leaf, pck_intermediate=intermediate, root=intel_sgx_root_ca(), now=at
        )
    assert cache.verify_hits == hits + 1
    assert (hit.value.reason, hit.value.message) == (miss.value.reason, miss.value.message)
    assert hit.value.reason == reason


def test_a_hit_with_another_quote_is_refused_exactly_like_a_miss() -> None:
    """The PCK CRL and the TCB levels depend on the quote: warmed with one quote, the cached collateral
    refuses another quote's platform exactly as a full verification does."""
    cache = CollateralCache()
    warm(cache, TRUSTEE_4, "go-tdx-guest")
    document, now = collaterals()["go-tdx-guest"]
    hits = cache.verify_hits
    for quote in QUOTES:
        assert cached(cache, quote, document, now) == uncached(quote, document, now), quote
    assert cache.verify_hits > hits
    assert uncached(SPR, document, now).reason == "tcb-level-not-found"


# -------------------------------------------------------------------------------------- no false hits


def test_one_changed_byte_never_hits() -> None:
    document, now = collaterals()["dcap-qvl"]
    cache = CollateralCache()
    warm(cache, DCAP_QVL, "dcap-qvl")
    # A changed hex digit of the TCB info signature: still well-formed, so it parses - as other collateral.
    at = document.index(b'"tcb_info_signature": "') + len(b'"tcb_info_signature": "')
    flipped = document[:at] + (b"1" if document[at : at + 1] != b"1" else b"2") + document[at + 1 :]
    original = cache.parse(document)
    hits = cache.parse_hits
    assert cache.parse(flipped) is not original
    assert cache.parse_hits == hits
    outcome = cached(cache, DCAP_QVL, flipped, now)
    assert outcome.reason == "collateral-signature-invalid"
    assert outcome == uncached(DCAP_QVL, flipped, now)
    # Every single-bit flip (one in 97 positions) either fails to parse or is parsed as new input.
    for position in range(0, len(document), 97):
        other = bytearray(document)
        other[position] ^= 0x01
        hits = cache.parse_hits
        try:
            collateral = cache.parse(bytes(other))
        except EvidenceError:
            continue
        assert cache.parse_hits == hits
        assert collateral is not original


def test_bytes_are_compared_on_a_digest_hit() -> None:
    """An entry planted under another document's digest (what a SHA-256 collision would do) is not
    returned for that document."""
    document, _ = collaterals()["dcap-qvl"]
    other, _ = collaterals()["zkdcap"]
    cache = CollateralCache()
    planted = cache.parse(document)
    cache._entries[hashlib.sha256(other).digest()] = cache._entries.pop(hashlib.sha256(document).digest())
    assert cache.parse(other) is not planted
    assert cache.parse(other).tcb_info.raw != planted.tcb_info.raw


def test_a_cached_entry_cannot_be_used_with_another_root() -> None:
    cache = CollateralCache()
    warm(cache, DCAP_QVL, "dcap-qvl")
    document, now = collaterals()["dcap-qvl"]
    collateral = cache.parse(document)
    leaf, intermediate = _pck(DCAP_QVL, now)
    other_root = make_pki().root
    misses = cache.verify_misses
    with pytest.raises(EvidenceError) as exc:
        cache.verify(collateral, pck_leaf=leaf, pck_intermediate=intermediate, root=other_root, now=now)
    assert exc.value.reason == "collateral-chain-invalid"
    assert cache.verify_misses == misses + 1
    # Still bound to the Intel root, and only to it.
    cache.verify(collateral, pck_leaf=leaf, pck_intermediate=intermediate, root=intel_sgx_root_ca(), now=now)
    assert cache.verify_misses == misses + 1


def test_collateral_the_cache_did_not_parse_is_verified_in_full() -> None:
    cache = CollateralCache()
    warm(cache, DCAP_QVL, "dcap-qvl")
    document, now = collaterals()["dcap-qvl"]
    misses = cache.verify_misses
    assert _outcome(DCAP_QVL, parse_dcap_qvl_collateral(document), now, cache).claims is not None
    assert cache.verify_misses == misses + 1


# --------------------------------------------------------------------- only authenticated collateral


def _edit(document: bytes, **changes: str) -> bytes:
    """``document`` with some members replaced, serialised as the release path does."""
    return json.dumps({**json.loads(document), **changes}, sort_keys=True).encode()


def _edit_tcb_info(document: bytes, edit: Callable[[dict[str, Any]], None]) -> bytes:
    tcb_info = json.loads(json.loads(document)["tcb_info"])
    edit(tcb_info)
    return _edit(document, tcb_info=json.dumps(tcb_info))


def _flip(hex_text: str, at: int) -> str:
    return hex_text[:at] + ("0" if hex_text[at] != "0" else "1") + hex_text[at + 1 :]


UNAUTHENTIC = {"collateral-signature-invalid", "collateral-chain-invalid", "crl-invalid"}


def _unauthentic_variants(document: bytes, i: int) -> list[bytes]:
    """Variant ``i`` (unique per ``i``) of each way a real document can fail to authenticate while still
    parsing: the review's attack (the TCB info's advisoryIDs padded, unique per request), whitespace
    padding inside the signed text, a changed signature, a chain to another root, a root CA CRL signed by
    someone else."""
    doc = json.loads(document)
    other = make_pki()

    def pad(tcb_info: dict[str, Any]) -> None:
        padding = [f"{i:02x}"[-2:], *(f"{j:02}" for j in range(50))]
        tcb_info["tcbLevels"][-1].setdefault("advisoryIDs", []).extend(padding)

    return [
        _edit_tcb_info(document, pad),
        _edit(document, tcb_info=doc["tcb_info"].replace(",", "," + " " * (i + 1), 1)),
        _edit(document, tcb_info_signature=_flip(doc["tcb_info_signature"], i % 128)),
        _edit(document, qe_identity_signature=_flip(doc["qe_identity_signature"], i % 128)),
        _edit(
            document,
            tcb_info_issuer_chain=pem(other.tcb, other.root).decode() + "\n" * (i + 1),
            qe_identity_issuer_chain=pem(other.tcb, other.root).decode(),
        ),
        _edit(document, root_ca_crl=make_crl(other.root, other.root_key, revoked=[i + 1]).hex()),
    ]


def test_collateral_that_does_not_authenticate_is_never_kept() -> None:
    """The review's finding: every such document was kept after its refusal. Now none is, however many
    unique variants are sent, and each is still refused exactly as an uncached verification refuses it."""
    document, now = collaterals()["dcap-qvl"]
    cache = CollateralCache()
    warm(cache, DCAP_QVL, "dcap-qvl")
    held = (len(cache), cache.bytes_held)
    reasons = set()
    for i in range(4):
        for variant in _unauthentic_variants(document, i):
            for _ in range(2):  # the same bytes again: parsed again, never a hit
                hits = cache.parse_hits
                outcome = cached(cache, DCAP_QVL, variant, now)
                assert cache.parse_hits == hits
                assert outcome == uncached(DCAP_QVL, variant, now)
                reasons.add(outcome.reason)
            assert (len(cache), cache.bytes_held) == held
    assert reasons == UNAUTHENTIC
    assert cache.unauthenticated == 4 * 6 * 2
    assert cached(cache, DCAP_QVL, document, now).claims is not None  # the real one is still a hit
    assert cache.verify_hits == 2


def test_authentic_collateral_is_kept_only_for_the_root_it_chains_to() -> None:
    """Collateral genuinely signed by another PKI is not Intel's: the default cache (pinned Intel root)
    does not keep it; a cache asked for that root does, bound to it."""
    pki = make_pki()
    tcb_chain = pem(pki.tcb, pki.root).decode()
    document = json.dumps(
        {
            "pck_crl_issuer_chain": pem(pki.ca, pki.root).decode(),
            "root_ca_crl": make_crl(pki.root, pki.root_key).hex(),
            "pck_crl": make_crl(pki.ca, pki.ca_key).hex(),
            "tcb_info_issuer_chain": tcb_chain,
            "tcb_info": json.dumps(tcb_info_obj()),
            "tcb_info_signature": raw_sign(pki.tcb_key, json.dumps(tcb_info_obj()).encode()).hex(),
            "qe_identity_issuer_chain": tcb_chain,
            "qe_identity": json.dumps(qe_identity_obj()),
            "qe_identity_signature": raw_sign(pki.tcb_key, json.dumps(qe_identity_obj()).encode()).hex(),
        },
        sort_keys=True,
    ).encode()
    cache = CollateralCache()
    assert cache.parse(document) is not cache.parse(document)
    assert (len(cache), cache.unauthenticated) == (0, 2)
    collateral = cache.parse(document, root=pki.root)
    assert cache.parse(document) is collateral
    assert len(cache) == 1
    cache.verify(collateral, pck_leaf=pki.pck, pck_intermediate=pki.ca, root=pki.root, now=NOW)
    assert cache.verify_hits == 1
    with pytest.raises(EvidenceError) as exc:
        cache.verify(collateral, pck_leaf=pki.pck, pck_intermediate=pki.ca, root=intel_sgx_root_ca(), now=NOW)
    assert exc.value.reason == "collateral-chain-invalid"
    assert cache.verify_misses == 1
    # A TCB signing certificate revoked by the root CA CRL does not authenticate either.
    revoked = _edit(document, root_ca_crl=make_crl(pki.root, pki.root_key, [pki.tcb.serial_number]).hex())
    cache.parse(revoked, root=pki.root)
    assert (len(cache), cache.unauthenticated) == (1, 3)


def test_a_refused_use_changes_nothing_in_the_cache() -> None:
    """Authenticity does not depend on time: stale collateral stays authenticated and is refused on every
    use (as a full verification refuses it), fresh use of it then succeeds; a refusal with another root
    neither evicts it nor rebinds it."""
    document, now = collaterals()["dcap-qvl"]
    cache = CollateralCache()
    for at in (now + timedelta(days=1), now - timedelta(days=30)):
        outcome = cached(cache, DCAP_QVL, document, at)
        assert outcome == uncached(DCAP_QVL, document, at)
        assert outcome.reason in ("collateral-expired", "collateral-not-yet-valid")
    assert cached(cache, DCAP_QVL, document, now).claims is not None
    assert (cache.verify_misses, cache.verify_hits, len(cache)) == (0, 3, 1)
    leaf, intermediate = _pck(DCAP_QVL, now)
    for _ in range(2):
        with pytest.raises(EvidenceError):
            cache.verify(
                cache.parse(document),
                pck_leaf=leaf,
                pck_intermediate=intermediate,
                root=make_pki().root,
                now=now,
            )
    assert (cache.verify_misses, cache.verify_hits, len(cache)) == (2, 3, 1)
    assert cached(cache, DCAP_QVL, document, now).claims is not None
    assert cache.verify_hits == 4


def test_a_malformed_document_stores_nothing() -> None:
    cache = CollateralCache()
    for bad in (b"", b"{}", b'{"tcb_info": 1}', b"\xff" * 10):
        with pytest.raises(EvidenceError):
            cache.parse(bad)
    assert len(cache) == 0


def test_the_cache_is_bounded_and_an_evicted_entry_is_verified_in_full() -> None:
    cache = CollateralCache(max_entries=2)
    first = cache.parse(collaterals()["dcap-qvl"][0])
    warm(cache, DCAP_QVL, "dcap-qvl")
    cache.parse(collaterals()["go-tdx-guest"][0])
    cache.parse(collaterals()["zkdcap"][0])
    assert len(cache) == 2
    now = collaterals()["dcap-qvl"][1]
    leaf, intermediate = _pck(DCAP_QVL, now)
    misses = cache.verify_misses
    cache.verify(first, pck_leaf=leaf, pck_intermediate=intermediate, root=intel_sgx_root_ca(), now=now)
    assert cache.verify_misses == misses + 1
    with pytest.raises(ValueError, match="at least 1"):
        CollateralCache(max_entries=0)
    with pytest.raises(ValueError, match="at least 1"):
        CollateralCache(max_bytes=0)


def test_the_cache_is_bounded_in_bytes() -> None:
    """Each entry is charged RESIDENT_BYTES_PER_DOCUMENT_BYTE x its document; past max_bytes the least
    recently used go, and a document that alone exceeds it is verified (in full) but never kept."""
    documents = [collaterals()[name][0] for name in ("dcap-qvl", "go-tdx-guest", "zkdcap")]
    costs = [RESIDENT_BYTES_PER_DOCUMENT_BYTE * len(d) for d in documents]
    assert costs[0] + costs[2] > costs[1] + costs[2] > costs[0] + costs[1]  # 16 KB, 15 KB, 18 KB
    cache = CollateralCache(max_bytes=costs[0] + costs[2])
    for document in documents:
        cache.parse(document)  # the third evicts the first
    assert (len(cache), cache.bytes_held) == (2, costs[1] + costs[2])
    assert cache.parse(documents[2]) is cache.parse(documents[2])
    cache.parse(documents[0])  # evicts go-tdx-guest's, now the least recently used
    assert (len(cache), cache.bytes_held) == (2, costs[0] + costs[2])
    small = CollateralCache(max_bytes=costs[0] - 1)
    collateral = small.parse(documents[0])
    assert (len(small), small.bytes_held, small.unauthenticated) == (0, 0, 0)
    now = collaterals()["dcap-qvl"][1]
    assert _outcome(DCAP_QVL, collateral, now, small).claims is not None
    assert (small.verify_misses, small.verify_hits) == (1, 0)
    cache.clear()
    assert (len(cache), cache.bytes_held) == (0, 0)


# --------------------------------------------------------------------------------------- property


@functools.cache
def shared() -> CollateralCache:
    """One cache for all examples, every collateral authenticated in it first: the examples below hit."""
    cache = CollateralCache()
    for quote, name, _ in VERIFYING:
        assert cached(cache, quote, *collaterals()[name]).claims is not None
    assert (cache.verify_misses, len(cache)) == (0, len(collaterals()))
    return cache


@pytest.mark.fuzz
@fuzz_settings(60)
@given(
    quote=st.sampled_from(QUOTES),
    name=st.sampled_from(("dcap-qvl", "go-tdx-guest", "zkdcap")),
    offset=st.one_of(
        st.integers(min_value=-3 * 86400, max_value=40 * 86400),  # around the collateral's window
        st.integers(min_value=-12 * 365 * 86400, max_value=12 * 365 * 86400),
    ),
)
def test_cached_and_uncached_verification_agree(quote: str, name: str, offset: int) -> None:
    cache = shared()
    document, base = collaterals()[name]
    now = (base + timedelta(seconds=offset)).astimezone(UTC)
    outcome = cached(cache, quote, document, now)
    assert outcome == uncached(quote, document, now)
    assert cache.verify_misses == 0  # every verification was a hit


# ------------------------------------------------------------------------------- exact equivalence


def _full_and_cached(
    cache: CollateralCache,
    document: bytes,
    pck_leaf: x509.Certificate,
    pck_intermediate: x509.Certificate,
    now: datetime,
) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """The refusal (reason, message) of a full verification and of a cache hit, ``None`` for success."""
    results: list[tuple[str, str] | None] = []
    collateral = cache.parse(document)
    for check in (verify_collateral, cache.verify):
        hits = cache.verify_hits
        try:
            check(
                parse_dcap_qvl_collateral(document) if check is verify_collateral else collateral,
                pck_leaf=pck_leaf,
                pck_intermediate=pck_intermediate,
                root=intel_sgx_root_ca(),
                now=now,
            )
            results.append(None)
        except EvidenceError as exc:
            results.append((exc.reason, exc.message))
        if check is not verify_collateral:
            assert cache.verify_hits == hits + 1
    return results[0], results[1]


def _instants(collateral: Collateral) -> list[datetime]:
    """Every instant at which a piece of the collateral changes state, and one second either side."""
    certs = [
        *collateral.tcb_info_issuer_chain,
        *collateral.qe_identity_issuer_chain,
        *(collateral.pck_crl_issuer_chain or ()),
    ]
    edges = [t for c in certs for t in (c.not_valid_before_utc, c.not_valid_after_utc)]
    for crl in (collateral.root_ca_crl, collateral.pck_crl):
        edges.append(crl.last_update_utc)
        if crl.next_update_utc is not None:
            edges.append(crl.next_update_utc)
    for signed in (collateral.tcb_info.tcb_info, collateral.qe_identity.qe_identity):
        edges += [signed.issue_date, signed.next_update]
    return sorted({e + timedelta(seconds=d) for e in edges for d in (-1, 0, 1)})


@pytest.mark.parametrize(
    ("quote", "name"), [(DCAP_QVL, "dcap-qvl"), (TRUSTEE_4, "go-tdx-guest"), (GCP, "zkdcap")]
)
def test_a_hit_fails_at_every_time_boundary_exactly_as_a_miss(quote: str, name: str) -> None:
    """At each validity edge of every certificate, CRL, TCB info and QE identity (and a second either side),
    a hit refuses with the same reason and message as a full verification, or both succeed."""
    document, now = collaterals()[name]
    cache = CollateralCache()
    warm(cache, quote, name)
    leaf, intermediate = _pck(quote, now)
    refusals = set()
    for at in _instants(parse_dcap_qvl_collateral(document)):
        full, hit = _full_and_cached(cache, document, leaf, intermediate, at)
        assert hit == full, at
        refusals.add(full[0] if full else None)
    assert {"collateral-expired", "collateral-not-yet-valid", "certificate-expired", None} <= refusals


def _pck_like(
    issuer: x509.Name, serial: int, template: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> x509.Certificate:
    """A certificate with ``issuer`` and ``serial`` (what the collateral's CRL checks look at), signed by a
    key of our own: the collateral checks must judge it by those fields exactly as a full verification."""
    return (
        x509.CertificateBuilder()
        .subject_name(template.subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(template.not_valid_before_utc)
        .not_valid_after(template.not_valid_after_utc)
        .sign(key, hashes.SHA256())
    )


def test_a_hit_judges_the_quotes_pck_chain_exactly_as_a_miss() -> None:
    """The PCK CRL (issuer, signature by the quote's CA, revocation of the leaf) and the root CA CRL's
    revocation of the CA depend on the quote: with the cache warm, each is still checked on a hit."""
    document, now = collaterals()["dcap-qvl"]
    cache = CollateralCache()
    warm(cache, DCAP_QVL, "dcap-qvl")
    leaf, intermediate = _pck(DCAP_QVL, now)
    key = ec.generate_private_key(ec.SECP256R1())
    # (cryptography builds serials below 2**159 only; Intel's are up to 160 bits.)
    revoked_serial = next(
        entry.serial_number
        for entry in parse_dcap_qvl_collateral(document).pck_crl
        if entry.serial_number.bit_length() < 159
    )
    other_ca = make_pki(ca_cn="Intel SGX PCK Processor CA").ca
    leaves = {
        "real": leaf,
        "revoked": _pck_like(leaf.issuer, revoked_serial, leaf, key),
        "other CA": _pck_like(other_ca.subject, 2, leaf, key),
    }
    intermediates = {
        "real": intermediate,
        "same name, other key": (
            x509.CertificateBuilder()
            .subject_name(intermediate.subject)
            .issuer_name(intermediate.issuer)
            .public_key(key.public_key())
            .serial_number(1)
            .not_valid_before(intermediate.not_valid_before_utc)
            .not_valid_after(intermediate.not_valid_after_utc)
            .sign(key, hashes.SHA256())
        ),
        "other CA": other_ca,
    }
    refusals = set()
    for pck_leaf in leaves.values():
        for pck_intermediate in intermediates.values():
            full, hit = _full_and_cached(cache, document, pck_leaf, pck_intermediate, now)
            assert hit == full
            refusals.add(full[0] if full else None)
    assert refusals == {None, "certificate-revoked", "collateral-mismatch", "crl-invalid"}


# ----------------------------------------------------------------------------------- the release path


def test_the_release_path_verifies_tdx_collateral_through_the_process_cache() -> None:
    """dispatch.verify_evidence (what /release and /attest call) uses the process's collateral cache: the
    second release with the same collateral is a hit with the same claims, changed collateral is not."""
    document, now = collaterals()["dcap-qvl"]
    collateral_doc: dict[str, str] = json.loads(document)
    evidence: dict[str, object] = {
        "tee": "tdx",
        "quote": base64.b64encode(vec(DCAP_QVL)).decode(),
        "collateral": collateral_doc,
    }

    def verify(ev: dict[str, object]) -> dispatch.VerifiedEvidence:
        return asyncio.run(
            dispatch.verify_evidence(
                cast(AsyncSession, None),  # TDX evidence never reads the database
                uuid.uuid4(),
                ev,
                nonce=b"\0" * 32,
                ephemeral_jwk={},
                now=now,
            )
        )

    cache = dispatch.tdx_collateral_cache()
    first = verify(evidence)
    hits = cache.verify_hits
    second = verify(evidence)
    assert cache.verify_hits == hits + 1
    assert first == second
    assert first.claims["tdx.tcb_status"] == "UpToDate"
    signature = collateral_doc["tcb_info_signature"]
    changed = {**collateral_doc, "tcb_info_signature": ("0" if signature[0] != "0" else "1") + signature[1:]}
    with pytest.raises(EvidenceError) as exc:
        verify({**evidence, "collateral": changed})
    assert exc.value.reason == "collateral-signature-invalid"


def test_the_release_path_keeps_no_collateral_that_does_not_authenticate() -> None:
    """The review's reproduction, scaled down: unique unauthentic collateral, request after request, is
    refused (403 collateral-signature-invalid, ...) and leaves the process's cache as it was."""
    document, now = collaterals()["dcap-qvl"]
    cache = dispatch.tdx_collateral_cache()
    held = (len(cache), cache.bytes_held)
    for i in range(10):
        for variant in _unauthentic_variants(document, 100 + i):
            with pytest.raises(EvidenceError) as exc:
                asyncio.run(
                    dispatch.verify_evidence(
                        cast(AsyncSession, None),
                        uuid.uuid4(),
                        {
                            "tee": "tdx",
                            "quote": base64.b64encode(vec(DCAP_QVL)).decode(),
                            "collateral": json.loads(variant),
                        },
                        nonce=b"\0" * 32,
                        ephemeral_jwk={},
                        now=now,
                    )
                )
            assert exc.value.reason in UNAUTHENTIC
    assert (len(cache), cache.bytes_held) == held
