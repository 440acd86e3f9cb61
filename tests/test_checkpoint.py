"""audit.checkpoint: C2SP signed notes and tlog checkpoints, against published vectors."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given
from hypothesis import strategies as st

from audit.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    CheckpointError,
    KeyFormatError,
    MalformedError,
    NoteSignature,
    NoteVerifier,
    VerificationError,
    format_checkpoint,
    key_id_for,
    open_note,
    parse_checkpoint_body,
    parse_note,
    parse_signed_checkpoint,
    parse_vkey,
    sign_checkpoint,
    sign_note,
    verify_checkpoint,
    vkey_for,
)
from audit.merkle import EMPTY_ROOT
from tests.fuzzing import fuzz_settings

# --- published vectors ---------------------------------------------------------------------------

# golang.org/x/mod/sumdb/note, note_test.go (TestSign, TestOpen): the PeterNeumann key pair, the
# EnochRoot verifier key and their signatures over the same two-line text.
pytestmark = pytest.mark.fuzz

PETER_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
PETER_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
ENOCH_VKEY = "EnochRoot+af0cfe78+ATtqJ7zOtqQtYqOo0CpvDXNlMhV3HeJDpjrASKGLWdop"
GO_TEXT = (
    "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
)
PETER_SIG = (
    "\u2014 PeterNeumann "
    "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM=\n"
)
ENOCH_SIG = (
    "\u2014 EnochRoot "
    "rwz+eBzmZa0SO3NbfRGzPCpDckykFXSdeX+MNtCOXm2/5n2tiOHp+vAF1aGrQ5ovTG01oOTGwnWLox33WWd1RvMc+QQ=\n"
)

# sigsum.org/sigsum-go, pkg/checkpoint/checkpoint_test.go (TestGoSumDBCheckpoint): a real checkpoint
# from https://sum.golang.org/latest (2024-09-23) and the Go checksum database's public key (from
# cmd/go/internal/modfetch/key.go). Its origin is not its key name.
SUMDB_VKEY = "sum.golang.org+033de0ae+Ac4zctda0e5eza+HJyk9SxEdh+s3Ux18htTTAD8OuAn8"
SUMDB_ORIGIN = "go.sum database tree"
SUMDB_CHECKPOINT = (
    "go.sum database tree\n"
    "30055305\n"
    "mXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM=\n"
    "\n"
    "\u2014 sum.golang.org "
    "Az3grpgEild5qw7+5dtV13Kf1C2Xurm8q4fhdxvcsDHnqNTaxL2AFjBY+2TyGKevucFcAAlWFJJYle3EJlDCrQ+y3A8=\n"
)

# sigsum-go, same file (TestCheckpointSigned): an Ed25519 seed of 17 followed by zeros signs size 10
# and root bytes {28, 14, 71, 0...} under origin "sigsum.org/v1/tree/<hex SHA-256 of the public key>".
SIGSUM_SEED = bytes([17]) + bytes(31)
SIGSUM_ORIGIN = "sigsum.org/v1/tree/e796172b92befd62d9dc67e41c2f5bc9d3100a3023b20b1ca40288dd1c679e69"
SIGSUM_CHECKPOINT = (
    f"{SIGSUM_ORIGIN}\n"
    "10\n"
    "HA5HAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=\n"
    "\n"
    f"\u2014 {SIGSUM_ORIGIN} "
    "gJ2ho0n8F8olcerUF1FFdv235A/5as/coWrpLrtE7ovMeP5whgwouYExowG/lTznxu6OUGjjt5yJQ6bXtTcf718MqAQ=\n"
)


def _peter_key() -> Ed25519PrivateKey:
    # The Go skey is PRIVATE+KEY+<name>+<id>+base64(0x01 || 32-byte seed); the base64 may hold '+'.
    typed_seed = base64.b64decode(PETER_SKEY.split("+", 4)[4])
    assert typed_seed[0] == 0x01
    return Ed25519PrivateKey.from_private_bytes(typed_seed[1:])


def test_go_vkey_is_derived_from_the_go_skey() -> None:
    assert vkey_for("PeterNeumann", _peter_key().public_key()) == PETER_VKEY
    assert key_id_for("PeterNeumann", _peter_key().public_key()) == 0xC74F20A3
    verifier = parse_vkey(PETER_VKEY)
    assert (verifier.name, verifier.key_id) == ("PeterNeumann", 0xC74F20A3)


def test_sign_note_reproduces_the_go_signature_byte_for_byte() -> None:
    assert sign_note(GO_TEXT, "PeterNeumann", _peter_key()) == GO_TEXT + "\n" + PETER_SIG


def test_open_go_note_with_one_known_and_one_unknown_signer() -> None:
    note = GO_TEXT + "\n" + PETER_SIG + ENOCH_SIG
    text, verified = open_note(note, [parse_vkey(PETER_VKEY)])
    assert text == GO_TEXT
    assert [(s.key_name, s.key_id) for s in verified] == [("PeterNeumann", 0xC74F20A3)]
    _, both = open_note(note, [parse_vkey(PETER_VKEY), parse_vkey(ENOCH_VKEY)])
    assert [s.key_name for s in both] == ["PeterNeumann", "EnochRoot"]
    with pytest.raises(VerificationError, match="no signature from a trusted key"):
        open_note(note, [])


def test_open_go_note_refuses_a_corrupted_signature() -> None:
    # TestOpen's "invalid signature" case: four base64 characters inserted into the signature.
    corrupted = PETER_SIG[:60] + "ABCD" + PETER_SIG[60:]
    with pytest.raises(VerificationError, match="invalid signature"):
        open_note(GO_TEXT + "\n" + corrupted, [parse_vkey(PETER_VKEY)])


@pytest.mark.parametrize(
    "note",
    [
        GO_TEXT,
        GO_TEXT + "\n",
        GO_TEXT + "\n" + PETER_SIG[:-1],
        "\x01" + GO_TEXT + "\n" + PETER_SIG,
        GO_TEXT + "\n" + "\u2014 Bad Name " + PETER_SIG.split(" ")[-1],
        GO_TEXT + "\n" + PETER_SIG + "Unexpected line.\n",
        GO_TEXT + "\n" + PETER_SIG * (MAX_SIGNATURES + 1),
    ],
    ids=[
        "no-signatures",
        "blank-line-only",
        "no-final-newline",
        "control",
        "bad-name",
        "trailing-line",
        "101",
    ],
)
def test_go_malformed_notes_are_refused(note: str) -> None:
    # TestOpen's badMsgs, plus its "too many signatures" case.
    with pytest.raises(MalformedError):
        open_note(note, [parse_vkey(PETER_VKEY)])


def test_invalid_utf8_note_is_refused() -> None:
    with pytest.raises(MalformedError, match="UTF-8"):
        open_note(b"\xff" + (GO_TEXT + "\n" + PETER_SIG).encode(), [parse_vkey(PETER_VKEY)])


def test_every_mangling_of_the_go_vkey_is_refused() -> None:
    # TestNewVerifier: every proper substring and every single-byte increment must fail to parse.
    for start in range(len(PETER_VKEY) + 1):
        for end in range(start + 1, len(PETER_VKEY) + 1):
            if (start, end) != (0, len(PETER_VKEY)):
                with pytest.raises(KeyFormatError):
                    parse_vkey(PETER_VKEY[start:end])
    for i, char in enumerate(PETER_VKEY):
        with pytest.raises(KeyFormatError):
            parse_vkey(PETER_VKEY[:i] + chr(ord(char) + 1) + PETER_VKEY[i + 1 :])
    with pytest.raises(KeyFormatError):  # a key of the wrong length, with its key id adjusted
        parse_vkey("PeterNeumann+cc469956+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TWBADKEY==")
    with pytest.raises(KeyFormatError):  # an unknown signature type, with its key id adjusted
        parse_vkey("PeterNeumann+173116ae+ZRpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW")


def test_real_sum_golang_org_checkpoint_verifies() -> None:
    checkpoint = verify_checkpoint(SUMDB_CHECKPOINT, SUMDB_VKEY, origin=SUMDB_ORIGIN)
    assert checkpoint == Checkpoint(
        SUMDB_ORIGIN, 30055305, base64.b64decode("mXfgRcJ0bG0j3CPdKwgGWtUzBUbX67saZGRmFuJGGsM=")
    )
    assert format_checkpoint(checkpoint) == SUMDB_CHECKPOINT.split("\n\n")[0] + "\n"
    # Without an explicit origin the key name is expected, and this log's origin differs from it.
    with pytest.raises(VerificationError, match="origin"):
        verify_checkpoint(SUMDB_CHECKPOINT, SUMDB_VKEY)
    with pytest.raises(VerificationError, match="invalid signature"):
        verify_checkpoint(SUMDB_CHECKPOINT.replace("30055305", "30055306"), SUMDB_VKEY, origin=SUMDB_ORIGIN)


def test_sign_checkpoint_reproduces_the_sigsum_vector_byte_for_byte() -> None:
    key = Ed25519PrivateKey.from_private_bytes(SIGSUM_SEED)
    public = key.public_key().public_bytes_raw()
    assert "sigsum.org/v1/tree/" + hashlib.sha256(public).hexdigest() == SIGSUM_ORIGIN
    checkpoint = Checkpoint(SIGSUM_ORIGIN, 10, bytes([28, 14, 71]) + bytes(29))
    assert sign_checkpoint(checkpoint, SIGSUM_ORIGIN, key) == SIGSUM_CHECKPOINT
    assert verify_checkpoint(SIGSUM_CHECKPOINT, vkey_for(SIGSUM_ORIGIN, key.public_key())) == checkpoint


# --- our own checkpoints -------------------------------------------------------------------------

LOG = "keyserver.example/tenants/acme/log"
LOG_KEY = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"test log key").digest())
LOG_VKEY = vkey_for(LOG, LOG_KEY.public_key())
ROOT = hashlib.sha256(b"some root").digest()
CHECKPOINT = Checkpoint(LOG, 42, ROOT)
SIGNED = sign_checkpoint(CHECKPOINT, LOG, LOG_KEY)


def test_round_trip() -> None:
    assert verify_checkpoint(SIGNED, LOG_VKEY) == CHECKPOINT
    assert verify_checkpoint(SIGNED.encode(), LOG_VKEY) == CHECKPOINT
    parsed, signatures = parse_signed_checkpoint(SIGNED)
    assert parsed == CHECKPOINT
    assert [(s.key_name, s.key_id) for s in signatures] == [(LOG, parse_vkey(LOG_VKEY).key_id)]
    assert SIGNED.startswith(f"{LOG}\n42\n{base64.b64encode(ROOT).decode()}\n\n\u2014 {LOG} ")


def test_empty_tree_and_extension_lines_round_trip() -> None:
    checkpoint = Checkpoint(LOG, 0, EMPTY_ROOT, ("timestamp 1700000000", "witness: none"))
    text = sign_checkpoint(checkpoint, LOG, LOG_KEY)
    assert text.startswith(f"{LOG}\n0\n47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=\ntimestamp 1700000000\n")
    assert verify_checkpoint(text, LOG_VKEY) == checkpoint


def _replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("\n42\n", "\n43\n"),
        (base64.b64encode(ROOT).decode()[:4], "AAAA"),
        (f"{LOG}\n", f"{LOG}x\n"),
        (f"{base64.b64encode(ROOT).decode()}\n", f"{base64.b64encode(ROOT).decode()}\nextension\n"),
    ],
    ids=["size", "root", "origin", "added-extension"],
)
def test_tampered_body_is_refused(old: str, new: str) -> None:
    with pytest.raises(VerificationError, match="invalid signature"):
        verify_checkpoint(_replace_once(SIGNED, old, new), LOG_VKEY)


def _signature_blob() -> str:
    return SIGNED.rstrip("\n").rsplit(" ", 1)[1]


def test_tampered_signature_is_refused() -> None:
    raw = bytearray(base64.b64decode(_signature_blob()))
    raw[-1] ^= 1
    with pytest.raises(VerificationError, match="invalid signature"):
        verify_checkpoint(_replace_once(SIGNED, _signature_blob(), base64.b64encode(raw).decode()), LOG_VKEY)
    # A truncated signature from the known key is a bad signature, not an unknown key.
    short = base64.b64encode(bytes(raw[:40])).decode()
    with pytest.raises(VerificationError, match="invalid signature"):
        verify_checkpoint(_replace_once(SIGNED, _signature_blob(), short), LOG_VKEY)


def test_wrong_key_is_refused() -> None:
    other = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"other").digest())
    # Same name, another key: its key id differs, so the only signature is from an unknown key.
    with pytest.raises(VerificationError, match="no signature from a trusted key"):
        verify_checkpoint(SIGNED, vkey_for(LOG, other.public_key()))
    with pytest.raises(VerificationError, match="no signature from a trusted key"):
        verify_checkpoint(SIGNED, PETER_VKEY)


def _cosign(note: str, name: str, key: Ed25519PrivateKey, body: str | None = None) -> str:
    """Append the signature line ``key`` makes over ``body`` (default: the note's own text)."""
    text = note.split("\n\n")[0] + "\n" if body is None else body
    return note + sign_note(text, name, key).split("\n\n")[-1]


def test_unknown_signatures_are_ignored_only_next_to_a_valid_known_one() -> None:
    witness = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"witness").digest())
    # An unknown witness, an unknown key under the log's own name, and a garbage signature that
    # claims the log's name with a key id that is not the log's: all ignored.
    garbage = f"\u2014 {LOG} {base64.b64encode(b'abcd' + bytes(64)).decode()}\n"
    note = _cosign(_cosign(SIGNED, "witness.example", witness), LOG, witness) + garbage
    assert verify_checkpoint(note, LOG_VKEY) == CHECKPOINT
    # Their position does not matter: before the log's signature works as well as after it.
    garbage_first = format_checkpoint(CHECKPOINT) + "\n" + garbage + SIGNED.split("\n\n")[1]
    assert verify_checkpoint(garbage_first, LOG_VKEY) == CHECKPOINT
    # The same unknown signatures without the log's own signature verify nothing.
    unsigned = format_checkpoint(CHECKPOINT) + "\n" + garbage
    with pytest.raises(VerificationError, match="no signature from a trusted key"):
        verify_checkpoint(
            _cosign(unsigned, "witness.example", witness, format_checkpoint(CHECKPOINT)), LOG_VKEY
        )


