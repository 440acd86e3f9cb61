"""Witness cosignatures on checkpoints: C2SP tlog-cosignature, Ed25519 ``cosignature/v1``.

A cosignature is a signed-note signature line on a checkpoint, made by a witness that checked the
checkpoint is consistent with every earlier one it saw of that log. Byte for byte (c2sp.org/tlog-cosignature):

- key id: the first 4 bytes of SHA-256(<cosigner name> || 0x0A || 0x04 || 32-byte Ed25519 key);
- signature blob (after the key id): ``u64 timestamp (big-endian) || 64-byte Ed25519 signature``;
- signed message: ``cosignature/v1\\n`` ``time <timestamp>\\n`` then the whole checkpoint note body
  (every line, extension lines included, with its final newline; no signature lines);
- verifier key: ``<name>+<key id hex>+<base64(0x04 || key)>``.

A v1 cosignature says: at ``timestamp``, the largest consistent tree this witness saw for the origin
had this root. It says nothing about extension lines, and nothing about the entries' contents.

Verification is pure and fails closed. A client configures the witnesses it trusts (name and key,
never taken from the log) and a quorum; :func:`require_quorum` counts distinct trusted witnesses
whose cosignature verifies, is not from the future, and is not older than the allowed age. A
signature line from a trusted witness that does not verify is an error, not ignored (as for the
log's own key in :mod:`audit.checkpoint`): someone forged or broke it, and that must be seen.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from audit.checkpoint import (
    CheckpointError,
    Ed25519Signer,
    KeyFormatError,
    MalformedError,
    NoteSignature,
    VerificationError,
    parse_note,
    parse_typed_vkey,
    typed_key_id,
    typed_vkey,
)

__all__ = [
    "COSIGNATURE_V1_TYPE",
    "CosignaturePolicy",
    "CosignerKey",
    "QuorumError",
    "VerifiedCosignature",
    "cosign_checkpoint",
    "cosignature_message",
    "cosigner_key_id",
    "cosigner_vkey",
    "parse_cosigner_vkey",
    "require_quorum",
    "verify_cosignatures",
]

COSIGNATURE_V1_TYPE = 0x04
_MAX_TIMESTAMP = 2**63 - 1
_ED25519_SIGNATURE_SIZE = 64
_BLOB_SIZE = 8 + _ED25519_SIGNATURE_SIZE
_SIGNATURE_PREFIX = "\u2014 "
_HEADER = "cosignature/v1\n"


class QuorumError(CheckpointError):
    """Fewer valid, fresh cosignatures from trusted witnesses than the quorum requires."""


@dataclass(frozen=True)
class CosignerKey:
    """A witness a client trusts: its name and Ed25519 key (from configuration, never from a log)."""

    name: str
    key_id: int
    public_key: Ed25519PublicKey

    @classmethod
    def from_public_key(cls, name: str, public_key: Ed25519PublicKey) -> CosignerKey:
        return cls(name, cosigner_key_id(name, public_key), public_key)

    @property
    def vkey(self) -> str:
        return cosigner_vkey(self.name, self.public_key)


@dataclass(frozen=True)
class VerifiedCosignature:
    """A cosignature whose signature verified under a trusted witness key."""

    cosigner: str
    key_id: int
    timestamp: int

    @property
    def time(self) -> datetime:
        return datetime.fromtimestamp(self.timestamp, tz=UTC)


def cosigner_key_id(name: str, public_key: Ed25519PublicKey) -> int:
    """The key id of an Ed25519 ``cosignature/v1`` key under ``name`` (type byte 0x04)."""
    return typed_key_id(name, COSIGNATURE_V1_TYPE, public_key)


def cosigner_vkey(name: str, public_key: Ed25519PublicKey) -> str:
    """The verifier key string a client pins: ``<name>+<key id hex>+<base64(0x04 || key)>``."""
    return typed_vkey(name, COSIGNATURE_V1_TYPE, public_key)


def parse_cosigner_vkey(vkey: str) -> CosignerKey:
    """Parse a witness's verifier key; the key id must match the name and key, the type must be 0x04."""
    name, _, raw = parse_typed_vkey(vkey, COSIGNATURE_V1_TYPE, "witness verifier key")
    return CosignerKey.from_public_key(name, Ed25519PublicKey.from_public_bytes(raw))


def cosignature_message(checkpoint_text: str, timestamp: int) -> bytes:
    """The bytes a ``cosignature/v1`` signs: header, time line, the whole checkpoint note body."""
    if not 0 <= timestamp <= _MAX_TIMESTAMP:
        raise MalformedError(f"cosignature timestamp {timestamp} is outside [0, 2^63)")
    if not checkpoint_text.endswith("\n") or "\n\n" in checkpoint_text:
        raise MalformedError("the cosigned text must be a checkpoint body ending in one newline")
    return f"{_HEADER}time {timestamp}\n{checkpoint_text}".encode()


