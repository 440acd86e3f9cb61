"""k-of-n shares of a data key, bound to the key's identity, with the owner's commitment to the key.

Byte formats (docs/threshold.md explains the choices):

- **Identity** (canonical): ``"keyserver/threshold/v1\\n"``, u16 length ‖ UTF-8 name, u32 version,
  u8 k, u8 n. Names are 1..100 characters of ``[A-Za-z0-9._-]``.
- **Commitment**: a random 32-byte nonce and
  ``digest = SHA-256("keyserver/threshold/commitment/v1\\n" ‖ identity ‖ u8 length ‖ nonce ‖ key)``,
  published as JSON with the identity and the key's length.
- **Share** (what a keyserver stores as an ordinary imported key; at most 64 bytes): u8 format (1),
  u8 k, u8 n, u8 index x (1..n), 16-byte tag, then the share value (as long as the key, 16..44 bytes).
  ``tag = SHA-256("keyserver/threshold/share/v1\\n" ‖ identity ‖ u8 length ‖ nonce ‖ u8 x)[:16]``:
  a share names the key, version, split and index it belongs to, so shares of two keys, two versions
  or two splits of one version are refused before any arithmetic. The tag is public (not a MAC); a
  share whose value was changed is caught by the commitment.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from threshold.shamir import RandomBytes, interpolate, split_bytes

__all__ = [
    "MAX_KEY_LENGTH",
    "MIN_KEY_LENGTH",
    "CommitmentMismatch",
    "DuplicateShare",
    "InvalidParameters",
    "KeyCommitment",
    "KeyIdentity",
    "MalformedCommitment",
    "MalformedShare",
    "NotEnoughShares",
    "Share",
    "ShareParametersMismatch",
    "ThresholdError",
    "WrongIdentity",
    "combine",
    "split",
    "wipe",
]

FORMAT = 1
TAG_LENGTH = 16
HEADER_LENGTH = 4 + TAG_LENGTH
NONCE_LENGTH = 32
MAX_SHARE_LENGTH = 64  # a keyserver imports 16..64 bytes of key material
MIN_KEY_LENGTH, MAX_KEY_LENGTH = 16, MAX_SHARE_LENGTH - HEADER_LENGTH
COMMITMENT_FORMAT = "keyserver-threshold-commitment/v1"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
_DOMAIN = b"keyserver/threshold/v1\n"
_COMMITMENT_DOMAIN = b"keyserver/threshold/commitment/v1\n"
_SHARE_DOMAIN = b"keyserver/threshold/share/v1\n"


class ThresholdError(Exception):
    """A refusal to split or combine; ``reason`` is a stable code, the message says what to do."""

    reason = "threshold-error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidParameters(ThresholdError):
    reason = "threshold-invalid-parameters"


class MalformedShare(ThresholdError):
    reason = "threshold-malformed-share"


class MalformedCommitment(ThresholdError):
    reason = "threshold-malformed-commitment"


class WrongIdentity(ThresholdError):
    """A share or commitment of another key, version or split than the one being combined."""

    reason = "threshold-wrong-identity"


class ShareParametersMismatch(ThresholdError):
    """A share whose k or n is not the key's."""

    reason = "threshold-share-parameters-mismatch"


class DuplicateShare(ThresholdError):
    reason = "threshold-duplicate-share"


class NotEnoughShares(ThresholdError):
    reason = "threshold-not-enough-shares"


class CommitmentMismatch(ThresholdError):
    """The shares combine to a key the owner did not commit to: a share was altered or forged."""

    reason = "threshold-commitment-mismatch"


@dataclass(frozen=True)
class KeyIdentity:
    """Which key the shares are of: its name and version, and the threshold k of n."""

    name: str
    version: int
    k: int
    n: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise InvalidParameters(
                f"a key name is 1..100 characters of A-Z a-z 0-9 . _ -, not {self.name!r}"
            )
        for field, value in (("version", self.version), ("k", self.k), ("n", self.n)):
            if type(value) is not int:
                raise InvalidParameters(f"{field} is an integer, not {value!r}")
        if not 1 <= self.version < 2**32:
            raise InvalidParameters(f"a version is 1..2^32-1, not {self.version}")
        if not 2 <= self.k <= self.n <= 255:
            raise InvalidParameters(
                f"need 2 <= k <= n <= 255, not k={self.k}, n={self.n} (k=1 is no threshold: use a plain key)"
            )

    def canonical(self) -> bytes:
        name = self.name.encode()
        fields = struct.pack(">IBB", self.version, self.k, self.n)
        return _DOMAIN + struct.pack(">H", len(name)) + name + fields

    def describe(self) -> str:
        return f"{self.name} version {self.version} ({self.k} of {self.n})"