def test_a_bad_second_signature_from_the_known_key_rejects_the_note() -> None:
    # Stricter than Go's note.Open, which verifies only the first line of each key: the spec says
    # a failed signature from a known key SHOULD reject the note.
    other_text = format_checkpoint(Checkpoint(LOG, 43, ROOT))
    note = _cosign(SIGNED, LOG, LOG_KEY, other_text)
    with pytest.raises(VerificationError, match="invalid signature"):
        verify_checkpoint(note, LOG_VKEY)
    duplicated = SIGNED + SIGNED.split("\n\n")[1]
    assert verify_checkpoint(duplicated, LOG_VKEY) == CHECKPOINT


def test_explicit_origin_must_match() -> None:
    assert verify_checkpoint(SIGNED, LOG_VKEY, origin=LOG) == CHECKPOINT
    with pytest.raises(VerificationError, match="origin"):
        verify_checkpoint(SIGNED, LOG_VKEY, origin="keyserver.example/tenants/other/log")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t.replace("\n", "\r\n"),
        lambda t: t[:-1],
        lambda t: t + "trailing garbage",
        lambda t: t + "trailing garbage\n",
        lambda t: t + "\n",
        lambda t: t.replace("\n\n", "\n"),
        lambda t: t.replace("\u2014", "--"),
        lambda t: t.replace("\u2014 ", "\u2014"),
        lambda t: t.replace(f"\u2014 {LOG} ", f"\u2014 {LOG}  "),
        lambda t: t[:-2] + "\n",
        lambda t: "\ufeff" + t,
        lambda t: t.replace("\n42\n", "\n\u0664\u0662\n"),
    ],
    ids=[
        "crlf",
        "no-final-newline",
        "garbage-after-signatures",
        "garbage-line-after-signatures",
        "blank-line-after-signatures",
        "no-blank-line",
        "ascii-dash",
        "no-space-after-dash",
        "double-space",
        "unpadded-signature",
        "bom",
        "arabic-digits",
    ],
)
def test_malformed_signed_checkpoints_are_refused(mangle: Callable[[str], str]) -> None:
    text = mangle(SIGNED)
    assert text != SIGNED
    with pytest.raises(CheckpointError):
        verify_checkpoint(text, LOG_VKEY)