def cosign_checkpoint(checkpoint_text: str, cosigner_name: str, signer: Ed25519Signer, timestamp: int) -> str:
    """One cosignature line (with its newline) over ``checkpoint_text`` at ``timestamp`` (POSIX seconds).

    The caller (a witness) must already have checked that the checkpoint is signed by the log and
    consistent with everything it cosigned before: this function only produces the bytes.
    """
    signature = signer.sign(cosignature_message(checkpoint_text, timestamp))
    key_id = cosigner_key_id(cosigner_name, signer.public_key())
    blob = key_id.to_bytes(4, "big") + timestamp.to_bytes(8, "big") + signature
    return f"{_SIGNATURE_PREFIX}{cosigner_name} {base64.b64encode(blob).decode('ascii')}\n"


def _matching(signature: NoteSignature, cosigners: Sequence[CosignerKey]) -> CosignerKey | None:
    for cosigner in cosigners:
        if cosigner.name == signature.key_name and cosigner.key_id == signature.key_id:
            return cosigner
    return None


def verify_cosignatures(
    note: str | bytes, cosigners: Sequence[CosignerKey]
) -> tuple[str, list[VerifiedCosignature]]:
    """The note's body and every cosignature from a trusted witness, each verified.

    Lines from keys not in ``cosigners`` (the log's own signature, other witnesses) are ignored. A
    line that names a trusted witness (name and key id) but does not verify raises
    :class:`VerificationError`. The log's own signature is *not* checked here: callers check it with
    :func:`audit.checkpoint.verify_checkpoint` on the same note.
    """
    names = [c.name for c in cosigners]
    if len(set(names)) != len(names):
        raise KeyFormatError("two trusted witnesses share a name")
    body, signatures = parse_note(note)
    verified: list[VerifiedCosignature] = []
    for signature in signatures:
        cosigner = _matching(signature, cosigners)
        if cosigner is None:
            continue
        blob = signature.signature
        if len(blob) != _BLOB_SIZE:
            raise VerificationError(
                f"cosignature from {cosigner.name} is {len(blob)} bytes, not {_BLOB_SIZE}"
            )
        timestamp = int.from_bytes(blob[:8], "big")
        if timestamp > _MAX_TIMESTAMP:
            raise VerificationError(f"cosignature from {cosigner.name} has a timestamp beyond 2^63 - 1")
        try:
            cosigner.public_key.verify(blob[8:], cosignature_message(body, timestamp))
        except InvalidSignature:
            raise VerificationError(f"invalid cosignature from witness {cosigner.name}") from None
        verified.append(VerifiedCosignature(cosigner.name, cosigner.key_id, timestamp))
    return body, verified


@dataclass(frozen=True)
class CosignaturePolicy:
    """Which witnesses a client trusts, how many must have cosigned, and how fresh they must be.

    An empty policy is refused: trusting no witness is not a quorum of zero, it is a mistake.
    """

    cosigners: tuple[CosignerKey, ...]
    quorum: int
    max_age: timedelta | None = None
    # A witness's clock may run a little ahead of ours; more than this is refused.
    future_skew: timedelta = timedelta(minutes=5)

    def __post_init__(self) -> None:
        if not self.cosigners:
            raise ValueError("a cosignature policy needs at least one trusted witness")
        if not 1 <= self.quorum <= len(self.cosigners):
            raise ValueError(
                f"quorum {self.quorum} must be between 1 and {len(self.cosigners)} (the witnesses)"
            )
        if self.max_age is not None and self.max_age <= timedelta(0):
            raise ValueError("max_age must be positive")


def require_quorum(note: str | bytes, policy: CosignaturePolicy, now: datetime) -> list[VerifiedCosignature]:
    """The cosignatures that count towards ``policy.quorum``; :class:`QuorumError` when too few do.

    Each trusted witness counts once. A cosignature dated after ``now + future_skew`` or older than
    ``max_age`` does not count, and the error says so, witness by witness.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    _, cosignatures = verify_cosignatures(note, policy.cosigners)
    counted: dict[str, VerifiedCosignature] = {}
    reasons: list[str] = []
    now_ts = now.timestamp()
    for cosignature in cosignatures:
        if cosignature.timestamp > now_ts + policy.future_skew.total_seconds():
            reasons.append(f"{cosignature.cosigner}: cosignature dated in the future")
            continue
        if policy.max_age is not None and now_ts - cosignature.timestamp > policy.max_age.total_seconds():
            reasons.append(f"{cosignature.cosigner}: cosignature older than {policy.max_age}")
            continue
        counted.setdefault(cosignature.cosigner, cosignature)
    if len(counted) < policy.quorum:
        missing = sorted(
            {c.name for c in policy.cosigners} - set(counted) - {r.split(":")[0] for r in reasons}
        )
        if missing:
            reasons.append("no cosignature from " + ", ".join(missing))
        raise QuorumError(
            f"{len(counted)} of the required {policy.quorum} witness cosignatures ({'; '.join(reasons)})"
        )
    return list(counted.values())
