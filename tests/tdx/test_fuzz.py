"""Property tests: arbitrary input never raises anything but EvidenceError, and no edit to a byte that
contributes to the verdict ever verifies."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyserver.errors import EvidenceError
from keyserver.evidence.tdx import (
    decode_quote_input,
    parse_dcap_qvl_collateral,
    replay_ccel,
    verify_tdx_quote,
)
from keyserver.evidence.tdx.collateral import parse_pcs_tcb_info
from keyserver.evidence.tdx.quote import SIG_DATA_OFFSET, SIGNED_SIZE
from tests.fuzzing import fuzz_settings

from .helpers import SPR, utc, vec

pytestmark = pytest.mark.fuzz

NOW = utc("2023-07-01T01:00:00Z")
SPR_BYTES = vec(SPR)
HEADER_PREFIX = (
    bytes.fromhex("0400020081000000") + bytes(4) + bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
)


def _signed_regions(data: bytes) -> list[range]:
    """Every byte whose value the verdict depends on: header+body (signed by the attestation key), the
    signature data length, the quote signature, the attestation key, the certification data type/size,
    the QE report and its signature, the QE auth data (bound by the QE report) and the nested type/size."""
    outer = SIG_DATA_OFFSET + 128
    auth = outer + 6 + 384 + 64
    (auth_len,) = struct.unpack_from("<H", data, auth)
    inner = auth + 2 + auth_len
    return [range(0, SIG_DATA_OFFSET), range(SIG_DATA_OFFSET, inner + 6)]


SIGNED_OFFSETS = [i for r in _signed_regions(SPR_BYTES) for i in r]


def _verify_only_evidence_errors(data: bytes) -> None:
    try:
        verify_tdx_quote(data, now=NOW)
    except EvidenceError:
        return


@fuzz_settings(300)
@given(st.binary(max_size=6000))
def test_random_bytes_only_raise_evidence_error(data: bytes) -> None:
    _verify_only_evidence_errors(data)


@fuzz_settings(300)
@given(st.binary(min_size=0, max_size=5000))
def test_random_bodies_behind_a_valid_header(tail: bytes) -> None:
    _verify_only_evidence_errors(HEADER_PREFIX + bytes(20) + tail)


@fuzz_settings(300)
@given(st.binary(max_size=2000))
def test_random_hex_and_binary_input_decoding(data: bytes) -> None:
    try:
        decoded = decode_quote_input(data)
    except EvidenceError:
        return
    _verify_only_evidence_errors(decoded)


@fuzz_settings(400)
@given(st.sampled_from(SIGNED_OFFSETS), st.integers(min_value=1, max_value=255))
def test_byte_flips_in_signed_regions_never_verify(offset: int, xor: int) -> None:
    mutated = bytearray(SPR_BYTES)
    mutated[offset] ^= xor
    try:
        verify_tdx_quote(bytes(mutated), now=NOW)
    except EvidenceError:
        return
    raise AssertionError(f"flipping byte {offset} with {xor:#x} still verified")


@fuzz_settings(200)
@given(st.lists(st.tuples(st.integers(0, len(SPR_BYTES) - 1), st.integers(1, 255)), min_size=2, max_size=8))
def test_multiple_flips_anywhere_only_raise_evidence_error(flips: list[tuple[int, int]]) -> None:
    mutated = bytearray(SPR_BYTES)
    for offset, xor in flips:
        mutated[offset] ^= xor
    _verify_only_evidence_errors(bytes(mutated))


@fuzz_settings(200)
@given(st.binary(max_size=3000))
def test_random_collateral_only_raises_evidence_error(data: bytes) -> None:
    for parse in (parse_dcap_qvl_collateral, parse_pcs_tcb_info):
        with contextlib.suppress(EvidenceError):
            parse(data)


@fuzz_settings(200)
@given(st.integers(0, 2400), st.integers(1, 255))
def test_byte_flips_in_tcb_info_only_raise_evidence_error(offset: int, xor: int) -> None:
    body = bytearray(vec("tdx/go-tdx-guest/sample_tcbInfo_response"))
    body[offset % len(body)] ^= xor
    with contextlib.suppress(EvidenceError):
        parse_pcs_tcb_info(bytes(body))


def test_signed_regions_cover_header_body_and_signature_data() -> None:
    assert SIGNED_OFFSETS[0] == 0
    assert SIGNED_SIZE in SIGNED_OFFSETS


CCEL_LOG = vec("tdx/go-tdx-guest-gcp-ccel/ccel_data.dat")[:18101]


@fuzz_settings(300)
@given(st.integers(0, len(CCEL_LOG) - 1), st.integers(1, 255), st.integers(0, 2))
def test_ccel_flips_only_raise_evidence_error(offset: int, xor: int, cut: int) -> None:
    log = bytearray(CCEL_LOG)
    log[offset] ^= xor
    with contextlib.suppress(EvidenceError):
        replay_ccel(bytes(log[: len(log) - cut * 997]))


@fuzz_settings(200)
@given(st.binary(max_size=4000))
def test_ccel_random_bytes_only_raise_evidence_error(data: bytes) -> None:
    with contextlib.suppress(EvidenceError):
        replay_ccel(CCEL_LOG[:65] + data)
