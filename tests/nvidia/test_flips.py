"""Tampering with the real GPU vectors: a flipped byte in the measurements, the signature, the nonce and
each certificate is refused with its reason; random single-byte flips anywhere in the signed report or
its signature are never accepted; random input never raises anything but EvidenceError.

Seeded per vector, so a failure reproduces; KEYSERVER_FLIPS sets how many random flips per vector."""

from __future__ import annotations

import base64
import os
import random
import zlib
from datetime import UTC, datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given
from hypothesis import strategies as st

from keyserver.errors import EvidenceError
from keyserver.evidence.nvidia import parse_gpu_report
from keyserver.evidence.nvidia.spdm import REQUEST_BYTES
from keyserver.evidence.nvidia.verify import verify_gpu_report
from tests.fuzzing import fuzz_settings

from .vectors import GpuVector, by_id

NOW = datetime(2026, 11, 23, tzinfo=UTC)
FLIPS = int(os.environ.get("KEYSERVER_FLIPS", "150"))
# One per distinct shape: opaque data with FWID (550), a trailing byte (580), no FWID (535), Blackwell.
SAMPLES = ["hopper-trustee-550", "hopper-trustee-coco-580", "hopper-nvat-535", "blackwell-nvat-575"]
MEASUREMENT_RECORD = REQUEST_BYTES + 8  # the first measurement block's offset


def reason_of(vector: GpuVector, report: bytes | None = None, chain: bytes | None = None) -> str:
    try:
        verify_gpu_report(
            vector.report if report is None else report,
            vector.chain if chain is None else chain,
            expected_nonce=vector.nonce,
            now=NOW,
        )
    except EvidenceError as exc:
        return exc.reason
    return "accepted"


def flip(data: bytes, offset: int, mask: int = 0x01) -> bytes:
    out = bytearray(data)
    out[offset] ^= mask
    return bytes(out)


@pytest.mark.parametrize("name", SAMPLES)
def test_flipped_measurement_signature_and_nonce_refused(name: str) -> None:
    v = by_id(name)
    report = parse_gpu_report(v.report)
    signature_at = len(report.signed_bytes)
    assert reason_of(v) == "accepted"
    value_of_block_10 = MEASUREMENT_RECORD + 9 * 55 + 7 + 20  # inside block 10's 48-byte value
    assert reason_of(v, flip(v.report, value_of_block_10)) == "gpu-signature-invalid"
    assert reason_of(v, flip(v.report, signature_at + 5)) == "gpu-signature-invalid"  # r
    assert reason_of(v, flip(v.report, signature_at + 60)) == "gpu-signature-invalid"  # s
    assert reason_of(v, flip(v.report, 4 + 31)) == "gpu-nonce-mismatch"  # the request's nonce
    # The responder nonce and the opaque data are signed too.
    assert reason_of(v, flip(v.report, signature_at - 1)) in ("gpu-signature-invalid", "gpu-report-malformed")
    assert reason_of(v, flip(v.report, MEASUREMENT_RECORD + 64 * 55 + 3)) == "gpu-signature-invalid"


def _with_flipped_cert(chain: bytes, index: int, offset_from_end: int) -> bytes:
    certs = x509.load_pem_x509_certificates(chain)
    ders = [c.public_bytes(Encoding.DER) for c in certs]
    ders[index] = flip(ders[index], len(ders[index]) - offset_from_end)
    out = b""
    for der in ders:  # PEM-armour the bytes as they are, whether or not they still parse
        body = base64.encodebytes(der).decode().replace("\n", "")
        lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        out += f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n".encode()
    return out


