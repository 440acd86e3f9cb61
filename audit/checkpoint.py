"""Checkpoints (signed tree heads) as C2SP signed notes, with Ed25519 signatures.

Wire formats, byte-compatible with Go's golang.org/x/mod/sumdb/note and the other tlog tools:

- signed note (https://c2sp.org/signed-note): the note text, ending in a newline, a blank line, then
  one or more lines ``— <key name> <base64(4-byte key id || signature)>`` (U+2014 EM DASH, space);
- key id: the first 4 bytes, big-endian, of SHA-256(key name || 0x0A || 0x01 || 32-byte public key),
  0x01 being the Ed25519 signature type;
- verifier key ("vkey"): ``<name>+<8 hex digits key id>+<base64(0x01 || public key)>``;
- checkpoint (https://c2sp.org/tlog-checkpoint): note text ``<origin>\\n<size>\\n<base64 root>\\n``
  followed by optional, non-empty extension lines.

Verification fails closed, and is stricter than the Go implementation where the spec allows:
every signature line from the known key must verify (Go checks only the first one of a key), and
base64 must be canonical. Signatures from unknown keys are ignored, as the spec requires, but only
alongside at least one valid signature from the known key. Nothing here depends on ``keyserver``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

__all__ = [
    "MAX_NOTE_BYTES",
    "MAX_SIGNATURES",
    "SIGNATURE_TYPE_ED25519",
    "Checkpoint",
    "CheckpointError",
    "Ed25519Signer",
    "KeyFormatError",
    "MalformedError",
    "NoteSignature",
    "NoteVerifier",
    "VerificationError",
    "format_checkpoint",
    "key_id_for",
    "open_note",
    "parse_checkpoint_body",
    "parse_note",
    "parse_signed_checkpoint",
    "parse_typed_vkey",
    "parse_vkey",
    "sign_checkpoint",
    "sign_note",
    "typed_key_id",
    "typed_vkey",
    "verify_checkpoint",
    "vkey_for",
]

SIGNATURE_TYPE_ED25519 = 0x01
# Go's sumdb/note refuses more than 100 signatures; the spec asks to accept at least 16.
MAX_SIGNATURES = 100
# A checkpoint is a few hundred bytes; the cap only bounds the work an attacker can cause.
MAX_NOTE_BYTES = 1 << 20
_MAX_TREE_SIZE = 2**64 - 1
_HASH_SIZE = 32
_SIGNATURE_PREFIX = "\u2014 "
_KEY_ID_SIZE = 4


class CheckpointError(Exception):
    """Base class: a note, checkpoint or key could not be built, parsed or verified."""


class MalformedError(CheckpointError):
    """The note or checkpoint text does not follow the format."""


class KeyFormatError(CheckpointError):
    """A key name or verifier key string is not valid."""


class VerificationError(CheckpointError):
    """The note is well formed but not validly signed by the expected key, or not for the expected log."""


class Ed25519Signer(Protocol):
    """What signing needs: ``Ed25519PrivateKey`` fits, and so can a key kept in an HSM."""

    def sign(self, data: bytes) -> bytes: ...

    def public_key(self) -> Ed25519PublicKey: ...


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: who claims to have signed, and the raw signature (without the key id)."""

    key_name: str
    key_id: int
    signature: bytes


