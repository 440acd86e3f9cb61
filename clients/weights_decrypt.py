"""Reading encrypted model weights: the format's header, and decryption (docs/weights-format.md).

The half of :mod:`clients.weights` a trusted loader runs: it decrypts the weights into memory once their
key is released, and never encrypts. Kept apart so that the loader's measured image holds no encryption
code or command line; :mod:`clients.weights` (the model owner's side) re-exports everything here. The
format itself (subkey, nonces, AAD, all-or-nothing decryption) is described there.
"""

from __future__ import annotations

import hashlib
import os
import re
import struct
from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

MAGIC: Final = b"KSWEIGHT"
FORMAT_VERSION: Final = 1
KEY_BYTES: Final = 32
FILE_ID_BYTES: Final = 32
TAG_BYTES: Final = 16
# Small chunks only cost 16 bytes of tag each; the lower bound merely keeps nonsense out. The upper
# bound is what a reader must hold in memory for one chunk.
MIN_CHUNK_SIZE: Final = 16
MAX_CHUNK_SIZE: Final = 64 << 20
DEFAULT_CHUNK_SIZE: Final = 1 << 20
# 4 TiB: larger than any model in sight, and it keeps every chunk index far below 2^64.
MAX_PLAINTEXT_BYTES: Final = 1 << 42
MAX_KEY_ID_BYTES: Final = 255
# Printable, unambiguous, needs no escaping anywhere (keyserver's own ids are "<name>/<version>").
_KEY_ID_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/@+-]*")

_SUBKEY_LABEL: Final = b"keyserver-weights-v1 chunk key"
# magic, version, key id length | key id | chunk size, plaintext length, file id
_PREFIX: Final = struct.Struct(">8sBB")
_SUFFIX: Final = struct.Struct(f">IQ{FILE_ID_BYTES}s")
MAX_HEADER_BYTES: Final = _PREFIX.size + MAX_KEY_ID_BYTES + _SUFFIX.size


class WeightsError(Exception):
    """Base of every refusal of this module: catch it to fail closed on any of them."""


class WeightsFormatError(WeightsError):
    """The bytes are not a well-formed weights file (the message says what is wrong)."""


class WeightsAuthenticationError(WeightsError):
    """A chunk did not authenticate: the file was modified, or this is not the key it was encrypted with."""


class WeightsKeyIdError(WeightsError):
    """The file names another key than the one the caller holds."""


