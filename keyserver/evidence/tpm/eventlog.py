"""TCG PC Client firmware event logs: strict parsing, replay, comparison with a quote, UEFI claims.

Reference: *TCG PC Client Platform Firmware Profile Specification* (PFP) rev. 1.06, §10 "Event Logging"
(section numbers below are from it). Event logs are **little-endian**, unlike the TPM wire format.

Formats (§10.2):

* legacy SHA-1 (TCG 1.2 style): every event is a TCG_PCR_EVENT {PCRIndex u32, EventType u32,
  Digest[20], EventSize u32, Event[EventSize]};
* crypto-agile: the first event is a TCG_PCR_EVENT of type EV_NO_ACTION whose data is the
  TCG_EfiSpecIDEvent "Spec ID Event03" header (§10.4.5.1) declaring the algorithms and their digest
  sizes; every later event is a TCG_PCR_EVENT2 {PCRIndex, EventType, TPML_DIGEST_VALUES, EventSize,
  Event}. The digest sizes come from the header, so an algorithm this code cannot hash still parses.

Decisions (fail closed, but accept what real firmware emits):

* EV_NO_ACTION events are never extended (§10.4.5). "StartupLocality" (§10.4.5.3) sets PCR 0's initial
  value to 00..0<locality> in every bank; it must come before any PCR 0 extension and at most once. An
  EV_EFI_HCRTM_EVENT as the first PCR 0 event means an H-CRTM started the platform: PCR 0 starts at 00..04.
  SP 800-155 reference-manifest events are recognised and recorded, never extended. Other EV_NO_ACTION
  events (short ones too, as go-attestation's ``short_no_action_eventlog``) are accepted and ignored.
* Events whose PCRIndex is 0xFFFFFFFF (Windows' WBCL writes such informational events, e.g. at the end of
  go-attestation's ``option_rom_eventlog``) correspond to no PCR: they are kept in the parsed log but never
  replayed and never used for claims. Any other PCRIndex above 23 is rejected.
* Trailing padding: once the bytes from an event boundary to the end are all 0xFF or all 0x00, parsing
  stops. The TDX CCEL log area is 0xFF-filled to its full size; some kernels hand out zero-filled
  buffers. Any other trailing byte is a truncated event and is rejected.
* Hostile input: the log is at most :data:`MAX_LOG_SIZE` bytes and :data:`MAX_EVENTS` events; every size
  is checked against the bytes that remain before anything is sliced, so work and memory are linear in
  the input (the padding test is two ``rstrip`` calls, not one scan per event).
* Event data digests: for the event types whose digest the PFP defines as the hash of the event data
  (:data:`DATA_DIGEST_TYPES`) the digest is recomputed; a mismatch is *flagged* (``digest_ok=False``,
  claim ``tpm.eventlog.digest_mismatches``), not rejected, because real firmware has such bugs
  (tpm2-tools' ``event-arch-linux.bin`` event 24) and the replay still matches the TPM. Claims are never
  derived from a flagged event.

Claims (:func:`verify_event_log`), only from events whose PCR matched the quote in an accepted bank:

* ``tpm.secure_boot``: the EFI_GLOBAL_VARIABLE "SecureBoot" measured as EV_EFI_VARIABLE_DRIVER_CONFIG into
  PCR 7 (§3.3.4.8, §10.4.4): data 01 → true, 00 or empty (variable absent: the firmware measures it with
  no data) → false; ``None`` when it is missing, not verified, or ambiguous.
* ``tpm.efi_apps``: the digests (lowercase hex, in the chosen bank, log order) of the EV_EFI_BOOT_SERVICES_
  APPLICATION events in PCR 4 - the Authenticode (PE image) hashes of every UEFI application the boot
  manager started (shim, grub, systemd-boot, the kernel's EFI stub...). Their device paths are *not* in
  the claim: the digest does not cover the event data, so a path is attacker-controlled text (it is in
  :attr:`EfiApp.path` for diagnostics only). ``None`` when PCR 4 was not verified in that bank.
"""

from __future__ import annotations

import hmac
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Final
from uuid import UUID

from keyserver.errors import EvidenceError
from keyserver.evidence.claims import Claims
from keyserver.evidence.tpm.structures import HASH_ALGS, HASH_BY_NAME, HashAlg, bank

