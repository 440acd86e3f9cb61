"""Fixtures for the key backend tests: real SoftHSM2 and OpenBao through tests/fixtures/.

The token and the OpenBao server are shared by the whole test session, so every test here works
under names of its own: a fresh KEK label on the token, a fresh transit mount on the server.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator

import hvac
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from keyserver.backends.pkcs11 import Pkcs11Backend
from keyserver.backends.vault import VaultBackend
from tests.fixtures.openbao import OpenBaoServer
from tests.fixtures.softhsm import SoftHsmToken


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


@pytest.fixture(scope="session")
def recipient_key() -> rsa.RSAPrivateKey:
    """The loader's ephemeral RSA key (made once: RSA key generation is the slow part)."""
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
async def hsm(softhsm_token: SoftHsmToken) -> AsyncIterator[Pkcs11Backend]:
    """A pkcs11 backend with a KEK of its own on the session's token (created on first use)."""
    backend = Pkcs11Backend(
        softhsm_token.module_path, softhsm_token.label, softhsm_token.user_pin, unique("kek")
    )
    try:
        yield backend
    finally:
        # Closing logs the token out for this process: no login leaks into the next test.
        await backend.aclose()


@pytest.fixture
def transit_mount(openbao: OpenBaoServer, openbao_client: hvac.Client) -> Iterator[str]:
    """A transit engine at a mount path of this test's own; unsealed and removed afterwards."""
    mount = unique("transit")
    openbao_client.sys.enable_secrets_engine("transit", path=mount)
    try:
        yield mount
    finally:
        if openbao.is_sealed():
            openbao.unseal()
        openbao_client.sys.disable_secrets_engine(mount)


@pytest.fixture
async def vault_backend_factory(
    openbao: OpenBaoServer, transit_mount: str
) -> AsyncIterator[Callable[..., VaultBackend]]:
    """Makes vault backends on this test's mount (root token unless told otherwise); closes them."""
    made: list[VaultBackend] = []

    def make(**overrides: object) -> VaultBackend:
        options: dict[str, object] = {
            "token": openbao.root_token,
            "mount": transit_mount,
            "key_name": "keyserver",
            "timeout_s": 5.0,
        }
        options.update(overrides)
        addr = str(options.pop("addr", openbao.addr))
        backend = VaultBackend(addr, **options)  # type: ignore[arg-type]
        made.append(backend)
        return backend

    try:
        yield make
    finally:
        for backend in made:
            await backend.aclose()


@pytest.fixture
def vault(vault_backend_factory: Callable[..., VaultBackend]) -> VaultBackend:
    return vault_backend_factory()
