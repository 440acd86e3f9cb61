"""The embedded default backend: a local 256-bit key-encryption key in a file, AES-256-GCM wrapping.

For development and small installs. The KEK file (mode 0600) is created on first use; every replica of
a PostgreSQL deployment must be given the same file (KEYSERVER_KEK_FILE). Anyone who can read it and
the database can unwrap every key: that is what the pkcs11 and vault backends exist to prevent.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from keyserver.backends.base import (
    DEFAULT_DATA_KEY_BYTES,
    SOFTWARE_BLOB_MARKER,
    BackendError,
    JweParts,
    check_data_key_length,
    foreign_blob_error,
)
from keyserver.errors import ConfigurationError

# Blob: 0x01 || nonce (12) || AES-256-GCM(KEK, nonce, key, aad=context) with its 16-byte tag.
FORMAT_V1 = SOFTWARE_BLOB_MARKER
NONCE_BYTES = 12
KEK_BYTES = 32


class SoftwareBackend:
    name = "software"

    def __init__(self, kek: bytes) -> None:
        if len(kek) != KEK_BYTES:
            raise ConfigurationError("the software backend's KEK must be exactly 32 bytes")
        self._aead = AESGCM(kek)

    @classmethod
    def from_file(cls, path: Path, *, create: bool = True) -> SoftwareBackend:
        if not path.exists():
            if not create:
                raise ConfigurationError(f"the key-encryption key file {path} does not exist")
            _create_kek_file(path)
        if path.stat().st_mode & 0o077:
            raise ConfigurationError(
                f"the key-encryption key file {path} is readable by group or others; chmod 600 it"
            )
        return cls(path.read_bytes())

    async def wrap(self, plaintext: bytes, context: bytes) -> bytes:
        nonce = secrets.token_bytes(NONCE_BYTES)
        return FORMAT_V1 + nonce + self._aead.encrypt(nonce, plaintext, context)

    async def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        if len(wrapped) < 1 + NONCE_BYTES + 16 or wrapped[:1] != FORMAT_V1:
            raise foreign_blob_error(self.name, wrapped)
        nonce, ciphertext = wrapped[1 : 1 + NONCE_BYTES], wrapped[1 + NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, ciphertext, context)
        except InvalidTag:
            raise BackendError(
                "the wrapped key does not unwrap under this KEK and context (wrong KEK file, or the"
                " blob was altered or belongs to another tenant)"
            ) from None

    async def generate_data_key(self, context: bytes, length: int = DEFAULT_DATA_KEY_BYTES) -> bytes:
        # The KEK is in this process anyway: there is no "inside" to generate the key in.
        check_data_key_length(length)
        return await self.wrap(secrets.token_bytes(length), context)

    async def import_data_key(self, plaintext: bytes, context: bytes) -> bytes:
        check_data_key_length(len(plaintext))
        return await self.wrap(plaintext, context)

    async def unwrap_to_memory(self, wrapped: bytes, context: bytes) -> bytes:
        return await self.unwrap(wrapped, context)

    async def rewrap_for_recipient(
        self,
        wrapped: bytes,
        context: bytes,
        recipient: RSAPublicKey,
        jwe_protected_header: bytes,
        payload: bytes,
    ) -> JweParts | None:
        # Everything here happens in keyserver memory: the caller's memory path is as good.
        return None

    async def health(self) -> None:
        # The KEK was read at start-up and lives in memory: nothing can have gone away since.
        return None

    async def aclose(self) -> None:
        return None


def _create_kek_file(path: Path) -> None:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    # Written in full under a private name, then linked into place: link() fails if the file exists,
    # so two processes starting at once agree on one KEK and nobody ever reads a half-written file.
    temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(secrets.token_bytes(KEK_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