@dataclass(frozen=True)
class KeyCommitment:
    """The owner's published commitment to the key: checks a combined key, reveals nothing of it."""

    identity: KeyIdentity
    length: int
    nonce: bytes
    digest: bytes

    @classmethod
    def to_key(cls, identity: KeyIdentity, key: bytes | bytearray, nonce: bytes) -> KeyCommitment:
        return cls(identity, len(key), nonce, _commitment_digest(identity, len(key), nonce, key))

    def matches(self, key: bytes | bytearray) -> bool:
        if len(key) != self.length:
            return False
        digest = _commitment_digest(self.identity, self.length, self.nonce, key)
        return hmac.compare_digest(digest, self.digest)

    def share_tag(self, index: int) -> bytes:
        material = self.identity.canonical() + bytes([self.length]) + self.nonce + bytes([index])
        return hashlib.sha256(_SHARE_DOMAIN + material).digest()[:TAG_LENGTH]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": COMMITMENT_FORMAT,
            "name": self.identity.name,
            "version": self.identity.version,
            "k": self.identity.k,
            "n": self.identity.n,
            "length": self.length,
            "nonce": _b64(self.nonce),
            "digest": _b64(self.digest),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> KeyCommitment:
        """Strict: exactly the fields ``to_json`` writes, each of its type."""
        fields = {"format", "name", "version", "k", "n", "length", "nonce", "digest"}
        if not isinstance(document, Mapping) or set(document) != fields:
            raise MalformedCommitment(
                f"a commitment is a JSON object with exactly the fields {sorted(fields)}"
            )
        if document["format"] != COMMITMENT_FORMAT:
            raise MalformedCommitment(f"not a {COMMITMENT_FORMAT} document: {document['format']!r}")
        try:
            identity = KeyIdentity(document["name"], document["version"], document["k"], document["n"])
        except InvalidParameters as exc:
            raise MalformedCommitment(f"the commitment's identity is invalid: {exc.message}") from None
        length = document["length"]
        if type(length) is not int or not MIN_KEY_LENGTH <= length <= MAX_KEY_LENGTH:
            raise MalformedCommitment(f"the key length is {MIN_KEY_LENGTH}..{MAX_KEY_LENGTH}, not {length!r}")
        nonce = _unb64(document["nonce"], "nonce", NONCE_LENGTH)
        digest = _unb64(document["digest"], "digest", hashlib.sha256().digest_size)
        return cls(identity, length, nonce, digest)


@dataclass(frozen=True, eq=False)
class Share:
    """One share: threshold k of n, its index x, the tag binding it to key, version and split, its value."""

    k: int
    n: int
    index: int
    tag: bytes
    value: bytearray

    def to_bytes(self) -> bytes:
        return bytes([FORMAT, self.k, self.n, self.index]) + self.tag + bytes(self.value)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray) -> Share:
        """The share in ``data`` (a copy: the caller may wipe its buffer), checked for form only."""
        if not HEADER_LENGTH + MIN_KEY_LENGTH <= len(data) <= MAX_SHARE_LENGTH:
            raise MalformedShare(
                f"a share is {HEADER_LENGTH + MIN_KEY_LENGTH}..{MAX_SHARE_LENGTH} bytes, not {len(data)}"
            )
        if data[0] != FORMAT:
            raise MalformedShare(f"unknown share format {data[0]} (this is format {FORMAT})")
        k, n, index = data[1], data[2], data[3]
        if not 2 <= k <= n or not 1 <= index <= n:
            raise MalformedShare(f"a share of k={k}, n={n} cannot have index {index}")
        return cls(k, n, index, bytes(data[4:HEADER_LENGTH]), bytearray(data[HEADER_LENGTH:]))

    def wipe(self) -> None:
        wipe(self.value)


def share_index(data: bytes | bytearray) -> int:
    """The index x of the share in ``data`` (checked for form; the copy of its value is wiped)."""
    share = Share.from_bytes(data)
    share.wipe()
    return share.index


def wipe(buffer: bytearray) -> None:
    """Overwrite ``buffer`` with zeros (best effort: Python may have copied it before)."""
    buffer[:] = bytes(len(buffer))