@pytest.mark.parametrize("name", SAMPLES)
@pytest.mark.parametrize(
    ("index", "reason"),
    [
        (0, "gpu-chain-invalid"),
        (1, "gpu-chain-invalid"),
        (2, "gpu-chain-invalid"),
        (3, "gpu-chain-untrusted"),
        (4, "gpu-chain-untrusted"),
    ],
)
def test_flipped_signature_byte_in_each_certificate_refused(name: str, index: int, reason: str) -> None:
    """The last byte of each certificate is in its signature: the issuer no longer vouches for it. For the
    Identity CA (3) the pinned root does not; a changed root (4) is no longer the pinned root."""
    v = by_id(name)
    assert reason_of(v, chain=_with_flipped_cert(v.chain, index, 1)) == reason


@pytest.mark.parametrize("name", SAMPLES)
def test_random_flips_in_each_certificate_refused(name: str) -> None:
    v = by_id(name)
    rng = random.Random(zlib.crc32(f"certs/{name}".encode()))
    count = len(x509.load_pem_x509_certificates(v.chain))
    accepted = []
    for _ in range(max(1, FLIPS // 3)):
        index = rng.randrange(count)
        der_len = len(x509.load_pem_x509_certificates(v.chain)[index].public_bytes(Encoding.DER))
        chain = _with_flipped_cert(v.chain, index, rng.randrange(1, der_len + 1))
        if reason_of(v, chain=chain) == "accepted":
            accepted.append(index)
    assert not accepted


@pytest.mark.parametrize("name", SAMPLES)
def test_random_flips_in_the_report_refused(name: str) -> None:
    v = by_id(name)
    report = parse_gpu_report(v.report)
    end = len(report.signed_bytes) + 96  # trailing bytes are ignored by design (test_vectors covers them)
    rng = random.Random(zlib.crc32(name.encode()))
    accepted = []
    for _ in range(FLIPS):
        offset = rng.randrange(end)
        if reason_of(v, flip(v.report, offset, rng.randrange(1, 256))) == "accepted":
            accepted.append(offset)
    assert not accepted, f"flips at {accepted} were accepted"


def test_truncations_refused() -> None:
    v = by_id("hopper-trustee-550")
    for cut in range(0, len(v.report), 97):
        assert reason_of(v, v.report[:cut]) == "gpu-report-malformed"


@pytest.mark.fuzz
@fuzz_settings(300)
@given(st.binary(max_size=5000))
def test_random_bytes_never_verify(data: bytes) -> None:
    v = by_id("hopper-trustee-550")
    with pytest.raises(EvidenceError):
        verify_gpu_report(data, v.chain, expected_nonce=v.nonce, now=NOW)


@pytest.mark.fuzz
@fuzz_settings(300)
@given(st.data())
def test_mutated_reports_parse_or_fail_typed(data: st.DataObject) -> None:
    """Splices of a real report (the header and lengths kept plausible) parse or fail with a reason."""
    v = by_id("hopper-trustee-coco-580")
    start = data.draw(st.integers(0, len(v.report) - 1))
    size = data.draw(st.integers(0, 64))
    replacement = data.draw(st.binary(max_size=64))
    mutated = v.report[:start] + replacement + v.report[start + size :]
    try:
        parse_gpu_report(mutated)
    except EvidenceError as exc:
        reason = exc.reason
    else:
        reason = "parsed"
    assert reason in ("parsed", "gpu-report-malformed")
    if mutated[: len(v.report) - 1] != v.report[:-1]:  # not just the ignored trailing byte changed
        with pytest.raises(EvidenceError):
            verify_gpu_report(mutated, v.chain, expected_nonce=v.nonce, now=NOW)


@pytest.mark.fuzz
@fuzz_settings(200)
@given(st.binary(max_size=3000))
def test_random_chains_never_verify(data: bytes) -> None:
    v = by_id("hopper-trustee-550")
    pem = b"-----BEGIN CERTIFICATE-----\n" + base64.encodebytes(data) + b"-----END CERTIFICATE-----\n"
    for chain in (data, pem):
        with pytest.raises(EvidenceError):
            verify_gpu_report(v.report, chain, expected_nonce=v.nonce, now=NOW)
