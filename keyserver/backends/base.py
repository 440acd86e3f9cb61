"""The interface every key backend implements.

``wrap``/``unwrap`` protect key material at rest under the backend's key-encryption key (KEK). The
``context`` is bound into the wrapping (AES-GCM associated data, or the backend's equivalent): a blob
wrapped for one tenant and purpose does not unwrap for another.
"""

from __future__ import annotations

from typing import Protocol

from keyserver.errors import KeyserverError


class BackendError(KeyserverError):
    """The backend refused or failed (wrong context, corrupted blob, unreachable service)."""

    code = "key-backend"
    http_status = 503
    title = "Key backend error"


class KeyBackend(Protocol):
    name: str

    async def wrap(self, plaintext: bytes, context: bytes) -> bytes: ...

    async def unwrap(self, wrapped: bytes, context: bytes) -> bytes: ...