@pytest.mark.parametrize("prefix", ["\u2013 ", "- ", "\u2014\u00a0", "\u2014", " \u2014 "])
def test_signature_lines_need_an_em_dash_and_a_space(prefix: str) -> None:
    # An en dash, a hyphen or a no-break space look alike on screen but are not the format.
    lookalike = SIGNED.replace("\u2014 ", prefix)
    with pytest.raises(MalformedError, match="em dash"):
        parse_note(lookalike)
    with pytest.raises(MalformedError):
        verify_checkpoint(lookalike, LOG_VKEY)


@pytest.mark.parametrize(
    "size_line",
    [
        *("01", "00", "+42", "-1", " 42", "42 ", "4_2", "0x2a", "42.0", "4e1", "", "\u0664\u0662"),
        *("18446744073709551616", "9" * 5000),
    ],
)
def test_non_canonical_sizes_are_refused(size_line: str) -> None:
    body = f"{LOG}\n{size_line}\n{base64.b64encode(ROOT).decode()}\n"
    with pytest.raises(MalformedError, match="size"):
        parse_checkpoint_body(body)
    # Signed by the right key, it is still refused: the format is checked after the signature.
    with pytest.raises(MalformedError):
        verify_checkpoint(sign_note(body, LOG, LOG_KEY), LOG_VKEY)


