"""A release's first reads, in one statement: its challenge consumed, the AK its TPM evidence names, and
the key, version and policy it asks for.

Each was a round trip of its own (``consume_challenge``, ``trusted_ak``, ``release_inputs``), in that
order, inside the release's transaction; all three need only the request, so they go together as the
member's first statement (PostgreSQL: one statement; SQLite: one procedure in aiosqlite's thread), and
each is then *interpreted* where it was read before — the challenge's refusal first, the AK by the
quote's verification, the key's refusals after the evidence — so that a request's outcome and its reason
are what they were (tests/test_release_reads.py holds the three to the separate reads). Measured: two
round trips fewer per release, docs/performance.md, "Sixth pass".

Two more reads ride along (docs/performance.md, "Seventh pass"): the reference-value sets the key's policy
named when this process last appraised that key (``appraisal.SetsReadAhead``: used only if the policy read
names exactly those, otherwise read again), and the key's ``release_limits`` row (``ratelimits.KeyLimitRead``:
where it shows no budget applies, the grant sends no statement).
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.appraisal import (
    PG_REFERENCE_SETS,
    SetRow,
    SetsReadAhead,
    names_to_read_ahead,
    sqlite_reference_sets_sql,
)
from keyserver.challenges import PG_CONSUME, SQLITE_CONSUME, refuse_unconsumed
from keyserver.db import hot
from keyserver.db.models import Tenant
from keyserver.evidence.claims import TEE_TPM
from keyserver.keys import (
    ReleaseInputs,
    release_inputs_from_row,
    release_inputs_from_sqlite,
    sqlite_release_inputs,
)
from keyserver.ratelimits import KeyLimitRead, key_scope
from keyserver.tpm_enrolment import PG_TRUSTED_AK, SQLITE_TRUSTED_AK, EnrolledAk

# The challenge's UPDATE (challenges.consume_challenge), the AK's read (tpm_enrolment.trusted_ak), the
# key's reads (migrations/versions/0013's keyserver_release_inputs), the reference-value sets read ahead
# (appraisal.SetsReadAhead: none when $7 is empty) and the key's limit row (ratelimits.KeyLimitRead: a
# record, or NULL when there is none), under the transaction's scope (row-level security) and each with
# its own tenant condition. The UPDATE runs whether or not the main query reads it (a data-modifying WITH
# always runs to completion).
_PG_FIRST_READS_TEMPLATE = (
    "WITH used AS ({used}),"
    " sets AS ({sets})"
    " SELECT (SELECT nonce FROM used) AS nonce,"
    " ({ak}) AS ak_public,"
    " ARRAY(SELECT ROW(s.name, s.tee, s.version, s.document, s.revoked) FROM sets s) AS reference_sets,"
    " (SELECT ROW(l.max_releases) FROM release_limits l WHERE l.tenant_id = $1 AND l.scope = $8)"
    " AS key_limit,"
    " i.* FROM keyserver_release_inputs($1, $5, $6) AS i"
)
_PG_FIRST_READS = _PG_FIRST_READS_TEMPLATE.format(
    used=PG_CONSUME,  # $1 tenant, $2 challenge, $3 now
    ak=PG_TRUSTED_AK.format(tenant="$1", name="$4"),
    sets=PG_REFERENCE_SETS.format(tenant="$1", names="$7"),
)


@dataclass(frozen=True)
class FirstReads:
    nonce: bytes  # the challenge's, now used
    ak: EnrolledAk | None  # the AK the evidence names, as enrolled (None: the evidence names none)
    inputs: _Inputs
    sets_ahead: SetsReadAhead  # for appraisal.prepare, which checks them against the policy read
    key_limit: KeyLimitRead  # for ReleaseLimiter.take_grant: whether it has anything to count


@dataclass(frozen=True)
class _Inputs:
    """The key's reads, interpreted only when asked (:meth:`get`): after the evidence, as before."""

    tenant: Tenant
    name: str
    version: int | None
    row: Any
    sqlite: bool

    def get(self) -> ReleaseInputs:
        """:func:`keys.release_inputs`'s answer: ``EvidenceError`` for an unknown, disabled or destroyed
        key or version."""
        if self.sqlite:
            return release_inputs_from_sqlite(self.tenant, self.name, self.version, dict(self.row))
        return release_inputs_from_row(self.tenant, self.name, self.version, self.row)