@dataclass(frozen=True)
class NoteVerifier:
    """An Ed25519 verifier key, as parsed from its vkey string."""

    name: str
    key_id: int
    public_key: Ed25519PublicKey

    def verify(self, message: bytes, signature: bytes) -> bool:
        try:
            self.public_key.verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: its origin, its size and the RFC 9162 root hash at that size."""

    origin: str
    size: int
    root_hash: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_line("checkpoint origin", self.origin)
        if not 0 <= self.size <= _MAX_TREE_SIZE:
            raise MalformedError(f"checkpoint tree size {self.size} is outside [0, 2^64)")
        if len(self.root_hash) != _HASH_SIZE:
            raise MalformedError(f"checkpoint root hash is {len(self.root_hash)} bytes, not {_HASH_SIZE}")
        for extension in self.extensions:
            _check_line("checkpoint extension line", extension)


# --- text rules --------------------------------------------------------------------------------


def _check_line(what: str, line: str) -> None:
    # A checkpoint line may hold spaces ("go.sum database tree") but must be non-empty and hold no
    # control character: a newline would shift every later line.
    if not line:
        raise MalformedError(f"{what} is empty")
    _check_no_controls(what, line, allow_newline=False)


def _check_no_controls(what: str, text: str, *, allow_newline: bool) -> None:
    for char in text:
        if char < " " and not (allow_newline and char == "\n"):
            raise MalformedError(f"{what} holds the control character U+{ord(char):04X}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise MalformedError(f"{what} is not valid UTF-8") from exc


def _check_key_name(name: str) -> None:
    # Spaces and "+" would make the signature line and the vkey string ambiguous.
    if not name or "+" in name or any(char.isspace() for char in name):
        raise KeyFormatError(f"invalid key name {name!r}: it must be non-empty, without spaces or '+'")
    _check_no_controls("key name", name, allow_newline=False)


def _strict_b64decode(what: str, text: str) -> bytes:
    # Standard alphabet, padded, and canonical: a second spelling of the same bytes is refused so
    # that one signature or root hash has exactly one textual form.
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedError(f"{what} is not valid base64") from exc
    if base64.b64encode(raw).decode("ascii") != text:
        raise MalformedError(f"{what} is not canonical base64")
    return raw


def _as_text(note: str | bytes) -> str:
    if isinstance(note, bytes):
        if len(note) > MAX_NOTE_BYTES:
            raise MalformedError(f"note is larger than {MAX_NOTE_BYTES} bytes")
        try:
            return note.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise MalformedError("note is not valid UTF-8") from exc
    if len(note) > MAX_NOTE_BYTES:
        raise MalformedError(f"note is larger than {MAX_NOTE_BYTES} bytes")
    return note


# --- keys --------------------------------------------------------------------------------------


def _raw_public_key(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _key_id(name: str, typed_key: bytes) -> int:
    digest = hashlib.sha256(name.encode("utf-8") + b"\n" + typed_key).digest()
    return int.from_bytes(digest[:_KEY_ID_SIZE], "big")


def typed_key_id(name: str, signature_type: int, public_key: Ed25519PublicKey) -> int:
    """The signed-note key id of an Ed25519 key under ``name`` for ``signature_type`` (0x01: a note's
    signature, 0x04: a ``cosignature/v1``): the first 4 bytes of SHA-256(name || 0x0A || type || key)."""
    _check_key_name(name)
    return _key_id(name, bytes([signature_type]) + _raw_public_key(public_key))


def typed_vkey(name: str, signature_type: int, public_key: Ed25519PublicKey) -> str:
    """The verifier key string ``<name>+<key id hex>+<base64(type || key)>``."""
    typed_key = bytes([signature_type]) + _raw_public_key(public_key)
    key_id = typed_key_id(name, signature_type, public_key)
    return f"{name}+{key_id:08x}+{base64.b64encode(typed_key).decode('ascii')}"


def key_id_for(name: str, public_key: Ed25519PublicKey) -> int:
    """The signed-note key id of an Ed25519 key under ``name``."""
    return typed_key_id(name, SIGNATURE_TYPE_ED25519, public_key)


def vkey_for(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key string ``<name>+<key id hex>+<base64(0x01 || key)>`` auditors configure."""
    return typed_vkey(name, SIGNATURE_TYPE_ED25519, public_key)


