"""The key backend the settings name, or a ConfigurationError saying what to fix.

Only the settings are checked here (no HSM or Vault round trip: the factory runs before the event
loop serves anything); ``await backend.health()`` at start-up then proves the backend reachable.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

from keyserver.backends.base import KeyBackend
from keyserver.backends.software import SoftwareBackend
from keyserver.config import Settings
from keyserver.errors import ConfigurationError

# Transit mount paths and key names end up in URL paths: keep them to what Vault itself accepts.
_VAULT_MOUNT = re.compile(r"[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*")
_VAULT_KEY_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def backend_from_settings(settings: Settings, *, create_kek: bool = True) -> KeyBackend:
    """``create_kek=False`` once the database has recorded a KEK (keyserver/kek_identity.py): a KEK
    that is missing then is an error to report, not one to create afresh."""
    if settings.key_backend == "software":
        return SoftwareBackend.from_file(settings.effective_kek_file, create=create_kek)
    if settings.key_backend == "pkcs11":
        return _pkcs11(settings, create_kek)
    if settings.key_backend == "vault":
        return _vault(settings, create_kek)
    # Refuse rather than fall back: silently using a local KEK when an HSM was asked for would
    # defeat the point of asking for one.
    raise ConfigurationError(
        f"KEYSERVER_KEY_BACKEND={settings.key_backend} is not one of software, pkcs11, vault"
    )


def _pkcs11(settings: Settings, create_kek: bool) -> KeyBackend:
    from keyserver.backends.pkcs11 import Pkcs11Backend

    module = settings.pkcs11_module
    if module is None:
        raise ConfigurationError(
            "KEYSERVER_KEY_BACKEND=pkcs11 needs KEYSERVER_PKCS11_MODULE (the module's .so)"
        )
    if not module.is_file():
        raise ConfigurationError(f"KEYSERVER_PKCS11_MODULE={module} is not a file")
    if not settings.pkcs11_token_label:
        raise ConfigurationError("KEYSERVER_KEY_BACKEND=pkcs11 needs KEYSERVER_PKCS11_TOKEN_LABEL")
    if not settings.pkcs11_kek_label:
        raise ConfigurationError("KEYSERVER_PKCS11_KEK_LABEL must not be empty")
    pin = _secret(
        settings.pkcs11_pin,
        settings.pkcs11_pin_file,
        "KEYSERVER_PKCS11_PIN",
        "KEYSERVER_PKCS11_PIN_FILE",
        "the token's user PIN",
    )
    return Pkcs11Backend(
        str(module),
        settings.pkcs11_token_label,
        pin,
        settings.pkcs11_kek_label,
        create_kek=create_kek,
        call_timeout_s=settings.backend_timeout_s,
    )


def _vault(settings: Settings, create_kek: bool) -> KeyBackend:
    from keyserver.backends.vault import VaultBackend

    addr = settings.vault_addr
    if not addr:
        raise ConfigurationError(
            "KEYSERVER_KEY_BACKEND=vault needs KEYSERVER_VAULT_ADDR (e.g. https://vault:8200)"
        )
    parts = urlsplit(addr)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigurationError(f"KEYSERVER_VAULT_ADDR={addr!r} is not an http(s) URL")
    mount = settings.vault_transit_mount
    if not _VAULT_MOUNT.fullmatch(mount) or any(part in (".", "..") for part in mount.split("/")):
        raise ConfigurationError(
            f"KEYSERVER_VAULT_TRANSIT_MOUNT={settings.vault_transit_mount!r} is not a mount path"
        )
    if not _VAULT_KEY_NAME.fullmatch(settings.vault_key_name):
        raise ConfigurationError(
            f"KEYSERVER_VAULT_KEY_NAME={settings.vault_key_name!r} is not a transit key name"
        )
    if not settings.vault_timeout_s > 0:
        raise ConfigurationError("KEYSERVER_VAULT_TIMEOUT_S must be a positive number of seconds")
    if settings.vault_ca_file is not None and not settings.vault_ca_file.is_file():
        raise ConfigurationError(f"KEYSERVER_VAULT_CA_FILE={settings.vault_ca_file} is not a file")
    if settings.vault_token and settings.vault_token_file:
        raise ConfigurationError("set KEYSERVER_VAULT_TOKEN or KEYSERVER_VAULT_TOKEN_FILE, not both")
    if settings.vault_token_file is not None:
        # Read once here so that a missing or open file stops the start; the backend re-reads it
        # when it changes (a Vault agent renewing the token rewrites it).
        _secret(None, settings.vault_token_file, "", "KEYSERVER_VAULT_TOKEN_FILE", "the Vault token")
        return VaultBackend(
            addr,
            token_file=settings.vault_token_file,
            mount=settings.vault_transit_mount,
            key_name=settings.vault_key_name,
            timeout_s=settings.vault_timeout_s,
            ca_file=settings.vault_ca_file,
            create_key=create_kek,
        )
    if not settings.vault_token:
        raise ConfigurationError(
            "KEYSERVER_KEY_BACKEND=vault needs KEYSERVER_VAULT_TOKEN_FILE (or KEYSERVER_VAULT_TOKEN)"
        )
    return VaultBackend(
        addr,
        settings.vault_token,
        mount=settings.vault_transit_mount,
        key_name=settings.vault_key_name,
        timeout_s=settings.vault_timeout_s,
        ca_file=settings.vault_ca_file,
        create_key=create_kek,
    )


def _secret(inline: str | None, path: Path | None, inline_name: str, file_name: str, what: str) -> str:
    if inline and path is not None:
        raise ConfigurationError(f"set {inline_name} or {file_name}, not both")
    if path is None:
        if not inline:
            raise ConfigurationError(f"{what} is missing: set {file_name} (or {inline_name})")
        return inline
    try:
        mode = path.stat().st_mode
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigurationError(f"{file_name}={path} cannot be read: {exc.strerror}") from None
    # Same rule as the software backend's KEK file: a secret others can read is not one.
    if mode & 0o077:
        raise ConfigurationError(f"{file_name}={path} is readable by group or others; chmod 600 it")
    if not value:
        raise ConfigurationError(f"{file_name}={path} is empty")
    return value
