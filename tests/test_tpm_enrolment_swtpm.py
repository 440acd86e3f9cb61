"""AK enrolment end to end with a real TPM (swtpm): its EK certificate from NV, an AK created under
the EK, and TPM2_ActivateCredential answering the keyserver's challenge."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from tpm2_pytss import ESAPI
from tpm2_pytss.constants import ESYS_TR
from tpm2_pytss.types import TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT
from tpm2_pytss.utils import NVReadEK

from keyserver.evidence.tpm import structures as st
from tests.conftest import Service, bearer
from tests.test_tenancy import make_tenant
from tests.tpm.test_swtpm import EK_CERT_NV, EK_ECC, EK_RSA, ek_auth, read_ek, tpm_ak

pytestmark = pytest.mark.swtpm


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize("ek_handle", [EK_RSA, EK_ECC], ids=["rsa2048-ek", "ecc-p384-ek"])
async def test_swtpm_enrols_an_ak(service: Service, swtpm: Any, tpm_esapi: ESAPI, ek_handle: int) -> None:
    acme = await make_tenant(service, "acme")
    for path in swtpm.ek_ca_certs:
        added = await service.client.post(
            "/v1/tenants/acme/tpm/anchors",
            json={"kind": "ek-ca", "name": path.name, "certificate": path.read_text()},
            headers=bearer(acme.admin),
        )
        assert added.status_code == 201, added.text
    ek_certificate = NVReadEK(tpm_esapi)(EK_CERT_NV[ek_handle])
    with tpm_ak(tpm_esapi, "ecc", ek_handle) as ak:
        _, ek_public = read_ek(tpm_esapi, ek_handle)
        started = await service.client.post(
            "/v1/tenants/acme/tpm/enrolments",
            json={
                "ek_public": b64(st.marshal_tpm2b_public(ek_public)),
                "ak_public": b64(ak.public),
                "ek_certificate": b64(bytes(ek_certificate)),
            },
        )
        assert started.status_code == 201, started.text
        challenge = started.json()
        ek, _ = read_ek(tpm_esapi, ek_handle)
        with ek_auth(tpm_esapi, ek_handle) as auth:
            secret = tpm_esapi.activate_credential(
                ak.handle,
                ek,
                TPM2B_ID_OBJECT(credential=base64.b64decode(challenge["credential_blob"])[2:]),
                TPM2B_ENCRYPTED_SECRET(secret=base64.b64decode(challenge["encrypted_secret"])[2:]),
                session1=ESYS_TR.PASSWORD,
                session2=auth,
            )
        activated = await service.client.post(
            f"/v1/tenants/acme/tpm/enrolments/{challenge['enrolment_id']}/activate",
            json={"secret": b64(bytes(secret))},
        )
        assert activated.status_code == 201, activated.text
        assert activated.json()["ak_name"] == ak.verifier_ak().name.hex()  # type: ignore[union-attr]