def test_largest_and_smallest_sizes_parse() -> None:
    root = base64.b64encode(ROOT).decode()
    assert parse_checkpoint_body(f"{LOG}\n18446744073709551615\n{root}\n").size == 2**64 - 1
    assert parse_checkpoint_body(f"{LOG}\n0\n{root}\n").size == 0


@pytest.mark.parametrize(
    "hash_line",
    [
        base64.b64encode(ROOT[:31]).decode(),
        base64.b64encode(ROOT + b"\x00").decode(),
        base64.b64encode(ROOT).decode().rstrip("="),
        base64.b64encode(ROOT).decode()[:-2] + "B=",  # non-zero padding bits
        base64.urlsafe_b64encode(b"\xfb\xff" * 16).decode(),
        base64.b64encode(ROOT).hex(),
        "",
        "not base64 at all!",
    ],
    ids=["31-bytes", "33-bytes", "unpadded", "non-canonical", "urlsafe", "hex", "empty", "junk"],
)
def test_malformed_root_hashes_are_refused(hash_line: str) -> None:
    with pytest.raises(MalformedError):
        parse_checkpoint_body(f"{LOG}\n42\n{hash_line}\n")


@pytest.mark.parametrize(
    "body",
    [
        f"{LOG}\n42\n",
        f"\n42\n{base64.b64encode(ROOT).decode()}\n",
        f"{LOG}\n42\n{base64.b64encode(ROOT).decode()}\n\nextension\n",
        f"{LOG}\n42\n{base64.b64encode(ROOT).decode()}",
    ],
    ids=["no-root-line", "empty-origin", "empty-extension-line", "no-final-newline"],
)
def test_malformed_bodies_are_refused(body: str) -> None:
    with pytest.raises(MalformedError):
        parse_checkpoint_body(body)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"origin": ""},
        {"origin": "a\nb"},
        {"size": -1},
        {"size": 2**64},
        {"root_hash": b"short"},
        {"extensions": ("",)},
        {"extensions": ("two\nlines",)},
    ],
)
def test_invalid_checkpoints_cannot_be_built(kwargs: dict[str, Any]) -> None:
    with pytest.raises(MalformedError):
        dataclasses.replace(CHECKPOINT, **kwargs)