# Event types (PFP §10.4.1 Table 9, and the EFI ones of §10.4.4).
EV_PREBOOT_CERT: Final = 0x00000000
EV_POST_CODE: Final = 0x00000001
EV_NO_ACTION: Final = 0x00000003
EV_SEPARATOR: Final = 0x00000004
EV_ACTION: Final = 0x00000005
EV_EVENT_TAG: Final = 0x00000006
EV_S_CRTM_CONTENTS: Final = 0x00000007
EV_S_CRTM_VERSION: Final = 0x00000008
EV_CPU_MICROCODE: Final = 0x00000009
EV_PLATFORM_CONFIG_FLAGS: Final = 0x0000000A
EV_TABLE_OF_DEVICES: Final = 0x0000000B
EV_COMPACT_HASH: Final = 0x0000000C
EV_IPL: Final = 0x0000000D
EV_IPL_PARTITION_DATA: Final = 0x0000000E
EV_NONHOST_CODE: Final = 0x0000000F
EV_NONHOST_CONFIG: Final = 0x00000010
EV_NONHOST_INFO: Final = 0x00000011
EV_OMIT_BOOT_DEVICE_EVENTS: Final = 0x00000012
EV_POST_CODE2: Final = 0x00000013
EV_EFI_VARIABLE_DRIVER_CONFIG: Final = 0x80000001
EV_EFI_VARIABLE_BOOT: Final = 0x80000002
EV_EFI_BOOT_SERVICES_APPLICATION: Final = 0x80000003
EV_EFI_BOOT_SERVICES_DRIVER: Final = 0x80000004
EV_EFI_RUNTIME_SERVICES_DRIVER: Final = 0x80000005
EV_EFI_GPT_EVENT: Final = 0x80000006
EV_EFI_ACTION: Final = 0x80000007
EV_EFI_PLATFORM_FIRMWARE_BLOB: Final = 0x80000008
EV_EFI_HANDOFF_TABLES: Final = 0x80000009
EV_EFI_PLATFORM_FIRMWARE_BLOB2: Final = 0x8000000A
EV_EFI_HANDOFF_TABLES2: Final = 0x8000000B
EV_EFI_VARIABLE_BOOT2: Final = 0x8000000C
EV_EFI_GPT_EVENT2: Final = 0x8000000D
EV_EFI_HCRTM_EVENT: Final = 0x80000010
EV_EFI_VARIABLE_AUTHORITY: Final = 0x800000E0
EV_EFI_SPDM_FIRMWARE_BLOB: Final = 0x800000E1
EV_EFI_SPDM_FIRMWARE_CONFIG: Final = 0x800000E2

EVENT_TYPE_NAMES: Final = {v: k for k, v in globals().items() if k.startswith("EV_") and isinstance(v, int)}

DATA_DIGEST_TYPES: Final = frozenset(
    {
        EV_SEPARATOR,  # §10.4.1: digest of the 4-byte separator value in the event data
        EV_ACTION,  # §10.4.1: digest of the action string
        EV_EFI_ACTION,  # §10.4.4: digest of the action string
        EV_S_CRTM_VERSION,  # §10.4.1: digest of the version string/GUID in the event data
        EV_OMIT_BOOT_DEVICE_EVENTS,  # §10.4.1: digest of the string "BOOT ATTEMPTS OMITTED"
        EV_EFI_VARIABLE_DRIVER_CONFIG,  # §10.4.4: digest of the UEFI_VARIABLE_DATA structure
        EV_EFI_VARIABLE_AUTHORITY,  # §10.4.4: digest of the UEFI_VARIABLE_DATA structure (see below)
        EV_EFI_VARIABLE_BOOT,  # §10.4.4: see _VARIABLE_DATA_ONLY_TYPES
        EV_EFI_VARIABLE_BOOT2,
        EV_EFI_GPT_EVENT,  # §10.4.4: digest of the UEFI_GPT_DATA structure
        EV_EFI_HCRTM_EVENT,  # §10.4.4: digest of the "HCRTM" string
    }
)
"""Types whose digest is defined as the hash of the event data. Not in the set on purpose: EV_POST_CODE,
EV_S_CRTM_CONTENTS, EV_EFI_PLATFORM_FIRMWARE_BLOB(2), EV_EFI_BOOT_SERVICES_*, EV_EFI_RUNTIME_SERVICES_DRIVER,
EV_EFI_HANDOFF_TABLES(2), EV_CPU_MICROCODE (digests of memory/images the data only points to) and
EV_EVENT_TAG (platform-defined). EV_IPL's content is defined by the OS loader, not the PFP; it is checked
for the loaders whose convention is known (see ``_data_digest_alternatives``)."""

