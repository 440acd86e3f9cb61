"""The encrypted weights format (clients/weights.py, docs/weights-format.md)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from clients import weights
from clients.weights import (
    MAX_CHUNK_SIZE,
    MAX_PLAINTEXT_BYTES,
    MIN_CHUNK_SIZE,
    WeightsAuthenticationError,
    WeightsError,
    WeightsFormatError,
    WeightsKeyIdError,
    decrypt_file,
    decrypt_weights,
    encrypt_file,
    encrypt_weights,
    read_header,
)

CHUNK = 64
KEY_ID = "weights/1"
DOC = Path(__file__).resolve().parents[2] / "docs" / "weights-format.md"


@pytest.fixture
def key() -> bytes:
    return os.urandom(32)


def _plaintext(size: int) -> bytes:
    return bytes((7 * i + 3) % 256 for i in range(size))


def _split(blob: bytes) -> tuple[bytes, list[bytes]]:
    """The header bytes and the stored chunks (ciphertext ‖ tag) of a valid blob."""
    header = read_header(blob)
    head, rest = blob[: header.header_length], blob[header.header_length :]
    chunks = []
    for index in range(header.chunk_count):
        size = min(header.chunk_size, header.plaintext_length - index * header.chunk_size)
        chunks.append(rest[: size + 16])
        rest = rest[size + 16 :]
    assert rest == b""
    return head, chunks


def _with_length(head: bytes, plaintext_length: int) -> bytes:
    """``head`` with its plaintext length field rewritten (the field sits 40 bytes before the end)."""
    return head[:-40] + struct.pack(">Q", plaintext_length) + head[-32:]


# --- round trips ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 5 * CHUNK, 5 * CHUNK + 17])
def test_round_trip(key: bytes, size: int) -> None:
    plaintext = _plaintext(size)
    blob = encrypt_weights(plaintext, key, key_id=KEY_ID, chunk_size=CHUNK)
    header = read_header(blob)
    assert header.key_id == KEY_ID
    assert header.chunk_size == CHUNK
    assert header.plaintext_length == size
    assert header.chunk_count == max(1, -(-size // CHUNK))
    assert len(blob) == header.file_length == header.header_length + size + 16 * header.chunk_count
    assert decrypt_weights(blob, key, expected_key_id=KEY_ID) == plaintext


def test_default_chunk_size_round_trip(key: bytes) -> None:
    plaintext = os.urandom(3 * 1024 * 1024 + 5)
    blob = encrypt_weights(plaintext, key, key_id=KEY_ID)
    assert read_header(blob).chunk_count == 4
    assert decrypt_weights(blob, key) == plaintext


def test_ciphertext_hides_the_plaintext_and_every_file_differs(key: bytes) -> None:
    plaintext = b"confidential-weights" * 50
    first = encrypt_weights(plaintext, key, key_id=KEY_ID, chunk_size=CHUNK)
    second = encrypt_weights(plaintext, key, key_id=KEY_ID, chunk_size=CHUNK)
    assert b"confidential" not in first
    assert read_header(first).file_id != read_header(second).file_id
    assert _split(first)[1][0] != _split(second)[1][0]


@pytest.mark.parametrize("size", [0, 1, CHUNK, 3 * CHUNK + 1])
def test_file_round_trip(tmp_path: Path, key: bytes, size: int) -> None:
    plaintext = _plaintext(size)
    (tmp_path / "model.bin").write_bytes(plaintext)
    header = encrypt_file(
        tmp_path / "model.bin", tmp_path / "model.ksw", key, key_id=KEY_ID, chunk_size=CHUNK
    )
    assert read_header(tmp_path / "model.ksw") == header
    assert read_header(str(tmp_path / "model.ksw")) == header
    assert header.file_length == (tmp_path / "model.ksw").stat().st_size
    decrypted = decrypt_file(tmp_path / "model.ksw", key, expected_key_id=KEY_ID)
    assert isinstance(decrypted, bytearray)
    assert decrypted == plaintext
    # The file and the in-memory forms are one format.
    assert decrypt_weights((tmp_path / "model.ksw").read_bytes(), key) == plaintext


def test_encrypt_file_never_overwrites(tmp_path: Path, key: bytes) -> None:
    (tmp_path / "model.bin").write_bytes(b"weights")
    (tmp_path / "model.ksw").write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        encrypt_file(tmp_path / "model.bin", tmp_path / "model.ksw", key, key_id=KEY_ID)
    assert (tmp_path / "model.ksw").read_bytes() == b"precious"


def test_encrypt_file_removes_its_output_on_failure(tmp_path: Path, key: bytes) -> None:
    (tmp_path / "model.bin").write_bytes(b"weights")
    with pytest.raises(ValueError, match="key id"):
        encrypt_file(tmp_path / "model.bin", tmp_path / "model.ksw", key, key_id="bad id")
    assert not (tmp_path / "model.ksw").exists()


# --- tampering -----------------------------------------------------------------------------------------


@pytest.fixture
def blob(key: bytes) -> bytes:
    return encrypt_weights(_plaintext(4 * CHUNK + 10), key, key_id=KEY_ID, chunk_size=CHUNK)


def test_every_single_byte_change_is_refused(key: bytes) -> None:
    small = encrypt_weights(_plaintext(2 * 16 + 5), key, key_id=KEY_ID, chunk_size=16)
    for position in range(len(small)):
        for mask in (0x01, 0x80):
            tampered = bytearray(small)
            tampered[position] ^= mask
            with pytest.raises(WeightsError):
                decrypt_weights(bytes(tampered), key)


def test_reordered_chunks_are_refused(key: bytes, blob: bytes) -> None:
    head, chunks = _split(blob)
    chunks[1], chunks[2] = chunks[2], chunks[1]
    with pytest.raises(WeightsAuthenticationError, match="chunk 1 "):
        decrypt_weights(head + b"".join(chunks), key)


def test_a_dropped_chunk_is_refused_even_with_the_length_fixed(key: bytes, blob: bytes) -> None:
    head, chunks = _split(blob)
    dropped = head + b"".join(chunks[:1] + chunks[2:])
    with pytest.raises(WeightsFormatError, match="truncated"):
        decrypt_weights(dropped, key)
    with pytest.raises(WeightsAuthenticationError):
        decrypt_weights(_with_length(head, 3 * CHUNK + 10) + b"".join(chunks[:1] + chunks[2:]), key)


def test_a_duplicated_chunk_is_refused_even_with_the_length_fixed(key: bytes, blob: bytes) -> None:
    head, chunks = _split(blob)
    with pytest.raises(WeightsFormatError, match="trailing bytes"):
        decrypt_weights(head + b"".join(chunks[:2] + chunks[1:]), key)
    with pytest.raises(WeightsAuthenticationError):
        decrypt_weights(_with_length(head, 5 * CHUNK + 10) + b"".join(chunks[:2] + chunks[1:]), key)


def test_truncation_at_a_chunk_boundary_is_refused_even_with_the_length_fixed(
    key: bytes, blob: bytes
) -> None:
    head, chunks = _split(blob)
    with pytest.raises(WeightsFormatError, match="truncated"):
        decrypt_weights(head + b"".join(chunks[:-1]), key)
    with pytest.raises(WeightsAuthenticationError):
        decrypt_weights(_with_length(head, 4 * CHUNK) + b"".join(chunks[:-1]), key)
    with pytest.raises(WeightsFormatError, match="truncated"):
        decrypt_weights(head, key)
    with pytest.raises(WeightsFormatError, match="truncated"):
        decrypt_weights(blob[:-1], key)


def test_extension_is_refused(key: bytes, blob: bytes) -> None:
    with pytest.raises(WeightsFormatError, match="trailing bytes"):
        decrypt_weights(blob + b"\x00", key)
    head, chunks = _split(blob)
    with pytest.raises(WeightsAuthenticationError):
        decrypt_weights(_with_length(head, 5 * CHUNK + 10) + b"".join(chunks) + chunks[0], key)


def test_the_final_flag_is_authenticated(key: bytes) -> None:
    # A file whose last chunk was sealed as "not final" (the shape of a longer file cut at a chunk
    # boundary) is refused even though its header and length are consistent.
    plaintext = _plaintext(2 * CHUNK)
    header = weights._new_header(len(plaintext), KEY_ID, CHUNK, os.urandom(32))
    head = header.to_bytes()
    cipher = weights._ChunkCipher(key, head, header.file_id)
    forged = head + cipher.seal(0, False, plaintext[:CHUNK]) + cipher.seal(1, False, plaintext[CHUNK:])
    with pytest.raises(WeightsAuthenticationError, match="chunk 1 "):
        decrypt_weights(forged, key)
    genuine = head + cipher.seal(0, False, plaintext[:CHUNK]) + cipher.seal(1, True, plaintext[CHUNK:])
    assert decrypt_weights(genuine, key) == plaintext


def test_splicing_from_another_file_is_refused(key: bytes) -> None:
    plaintext = _plaintext(3 * CHUNK)
    first = encrypt_weights(plaintext, key, key_id=KEY_ID, chunk_size=CHUNK)
    second = encrypt_weights(plaintext, key, key_id=KEY_ID, chunk_size=CHUNK)
    head1, chunks1 = _split(first)
    head2, chunks2 = _split(second)
    with pytest.raises(WeightsAuthenticationError, match="chunk 1 "):
        decrypt_weights(head1 + chunks1[0] + chunks2[1] + chunks1[2], key)
    with pytest.raises(WeightsAuthenticationError, match="chunk 0 "):
        decrypt_weights(head2 + b"".join(chunks1), key)


@pytest.mark.parametrize(
    ("offset", "replacement"),
    [
        (10, b"W"),  # key id "weights/1" -> "Weights/1", still a valid key id
        (18, b"2"),  # key id "weights/1" -> "weights/2"
        (22, b"\x20"),  # chunk size 64 -> 32
        (-33, b"\x0b"),  # plaintext length 266 -> 267 (with a byte appended)
        (-1, b"\xff"),  # the file id
    ],
)
def test_header_edits_are_refused(key: bytes, blob: bytes, offset: int, replacement: bytes) -> None:
    head, chunks = _split(blob)
    edited = bytearray(head)
    edited[offset] = replacement[0]
    assert bytes(edited) != head
    read_header(bytes(edited))  # still a well-formed header...
    body = b"".join(chunks)
    if read_header(bytes(edited)).file_length != len(edited) + len(body):
        body += b"\x00" * (read_header(bytes(edited)).file_length - len(edited) - len(body))
    with pytest.raises(WeightsAuthenticationError):  # ...which the chunks refuse
        decrypt_weights(bytes(edited) + body, key)


def test_wrong_key_is_refused(blob: bytes) -> None:
    with pytest.raises(WeightsAuthenticationError, match="not the one it was encrypted with"):
        decrypt_weights(blob, os.urandom(32))


def test_wrong_key_id_is_refused_before_decrypting(key: bytes, blob: bytes) -> None:
    with pytest.raises(WeightsKeyIdError, match="'weights/1', not 'weights/2'"):
        decrypt_weights(blob, key, expected_key_id="weights/2")
    # Checked before the key: a caller holding another key learns why, not just "does not authenticate".
    with pytest.raises(WeightsKeyIdError):
        decrypt_weights(blob, os.urandom(32), expected_key_id="weights/2")


def test_decrypt_file_refuses_tampering(tmp_path: Path, key: bytes, blob: bytes) -> None:
    path = tmp_path / "model.ksw"
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    path.write_bytes(bytes(tampered))
    with pytest.raises(WeightsAuthenticationError):
        decrypt_file(path, key)
    path.write_bytes(blob[:-1])
    with pytest.raises(WeightsFormatError, match="truncated"):
        decrypt_file(path, key)
    path.write_bytes(blob + b"x")
    with pytest.raises(WeightsFormatError, match="trailing"):
        decrypt_file(path, key)
    path.write_bytes(blob)
    with pytest.raises(WeightsKeyIdError):
        decrypt_file(path, key, expected_key_id="other/1")


# --- bounds and malformed headers ----------------------------------------------------------------------


def test_a_huge_declared_length_is_refused_before_allocating(tmp_path: Path, key: bytes, blob: bytes) -> None:
    head, chunks = _split(blob)
    path = tmp_path / "model.ksw"
    path.write_bytes(_with_length(head, MAX_PLAINTEXT_BYTES) + b"".join(chunks))
    with pytest.raises(WeightsFormatError, match="truncated"):
        decrypt_file(path, key)
    with pytest.raises(WeightsFormatError, match="at most"):
        read_header(_with_length(head, MAX_PLAINTEXT_BYTES + 1))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda h: b"KSWEIGHS" + h[8:], "not a keyserver weights file"),
        (lambda h: h[:8] + b"\x02" + h[9:], "version 2 is not supported"),
        (lambda h: h[:9] + b"\x00" + h[10:], "key id"),
        (lambda h: h[:10] + b" " + h[11:], "key id"),
        (lambda h: h[:10] + b"\xe9" + h[11:], "key id"),
        (lambda h: h[:19] + struct.pack(">I", MIN_CHUNK_SIZE - 1) + h[23:], "chunk size"),
        (lambda h: h[:19] + struct.pack(">I", MAX_CHUNK_SIZE + 1) + h[23:], "chunk size"),
        (lambda h: h[:30], "truncated"),
        (lambda h: h[:5], "truncated"),
    ],
)
def test_malformed_headers_say_what_is_wrong(blob: bytes, mutate: Any, message: str) -> None:
    head, _ = _split(blob)
    with pytest.raises(WeightsFormatError, match=message):
        read_header(mutate(head))


@pytest.mark.parametrize("bad_key_id", ["", " weights/1", "weights 1", "wéights/1", "w" * 256, "-x"])
def test_invalid_key_ids_are_refused_when_encrypting(key: bytes, bad_key_id: str) -> None:
    with pytest.raises(ValueError, match="key id"):
        encrypt_weights(b"x", key, key_id=bad_key_id)


def test_a_255_character_key_id_is_the_longest(key: bytes) -> None:
    blob = encrypt_weights(b"x", key, key_id="w" * 255, chunk_size=CHUNK)
    assert read_header(blob).header_length == weights.MAX_HEADER_BYTES
    assert decrypt_weights(blob, key, expected_key_id="w" * 255) == b"x"


@pytest.mark.parametrize("chunk_size", [0, MIN_CHUNK_SIZE - 1, MAX_CHUNK_SIZE + 1])
def test_chunk_size_bounds(key: bytes, chunk_size: int) -> None:
    with pytest.raises(ValueError, match="chunk size"):
        encrypt_weights(b"x", key, key_id=KEY_ID, chunk_size=chunk_size)


@pytest.mark.parametrize("size", [0, 16, 31, 33, 64])
def test_keys_are_32_bytes(size: int) -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        encrypt_weights(b"x", bytes(size), key_id=KEY_ID)
    with pytest.raises(ValueError, match="32 bytes"):
        decrypt_weights(b"x", bytes(size))


# --- hypothesis: arbitrary and mutated bytes only ever raise the typed errors ---------------------------

_FIXED_KEY = bytes(range(32))
_VALID = encrypt_weights(_plaintext(3 * 16 + 4), _FIXED_KEY, key_id=KEY_ID, chunk_size=16)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_arbitrary_bytes_raise_only_typed_errors(data: bytes) -> None:
    with pytest.raises(WeightsError):
        decrypt_weights(data, _FIXED_KEY)
    # With the magic and version in place the parser gets further.
    with pytest.raises(WeightsError):
        decrypt_weights(weights.MAGIC + b"\x01" + data, _FIXED_KEY)


@settings(max_examples=300)
@given(st.binary(max_size=400))
def test_read_header_of_arbitrary_bytes(data: bytes) -> None:
    for candidate in (data, weights.MAGIC + b"\x01" + data):
        try:
            header = read_header(candidate)
        except WeightsFormatError:
            continue
        assert candidate.startswith(header.to_bytes())


@settings(max_examples=500)
@given(st.data())
def test_mutated_files_are_always_refused(data: st.DataObject) -> None:
    blob = bytearray(_VALID)
    kind = data.draw(st.sampled_from(["replace", "delete", "insert", "truncate"]))
    position = data.draw(st.integers(0, len(blob) - 1))
    if kind == "replace":
        new = data.draw(st.integers(0, 255).filter(lambda b: b != blob[position]))
        blob[position] = new
    elif kind == "delete":
        del blob[position : position + data.draw(st.integers(1, 40))]
    elif kind == "insert":
        blob[position:position] = data.draw(st.binary(min_size=1, max_size=40))
    else:
        del blob[position:]
    with pytest.raises(WeightsError):
        decrypt_weights(bytes(blob), _FIXED_KEY)


# --- the published test vector -------------------------------------------------------------------------


def _doc_vector() -> dict[str, Any]:
    match = re.search(
        r"<!-- weights-vector:begin -->\n```json\n(.*?)```\n<!-- weights-vector:end -->",
        DOC.read_text(),
        re.S,
    )
    assert match is not None, "the test vector block is missing from docs/weights-format.md"
    vector: dict[str, Any] = json.loads(match.group(1))
    return vector


def test_the_documented_vector_decrypts_and_reproduces() -> None:
    vector = _doc_vector()
    key, blob = bytes.fromhex(vector["key"]), bytes.fromhex(vector["file"])
    assert decrypt_weights(blob, key, expected_key_id=vector["key_id"]) == bytes.fromhex(vector["plaintext"])
    reproduced = weights._encrypt_with_file_id(
        bytes.fromhex(vector["plaintext"]),
        key,
        vector["key_id"],
        vector["chunk_size"],
        bytes.fromhex(vector["file_id"]),
    )
    assert reproduced == blob


def test_the_documented_construction_from_first_principles() -> None:
    # An independent reader written from docs/weights-format.md alone (no clients.weights code).
    vector = _doc_vector()
    key, blob = bytes.fromhex(vector["key"]), bytes.fromhex(vector["file"])
    key_id = vector["key_id"].encode()
    assert blob[:8] == b"KSWEIGHT"
    assert blob[8] == 1
    assert blob[9] == len(key_id)
    header_length = 8 + 1 + 1 + len(key_id) + 4 + 8 + 32
    header = blob[:header_length]
    assert header.hex() == vector["header"]
    chunk_size, length = struct.unpack(">IQ", header[10 + len(key_id) : 22 + len(key_id)])
    file_id = header[-32:]
    digest = hashlib.sha256(header).digest()
    assert digest.hex() == vector["header_digest"]
    subkey = HKDF(hashes.SHA256(), 32, file_id, b"keyserver-weights-v1 chunk key" + digest).derive(key)
    assert subkey.hex() == vector["subkey"]
    count = max(1, -(-length // chunk_size))
    plaintext, position = b"", header_length
    for index in range(count):
        final = index == count - 1
        size = length - index * chunk_size if final else chunk_size
        nonce = bytes(4) + index.to_bytes(8, "big")
        aad = digest + index.to_bytes(8, "big") + bytes([final])
        plaintext += AESGCM(subkey).decrypt(nonce, blob[position : position + size + 16], aad)
        position += size + 16
    assert position == len(blob)
    assert plaintext.hex() == vector["plaintext"]


# --- command line --------------------------------------------------------------------------------------


def test_cli_encrypt_inspect_decrypt(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key = os.urandom(32)
    (tmp_path / "hex.key").write_text(key.hex().upper() + "\n")
    (tmp_path / "raw.key").write_bytes(key)
    (tmp_path / "model.bin").write_bytes(_plaintext(1000))
    src, enc, out = (str(tmp_path / name) for name in ("model.bin", "model.ksw", "check.bin"))
    assert (
        weights.main(
            [
                "encrypt",
                "--key-file",
                str(tmp_path / "hex.key"),
                "--key-id",
                KEY_ID,
                "--chunk-size",
                "256",
                src,
                enc,
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["chunk_count"] == 4
    assert weights.main(["inspect", enc]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert (shown["key_id"], shown["plaintext_length"], shown["chunk_size"]) == (KEY_ID, 1000, 256)
    assert (
        weights.main(
            ["decrypt", "--key-file", str(tmp_path / "raw.key"), "--expected-key-id", KEY_ID, enc, out]
        )
        == 0
    )
    assert (tmp_path / "check.bin").read_bytes() == _plaintext(1000)


def test_cli_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "model.bin").write_bytes(b"weights")
    (tmp_path / "a.key").write_bytes(os.urandom(32))
    (tmp_path / "b.key").write_bytes(os.urandom(32))
    (tmp_path / "short.key").write_text("00" * 31)
    src, enc, out = (str(tmp_path / name) for name in ("model.bin", "model.ksw", "out.bin"))
    assert weights.main(["encrypt", "--key-file", str(tmp_path / "a.key"), "--key-id", KEY_ID, src, enc]) == 0
    capsys.readouterr()
    assert weights.main(["decrypt", "--key-file", str(tmp_path / "b.key"), enc, out]) == 1
    assert "does not authenticate" in capsys.readouterr().err
    assert not (tmp_path / "out.bin").exists()
    assert (
        weights.main(["encrypt", "--key-file", str(tmp_path / "short.key"), "--key-id", KEY_ID, src, out])
        == 1
    )
    assert "32 raw bytes or 64 hex digits" in capsys.readouterr().err
    assert weights.main(["encrypt", "--key-file", str(tmp_path / "a.key"), "--key-id", KEY_ID, src, enc]) == 1
    assert "exists" in capsys.readouterr().err
    assert weights.main(["inspect", src]) == 1
    assert "not a keyserver weights file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        weights.main(["encrypt", src])
    assert exit_info.value.code == 2


def test_the_loader_s_decrypt_module_is_what_clients_weights_exports() -> None:
    # The loader imports clients.weights_decrypt alone (no encryption code or command line in its
    # measured image); one implementation behind both names.
    from clients import weights_decrypt

    for name in ("decrypt_file", "decrypt_weights", "read_header", "WeightsError", "_ChunkCipher", "MAGIC"):
        assert getattr(weights, name) is getattr(weights_decrypt, name), name