@pytest.mark.parametrize("name", ["", "has space", "has+plus", "tab\there", "nbsp\u00a0here"])
def test_invalid_key_names_are_refused(name: str) -> None:
    with pytest.raises(KeyFormatError):
        sign_checkpoint(CHECKPOINT, name, LOG_KEY)
    with pytest.raises(KeyFormatError):
        vkey_for(name, LOG_KEY.public_key())


def test_sign_note_refuses_text_it_could_not_round_trip() -> None:
    with pytest.raises(MalformedError):
        sign_note("no final newline", LOG, LOG_KEY)
    with pytest.raises(MalformedError):
        sign_note("carriage\r\nreturn\n", LOG, LOG_KEY)


def test_parse_note_keeps_blank_lines_inside_the_text() -> None:
    # The spec splits at the last blank line; earlier ones belong to the text.
    text = "first paragraph\n\nsecond paragraph\n"
    note = sign_note(text, LOG, LOG_KEY)
    body, signatures = parse_note(note)
    assert body == text
    assert signatures == [
        NoteSignature(LOG, parse_vkey(LOG_VKEY).key_id, base64.b64decode(note.split(" ")[-1])[4:])
    ]
    assert open_note(note, [parse_vkey(LOG_VKEY)])[0] == text


def test_ambiguous_verifiers_are_refused() -> None:
    # Two different keys with the same name and key id cannot both be trusted.
    real = parse_vkey(LOG_VKEY)
    other = Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"collision").digest()).public_key()
    impostor = NoteVerifier(real.name, real.key_id, other)
    with pytest.raises(VerificationError, match="ambiguous"):
        open_note(SIGNED, [real, impostor])
    assert open_note(SIGNED, [real, real])[0] == format_checkpoint(CHECKPOINT)


