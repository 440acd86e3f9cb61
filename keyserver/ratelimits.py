"""Release limits: a tenant's attempts and a key's grants, counted per fixed window in the database.

Two budgets, each ``max_releases`` per fixed window of ``window_seconds`` (windows start at multiples of
the window length in Unix time), set by the tenant admin or, where it set none, by the operator's
defaults (``KEYSERVER_RELEASE_LIMIT_TENANT``, ``KEYSERVER_RELEASE_LIMIT_KEY``):

* **tenant** (scope ``tenant``): every release and attestation request that reaches the tenant, before
  anything else is done for it (in a short transaction of its own, committed without waiting for its WAL
  flush: see ``ReleaseLimiter.admit_attempt``). A refusal is a 429 with ``Retry-After``; it is *not*
  written to the release log and does not consume the challenge. Loaders hold no credential, so anyone
  can send release requests: logging refusals would let a flood grow the tenant's append-only log
  without bound. This budget is what bounds it: at most ``max_releases`` log entries per window from
  release requests.
* **key** (scope ``key/<name>``): the releases of one key that the policy granted. Checked after the
  appraisal and before the key is unwrapped, counted in the transaction that logs the grant, so it is
  spent if and only if the key left (with its entry committed). A refusal is a 429 with ``Retry-After``
  and *is* logged (reason ``release-budget-exhausted``, the challenge consumed): only evidence that
  passed verification and the policy gets there, so the entries it adds are bounded by the tenant
  budget, and an auditor must see that a trusted environment asked for more than the budget allows.

Counting is one atomic statement shared by every worker and replica — an upsert that increments the
window's counter only while it is below the limit (``INSERT … ON CONFLICT DO UPDATE … WHERE count <
max RETURNING count``): no read-then-write race, and a refused request writes nothing. Fixed windows
allow up to twice the budget across a window boundary; docs/security.md says so.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy import bindparam, delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.challenges import new_challenge, purge_before
from keyserver.config import Budget, Settings
from keyserver.db import hot
from keyserver.db.models import Challenge, Key, ReleaseCounter, ReleaseLimit, Tenant
from keyserver.db.session import Database
from keyserver.db.types import utcnow
from keyserver.db.upsert import set_row
from keyserver.errors import EvidenceError, KeyserverError, NotFound
from keyserver.releaselog import records
from keyserver.releaselog.store import ReleaseLog

TENANT = "tenant"
# Challenge issuance (and TPM enrolments begun), counted like attempts under the operator's
# KEYSERVER_CHALLENGE_LIMIT.
CHALLENGES = "challenges"
RELEASE_LIMIT_SET = "release-limit-set"
RELEASE_LIMIT_REMOVED = "release-limit-removed"
BUDGET_EXHAUSTED = "release-budget-exhausted"

log = logging.getLogger("keyserver.ratelimits")

REFUSALS = Counter(
    "keyserver_release_limit_refusals",
    "Requests refused by a release limit, by the limit's kind (tenant attempts, key grants)",
    ["limit"],
)


def key_scope(name: str) -> str:
    return f"key/{name}"


@dataclass(frozen=True)
class KeyLimitRead:
    """A key's ``release_limits`` row as read: for which scope, whether the tenant set one, and its
    maximum (None: the tenant set the key unlimited)."""

    scope: str
    row_found: bool
    max_releases: int | None

    def unlimited(self, default: Budget | None) -> bool:
        """No budget applies: the tenant's own limit is unlimited, or it set none and so has the
        operator's default, which is none."""
        return self.max_releases is None if self.row_found else default is None


