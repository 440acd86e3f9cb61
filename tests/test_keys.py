"""Keys over HTTP on both databases: create (generated or imported), rotate, disable, destroy, all
logged; material only ever stored wrapped and bound to its tenant, name and version."""

from __future__ import annotations

import base64
import uuid

import pytest
from sqlalchemy import select

from keyserver.backends.base import BackendError
from keyserver.backends.software import SoftwareBackend
from keyserver.config import Settings
from keyserver.db.models import KeyVersion
from keyserver.db.session import Database, Scope
from keyserver.keys import wrapping_context
from tests.conftest import Service, bearer
from tests.test_tenancy import TenantFixture, logged, make_tenant


@pytest.fixture
async def acme(service: Service) -> TenantFixture:
    await make_tenant(service, "globex")
    return await make_tenant(service, "acme")


async def test_key_lifecycle(service: Service, acme: TenantFixture, db: Database, settings: Settings) -> None:
    admin = bearer(acme.admin)
    created = await service.client.post(
        "/v1/tenants/acme/keys", json={"name": "weights", "policy": "prod"}, headers=admin
    )
    assert created.status_code == 201, created.text
    assert created.json()["versions"] == [1]
    own = bytes(range(32))
    imported = await service.client.post(
        "/v1/tenants/acme/keys",
        json={"name": "mine", "policy": "prod", "material": base64.b64encode(own).decode()},
        headers=admin,
    )
    assert imported.status_code == 201
    rotated = await service.client.post("/v1/tenants/acme/keys/weights/rotate", headers=admin)
    assert rotated.json()["versions"] == [1, 2]
    disabled = await service.client.post(
        "/v1/tenants/acme/keys/weights/state", json={"state": "disabled"}, headers=admin
    )
    assert disabled.json()["state"] == "disabled"
    destroyed = await service.client.post(
        "/v1/tenants/acme/keys/weights/state", json={"state": "destroyed"}, headers=admin
    )
    assert destroyed.json()["live_versions"] == []
    back = await service.client.post(
        "/v1/tenants/acme/keys/weights/state", json={"state": "enabled"}, headers=admin
    )
    assert back.status_code == 409

    backend = SoftwareBackend.from_file(settings.effective_kek_file)
    tenant_id = (await service.client.get("/v1/tenants/acme", headers=admin)).json()["id"]
    async with db.transaction(Scope.for_tenant(uuid.UUID(tenant_id))) as session:
        rows = (
            (await session.execute(select(KeyVersion).where(KeyVersion.key_name == "mine"))).scalars().all()
        )
    (row,) = rows
    assert row.wrapped is not None
    assert own not in row.wrapped
    assert (
        await backend.unwrap_to_memory(row.wrapped, wrapping_context(uuid.UUID(tenant_id), "mine", 1)) == own
    )
    # Bound to its name and version: the blob does not unwrap as another key or version.
    for context in (
        wrapping_context(uuid.UUID(tenant_id), "mine", 2),
        wrapping_context(uuid.UUID(tenant_id), "other", 1),
    ):
        with pytest.raises(BackendError):
            await backend.unwrap_to_memory(row.wrapped, context)

    kinds = [e["kind"] for e in await logged(service, "acme", admin)][:5]
    assert (
        kinds
        == ["key-created", "key-created", "key-rotated", "key-state-changed", "key-state-changed"][
            : len(kinds)
        ]
    )
    assert len(kinds) == 5


async def test_key_roles_and_isolation(service: Service, acme: TenantFixture) -> None:
    body = {"name": "weights", "policy": "prod"}
    for token in (acme.auditor, acme.ci_signer):
        assert (
            await service.client.post("/v1/tenants/acme/keys", json=body, headers=bearer(token))
        ).status_code == 403
    assert (
        await service.client.post("/v1/tenants/globex/keys", json=body, headers=bearer(acme.admin))
    ).status_code == 404
    assert (
        await service.client.post("/v1/tenants/acme/keys", json=body, headers=bearer(acme.admin))
    ).status_code == 201
    assert (
        await service.client.post("/v1/tenants/acme/keys", json=body, headers=bearer(acme.admin))
    ).status_code == 409
    assert (
        await service.client.get("/v1/tenants/globex/keys", headers=bearer(acme.admin))
    ).status_code == 404
    listed = await service.client.get("/v1/tenants/acme/keys", headers=bearer(acme.auditor))
    assert [k["name"] for k in listed.json()] == ["weights"]
    for bad in (
        {"name": "Bad Name", "policy": "p"},
        {"name": "k", "policy": "p", "material": "AAAA"},
        {"name": "k", "policy": "p", "extra": 1},
    ):
        response = await service.client.post("/v1/tenants/acme/keys", json=bad, headers=bearer(acme.admin))
        assert response.status_code == 400, bad
