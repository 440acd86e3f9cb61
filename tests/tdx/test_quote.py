"""Quote v4 structure: header checks, authoritative size fields, the trailing-bytes policy, input decoding."""

from __future__ import annotations

import struct

import pytest

from keyserver.errors import EvidenceError
from keyserver.evidence.tdx import decode_quote_input, parse_now, parse_quote, verify_tdx_quote
from keyserver.evidence.tdx.quote import SIG_DATA_OFFSET, SIGNED_SIZE

from .helpers import DCAP_QVL, GCP, SPR, V4_QUOTES, utc, vec

SPR_NOW = utc("2023-07-01T01:00:00Z")


def _signed_end(data: bytes) -> int:
    size: int = struct.unpack_from("<I", data, SIGNED_SIZE)[0]
    return SIG_DATA_OFFSET + size


def _reason(data: bytes, now_text: str = "2023-07-01T01:00:00Z") -> str:
    with pytest.raises(EvidenceError) as exc:
        verify_tdx_quote(data, now=utc(now_text))
    return exc.value.reason


# ----------------------------------------------------------------------------------- trailing bytes


def test_trailing_bytes_are_counted_and_ignored() -> None:
    spr = vec(SPR)
    assert parse_quote(spr).trailing_bytes == 39
    assert spr[_signed_end(spr) :] == b"\nextra bytes(only for testing purpose)\n"
    base = verify_tdx_quote(spr, now=SPR_NOW)
    stripped = spr[: _signed_end(spr)]
    assert parse_quote(stripped).trailing_bytes == 0
    for variant in (stripped, stripped + b"\xff" * 1000, stripped + bytes(8000), spr + b"more"):
        assert verify_tdx_quote(variant, now=SPR_NOW) == base
    # Claims carry no trace of the padding (so a padded and an unpadded quote appraise identically).
    assert not any("trailing" in key for key in base)


def test_zero_padded_gcp_quote() -> None:
    gcp = vec(GCP)
    assert len(gcp) == 8000
    quote = parse_quote(gcp)
    assert quote.trailing_bytes == 3065
    assert not any(gcp[_signed_end(gcp) :])


@pytest.mark.parametrize("name", V4_QUOTES)
def test_truncation_inside_the_declared_data_is_malformed(name: str) -> None:
    data = vec(name)
    end = _signed_end(data)
    for cut in (end - 1, end - 500, SIG_DATA_OFFSET + 10, SIGNED_SIZE + 2, 100, 1):
        with pytest.raises(EvidenceError) as exc:
            parse_quote(data[:cut])
        assert exc.value.reason == "quote-malformed", cut


def _edit_u(data: bytes, offset: int, fmt: str, delta: int) -> bytes:
    (value,) = struct.unpack_from(fmt, data, offset)
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value + delta)
    return bytes(out)


@pytest.mark.parametrize("delta", [-1, 1, 100])
def test_size_fields_are_authoritative(delta: int) -> None:
    data = vec(SPR)[: _signed_end(vec(SPR))] + bytes(200)  # room to grow
    outer = SIG_DATA_OFFSET + 128  # certification data header
    auth = outer + 6 + 384 + 64
    (auth_len,) = struct.unpack_from("<H", data, auth)
    inner = auth + 2 + auth_len
    for offset, fmt in ((SIGNED_SIZE, "<I"), (outer + 2, "<I"), (auth, "<H"), (inner + 2, "<I")):
        with pytest.raises(EvidenceError) as exc:
            parse_quote(_edit_u(data, offset, fmt, delta))
        assert exc.value.reason == "quote-malformed", (offset, delta)


# ------------------------------------------------------------------------------------------- header


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "reason"),
    [
        (0, "<H", 3, "unsupported-version"),
        (0, "<H", 5, "unsupported-version"),
        (0, "<H", 0xFFFF, "unsupported-version"),
        (2, "<H", 3, "unsupported-attestation-key-type"),
        (4, "<I", 0, "unsupported-tee-type"),
        (12, "<I", 0, "unsupported-qe-vendor"),
        (SIG_DATA_OFFSET + 128, "<H", 5, "unsupported-certification-data"),
    ],
)
def test_header_and_certification_type_checks(offset: int, fmt: str, value: int, reason: str) -> None:
    data = bytearray(vec(SPR))
    struct.pack_into(fmt, data, offset, value)
    assert _reason(bytes(data)) == reason


def test_nested_certification_type_must_be_5() -> None:
    data = bytearray(vec(SPR))
    auth = SIG_DATA_OFFSET + 128 + 6 + 384 + 64
    (auth_len,) = struct.unpack_from("<H", data, auth)
    struct.pack_into("<H", data, auth + 2 + auth_len, 3)
    assert _reason(bytes(data)) == "unsupported-certification-data"


def test_qe_report_binding_and_signatures() -> None:
    data = vec(SPR)
    auth = SIG_DATA_OFFSET + 128 + 6 + 384 + 64
    flips = {
        SIG_DATA_OFFSET + 5: "signature-invalid",  # quote signature
        SIG_DATA_OFFSET
        + 64
        + 5: "qe-report-data-mismatch",  # attestation key no longer matches the QE report
        SIG_DATA_OFFSET + 128 + 6 + 100: "qe-report-signature-invalid",  # QE report
        SIG_DATA_OFFSET + 128 + 6 + 384 + 5: "qe-report-signature-invalid",  # QE report signature
        auth + 2 + 3: "qe-report-data-mismatch",  # QE auth data
    }
    for offset, reason in flips.items():
        mutated = bytearray(data)
        mutated[offset] ^= 0x01
        assert _reason(bytes(mutated)) == reason, offset


def test_short_inputs() -> None:
    for data in (b"", b"\x04", b"\x04\x00", b"\x04\x00" + bytes(100)):
        with pytest.raises(EvidenceError) as exc:
            parse_quote(data)
        assert exc.value.reason in ("quote-malformed", "unsupported-version")


# --------------------------------------------------------------------------------------- input forms


def test_hex_input_is_detected_strictly() -> None:
    raw = vec(DCAP_QVL)
    text = raw.hex()
    assert decode_quote_input(text.encode()) == raw
    assert decode_quote_input(text.upper().encode()) == raw
    wrapped = "\n".join(text[i : i + 64] for i in range(0, len(text), 64)) + "\r\n"
    assert decode_quote_input(wrapped.encode()) == raw
    assert decode_quote_input(raw) == raw  # 0x04 is not a hex digit: raw stays raw
    for bad in (b"", text[:-1].encode(), b"0x" + text.encode(), b"   \n"):
        with pytest.raises(EvidenceError) as exc:
            decode_quote_input(bad)
        assert exc.value.reason == "quote-malformed"
    # base64 is not hex; taken as binary it fails the version check
    import base64

    with pytest.raises(EvidenceError) as exc:
        parse_quote(decode_quote_input(base64.b64encode(raw)))
    assert exc.value.reason == "unsupported-version"


def test_parse_now() -> None:
    assert parse_now("2025-07-19T10:00:34Z") == utc("2025-07-19T10:00:34Z")
    assert parse_now("2025-07-19T12:00:34+02:00") == utc("2025-07-19T10:00:34Z")
    with pytest.raises(ValueError, match="timezone"):
        parse_now("2025-07-19T10:00:34")
    with pytest.raises(ValueError, match="Invalid isoformat"):
        parse_now("yesterday")


def test_naive_now_is_a_programming_error() -> None:
    from datetime import datetime

    with pytest.raises(ValueError, match="timezone-aware"):
        verify_tdx_quote(vec(SPR), now=datetime(2023, 7, 1))
