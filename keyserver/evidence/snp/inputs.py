"""Input helpers: turn what a user or a client sends into the exact bytes the verifier takes.

A report arrives either as the raw 1184-byte binary or as hex text (``xxd -p``, ``snpguest`` hex dumps,
JSON fields). Detection is strict and unambiguous:

* exactly 1184 bytes -> the raw report, taken as is;
* otherwise the input must consist only of hex digits and ASCII whitespace (space, tab, CR, LF; anywhere,
  so wrapped dumps work) and hold exactly 2368 hex digits -> decoded;
* anything else (a ``0x`` prefix, base64, a 1185-byte binary with a trailing newline, a truncated dump)
  is rejected with ``report-malformed``.
"""

from __future__ import annotations

from pathlib import Path

from keyserver.errors import EvidenceError

from .report import REPORT_SIZE

_HEX_DIGITS = frozenset(b"0123456789abcdefABCDEF")
_WHITESPACE = frozenset(b" \t\r\n")
MAX_REPORT_INPUT = 64 * 1024


def decode_report_input(data: bytes) -> bytes:
    """Return the raw 1184-byte report from raw binary or hex text (see module docstring)."""
    if len(data) == REPORT_SIZE:
        return bytes(data)
    if not data:
        raise EvidenceError("report-malformed", "the attestation report input is empty")
    if len(data) > MAX_REPORT_INPUT:
        raise EvidenceError(
            "report-malformed", f"the attestation report input is too large ({len(data)} bytes)"
        )
    allowed = _HEX_DIGITS | _WHITESPACE
    if any(b not in allowed for b in data):
        raise EvidenceError(
            "report-malformed",
            f"the attestation report input is {len(data)} bytes: neither the raw {REPORT_SIZE}-byte binary "
            "report nor hex text",
        )
    digits = bytes(b for b in data if b in _HEX_DIGITS)
    if len(digits) != 2 * REPORT_SIZE:
        raise EvidenceError(
            "report-malformed",
            f"the hex attestation report has {len(digits)} hex digits; a report is {REPORT_SIZE} bytes "
            f"= {2 * REPORT_SIZE} hex digits",
        )
    return bytes.fromhex(digits.decode("ascii"))


def read_limited(path: str | Path, limit: int, reason: str) -> bytes:
    """Read a whole file, refusing files larger than ``limit`` bytes (``EvidenceError(reason)``).
    ``OSError`` (missing file, permissions) propagates: that is a usage error, not bad evidence."""
    with open(path, "rb") as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise EvidenceError(reason, f"{path} is larger than {limit} bytes; refusing to read it")
    return data
