"""A release racing a key being disabled or a policy being activated follows the state committed first,
and its log entry lands on the same side of the change's entry (both databases, a real swtpm quote).

The fault seam (keyserver/faults.py) makes the race deterministic: when the release reaches a step, the
change starts in a concurrent transaction of the service's own, and the release waits (bounded) for it
to commit before going on. Before the release's transaction, the change commits first and the release
sees it. Once the release has read the key and the active policy, the change must wait for the release to
commit (FOR SHARE on PostgreSQL; SQLite's write lock), so the release's entry comes first. Whatever the
order, the release's decision must match the state that the log says was in force before its entry.
"""

from __future__ import annotations

import asyncio
import base64
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncSession
from tpm2_pytss import ESAPI

from keyserver import keys, policies
from keyserver.db.models import Tenant
from keyserver.db.session import Database, Scope
from keyserver.faults import ReleaseStep
from keyserver.release import ReleaseService
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import lookup_tenant
from tests.conftest import Service, bearer
from tests.test_release_swtpm import Loader, extend, loader_ak, setup_tenant
from tests.test_tenancy import TenantFixture

pytestmark = pytest.mark.swtpm

# How long a release waits for the concurrent change to commit before it goes on. A change that is not
# blocked commits well within it; one that is blocked by the release cannot commit at all until then.
CHANGE_WAIT_S = 0.5
STEPS = (
    ReleaseStep.START,
    ReleaseStep.CHALLENGE_CONSUMED,
    ReleaseStep.KEY_FOUND,
    ReleaseStep.APPRAISED,
    ReleaseStep.LOG_APPENDED,
)
# Where the release has read the key and the policy's active version already (both in one read,
# keyserver/keys.py ``release_inputs``): the change must come after it.
AFTER_KEY_READ = (ReleaseStep.KEY_FOUND, ReleaseStep.APPRAISED, ReleaseStep.LOG_APPENDED)
AFTER_POLICY_READ = AFTER_KEY_READ

Change = Callable[[AsyncSession, Tenant], Awaitable[Any]]


async def all_entries(service: Service, tenant: TenantFixture) -> list[dict[str, Any]]:
    auditor = bearer(tenant.auditor)
    size = int((await service.client.get("/v1/tenants/acme/log/checkpoint", headers=auditor)).text.split()[1])
    page = await service.client.get(
        "/v1/tenants/acme/log/entries", params={"start": 0, "end": size}, headers=auditor
    )
    return [{"index": e["index"], **e["entry"]} for e in page.json()["entries"]]


async def race(service: Service, tenant: Tenant, loader: Loader, step: ReleaseStep, change: Change) -> Any:
    """Release; when it reaches ``step``, run ``change`` in a concurrent transaction and wait for it up
    to CHANGE_WAIT_S. The change is awaited to the end after the release."""
    app = service.app
    db: Database = app.state.db
    release_service: ReleaseService = app.state.release_service
    tasks: list[asyncio.Task[Any]] = []
    loops: list[asyncio.AbstractEventLoop] = []

    async def run_change() -> None:
        async with db.transaction(Scope.for_tenant(tenant.id)) as session:
            await change(session, tenant)

    async def hook(reached: ReleaseStep, _session: AsyncSession | None) -> None:
        if reached is step and not tasks:
            loops.append(asyncio.get_running_loop())
            tasks.append(loops[0].create_task(run_change()))
            await asyncio.wait(tasks, timeout=CHANGE_WAIT_S)

    challenge = await loader.challenge()
    evidence = loader.evidence(base64.urlsafe_b64decode(challenge["nonce"] + "=="))
    release_service.faults = hook
    try:
        response = await loader.release(challenge=challenge, evidence=evidence)
    finally:
        release_service.faults = None
    assert len(tasks) == 1

    async def finish() -> None:
        await tasks[0]

    # The change runs on the app's loop (another thread): wait for it to end there.
    await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(finish(), loops[0]))
    return response


async def test_a_release_racing_a_key_disable_or_a_policy_change(
    service: Service, db: Database, swtpm: Any, tpm_esapi: ESAPI
) -> None:
    extend(tpm_esapi, b"reviewed loader build 1")
    with loader_ak(tpm_esapi) as ak:
        acme = await setup_tenant(service, swtpm, tpm_esapi, ak)
        admin = bearer(acme.admin)
        loader = Loader(service, tpm_esapi, ak)
        # A second version of the policy, granting the same loader, to switch between.
        document = {
            "version": 1,
            "tees": ["tpm"],
            "reference_values": ["loader"],
            "rules": [{"name": "any-boot", "expr": "claims['tpm.reset_count'] >= 0 || true"}],
        }
        added = await service.client.post(
            "/v1/tenants/acme/policies", json={"name": "prod", "document": document}, headers=admin
        )
        assert added.status_code == 201, added.text
        log: ReleaseLog = service.app.state.release_log
        principal = uuid.UUID(acme.admin_id)
        dialect = db.dialect
        tenant = await lookup_tenant(db, "acme")
        active_version = 1

        for step in STEPS:
            # --- the key is disabled while the release runs --------------------------------------------
            async def disable(session: AsyncSession, tenant: Tenant) -> None:
                await keys.set_state(session, log, tenant, "weights", "disabled", principal=principal)

            response = await race(service, tenant, loader, step, disable)
            entries = await all_entries(service, acme)
            release = next(e for e in reversed(entries) if e["kind"] == "key-release")
            change = next(e for e in reversed(entries) if e["kind"] == "key-state-changed")
            label = f"disable at {step} ({dialect})"
            if change["index"] < release["index"]:
                assert response.status_code == 403, label
                assert (release["decision"], release["reason"]) == ("denied", "key-disabled"), label
            else:
                assert response.status_code == 200, label
                assert release["decision"] == "granted", label
            # SQLite: the release's transaction holds the write lock from its start.
            in_transaction = step is not ReleaseStep.START and dialect == "sqlite"
            expect_release_first = step in AFTER_KEY_READ or in_transaction
            if step is ReleaseStep.START or expect_release_first:
                assert (release["index"] < change["index"]) is expect_release_first, label
            enabled = await service.client.post(
                "/v1/tenants/acme/keys/weights/state", json={"state": "enabled"}, headers=admin
            )
            assert enabled.status_code == 200

            # --- another policy version is activated while the release runs ----------------------------
            target = 3 - active_version

            async def activate(session: AsyncSession, tenant: Tenant, version: int = target) -> None:
                await policies.activate(session, log, tenant, "prod", version, principal=principal)

            response = await race(service, tenant, loader, step, activate)
            assert response.status_code == 200, response.text
            entries = await all_entries(service, acme)
            release = next(e for e in reversed(entries) if e["kind"] == "key-release")
            change = next(e for e in reversed(entries) if e["kind"] == "policy-activated")
            label = f"activation at {step} ({dialect})"
            assert change["policy"]["version"] == target, label
            expect_release_first = step in AFTER_POLICY_READ or in_transaction
            expected_version = target if change["index"] < release["index"] else active_version
            assert release["policy"]["version"] == expected_version, label
            if step is ReleaseStep.START or expect_release_first:
                assert (release["index"] < change["index"]) is expect_release_first, label
            active_version = target
