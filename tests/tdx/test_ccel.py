"""CCEL replay (go-tdx-guest TestReplayCcelWithTdQuote): the GCP TD's log replays to its quote's RTMRs."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from keyserver.errors import EvidenceError
from keyserver.evidence.tdx import parse_quote, replay_ccel, verify_ccel, verify_tdx_quote
from keyserver.evidence.tdx.ccel import EV_NO_ACTION, parse_ccel_table

from .helpers import GCP, utc, vec

LOG = vec("tdx/go-tdx-guest-gcp-ccel/ccel_data.dat")
TABLE = vec("tdx/go-tdx-guest-gcp-ccel/ccel_table.dat")
SPEC_EVENT_END = 0x20 + 0x21  # 32-byte SHA-1 format header + 33-byte Spec ID event


def _expected() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(vec("tdx/go-tdx-guest-gcp-ccel/expected-rtmrs.json"))
    return data


def test_ccel_replays_to_the_quote_rtmrs() -> None:
    quote = vec(GCP)
    claims = verify_tdx_quote(quote, now=utc("2025-01-21T13:44:20Z"))
    assert claims["report_data"] == vec("tdx/go-tdx-guest-gcp-ccel/nonce.dat").hex()
    replay = verify_ccel(parse_quote(quote).body, LOG, TABLE)
    expected = _expected()
    assert replay.log_bytes_used == expected["log_bytes_used"]
    for i in range(4):
        assert replay.rtmrs[i].hex() == expected["expected_rtmrs_from_quote"][f"rtmr{i}"]
    assert {e.mr_index for e in replay.events} == {1, 2, 3}
    assert all(e.event_type != EV_NO_ACTION for e in replay.events)


def test_ccel_table() -> None:
    table = parse_ccel_table(TABLE)
    assert table.oem_id == b"INTEL "
    assert table.log_area_minimum_length == 0x40000 == len(LOG)
    bad = bytearray(TABLE)
    bad[20] ^= 1
    with pytest.raises(EvidenceError) as exc:
        parse_ccel_table(bytes(bad))
    assert exc.value.reason == "eventlog-malformed"
    with pytest.raises(EvidenceError):
        replay_ccel(LOG + b"\xff", TABLE)  # larger than the log area


def test_edited_log_does_not_match_the_quote() -> None:
    body = parse_quote(vec(GCP)).body
    replay = replay_ccel(LOG)
    # Flip a byte of the first measured event's SHA-384 digest.
    first = LOG.index(struct.pack("<H", 0x000C), SPEC_EVENT_END) + 2
    edited = bytearray(LOG)
    edited[first] ^= 1
    with pytest.raises(EvidenceError) as exc:
        verify_ccel(body, bytes(edited))
    assert exc.value.reason == "rtmr-mismatch"
    # Truncating after the last event (dropping padding) is fine; dropping an event is not.
    verify_ccel(body, LOG[: replay.log_bytes_used])
    last = replay.events[-1].offset
    with pytest.raises(EvidenceError) as exc:
        verify_ccel(body, LOG[:last] + b"\xff" * 100)
    assert exc.value.reason == "rtmr-mismatch"
    # Garbage instead of padding after the last event is malformed.
    with pytest.raises(EvidenceError) as exc:
        replay_ccel(LOG[: replay.log_bytes_used] + b"\x01\x02")
    assert exc.value.reason == "eventlog-malformed"


@pytest.mark.parametrize("cut", [0, 10, 40, SPEC_EVENT_END + 5])
def test_truncated_log_is_malformed(cut: int) -> None:
    with pytest.raises(EvidenceError) as exc:
        replay_ccel(LOG[:cut])
    assert exc.value.reason == "eventlog-malformed"
