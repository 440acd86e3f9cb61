"""Appraisal: the stored policy and reference values of a tenant, handed to the pure evaluator
(policy/), and its decision turned into what the release flow and the log need.

This is the only place the service calls the policy library; its errors become ``InvalidRequest``
(a tenant admin's mistake) here.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import bindparam, select
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver import evaluation
from keyserver.cache import BoundedCache
from keyserver.db import hot
from keyserver.db.models import Policy as PolicyRow
from keyserver.db.models import PolicyHead
from keyserver.errors import InvalidRequest
from keyserver.evidence.claims import Claims
from policy.document import Policy, PolicyError, ReferenceValues, ReferenceValueSet, parse_reference_values
from policy.document import parse_policy as _parse_policy
from policy.evaluate import Decision, ExampleFailure

POLICY_MISSING = "policy-missing"

# Parsed (and, for policies, CEL-compiled) documents, keyed by the SHA-256 of the exact stored bytes and
# checked against those bytes on every hit: a hit can only ever answer for the same document. Parsing is
# pure (no time, no tenant, no database), and the parsed objects are immutable.
_policies: BoundedCache[bytes, tuple[bytes, Policy]] = BoundedCache(512)
_reference_values: BoundedCache[tuple[str, bytes], tuple[bytes, ReferenceValues]] = BoundedCache(2048)


def stored_policy(document: bytes) -> Policy:
    """A stored policy version's parsed form (``InvalidRequest`` if it cannot be parsed, not cached)."""
    key = hashlib.sha256(document).digest()
    hit = _policies.get(key)
    if hit is not None and hit[0] == document:
        return hit[1]
    parsed = parse_policy(json.loads(document))
    _policies.put(key, (bytes(document), parsed))
    return parsed


def stored_reference_values(tee: str, document: bytes) -> ReferenceValues:
    """A stored reference-value version's parsed form, for its tee (``PolicyError`` is not cached)."""
    key = (tee, hashlib.sha256(document).digest())
    hit = _reference_values.get(key)
    if hit is not None and hit[0] == document:
        return hit[1]
    parsed = parse_reference_values(tee, json.loads(document))
    _reference_values.put(key, (bytes(document), parsed))
    return parsed


@dataclass(frozen=True)
class Appraisal:
    granted: bool
    reason: str | None
    detail: str
    policy_ref: dict[str, Any] | None
    reference_value_refs: list[dict[str, Any]] = field(default_factory=list)
    results: list[dict[str, Any]] = field(default_factory=list)


def parse_policy(document: object) -> Policy:
    try:
        return _parse_policy(document)
    except PolicyError as exc:
        raise InvalidRequest(f"the policy is not valid: {exc}") from None


def validate_reference_values(tee: str, document: dict[str, Any]) -> None:
    try:
        parse_reference_values(tee, document)
    except PolicyError as exc:
        raise InvalidRequest(f"the reference values are not valid: {exc}") from None


# The release path's statements, built once (constructing a statement and its cache key costs ~0.15 ms
# of CPU each time, measured in docs/performance.md).
# FOR SHARE, like the key in keys.releasable: an activation waits for releases in flight under the
# version they read, and a release waits for an activation in flight and then reads its result.
_POLICY_HEAD = (
    select(PolicyHead)
    .where(PolicyHead.tenant_id == bindparam("tenant_id"), PolicyHead.name == bindparam("name"))
    .with_for_update(read=True)
    .execution_options(populate_existing=True)
)


# A set as read by the statements below: name, tee, version, the stored document, revoked or not.
SetRow = tuple[str, str, int, bytes, bool]


def _sets_from_rows(rows: Sequence[SetRow]) -> list[ReferenceValueSet]:
    return [
        ReferenceValueSet(
            name, tee, version, stored_reference_values(tee, bytes(document)), revoked=bool(revoked)
        )
        for name, tee, version, document, revoked in rows
    ]


async def reference_sets(
    session: AsyncSession, tenant_id: uuid.UUID, names: tuple[str, ...]
) -> list[ReferenceValueSet]:
    """The newest version of each named set (for every tee it exists for), revoked or not.

    A revoked newest version is handed to the evaluator as revoked, which denies
    (``reference-values-revoked``): revoking a version never silently re-trusts the one it superseded.
    Going back to older content means publishing it again, as a new, logged version.
    """
    if not names:
        return []
    fast = await hot.fetch(session, _PG_REFERENCE_SETS, tenant_id, list(names))
    if fast is not None:  # PostgreSQL (keyserver/db/hot.py)
        return _sets_from_rows([tuple(row) for row in fast])
    # SQLite: the same read, one hand-off to its thread.
    tenant = hot.sqlite_uuid(tenant_id)
    return _sets_from_rows(
        await hot.fetch_sqlite(session, sqlite_reference_sets_sql(len(names)), tenant, *names, tenant)
    )


def sqlite_reference_sets_sql(count: int) -> str:
    """:data:`_SQLITE_REFERENCE_SETS` for ``count`` names (parameters: tenant, the names, tenant)."""
    return _SQLITE_REFERENCE_SETS.format(places=", ".join("?" * count))