def split(
    key: bytes | bytearray,
    identity: KeyIdentity,
    *,
    random_bytes: RandomBytes = secrets.token_bytes,
) -> tuple[list[Share], KeyCommitment]:
    """n shares of ``key``, any k of which recover it, and the commitment to publish with them."""
    if not MIN_KEY_LENGTH <= len(key) <= MAX_KEY_LENGTH:
        raise InvalidParameters(
            f"a key to split is {MIN_KEY_LENGTH}..{MAX_KEY_LENGTH} bytes (a share must fit a keyserver's"
            f" imported key), not {len(key)}"
        )
    commitment = KeyCommitment.to_key(identity, key, secrets.token_bytes(NONCE_LENGTH))
    values = split_bytes(key, identity.k, identity.n, random_bytes=random_bytes)
    shares = [
        Share(identity.k, identity.n, x, commitment.share_tag(x), value) for x, value in enumerate(values, 1)
    ]
    return shares, commitment


def combine(
    shares: Sequence[bytes | bytearray | Share], commitment: KeyCommitment, identity: KeyIdentity
) -> bytearray:
    """The key, from at least k shares of ``identity``, checked against the owner's ``commitment``.

    The first k shares are interpolated; every further share must lie on the same polynomials. The
    caller owns the returned bytearray and should ``wipe`` it when done; every copy made here is wiped.
    """
    if commitment.identity != identity:
        raise WrongIdentity(
            f"the commitment is for {commitment.identity.describe()}, not {identity.describe()}"
        )
    parsed: list[Share] = []
    try:
        for position, item in enumerate(shares):
            share = Share.from_bytes(item.to_bytes() if isinstance(item, Share) else item)
            parsed.append(share)
            _check_share(position, share, commitment)
        indices = [share.index for share in parsed]
        duplicates = sorted({x for x in indices if indices.count(x) > 1})
        if duplicates:
            raise DuplicateShare(f"share index {duplicates[0]} was given more than once")
        if len(parsed) < identity.k:
            raise NotEnoughShares(
                f"{identity.describe()} needs {identity.k} shares, {len(parsed)} given (indices {indices})"
            )
        chosen = parsed[: identity.k]
        key = interpolate([s.index for s in chosen], [s.value for s in chosen])
        if not commitment.matches(key):
            wipe(key)
            raise CommitmentMismatch(
                f"shares {[s.index for s in chosen]} combine to a key the owner did not commit to:"
                " at least one of them was altered"
            )
        for extra in parsed[identity.k :]:
            expected = interpolate([s.index for s in chosen], [s.value for s in chosen], at=extra.index)
            agrees = hmac.compare_digest(bytes(expected), bytes(extra.value))
            wipe(expected)
            if not agrees:
                wipe(key)
                raise CommitmentMismatch(f"share {extra.index} does not agree with the committed key")
        return key
    finally:
        for share in parsed:
            share.wipe()


def _check_share(position: int, share: Share, commitment: KeyCommitment) -> None:
    identity = commitment.identity
    if (share.k, share.n) != (identity.k, identity.n):
        raise ShareParametersMismatch(
            f"share #{position} (index {share.index}) is a {share.k}-of-{share.n} share;"
            f" {identity.describe()} is {identity.k} of {identity.n}"
        )
    if not hmac.compare_digest(share.tag, commitment.share_tag(share.index)):
        raise WrongIdentity(
            f"share #{position} (index {share.index}) is not a share of {identity.describe()} as"
            " committed: another key, version or split"
        )
    if len(share.value) != commitment.length:
        raise MalformedShare(
            f"share #{position} (index {share.index}) holds {len(share.value)} bytes; the key has"
            f" {commitment.length}"
        )


def _commitment_digest(identity: KeyIdentity, length: int, nonce: bytes, key: bytes | bytearray) -> bytes:
    digest = hashlib.sha256(_COMMITMENT_DOMAIN)
    digest.update(identity.canonical() + bytes([length]) + nonce)
    digest.update(key)
    return digest.digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(value: Any, field: str, length: int) -> bytes:
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_-]*", value):
        raise MalformedCommitment(f"the {field} is unpadded base64url text")
    try:
        data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (binascii.Error, ValueError):
        raise MalformedCommitment(f"the {field} is not base64url") from None
    if len(data) != length or _b64(data) != value:
        raise MalformedCommitment(f"the {field} is {length} bytes in canonical base64url")
    return data
