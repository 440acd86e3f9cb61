"""The OpenBao fixtures give a real Vault-API server with a working transit engine."""

from __future__ import annotations

import base64
import os
import uuid

import hvac
import pytest
from hvac.exceptions import InvalidRequest, VaultDown

from tests.fixtures.openbao import OpenBaoServer

pytestmark = pytest.mark.openbao


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_server_is_the_real_bao(openbao: OpenBaoServer, openbao_client: hvac.Client) -> None:
    assert openbao_client.is_authenticated()
    health = openbao_client.sys.read_health_status(method="GET")
    assert health["initialized"] is True
    assert health["sealed"] is False
    assert health["version"].startswith("2.")
    with open(f"/proc/{openbao.pid}/comm") as comm:
        assert comm.read().strip() == "bao"


def test_transit_encrypt_decrypt(openbao_client: hvac.Client) -> None:
    mount = f"transit-{uuid.uuid4().hex[:12]}"
    openbao_client.sys.enable_secrets_engine("transit", path=mount)
    try:
        openbao_client.secrets.transit.create_key("dek-wrapper", key_type="aes256-gcm96", mount_point=mount)
        dek = os.urandom(32)
        aad = _b64(b"tenant-1")

        encrypted = openbao_client.secrets.transit.encrypt_data(
            "dek-wrapper", _b64(dek), associated_data=aad, mount_point=mount
        )
        ciphertext = encrypted["data"]["ciphertext"]
        assert ciphertext.startswith("vault:v1:")

        decrypted = openbao_client.secrets.transit.decrypt_data(
            "dek-wrapper", ciphertext, associated_data=aad, mount_point=mount
        )
        assert base64.b64decode(decrypted["data"]["plaintext"]) == dek
        with pytest.raises(InvalidRequest):
            openbao_client.secrets.transit.decrypt_data(
                "dek-wrapper", ciphertext, associated_data=_b64(b"tenant-2"), mount_point=mount
            )
    finally:
        openbao_client.sys.disable_secrets_engine(mount)


def test_seal_and_unseal(openbao: OpenBaoServer, openbao_client: hvac.Client) -> None:
    mount = f"transit-{uuid.uuid4().hex[:12]}"
    openbao_client.sys.enable_secrets_engine("transit", path=mount)
    openbao_client.secrets.transit.create_key("k", mount_point=mount)
    ciphertext = openbao_client.secrets.transit.encrypt_data("k", _b64(b"secret"), mount_point=mount)["data"][
        "ciphertext"
    ]
    try:
        openbao.seal()
        assert openbao.is_sealed()
        with pytest.raises(VaultDown):
            openbao_client.secrets.transit.decrypt_data("k", ciphertext, mount_point=mount)
    finally:
        openbao.unseal()
    assert not openbao.is_sealed()
    # Keys survive a seal/unseal cycle: the storage is in memory, not thrown away.
    plaintext = openbao_client.secrets.transit.decrypt_data("k", ciphertext, mount_point=mount)["data"][
        "plaintext"
    ]
    assert base64.b64decode(plaintext) == b"secret"
    openbao_client.sys.disable_secrets_engine(mount)


def test_client_fixture_unseals_a_server_left_sealed(
    openbao: OpenBaoServer, request: pytest.FixtureRequest
) -> None:
    openbao.seal()
    try:
        client: hvac.Client = request.getfixturevalue("openbao_client")
        assert client.sys.is_sealed() is False
        assert client.is_authenticated()
    finally:
        if openbao.is_sealed():
            openbao.unseal()