class RateLimited(KeyserverError):
    """The tenant's attempt budget for this window is spent (HTTP 429, ``Retry-After``)."""

    code = "rate-limited"
    http_status = 429
    title = "Too many requests"

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ReleaseBudgetExhausted(EvidenceError):
    """The key's grant budget for this window is spent: a logged denial, HTTP 429 with ``Retry-After``."""

    http_status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(BUDGET_EXHAUSTED, message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class Limit:
    """The limit in force for one scope: ``budget`` None means unlimited; ``source`` says who set it."""

    scope: str
    budget: Budget | None
    source: str  # "tenant" (set by the tenant admin) or "default" (the operator's configuration)

    @classmethod
    def set_by_tenant(cls, row: ReleaseLimit) -> Limit:
        """The limit a tenant admin stored (a null ``max_releases`` is an explicit "no limit")."""
        budget = None if row.max_releases is None else Budget(row.max_releases, row.window_seconds)
        return cls(row.scope, budget, "tenant")


# --- the tenant admin's settings ---------------------------------------------------------------------


def _default(settings: Settings, scope: str) -> Budget | None:
    return settings.release_limit_tenant if scope == TENANT else settings.release_limit_key


async def effective_limit(
    session: AsyncSession, settings: Settings, tenant_id: uuid.UUID, scope: str
) -> Limit:
    fast = await hot.fetch(session, _PG_LIMIT, tenant_id, scope)
    if fast is not None:  # PostgreSQL (keyserver/db/hot.py): every release and challenge reads this
        if not fast:
            return Limit(scope, _default(settings, scope), "default")
        stored = fast[0]
        budget = (
            None
            if stored["max_releases"] is None
            else Budget(stored["max_releases"], stored["window_seconds"])
        )
        return Limit(scope, budget, "tenant")
    row = await session.get(ReleaseLimit, (tenant_id, scope))
    if row is None:
        return Limit(scope, _default(settings, scope), "default")
    return Limit.set_by_tenant(row)


_PG_LIMIT = "SELECT max_releases, window_seconds FROM release_limits WHERE tenant_id = $1 AND scope = $2"


async def list_limits(session: AsyncSession, tenant_id: uuid.UUID) -> list[ReleaseLimit]:
    query = select(ReleaseLimit).where(ReleaseLimit.tenant_id == tenant_id).order_by(ReleaseLimit.scope)
    return list((await session.execute(query)).scalars())


async def _check_key_exists(session: AsyncSession, tenant_id: uuid.UUID, scope: str) -> None:
    if scope == TENANT:
        return
    name = scope.removeprefix("key/")
    if await session.get(Key, (tenant_id, name)) is None:
        raise NotFound(f"no key named {name!r} in this tenant")


async def set_limit(
    session: AsyncSession,
    release_log: ReleaseLog,
    tenant: Tenant,
    scope: str,
    max_releases: int | None,
    window_seconds: int,
    *,
    principal: uuid.UUID,
) -> ReleaseLimit:
    """Set (or replace) the limit of ``scope``; ``max_releases`` None means unlimited. Logged."""
    if max_releases is not None:
        Budget(max_releases, window_seconds)  # the same bounds as the configuration
    await _check_key_exists(session, tenant.id, scope)
    values = {
        "max_releases": max_releases,
        "window_seconds": window_seconds,
        "updated_at": utcnow(),
        "updated_by": f"token:{principal}",
    }
    row = await set_row(session, ReleaseLimit, {"tenant_id": tenant.id, "scope": scope}, values)
    entry = records.record(
        RELEASE_LIMIT_SET,
        principal=f"token:{principal}",
        scope=scope,
        max_releases=max_releases,
        window_seconds=window_seconds,
    )
    await release_log.append(session, tenant, [entry])
    return row


async def remove_limit(
    session: AsyncSession, release_log: ReleaseLog, tenant: Tenant, scope: str, *, principal: uuid.UUID
) -> None:
    """Back to the operator's default for ``scope``. Logged."""
    row = await session.get(ReleaseLimit, (tenant.id, scope))
    if row is None:
        raise NotFound(f"this tenant set no limit for {scope}; the default applies already")
    await session.delete(row)
    await session.flush()
    entry = records.record(RELEASE_LIMIT_REMOVED, principal=f"token:{principal}", scope=scope)
    await release_log.append(session, tenant, [entry])


# --- counting ----------------------------------------------------------------------------------------


def _count_one(insert: Any) -> Any:
    """The counting upsert for one dialect, built once: values and the limit are bound parameters, named
    apart from the columns (SQLAlchemy reserves those for an INSERT's own)."""
    table = ReleaseCounter.__table__
    return (
        insert(ReleaseCounter)
        .values(
            tenant_id=bindparam("b_tenant_id"),
            scope=bindparam("b_scope"),
            window_seconds=bindparam("b_window_seconds"),
            window_start=bindparam("b_window_start"),
            count=1,
        )
        .on_conflict_do_update(
            index_elements=[table.c.tenant_id, table.c.scope, table.c.window_seconds, table.c.window_start],
            set_={"count": table.c.count + 1},
            where=table.c.count < bindparam("max_releases"),
        )
        .returning(table.c.count)
    )


_COUNT_ONE = {"postgresql": _count_one(postgresql.insert), "sqlite": _count_one(sqlite.insert)}


def window_start_of(seconds: float, window_seconds: int) -> int:
    """The start (Unix seconds) of the fixed window holding ``seconds``."""
    return int(seconds) // window_seconds * window_seconds


def seconds_left(seconds: float, window_start: int, window_seconds: int) -> int:
    """Whole seconds until the window ends (``Retry-After``), at least 1."""
    return max(1, math.ceil(window_start + window_seconds - seconds))


async def take(
    session: AsyncSession, tenant_id: uuid.UUID, scope: str, budget: Budget, now: datetime
) -> int | None:
    """Count one against ``budget`` in the current window; ``None`` if it fits, else the seconds until
    the window ends (for ``Retry-After``). One atomic statement: the counter row is locked until the
    caller's transaction ends, and a refusal writes nothing.

    Not on any request path: it is the reference, in the plainest form, for the one-call forms each
    store runs there (PostgreSQL's functions in migrations/versions/0012-0013, SQLite's procedures
    below); tests/test_one_round_trip.py holds them to it."""
    seconds = now.timestamp()
    window_start = window_start_of(seconds, budget.window_seconds)
    values = {
        "b_tenant_id": tenant_id,
        "b_scope": scope,
        "b_window_seconds": budget.window_seconds,
        "b_window_start": window_start,
        "max_releases": budget.max_releases,
    }
    statement = _COUNT_ONE[session.get_bind().dialect.name]
    count = (await session.execute(statement, values)).scalar_one_or_none()
    if count is None:
        return seconds_left(seconds, window_start, budget.window_seconds)
    if count == 1:
        # A new window: the counters of this scope's earlier windows are of no further use.
        await session.execute(
            delete(ReleaseCounter).where(
                ReleaseCounter.tenant_id == tenant_id,
                ReleaseCounter.scope == scope,
                ReleaseCounter.window_start < window_start,
            )
        )
    return None


# --- SQLite: PostgreSQL's functions as procedures run in aiosqlite's thread (keyserver/db/hot.py) ------
#
# The same steps as keyserver_take_limited and keyserver_issue_challenge (migrations/versions/0012-0013),
# in plain sqlite3 statements, in the caller's transaction, one hand-off to the thread for all of them.
# Values come as SQLite stores them (UUIDs as 32 hex digits); every statement names its tenant.

_SQLITE_LIMIT = "SELECT max_releases, window_seconds FROM release_limits WHERE tenant_id = ? AND scope = ?"
_SQLITE_COUNT_ONE = (
    "INSERT INTO release_counters (tenant_id, scope, window_seconds, window_start, count)"
    " VALUES (?, ?, ?, ?, 1)"
    " ON CONFLICT (tenant_id, scope, window_seconds, window_start)"
    " DO UPDATE SET count = count + 1 WHERE count < ?"
    " RETURNING count"
)
_SQLITE_DROP_OLD_WINDOWS = (
    "DELETE FROM release_counters WHERE tenant_id = ? AND scope = ? AND window_start < ?"
)
_SQLITE_PURGE_CHALLENGES = "DELETE FROM challenges WHERE tenant_id = ? AND expires_at < ?"
_SQLITE_INSERT_CHALLENGE = (
    "INSERT INTO challenges (tenant_id, id, nonce, created_at, expires_at, used_at)"
    " VALUES (?, ?, ?, ?, ?, NULL)"
)


def _sqlite_count(
    conn: sqlite3.Connection, tenant: str, scope: str, max_releases: int, window_seconds: int, seconds: float
) -> int | None:
    """``take``'s steps: ``None`` if one more fits the window, else the seconds until it ends."""
    start = window_start_of(seconds, window_seconds)
    counted = conn.execute(_SQLITE_COUNT_ONE, (tenant, scope, window_seconds, start, max_releases)).fetchone()
    if counted is None:
        return seconds_left(seconds, start, window_seconds)
    if counted[0] == 1:
        conn.execute(_SQLITE_DROP_OLD_WINDOWS, (tenant, scope, start))
    return None


def sqlite_take_limited(
    conn: sqlite3.Connection,
    tenant: str,
    scope: str,
    default_max: int | None,
    default_window: int | None,
    seconds: float,
) -> tuple[int | None, int | None, int | None]:
    """keyserver_take_limited: the scope's limit (the tenant's stored one, else the default) and one
    counted against it -> (max_releases, window_seconds, retry_after); (None, None, None) for no limit."""
    stored = conn.execute(_SQLITE_LIMIT, (tenant, scope)).fetchone()
    max_releases, window_seconds = (default_max, default_window) if stored is None else stored
    if max_releases is None or window_seconds is None:
        return None, None, None
    return (
        max_releases,
        window_seconds,
        _sqlite_count(conn, tenant, scope, max_releases, window_seconds, seconds),
    )


def sqlite_issue_challenge(
    conn: sqlite3.Connection,
    tenant: str,
    challenge: tuple[str, bytes, str, str],
    max_releases: int | None,
    window_seconds: int | None,
    seconds: float,
    purge_before: str | None,
) -> int | None:
    """keyserver_issue_challenge: count one challenge (when budgeted), purge the tenant's long-expired
    ones (when due), store the new one -> None, or the seconds until the window ends (nothing written)."""
    if max_releases is not None and window_seconds is not None:
        retry_after = _sqlite_count(conn, tenant, CHALLENGES, max_releases, window_seconds, seconds)
        if retry_after is not None:
            return retry_after
    if purge_before is not None:
        conn.execute(_SQLITE_PURGE_CHALLENGES, (tenant, purge_before))
    conn.execute(_SQLITE_INSERT_CHALLENGE, (tenant, *challenge))
    return None


def _take_limited_args(
    tenant_id: uuid.UUID, scope: str, default: Budget | None, now: datetime
) -> tuple[object, ...]:
    """``sqlite_take_limited``'s arguments after its connection, as SQLite stores the values."""
    return (
        hot.sqlite_uuid(tenant_id),
        scope,
        None if default is None else default.max_releases,
        None if default is None else default.window_seconds,
        now.timestamp(),
    )


async def _sqlite_take_limited(
    session: AsyncSession, tenant_id: uuid.UUID, scope: str, default: Budget | None, now: datetime
) -> tuple[int | None, int | None, int | None]:
    """In the session's transaction (a key's grant, in the release's batch)."""
    return await hot.run_sqlite(
        session, sqlite_take_limited, *_take_limited_args(tenant_id, scope, default, now)
    )


async def sqlite_admit_attempt(
    db: Database, tenant_id: uuid.UUID, default: Budget | None, now: datetime
) -> tuple[int | None, int | None, int | None]:
    """As a transaction of its own (the attempt: ``ReleaseLimiter.admit_attempt``)."""
    taken = await db.call_sqlite(sqlite_take_limited, *_take_limited_args(tenant_id, TENANT, default, now))
    if taken is None:
        raise RuntimeError("the attempt's one-call form for SQLite was asked of another store")
    return taken[0]


# migrations/versions/0013: effective_limit and take of a key's scope in one statement, in the release's
# transaction.
_PG_TAKE_LIMITED = (
    "SELECT max_releases, window_seconds, retry_after FROM keyserver_take_limited($1, $2, $3, $4, $5)"
)
# migrations/versions/0012: effective_limit and take of TENANT in one statement, its own transaction.
_PG_ADMIT_ATTEMPT = (
    "SELECT max_releases, window_seconds, retry_after FROM keyserver_admit_attempt($1, $2, $3, $4)"
)
# migrations/versions/0012: a challenge counted, the long-expired purged and the new one stored, in one
# statement, its own transaction.
_PG_ISSUE_CHALLENGE = "SELECT keyserver_issue_challenge($1, $2, $3, $4, $5, $6, $7, $8, $9)"
# migrations/versions/0012: one counted against a scope's budget, in the caller's transaction (what
# keyserver_issue_challenge counts a challenge with).
_PG_TAKE = "SELECT keyserver_take($1, $2, $3, $4, $5)"


class ReleaseLimiter:
    """What the release path asks: may this attempt proceed (tenant), may this key leave (key)."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db, self.settings = db, settings
        # (tenant, window start) already reported in the service log by this process: a flood is
        # reported once per window, not once per refused request.
        self._reported: set[tuple[uuid.UUID, int]] = set()

    async def admit_attempt(self, tenant: Tenant, now: datetime) -> None:
        """Count one attempt against the tenant's budget (an attempt counts whatever becomes of it);
        ``RateLimited`` when the budget is spent.

        In a short transaction of its own that does not wait for its WAL flush (``durable=False``).
        Its own: the counter row is locked from the upsert to the commit, and counting inside the
        release's batch held that lock for the whole batch, so the batches of two workers (or replicas)
        of one tenant ran one after the other instead of verifying side by side (measured,
        docs/performance.md). Not durable: a counter lost in a server crash lets a flood make a few more
        attempts, and costs nothing else; the release, its challenge and its entry commit durably."""
        default = _default(self.settings, TENANT)
        counted = await self.db.call(
            _PG_ADMIT_ATTEMPT,
            tenant.id,
            None if default is None else default.max_releases,
            None if default is None else default.window_seconds,
            now.timestamp(),
        )
        if counted is not None:  # PostgreSQL: the steps in one round trip (migrations 0012)
            (row,) = counted
            max_releases, window_seconds, retry_after = (
                row["max_releases"],
                row["window_seconds"],
                row["retry_after"],
            )
        else:  # SQLite: the same steps as a transaction of their own, one hand-off to its thread
            max_releases, window_seconds, retry_after = await sqlite_admit_attempt(
                self.db, tenant.id, default, now
            )
        if max_releases is None or window_seconds is None:
            return
        budget = Budget(max_releases, window_seconds)
        if retry_after is None:
            return
        REFUSALS.labels(limit="tenant").inc()
        window = int(now.timestamp()) // budget.window_seconds
        if (tenant.id, window) not in self._reported:
            self._reported = {(t, w) for t, w in self._reported if w >= window} | {(tenant.id, window)}
            log.warning(
                "tenant release limit reached; refusing until the window ends",
                extra={"fields": {"tenant": tenant.name, "retry_after": retry_after}},
            )
        raise RateLimited(
            f"tenant {tenant.name!r} is over its release limit ({budget.max_releases} requests per"
            f" {budget.window_seconds} s); retry after {retry_after} s. The challenge was not used.",
            retry_after,
        )

    async def issue_challenge(self, tenant: Tenant, now: datetime) -> Challenge:
        """A new challenge for ``tenant``, counted against its challenge budget, in one transaction;
        ``RateLimited`` (and nothing written) when the budget of this window is spent."""
        budget = self.settings.challenge_limit
        challenge = new_challenge(tenant.id, now)
        purge = purge_before(tenant.id, now)
        retry_after: int | None
        if self.db.dialect == "sqlite":  # the function's steps as one transaction, one hand-off
            issued = await self.db.call_sqlite(
                sqlite_issue_challenge,
                hot.sqlite_uuid(tenant.id),
                (
                    hot.sqlite_uuid(challenge.id),
                    challenge.nonce,
                    hot.sqlite_time(challenge.created_at),
                    hot.sqlite_time(challenge.expires_at),
                ),
                None if budget is None else budget.max_releases,
                None if budget is None else budget.window_seconds,
                now.timestamp(),
                None if purge is None else hot.sqlite_time(purge),
            )
            assert issued is not None
            retry_after = issued[0]
        else:
            rows = await self.db.call(
                _PG_ISSUE_CHALLENGE,
                tenant.id,
                challenge.id,
                challenge.nonce,
                challenge.created_at,
                challenge.expires_at,
                None if budget is None else budget.max_releases,
                None if budget is None else budget.window_seconds,
                now.timestamp(),
                purge,
            )
            assert rows is not None
            retry_after = rows[0][0]
        if retry_after is None:
            return challenge
        assert budget is not None  # the function refuses only against a budget it was given
        raise self._challenges_spent(tenant, budget, retry_after)

    async def take_challenge(self, session: AsyncSession, tenant: Tenant, now: datetime) -> None:
        """Count one against ``tenant``'s challenge budget in ``session``'s transaction, for something
        other than a challenge that a caller without a token makes the keyserver store (a TPM enrolment
        begun); ``RateLimited`` as ``issue_challenge`` raises it when the budget of this window is spent.

        The same counter and the same counting as a challenge's (PostgreSQL's ``keyserver_take``, SQLite's
        procedure), in the caller's transaction: the count commits with what it paid for, and a refusal,
        or a failure after the count, rolls back with it. The counter row stays locked until that
        transaction ends, so the caller counts after its slow work, just before it writes."""
        budget = self.settings.challenge_limit
        if budget is None:
            return
        counted = await hot.fetch(
            session,
            _PG_TAKE,
            tenant.id,
            CHALLENGES,
            budget.max_releases,
            budget.window_seconds,
            now.timestamp(),
        )
        retry_after: int | None
        if counted is not None:  # PostgreSQL: migrations 0012's function
            retry_after = counted[0][0]
        else:  # SQLite: the same steps, one hand-off to its thread
            retry_after = await hot.run_sqlite(
                session,
                _sqlite_count,
                hot.sqlite_uuid(tenant.id),
                CHALLENGES,
                budget.max_releases,
                budget.window_seconds,
                now.timestamp(),
            )
        if retry_after is not None:
            raise self._challenges_spent(tenant, budget, retry_after)

    @staticmethod
    def _challenges_spent(tenant: Tenant, budget: Budget, retry_after: int) -> RateLimited:
        REFUSALS.labels(limit="challenges").inc()
        return RateLimited(
            f"tenant {tenant.name!r} was issued its {budget.max_releases} challenges (TPM enrolments"
            f" included) for this {budget.window_seconds} s window; retry after {retry_after} s",
            retry_after,
        )

    async def take_grant(
        self,
        session: AsyncSession,
        tenant: Tenant,
        key_name: str,
        now: datetime,
        *,
        limit_read: KeyLimitRead | None = None,
    ) -> None:
        """Count one grant of ``key_name`` in the release's own transaction (spent iff it commits);
        ``ReleaseBudgetExhausted`` when the key's budget is spent.

        ``limit_read``: the key's limit as read earlier in the same transaction (a release's first
        statement, keyserver/release_reads.py). When it shows that no budget applies — no limit set and
        no operator default, or a limit set to unlimited — there is nothing to count and no statement is
        sent (a limit set since then is one set after this release read it, as if it came after)."""
        scope = key_scope(key_name)
        default = _default(self.settings, scope)
        if limit_read is not None and limit_read.scope == scope and limit_read.unlimited(default):
            return
        counted = await hot.fetch(
            session,
            _PG_TAKE_LIMITED,
            tenant.id,
            scope,
            None if default is None else default.max_releases,
            None if default is None else default.window_seconds,
            now.timestamp(),
        )
        if counted is not None:  # PostgreSQL: both steps in one round trip (migrations 0013)
            max_releases, window_seconds, retry_after = counted[0]
        else:  # SQLite: the same steps in one hand-off to its thread
            max_releases, window_seconds, retry_after = await _sqlite_take_limited(
                session, tenant.id, scope, default, now
            )
        budget = None if max_releases is None else Budget(max_releases, window_seconds)
        if retry_after is None or budget is None:
            return
        REFUSALS.labels(limit="key").inc()
        raise ReleaseBudgetExhausted(
            f"key {key_name!r} was released {budget.max_releases} times in this"
            f" {budget.window_seconds} s window, its budget; retry after {retry_after} s",
            retry_after,
        )
