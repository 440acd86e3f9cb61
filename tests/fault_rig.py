"""The rig behind the fault-injection tests (tests/test_faults_*.py).

One keyserver app per test module (in process, so that the release path's fault seam,
``keyserver/faults.py``, can be reached), one tenant set up for real: a swtpm AK enrolled by credential
activation, a CI-signed reference value, an active policy and a key with known material. Each case:

1. asks for a challenge and makes a real TPM quote bound to it (before anything breaks);
2. installs a hook that breaks a real part when the release reaches the named step, and releases;
3. if the part stays broken, checks that ``/readyz`` says so (503);
4. heals the part and waits (bounded) until ``/readyz`` is 200 again: the service recovers on its own;
5. checks the promises, whatever the outcome: key material only with a committed ``granted`` entry, and
   the right key; a 503 problem document otherwise, never a 500; the challenge consumed if and only if an
   entry for it committed; the log's signed head consistent with its entries (the whole tree recomputed
   here), append-only since the previous case (a consistency proof) and every new entry provable (an
   inclusion proof from the server);
6. releases once more without a fault, which must be granted.

Expected outcomes per (fault, step) are spelled out by each fault, so that a fault that silently stopped
biting would fail the test rather than pass it vacuously.
"""

from __future__ import annotations

import asyncio
import base64
import enum
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from typing import Any

from litestar.testing import AsyncTestClient
from sqlalchemy import event, select
from sqlalchemy.ext.asyncio import AsyncSession
from tpm2_pytss import ESAPI

from audit import merkle
from audit.checkpoint import Checkpoint, verify_checkpoint
from keyserver.app import create_app
from keyserver.config import Settings
from keyserver.db.models import Challenge
from keyserver.db.session import Database, Scope
from keyserver.faults import ReleaseStep
from keyserver.jwe import unwrap_released
from keyserver.release import ReleaseService
from tests.conftest import Service, bearer
from tests.fixtures.swtpm import SwtpmInstance, flush_all
from tests.test_release_swtpm import Loader, extend, loader_ak, setup_tenant
from tests.test_tenancy import TenantFixture

PROBLEM = "application/problem+json"
KEY = "model"
READY_WITHIN_S = 30.0
IN_TRANSACTION = (
    ReleaseStep.CHALLENGE_CONSUMED,
    ReleaseStep.EVIDENCE_VERIFIED,
    ReleaseStep.KEY_FOUND,
    ReleaseStep.APPRAISED,
    ReleaseStep.KEY_WRAPPED,
    ReleaseStep.LOG_APPENDED,
    ReleaseStep.BEFORE_COMMIT,
)
ALL_STEPS = (ReleaseStep.START, *IN_TRANSACTION, ReleaseStep.COMMITTED)
BEFORE_WRAP = (
    ReleaseStep.START,
    ReleaseStep.CHALLENGE_CONSUMED,
    ReleaseStep.EVIDENCE_VERIFIED,
    ReleaseStep.KEY_FOUND,
    ReleaseStep.APPRAISED,
)


class Expect(enum.Enum):
    # The fault reached nothing the release still needed: the key, with a committed "granted" entry.
    GRANTED = "granted"
    # The database failed: 503, nothing committed, the challenge still unused (the loader may retry it).
    UNAVAILABLE = "unavailable, nothing committed"
    # The key backend failed: 503, a committed "denied" entry (reason backend-unavailable), the
    # challenge used up.
    BACKEND_DENIAL = "unavailable, denial logged"


Inject = Callable[[AsyncSession | None], Awaitable[None]]


async def _nothing() -> None:
    return None


@dataclass
class Fault:
    """A way to break a real part: ``inject`` breaks it (at the step), ``heal`` brings it back (and does
    nothing when the part is not broken)."""

    name: str
    inject: Inject
    expect: Callable[[ReleaseStep], Expect]
    heal: Callable[[], Awaitable[None]] = _nothing
    # The part stays broken until healed, so readiness must report it meanwhile.
    persistent: bool = False


def bites(steps: tuple[ReleaseStep, ...], outcome: Expect) -> Callable[[ReleaseStep], Expect]:
    """``outcome`` at ``steps``, granted elsewhere."""
    return lambda step: outcome if step in steps else Expect.GRANTED


@contextmanager
def module_tpm(swtpm: SwtpmInstance) -> Iterator[tuple[ESAPI, Any]]:
    """An ESAPI and a loaded AK for a whole module (tpm_esapi is per test); flushed at the end."""
    ectx = ESAPI(swtpm.tcti)
    try:
        extend(ectx, b"reviewed loader build 1")
        with loader_ak(ectx) as ak:
            yield ectx, ak
    finally:
        flush_all(ectx)
        ectx.close()