# The same read on SQLite (one ``?`` per name in ``places``).
_SQLITE_REFERENCE_SETS = (
    "SELECT r.name, r.tee, r.version, r.document, r.revoked_at IS NOT NULL AS revoked"
    " FROM reference_values r JOIN ("
    "SELECT name, tee, max(version) AS version FROM reference_values"
    " WHERE tenant_id = ? AND name IN ({places}) GROUP BY name, tee"
    ") n ON r.name = n.name AND r.tee = n.tee AND r.version = n.version"
    " WHERE r.tenant_id = ?"
)
# The same read on PostgreSQL's asyncpg connection (keyserver/db/hot.py), only the columns used; written
# for any two parameter numbers, as a release's first statement reads it too (keyserver/release_reads.py).
PG_REFERENCE_SETS = (
    "SELECT r.name, r.tee, r.version, r.document, r.revoked_at IS NOT NULL AS revoked"
    " FROM reference_values r JOIN ("
    "SELECT name, tee, max(version) AS version FROM reference_values"
    " WHERE tenant_id = {tenant} AND name = ANY({names}::varchar[]) GROUP BY name, tee"
    ") n ON r.name = n.name AND r.tee = n.tee AND r.version = n.version"
    " WHERE r.tenant_id = {tenant} FOR SHARE OF r"
)
_PG_REFERENCE_SETS = PG_REFERENCE_SETS.format(tenant="$1", names="$2")


async def active_policy_row(session: AsyncSession, tenant_id: uuid.UUID, name: str) -> PolicyRow | None:
    """The active version of the policy ``name``, read once its head's lock is held. The release path
    reads it with the key in one call on either store (keyserver/keys.py, ``release_inputs``), held to
    this ORM read by tests/test_release_inputs.py."""
    head = (await session.execute(_POLICY_HEAD, {"tenant_id": tenant_id, "name": name})).scalar_one_or_none()
    if head is None or head.tenant_id != tenant_id:
        return None
    return await session.get(PolicyRow, (tenant_id, name, head.active_version))


@dataclass(frozen=True)
class SetsReadAhead:
    """Reference-value sets a release read with its first statement (keyserver/release_reads.py): those its
    key's policy named when that key was last appraised in this process — a guess, used only if the
    policy read now names exactly these sets, and corrected when it does not."""

    tenant_id: uuid.UUID
    key_name: str
    names: tuple[str, ...]
    rows: tuple[SetRow, ...]


# Per tenant and key: the set names its policy named when last appraised here (a policy changes rarely).
_named_last: BoundedCache[tuple[uuid.UUID, str], tuple[str, ...]] = BoundedCache(4096)


def names_to_read_ahead(tenant_id: uuid.UUID, key_name: str) -> tuple[str, ...]:
    return _named_last.get((tenant_id, key_name)) or ()


def policy_missing(policy_name: str) -> Appraisal:
    """The denial of a key whose policy has no active version (nothing to evaluate)."""
    return Appraisal(False, POLICY_MISSING, f"the key's policy {policy_name!r} has no active version", None)


@dataclass(frozen=True)
class Prepared:
    """What an appraisal reads from the store; :func:`decide` needs no session, so a caller that holds no
    lock it must keep (the dry run) evaluates after its transaction ends."""

    tenant_id: uuid.UUID
    name: str
    version: int
    sha256: str
    document: bytes
    sets: tuple[ReferenceValueSet, ...]


async def prepare(
    session: AsyncSession, tenant_id: uuid.UUID, row: PolicyRow, ahead: SetsReadAhead | None = None
) -> Prepared:
    policy = stored_policy(row.document)
    names = policy.reference_values
    if ahead is not None and ahead.tenant_id == tenant_id and ahead.names == names:
        sets = _sets_from_rows(ahead.rows)
    else:
        if ahead is not None and ahead.tenant_id == tenant_id:
            _named_last.put((tenant_id, ahead.key_name), names)
        sets = await reference_sets(session, tenant_id, names)
    return Prepared(tenant_id, row.name, row.version, row.sha256, bytes(row.document), tuple(sets))


async def decide(prepared: Prepared, claims: Mapping[str, Any] | Claims, now: datetime) -> Appraisal:
    # Off the event loop, under a deadline (keyserver/evaluation.py): a slow rule cannot stall others.
    (decision,) = await evaluation.pool().evaluate_all(
        prepared.tenant_id, [evaluation_request(prepared, claims, now)]
    )
    return appraisal_of(prepared, decision)


def evaluation_request(
    prepared: Prepared, claims: Mapping[str, Any] | Claims, now: datetime
) -> evaluation.Request:
    """What the evaluation pool needs to decide on ``claims`` under ``prepared`` (a release's batch sends
    all of its members' at once: keyserver/release.py)."""
    return evaluation.Request(prepared.document, dict(claims), prepared.sets, now)


def appraisal_of(prepared: Prepared, decision: Decision) -> Appraisal:
    """The appraisal that ``decision`` (the pool's, on ``prepared``'s request) amounts to."""
    return Appraisal(
        granted=decision.granted,
        reason=decision.reason,
        detail=decision.detail or "granted",
        policy_ref={"name": prepared.name, "version": prepared.version, "sha256": prepared.sha256},
        reference_value_refs=[{"name": n, "version": v} for n, v in decision.reference_values],
        results=[r.to_json() for r in decision.results],
    )


async def failing_examples(
    session: AsyncSession, tenant_id: uuid.UUID, row: PolicyRow, now: datetime
) -> list[str]:
    policy = parse_policy(json.loads(row.document))
    sets = await reference_sets(session, tenant_id, policy.reference_values)
    # As policy.evaluate.check_examples, each example evaluated in the pool under its deadline.
    pool = evaluation.pool()
    failures: list[str] = []
    both: tuple[tuple[Literal["grant", "deny"], tuple[Mapping[str, object], ...]], ...] = (
        ("grant", policy.examples.grant),
        ("deny", policy.examples.deny),
    )
    for expected, examples in both:
        for i, claims in enumerate(examples):
            decision = await pool.evaluate(tenant_id, row.document, dict(claims), sets, now)
            if decision.granted != (expected == "grant"):
                failures.append(ExampleFailure(expected, i, decision).message)
    return failures
