"""A witness: configuration, its key, and ``add-checkpoint`` end to end (parse, decide, swap, cosign).

Configuration is a TOML file, so that an operator who is not the keyserver's operator can read and
review exactly what it trusts::

    name = "witness.example.org/w1"        # the cosigner name (C2SP: a schema-less URL)
    key_file = "witness.key"                # Ed25519 private key, PKCS#8 PEM, mode 0600
    database_url = "sqlite+aiosqlite:////var/lib/witness/state.db"

    [[log]]
    origin = "keyserver.example.org/acme"   # optional: defaults to the vkey's name
    vkey = "keyserver.example.org/acme+1a2b3c4d+AQ..."

Relative paths are relative to the configuration file. The key is created by
``keyserver witness keygen`` and never leaves the file; the witness refuses a key file that others
can read.
"""

from __future__ import annotations

import os
import stat
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from audit.checkpoint import CheckpointError, NoteVerifier, parse_checkpoint_body, parse_note, parse_vkey
from audit.cosignature import CosignerKey, cosign_checkpoint, cosigner_vkey
from keyserver.witness.protocol import (
    SIZE_CONTENT_TYPE,
    WitnessRefusal,
    decide,
    parse_add_checkpoint,
)
from keyserver.witness.store import WitnessStore

__all__ = ["WitnessAnswer", "WitnessConfig", "WitnessConfigError", "WitnessService", "load_private_key"]

# How often a request that lost the compare-and-swap is decided again before giving up (503).
_SWAP_ATTEMPTS = 4


class WitnessConfigError(Exception):
    """The witness's configuration or key file cannot be used; the message says what to fix."""


@dataclass(frozen=True)
class WitnessConfig:
    name: str
    key_file: Path
    database_url: str
    logs: Mapping[str, tuple[NoteVerifier, ...]] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> WitnessConfig:
        try:
            raw = tomllib.loads(path.read_text())
        except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise WitnessConfigError(f"cannot read witness configuration {path}: {exc}") from exc
        return cls.from_mapping(raw, base=path.parent)

    @classmethod
    def from_mapping(cls, raw: Mapping[str, object], *, base: Path) -> WitnessConfig:
        known = {"name", "key_file", "database_url", "log"}
        unknown = set(raw) - known
        if unknown:
            raise WitnessConfigError(f"unknown witness configuration keys: {', '.join(sorted(unknown))}")
        name, key_file, database_url = raw.get("name"), raw.get("key_file"), raw.get("database_url")
        if not isinstance(name, str) or not isinstance(key_file, str) or not isinstance(database_url, str):
            raise WitnessConfigError("witness configuration needs name, key_file and database_url strings")
        entries = raw.get("log", [])
        if not isinstance(entries, list) or not entries:
            raise WitnessConfigError("witness configuration needs at least one [[log]] with its vkey")
        logs: dict[str, list[NoteVerifier]] = {}
        for entry in entries:
            if not isinstance(entry, dict) or set(entry) - {"origin", "vkey"} or "vkey" not in entry:
                raise WitnessConfigError("each [[log]] has a vkey and optionally an origin, nothing else")
            try:
                verifier = parse_vkey(str(entry["vkey"]))
            except CheckpointError as exc:
                raise WitnessConfigError(f"log vkey {entry['vkey']!r}: {exc}") from exc
            origin = str(entry.get("origin", verifier.name))
            logs.setdefault(origin, []).append(verifier)
        path = Path(key_file)
        return cls(
            name=name,
            key_file=path if path.is_absolute() else base / path,
            database_url=database_url,
            logs={origin: tuple(keys) for origin, keys in logs.items()},
        )


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The witness key from its PEM file, refusing one that group or others may read."""
    try:
        mode = path.stat().st_mode
        data = path.read_bytes()
    except OSError as exc:
        raise WitnessConfigError(f"cannot read the witness key {path}: {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise WitnessConfigError(f"witness key {path} is readable by others: chmod 600 it")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise WitnessConfigError(f"witness key {path} is not an unencrypted PKCS#8 PEM key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise WitnessConfigError(f"witness key {path} is not an Ed25519 key")
    return key


def write_private_key(path: Path) -> Ed25519PrivateKey:
    """Create a new witness key file (mode 0600); refuse to overwrite one."""
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(pem)
    return key


@dataclass(frozen=True)
class WitnessAnswer:
    """What the HTTP edge sends back: status, content type and body, exactly as the spec says."""

    status: int
    content_type: str
    body: bytes


class WitnessService:
    def __init__(self, config: WitnessConfig, key: Ed25519PrivateKey, store: WitnessStore) -> None:
        self.config = config
        self.key = key
        self.store = store
        self.cosigner = CosignerKey.from_public_key(config.name, key.public_key())

    @property
    def vkey(self) -> str:
        return cosigner_vkey(self.config.name, self.key.public_key())

    async def add_checkpoint(self, body: bytes, *, now: float | None = None) -> WitnessAnswer:
        """Answer one ``add-checkpoint`` request; cosign only what is consistent with the stored state."""
        try:
            request = parse_add_checkpoint(body)
            origin = _origin_of(request.note)
        except WitnessRefusal as refusal:
            return _refused(refusal)
        for _ in range(_SWAP_ATTEMPTS):
            latest = await self.store.latest(origin) if origin in self.config.logs else None
            try:
                allowed = decide(request, self.config.logs, {origin: latest} if latest else {})
            except WitnessRefusal as refusal:
                if refusal.status in (409, 422):
                    # Signed by the log (403, 404 and 400 are decided first): evidence of a fork or rollback.
                    await self.store.record_refusal(origin, refusal.status, refusal.reason, request.note)
                return _refused(refusal)
            if await self.store.compare_and_swap(origin, allowed.previous, allowed.checkpoint, request.note):
                timestamp = int(time.time() if now is None else now)
                line = cosign_checkpoint(allowed.body, self.config.name, self.key, timestamp)
                return WitnessAnswer(200, _TEXT, line.encode("utf-8"))
            # Another request changed the state between our read and our swap: decide again on the new one.
        return WitnessAnswer(503, _TEXT, b"too many concurrent updates for this log; retry\n")


_TEXT = "text/plain; charset=utf-8"


def _refused(refusal: WitnessRefusal) -> WitnessAnswer:
    if refusal.latest_size is not None:
        return WitnessAnswer(409, SIZE_CONTENT_TYPE, f"{refusal.latest_size}\n".encode())
    return WitnessAnswer(refusal.status, _TEXT, f"{refusal.reason}\n".encode())


def _origin_of(note: str) -> str:
    try:
        body, _ = parse_note(note)
        return parse_checkpoint_body(body).origin
    except CheckpointError as exc:
        raise WitnessRefusal(400, f"malformed checkpoint: {exc}") from None