_VARIABLE_DATA_ONLY_TYPES: Final = frozenset({EV_EFI_VARIABLE_BOOT, EV_EFI_VARIABLE_BOOT2})
"""For Boot#### / BootOrder the PFP (§10.4.4) hashes the UEFI_VARIABLE_DATA structure, but EDK2-derived
firmware hashes only its VariableData field; both are accepted for these two types."""

MAX_LOG_SIZE: Final = 16 * 1024 * 1024
"""Largest log accepted. Real firmware logs are 10-100 KiB; the CCEL area is 64-256 KiB."""
MAX_EVENTS: Final = 65536
"""Most events accepted (a Windows WBCL has a few thousand)."""
MAX_ALGORITHMS: Final = 8
"""Most digest algorithms a Spec ID header may declare (8 hash algorithms are registered)."""
MAX_PCR_INDEX: Final = 23
NO_PCR: Final = 0xFFFFFFFF
"""PCRIndex of events that extend nothing (Windows informational events)."""

SPEC_ID_EVENT03: Final = b"Spec ID Event03\x00"
STARTUP_LOCALITY: Final = b"StartupLocality\x00"
SP800_155_PREFIX: Final = b"SP800-155 Event"

EFI_GLOBAL_VARIABLE: Final = UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")

_LEGACY_HEADER = struct.Struct("<II20sI")
_U32 = struct.Struct("<I")
_U16 = struct.Struct("<H")


def _malformed(detail: str) -> EvidenceError:
    return EvidenceError(
        "eventlog-malformed",
        f"the TPM event log is malformed: {detail}. Send the firmware log unmodified "
        "(/sys/kernel/security/tpm0/binary_bios_measurements or the CCEL table's log area).",
    )


@dataclass(frozen=True, slots=True)
class SpecIdEvent:
    """TCG_EfiSpecIDEvent (PFP §10.4.5.1)."""

    platform_class: int
    spec_version: tuple[int, int, int]
    uintn_size: int
    algorithms: tuple[tuple[int, int], ...]
    """(TPM_ALG_ID, digest size) in header order."""
    vendor_info: bytes


@dataclass(frozen=True, slots=True)
class Event:
    """One event. ``number`` is its position in the log counting the header event as 0 (the numbering
    ``tpm2_eventlog`` prints). ``digests`` is keyed by bank name (``alg-0x....`` for unknown algorithms)."""

    number: int
    offset: int
    pcr: int
    event_type: int
    digests: Mapping[str, bytes]
    data: bytes
    digest_ok: bool | None = None
    """True/False when the type's digest is over the event data and could be recomputed, else None."""

    @property
    def type_name(self) -> str:
        return EVENT_TYPE_NAMES.get(self.event_type, f"0x{self.event_type:08x}")

    @property
    def extends(self) -> bool:
        return self.event_type != EV_NO_ACTION and self.pcr != NO_PCR


@dataclass(frozen=True, slots=True)
class EventLog:
    """A parsed log. ``events`` excludes the Spec ID header (kept in ``spec_id``)."""

    crypto_agile: bool
    spec_id: SpecIdEvent | None
    events: tuple[Event, ...]
    banks: tuple[str, ...]
    """Every bank the log carries digests for, header order."""
    startup_locality: int | None
    sp800_155_events: int
    trailing_padding: int


def _bank_name(alg: int) -> str:
    h = HASH_ALGS.get(alg)
    return h.name if h is not None else f"alg-0x{alg:04x}"


def _replayable(name: str) -> HashAlg | None:
    h = HASH_BY_NAME.get(name)
    return h if h is not None and h.hashlib_name is not None else None


