"""Tenants, tokens and isolation over HTTP, on SQLite and PostgreSQL alike."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from keyserver.db.models import ApiToken
from keyserver.db.session import Database, Scope
from keyserver.db.types import utcnow
from tests.conftest import Service, bearer


@dataclass
class TenantFixture:
    name: str
    admin: str
    auditor: str
    ci_signer: str
    admin_id: str


async def make_tenant(service: Service, name: str) -> TenantFixture:
    op = bearer(service.operator_token)
    created = await service.client.post("/v1/tenants", json={"name": name}, headers=op)
    assert created.status_code == 201, created.text
    admin = await service.client.post(f"/v1/tenants/{name}/tokens", json={"role": "tenant-admin"}, headers=op)
    assert admin.status_code == 201, admin.text
    admin_token = admin.json()["token"]
    tokens = {}
    for role in ("auditor", "ci-signer"):
        issued = await service.client.post(
            f"/v1/tenants/{name}/tokens", json={"role": role}, headers=bearer(admin_token)
        )
        assert issued.status_code == 201, issued.text
        tokens[role] = issued.json()["token"]
    return TenantFixture(
        name, admin_token, tokens["auditor"], tokens["ci-signer"], admin.json()["info"]["id"]
    )


@pytest.fixture
async def two_tenants(service: Service) -> tuple[TenantFixture, TenantFixture]:
    return await make_tenant(service, "alpha"), await make_tenant(service, "beta")


async def test_operator_creates_and_lists_tenants(service: Service) -> None:
    op = bearer(service.operator_token)
    for name in ("acme", "globex"):
        assert (await service.client.post("/v1/tenants", json={"name": name}, headers=op)).status_code == 201
    listed = await service.client.get("/v1/tenants", headers=op)
    assert [t["name"] for t in listed.json()] == ["acme", "globex"]
    whoami = await service.client.get("/v1/whoami", headers=op)
    assert whoami.json()["role"] == "operator"
    assert whoami.json()["tenant"] is None


async def test_duplicate_and_invalid_tenant_names_are_refused(service: Service) -> None:
    op = bearer(service.operator_token)
    assert (await service.client.post("/v1/tenants", json={"name": "acme"}, headers=op)).status_code == 201
    again = await service.client.post("/v1/tenants", json={"name": "acme"}, headers=op)
    assert again.status_code == 409
    assert again.json()["type"] == "urn:keyserver:problem:conflict"
    for bad in ("", "Acme", "-acme", "acme-", "a" * 64, "ac me", "acme/x", "ä"):
        response = await service.client.post("/v1/tenants", json={"name": bad}, headers=op)
        assert response.status_code == 400, bad


async def test_tenant_tokens_authenticate_with_their_role(
    service: Service, two_tenants: tuple[TenantFixture, TenantFixture]
) -> None:
    alpha, _ = two_tenants
    for token, role in (
        (alpha.admin, "tenant-admin"),
        (alpha.auditor, "auditor"),
        (alpha.ci_signer, "ci-signer"),
    ):
        me = await service.client.get("/v1/whoami", headers=bearer(token))
        assert me.status_code == 200
        assert me.json()["role"] == role
        assert me.json()["tenant"] == "alpha"
    shown = await service.client.get("/v1/tenants/alpha", headers=bearer(alpha.auditor))
    assert shown.json()["name"] == "alpha"


async def test_tenant_principals_cannot_use_operator_routes(
    service: Service, two_tenants: tuple[TenantFixture, TenantFixture]
) -> None:
    alpha, _ = two_tenants
    for token in (alpha.admin, alpha.auditor, alpha.ci_signer):
        assert (await service.client.get("/v1/tenants", headers=bearer(token))).status_code == 403
        created = await service.client.post("/v1/tenants", json={"name": "evil"}, headers=bearer(token))
        assert created.status_code == 403
        assert created.json()["type"] == "urn:keyserver:problem:forbidden"


async def test_roles_inside_a_tenant(
    service: Service, two_tenants: tuple[TenantFixture, TenantFixture]
) -> None:
    alpha, _ = two_tenants
    for token in (alpha.auditor, alpha.ci_signer):
        issue = await service.client.post(
            "/v1/tenants/alpha/tokens", json={"role": "auditor"}, headers=bearer(token)
        )
        assert issue.status_code == 403
        assert (
            await service.client.get("/v1/tenants/alpha/tokens", headers=bearer(token))
        ).status_code == 403
    # The operator bootstraps tenant admins only.
    op = bearer(service.operator_token)
    issue = await service.client.post("/v1/tenants/alpha/tokens", json={"role": "auditor"}, headers=op)
    assert issue.status_code == 403
    # Nobody mints operator tokens over HTTP.
    for token in (service.operator_token, alpha.admin):
        issue = await service.client.post(
            "/v1/tenants/alpha/tokens", json={"role": "operator"}, headers=bearer(token)
        )
        assert issue.status_code == 400


async def test_every_route_refuses_another_tenants_token(
    service: Service, two_tenants: tuple[TenantFixture, TenantFixture]
) -> None:
    alpha, beta = two_tenants
    beta_admin_id = beta.admin_id
    attempts = [
        ("GET", "/v1/tenants/beta", None),
        ("GET", "/v1/tenants/beta/tokens", None),
        ("POST", "/v1/tenants/beta/tokens", {"role": "tenant-admin"}),
        ("POST", "/v1/tenants/beta/tokens", {"role": "auditor"}),
        ("DELETE", f"/v1/tenants/beta/tokens/{beta_admin_id}", None),
    ]
    for token in (alpha.admin, alpha.auditor, alpha.ci_signer):
        for method, path, body in attempts:
            response = await service.client.request(method, path, json=body, headers=bearer(token))
            assert response.status_code in (403, 404), (method, path, response.status_code)
    # A token of tenant alpha cannot revoke beta's token through alpha's own path either.
    response = await service.client.delete(
        f"/v1/tenants/alpha/tokens/{beta_admin_id}", headers=bearer(alpha.admin)
    )
    assert response.status_code == 404
    # Beta's admin token still works: nothing was changed.
    assert (
        await service.client.get("/v1/tenants/beta/tokens", headers=bearer(beta.admin))
    ).status_code == 200
    listed = (await service.client.get("/v1/tenants/alpha/tokens", headers=bearer(alpha.admin))).json()
    assert {t["tenant"] for t in listed} == {"alpha"}
    assert beta_admin_id not in {t["id"] for t in listed}


async def test_another_tenant_looks_exactly_like_no_tenant(
    service: Service, two_tenants: tuple[TenantFixture, TenantFixture]
) -> None:
    alpha, _ = two_tenants

    def strip(body: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in body.items() if k not in ("request_id", "instance", "detail")}

    other = await service.client.get("/v1/tenants/beta", headers=bearer(alpha.admin))
    missing = await service.client.get("/v1/tenants/nosuch", headers=bearer(alpha.admin))
    assert other.status_code == missing.status_code == 404
    assert strip(other.json()) == strip(missing.json())
    assert other.json()["detail"].replace("beta", "X") == missing.json()["detail"].replace("nosuch", "X")


async def test_revoked_token_is_refused(
    service: Service, two_tenants: tuple[TenantFixture, TenantFixture]
) -> None:
    alpha, _ = two_tenants
    me = (await service.client.get("/v1/whoami", headers=bearer(alpha.auditor))).json()
    revoked = await service.client.delete(
        f"/v1/tenants/alpha/tokens/{me['token_id']}", headers=bearer(alpha.admin)
    )
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    response = await service.client.get("/v1/whoami", headers=bearer(alpha.auditor))
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_expired_token_is_refused(
    service: Service, db: Database, two_tenants: tuple[TenantFixture, TenantFixture]
) -> None:
    alpha, _ = two_tenants
    issued = await service.client.post(
        "/v1/tenants/alpha/tokens",
        json={"role": "auditor", "expires_in_seconds": 3600},
        headers=bearer(alpha.admin),
    )
    token = issued.json()["token"]
    assert (await service.client.get("/v1/whoami", headers=bearer(token))).status_code == 200
    async with db.transaction(Scope.for_operator()) as session:
        await session.execute(
            update(ApiToken)
            .where(ApiToken.id == uuid.UUID(issued.json()["info"]["id"]))
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )
    response = await service.client.get("/v1/whoami", headers=bearer(token))
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


async def test_forged_and_malformed_tokens_are_refused(
    service: Service, two_tenants: tuple[TenantFixture, TenantFixture]
) -> None:
    alpha, beta = two_tenants
    prefix, alpha_tenant, token_id, secret = alpha.admin.split(".")
    beta_tenant = beta.admin.split(".")[1]
    forged = [
        f"{prefix}.{alpha_tenant}.{token_id}.{'A' * 43}",  # right id, wrong secret
        f"{prefix}.{beta_tenant}.{token_id}.{secret}",  # alpha's token presented as beta's
        f"{prefix}.operator.{token_id}.{secret}",  # a tenant token presented as an operator token
        f"{prefix}.{alpha_tenant}.{uuid.uuid4().hex}.{secret}",  # unknown id
        alpha.admin[:-1],  # truncated
        alpha.admin + "A",  # extended
        "ks2" + alpha.admin[3:],  # unknown version
        "",
        "Bearer",
    ]
    for token in forged:
        response = await service.client.get("/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 401, token
    for header in ("Basic dXNlcjpwYXNz", alpha.admin, f"Token {alpha.admin}"):
        response = await service.client.get("/v1/whoami", headers={"Authorization": header})
        assert response.status_code == 401
    assert (await service.client.get("/v1/whoami")).status_code == 401


async def test_operator_announced_once_per_data_store(service: Service) -> None:
    assert len(service.announced) == 1
    assert service.announced[0].startswith("ks1.operator.")


# --- every credential made for a tenant is in its log ---------------------------------------------------


async def _log_entries(service: Service, tenant: TenantFixture) -> list[dict[str, object]]:
    return await logged(service, tenant.name, bearer(tenant.auditor), tokens=True)


async def logged(
    service: Service, tenant: str, headers: dict[str, str], *, tokens: bool = False
) -> list[dict[str, Any]]:
    """Every entry of the tenant's log, in order; without the tokens' own entries (``token-issued``,
    ``token-revoked``: make_tenant's alone are three) unless ``tokens``."""
    checkpoint = await service.client.get(f"/v1/tenants/{tenant}/log/checkpoint", headers=headers)
    size = int(checkpoint.text.split("\n")[1])
    if not size:
        return []
    answer = await service.client.get(
        f"/v1/tenants/{tenant}/log/entries", params={"start": 0, "end": size}, headers=headers
    )
    entries = [e["entry"] for e in answer.json()["entries"]]
    return [e for e in entries if tokens or not str(e["kind"]).startswith("token-")]


async def test_tokens_issued_and_revoked_are_logged_in_the_tenants_log(
    service: Service, two_tenants: tuple[TenantFixture, TenantFixture]
) -> None:
    """Found by review: the operator could mint a tenant-admin token for any tenant at any time and
    nothing in the tenant's log showed it. Now each token made or revoked is an entry, with who did it."""
    alpha, beta = two_tenants
    op = bearer(service.operator_token)
    entries = await _log_entries(service, alpha)
    issued = [e for e in entries if e["kind"] == "token-issued"]
    # make_tenant: the operator's tenant-admin token, then the admin's auditor and ci-signer tokens.
    assert [(e["issuer_role"], e["token"]["role"]) for e in issued] == [  # type: ignore[index]
        ("operator", "tenant-admin"),
        ("tenant-admin", "auditor"),
        ("tenant-admin", "ci-signer"),
    ]
    assert issued[0]["token"]["id"] == alpha.admin_id  # type: ignore[index]
    assert all("secret" not in str(e) and "hash" not in str(e) for e in issued)

    late = await service.client.post(
        f"/v1/tenants/{alpha.name}/tokens", json={"role": "tenant-admin", "description": "x"}, headers=op
    )
    assert late.status_code == 201
    late_id = late.json()["info"]["id"]
    assert late.json()["info"]["created_by"] is not None
    for _ in range(2):  # the second revocation changes nothing and logs nothing
        revoked = await service.client.delete(
            f"/v1/tenants/{alpha.name}/tokens/{late_id}", headers=bearer(alpha.admin)
        )
        assert revoked.status_code == 200
    after = (await _log_entries(service, alpha))[len(entries) :]
    assert [(e["kind"], e["issuer_role"], e["token"]["id"]) for e in after] == [  # type: ignore[index]
        ("token-issued", "operator", late_id),
        ("token-revoked", "tenant-admin", late_id),
    ]
    assert after[0]["principal"] is not None
    # Beta's log shows none of alpha's tokens.
    assert all(
        e["token"]["id"] != late_id  # type: ignore[index]
        for e in await _log_entries(service, beta)
        if str(e["kind"]).startswith("token-")
    )


async def test_a_token_expires_no_later_than_the_one_that_issued_it(
    service: Service, two_tenants: tuple[TenantFixture, TenantFixture]
) -> None:
    alpha, _ = two_tenants
    brief = await service.client.post(
        f"/v1/tenants/{alpha.name}/tokens",
        json={"role": "tenant-admin", "expires_in_seconds": 600},
        headers=bearer(alpha.admin),
    )
    assert brief.status_code == 201
    limit = brief.json()["info"]["expires_at"]
    for asked in ({}, {"expires_in_seconds": 86_400}):
        child = await service.client.post(
            f"/v1/tenants/{alpha.name}/tokens",
            json={"role": "auditor", **asked},
            headers=bearer(brief.json()["token"]),
        )
        assert child.status_code == 201, child.text
        assert child.json()["info"]["expires_at"] is not None
        assert child.json()["info"]["expires_at"] <= limit
    shorter = await service.client.post(
        f"/v1/tenants/{alpha.name}/tokens",
        json={"role": "auditor", "expires_in_seconds": 60},
        headers=bearer(brief.json()["token"]),
    )
    assert shorter.json()["info"]["expires_at"] < limit  # a shorter lifetime asked for is kept