@dataclass
class Rig:
    service: Service
    tenant: TenantFixture
    loader: Loader
    material: bytes
    db: Database
    tenant_id: uuid.UUID
    verifier_key: str
    tree: merkle.MemoryNodeStore = field(default_factory=merkle.MemoryNodeStore)
    head: Checkpoint | None = None
    cases: int = 0

    @property
    def release_service(self) -> ReleaseService:
        service: ReleaseService = self.service.app.state.release_service
        return service

    # --- one case ---------------------------------------------------------------------------------

    async def run(self, fault: Fault, step: ReleaseStep) -> None:
        expected = fault.expect(step)
        challenge = await self.loader.challenge()
        nonce = base64.urlsafe_b64decode(challenge["nonce"] + "==")
        evidence = self.loader.evidence(nonce)
        fired: list[ReleaseStep] = []

        async def hook(reached: ReleaseStep, session: AsyncSession | None) -> None:
            if reached is step and not fired:
                fired.append(reached)
                # Nothing cached may hide a read of the broken part after this step: the witness
                # configuration (cached for seconds) would otherwise be read again only now and then.
                self.service.app.state.cosigning.forget(self.tenant_id)
                await fault.inject(session)

        label = f"{fault.name} at {step}"
        self.release_service.faults = hook
        try:
            response = await self.loader.release(KEY, challenge=challenge, evidence=evidence)
            self.release_service.faults = None
            assert fired == [step], f"{label}: the release never reached the step"
            if fault.persistent:
                ready = await self.service.client.get("/readyz")
                assert ready.status_code == 503, f"{label}: /readyz said {ready.status_code} while broken"
                assert ready.headers["content-type"] == PROBLEM
        finally:
            # Heal whatever happened: a broken part must not outlive its case (heals are idempotent).
            self.release_service.faults = None
            await fault.heal()
        await self.wait_ready(label)
        await self.check(label, expected, challenge["id"], response)
        # Recovered: the next release, with nothing broken, is granted.
        await self.release_cleanly(f"{label}, then healed")
        self.cases += 1

    async def release_cleanly(self, label: str) -> None:
        challenge = await self.loader.challenge()
        response = await self.loader.release(KEY, challenge=challenge)
        await self.check(label, Expect.GRANTED, challenge["id"], response)

    async def wait_ready(self, label: str) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        while True:
            ready = await self.service.client.get("/readyz")
            if ready.status_code == 200:
                return
            assert time.monotonic() < deadline, f"{label}: not ready {READY_WITHIN_S:.0f} s after healing"
            await asyncio.sleep(0.05)

    # --- the promises -----------------------------------------------------------------------------

    async def check(self, label: str, expected: Expect, challenge_id: str, response: Any) -> None:
        body = response.json()
        new = await self.verify_log(label)
        mine = [e for e in new if e["entry"].get("challenge") == challenge_id]
        used = await self.challenge_used(challenge_id)
        assert len(mine) <= 1, f"{label}: {len(mine)} entries for one challenge"
        assert used == bool(mine), f"{label}: challenge used={used} but {len(mine)} entries committed"
        if response.status_code == 200:
            receipt = body["receipt"]
            assert mine, f"{label}: key material returned without a committed log entry"
            entry = mine[0]
            assert entry["index"] == receipt["log_index"]
            assert entry["entry"]["decision"] == "granted", f"{label}: {entry}"
            assert self.head is not None
            receipt_head = verify_checkpoint(receipt["checkpoint"], self.verifier_key)
            merkle.verify_inclusion(
                self.tree_leaf(entry["index"]),
                entry["index"],
                receipt["tree_size"],
                [bytes.fromhex(h) for h in receipt["inclusion_proof"]],
                receipt_head.root_hash,
            )
            material, metadata = unwrap_released(body["jwe"], self.loader.private)
            assert (material, metadata.name) == (self.material, KEY), f"{label}: wrong key released"
        else:
            assert response.headers["content-type"] == PROBLEM, f"{label}: {response.text}"
            assert "jwe" not in body, f"{label}: key material in a refusal"
            assert base64.b64encode(self.material).decode() not in response.text
            assert response.status_code == 503, f"{label}: {response.status_code} {body}"
            assert body["type"] in ("urn:keyserver:problem:unavailable", "urn:keyserver:problem:key-backend")
        outcome = (
            Expect.GRANTED
            if response.status_code == 200
            else Expect.BACKEND_DENIAL
            if mine
            else Expect.UNAVAILABLE
        )
        assert outcome is expected, f"{label}: expected {expected.value}, got {outcome.value}: {body}"
        if outcome is Expect.BACKEND_DENIAL:
            assert body["reason"] == "backend-unavailable"
            assert mine[0]["index"] == body["log_index"]
            assert (mine[0]["entry"]["decision"], mine[0]["entry"]["reason"]) == (
                "denied",
                "backend-unavailable",
            )

    def tree_leaf(self, index: int) -> bytes:
        return self.tree.get_nodes([(0, index)])[(0, index)]

    async def verify_log(self, label: str) -> list[dict[str, Any]]:
        """The entries committed since the last check, after checking the whole log against its head."""
        auditor = bearer(self.tenant.auditor)
        client = self.service.client
        text = (await client.get("/v1/tenants/acme/log/checkpoint", headers=auditor)).text
        head = verify_checkpoint(text, self.verifier_key)
        before = self.tree.size
        assert head.size >= before, f"{label}: the log shrank from {before} to {head.size}"
        new: list[dict[str, Any]] = []
        if head.size > before:
            page = await client.get(
                "/v1/tenants/acme/log/entries", params={"start": before, "end": head.size}, headers=auditor
            )
            assert page.status_code == 200, page.text
            new = page.json()["entries"]
            self.tree.extend([base64.b64decode(e["data"]) for e in new])
        assert self.tree.root() == head.root_hash, f"{label}: the signed head does not match the entries"
        if self.head is not None and 0 < self.head.size < head.size:
            proof = await client.get(
                "/v1/tenants/acme/log/proofs/consistency",
                params={"first": self.head.size, "second": head.size},
                headers=auditor,
            )
            merkle.verify_consistency(
                self.head.size,
                head.size,
                self.head.root_hash,
                head.root_hash,
                [bytes.fromhex(h) for h in proof.json()["proof"]],
            )
        for item in new:
            proof = await client.get(
                "/v1/tenants/acme/log/proofs/inclusion",
                params={"index": item["index"], "tree_size": head.size},
                headers=auditor,
            )
            assert proof.status_code == 200, f"{label}: entry {item['index']} not provable: {proof.text}"
            merkle.verify_inclusion(
                merkle.leaf_hash(base64.b64decode(item["data"])),
                item["index"],
                head.size,
                [bytes.fromhex(h) for h in proof.json()["audit_path"]],
                head.root_hash,
            )
        self.head = head
        return new

    async def challenge_used(self, challenge_id: str) -> bool:
        async with self.db.transaction(Scope.for_tenant(self.tenant_id)) as session:
            used = (
                await session.execute(
                    select(Challenge.used_at).where(
                        Challenge.tenant_id == self.tenant_id, Challenge.id == uuid.UUID(challenge_id)
                    )
                )
            ).scalar_one()
        return used is not None


