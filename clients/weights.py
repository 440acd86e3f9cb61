"""Encrypted model weights: chunked AES-256-GCM under a released 256-bit key (docs/weights-format.md).

A model owner encrypts its weights with a key it imports into keyserver; a trusted loader gets that key
released after attestation and decrypts the weights into memory. The file is a header followed by
chunks, each sealed with AES-256-GCM under a per-file subkey:

    subkey     = HKDF-SHA256(ikm=key, salt=file_id, info="keyserver-weights-v1 chunk key" || SHA-256(header))
    nonce_i    = 0x00000000 || u64(i)
    aad_i      = SHA-256(header) || u64(i) || u8(final)

The subkey is new for every file (``file_id`` is 32 random bytes), so the counter nonce never repeats
under one key whatever number of files one key encrypts; binding the header digest into both the subkey
and every chunk's AAD means no header field can change without every chunk failing; the index and the
final flag in the AAD make reordering, dropping, duplicating, truncating (at a chunk boundary) and
extending detectable; a chunk from another file fails because that file has another subkey.

Decryption is all-or-nothing: the plaintext is returned only once every chunk has authenticated, and a
loader never writes it to disk (``decrypt_file`` returns it in memory).

``python -m clients.weights encrypt|decrypt|inspect`` is the model owner's command line.
"""

from __future__ import annotations

import argparse
import binascii
import io
import json
import os
import secrets
import sys
from collections.abc import Sequence
from typing import BinaryIO

# The format and its decryption live in their own module, the only one the loader imports (its
# measured image holds no encryption code); re-exported here, where the owner's tools find them.
from clients.weights_decrypt import (
    DEFAULT_CHUNK_SIZE,
    FILE_ID_BYTES,
    FORMAT_VERSION,
    KEY_BYTES,
    MAGIC,
    MAX_CHUNK_SIZE,
    MAX_HEADER_BYTES,
    MAX_KEY_ID_BYTES,
    MAX_PLAINTEXT_BYTES,
    MIN_CHUNK_SIZE,
    TAG_BYTES,
    WeightsAuthenticationError,
    WeightsError,
    WeightsFormatError,
    WeightsHeader,
    WeightsKeyIdError,
    _check_key,
    _check_key_id,
    _chunk_bounds,
    _ChunkCipher,
    decrypt_file,
    decrypt_weights,
    read_header,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "FILE_ID_BYTES",
    "FORMAT_VERSION",
    "KEY_BYTES",
    "MAGIC",
    "MAX_CHUNK_SIZE",
    "MAX_HEADER_BYTES",
    "MAX_KEY_ID_BYTES",
    "MAX_PLAINTEXT_BYTES",
    "MIN_CHUNK_SIZE",
    "TAG_BYTES",
    "WeightsAuthenticationError",
    "WeightsError",
    "WeightsFormatError",
    "WeightsHeader",
    "WeightsKeyIdError",
    "_ChunkCipher",
    "decrypt_file",
    "decrypt_weights",
    "encrypt_file",
    "encrypt_weights",
    "load_key_file",
    "main",
    "read_header",
]


def _check_chunk_size(chunk_size: int) -> None:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError("the chunk size must be an int")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise ValueError(
            f"the chunk size must be {MIN_CHUNK_SIZE} to {MAX_CHUNK_SIZE} bytes, not {chunk_size}"
        )


def _new_header(plaintext_length: int, key_id: str, chunk_size: int, file_id: bytes) -> WeightsHeader:
    _check_key_id(key_id)
    _check_chunk_size(chunk_size)
    if plaintext_length > MAX_PLAINTEXT_BYTES:
        raise ValueError(f"at most {MAX_PLAINTEXT_BYTES} bytes of weights can be encrypted")
    return WeightsHeader(FORMAT_VERSION, key_id, chunk_size, plaintext_length, file_id)


def _encrypt_stream(
    src: BinaryIO, dst: BinaryIO, length: int, key: bytes, key_id: str, chunk_size: int, file_id: bytes
) -> None:
    header = _new_header(length, key_id, chunk_size, file_id)
    header_bytes = header.to_bytes()
    cipher = _ChunkCipher(_check_key(key), header_bytes, file_id)
    dst.write(header_bytes)
    for index in range(header.chunk_count):
        size, final = _chunk_bounds(header, index)
        chunk = src.read(size)
        if len(chunk) != size:
            raise WeightsError(f"the source is shorter than the {length} bytes it had when encryption began")
        dst.write(cipher.seal(index, final, chunk))
    if src.read(1):
        raise WeightsError(f"the source grew beyond the {length} bytes it had when encryption began")