def _data_digest_alternatives(event_type: int, pcr: int, data: bytes) -> list[bytes] | None:
    """What the digest of this event may be computed over, or ``None`` when it is not over the data."""
    if event_type in _VARIABLE_DATA_ONLY_TYPES:
        var = decode_efi_variable(data)
        return [data] if var is None else [data, var.data]
    if event_type == EV_EFI_VARIABLE_AUTHORITY:
        # Only a well-formed UEFI_VARIABLE_DATA is checked: shim and OVMF log some authority events with a
        # VariableDataLength 6 bytes short of the certificate that follows and a digest over data the log
        # does not contain (go-attestation issue 157; cos-85, debian-10, sb_cert_eventlog). Such an event
        # cannot be checked, and is never used for claims.
        return [data] if decode_efi_variable(data) is not None else None
    if event_type == EV_IPL:
        if pcr == 8:
            # GRUB ("grub_cmd: ...", "kernel_cmdline: ...") hashes the text after the first space, with or
            # without its NUL; systemd-boot hashes its whole (UTF-16) load options. As tpm2-tools checks.
            alternatives = [data, data.rstrip(b"\x00")]
            space = data.find(b" ")
            if space >= 0:
                alternatives += [data[space + 1 :], data[space + 1 :].rstrip(b"\x00")]
            return alternatives
        if pcr == 12:
            return [data]  # systemd-boot >= 251: the kernel command line as measured
        return None  # PCR 9 (files read by GRUB), PCR 14 (shim's MOK lists): digests of other data
    if event_type in DATA_DIGEST_TYPES:
        return [data]
    return None


def _check_data_digest(event_type: int, pcr: int, digests: Mapping[str, bytes], data: bytes) -> bool | None:
    alternatives = _data_digest_alternatives(event_type, pcr, data)
    if alternatives is None:
        return None
    checked = False
    for name, digest in digests.items():
        h = _replayable(name)
        if h is None:
            continue
        checked = True
        if not any(hmac.compare_digest(h.digest(a), digest) for a in alternatives):
            return False
    return True if checked else None


def _parse_spec_id(data: bytes) -> SpecIdEvent:
    # TCG_EfiSpecIDEvent: signature[16], platformClass u32, specVersionMinor u8, specVersionMajor u8,
    # specErrata u8, uintnSize u8, numberOfAlgorithms u32, digestSizes[n] {algorithmId u16,
    # digestSize u16}, vendorInfoSize u8, vendorInfo[vendorInfoSize] (PFP §10.4.5.1).
    if len(data) < 29:
        raise _malformed("the Spec ID Event03 header is truncated")
    platform_class = _U32.unpack_from(data, 16)[0]
    minor, major, errata, uintn = data[20], data[21], data[22], data[23]
    count = _U32.unpack_from(data, 24)[0]
    if major != 2:
        raise _malformed(f"the Spec ID header declares spec version {major}.{minor}, not 2.x")
    if uintn not in (1, 2):
        raise _malformed(f"the Spec ID header's uintnSize is {uintn}, not 1 (UINT32) or 2 (UINT64)")
    if not 1 <= count <= MAX_ALGORITHMS:
        raise _malformed(f"the Spec ID header declares {count} digest algorithms (1..{MAX_ALGORITHMS})")
    pos = 28
    if len(data) < pos + 4 * count + 1:
        raise _malformed("the Spec ID header's algorithm list is truncated")
    algorithms: list[tuple[int, int]] = []
    for _ in range(count):
        alg, size = struct.unpack_from("<HH", data, pos)
        pos += 4
        known = HASH_ALGS.get(alg)
        if any(a == alg for a, _ in algorithms):
            raise _malformed(f"the Spec ID header declares algorithm 0x{alg:04x} twice")
        if known is not None and known.size != size:
            raise _malformed(f"the Spec ID header gives {known.name} a {size}-byte digest, not {known.size}")
        if not 1 <= size <= 64:
            raise _malformed(f"the Spec ID header gives algorithm 0x{alg:04x} a {size}-byte digest")
        algorithms.append((alg, size))
    vendor_size = data[pos]
    pos += 1
    if len(data) != pos + vendor_size:
        raise _malformed(
            f"the Spec ID header is {len(data)} bytes but its fields and vendorInfo take {pos + vendor_size}"
        )
    return SpecIdEvent(
        platform_class, (major, minor, errata), 4 if uintn == 1 else 8, tuple(algorithms), data[pos:]
    )


