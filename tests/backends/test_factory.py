"""The factory builds the configured backend, or stops the start with a ConfigurationError."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from keyserver.backends.factory import backend_from_settings
from keyserver.backends.pkcs11 import Pkcs11Backend
from keyserver.backends.software import SoftwareBackend
from keyserver.backends.vault import VaultBackend
from keyserver.config import Settings
from keyserver.errors import ConfigurationError
from tests.backends.conftest import unique
from tests.fixtures.openbao import OpenBaoServer
from tests.fixtures.softhsm import SoftHsmToken


def _secret_file(path: Path, value: str, mode: int = 0o600) -> Path:
    path.write_text(value + "\n")
    path.chmod(mode)
    return path


def test_settings_from_env(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "KEYSERVER_KEY_BACKEND": "vault",
            "KEYSERVER_PKCS11_MODULE": "/usr/lib/softhsm/libsofthsm2.so",
            "KEYSERVER_PKCS11_TOKEN_LABEL": "tok",
            "KEYSERVER_PKCS11_PIN_FILE": "/run/secrets/pin",
            "KEYSERVER_PKCS11_KEK_LABEL": "kek-1",
            "KEYSERVER_VAULT_ADDR": "https://vault:8200",
            "KEYSERVER_VAULT_TOKEN": "s.secret",
            "KEYSERVER_VAULT_TRANSIT_MOUNT": "kms/transit",
            "KEYSERVER_VAULT_KEY_NAME": "ks",
            "KEYSERVER_VAULT_TIMEOUT_S": "2.5",
        }
    )
    assert settings.pkcs11_module == Path("/usr/lib/softhsm/libsofthsm2.so")
    assert settings.pkcs11_token_label == "tok"
    assert settings.pkcs11_pin_file == Path("/run/secrets/pin")
    assert settings.pkcs11_kek_label == "kek-1"
    assert settings.vault_addr == "https://vault:8200"
    assert settings.vault_transit_mount == "kms/transit"
    assert settings.vault_key_name == "ks"
    assert settings.vault_timeout_s == 2.5
    # Secrets stay out of the settings' repr (which may end up in logs).
    assert "s.secret" not in repr(settings)
    defaults = Settings.from_env({})
    assert (defaults.pkcs11_kek_label, defaults.vault_transit_mount, defaults.vault_timeout_s) == (
        "keyserver-kek",
        "transit",
        5.0,
    )
    with pytest.raises(ConfigurationError, match="KEYSERVER_VAULT_TIMEOUT_S='soon' is not a number"):
        Settings.from_env({"KEYSERVER_VAULT_TIMEOUT_S": "soon"})


def test_software_is_the_default(tmp_path: Path) -> None:
    backend = backend_from_settings(Settings(data_dir=tmp_path))
    assert isinstance(backend, SoftwareBackend)


def test_pkcs11_misconfigurations(tmp_path: Path, softhsm_token: SoftHsmToken) -> None:
    module = Path(softhsm_token.module_path)
    pin_file = _secret_file(tmp_path / "pin", softhsm_token.user_pin)
    good = Settings(
        data_dir=tmp_path,
        key_backend="pkcs11",
        pkcs11_module=module,
        pkcs11_token_label=softhsm_token.label,
        pkcs11_pin_file=pin_file,
    )
    assert isinstance(backend_from_settings(good), Pkcs11Backend)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"pkcs11_module": None}, "needs KEYSERVER_PKCS11_MODULE"),
        ({"pkcs11_module": tmp_path / "nope.so"}, "is not a file"),
        ({"pkcs11_token_label": None}, "needs KEYSERVER_PKCS11_TOKEN_LABEL"),
        ({"pkcs11_pin_file": None}, "PIN is missing"),
        ({"pkcs11_pin": "123456"}, "not both"),
        ({"pkcs11_pin_file": tmp_path / "absent"}, "cannot be read"),
        ({"pkcs11_pin_file": _secret_file(tmp_path / "open", "1", 0o644)}, "readable by group or others"),
        ({"pkcs11_pin_file": _secret_file(tmp_path / "empty", "")}, "is empty"),
        ({"pkcs11_kek_label": ""}, "must not be empty"),
    ]
    for changes, message in cases:
        settings = replace(good, **changes)
        with pytest.raises(ConfigurationError, match=message):
            backend_from_settings(settings)


def test_vault_misconfigurations(tmp_path: Path) -> None:
    good = Settings(
        data_dir=tmp_path, key_backend="vault", vault_addr="http://127.0.0.1:8200", vault_token="t"
    )
    assert isinstance(backend_from_settings(good), VaultBackend)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"vault_addr": None}, "needs KEYSERVER_VAULT_ADDR"),
        ({"vault_addr": "vault:8200"}, "not an http"),
        ({"vault_token": None}, "needs KEYSERVER_VAULT_TOKEN_FILE"),
        ({"vault_token_file": tmp_path / "t"}, "not both"),
        ({"vault_token": None, "vault_token_file": tmp_path / "absent"}, "cannot be read"),
        ({"vault_transit_mount": "../sys"}, "not a mount path"),
        ({"vault_key_name": "a/b"}, "not a transit key name"),
        ({"vault_timeout_s": 0.0}, "positive"),
        ({"vault_ca_file": tmp_path / "ca.pem"}, "is not a file"),
    ]
    for changes, message in cases:
        settings = replace(good, **changes)
        with pytest.raises(ConfigurationError, match=message):
            backend_from_settings(settings)


@pytest.mark.softhsm
async def test_configured_pkcs11_backend_works(tmp_path: Path, softhsm_token: SoftHsmToken) -> None:
    settings = Settings.from_env(
        {
            "KEYSERVER_DATA_DIR": str(tmp_path),
            "KEYSERVER_KEY_BACKEND": "pkcs11",
            "KEYSERVER_PKCS11_MODULE": softhsm_token.module_path,
            "KEYSERVER_PKCS11_TOKEN_LABEL": softhsm_token.label,
            "KEYSERVER_PKCS11_PIN_FILE": str(_secret_file(tmp_path / "pin", softhsm_token.user_pin)),
            "KEYSERVER_PKCS11_KEK_LABEL": unique("kek"),
        }
    )
    backend = backend_from_settings(settings)
    try:
        await backend.health()
        wrapped = await backend.generate_data_key(b"ctx")
        assert len(await backend.unwrap_to_memory(wrapped, b"ctx")) == 32
    finally:
        await backend.aclose()


@pytest.mark.openbao
async def test_configured_vault_backend_works(
    tmp_path: Path, openbao: OpenBaoServer, transit_mount: str
) -> None:
    settings = Settings.from_env(
        {
            "KEYSERVER_DATA_DIR": str(tmp_path),
            "KEYSERVER_KEY_BACKEND": "vault",
            "KEYSERVER_VAULT_ADDR": openbao.addr,
            "KEYSERVER_VAULT_TOKEN_FILE": str(_secret_file(tmp_path / "token", openbao.root_token)),
            "KEYSERVER_VAULT_TRANSIT_MOUNT": transit_mount,
        }
    )
    backend = backend_from_settings(settings)
    try:
        await backend.health()
        wrapped = await backend.generate_data_key(b"ctx")
        assert len(await backend.unwrap_to_memory(wrapped, b"ctx")) == 32
    finally:
        await backend.aclose()