def _encrypt_with_file_id(
    plaintext: bytes, key: bytes, key_id: str, chunk_size: int, file_id: bytes
) -> bytes:
    # Deterministic given file_id: for the published test vector only. Callers get a random file id.
    out = io.BytesIO()
    _encrypt_stream(io.BytesIO(plaintext), out, len(plaintext), key, key_id, chunk_size, file_id)
    return out.getvalue()


def encrypt_weights(
    plaintext: bytes, key: bytes, *, key_id: str, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> bytes:
    """``plaintext`` encrypted under the 32-byte ``key``, labelled with ``key_id`` (e.g. ``"weights/1"``)."""
    return _encrypt_with_file_id(
        bytes(plaintext), key, key_id, chunk_size, secrets.token_bytes(FILE_ID_BYTES)
    )


def encrypt_file(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    key: bytes,
    *,
    key_id: str,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> WeightsHeader:
    """Encrypt the file ``src`` into the new file ``dst`` (never overwritten: ``FileExistsError``),
    one chunk in memory at a time. ``dst`` is removed if encryption fails."""
    _check_key(key)
    _check_key_id(key_id)
    _check_chunk_size(chunk_size)
    with open(src, "rb") as source:
        length = os.fstat(source.fileno()).st_size
        file_id = secrets.token_bytes(FILE_ID_BYTES)
        with open(dst, "xb") as target:
            try:
                _encrypt_stream(source, target, length, key, key_id, chunk_size, file_id)
                target.flush()
                os.fsync(target.fileno())
            except BaseException:
                target.close()
                os.unlink(dst)
                raise
    return _new_header(length, key_id, chunk_size, file_id)


# --- command line --------------------------------------------------------------------------------------


def load_key_file(path: str | os.PathLike[str]) -> bytes:
    """A 32-byte key from a file holding either the raw 32 bytes or 64 hex digits (whitespace ignored).

    The two cannot be confused: raw is exactly 32 bytes, hex at least 64."""
    with open(path, "rb") as file:
        data = file.read(4096)
    if len(data) == KEY_BYTES:
        return data
    text = b"".join(data.split())
    if len(text) == 2 * KEY_BYTES:
        try:
            return binascii.unhexlify(text)
        except binascii.Error:
            pass
    raise ValueError(f"the key file must hold exactly {KEY_BYTES} raw bytes or {2 * KEY_BYTES} hex digits")


def _header_json(header: WeightsHeader) -> str:
    return json.dumps(
        {
            "format_version": header.version,
            "key_id": header.key_id,
            "chunk_size": header.chunk_size,
            "plaintext_length": header.plaintext_length,
            "chunk_count": header.chunk_count,
            "file_length": header.file_length,
            "file_id": header.file_id.hex(),
        },
        sort_keys=True,
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m clients.weights",
        description="Encrypt model weights for release by keyserver (docs/weights-format.md).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    encrypt = commands.add_parser("encrypt", help="encrypt SRC into the new file DST")
    encrypt.add_argument("--key-file", required=True, help="32 raw bytes or 64 hex digits")
    encrypt.add_argument("--key-id", required=True, help="the key's id in keyserver, e.g. weights/1")
    encrypt.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    encrypt.add_argument("src")
    encrypt.add_argument("dst")
    decrypt = commands.add_parser("decrypt", help="check and decrypt SRC into the new file DST")
    decrypt.add_argument("--key-file", required=True, help="32 raw bytes or 64 hex digits")
    decrypt.add_argument("--expected-key-id", help="refuse a file encrypted under another key id")
    decrypt.add_argument("src")
    decrypt.add_argument("dst")
    inspect = commands.add_parser("inspect", help="print the header of SRC as JSON (no key needed)")
    inspect.add_argument("src")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Exit status 0 = done, 1 = refused or failed (reason on stderr), 2 = usage error."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "inspect":
            print(_header_json(read_header(args.src)))
        elif args.command == "encrypt":
            header = encrypt_file(
                args.src,
                args.dst,
                load_key_file(args.key_file),
                key_id=args.key_id,
                chunk_size=args.chunk_size,
            )
            print(_header_json(header))
        else:
            plaintext = decrypt_file(
                args.src, load_key_file(args.key_file), expected_key_id=args.expected_key_id
            )
            with open(args.dst, "xb") as target:
                target.write(plaintext)
    except (WeightsError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