def parse_event_log(data: bytes) -> EventLog:
    """Parse a TCG PC Client firmware event log (legacy SHA-1 or crypto-agile). Raises
    ``eventlog-empty``/``eventlog-too-large``/``eventlog-malformed``."""
    data = bytes(data)
    if not data:
        raise EvidenceError("eventlog-empty", "the TPM event log is empty: send the firmware event log")
    if len(data) > MAX_LOG_SIZE:
        raise EvidenceError(
            "eventlog-too-large", f"the TPM event log is {len(data)} bytes, more than {MAX_LOG_SIZE} accepted"
        )
    # Offsets from which everything up to the end is padding; computed once (linear), see module doc.
    ff_from = len(data.rstrip(b"\xff"))
    zero_from = len(data.rstrip(b"\x00"))
    if min(ff_from, zero_from) == 0:
        raise _malformed("it contains nothing but padding bytes")

    if len(data) < _LEGACY_HEADER.size:
        raise _malformed(f"the first event is truncated ({len(data)} bytes)")
    pcr0, type0, digest0, size0 = _LEGACY_HEADER.unpack_from(data, 0)
    spec_id: SpecIdEvent | None = None
    pos = 0
    # The Spec ID event is never extended, so its PCRIndex does not matter: the PFP says 0, the TDX CCEL
    # (UEFI 2.10 §38.4.1, MR index instead of PCR index) writes 1.
    if (
        pcr0 <= MAX_PCR_INDEX
        and type0 == EV_NO_ACTION
        and size0 >= len(SPEC_ID_EVENT03)
        and data[32 : 32 + len(SPEC_ID_EVENT03)] == SPEC_ID_EVENT03
    ):
        if digest0 != bytes(20):
            raise _malformed("the Spec ID event's digest is not zero")
        if 32 + size0 > len(data):
            raise _malformed("the Spec ID event is truncated")
        spec_id = _parse_spec_id(data[32 : 32 + size0])
        pos = 32 + size0

    banks = tuple(_bank_name(a) for a, _ in spec_id.algorithms) if spec_id else ("sha1",)
    sizes = dict(spec_id.algorithms) if spec_id else {}
    events: list[Event] = []
    startup_locality: int | None = None
    sp800_155 = 0
    pcr0_extended = False
    number = 1 if spec_id else 0
    while pos < len(data):
        if pos >= ff_from or pos >= zero_from:
            break
        if len(events) >= MAX_EVENTS:
            raise EvidenceError("eventlog-too-large", f"the TPM event log has more than {MAX_EVENTS} events")
        offset = pos
        if spec_id is None:
            if len(data) - pos < _LEGACY_HEADER.size:
                raise _malformed(f"event {number} at offset {pos} is truncated")
            pcr, etype, digest, size = _LEGACY_HEADER.unpack_from(data, pos)
            pos += _LEGACY_HEADER.size
            digests: dict[str, bytes] = {"sha1": digest}
        else:
            if len(data) - pos < 12:
                raise _malformed(f"event {number} at offset {pos} is truncated")
            pcr, etype, count = struct.unpack_from("<III", data, pos)
            pos += 12
            # The PFP (§10.2.2) wants one digest per declared algorithm; tpm2-tools' synthetic logs carry
            # fewer. A subset is accepted, and a bank missing from any extending event is not replayed.
            if not 1 <= count <= len(spec_id.algorithms):
                raise _malformed(
                    f"event {number} at offset {offset} carries {count} digests but the header declares "
                    f"{len(spec_id.algorithms)} algorithms"
                )
            digests = {}
            for _ in range(count):
                if len(data) - pos < 2:
                    raise _malformed(f"event {number} at offset {offset} is truncated")
                alg = _U16.unpack_from(data, pos)[0]
                pos += 2
                dsize = sizes.get(alg)
                if dsize is None:
                    raise _malformed(f"event {number} has a digest of undeclared algorithm 0x{alg:04x}")
                name = _bank_name(alg)
                if name in digests:
                    raise _malformed(f"event {number} has two {name} digests")
                if len(data) - pos < dsize:
                    raise _malformed(f"event {number} at offset {offset} is truncated")
                digests[name] = data[pos : pos + dsize]
                pos += dsize
            if len(data) - pos < 4:
                raise _malformed(f"event {number} at offset {offset} is truncated")
            size = _U32.unpack_from(data, pos)[0]
            pos += 4
        if size > len(data) - pos:
            raise _malformed(
                f"event {number} at offset {offset} declares {size} bytes of data but only "
                f"{len(data) - pos} remain"
            )
        edata = data[pos : pos + size]
        pos += size
        if pcr > MAX_PCR_INDEX and pcr != NO_PCR:
            raise _malformed(f"event {number} at offset {offset} names PCR {pcr}")

        if etype == EV_NO_ACTION:
            if edata.startswith(STARTUP_LOCALITY):
                if len(edata) != len(STARTUP_LOCALITY) + 1 or pcr != 0:
                    raise _malformed(f"event {number} is a malformed StartupLocality event")
                if startup_locality is not None or pcr0_extended:
                    raise _malformed(
                        f"event {number}: StartupLocality must come once, before PCR 0 is extended"
                    )
                startup_locality = edata[-1]
                if startup_locality > 4:
                    raise _malformed(f"StartupLocality {startup_locality} is not a locality (0-4)")
            elif edata.startswith(SP800_155_PREFIX):
                sp800_155 += 1
        elif pcr == 0:
            # An H-CRTM (PFP §10.4.5.3, TPM Part 1 §34.3) starts PCR 0 at 00..04 before its first
            # extension, which is this EV_EFI_HCRTM_EVENT: the log has no StartupLocality event then.
            if etype == EV_EFI_HCRTM_EVENT and not pcr0_extended and startup_locality is None:
                startup_locality = 4
            pcr0_extended = True
        events.append(
            Event(
                number=number,
                offset=offset,
                pcr=pcr,
                event_type=etype,
                digests=MappingProxyType(digests),
                data=edata,
                digest_ok=_check_data_digest(etype, pcr, digests, edata) if etype != EV_NO_ACTION else None,
            )
        )
        number += 1
    return EventLog(
        crypto_agile=spec_id is not None,
        spec_id=spec_id,
        events=tuple(events),
        banks=banks,
        startup_locality=startup_locality,
        sp800_155_events=sp800_155,
        trailing_padding=len(data) - pos if pos < len(data) else 0,
    )


