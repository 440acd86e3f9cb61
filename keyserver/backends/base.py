"""The interface every key backend implements.

A backend holds a key-encryption key (KEK) that never appears in the database, and turns data keys into
*wrapped blobs* (the only form in which keyserver stores them) and back. Every operation takes a
``context``: the bytes naming what the key is for (tenant, key name, version). It is bound into the
wrapping cryptographically, so a blob of one tenant's key does not unwrap under another's context even
for someone who can rewrite database rows.

Where the cleartext of a data key goes is the point of the interface, so the names say it:

* ``generate_data_key`` makes a new key *inside* the backend where the backend can, and returns it only
  wrapped.
* ``import_data_key`` wraps key material a tenant uploaded (it was in memory already).
* ``unwrap_to_memory`` is the one path where a cleartext data key enters keyserver memory.
* ``rewrap_for_recipient`` releases a key as a JWE without it entering keyserver memory, where the
  backend can do that (PKCS#11: inside the token); ``None`` means "cannot here, use the memory path".

``wrap``/``unwrap`` are the older pair the release log uses for its own signing keys, which keyserver
must hold in memory to sign: same behaviour as ``import_data_key``/``unwrap_to_memory`` without the
data-key length rule. Each backend's blobs start with a distinct marker (see ``blob_origin``), so a blob
given to the wrong backend is reported as such rather than as a corrupted blob.

docs/key-backends.md describes the blob formats and which backend keeps keys out of memory when.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

from keyserver.errors import KeyserverError

# Data keys are symmetric keys for tenants' workloads: at least 128 bits, at most 512 (what every
# backend can generate or wrap; AES-256 keys are the default).
MIN_DATA_KEY_BYTES = 16
MAX_DATA_KEY_BYTES = 64
DEFAULT_DATA_KEY_BYTES = 32

# The one JWE shape the in-backend release path produces: RSA-OAEP is OAEP with SHA-1 and MGF1-SHA-1
# (RFC 7518 §4.3), the only OAEP SoftHSM2 2.6 implements; the CEK is the released data key itself.
REWRAP_ALG = "RSA-OAEP"
REWRAP_ENC = "A256GCM"
REWRAP_KEY_BYTES = 32
MIN_RECIPIENT_RSA_BITS = 2048
MAX_JWE_PAYLOAD_BYTES = 1024 * 1024

# First byte(s) of each backend's blobs. Vault's are its own "vault:vN:..." text, unchanged.
SOFTWARE_BLOB_MARKER = b"\x01"
PKCS11_BLOB_MARKER = b"\x11"
VAULT_BLOB_MARKER = b"vault:v"


class BackendError(KeyserverError):
    """The backend refused or failed (wrong context, corrupted blob, unreachable service)."""

    code = "key-backend"
    http_status = 503
    title = "Key backend error"


@dataclass(frozen=True)
class JweParts:
    """A JWE made by a backend (RFC 7516). ``protected`` is the base64url protected header exactly as
    it was authenticated (the AES-GCM additional data is its ASCII bytes)."""

    protected: str
    encrypted_key: bytes
    iv: bytes
    ciphertext: bytes
    tag: bytes

    def compact(self) -> str:
        """The JWE Compact Serialization (RFC 7516 §7.1)."""
        return ".".join(
            [
                self.protected,
                b64url(self.encrypted_key),
                b64url(self.iv),
                b64url(self.ciphertext),
                b64url(self.tag),
            ]
        )

    def flattened(self) -> dict[str, str]:
        """The flattened JWE JSON Serialization (RFC 7516 §7.2.2)."""
        return {
            "protected": self.protected,
            "encrypted_key": b64url(self.encrypted_key),
            "iv": b64url(self.iv),
            "ciphertext": b64url(self.ciphertext),
            "tag": b64url(self.tag),
        }


# runtime_checkable: Litestar checks the type of what its dependency injection hands out.
@runtime_checkable
class KeyBackend(Protocol):
    name: str

    async def wrap(self, plaintext: bytes, context: bytes) -> bytes:
        """Wrap a secret keyserver itself will need in memory (the release log's signing keys)."""
        ...

    async def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        """The inverse of ``wrap``: the secret, in memory. ``BackendError`` if it does not unwrap."""
        ...

    async def generate_data_key(self, context: bytes, length: int = DEFAULT_DATA_KEY_BYTES) -> bytes:
        """A new random data key of ``length`` bytes, returned only wrapped (the stored form).

        Generated inside the backend where it can (PKCS#11 token, Vault transit ``datakey/wrapped``),
        so the cleartext never exists in keyserver memory."""
        ...

    async def import_data_key(self, plaintext: bytes, context: bytes) -> bytes:
        """Wrap key material supplied by a tenant (which was in memory already, by nature)."""
        ...

    async def unwrap_to_memory(self, wrapped: bytes, context: bytes) -> bytes:
        """The cleartext data key, in keyserver memory: use only where ``rewrap_for_recipient`` said
        ``None``. ``BackendError`` if the blob does not unwrap under this backend and ``context``."""
        ...

    async def rewrap_for_recipient(
        self,
        wrapped: bytes,
        context: bytes,
        recipient: RSAPublicKey,
        jwe_protected_header: bytes,
        payload: bytes,
    ) -> JweParts | None:
        """Release the data key to ``recipient`` as a JWE without it entering keyserver memory.

        The JWE has ``alg`` RSA-OAEP and ``enc`` A256GCM (``jwe_protected_header`` is the header's JSON
        and must say so; it is re-serialised without whitespace) and its **content-encryption key is
        the data key**: the recipient recovers the key by RSA-OAEP-decrypting ``encrypted_key``, and
        ``payload`` (e.g. the key's metadata) is what the JWE decrypts to. Returns ``None`` when this
        backend, or this key (not 32 bytes), cannot do that; the caller then uses
        ``unwrap_to_memory`` and builds its JWE itself."""
        ...

    async def health(self) -> None:
        """Raise ``BackendError`` saying what is wrong (token missing, login failed, Vault sealed,
        unreachable, forbidden...) unless the backend can serve requests now."""
        ...

    async def aclose(self) -> None:
        """Release sessions and connections; the backend may not be used afterwards."""
        ...


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def check_data_key_length(length: int) -> None:
    if not MIN_DATA_KEY_BYTES <= length <= MAX_DATA_KEY_BYTES:
        raise ValueError(f"a data key is {MIN_DATA_KEY_BYTES} to {MAX_DATA_KEY_BYTES} bytes, not {length}")


def rewrap_protected_header(jwe_protected_header: bytes) -> str:
    """The base64url protected header for ``rewrap_for_recipient``, after checking that it describes
    what the backend will actually produce: a header claiming another ``alg`` or ``enc``, or asking
    for compression or critical extensions, would make a JWE that lies about itself."""
    try:
        header = json.loads(jwe_protected_header)
    except (ValueError, UnicodeDecodeError):
        raise ValueError("the JWE protected header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("the JWE protected header is not a JSON object")
    if header.get("alg") != REWRAP_ALG or header.get("enc") != REWRAP_ENC:
        raise ValueError(f'the in-backend release makes alg "{REWRAP_ALG}" with enc "{REWRAP_ENC}" only')
    if "zip" in header or "crit" in header:
        raise ValueError('the in-backend release supports neither "zip" nor "crit"')
    # Re-serialised compactly (same members, same order): RFC 7516 authenticates the header as sent,
    # but joserfc 1.8 re-serialises it this way when it decrypts the JSON serialisations, so any
    # other spelling of the same header would fail there.
    return b64url(json.dumps(header, ensure_ascii=True, separators=(",", ":")).encode("ascii"))


def check_recipient(recipient: RSAPublicKey) -> None:
    if not isinstance(recipient, RSAPublicKey):
        raise TypeError("the recipient of an RSA-OAEP release must be an RSA public key")
    if recipient.key_size < MIN_RECIPIENT_RSA_BITS:
        raise ValueError(f"the recipient's RSA key has {recipient.key_size} bits; at least 2048 are needed")


def check_payload(payload: bytes) -> None:
    if len(payload) > MAX_JWE_PAYLOAD_BYTES:
        raise ValueError(f"the JWE payload is larger than {MAX_JWE_PAYLOAD_BYTES} bytes")


def blob_origin(wrapped: bytes) -> str | None:
    """Which backend's format ``wrapped`` looks like (by its marker only; proves nothing)."""
    if wrapped.startswith(VAULT_BLOB_MARKER):
        return "vault"
    if wrapped[:1] == PKCS11_BLOB_MARKER:
        return "pkcs11"
    if wrapped[:1] == SOFTWARE_BLOB_MARKER:
        return "software"
    return None


def foreign_blob_error(backend: str, wrapped: bytes) -> BackendError:
    """The error for a blob this backend cannot have made: name its origin when it is recognisable,
    since the likely cause is a changed KEYSERVER_KEY_BACKEND rather than corruption."""
    origin = blob_origin(wrapped)
    if origin is not None and origin != backend:
        return BackendError(
            f"this key was wrapped by the {origin} key backend, but the {backend} backend is configured"
        )
    return BackendError("the wrapped key is malformed or of an unknown format")
