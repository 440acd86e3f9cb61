"""A minimal, strict DER reader: just enough to decode Intel's SGX extension in PCK certificates.

Only definite lengths in their shortest form are accepted (X.690 §10.1), tags must be single-byte
(low-tag-number form), and every reader is bounded by its parent: nothing can read past the TLV that
contains it. Any violation raises :class:`DerError`; callers turn it into an ``EvidenceError`` with their
own reason code.
"""

from __future__ import annotations

from dataclasses import dataclass

TAG_BOOLEAN = 0x01
TAG_INTEGER = 0x02
TAG_OCTET_STRING = 0x04
TAG_OID = 0x06
TAG_ENUMERATED = 0x0A
TAG_SEQUENCE = 0x30

# Nothing we decode is anywhere near this deep; a bound keeps hostile input from recursing.
_MAX_LENGTH_OCTETS = 4


class DerError(ValueError):
    """The bytes are not the DER structure the caller expected."""


@dataclass(frozen=True)
class Tlv:
    tag: int
    value: bytes


class DerReader:
    """Sequential reader over the concatenated TLVs of ``data``."""

    def __init__(self, data: bytes) -> None:
        self._data = bytes(data)
        self._pos = 0

    def at_end(self) -> bool:
        return self._pos == len(self._data)

    def read(self) -> Tlv:
        data, pos = self._data, self._pos
        if pos + 2 > len(data):
            raise DerError("truncated TLV header")
        tag = data[pos]
        if tag & 0x1F == 0x1F:
            raise DerError("high-tag-number form is not used here")
        first = data[pos + 1]
        pos += 2
        if first < 0x80:
            length = first
        elif first == 0x80:
            raise DerError("indefinite length is not DER")
        else:
            count = first & 0x7F
            if count > _MAX_LENGTH_OCTETS or pos + count > len(data):
                raise DerError("bad length-of-length")
            raw = data[pos : pos + count]
            if raw[0] == 0:
                raise DerError("length has a leading zero octet (not DER)")
            length = int.from_bytes(raw, "big")
            if length < 0x80:
                raise DerError("long-form length for a short value (not DER)")
            pos += count
        if pos + length > len(data):
            raise DerError("value runs past the end of its container")
        self._pos = pos + length
        return Tlv(tag=tag, value=data[pos : pos + length])

    def expect(self, tag: int) -> bytes:
        tlv = self.read()
        if tlv.tag != tag:
            raise DerError(f"expected tag 0x{tag:02x}, found 0x{tlv.tag:02x}")
        return tlv.value

    def finish(self) -> None:
        if not self.at_end():
            raise DerError("unexpected trailing data")


def decode_oid(value: bytes) -> str:
    """Dotted form of an OBJECT IDENTIFIER value (X.690 §8.19)."""
    if not value or value[-1] & 0x80:
        raise DerError("malformed OBJECT IDENTIFIER")
    arcs: list[int] = []
    current = 0
    started = False
    for byte in value:
        if not started and byte == 0x80:
            raise DerError("OBJECT IDENTIFIER arc with a leading 0x80 (not DER)")
        started = True
        current = (current << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(current)
            current = 0
            started = False
    first = arcs[0]
    head = [0, first] if first < 40 else [1, first - 40] if first < 80 else [2, first - 80]
    return ".".join(str(a) for a in head + arcs[1:])


def decode_unsigned(value: bytes, *, max_value: int) -> int:
    """A non-negative INTEGER/ENUMERATED in minimal two's-complement form, at most ``max_value``."""
    if not value:
        raise DerError("empty INTEGER")
    if len(value) > 1 and (
        (value[0] == 0x00 and not value[1] & 0x80) or (value[0] == 0xFF and value[1] & 0x80)
    ):
        raise DerError("INTEGER not minimally encoded")
    if value[0] & 0x80:
        raise DerError("negative INTEGER")
    number = int.from_bytes(value, "big")
    if number > max_value:
        raise DerError(f"INTEGER {number} is larger than {max_value}")
    return number


def decode_boolean(value: bytes) -> bool:
    if value == b"\x00":
        return False
    if value == b"\xff":
        return True
    raise DerError("BOOLEAN not DER-encoded")