def reset_value(bank_size: int, pcr: int, startup_locality: int | None = None) -> bytes:
    """A PCR's value after TPM2_Startup: zero, except PCR 17-22 (all 0xFF until a D-RTM resets them,
    PC Client PTP §4.3) and PCR 0 after a StartupLocality event (00..0<locality>, PFP §10.4.5.3)."""
    if 17 <= pcr <= 22:
        return b"\xff" * bank_size
    if pcr == 0 and startup_locality:
        return bytes(bank_size - 1) + bytes([startup_locality])
    return bytes(bank_size)


def replay(log: EventLog) -> dict[str, dict[int, bytes]]:
    """Replay every bank this code can hash and every extending event has a digest for. Only PCRs the log
    touches are returned: those it extends, and PCR 0 when a StartupLocality event sets its value."""
    out: dict[str, dict[int, bytes]] = {}
    for name in log.banks:
        h = _replayable(name)
        if h is None or any(e.extends and name not in e.digests for e in log.events):
            continue
        values: dict[int, bytes] = {}
        if log.startup_locality is not None:
            values[0] = reset_value(h.size, 0, log.startup_locality)
        for event in log.events:
            if not event.extends:
                continue
            current = values.get(event.pcr)
            if current is None:
                current = reset_value(h.size, event.pcr, log.startup_locality)
            values[event.pcr] = h.digest(current + event.digests[name])
        out[name] = values
    return out


def replay_matches_quote(
    replayed: Mapping[str, Mapping[int, bytes]], quoted: Mapping[str, Mapping[int, bytes]]
) -> tuple[tuple[str, int], ...]:
    """Compare replayed PCRs with quoted ones and return the (bank, PCR) pairs that match.

    Only PCRs both sides have are compared: a quote covers PCRs the firmware log never extends (PCR 10 is
    IMA's), and a log may extend PCRs the quote does not cover (MANIFEST §"pitfalls"). Raises
    ``eventlog-bank-mismatch`` when no bank is common and ``eventlog-replay-mismatch`` naming the first
    PCR (lowest index, then bank name) whose values differ."""
    common = sorted(set(replayed) & set(quoted))
    if not common:
        raise EvidenceError(
            "eventlog-bank-mismatch",
            f"the event log has the banks {', '.join(sorted(replayed)) or '(none)'} and the quote "
            f"{', '.join(sorted(quoted)) or '(none)'}: quote a bank the firmware logs",
        )
    pairs = sorted((pcr, b) for b in common for pcr in replayed[b] if pcr in quoted[b])
    for pcr, b in pairs:
        if not hmac.compare_digest(replayed[b][pcr], quoted[b][pcr]):
            raise EvidenceError(
                "eventlog-replay-mismatch",
                f"PCR {b}:{pcr} replayed from the event log is {replayed[b][pcr].hex()} but the quote says "
                f"{quoted[b][pcr].hex()}: the log is incomplete, altered, or from another boot",
            )
    return tuple((b, pcr) for pcr, b in pairs)


