"""What a release reads before it appraises (keyserver/keys.py, ``release_inputs``): one call on either
store (PostgreSQL: migrations/versions/0013's function; SQLite: the procedure ``sqlite_release_inputs``),
checked here against the ORM reads (``releasable`` then ``active_policy_row``) in the same transaction,
over every state a key, its versions and its policy can be in — the same rows, the same refusal with the
same reason — and confined to its tenant (another tenant's key of the same name is ahead of it)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from keyserver.appraisal import active_policy_row
from keyserver.backends.software import SoftwareBackend
from keyserver.challenges import issue_challenge
from keyserver.db.models import Tenant
from keyserver.db.session import Database, Scope
from keyserver.db.types import utcnow
from keyserver.errors import EvidenceError
from keyserver.keys import create_key, destroy_version, releasable, release_inputs, rotate_key, set_state
from keyserver.policies import activate, add_policy_version
from keyserver.release_reads import first_reads
from keyserver.releaselog.signing import LogSigner
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import create_tenant

pytestmark = pytest.mark.asyncio

PRINCIPAL = uuid.UUID(int=7)
POLICY = {"version": 1, "tees": ["tpm"], "rules": [{"name": "r", "expr": "true"}]}


async def _orm_reads(session: Any, tenant: Tenant, name: str, version: int | None) -> Any:
    """What SQLite runs: the key version, then the key's active policy."""
    key = await releasable(session, tenant, name, version)
    return key, await active_policy_row(session, tenant.id, key.key.policy_name)


def _facts(key: Any, policy: Any) -> tuple[Any, ...]:
    k, v = key.key, key.version
    row: tuple[Any, ...] = (k.tenant_id, k.name, k.policy_name, k.state, k.backend, k.created_at)
    row += (v.tenant_id, v.key_name, v.version, bytes(v.wrapped), v.created_at, v.destroyed_at)
    if policy is None:
        return (*row, None)
    p = policy
    return (*row, p.tenant_id, p.name, p.version, bytes(p.document), p.sha256, p.created_at, p.created_by)


async def _both(db: Database, tenant: Tenant, name: str, version: int | None) -> tuple[Any, Any]:
    """Each way's outcome: its facts, or the refusal's reason. The function's, also as a release's first
    statement reads it (keyserver/release_reads.py): the two must agree before it is compared."""
    outcomes = []
    async with db.transaction(Scope.for_tenant(tenant.id)) as session:
        for read in ("first reads", "function", "orm"):
            try:
                if read == "first reads":
                    challenge = await issue_challenge(session, tenant.id)
                    first = await first_reads(session, tenant, challenge.id, utcnow(), {}, name, version)
                    inputs = first.inputs.get()
                    outcomes.append(_facts(inputs.key, inputs.policy))
                elif read == "function":
                    inputs = await release_inputs(session, tenant, name, version)
                    outcomes.append(_facts(inputs.key, inputs.policy))
                else:
                    outcomes.append(_facts(*await _orm_reads(session, tenant, name, version)))
            except EvidenceError as refused:
                outcomes.append(("refused", refused.reason))
    assert outcomes[0] == outcomes[1], "the release's first statement reads what release_inputs reads"
    return outcomes[1], outcomes[2]


async def test_the_function_reads_what_the_orm_reads(migrated_db: Database) -> None:
    db = migrated_db
    log = ReleaseLog(LogSigner(SoftwareBackend.from_file(db.settings.effective_kek_file), "t"))
    backend = SoftwareBackend.from_file(db.settings.effective_kek_file)
    async with db.transaction(Scope.for_operator()) as session:
        acme = await create_tenant(session, "acme")
        other = await create_tenant(session, "other")
    for tenant in (acme, other):
        async with db.transaction(Scope.for_tenant(tenant.id)) as session:
            await add_policy_version(session, log, tenant, name="prod", document=POLICY, principal=PRINCIPAL)
            await create_key(session, log, backend, tenant, name="w", policy_name="prod", principal=PRINCIPAL)
            # A key whose policy was never activated, and one naming a policy that does not exist.
            await create_key(session, log, backend, tenant, name="n", policy_name="prod", principal=PRINCIPAL)
            await create_key(session, log, backend, tenant, name="x", policy_name="nope", principal=PRINCIPAL)

    # The other tenant's key of the same name is ahead of acme's (more versions, its policy active), so a
    # read that forgot its tenant would answer with the other's rows (SQLite has no row-level security).
    async with db.transaction(Scope.for_tenant(other.id)) as session:
        await activate(session, log, other, "prod", 1, principal=PRINCIPAL)
        for _ in range(4):
            await rotate_key(session, log, backend, other, "w", principal=PRINCIPAL)

    seen: list[tuple[str, Any]] = []

    async def check(label: str, name: str, version: int | None = None) -> Any:
        function, orm = await _both(db, acme, name, version)
        assert function == orm, label
        seen.append((label, function))
        return function

    # No active policy: the key is releasable, the policy None (the appraisal's policy-missing denial).
    assert (await check("no active policy", "w"))[-1] is None
    assert (await check("policy that does not exist", "x"))[-1] is None
    async with db.transaction(Scope.for_tenant(acme.id)) as session:
        await activate(session, log, acme, "prod", 1, principal=PRINCIPAL)
        await add_policy_version(session, log, acme, name="prod", document=POLICY, principal=PRINCIPAL)
    active = await check("active policy", "w")
    assert active[-5] == 1, "version 1 is active, version 2 only added"
    async with db.transaction(Scope.for_tenant(acme.id)) as session:
        await activate(session, log, acme, "prod", 2, principal=PRINCIPAL)
        await rotate_key(session, log, backend, acme, "w", principal=PRINCIPAL)
        await rotate_key(session, log, backend, acme, "w", principal=PRINCIPAL)
    assert (await check("newest of three", "w"))[8] == 3
    assert (await check("pinned", "w", 2))[8] == 2
    assert (await check("pinned past the newest", "w", 9)) == ("refused", "key-version-unavailable")
    assert (await check("unknown key", "zzz")) == ("refused", "key-unknown")
    async with db.transaction(Scope.for_tenant(acme.id)) as session:
        await destroy_version(session, log, acme, "w", 3, principal=PRINCIPAL)
    assert (await check("newest destroyed: the one before", "w"))[8] == 2
    assert (await check("pinned to a destroyed version", "w", 3)) == ("refused", "key-version-unavailable")
    async with db.transaction(Scope.for_tenant(acme.id)) as session:
        await destroy_version(session, log, acme, "w", 2, principal=PRINCIPAL)
        await destroy_version(session, log, acme, "w", 1, principal=PRINCIPAL)
    assert (await check("every version destroyed", "w")) == ("refused", "key-version-unavailable")
    async with db.transaction(Scope.for_tenant(acme.id)) as session:
        await set_state(session, log, acme, "n", "disabled", principal=PRINCIPAL)
        await set_state(session, log, acme, "x", "destroyed", principal=PRINCIPAL)
    assert (await check("disabled", "n")) == ("refused", "key-disabled")
    assert (await check("destroyed", "x")) == ("refused", "key-destroyed")
    assert len(seen) == 12
    if db.dialect == "postgresql":
        # Row-level security: under acme's scope, the other tenant's key is unknown even when asked for
        # by that tenant's id (SQLite has no such second wall; its queries name the tenant).
        async with db.transaction(Scope.for_tenant(acme.id)) as session:
            with pytest.raises(EvidenceError, match="no key named"):
                await release_inputs(session, other, "w", None)
