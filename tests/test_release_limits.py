"""Release limits in one process, on both databases: the tenant admin's API (roles, validation, isolation,
every change logged), the tenant's attempt budget (429 with Retry-After, not logged, the challenge left
unused) and the configuration. Grant budgets per key, and both budgets across two server processes on
one database: tests/test_release_limits_processes.py."""

from __future__ import annotations

from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from keyserver.config import Budget, Settings
from keyserver.errors import ConfigurationError
from tests.conftest import Service, bearer
from tests.test_tenancy import TenantFixture, logged, make_tenant

PROBLEM = "application/problem+json"
JWK = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False)
# Never verified far: the attempt is what counts, and a refused one is not even looked at.
EVIDENCE = {"tee": "sev-snp", "report": "AAAA"}


async def log_kinds(service: Service, tenant: TenantFixture) -> list[dict[str, Any]]:
    """The tenant's entries, its tokens' own left out (tests/test_tenancy.py, ``logged``)."""
    return await logged(service, tenant.name, bearer(tenant.auditor))


async def attempt(service: Service, tenant: str, challenge: str | None = None) -> Any:
    if challenge is None:
        challenge = (await service.client.post(f"/v1/tenants/{tenant}/challenges")).json()["id"]
    return await service.client.post(
        f"/v1/tenants/{tenant}/keys/weights/release",
        json={"challenge": challenge, "evidence": EVIDENCE, "ephemeral_key": JWK},
    )


def test_configuration_of_the_defaults() -> None:
    defaults = Settings.from_env({})
    assert defaults.release_limit_tenant == Budget(600, 60)
    assert defaults.release_limit_key is None
    configured = Settings.from_env(
        {"KEYSERVER_RELEASE_LIMIT_TENANT": "off", "KEYSERVER_RELEASE_LIMIT_KEY": "10/3600"}
    )
    assert configured.release_limit_tenant is None
    assert configured.release_limit_key == Budget(10, 3600)
    for bad in ("10", "ten/60", "0/60", "10/0", "10/2592001", "-1/60", "10/60/1"):
        with pytest.raises(ConfigurationError, match=r"KEYSERVER_RELEASE_LIMIT_KEY="):
            Settings.from_env({"KEYSERVER_RELEASE_LIMIT_KEY": bad})