# --- UEFI event data (PFP §10.4.4 / UEFI spec) ---------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EfiVariable:
    """UEFI_VARIABLE_DATA: VariableName (GUID), UnicodeNameLength u64, VariableDataLength u64,
    UnicodeName (CHAR16[]), VariableData."""

    vendor: UUID
    name: str
    data: bytes


def decode_efi_variable(data: bytes) -> EfiVariable | None:
    """Decode UEFI_VARIABLE_DATA; ``None`` when the event data is not exactly one such structure."""
    if len(data) < 32:
        return None
    vendor = UUID(bytes_le=data[:16])
    name_len, data_len = struct.unpack_from("<QQ", data, 16)
    if name_len > len(data) or data_len > len(data) or 32 + 2 * name_len + data_len != len(data):
        return None
    try:
        name = data[32 : 32 + 2 * name_len].decode("utf-16-le")
    except UnicodeDecodeError:
        return None
    return EfiVariable(vendor, name, data[32 + 2 * name_len :])


@dataclass(frozen=True, slots=True)
class EfiApp:
    """An EV_EFI_BOOT_SERVICES_APPLICATION event in PCR 4 (UEFI_IMAGE_LOAD_EVENT)."""

    event_number: int
    digests: Mapping[str, bytes]
    path: str | None
    """Decoded device path, unauthenticated (not covered by the digest): diagnostics only."""


def _guid(raw: bytes) -> str:
    return str(UUID(bytes_le=raw))


def decode_device_path(raw: bytes) -> str:
    """Render an EFI_DEVICE_PATH_PROTOCOL (UEFI spec §10.3) in the usual text form, for diagnostics.
    Unknown nodes print as ``Path(type,subtype,hex)``. Raises ValueError when a node is malformed."""
    parts: list[str] = []
    pos = 0
    instance: list[str] = []
    while pos < len(raw):
        if len(raw) - pos < 4:
            raise ValueError("truncated device path node")
        ntype, sub, length = raw[pos], raw[pos + 1], _U16.unpack_from(raw, pos + 2)[0]
        if length < 4 or pos + length > len(raw):
            raise ValueError("bad device path node length")
        body = raw[pos + 4 : pos + length]
        pos += length
        if ntype == 0x7F:
            parts.append("/".join(instance))
            instance = []
            if sub == 0xFF:
                break
            continue
        if ntype == 0x04 and sub == 0x04:
            instance.append("File(" + body.decode("utf-16-le", "replace").rstrip("\x00") + ")")
        elif ntype == 0x04 and sub == 0x01 and len(body) == 38:
            part = _U32.unpack_from(body, 0)[0]
            sig = _guid(body[20:36]) if body[37] == 2 else body[20:24].hex()
            instance.append(f"HD({part},{'GPT' if body[36] == 2 else 'MBR'},{sig})")
        elif ntype == 0x04 and sub in (0x06, 0x07) and len(body) == 16:
            instance.append(f"{'FvFile' if sub == 0x06 else 'Fv'}({_guid(body)})")
        elif ntype == 0x01 and sub == 0x01 and len(body) == 2:
            instance.append(f"Pci(0x{body[1]:x},0x{body[0]:x})")
        elif ntype == 0x02 and sub == 0x01 and len(body) == 8:
            hid, uid = struct.unpack_from("<II", body, 0)
            instance.append(f"Acpi(0x{hid:08x},0x{uid:x})")
        else:
            instance.append(f"Path({ntype},{sub},{body.hex()})")
    if instance:
        parts.append("/".join(instance))
    return ",".join(p for p in parts if p)


def decode_image_load_event(data: bytes, uintn_size: int) -> str | None:
    """UEFI_IMAGE_LOAD_EVENT (PFP §10.2.3): ImageLocationInMemory u64, ImageLengthInMemory UINTN,
    ImageLinkTimeAddress UINTN, LengthOfDevicePath UINTN, DevicePath. Returns the device path text,
    or ``None`` when the data does not have that shape."""
    fmt = "<QQQQ" if uintn_size == 8 else "<QIII"
    head = struct.calcsize(fmt)
    if len(data) < head:
        return None
    path_len = struct.unpack_from(fmt, data, 0)[3]
    if head + path_len != len(data):
        return None
    try:
        return decode_device_path(data[head:])
    except ValueError:
        return None