@dataclass(frozen=True)
class WeightsHeader:
    """A weights file's header: readable without the key (it is authenticated by every chunk)."""

    version: int
    key_id: str
    chunk_size: int
    plaintext_length: int
    file_id: bytes

    @property
    def chunk_count(self) -> int:
        # Always at least one chunk: an empty file still has one (empty, final) chunk that authenticates
        # the header, so that "no chunks at all" cannot pass for an empty model.
        return max(1, -(-self.plaintext_length // self.chunk_size))

    @property
    def header_length(self) -> int:
        return _PREFIX.size + len(self.key_id) + _SUFFIX.size

    @property
    def file_length(self) -> int:
        """The exact length of the whole file: header, plaintext and one tag per chunk."""
        return self.header_length + self.plaintext_length + TAG_BYTES * self.chunk_count

    def to_bytes(self) -> bytes:
        key_id = self.key_id.encode("ascii")
        return (
            _PREFIX.pack(MAGIC, self.version, len(key_id))
            + key_id
            + _SUFFIX.pack(self.chunk_size, self.plaintext_length, self.file_id)
        )


def _check_key(key: bytes) -> bytes:
    if not isinstance(key, bytes | bytearray | memoryview):
        raise TypeError("the weights key must be bytes")
    if len(key) != KEY_BYTES:
        raise ValueError(f"the weights key is {KEY_BYTES} bytes (AES-256), not {len(key)}")
    return bytes(key)


def _check_key_id(key_id: str) -> None:
    if not isinstance(key_id, str):
        raise TypeError("the key id must be a str")
    if len(key_id) > MAX_KEY_ID_BYTES or not _KEY_ID_RE.fullmatch(key_id):
        raise ValueError(
            f"key id {key_id!r} is not valid: 1-{MAX_KEY_ID_BYTES} of A-Z a-z 0-9 . _ : / @ + -,"
            " starting with a letter or digit (keyserver's are <name>/<version>, e.g. weights/1)"
        )


def _parse_header(data: bytes) -> WeightsHeader:
    """The header at the start of ``data`` (which may hold more than the header)."""
    if bytes(data[: len(MAGIC)]) != MAGIC[: len(data)]:
        raise WeightsFormatError(
            f"not a keyserver weights file: it starts {bytes(data[: len(MAGIC)])!r}, not {MAGIC!r}"
        )
    if len(data) < _PREFIX.size:
        raise WeightsFormatError(f"truncated: {len(data)} bytes is shorter than any weights header")
    _, version, key_id_length = _PREFIX.unpack_from(data)
    if version != FORMAT_VERSION:
        raise WeightsFormatError(
            f"weights format version {version} is not supported (this reader knows {FORMAT_VERSION})"
        )
    end = _PREFIX.size + key_id_length
    if len(data) < end + _SUFFIX.size:
        raise WeightsFormatError(f"truncated: the header needs {end + _SUFFIX.size} bytes")
    raw_key_id = data[_PREFIX.size : end]
    try:
        key_id = raw_key_id.decode("ascii")
        _check_key_id(key_id)
    except (UnicodeDecodeError, ValueError):
        raise WeightsFormatError(f"the header's key id {raw_key_id!r} is not a valid key id") from None
    chunk_size, plaintext_length, file_id = _SUFFIX.unpack_from(data, end)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise WeightsFormatError(
            f"the header's chunk size {chunk_size} is outside {MIN_CHUNK_SIZE}..{MAX_CHUNK_SIZE} bytes"
        )
    if plaintext_length > MAX_PLAINTEXT_BYTES:
        raise WeightsFormatError(
            f"the header declares {plaintext_length} bytes of weights;"
            f" at most {MAX_PLAINTEXT_BYTES} are allowed"
        )
    return WeightsHeader(FORMAT_VERSION, key_id, chunk_size, plaintext_length, file_id)


def _chunk_bounds(header: WeightsHeader, index: int) -> tuple[int, bool]:
    """(plaintext length, is final) of chunk ``index``."""
    final = index == header.chunk_count - 1
    if not final:
        return header.chunk_size, False
    return header.plaintext_length - index * header.chunk_size, True


class _ChunkCipher:
    """AES-256-GCM under the file's subkey, with the per-chunk nonce and AAD."""

    def __init__(self, key: bytes, header_bytes: bytes, file_id: bytes) -> None:
        self._digest = hashlib.sha256(header_bytes).digest()
        subkey = HKDF(
            algorithm=hashes.SHA256(), length=KEY_BYTES, salt=file_id, info=_SUBKEY_LABEL + self._digest
        ).derive(key)
        self._aead = AESGCM(subkey)

    def _nonce_and_aad(self, index: int, final: bool) -> tuple[bytes, bytes]:
        return bytes(4) + index.to_bytes(8, "big"), self._digest + index.to_bytes(8, "big") + bytes([final])

    def seal(self, index: int, final: bool, plaintext: bytes) -> bytes:
        nonce, aad = self._nonce_and_aad(index, final)
        return self._aead.encrypt(nonce, plaintext, aad)

    def open_into(self, index: int, final: bool, ciphertext: memoryview, out: memoryview) -> None:
        nonce, aad = self._nonce_and_aad(index, final)
        try:
            self._aead.decrypt_into(nonce, ciphertext, aad, out)
        except InvalidTag:
            # decrypt_into may have written unauthenticated plaintext: it is never returned, but wipe it.
            out[:] = bytes(len(out))
            raise WeightsAuthenticationError(
                f"chunk {index} does not authenticate: the file was modified (edited, truncated, reordered"
                " or spliced), or the key is not the one it was encrypted with"
            ) from None


def _check_expected_key_id(header: WeightsHeader, expected_key_id: str | None) -> None:
    if expected_key_id is not None and header.key_id != expected_key_id:
        raise WeightsKeyIdError(
            f"the weights are encrypted under key {header.key_id!r}, not {expected_key_id!r};"
            " get that key released, or use the weights file made for this key"
        )


def _check_file_length(header: WeightsHeader, actual: int) -> None:
    if actual != header.file_length:
        what = "truncated" if actual < header.file_length else "has trailing bytes"
        raise WeightsFormatError(
            f"the file {what}: it is {actual} bytes, but its header declares {header.plaintext_length} bytes"
            f" of weights in {header.chunk_count} chunks, which make {header.file_length} bytes"
        )


def read_header(source: bytes | bytearray | memoryview | str | os.PathLike[str]) -> WeightsHeader:
    """The header of a weights blob (bytes-like) or file (a path: ``str`` or ``PathLike``), without the
    key. Nothing in it is authenticated until the file is decrypted."""
    if isinstance(source, bytes | bytearray | memoryview):
        return _parse_header(bytes(source[:MAX_HEADER_BYTES]))
    with open(source, "rb") as file:
        return _parse_header(file.read(MAX_HEADER_BYTES))


def decrypt_weights(blob: bytes, key: bytes, *, expected_key_id: str | None = None) -> bytes:
    """The plaintext of ``blob``, once every chunk has authenticated under ``key``.

    ``WeightsFormatError`` if ``blob`` is malformed, ``WeightsKeyIdError`` if it names another key than
    ``expected_key_id``, ``WeightsAuthenticationError`` if anything was modified or the key is wrong.
    """
    key = _check_key(key)
    view = memoryview(blob).cast("B")
    header = _parse_header(bytes(view[:MAX_HEADER_BYTES]))
    _check_expected_key_id(header, expected_key_id)
    _check_file_length(header, len(view))
    out = bytearray(header.plaintext_length)
    cipher = _ChunkCipher(key, bytes(view[: header.header_length]), header.file_id)
    position = header.header_length
    for index in range(header.chunk_count):
        size, final = _chunk_bounds(header, index)
        start = index * header.chunk_size
        ciphertext = view[position : position + size + TAG_BYTES]
        cipher.open_into(index, final, ciphertext, memoryview(out)[start : start + size])
        position += size + TAG_BYTES
    return bytes(out)


def decrypt_file(
    path: str | os.PathLike[str], key: bytes, *, expected_key_id: str | None = None
) -> bytearray:
    """The plaintext of the weights file at ``path``, in memory only (a loader never writes it to disk).

    A ``bytearray``, so that the caller can overwrite it when done and so that a model of many gigabytes
    is not copied once more; the file is read one chunk at a time. Errors as ``decrypt_weights``.
    """
    key = _check_key(key)
    with open(path, "rb") as file:
        head = file.read(MAX_HEADER_BYTES)
        header = _parse_header(head)
        _check_expected_key_id(header, expected_key_id)
        # The length is checked before anything is allocated: a forged header cannot make the loader
        # reserve 4 TiB for a 100-byte file.
        _check_file_length(header, os.fstat(file.fileno()).st_size)
        file.seek(header.header_length)
        cipher = _ChunkCipher(key, head[: header.header_length], header.file_id)
        out = bytearray(header.plaintext_length)
        buffer = bytearray(min(header.chunk_size, header.plaintext_length) + TAG_BYTES)
        for index in range(header.chunk_count):
            size, final = _chunk_bounds(header, index)
            ciphertext = memoryview(buffer)[: size + TAG_BYTES]
            if file.readinto(ciphertext) != len(ciphertext):
                raise WeightsFormatError(f"the file is truncated: it ended inside chunk {index}")
            start = index * header.chunk_size
            cipher.open_into(index, final, ciphertext, memoryview(out)[start : start + size])
        if file.read(1):
            raise WeightsFormatError("the file has trailing bytes after its final chunk (it grew while read)")
    return out
