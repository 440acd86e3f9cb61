"""Property tests: random input never verifies and never raises anything but EvidenceError; flipping any
single byte of a genuine report (or of its VCEK/VLEK) never verifies."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyserver.errors import EvidenceError
from keyserver.evidence.snp import ChainCache, decode_report_input, parse_report, verify_snp_report
from tests.fuzzing import fuzz_settings

from .helpers import utc, vec

pytestmark = pytest.mark.fuzz


@dataclass(frozen=True)
class Genuine:
    report: str
    cert: str
    now: datetime


GENUINE = [
    Genuine("snp/gsg-milan/attestation.bin", "snp/gsg-milan/vcek.testcer", utc("2025-06-01T00:00:00Z")),
    Genuine(
        "snp/trustee-milan-vcek/test-report.bin",
        "snp/trustee-milan-vcek/test-vcek.der",
        utc("2025-06-01T00:00:00Z"),
    ),
    Genuine(
        "snp/trustee-milan-vlek-aws/test-vlek-report.bin",
        "snp/trustee-milan-vlek-aws/test-vlek.der",
        utc("2025-06-01T00:00:00Z"),
    ),
    Genuine(
        "snp/azure-milan-from-hcl/snp-report-from-hcl-report.bin",
        "snp/azure-milan-from-hcl/vcek.pem",
        utc("2025-06-01T00:00:00Z"),
    ),
    Genuine(
        "snp/trustee-e2e-genoa-from-json/report-reconstructed-from-evidence-json.bin",
        "snp/trustee-e2e-genoa-from-json/vcek-from-evidence-json.der",
        utc("2026-01-01T00:00:00Z"),
    ),
]
CACHE = ChainCache()
FUZZ = fuzz_settings(400)


def _never_verifies(
    report: bytes, cert: bytes | None, now: datetime, cache: ChainCache | None = None
) -> None:
    """Anything but an EvidenceError propagates (and fails the test); success fails pytest.raises."""
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(report, vcek_or_vlek=cert, product=None, now=now, chain_cache=cache)
    assert exc.value.reason
    assert exc.value.message


def test_genuine_reports_verify() -> None:
    for g in GENUINE:
        verify_snp_report(vec(g.report), vcek_or_vlek=vec(g.cert), product=None, now=g.now)


@FUZZ
@given(st.binary(min_size=0, max_size=1400) | st.binary(min_size=1184, max_size=1184))
def test_random_bytes_never_verify(data: bytes) -> None:
    g = GENUINE[1]
    _never_verifies(data, vec(g.cert), g.now)


@FUZZ
@given(
    g=st.sampled_from(GENUINE),
    start=st.integers(0, 1183),
    junk=st.binary(min_size=1, max_size=64),
)
def test_overwritten_spans_never_verify(g: Genuine, start: int, junk: bytes) -> None:
    report = bytearray(vec(g.report))
    end = min(len(report), start + len(junk))
    if report[start:end] == junk[: end - start]:
        return
    report[start:end] = junk[: end - start]
    _never_verifies(bytes(report), vec(g.cert), g.now, CACHE)


@FUZZ
@given(g=st.sampled_from(GENUINE), offset=st.integers(0, 0x29F), mask=st.integers(1, 255))
def test_single_byte_flip_in_signed_bytes_never_verifies(g: Genuine, offset: int, mask: int) -> None:
    report = bytearray(vec(g.report))
    report[offset] ^= mask
    _never_verifies(bytes(report), vec(g.cert), g.now)


@FUZZ
@given(g=st.sampled_from(GENUINE), offset=st.integers(0x2A0, 1183), mask=st.integers(1, 255))
def test_single_byte_flip_in_signature_never_verifies(g: Genuine, offset: int, mask: int) -> None:
    report = bytearray(vec(g.report))
    report[offset] ^= mask
    _never_verifies(bytes(report), vec(g.cert), g.now, CACHE)


@FUZZ
@given(g=st.sampled_from([g for g in GENUINE if not g.cert.endswith(".pem")]), data=st.data())
def test_single_byte_flip_in_certificate_never_verifies(g: Genuine, data: st.DataObject) -> None:
    cert = bytearray(vec(g.cert))
    offset = data.draw(st.integers(0, len(cert) - 1))
    cert[offset] ^= data.draw(st.integers(1, 255))
    _never_verifies(vec(g.report), bytes(cert), g.now, CACHE)


def test_every_signed_byte_flip_exhaustively() -> None:
    """Deterministic complement to the random flips: every signed byte of every genuine report."""
    for g in GENUINE:
        raw, cert = vec(g.report), vec(g.cert)
        for offset in range(0x2A0):
            report = bytearray(raw)
            report[offset] ^= 0x80 if offset % 2 else 0x01
            _never_verifies(bytes(report), cert, g.now, CACHE)


@FUZZ
@given(
    st.binary(max_size=3000)
    | st.text(alphabet="0123456789abcdefABCDEF \n\txyz", max_size=2500).map(str.encode)
)
def test_input_helpers_raise_only_evidence_error(data: bytes) -> None:
    try:
        raw = decode_report_input(data)
    except EvidenceError:
        return
    try:
        parse_report(raw)
    except EvidenceError:
        return