async def first_reads(
    session: AsyncSession,
    tenant: Tenant,
    challenge_id: uuid.UUID,
    now: datetime,
    evidence: Any,
    key_name: str,
    key_version: int | None,
) -> FirstReads:
    """The release's first statement (module docstring). ``EvidenceError`` when the challenge is unknown,
    used or expired (nothing else read is then used)."""
    ak_name = _named_ak(evidence)
    names = names_to_read_ahead(tenant.id, key_name)
    rows = await hot.fetch(
        session,
        _PG_FIRST_READS,
        tenant.id,
        challenge_id,
        now,
        ak_name,
        key_name,
        key_version,
        list(names),
        key_scope(key_name),
    )
    if rows is not None:  # PostgreSQL
        (row,) = rows
        nonce, ak_public, inputs = (
            row["nonce"],
            row["ak_public"],
            _Inputs(tenant, key_name, key_version, row, False),
        )
        sets: list[SetRow] = [tuple(s) for s in row["reference_sets"]]
        limit = row["key_limit"]
    else:  # SQLite: the same steps as one procedure, one hand-off to its thread
        nonce, ak_public, sqlite_inputs, sets, limit = await hot.run_sqlite(
            session,
            sqlite_first_reads,
            hot.sqlite_uuid(tenant.id),
            hot.sqlite_uuid(challenge_id),
            hot.sqlite_time(now),
            ak_name,
            key_name,
            key_version,
            names,
            key_scope(key_name),
        )
        inputs = _Inputs(tenant, key_name, key_version, sqlite_inputs, sqlite=True)
    if nonce is None:
        await refuse_unconsumed(session, tenant.id, challenge_id)
    ak = None if ak_name is None else EnrolledAk(ak_name, None if ak_public is None else bytes(ak_public))
    return FirstReads(
        bytes(nonce),
        ak,
        inputs,
        SetsReadAhead(tenant.id, key_name, names, tuple(sets)),
        KeyLimitRead(key_scope(key_name), limit is not None, None if limit is None else limit[0]),
    )


def sqlite_first_reads(
    conn: sqlite3.Connection,
    tenant: str,
    challenge: str,
    at: str,
    ak_name: str | None,
    key_name: str,
    key_version: int | None,
    set_names: tuple[str, ...],
    limit_scope: str,
) -> tuple[bytes | None, bytes | None, dict[str, Any], list[SetRow], tuple[int | None] | None]:
    """The same reads on SQLite, in the same order (times and UUIDs as SQLite stores them)."""
    used = conn.execute(SQLITE_CONSUME, (at, tenant, challenge, at)).fetchone()
    ak = None if ak_name is None else conn.execute(SQLITE_TRUSTED_AK, (tenant, ak_name)).fetchone()
    inputs = sqlite_release_inputs(conn, tenant, key_name, key_version)
    sets: list[SetRow] = []
    if set_names:
        sql = sqlite_reference_sets_sql(len(set_names))
        sets = [tuple(r) for r in conn.execute(sql, (tenant, *set_names, tenant)).fetchall()]
    limit = conn.execute(SQLITE_KEY_LIMIT, (tenant, limit_scope)).fetchone()
    return (
        None if used is None else used[0],
        None if ak is None else ak[0],
        inputs,
        sets,
        None if limit is None else (limit[0],),
    )


SQLITE_KEY_LIMIT = "SELECT max_releases FROM release_limits WHERE tenant_id = ? AND scope = ?"


def _named_ak(evidence: Any) -> str | None:
    """The AK Name a TPM evidence document gives (as the TPM verifier reads it), or None. Composite
    evidence (a VM with GPUs) names its VM's AK at the top level too."""
    if not isinstance(evidence, Mapping) or evidence.get("tee") != TEE_TPM:
        return None
    name = evidence.get("ak_name")
    return name if isinstance(name, str) else None
