"""Per-tenant Ed25519 signing keys kept wrapped by the key backend (the release log's checkpoint key,
the attestation-result key): made once, stored wrapped and bound to a context, and unwrapped once per
process into a cache keyed by tenant and public key."""

from __future__ import annotations

import uuid

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from keyserver.backends.base import KeyBackend


async def new_wrapped_ed25519(backend: KeyBackend, context: bytes) -> tuple[bytes, bytes]:
    """A fresh key as (raw public key, private key wrapped under ``context``)."""
    private_key = Ed25519PrivateKey.generate()
    raw = private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    public = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return public, await backend.wrap(raw, context)


class UnwrappedKeys:
    """Unwrapped private keys by (tenant, public key): one backend round trip per key per process."""

    def __init__(self, backend: KeyBackend) -> None:
        self.backend = backend
        self._keys: dict[tuple[uuid.UUID, bytes], Ed25519PrivateKey] = {}

    async def get(
        self, tenant_id: uuid.UUID, public: bytes, wrapped: bytes, context: bytes
    ) -> Ed25519PrivateKey:
        cached = self._keys.get((tenant_id, public))
        if cached is not None:
            return cached
        private_key = Ed25519PrivateKey.from_private_bytes(await self.backend.unwrap(wrapped, context))
        if private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw) != public:
            raise ValueError("a stored signing key's private and public halves do not match")
        self._keys[(tenant_id, public)] = private_key
        return private_key