@asynccontextmanager
async def running_rig(settings: Settings, swtpm: SwtpmInstance) -> AsyncIterator[Rig]:
    """An app on ``settings`` (in process, with its lifespan), and the rig around it."""
    announced: list[str] = []
    app = create_app(settings, announce=announced.append)
    db = Database(settings)
    try:
        async with AsyncTestClient(app=app) as client:
            with module_tpm(swtpm) as (ectx, ak):
                yield await make_rig(Service(app, client, announced), db, swtpm, ectx, ak)
    finally:
        await db.dispose()


async def make_rig(service: Service, db: Database, swtpm: SwtpmInstance, ectx: ESAPI, ak: Any) -> Rig:
    """The tenant, its key with known material, and a first granted release."""
    tenant = await setup_tenant(service, swtpm, ectx, ak)
    material = bytes(range(32))
    created = await service.client.post(
        "/v1/tenants/acme/keys",
        json={"name": KEY, "policy": "prod", "material": base64.b64encode(material).decode()},
        headers=bearer(tenant.admin),
    )
    assert created.status_code == 201, created.text
    auditor = bearer(tenant.auditor)
    tenant_id = uuid.UUID((await service.client.get("/v1/tenants/acme", headers=auditor)).json()["id"])
    vkey = (await service.client.get("/v1/tenants/acme/log/key", headers=auditor)).json()["verifier_key"]
    rig = Rig(service, tenant, Loader(service, ectx, ak), material, db, tenant_id, vkey)
    await rig.verify_log("set-up")
    await rig.release_cleanly("before any fault")
    return rig


class InjectedError:
    """A SQLAlchemy hook that fails the next statement the service sends with the driver's own
    OperationalError (as a full disk or an I/O error would), once."""

    def __init__(self, rig: Rig) -> None:
        self.engine = rig.service.app.state.db.engine.sync_engine
        self.armed = False

    def before_cursor_execute(self, conn: Any, *_args: Any) -> None:
        if self.armed:
            self.armed = False
            raise conn.dialect.loaded_dbapi.OperationalError("injected fault: could not write to file")

    async def arm(self, _session: AsyncSession | None) -> None:
        if not event.contains(self.engine, "before_cursor_execute", self.before_cursor_execute):
            event.listen(self.engine, "before_cursor_execute", self.before_cursor_execute)
        self.armed = True

    async def disarm(self) -> None:
        self.armed = False


def injected_error(rig: Rig) -> Fault:
    hook = InjectedError(rig)
    # COMMIT is not a statement the hook sees, and the receipt's inclusion proof of a one-entry append
    # comes from the nodes the append itself read and wrote (ReleaseLog.inclusion_proof_of_appended):
    # from log-appended on, nothing is left to fail.
    statements_left = (ReleaseStep.START, *IN_TRANSACTION[:-2])
    expect = bites(statements_left, Expect.UNAVAILABLE)
    return Fault("injected-statement-error", hook.arm, expect, hook.disarm)