async def test_the_tenant_admin_sets_limits_and_every_change_is_logged(service: Service) -> None:
    acme, beta = await make_tenant(service, "acme"), await make_tenant(service, "beta")
    admin, auditor = bearer(acme.admin), bearer(acme.auditor)
    base = "/v1/tenants/acme/release-limits"
    shown = (await service.client.get(base, headers=auditor)).json()
    assert shown["tenant"] == {
        "scope": "tenant",
        "counts": "attempts",
        "max_releases": 600,
        "window_seconds": 60,
        "source": "default",
    }
    assert shown["keys"] == []
    assert shown["key_default"]["max_releases"] is None

    created = await service.client.post(
        "/v1/tenants/acme/keys", json={"name": "weights", "policy": "prod"}, headers=admin
    )
    assert created.status_code == 201, created.text
    tenant_limit = await service.client.put(
        f"{base}/tenant", json={"max_releases": 50, "window_seconds": 3600}, headers=admin
    )
    assert tenant_limit.status_code == 200, tenant_limit.text
    assert tenant_limit.json()["source"] == "tenant"
    key_limit = await service.client.put(
        f"{base}/keys/weights", json={"max_releases": 3, "window_seconds": 86400}, headers=admin
    )
    assert key_limit.json() == {
        "scope": "key/weights",
        "counts": "grants",
        "max_releases": 3,
        "window_seconds": 86400,
        "source": "tenant",
    }
    # A typo in a key name is an error, not a limit on nothing.
    unknown = await service.client.put(
        f"{base}/keys/wieghts", json={"max_releases": 3, "window_seconds": 60}, headers=admin
    )
    assert unknown.status_code == 404
    shown = (await service.client.get(base, headers=auditor)).json()
    assert (shown["tenant"]["max_releases"], [k["scope"] for k in shown["keys"]]) == (50, ["key/weights"])

    # Out of range, unknown fields, wrong roles, another tenant: refused, nothing changes.
    for body in (
        {"max_releases": 0, "window_seconds": 60},
        {"max_releases": 5, "window_seconds": 0},
        {"max_releases": 5, "window_seconds": 30 * 86400 + 1},
        {"max_releases": 5},
        {"max_releases": 5, "window_seconds": 60, "burst": 2},
    ):
        refused = await service.client.put(f"{base}/tenant", json=body, headers=admin)
        assert refused.status_code == 400, body
        assert refused.headers["content-type"] == PROBLEM
    for token, status in ((auditor, 403), (bearer(acme.ci_signer), 403), (bearer(beta.admin), 404)):
        refused = await service.client.put(
            f"{base}/tenant", json={"max_releases": 1, "window_seconds": 60}, headers=token
        )
        assert refused.status_code == status
    assert (await service.client.get(base, headers=bearer(beta.auditor))).status_code == 404

    # Unlimited on purpose, then back to the default.
    unlimited = await service.client.put(
        f"{base}/tenant", json={"max_releases": None, "window_seconds": 60}, headers=admin
    )
    assert (unlimited.json()["max_releases"], unlimited.json()["source"]) == (None, "tenant")
    removed = await service.client.delete(f"{base}/tenant", headers=admin)
    assert (removed.json()["max_releases"], removed.json()["source"]) == (600, "default")
    assert (await service.client.delete(f"{base}/tenant", headers=admin)).status_code == 404
    assert (await service.client.delete(f"{base}/keys/weights", headers=admin)).status_code == 200

    changes = [
        (e["kind"], e["scope"], e.get("max_releases"))
        for e in await log_kinds(service, acme)
        if e["kind"].startswith("release-limit")
    ]
    assert changes == [
        ("release-limit-set", "tenant", 50),
        ("release-limit-set", "key/weights", 3),
        ("release-limit-set", "tenant", None),
        ("release-limit-removed", "tenant", None),
        ("release-limit-removed", "key/weights", None),
    ]
    assert await log_kinds(service, beta) == []


async def test_the_tenant_budget_refuses_with_429_unlogged_and_leaves_the_challenge(service: Service) -> None:
    acme, beta = await make_tenant(service, "acme"), await make_tenant(service, "beta")
    admin = bearer(acme.admin)
    limit = {"max_releases": 3, "window_seconds": 86400}
    assert (
        await service.client.put("/v1/tenants/acme/release-limits/tenant", json=limit, headers=admin)
    ).status_code == 200
    before = len(await log_kinds(service, acme))

    answers = [await attempt(service, "acme") for _ in range(3)]
    assert [a.status_code for a in answers] == [403, 403, 403]  # evaluated (and denied) and logged
    refused_challenge = (await service.client.post("/v1/tenants/acme/challenges")).json()["id"]
    refused = await attempt(service, "acme", refused_challenge)
    assert refused.status_code == 429
    assert refused.headers["content-type"] == PROBLEM
    problem = refused.json()
    assert problem["type"] == "urn:keyserver:problem:rate-limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 86400
    assert problem["retry_after"] == int(refused.headers["retry-after"])
    assert "log_index" not in problem
    metrics = (await service.client.get("/metrics")).text
    assert 'keyserver_release_limit_refusals_total{limit="tenant"}' in metrics
    # Attestation requests spend the same budget.
    attest = await service.client.post(
        "/v1/tenants/acme/attest",
        json={"challenge": refused_challenge, "evidence": EVIDENCE, "ephemeral_key": JWK},
    )
    assert attest.status_code == 429
    # Refusals are not logged: three attempts, three entries.
    entries = (await log_kinds(service, acme))[before:]
    assert [e["kind"] for e in entries] == ["key-release"] * 3
    # Another tenant's budget is its own.
    assert (await attempt(service, "beta")).status_code == 403
    assert len(await log_kinds(service, beta)) == 1

    # The refused challenge was not used: with room in the budget again, it is evaluated.
    raised = {"max_releases": 10, "window_seconds": 86400}
    await service.client.put("/v1/tenants/acme/release-limits/tenant", json=raised, headers=admin)
    again = await attempt(service, "acme", refused_challenge)
    assert again.status_code == 403
    assert again.json()["reason"] not in ("challenge-replayed", "challenge-unknown", "challenge-expired")