# --- properties ----------------------------------------------------------------------------------

_line = st.text(
    alphabet=st.characters(min_codepoint=0x20, exclude_categories=["Cs"]), min_size=1, max_size=30
)


@fuzz_settings(150)
@given(
    origin=_line,
    size=st.integers(0, 2**64 - 1),
    root=st.binary(min_size=32, max_size=32),
    extensions=st.lists(_line, max_size=3),
)
def test_any_checkpoint_round_trips(origin: str, size: int, root: bytes, extensions: list[str]) -> None:
    checkpoint = Checkpoint(origin, size, root, tuple(extensions))
    assert parse_checkpoint_body(format_checkpoint(checkpoint)) == checkpoint
    text = sign_checkpoint(checkpoint, LOG, LOG_KEY)
    assert verify_checkpoint(text, LOG_VKEY, origin=origin) == checkpoint


@fuzz_settings(400)
@given(position=st.integers(0, len(SIGNED.encode()) - 1), value=st.integers(0, 255))
def test_any_single_byte_change_is_refused(position: int, value: int) -> None:
    raw = bytearray(SIGNED.encode())
    if raw[position] == value:
        value ^= 0x01
    raw[position] = value
    with pytest.raises(CheckpointError):
        verify_checkpoint(bytes(raw), LOG_VKEY)
