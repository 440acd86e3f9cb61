"""A policy dry run on raw evidence (POST …/policies/{name}/dry-run with ``evidence``): the server
verifies real swtpm evidence exactly as a release would, bound to the nonce and ephemeral key the caller
says it was made for, then explains the policy rule by rule. Evidence that does not verify — another
nonce, another key, an AK the tenant never enrolled — comes back as not granted with its reason, and a
dry run logs nothing and releases nothing. Both databases."""

from __future__ import annotations

import base64
import secrets
from typing import Any

import pytest
from tpm2_pytss import ESAPI

from tests.conftest import Service, bearer
from tests.test_release_swtpm import PCR, Loader, extend, loader_ak, setup_tenant
from tests.test_tenancy import make_tenant

pytestmark = pytest.mark.swtpm
POLICY = {"version": 1, "tees": ["tpm"], "rules": [{"name": "any", "expr": "true"}]}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


async def dry_run(service: Service, token: str, body: dict[str, Any], tenant: str = "acme") -> Any:
    return await service.client.post(
        f"/v1/tenants/{tenant}/policies/prod/dry-run", json=body, headers=bearer(token)
    )


async def test_dry_run_on_evidence(service: Service, swtpm: Any, tpm_esapi: ESAPI) -> None:
    extend(tpm_esapi, b"reviewed loader build 3")
    with loader_ak(tpm_esapi) as ak:
        acme = await setup_tenant(service, swtpm, tpm_esapi, ak)
        loader = Loader(service, tpm_esapi, ak)
        nonce = secrets.token_bytes(32)
        evidence = loader.evidence(nonce)
        body = {"evidence": evidence, "nonce": b64url(nonce), "ephemeral_key": loader.jwk}
        size_before = (
            await service.client.get("/v1/tenants/acme/log/checkpoint", headers=bearer(acme.auditor))
        ).text

        granted = await dry_run(service, acme.auditor, body)
        assert granted.status_code == 200, granted.text
        result = granted.json()
        assert result["granted"] is True
        assert result["evidence_verified"] is True
        assert result["claims"]["tee"] == "tpm"
        assert f"tpm.pcrs.sha256.{PCR}" in result["claims"]
        assert [r["passed"] for r in result["results"]]
        assert all(r["passed"] for r in result["results"])

        # Bound to another nonce, or another ephemeral key, than the caller says: not verified.
        for wrong in (
            {**body, "nonce": b64url(secrets.token_bytes(32))},
            {**body, "ephemeral_key": Loader(service, tpm_esapi, ak).jwk},
        ):
            refused = (await dry_run(service, acme.admin, wrong)).json()
            assert refused["granted"] is False
            assert refused["evidence_verified"] is False
            assert refused["reason"]
            assert refused["claims"] is None
            assert refused["results"] == []

        # Another tenant, the same policy name: acme's AK is not enrolled there.
        umbrella = await make_tenant(service, "umbrella")
        added = await service.client.post(
            "/v1/tenants/umbrella/policies",
            json={"name": "prod", "document": POLICY},
            headers=bearer(umbrella.admin),
        )
        assert added.status_code == 201
        activated = await service.client.post(
            "/v1/tenants/umbrella/policies/prod/1/activate", headers=bearer(umbrella.admin)
        )
        assert activated.status_code == 200, activated.text
        foreign = (await dry_run(service, umbrella.admin, body, tenant="umbrella")).json()
        assert foreign["granted"] is False
        assert foreign["evidence_verified"] is False
        # …and acme's token cannot dry-run umbrella's policy at all.
        assert (await dry_run(service, acme.admin, body, tenant="umbrella")).status_code == 404

        # Malformed requests: a usage error, not a decision.
        for bad in (
            {},
            {**body, "claims": {"tee": "tpm"}},
            {"evidence": evidence},
            {"evidence": evidence, "nonce": "not base64url!", "ephemeral_key": loader.jwk},
            {"evidence": evidence, "nonce": b64url(nonce[:15]), "ephemeral_key": loader.jwk},
            {"evidence": evidence, "nonce": b64url(nonce) + "=", "ephemeral_key": loader.jwk},
        ):
            response = await dry_run(service, acme.admin, bad)
            assert response.status_code == 400, (bad.keys(), response.text)
        # A key no loader could use is the evidence's failure, as in a release: a decision with its reason.
        odd_key = {"evidence": evidence, "nonce": b64url(nonce), "ephemeral_key": {"kty": "oct", "k": "AA"}}
        invalid = (await dry_run(service, acme.admin, odd_key)).json()
        assert (invalid["evidence_verified"], invalid["reason"]) == (False, "ephemeral-key-invalid")
        # A CI signer's token may not dry-run; a dry run logs nothing.
        assert (await dry_run(service, acme.ci_signer, body)).status_code == 403
        size_after = (
            await service.client.get("/v1/tenants/acme/log/checkpoint", headers=bearer(acme.auditor))
        ).text
        assert size_after == size_before
