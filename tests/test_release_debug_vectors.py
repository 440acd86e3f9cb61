"""Real debug TEEs (the gsg-milan SEV-SNP report has policy bit 19 set; trustee's TDX quote 4 has
TD_ATTRIBUTES.DEBUG) against the release endpoint and the policy dry run, on both databases.

Real vectors were not made for our challenges, so over the release endpoint they are denied at the
binding (after their signatures and chains verified) — and that denial is logged. Their claims, given to
the dry run, are denied by the policy because the TEE is debuggable."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from keyserver.evidence.claims import Claims
from keyserver.evidence.snp import verify_snp_report
from keyserver.evidence.tdx import verify_tdx_quote
from tests.conftest import VECTORS, Service, bearer
from tests.test_tenancy import make_tenant

V = VECTORS
SNP_REPORT = (V / "snp/gsg-milan/attestation.bin").read_bytes()
SNP_VCEK = (V / "snp/gsg-milan/vcek.testcer").read_bytes()
TDX_QUOTE = (V / "tdx/trustee/tdx_quote_4.dat").read_bytes()

CASES: dict[str, tuple[dict[str, str], Callable[[], Claims]]] = {
    "sev-snp": (
        {
            "tee": "sev-snp",
            "report": base64.b64encode(SNP_REPORT).decode(),
            "certificate": base64.b64encode(SNP_VCEK).decode(),
        },
        lambda: verify_snp_report(SNP_REPORT, vcek_or_vlek=SNP_VCEK, product=None, now=datetime.now(UTC)),
    ),
    "tdx": (
        {"tee": "tdx", "quote": base64.b64encode(TDX_QUOTE).decode()},
        lambda: verify_tdx_quote(TDX_QUOTE, now=datetime.now(UTC)),
    ),
}


@pytest.mark.parametrize("tee", sorted(CASES))
async def test_debug_tees_are_denied(service: Service, tee: str) -> None:
    acme = await make_tenant(service, "acme")
    admin = bearer(acme.admin)
    policy = {
        "version": 1,
        "tees": ["sev-snp", "tdx"],
        "rules": [{"name": "any", "expr": "claims['tee'] != ''"}],
    }
    assert (
        await service.client.post(
            "/v1/tenants/acme/policies", json={"name": "prod", "document": policy}, headers=admin
        )
    ).status_code == 201
    assert (
        await service.client.post("/v1/tenants/acme/policies/prod/1/activate", headers=admin)
    ).status_code == 200
    assert (
        await service.client.post(
            "/v1/tenants/acme/keys", json={"name": "weights", "policy": "prod"}, headers=admin
        )
    ).status_code == 201
    evidence, claims_of = CASES[tee]
    challenge = (await service.client.post("/v1/tenants/acme/challenges")).json()
    jwk = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False)
    response = await service.client.post(
        "/v1/tenants/acme/keys/weights/release",
        json={"challenge": challenge["id"], "evidence": evidence, "ephemeral_key": jwk},
    )
    assert response.status_code == 403
    problem = response.json()
    assert problem["reason"] == "binding-mismatch"
    page = await service.client.get(
        "/v1/tenants/acme/log/entries",
        params={"start": problem["log_index"], "end": problem["log_index"] + 1},
        headers=bearer(acme.auditor),
    )
    entry: dict[str, Any] = page.json()["entries"][0]["entry"]
    assert (entry["decision"], entry["reason"], entry["tee"]) == ("denied", "binding-mismatch", tee)
    assert entry["digests"]["claims"] is not None  # the evidence itself verified
    # The claims of the same evidence, appraised: denied because the TEE can be debugged.
    claims = claims_of()
    assert claims["debug"] is True
    dry = await service.client.post(
        "/v1/tenants/acme/policies/prod/dry-run", json={"claims": claims}, headers=admin
    )
    assert dry.status_code == 200, dry.text
    assert (dry.json()["granted"], dry.json()["reason"]) == (False, "debug-not-allowed")
