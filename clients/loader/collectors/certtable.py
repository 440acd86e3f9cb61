"""The SEV-SNP certificate table: what configfs-tsm's ``auxblob`` holds when the provider is ``sev_guest``.

Format (AMD GHCB specification 56421, §4.1.8.1 "SNP Extended Guest Request", the certificate data the
host supplies; the Linux sev-guest driver passes it through as ``auxblob``): a table of 24-byte entries

    GUID (16 bytes) | offset (u32, little-endian) | length (u32, little-endian)

terminated by an all-zero entry; each offset counts from the start of the table and points past its end.
GUIDs are stored in the byte order their text reads (what ``uuid_parse`` produces: AMD's sev-guest
tools, go-sev-guest and virtee/sev all do so). An empty auxblob means the host supplied no certificates.

The parser is strict: no terminator, an entry pointing into the table or past the data, an empty or
duplicated entry, or a zero GUID anywhere but the terminator is :class:`CertTableMalformed`.
"""

from __future__ import annotations

import struct
import uuid
from typing import Final

from clients.loader.collectors.errors import CertTableMalformed

ENTRY_SIZE: Final = 24
VCEK_GUID: Final = uuid.UUID("63da758d-e664-4564-adc5-f4b93be8accd")
VLEK_GUID: Final = uuid.UUID("a8074bc2-a25a-483e-aae6-39c045a0b8a1")
ASK_GUID: Final = uuid.UUID("4ab7b379-bbac-4fe4-a02f-05aef327c782")
ARK_GUID: Final = uuid.UUID("c0b406a4-a803-4952-9743-3fb6014cd0ae")
CRL_GUID: Final = uuid.UUID("92f81bc3-5811-4d3d-97ff-d19f88dc67ea")
_ZERO_GUID: Final = bytes(16)


def parse_cert_table(blob: bytes) -> dict[uuid.UUID, bytes]:
    """Each certificate of the table by GUID (empty for an empty blob)."""
    if not blob:
        return {}
    entries: list[tuple[uuid.UUID, int, int]] = []
    position = 0
    while True:
        if position + ENTRY_SIZE > len(blob):
            raise CertTableMalformed(
                f"the certificate table has no all-zero terminating entry within its {len(blob)} bytes"
            )
        raw_guid = blob[position : position + 16]
        offset, length = struct.unpack_from("<II", blob, position + 16)
        position += ENTRY_SIZE
        if raw_guid == _ZERO_GUID:
            if offset or length:
                raise CertTableMalformed(
                    f"entry {len(entries)} has the zero GUID but offset {offset} and length {length}: "
                    "only the all-zero terminator may have the zero GUID"
                )
            break
        entries.append((uuid.UUID(bytes=raw_guid), offset, length))
    table_end = position
    certificates: dict[uuid.UUID, bytes] = {}
    for index, (guid, offset, length) in enumerate(entries):
        if guid in certificates:
            raise CertTableMalformed(f"GUID {guid} appears twice in the certificate table")
        if length == 0:
            raise CertTableMalformed(f"entry {index} ({guid}) is empty")
        if offset < table_end:
            raise CertTableMalformed(
                f"entry {index} ({guid}) starts at {offset}, inside the {table_end}-byte table itself"
            )
        if offset + length > len(blob):
            raise CertTableMalformed(
                f"entry {index} ({guid}) spans bytes {offset}..{offset + length} of a {len(blob)}-byte blob"
            )
        certificates[guid] = blob[offset : offset + length]
    return certificates


def single_der_value(data: bytes) -> bool:
    """Whether ``data`` is exactly one DER SEQUENCE (a certificate's outer shape), nothing before or after."""
    if len(data) < 2 or data[0] != 0x30:
        return False
    first = data[1]
    if first < 0x80:
        return len(data) == 2 + first
    count = first & 0x7F
    if not 1 <= count <= 4 or len(data) < 2 + count or data[2] == 0:
        return False
    length = int.from_bytes(data[2 : 2 + count], "big")
    return length >= 0x80 and len(data) == 2 + count + length
