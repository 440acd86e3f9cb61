"""Decoding an NVIDIA GPU attestation report: the raw SPDM 1.1 ``GET_MEASUREMENTS`` request followed by
the ``MEASUREMENTS`` response, exactly as NVML returns it (DSP0274 1.1 §10.11; NVIDIA's OpaqueData TLVs).

Layout (all integers little-endian)::

    request  = 11 e0 <param1> <param2> || nonce (32) || slot (1)                         -- 37 bytes
    response = 11 60 00 00 || count (1) || record length (3) || record
               || responder nonce (32) || opaque length (2) || opaque data || signature (96, r || s)
    block    = index (1) || spec (1, = 1 DMTF) || size (2) || type (1) || value size (2) || value

What is accepted is exactly what NVIDIA's firmware produces and nothing looser: SPDM 1.1, a signed
request (param1 bit 0) for all measurements (param2 = 0xff) from slot 0; a record whose declared length
equals the sum of its blocks, blocks with strictly increasing indices 1..254, DMTF measurement
specification, value sizes that add up. Values may be of any size the record declares (NVIDIA's are 48
bytes, SHA-384), but a claim carries them only as given.

**Trailing bytes.** The signature sits at an offset computed from the lengths above; the signed
transcript ends where the signature starts. Bytes after the 96-byte signature are not part of the report:
they are *accepted and ignored* (counted in :attr:`GpuReport.trailing_bytes`, never read, signed or turned
into a claim), up to :data:`MAX_TRAILING_BYTES`. A real report from a CoCo CI run carries one such byte
(``00``); trustee and NVIDIA's verifiers parse the same way. It is the TDX rule (keyserver/evidence/tdx/
quote.py) with a bound: nothing that decides the verdict lies outside a length-delimited, signed region.

Every problem is ``EvidenceError("gpu-report-malformed", …)`` saying which field is wrong.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from types import MappingProxyType
from typing import Final

from keyserver.errors import EvidenceError

SPDM_VERSION_1_1: Final = 0x11
GET_MEASUREMENTS: Final = 0xE0
MEASUREMENTS: Final = 0x60
REQUEST_BYTES: Final = 37
NONCE_BYTES: Final = 32
SIGNATURE_BYTES: Final = 96  # ECDSA P-384: r || s, 48 bytes each, big-endian
# GPU reports one composite evidence carries (composite.py checks it; the loader's collector too, before
# collecting, without importing the verifier).
MAX_GPUS: Final = 8
DMTF_MEASUREMENT_SPEC: Final = 0x01
MAX_TRAILING_BYTES: Final = 64
MAX_REPORT_BYTES: Final = 64 * 1024
_RESPONSE_HEADER: Final = 8  # version, code, param1, param2, count, record length (3)

# NVIDIA OpaqueData TLV types (nvtrust spdm_msrt_resp_msg.py OpaqueData; attestation-sdk opaque_data).
OPAQUE_TYPES: Final = MappingProxyType(
    {
        1: "CERT_ISSUER_NAME",
        2: "CERT_AUTHORITY_KEY_IDENTIFIER",
        3: "DRIVER_VERSION",
        4: "GPU_INFO",
        5: "SKU",
        6: "VBIOS_VERSION",
        7: "MANUFACTURER_ID",
        8: "TAMPER_DETECTION",
        9: "SMC",
        10: "VPR",
        11: "NVDEC0_STATUS",
        12: "MSRSCNT",
        13: "CPRINFO",
        14: "BOARD_ID",
        15: "CHIP_SKU",
        16: "CHIP_SKU_MOD",
        17: "PROJECT",
        18: "PROJECT_SKU",
        19: "PROJECT_SKU_MOD",
        20: "FWID",
        21: "PROTECTED_PCIE_STATUS",
        22: "SWITCH_PDI",
        23: "FLOORSWEPT_PORTS",
        24: "POSITION_ID",
        25: "LOCK_SWITCH_STATUS",
        32: "GPU_LINK_CONN",
        33: "SYS_ENABLE_STATUS",
        34: "OPAQUE_DATA_VERSION",
        35: "CHIP_INFO",
        36: "FEATURE_FLAG",
    }
)
TLV_DRIVER_VERSION: Final = 3
TLV_VBIOS_VERSION: Final = 6
TLV_NVDEC0_STATUS: Final = 11
TLV_FWID: Final = 20
FWID_BYTES: Final = 48
VBIOS_VERSION_BYTES: Final = 8
_ASCII_TLVS: Final = frozenset({3, 15, 16, 17, 18, 19})


def _malformed(message: str) -> EvidenceError:
    return EvidenceError("gpu-report-malformed", f"the GPU report {message}")


@dataclass(frozen=True)
class MeasurementBlock:
    index: int  # 1-based, as SPDM numbers them
    value_type: int  # DMTFSpecMeasurementValueType
    value: bytes


@dataclass(frozen=True)
class GpuReport:
    request: bytes
    nonce: bytes  # the requester's nonce: what binds the report to a challenge
    param1: int
    param2: int
    slot: int
    blocks: tuple[MeasurementBlock, ...]
    responder_nonce: bytes
    opaque: MappingProxyType[int, bytes]  # TLV type -> value (each type at most once)
    signed_bytes: bytes  # request || response up to the signature: what the device key signed
    signature: bytes  # 96 bytes, r || s big-endian
    trailing_bytes: int  # after the signature; ignored (see the module docstring)

    def opaque_text(self, tlv: int) -> str | None:
        value = self.opaque.get(tlv)
        return None if value is None else _ascii(value, OPAQUE_TYPES[tlv])

    @property
    def driver_version(self) -> str | None:
        return self.opaque_text(TLV_DRIVER_VERSION)

    @property
    def vbios_version(self) -> str | None:
        """``%02X.%02X.%02X.%02X.%02X`` of bytes 3, 2, 1, 0, 4 (as NVIDIA's tools print it)."""
        raw = self.opaque.get(TLV_VBIOS_VERSION)
        if raw is None:
            return None
        return ".".join(f"{raw[i]:02X}" for i in (3, 2, 1, 0, 4))

    @property
    def fwid(self) -> bytes | None:
        return self.opaque.get(TLV_FWID)


def _ascii(value: bytes, name: str) -> str:
    text = value.split(b"\x00", 1)[0]
    # NUL padding is how the firmware fills the field; anything after the first NUL must be padding too.
    if any(value[len(text) :]):
        raise _malformed(f"opaque {name} has bytes after its NUL terminator")
    if not all(0x20 <= b < 0x7F for b in text):
        raise _malformed(f"opaque {name} is not printable ASCII")
    return text.decode("ascii")


class _Cursor:
    def __init__(self, data: bytes, start: int) -> None:
        self.data, self.pos = data, start

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise _malformed(f"is truncated in {what} (needs {n} bytes at offset {self.pos})")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out


def _parse_request(data: bytes) -> tuple[int, int, bytes, int]:
    if len(data) < REQUEST_BYTES:
        raise _malformed(f"is {len(data)} bytes: too short for the 37-byte GET_MEASUREMENTS request")
    version, code, param1, param2 = data[0], data[1], data[2], data[3]
    if version != SPDM_VERSION_1_1:
        raise _malformed(f"request has SPDM version 0x{version:02x}; NVIDIA GPUs speak SPDM 1.1 (0x11)")
    if code != GET_MEASUREMENTS:
        raise _malformed(f"request code is 0x{code:02x}, not GET_MEASUREMENTS (0xe0)")
    if param1 != 0x01:
        raise _malformed(f"request param1 is 0x{param1:02x}; a signed measurement request sets exactly bit 0")
    if param2 != 0xFF:
        raise _malformed(f"request param2 is 0x{param2:02x}; keyserver needs all measurements (0xff)")
    slot = data[36]
    if slot != 0:
        raise _malformed(f"request asks for certificate slot {slot}; NVIDIA GPUs sign with slot 0")
    return param1, param2, bytes(data[4:36]), slot


def _parse_blocks(record: bytes, count: int) -> tuple[MeasurementBlock, ...]:
    cursor = _Cursor(record, 0)
    blocks: list[MeasurementBlock] = []
    previous = 0
    for n in range(count):
        index, spec, size = struct.unpack("<BBH", cursor.take(4, f"measurement block #{n} header"))
        if not previous < index < 0xFF:
            raise _malformed(f"measurement block #{n} has index {index}; indices rise strictly from 1 to 254")
        if spec != DMTF_MEASUREMENT_SPEC:
            raise _malformed(f"measurement block {index} uses measurement specification {spec}, not DMTF (1)")
        body = cursor.take(size, f"measurement block {index}")
        if size < 3:
            raise _malformed(f"measurement block {index} is {size} bytes: too short for a DMTF measurement")
        value_type, value_size = struct.unpack("<BH", body[:3])
        if value_size != size - 3:
            raise _malformed(
                f"measurement block {index} declares a {value_size}-byte value in a {size - 3}-byte body"
            )
        blocks.append(MeasurementBlock(index, value_type, bytes(body[3:])))
        previous = index
    if cursor.pos != len(record):
        raise _malformed(
            f"measurement record is {len(record)} bytes but its {count} blocks take {cursor.pos}"
        )
    return tuple(blocks)


def _parse_opaque(data: bytes) -> MappingProxyType[int, bytes]:
    cursor = _Cursor(data, 0)
    out: dict[int, bytes] = {}
    while cursor.pos < len(data):
        kind, length = struct.unpack("<HH", cursor.take(4, "an opaque-data TLV header"))
        value = cursor.take(length, f"opaque-data TLV {kind}")
        if kind in out:
            raise _malformed(f"opaque data carries TLV {OPAQUE_TYPES.get(kind, kind)} twice")
        out[kind] = bytes(value)
    fwid = out.get(TLV_FWID)
    if fwid is not None and len(fwid) != FWID_BYTES:
        raise _malformed(f"opaque FWID is {len(fwid)} bytes, not {FWID_BYTES}")
    vbios = out.get(TLV_VBIOS_VERSION)
    if vbios is not None and len(vbios) != VBIOS_VERSION_BYTES:
        raise _malformed(f"opaque VBIOS_VERSION is {len(vbios)} bytes, not {VBIOS_VERSION_BYTES}")
    for kind in _ASCII_TLVS & out.keys():
        _ascii(out[kind], OPAQUE_TYPES[kind])
    return MappingProxyType(out)


def parse_gpu_report(data: bytes) -> GpuReport:
    """Decode ``request || response`` (raw bytes). No signature, nonce or certificate is checked here."""
    data = bytes(data)
    if len(data) > MAX_REPORT_BYTES:
        raise _malformed(f"is {len(data)} bytes; a GPU report is at most {MAX_REPORT_BYTES}")
    param1, param2, nonce, slot = _parse_request(data)
    cursor = _Cursor(data, REQUEST_BYTES)
    header = cursor.take(_RESPONSE_HEADER, "the MEASUREMENTS response header")
    if header[0] != SPDM_VERSION_1_1:
        raise _malformed(f"response has SPDM version 0x{header[0]:02x}, not 1.1 (0x11)")
    if header[1] != MEASUREMENTS:
        raise _malformed(f"response code is 0x{header[1]:02x}, not MEASUREMENTS (0x60)")
    if header[2] != 0 or header[3] != 0:
        raise _malformed("response param1/param2 are not zero (SPDM 1.1 reserves them for this request)")
    count = header[4]
    record_length = int.from_bytes(header[5:8], "little")
    if count == 0:
        raise _malformed("response holds no measurement blocks")
    blocks = _parse_blocks(cursor.take(record_length, "the measurement record"), count)
    responder_nonce = cursor.take(NONCE_BYTES, "the responder nonce")
    (opaque_length,) = struct.unpack("<H", cursor.take(2, "the opaque-data length"))
    opaque = _parse_opaque(cursor.take(opaque_length, "the opaque data"))
    signed_end = cursor.pos
    signature = cursor.take(SIGNATURE_BYTES, "the signature")
    trailing = len(data) - cursor.pos
    if trailing > MAX_TRAILING_BYTES:
        raise _malformed(
            f"has {trailing} bytes after its signature; at most {MAX_TRAILING_BYTES} are ignored, more means "
            "the lengths inside the report do not describe it"
        )
    return GpuReport(
        request=bytes(data[:REQUEST_BYTES]),
        nonce=nonce,
        param1=param1,
        param2=param2,
        slot=slot,
        blocks=blocks,
        responder_nonce=bytes(responder_nonce),
        opaque=opaque,
        signed_bytes=bytes(data[:signed_end]),
        signature=bytes(signature),
        trailing_bytes=trailing,
    )