def efi_apps(log: EventLog) -> tuple[EfiApp, ...]:
    """Every EV_EFI_BOOT_SERVICES_APPLICATION event in PCR 4, in log order."""
    sizes = (log.spec_id.uintn_size,) if log.spec_id else (8, 4)
    out: list[EfiApp] = []
    for event in log.events:
        if event.pcr != 4 or event.event_type != EV_EFI_BOOT_SERVICES_APPLICATION:
            continue
        path = None
        for size in sizes:
            path = decode_image_load_event(event.data, size)
            if path is not None:
                break
        out.append(EfiApp(event.number, event.digests, path))
    return tuple(out)


def secure_boot_state(log: EventLog, trusted_pcr7: bool) -> bool | None:
    """The SecureBoot variable measured into PCR 7; ``None`` unless PCR 7 is verified and every
    SecureBoot event decodes, has a matching data digest, and agrees."""
    if not trusted_pcr7:
        return None
    values: set[bool] = set()
    for event in log.events:
        if event.pcr != 7 or event.event_type != EV_EFI_VARIABLE_DRIVER_CONFIG:
            continue
        var = decode_efi_variable(event.data)
        if var is None or var.vendor != EFI_GLOBAL_VARIABLE or var.name != "SecureBoot":
            continue
        if event.digest_ok is not True:
            return None
        if var.data in (b"", b"\x00"):
            values.add(False)
        elif var.data == b"\x01":
            values.add(True)
        else:
            return None
    return values.pop() if len(values) == 1 else None


@dataclass(frozen=True)
class EventLogResult:
    """A log verified against quoted PCRs. ``verified`` lists the (bank, PCR) pairs whose replay matched
    the quote (SHA-1 pairs only with ``allow_sha1``)."""

    log: EventLog
    replayed: dict[str, dict[int, bytes]]
    verified: tuple[tuple[str, int], ...]
    claims: Claims
    efi_apps: tuple[EfiApp, ...]
    digest_mismatches: tuple[int, ...] = field(default=())


def verify_event_log(
    data: bytes,
    quoted_pcrs: Mapping[str, Mapping[int, bytes]],
    *,
    claims_bank: str = "sha256",
    allow_sha1: bool = False,
) -> EventLogResult:
    """Parse ``data``, replay it, check it against ``quoted_pcrs`` (the values a verified quote covers,
    e.g. ``QuoteResult.pcrs``) and derive the UEFI claims from the events the quote vouches for.

    ``claims_bank`` is the bank ``tpm.efi_apps`` digests are taken from (legacy SHA-1 logs need "sha1"
    and ``allow_sha1``). Raises ``eventlog-*`` errors; ``eventlog-unverifiable`` when no PCR the log
    extends is covered by the quote in an accepted bank."""
    log = parse_event_log(data)
    replayed = replay(log)
    matched = replay_matches_quote(replayed, quoted_pcrs)
    verified = tuple((b, p) for b, p in matched if allow_sha1 or b != "sha1")
    if not verified:
        raise EvidenceError(
            "eventlog-unverifiable",
            "no PCR the event log extends is covered by the quote in an accepted bank"
            + ("" if allow_sha1 else " (SHA-1 banks are not accepted)")
            + ": quote PCRs 0-9 of the SHA-256 bank with the log",
        )
    bank(claims_bank)  # an unknown name is a caller error, not "no claim"
    if claims_bank == "sha1" and not allow_sha1:
        raise EvidenceError("tpm-sha1-not-allowed", "SHA-1 event digests are not accepted without allow_sha1")
    trusted = set(verified)
    apps = efi_apps(log)
    pcr7 = any(p == 7 for _, p in trusted)
    efi_claim: list[str] | None = None
    if (claims_bank, 4) in trusted:
        efi_claim = [a.digests[claims_bank].hex() for a in apps if claims_bank in a.digests]
    mismatches = tuple(e.number for e in log.events if e.digest_ok is False)
    claims: Claims = {
        "tpm.secure_boot": secure_boot_state(log, pcr7),
        "tpm.efi_apps": efi_claim,
        "tpm.eventlog.digest_mismatches": [str(n) for n in mismatches],
    }
    return EventLogResult(log, replayed, verified, claims, apps, mismatches)