def parse_typed_vkey(vkey: str, signature_type: int, what: str = "verifier key") -> tuple[str, int, bytes]:
    """``(name, key id, 32-byte Ed25519 key)`` of a vkey of ``signature_type`` whose key id matches.

    Shared by log keys (type 0x01) and witness keys (type 0x04, :mod:`audit.cosignature`): a vkey of
    the other type is refused, so neither can stand in for the other.
    """
    parts = vkey.split("+", 2)
    if len(parts) != 3:
        raise KeyFormatError(f"{what} must be <name>+<key id>+<key>")
    name, key_id_hex, key_b64 = parts
    _check_key_name(name)
    if len(key_id_hex) != 8 or any(char not in "0123456789abcdefABCDEF" for char in key_id_hex):
        raise KeyFormatError(f"{what} id must be 8 hexadecimal digits")
    try:
        typed_key = _strict_b64decode(what, key_b64)
    except MalformedError as exc:
        raise KeyFormatError(str(exc)) from exc
    if len(typed_key) != 1 + 32 or typed_key[0] != signature_type:
        raise KeyFormatError(f"{what} is not a 0x{signature_type:02x}-typed 32-byte Ed25519 public key")
    key_id = int(key_id_hex, 16)
    if key_id != _key_id(name, typed_key):
        raise KeyFormatError(f"{what} id does not match its name and key")
    return name, key_id, typed_key[1:]


def parse_vkey(vkey: str) -> NoteVerifier:
    """Parse a verifier key string; the key id must match the name and key it claims to identify."""
    name, key_id, raw = parse_typed_vkey(vkey, SIGNATURE_TYPE_ED25519)
    return NoteVerifier(name, key_id, Ed25519PublicKey.from_public_bytes(raw))


# --- generic signed notes ----------------------------------------------------------------------


def sign_note(text: str, key_name: str, signer: Ed25519Signer) -> str:
    """Sign ``text`` (which must end in a newline) and return the signed note."""
    _check_key_name(key_name)
    if not text.endswith("\n"):
        raise MalformedError("note text must end with a newline")
    _check_no_controls("note text", text, allow_newline=True)
    message = text.encode("utf-8")
    signature = signer.sign(message)
    key_id = key_id_for(key_name, signer.public_key())
    blob = key_id.to_bytes(_KEY_ID_SIZE, "big") + signature
    return f"{text}\n{_SIGNATURE_PREFIX}{key_name} {base64.b64encode(blob).decode('ascii')}\n"


def _parse_signature_line(line: str) -> NoteSignature:
    if not line.startswith(_SIGNATURE_PREFIX):
        raise MalformedError("signature line does not start with an em dash and a space")
    name, separator, encoded = line[len(_SIGNATURE_PREFIX) :].partition(" ")
    if not separator or not encoded:
        raise MalformedError("signature line must be '— <key name> <base64 signature>'")
    try:
        _check_key_name(name)
    except KeyFormatError as exc:
        raise MalformedError(f"signature line: {exc}") from exc
    blob = _strict_b64decode("signature", encoded)
    if len(blob) <= _KEY_ID_SIZE:
        raise MalformedError("signature is too short to hold a key id and a signature")
    return NoteSignature(name, int.from_bytes(blob[:_KEY_ID_SIZE], "big"), blob[_KEY_ID_SIZE:])


def parse_note(note: str | bytes) -> tuple[str, list[NoteSignature]]:
    """Split a signed note into its text and its signature lines, checking syntax only.

    Nothing returned here is trustworthy until :func:`open_note` has verified it.
    """
    text = _as_text(note)
    _check_no_controls("note", text, allow_newline=True)
    # The spec separates text from signatures at the *last* blank line: the text may hold others.
    split = text.rfind("\n\n")
    if split < 0:
        raise MalformedError("note has no blank line before its signatures")
    body, block = text[: split + 1], text[split + 2 :]
    if not block.endswith("\n"):
        raise MalformedError("note must end with a newline-terminated signature line")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedError(f"note has more than {MAX_SIGNATURES} signatures")
    return body, [_parse_signature_line(line) for line in lines]


def _matching_verifier(signature: NoteSignature, verifiers: Sequence[NoteVerifier]) -> NoteVerifier | None:
    matches = {
        _raw_public_key(v.public_key): v
        for v in verifiers
        if v.name == signature.key_name and v.key_id == signature.key_id
    }
    if len(matches) > 1:
        raise VerificationError(f"ambiguous key {signature.key_name}+{signature.key_id:08x}")
    return next(iter(matches.values()), None)


