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


# --- Azure CVM evidence and AWS Nitro documents (issue 19) -------------------------------------------------

# HCL header bytes nothing authenticates and the verifier does not interpret (version, request type): a flip
# there changes nothing that reaches a claim. In a TDX HCL report the TDREPORT is not authenticated either
# (its MAC is CPU-local); only its REPORTDATA is compared with the quote, which is the authenticated copy.
_HCL_UNCHECKED = set(range(0x04, 0x08)) | set(range(0x0C, 0x10))
_TDREPORT_CHECKED = set(range(0x20 + 128, 0x20 + 192))


def _hcl_flip_range(tee: str, size: int) -> list[int]:
    offsets = [i for i in range(size) if i not in _HCL_UNCHECKED]
    if tee == "azure-tdx-vtpm":
        offsets = [i for i in offsets if not 0x20 <= i < 0x4C0 or i in _TDREPORT_CHECKED]
    return offsets


@pytest.mark.filterwarnings("ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize("name", ["snp/hcl-report", "snp/evidence-v0", "tdx/hcl-report"])
def test_azure_flips_are_rejected(name: str) -> None:
    from tests.cloud.test_azure import verify
    from tests.cloud.vectors import AZURE

    v = AZURE[name]
    verify(v)  # the original verifies
    rng = random.Random(zlib.crc32(name.encode()))
    offsets = _hcl_flip_range(v.tee, len(v.hcl_report))
    accepted = []
    for i in range(FLIPS):
        part = ("hcl_report", "quote", "signature")[i % 3]
        data = bytearray(getattr(v, part))
        at = rng.choice(offsets) if part == "hcl_report" else rng.randrange(len(data))
        data[at] ^= rng.randrange(1, 256)
        try:
            verify(v.with_(**{part: bytes(data)}))
        except EvidenceError:
            continue
        accepted.append((part, at))
    assert not accepted, f"{len(accepted)} flipped Azure evidence were accepted: {accepted[:5]}"


@pytest.mark.parametrize(
    "name",
    ["valid-attestation-doc-bytes", "debug-mode-attestation-doc-bytes", "valid-attestation-doc-base64"],
)
def test_nitro_flips_are_rejected(name: str) -> None:
    from keyserver.evidence.nitro.verify import verify_nitro_document
    from tests.cloud.vectors import NITRO

    v = NITRO[name]
    now = v.not_before + (v.not_after - v.not_before) / 2
    verify_nitro_document(v.document, now=now)
    accepted = []
    for mutated in flips(v.document, len(v.document), name):
        try:
            verify_nitro_document(mutated, now=now)
        except EvidenceError:
            continue
        accepted.append(mutated)
    assert not accepted, f"{len(accepted)} flipped Nitro documents were accepted"
