"""Property tests: arbitrary input never raises anything but EvidenceError, no edit to a byte that
contributes to the verdict ever verifies, and collateral is parsed exactly when it is within its bounds."""

from __future__ import annotations

import contextlib
import copy
import json
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
from keyserver.evidence.tdx.collateral import (
    MAX_ADVISORY_IDS,
    MAX_COLLATERAL_JSON,
    MAX_FREE_STRING,
    MAX_MODULE_IDENTITIES,
    MAX_TCB_LEVELS,
    parse_pcs_tcb_info,
    parse_tcb_info,
)
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


REAL_TCB_INFO = json.loads(json.loads(vec("tdx/dcap-qvl/tdx_quote_collateral.json"))["tcb_info"])
DCAP_QVL_DOCUMENT = json.loads(vec("tdx/dcap-qvl/tdx_quote_collateral.json"))


def _near(bound: int) -> st.SearchStrategy[int]:
    """Sizes that matter for a bound: around it, and anywhere below and a little above."""
    return st.one_of(st.integers(max(0, bound - 2), bound + 2), st.integers(0, bound + bound // 4))


@fuzz_settings(200)
@given(
    levels=_near(MAX_TCB_LEVELS),
    module_levels=_near(MAX_TCB_LEVELS),
    identities=_near(MAX_MODULE_IDENTITIES),
    advisories=_near(MAX_ADVISORY_IDS),
    advisory_length=_near(MAX_FREE_STRING),
    category_length=_near(MAX_FREE_STRING),
    at=st.integers(0, 10_000),
)
def test_tcb_info_is_parsed_iff_within_every_bound(
    levels: int,
    module_levels: int,
    identities: int,
    advisories: int,
    advisory_length: int,
    category_length: int,
    at: int,
) -> None:
    """The real TCB info with its lists and free strings resized: parsed exactly when every size is within
    its bound, otherwise collateral-malformed naming a bound that was exceeded."""
    tcb_info = copy.deepcopy(REAL_TCB_INFO)
    all_levels = [copy.deepcopy(tcb_info["tcbLevels"][i % 2]) for i in range(levels)]
    if all_levels:
        target = all_levels[at % len(all_levels)]
        target["advisoryIDs"] = [("INTEL-SA-" + "9" * advisory_length)[:advisory_length]] * advisories
        target["tcb"]["sgxtcbcomponents"][at % 16]["category"] = "c" * category_length
    tcb_info["tcbLevels"] = all_levels
    module = tcb_info["tdxModuleIdentities"][1]
    module["tcbLevels"] = [copy.deepcopy(module["tcbLevels"][i % 2]) for i in range(max(1, module_levels))]
    tcb_info["tdxModuleIdentities"] = [
        {**copy.deepcopy(tcb_info["tdxModuleIdentities"][i % 2]), "id": f"TDX_{i:02X}"}
        for i in range(identities)
    ]
    exceeded = [
        bound
        for bound, over in (
            (MAX_TCB_LEVELS, levels > MAX_TCB_LEVELS or (identities > 1 and module_levels > MAX_TCB_LEVELS)),
            (MAX_MODULE_IDENTITIES, identities > MAX_MODULE_IDENTITIES),
            (MAX_ADVISORY_IDS, levels > 0 and advisories > MAX_ADVISORY_IDS),
            (MAX_FREE_STRING, levels > 0 and category_length > MAX_FREE_STRING),
            (MAX_FREE_STRING, levels > 0 and advisories > 0 and advisory_length > MAX_FREE_STRING),
        )
        if over
    ]
    if levels and not exceeded:
        parsed = parse_tcb_info(tcb_info)
        assert len(parsed.tcb_levels) == levels
        assert len(parsed.tdx_module_identities) == identities
        return
    with pytest.raises(EvidenceError) as exc:
        parse_tcb_info(tcb_info)
    assert exc.value.reason == "collateral-malformed"
    assert len(exc.value.message) < 300
    expected = [f"at most {bound} are accepted" for bound in exceeded]
    if not levels:
        expected.append("tcbLevels must be a non-empty list")
    assert any(text in exc.value.message for text in expected), exc.value.message


@fuzz_settings(100)
@given(padding=_near(MAX_COLLATERAL_JSON - len(json.dumps(DCAP_QVL_DOCUMENT)) - 40))
def test_a_dcap_qvl_document_is_parsed_iff_within_the_size_bound(padding: int) -> None:
    data = json.dumps({**DCAP_QVL_DOCUMENT, "pck_certificate_chain": " " * padding}).encode()
    if len(data) <= MAX_COLLATERAL_JSON:
        parse_dcap_qvl_collateral(data)
        return
    with pytest.raises(EvidenceError) as exc:
        parse_dcap_qvl_collateral(data)
    assert exc.value.reason == "collateral-malformed"
    assert f"{len(data)} bytes; at most {MAX_COLLATERAL_JSON} are accepted" in exc.value.message


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
