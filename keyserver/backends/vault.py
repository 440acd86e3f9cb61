"""The Vault backend: HashiCorp Vault's (or OpenBao's, same API) transit engine through hvac.

One transit key per keyserver (``aes256-gcm96``, ``derived=true``, not exportable), created on first
use if the token may. Tenant binding uses transit's key derivation: every request carries the
wrapping ``context`` (base64) as transit's derivation context, so Vault encrypts under a key derived
for that context, and a ciphertext presented with another context fails Vault's authentication check.
Not associated data: OpenBao's rewrap (key rotation) fails for AAD-bound ciphertexts, derivation
contexts survive it (measured; see the notes on dependencies).

Stored blob: transit's own ciphertext text, ``vault:v<N>:<base64>``, as ASCII bytes (``N`` is the
transit key version; after ``rotate_kek`` old versions still decrypt, and ``rewrap_to_latest`` moves a
blob to the newest version without its plaintext leaving Vault).

Cleartext: ``generate_data_key`` uses ``datakey/wrapped``, so Vault generates the key and returns only
its ciphertext. Unwrapping is ``decrypt``, which returns the plaintext to keyserver: transit has no way
to encrypt a data key to a caller's RSA key (its BYOK export needs an exportable transit key per data
key and emits CKM_RSA_AES_KEY_WRAP, not a JWE), so ``rewrap_for_recipient`` says ``None`` and the
release goes through memory.

hvac is blocking: requests run on worker threads, each with its own client (a requests Session is not
documented as thread-safe), with a timeout on every request.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import re
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import hvac
import requests
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from hvac import exceptions as vault_errors

from keyserver.backends.base import (
    DEFAULT_DATA_KEY_BYTES,
    BackendError,
    JweParts,
    check_data_key_length,
    foreign_blob_error,
)

T = TypeVar("T")

KEY_TYPE = "aes256-gcm96"
# Transit generates data keys of these sizes; others are generated here and encrypted (memory path).
_DATAKEY_BITS = (128, 256, 512)
_CIPHERTEXT = re.compile(rb"vault:v[1-9][0-9]{0,9}:[A-Za-z0-9+/]+={0,2}")
_MAX_BLOB_BYTES = 16 * 1024


def parse_blob(wrapped: bytes) -> str:
    """The transit ciphertext in a stored blob; ``BackendError`` unless it is well formed."""
    if len(wrapped) > _MAX_BLOB_BYTES or not _CIPHERTEXT.fullmatch(wrapped):
        raise foreign_blob_error("vault", wrapped)
    try:
        base64.b64decode(wrapped.split(b":", 2)[2], validate=True)
    except binascii.Error:
        raise BackendError("the wrapped key is malformed (its Vault ciphertext is not base64)") from None
    return wrapped.decode("ascii")


class VaultBackend:
    name = "vault"

    def __init__(
        self,
        addr: str,
        token: str | None = None,
        *,
        token_file: Path | None = None,
        mount: str = "transit",
        key_name: str = "keyserver",
        timeout_s: float = 5.0,
        ca_file: Path | None = None,
        create_key: bool = True,
    ) -> None:
        if (token is None) == (token_file is None):
            raise ValueError("give the Vault token either inline or as a file, not both or neither")
        self._addr = addr.rstrip("/")
        self._token = token
        self._token_file = token_file
        self._token_mtime: int | None = None
        self._mount = mount
        self._key_name = key_name
        self._timeout = timeout_s
        self._verify: bool | str = str(ca_file) if ca_file is not None else True
        self._create_key = create_key
        self._local = threading.local()
        self._clients: list[hvac.Client] = []
        self._state_lock = threading.Lock()
        self._key_checked = False
        self._closed = False

    def __repr__(self) -> str:
        return f"VaultBackend(addr={self._addr!r}, mount={self._mount!r}, key={self._key_name!r})"

    # -- the interface ------------------------------------------------------------------------

    async def wrap(self, plaintext: bytes, context: bytes) -> bytes:
        encoded = base64.b64encode(plaintext).decode()
        ctx = _context(context)
        response = await self._call(
            "encrypt",
            lambda client: client.secrets.transit.encrypt_data(
                self._key_name, encoded, context=ctx, mount_point=self._mount
            ),
        )
        return _ciphertext(response)

    async def unwrap(self, wrapped: bytes, context: bytes) -> bytes:
        ciphertext = parse_blob(wrapped)
        ctx = _context(context)
        response = await self._call(
            "decrypt",
            lambda client: client.secrets.transit.decrypt_data(
                self._key_name, ciphertext, context=ctx, mount_point=self._mount
            ),
        )
        try:
            return base64.b64decode(response["data"]["plaintext"], validate=True)
        except (KeyError, TypeError, binascii.Error):
            raise BackendError("Vault's decrypt answer has no readable plaintext") from None

    async def generate_data_key(self, context: bytes, length: int = DEFAULT_DATA_KEY_BYTES) -> bytes:
        check_data_key_length(length)
        bits = length * 8
        if bits not in _DATAKEY_BITS:
            # transit's datakey endpoint makes 128, 256 or 512-bit keys only.
            return await self.wrap(secrets.token_bytes(length), context)
        ctx = _context(context)
        # "wrapped": Vault returns the ciphertext only; the plaintext never leaves Vault.
        response = await self._call(
            "datakey/wrapped",
            lambda client: client.secrets.transit.generate_data_key(
                self._key_name, key_type="wrapped", context=ctx, bits=bits, mount_point=self._mount
            ),
        )
        return _ciphertext(response)

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
        # Transit cannot encrypt a data key to an outside public key (see the module docstring).
        return None

    async def health(self) -> None:
        status = await self._call(
            "seal-status", lambda client: client.sys.read_seal_status(), check_key=False
        )
        if not isinstance(status, dict) or status.get("initialized") is False:
            raise BackendError(f"Vault at {self._addr} is not initialised")
        if status.get("sealed") is not False:
            raise BackendError(f"Vault at {self._addr} is sealed: unseal it")
        # Reading the key proves the token is valid and allowed to use it, and that it is still fit.
        await self._call("read key", self._check_key, check_key=False)

    async def aclose(self) -> None:
        with self._state_lock:
            self._closed = True
            clients, self._clients = self._clients, []
        for client in clients:
            client.adapter.close()

    # -- rotation (vault only) ----------------------------------------------------------------

    async def rotate_kek(self) -> int:
        """Add a new version of the transit key; new blobs use it, old ones still decrypt.
        Returns the new latest version."""
        await self._call(
            "rotate",
            lambda client: client.secrets.transit.rotate_key(self._key_name, mount_point=self._mount),
        )
        info = await self._call("read key", self._read_key, check_key=False)
        return int(info["latest_version"])

    async def rewrap_to_latest(self, wrapped: bytes, context: bytes) -> bytes:
        """The blob re-encrypted under the newest key version, inside Vault (no plaintext here)."""
        ciphertext = parse_blob(wrapped)
        ctx = _context(context)
        response = await self._call(
            "rewrap",
            lambda client: client.secrets.transit.rewrap_data(
                self._key_name, ciphertext, context=ctx, mount_point=self._mount
            ),
        )
        return _ciphertext(response)

    # -- plumbing -----------------------------------------------------------------------------

    async def _call(self, what: str, request: Callable[[hvac.Client], T], *, check_key: bool = True) -> T:
        # requests' timeout bounds the connection and each read separately; this bounds the whole.
        try:
            return await asyncio.wait_for(
                asyncio.to_thread(self._in_thread, what, request, check_key), timeout=2 * self._timeout + 1
            )
        except TimeoutError:
            raise BackendError(f"Vault at {self._addr} did not answer ({what}) in time") from None

    def _in_thread(self, what: str, request: Callable[[hvac.Client], T], check_key: bool) -> T:
        if self._closed:
            raise BackendError("the vault key backend was closed")
        client = self._client()
        if check_key and not self._key_checked:
            with self._state_lock:
                # Under the lock: two first requests must not both try to create the key.
                if not self._key_checked:
                    self._guarded("read or create the transit key", self._check_key, client)
                    self._key_checked = True
        return self._guarded(what, request, client)

    def _guarded(self, what: str, request: Callable[[hvac.Client], T], client: hvac.Client) -> T:
        """``request(client)``, with every failure turned into a ``BackendError`` saying which."""
        try:
            return request(client)
        except requests.exceptions.Timeout:
            raise BackendError(
                f"Vault at {self._addr} did not answer ({what}) within {self._timeout:g} s"
            ) from None
        except requests.exceptions.SSLError as exc:
            raise BackendError(f"TLS to Vault at {self._addr} failed: {exc}") from None
        except requests.exceptions.ConnectionError:
            raise BackendError(f"Vault at {self._addr} is unreachable (connection failed)") from None
        except requests.exceptions.RequestException as exc:
            raise BackendError(f"the request to Vault at {self._addr} failed: {type(exc).__name__}") from None
        except vault_errors.VaultDown as exc:
            if "sealed" in _vault_message(exc).lower():
                raise BackendError(f"Vault at {self._addr} is sealed: unseal it") from None
            raise BackendError(f"Vault at {self._addr} is unavailable (503: {_vault_message(exc)})") from None
        except (vault_errors.Forbidden, vault_errors.Unauthorized):
            raise BackendError(
                f"Vault at {self._addr} refused {what} (permission denied): the token is invalid or"
                f" expired, or its policy does not allow {what} with transit key"
                f" {self._mount}/{self._key_name}"
            ) from None
        except vault_errors.InvalidPath:
            raise BackendError(
                f"Vault at {self._addr} has no transit key {self._key_name!r} at mount"
                f" {self._mount!r} ({what}: 404)"
            ) from None
        except vault_errors.InvalidRequest as exc:
            if what in ("decrypt", "rewrap"):
                raise BackendError(
                    f"the wrapped key does not unwrap under Vault transit key {self._mount}/{self._key_name}"
                    f" and this context (another key or Vault, or the blob was altered or belongs to"
                    f" another tenant): {_vault_message(exc)}"
                ) from None
            raise BackendError(f"Vault rejected {what}: {_vault_message(exc)}") from None
        except vault_errors.RateLimitExceeded:
            raise BackendError(f"Vault at {self._addr} is rate-limiting requests ({what}: 429)") from None
        except vault_errors.VaultError as exc:
            raise BackendError(f"Vault failed {what}: {type(exc).__name__}: {_vault_message(exc)}") from None

    def _client(self) -> hvac.Client:
        token = self._current_token()
        client: hvac.Client | None = getattr(self._local, "client", None)
        if client is None:
            with self._state_lock:
                if self._closed:
                    raise BackendError("the vault key backend was closed")
                client = hvac.Client(url=self._addr, token=token, timeout=self._timeout, verify=self._verify)
                self._clients.append(client)
            self._local.client = client
        elif client.token != token:
            client.token = token
        return client

    def _current_token(self) -> str:
        if self._token_file is None:
            assert self._token is not None
            return self._token
        # Re-read when the file changes: a Vault agent rewrites its sink file as it renews the token.
        try:
            mtime = self._token_file.stat().st_mtime_ns
            if mtime != self._token_mtime or self._token is None:
                token = self._token_file.read_text().strip()
                if not token:
                    raise BackendError(f"the Vault token file {self._token_file} is empty")
                self._token, self._token_mtime = token, mtime
        except OSError as exc:
            raise BackendError(
                f"the Vault token file {self._token_file} cannot be read: {exc.strerror}"
            ) from None
        return self._token

    def _read_key(self, client: hvac.Client) -> dict[str, Any]:
        response = client.secrets.transit.read_key(self._key_name, mount_point=self._mount)
        data = response.get("data") if isinstance(response, dict) else None
        if not isinstance(data, dict):
            raise BackendError("Vault's answer describing the transit key is not understood")
        return data

    def _check_key(self, client: hvac.Client) -> None:
        try:
            info = self._read_key(client)
        except vault_errors.InvalidPath:
            if not self._create_key:
                raise
            client.secrets.transit.create_key(
                self._key_name,
                derived=True,
                exportable=False,
                allow_plaintext_backup=False,
                key_type=KEY_TYPE,
                mount_point=self._mount,
            )
            info = self._read_key(client)
        problems = []
        if info.get("type") != KEY_TYPE:
            problems.append(f"its type is {info.get('type')!r}, not {KEY_TYPE}")
        if info.get("derived") is not True:
            # Without derivation the context would be ignored, and with it tenant binding.
            problems.append("it is not a derived key (derived=true), so contexts would not bind tenants")
        if info.get("exportable") or info.get("allow_plaintext_backup"):
            problems.append("it is exportable or allows plaintext backup, so its material can leave Vault")
        if problems:
            raise BackendError(
                f"the transit key {self._mount}/{self._key_name} cannot be used: {'; '.join(problems)}"
            )


def _context(context: bytes) -> str:
    if not context:
        raise ValueError("the vault backend needs a non-empty context (transit key derivation)")
    return base64.b64encode(context).decode()


def _ciphertext(response: Any) -> bytes:
    try:
        ciphertext = response["data"]["ciphertext"]
    except (KeyError, TypeError):
        raise BackendError("Vault's answer has no ciphertext") from None
    if not isinstance(ciphertext, str):
        raise BackendError("Vault's answer has no ciphertext")
    return parse_blob(ciphertext.encode("ascii", "replace")).encode("ascii")


def _vault_message(exc: vault_errors.VaultError) -> str:
    # The errors Vault returned, without hvac's "on <method> <url>" suffix; they never hold secrets
    # (transit does not echo plaintext or tokens in errors).
    return ", ".join(exc.errors) if exc.errors else str(exc.args[0] if exc.args else type(exc).__name__)