def open_note(note: str | bytes, verifiers: Sequence[NoteVerifier]) -> tuple[str, list[NoteSignature]]:
    """Verify a signed note against trusted keys; return its text and the signatures that verified.

    Signatures whose (name, key id) matches no trusted key are ignored. Every signature that does
    match must verify, and at least one must: otherwise :class:`VerificationError`.
    """
    body, signatures = parse_note(note)
    message = body.encode("utf-8")
    verified: list[NoteSignature] = []
    for signature in signatures:
        verifier = _matching_verifier(signature, verifiers)
        if verifier is None:
            continue
        if not verifier.verify(message, signature.signature):
            raise VerificationError(f"invalid signature for key {verifier.name}+{verifier.key_id:08x}")
        verified.append(signature)
    if not verified:
        raise VerificationError("note has no signature from a trusted key")
    return body, verified


# --- checkpoints -------------------------------------------------------------------------------


def format_checkpoint(checkpoint: Checkpoint) -> str:
    """The checkpoint's note text (what gets signed)."""
    root = base64.b64encode(checkpoint.root_hash).decode("ascii")
    lines = [checkpoint.origin, str(checkpoint.size), root, *checkpoint.extensions]
    return "".join(f"{line}\n" for line in lines)


def _parse_size(line: str) -> int:
    # ASCII digits only (int() would take "+1", " 1", "1_0" and non-ASCII digits) and no leading
    # zero, so that each size has exactly one spelling.
    if not line or any(char not in "0123456789" for char in line):
        raise MalformedError(f"checkpoint tree size {line!r} is not a decimal number")
    if len(line) > 1 and line[0] == "0":
        raise MalformedError(f"checkpoint tree size {line!r} has a leading zero")
    if len(line) > len(str(_MAX_TREE_SIZE)) or int(line) > _MAX_TREE_SIZE:
        raise MalformedError(f"checkpoint tree size {line!r} does not fit in 64 bits")
    return int(line)


def parse_checkpoint_body(text: str) -> Checkpoint:
    """Parse a checkpoint's note text (without signatures)."""
    if not text.endswith("\n"):
        raise MalformedError("checkpoint text must end with a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise MalformedError("checkpoint needs an origin, a tree size and a root hash line")
    origin, size_line, hash_line, *extensions = lines
    _check_line("checkpoint origin", origin)
    size = _parse_size(size_line)
    root_hash = _strict_b64decode("checkpoint root hash", hash_line)
    return Checkpoint(origin, size, root_hash, tuple(extensions))


def sign_checkpoint(checkpoint: Checkpoint, key_name: str, private_key: Ed25519Signer) -> str:
    """The signed checkpoint note, signed by ``private_key`` under ``key_name``."""
    return sign_note(format_checkpoint(checkpoint), key_name, private_key)


def parse_signed_checkpoint(text: str | bytes) -> tuple[Checkpoint, list[NoteSignature]]:
    """Parse a signed checkpoint without verifying it: for display and debugging only."""
    body, signatures = parse_note(text)
    return parse_checkpoint_body(body), signatures


def verify_checkpoint(text: str | bytes, verifier_key: str, *, origin: str | None = None) -> Checkpoint:
    """Verify a signed checkpoint against one verifier key and return it.

    The checkpoint's origin must equal ``origin``, or the key name when ``origin`` is None (the
    tlog-checkpoint convention): a validly signed checkpoint of another log is not this log's.
    """
    verifier = parse_vkey(verifier_key)
    body, _ = open_note(text, [verifier])
    checkpoint = parse_checkpoint_body(body)
    expected = verifier.name if origin is None else origin
    if checkpoint.origin != expected:
        raise VerificationError(f"checkpoint is for origin {checkpoint.origin!r}, expected {expected!r}")
    return checkpoint
