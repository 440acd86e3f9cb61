"""1,000 random byte flips per valid SNP and TDX vector: none is accepted, and every rejection is a
typed EvidenceError. Seeded per vector, so a failure reproduces; set KEYSERVER_FLIPS for longer runs."""

from __future__ import annotations

import os
import random
import zlib
from datetime import datetime

import pytest

from keyserver.errors import EvidenceError
from keyserver.evidence.snp import verify_snp_report
from keyserver.evidence.tdx import parse_quote, verify_tdx_quote
from tests.test_cli_vectors import SNP, TDX, V4, V, window

FLIPS = int(os.environ.get("KEYSERVER_FLIPS", "1000"))


def flips(data: bytes, end: int, seed: str) -> list[bytes]:
    """``FLIPS`` copies of ``data``, each with one byte in ``[0, end)`` XORed with a non-zero mask."""
    rng = random.Random(zlib.crc32(seed.encode()))
    out = []
    for _ in range(FLIPS):
        mutated = bytearray(data)
        mutated[rng.randrange(end)] ^= rng.randrange(1, 256)
        out.append(bytes(mutated))
    return out


@pytest.mark.parametrize("name", sorted(SNP))
def test_snp_flips_are_rejected(name: str) -> None:
    expected = SNP[name]
    report = (V / expected["report"]).read_bytes()
    cert = (V / expected["signing_cert"]).read_bytes()
    now = window(*expected["signing_cert_validity"])[1]
    verify_snp_report(report, vcek_or_vlek=cert, product=None, now=now)  # the original verifies
    accepted = []
    for mutated in flips(report, len(report), name):
        try:
            verify_snp_report(mutated, vcek_or_vlek=cert, product=None, now=now)
        except EvidenceError:
            continue
        accepted.append(mutated)
    assert not accepted, f"{len(accepted)} flipped reports were accepted"


@pytest.mark.parametrize("name", V4)
def test_tdx_flips_are_rejected(name: str) -> None:
    quote = (V / name).read_bytes()
    now: datetime = window(*TDX[name]["valid_window"].split(" .. "))[1]
    verify_tdx_quote(quote, now=now)
    # Bytes after the quote's own declared end are ignored by design (tests/tdx cover that policy).
    signed_end = len(quote) - parse_quote(quote).trailing_bytes
    accepted = []
    for mutated in flips(quote, signed_end, name):
        try:
            verify_tdx_quote(mutated, now=now)
        except EvidenceError:
            continue
        accepted.append(mutated)
    assert not accepted, f"{len(accepted)} flipped quotes were accepted"
