"""CCEL: the TD's confidential-computing event log, replayed into RTMR0-3 and checked against a quote.

Self-contained on purpose (no dependency on the TPM event-log parser). References:

* ACPI 6.5 §5.2.34 "CC Event Log ACPI Table" (``CCEL``, 56 bytes): standard 36-byte header, CC type (u8,
  2 = TDX), CC subtype (u8), reserved (u16), Log Area Minimum Length (u64), Log Area Start Address (u64).
* UEFI 2.10 §38 "Confidential Computing" (``EFI_CC_MEASUREMENT_PROTOCOL``): the log uses the TCG2 crypto-agile
  format; an event's "PCRIndex" is a CC measurement-register index: 0 = MRTD (never in the log),
  1 = RTMR0, 2 = RTMR1, 3 = RTMR2, 4 = RTMR3.
* TCG PC Client Platform Firmware Profile, §10.2.1 ``TCG_PCClientPCREvent`` (the first, SHA-1-format event
  carrying ``TCG_EfiSpecIdEvent`` "Spec ID Event03" with the digest sizes) and §10.2.2 ``TCG_PCR_EVENT2``
  (index u32, type u32, ``TPML_DIGEST_VALUES`` {count u32, (algId u16, digest)...}, event size u32, event).
* Intel TDX Module spec, TDG.MR.RTMR.EXTEND: ``RTMR = SHA-384(RTMR || digest)``, RTMRs start at zero.

Replay extends every event except ``EV_NO_ACTION`` (0x3) with its SHA-384 digest. The log area is padded
after the last event (0xFF on EDK2, sometimes 0x00); an all-padding remainder ends the log, anything else
that does not parse is ``eventlog-malformed``. The replayed RTMRs must equal the quote's
(``rtmr-mismatch`` otherwise); only then can the events be trusted, and only as far as the quote is.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass

from keyserver.errors import EvidenceError

from .quote import TdReportBody

EV_NO_ACTION = 0x00000003
TPM_ALG_SHA1 = 0x0004
TPM_ALG_SHA384 = 0x000C
CCEL_TABLE_SIZE = 56
CC_TYPE_TDX = 2
MAX_EVENTS = 100_000
_MALFORMED = "eventlog-malformed"
_SPEC_ID_SIGNATURE = b"Spec ID Event03\x00"


@dataclass(frozen=True)
class CcelTable:
    oem_id: bytes
    oem_table_id: bytes
    cc_type: int
    cc_subtype: int
    log_area_minimum_length: int
    log_area_start_address: int


@dataclass(frozen=True)
class CcelEvent:
    offset: int  # of the event in the log area
    mr_index: int  # 1..4 = RTMR0..3
    event_type: int
    sha384: bytes
    data: bytes


@dataclass(frozen=True)
class CcelReplay:
    rtmrs: tuple[bytes, bytes, bytes, bytes]
    events: tuple[CcelEvent, ...]  # the measured (extended) events, in log order
    log_bytes_used: int


def _err(message: str) -> EvidenceError:
    return EvidenceError(_MALFORMED, f"CCEL event log: {message}")


def parse_ccel_table(table: bytes) -> CcelTable:
    """The ACPI CCEL table (signature, length 56, checksum, TDX type)."""
    if len(table) != CCEL_TABLE_SIZE or table[0:4] != b"CCEL":
        raise _err(f"the ACPI table is not a {CCEL_TABLE_SIZE}-byte CCEL table")
    (length,) = struct.unpack_from("<I", table, 4)
    if length != CCEL_TABLE_SIZE:
        raise _err(f"the CCEL table declares length {length}")
    if sum(table) % 256:
        raise _err("the CCEL table checksum is wrong")
    cc_type, cc_subtype = table[36], table[37]
    if cc_type != CC_TYPE_TDX:
        raise _err(f"the CCEL table is for CC type {cc_type}, not TDX ({CC_TYPE_TDX})")
    laml, lasa = struct.unpack_from("<QQ", table, 40)
    return CcelTable(
        oem_id=table[10:16],
        oem_table_id=table[16:24],
        cc_type=cc_type,
        cc_subtype=cc_subtype,
        log_area_minimum_length=laml,
        log_area_start_address=lasa,
    )


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise _err(f"{what} runs past the end of the log (offset {self.pos})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u8(self, what: str) -> int:
        return self.take(1, what)[0]

    def u16(self, what: str) -> int:
        value: int = struct.unpack("<H", self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = struct.unpack("<I", self.take(4, what))[0]
        return value


def _spec_id(cur: _Cursor) -> dict[int, int]:
    """The first event (SHA-1 format) with the Spec ID event; return {algId: digest size}."""
    cur.u32("first event index")
    if cur.u32("first event type") != EV_NO_ACTION:
        raise _err("the first event is not the EV_NO_ACTION Spec ID event")
    cur.take(20, "first event digest")
    size = cur.u32("Spec ID event size")
    spec = _Cursor(cur.take(size, "Spec ID event"))
    if spec.take(16, "Spec ID signature") != _SPEC_ID_SIGNATURE:
        raise _err("the first event is not a 'Spec ID Event03' (crypto-agile) event")
    spec.take(4 + 1 + 1 + 1 + 1, "Spec ID header")  # platformClass, version minor/major, errata, uintnSize
    count = spec.u32("number of algorithms")
    if not 1 <= count <= 16:
        raise _err(f"the Spec ID event lists {count} algorithms")
    sizes: dict[int, int] = {}
    for _ in range(count):
        alg, digest_size = spec.u16("algorithm id"), spec.u16("digest size")
        if alg in sizes or not 1 <= digest_size <= 64:
            raise _err(f"bad algorithm entry {alg:#06x}/{digest_size}")
        sizes[alg] = digest_size
    vendor = spec.u8("vendor info size")
    spec.take(vendor, "vendor info")
    if spec.pos != len(spec.data):
        raise _err("trailing bytes in the Spec ID event")
    if sizes.get(TPM_ALG_SHA384) != 48:
        raise _err("the log does not carry SHA-384 digests (needed for RTMRs)")
    return sizes


def _is_padding(rest: bytes) -> bool:
    return not rest or rest == b"\xff" * len(rest) or rest == b"\x00" * len(rest)


def replay_ccel(log: bytes, table: bytes | None = None) -> CcelReplay:
    """Parse the CCEL log area and replay it into RTMR0-3 (see module docstring)."""
    if table is not None:
        info = parse_ccel_table(table)
        if len(log) > info.log_area_minimum_length:
            raise _err(
                f"the log ({len(log)} bytes) is larger than the CCEL table's log area "
                f"({info.log_area_minimum_length} bytes)"
            )
    cur = _Cursor(bytes(log))
    sizes = _spec_id(cur)
    rtmrs = [bytes(48)] * 4
    events: list[CcelEvent] = []
    count = 0
    while not _is_padding(cur.data[cur.pos :]):
        count += 1
        if count > MAX_EVENTS:
            raise _err(f"more than {MAX_EVENTS} events")
        start = cur.pos
        mr_index = cur.u32("event index")
        event_type = cur.u32("event type")
        digest_count = cur.u32("digest count")
        if digest_count != len(sizes):
            raise _err(
                f"event at offset {start} has {digest_count} digests, the Spec ID event declares {len(sizes)}"
            )
        sha384: bytes | None = None
        seen: set[int] = set()
        for _ in range(digest_count):
            alg = cur.u16("digest algorithm")
            if alg not in sizes or alg in seen:
                raise _err(
                    f"event at offset {start} has an undeclared or repeated digest algorithm {alg:#06x}"
                )
            seen.add(alg)
            digest = cur.take(sizes[alg], "digest")
            if alg == TPM_ALG_SHA384:
                sha384 = digest
        data = cur.take(cur.u32("event size"), "event data")
        if event_type == EV_NO_ACTION:
            continue
        if not 1 <= mr_index <= 4:
            raise _err(
                f"event at offset {start} extends CC MR index {mr_index}; only 1-4 (RTMR0-3) are extendable"
            )
        assert sha384 is not None  # SHA-384 is declared, and every declared algorithm is present once
        rtmrs[mr_index - 1] = hashlib.sha384(rtmrs[mr_index - 1] + sha384).digest()
        events.append(
            CcelEvent(offset=start, mr_index=mr_index, event_type=event_type, sha384=sha384, data=data)
        )
    return CcelReplay(
        rtmrs=(rtmrs[0], rtmrs[1], rtmrs[2], rtmrs[3]), events=tuple(events), log_bytes_used=cur.pos
    )


def verify_ccel(body: TdReportBody, log: bytes, table: bytes | None = None) -> CcelReplay:
    """Replay the CCEL and require RTMR0-3 to equal those of the (already verified) quote body."""
    replay = replay_ccel(log, table)
    for i, (replayed, quoted) in enumerate(zip(replay.rtmrs, body.rtmrs, strict=True)):
        if replayed != quoted:
            raise EvidenceError(
                "rtmr-mismatch",
                f"the CCEL event log replays RTMR{i} to {replayed.hex()} but the quote reports "
                f"{quoted.hex()}: "
                "the log is not the one the TD measured (incomplete, reordered or edited)",
            )
    return replay
