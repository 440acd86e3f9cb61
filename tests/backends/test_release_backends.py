"""The release protocol on the HSM and Vault backends (SoftHSM2 and OpenBao, both real), with swtpm.

PKCS#11 with an RSA ephemeral key: the key is re-wrapped inside the token and never enters keyserver
memory (the log entry says so); the loader recovers it as the JWE's CEK. Vault: transit decrypts and the
key is wrapped here. Both: the receipt, the log entry, and the same key material on every release.
"""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import RSAKey
from tpm2_pytss import ESAPI

from keyserver.config import Settings
from keyserver.jwe import unwrap_released
from tests.conftest import Service
from tests.fixtures.openbao import OpenBaoServer
from tests.fixtures.softhsm import SoftHsmToken
from tests.test_release_swtpm import Loader, extend, loader_ak, log_entry, setup_tenant

pytestmark = pytest.mark.swtpm


@pytest.fixture(params=["pkcs11", "vault"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    """Overrides the suite's settings: SQLite, and the backend under test."""
    base = Settings(data_dir=tmp_path / "data", database_url=f"sqlite+aiosqlite:///{tmp_path / 'ks.sqlite3'}")
    if request.param == "pkcs11":
        token: SoftHsmToken = request.getfixturevalue("softhsm_token")
        return base.with_overrides(
            key_backend="pkcs11",
            pkcs11_module=Path(token.module_path),
            pkcs11_token_label=token.label,
            pkcs11_pin=token.user_pin,
            pkcs11_kek_label=f"kek-{uuid.uuid4().hex[:8]}",
        )
    openbao: OpenBaoServer = request.getfixturevalue("openbao")
    mount: str = request.getfixturevalue("transit_mount")
    return base.with_overrides(
        key_backend="vault",
        vault_addr=openbao.addr,
        vault_token=openbao.root_token,
        vault_transit_mount=mount,
    )


class RsaLoader(Loader):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.rsa_private = rsa.generate_private_key(65537, 2048)
        self.jwk = RSAKey.import_key(self.rsa_private.public_key()).as_dict(private=False)


async def test_release_through_the_backend(
    service: Service, settings: Settings, swtpm: Any, tpm_esapi: ESAPI
) -> None:
    extend(tpm_esapi, b"reviewed loader build 1")
    with loader_ak(tpm_esapi) as ak:
        acme = await setup_tenant(service, swtpm, tpm_esapi, ak)
        loader = RsaLoader(service, tpm_esapi, ak)
        first = await loader.release()
        assert first.status_code == 200, first.text
        second = await loader.release()
    material, metadata = unwrap_released(first.json()["jwe"], loader.rsa_private)
    assert len(material) == 32
    assert unwrap_released(second.json()["jwe"], loader.rsa_private)[0] == material
    assert metadata.name == "weights"
    _, entry = await log_entry(service, acme, first.json()["receipt"]["log_index"])
    assert entry["decision"] == "granted"
    # PKCS#11 re-wraps inside the token for an RSA recipient; Vault cannot, and says so in the log.
    assert entry["wrapped_in_backend"] is (settings.key_backend == "pkcs11")
    header = first.json()["jwe"].split(".")[0]
    alg = json.loads(base64.urlsafe_b64decode(header + "=="))["alg"]
    assert alg == ("RSA-OAEP" if settings.key_backend == "pkcs11" else "RSA-OAEP-256")
