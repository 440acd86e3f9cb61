"""The release log over HTTP: exactly the wire format of DESIGN.md, for auditors and tenant admins only."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from audit import merkle
from audit.checkpoint import parse_vkey, verify_checkpoint
from keyserver.backends.software import SoftwareBackend
from keyserver.config import Settings
from keyserver.db.models import Tenant
from keyserver.db.session import Database, Scope
from keyserver.releaselog.signing import LogSigner
from keyserver.releaselog.store import ReleaseLog
from tests.conftest import Service, bearer
from tests.test_tenancy import TenantFixture, make_tenant

TOKENS = 3  # the entries make_tenant's tokens add to a tenant's log


async def seed(db: Database, settings: Settings, name: str, count: int) -> None:
    """Append entries the way the release flow will: through the store, in the tenant's scope."""
    log = ReleaseLog(LogSigner(SoftwareBackend.from_file(settings.effective_kek_file), settings.log_origin))
    async with db.transaction(Scope.for_operator()) as session:
        from sqlalchemy import select

        tenant = (await session.execute(select(Tenant).where(Tenant.name == name))).scalar_one()
    async with db.transaction(Scope.for_tenant(tenant.id)) as session:
        entries: list[dict[str, Any]] = [
            {
                "v": 1,
                "kind": "key-release",
                "decision": "granted" if n % 3 else "denied",
                "key": {"name": "k"},
                "n": n,
            }
            for n in range(count)
        ]
        await log.append(session, tenant, entries)


@pytest.fixture
async def alpha(service: Service, db: Database, settings: Settings) -> TenantFixture:
    tenant = await make_tenant(service, "alpha")
    await make_tenant(service, "beta")
    # 11 entries in all: make_tenant's three tokens (each issued is logged), then eight seeded ones.
    await seed(db, settings, "alpha", 11 - TOKENS)
    return tenant


async def test_checkpoint_entries_and_proofs_verify(service: Service, alpha: TenantFixture) -> None:
    client, auth = service.client, bearer(alpha.auditor)
    key = (await client.get("/v1/tenants/alpha/log/key", headers=auth)).json()
    assert key["origin"] == "keyserver.local/alpha"
    # The raw Ed25519 key, the same one the vkey names (its base64 may hold "+": parse, don't split).
    pinned = parse_vkey(key["verifier_key"]).public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert base64.b64decode(key["public_key"], validate=True) == pinned
    checkpoint_response = await client.get("/v1/tenants/alpha/log/checkpoint", headers=auth)
    assert checkpoint_response.headers["content-type"].startswith("text/plain")
    checkpoint = verify_checkpoint(checkpoint_response.text, key["verifier_key"])
    assert checkpoint.size == 11

    page = (
        await client.get("/v1/tenants/alpha/log/entries", params={"start": 0, "end": 11}, headers=auth)
    ).json()
    data = [base64.b64decode(item["data"]) for item in page["entries"]]
    kinds = [item["entry"]["kind"] for item in page["entries"]]
    assert kinds == ["token-issued"] * TOKENS + ["key-release"] * (11 - TOKENS)
    assert [item["entry"].get("n") for item in page["entries"]][TOKENS:] == list(range(11 - TOKENS))
    reference = merkle.MemoryNodeStore()
    reference.extend(data)
    assert reference.root() == checkpoint.root_hash

    for index in (0, 5, 10):
        proof = (
            await client.get(
                "/v1/tenants/alpha/log/proofs/inclusion",
                params={"index": index, "tree_size": 11},
                headers=auth,
            )
        ).json()
        assert proof["leaf_hash"] == merkle.leaf_hash(data[index]).hex()
        path = [bytes.fromhex(h) for h in proof["audit_path"]]
        merkle.verify_inclusion(merkle.leaf_hash(data[index]), index, 11, path, checkpoint.root_hash)
    consistency = (
        await client.get(
            "/v1/tenants/alpha/log/proofs/consistency", params={"first": 4, "second": 11}, headers=auth
        )
    ).json()
    merkle.verify_consistency(
        4, 11, reference.root(4), checkpoint.root_hash, [bytes.fromhex(h) for h in consistency["proof"]]
    )


async def test_bad_ranges_are_problems(service: Service, alpha: TenantFixture) -> None:
    auth = bearer(alpha.admin)
    cases: list[tuple[str, dict[str, int | str], int]] = [
        ("entries", {"start": 0, "end": 12}, 404),
        ("entries", {"start": 3, "end": 3}, 400),
        ("entries", {"start": -1, "end": 3}, 400),
        ("entries", {"start": "x", "end": 3}, 400),
        ("entries", {"start": 0}, 400),
        ("proofs/inclusion", {"index": 11, "tree_size": 11}, 400),
        ("proofs/inclusion", {"index": 0, "tree_size": 12}, 404),
        ("proofs/consistency", {"first": 0, "second": 11}, 400),
        ("proofs/consistency", {"first": 5, "second": 4}, 400),
        ("proofs/consistency", {"first": 1, "second": 2**63}, 400),
    ]
    for path, params, status in cases:
        response = await service.client.get(f"/v1/tenants/alpha/log/{path}", params=params, headers=auth)
        assert response.status_code == status, (path, params, response.text)
        assert response.headers["content-type"] == "application/problem+json"


async def test_only_auditors_and_admins_of_the_tenant_read_the_log(
    service: Service, alpha: TenantFixture
) -> None:
    beta_admin = (
        await service.client.post(
            "/v1/tenants/beta/tokens", json={"role": "auditor"}, headers=bearer(alpha.admin)
        )
    ).status_code
    assert beta_admin == 404
    paths: list[tuple[str, dict[str, int]]] = [
        ("checkpoint", {}),
        ("key", {}),
        ("entries", {"start": 0, "end": 1}),
        ("proofs/inclusion", {"index": 0, "tree_size": 1}),
        ("proofs/consistency", {"first": 1, "second": 2}),
    ]
    for path, params in paths:
        url = f"/v1/tenants/alpha/log/{path}"
        assert (
            await service.client.get(url, params=params, headers=bearer(alpha.ci_signer))
        ).status_code == 403
        operator = await service.client.get(url, params=params, headers=bearer(service.operator_token))
        assert operator.status_code == 403, "the operator manages tenants; it does not read their logs"
        assert (await service.client.get(url, params=params)).status_code == 401
        for token in (alpha.admin, alpha.auditor):
            other = f"/v1/tenants/beta/log/{path}"
            assert (await service.client.get(other, params=params, headers=bearer(token))).status_code == 404
            assert (await service.client.get(url, params=params, headers=bearer(token))).status_code == 200
