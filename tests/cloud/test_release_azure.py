"""A release over HTTP of Azure-style CVM evidence (issue 19), with a real TPM (swtpm) as the vTPM and a
synthetic AMD PKI signing the SEV-SNP report (real Azure evidence cannot answer our challenge). Granted
and logged; then an HCL report whose runtime data names another AK, and a quote bound to another
ephemeral key, are denied with their reasons and logged."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from joserfc.jwk import ECKey
from tpm2_pytss import ESAPI

from keyserver.binding import binding, report_data_for
from keyserver.evidence.snp import SnpProduct
from keyserver.jwe import unwrap_released
from tests.cloud.azure_synth import hcl_report, runtime_data
from tests.conftest import Service, bearer
from tests.snp.helpers import fake_pki
from tests.test_release_swtpm import log_entry
from tests.test_tenancy import make_tenant
from tests.tpm.test_swtpm import EK_RSA, read_pcrs, tpm_ak

pytestmark = [
    pytest.mark.swtpm,
    pytest.mark.filterwarnings(
        "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"
    ),
]
ALL_PCRS = "sha256:" + ",".join(str(i) for i in range(24))
TEE = "azure-snp-vtpm"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def test_azure_style_release_is_granted_and_logged(
    service: Service, tpm_esapi: ESAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The service trusts this test's AMD PKI instead of AMD's (whose keys no test holds).
    pki = fake_pki(SnpProduct.MILAN)
    monkeypatch.setattr("keyserver.evidence.snp.verify.default_snp_roots", pki.roots)
    now = datetime.now(UTC)
    vcek_key, vcek_der = pki.leaf(
        hwid=bytes(range(64)), not_before=now - timedelta(days=1), not_after=now + timedelta(days=1)
    )

    acme = await make_tenant(service, "acme")
    admin = bearer(acme.admin)
    policy = {
        "version": 1,
        "tees": [TEE],
        "rules": [
            {"name": "secure-boot", "expr": 'claims["azure.secure_boot"] == true'},
            {"name": "no-console", "expr": 'claims["azure.console_enabled"] == false'},
            {"name": "vmpl0", "expr": 'claims["snp.vmpl"] == 0'},
        ],
    }
    for path, body in (
        ("/v1/tenants/acme/policies", {"name": "prod", "document": policy}),
        ("/v1/tenants/acme/policies/prod/1/activate", None),
        ("/v1/tenants/acme/keys", {"name": "weights", "policy": "prod"}),
    ):
        response = await service.client.post(path, json=body, headers=admin)
        assert response.status_code in (200, 201), response.text

    private = ec.generate_private_key(ec.SECP256R1())
    jwk = ECKey.import_key(private.public_key()).as_dict(private=False)

    with tpm_ak(tpm_esapi, "rsa", EK_RSA) as ak:
        ak_key = ak.verifier_ak().key
        assert isinstance(ak_key, rsa.RSAPublicKey)

        def evidence(
            nonce: bytes, *, hcl: bytes | None = None, bound_jwk: dict[str, Any] | None = None
        ) -> dict[str, Any]:
            qualifying = report_data_for(TEE, binding(nonce, bound_jwk or jwk))
            attest, signature = tpm_esapi.quote(ak.handle, ALL_PCRS, qualifying)
            pcrs = read_pcrs(tpm_esapi, ALL_PCRS)["sha256"]
            return {
                "tee": TEE,
                "hcl_report": b64(hcl or hcl_report(vcek_key, runtime_data(ak_key))),
                "certificate": b64(vcek_der),
                "tpm_quote": b64(bytes(attest)),
                "tpm_signature": b64(bytes(signature.marshal())),
                "pcrs": [pcrs[i].hex() for i in range(24)],
            }

        async def release(make: Any) -> Any:
            challenge = (await service.client.post("/v1/tenants/acme/challenges")).json()
            nonce = base64.urlsafe_b64decode(challenge["nonce"] + "==")
            body = {"challenge": challenge["id"], "evidence": make(nonce), "ephemeral_key": jwk}
            return await service.client.post("/v1/tenants/acme/keys/weights/release", json=body)

        granted = await release(evidence)
        assert granted.status_code == 200, granted.text
        material, metadata = unwrap_released(granted.json()["jwe"], private)
        assert len(material) == 32
        assert metadata.name == "weights"
        _, entry = await log_entry(service, acme, granted.json()["receipt"]["log_index"])
        assert (entry["decision"], entry["tee"]) == ("granted", TEE)

        # The runtime data names another AK: the hardware report no longer vouches for the quote's signer.
        other_ak = rsa.generate_private_key(65537, 2048).public_key()
        forged_hcl = hcl_report(vcek_key, runtime_data(other_ak))
        denied = await release(lambda nonce: evidence(nonce, hcl=forged_hcl))
        assert denied.status_code == 403
        assert denied.json()["reason"] == "tpm-signature-invalid"
        # An HCL report whose runtime data does not hash to REPORT_DATA.
        mismatched = hcl_report(vcek_key, runtime_data(ak_key), report_data=bytes(64))
        denied = await release(lambda nonce: evidence(nonce, hcl=mismatched))
        assert denied.json()["reason"] == "azure-report-data-mismatch"
        # The quote binds another ephemeral key.
        stranger = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(
            private=False
        )
        denied = await release(lambda nonce: evidence(nonce, bound_jwk=stranger))
        assert denied.json()["reason"] == "tpm-nonce-mismatch"
        _, entry = await log_entry(service, acme, denied.json()["log_index"])
        assert (entry["decision"], entry["reason"], entry["tee"]) == ("denied", "tpm-nonce-mismatch", TEE)
        # A policy rule over the paravisor's claims: a VM with its serial console on is denied.
        console = hcl_report(vcek_key, runtime_data(ak_key, **{"console-enabled": True}))
        denied = await release(lambda nonce: evidence(nonce, hcl=console))
        assert denied.status_code == 403
        _, entry = await log_entry(service, acme, denied.json()["log_index"])
        assert entry["decision"] == "denied"
        assert entry["digests"]["claims"] is not None  # the evidence verified; the policy said no
