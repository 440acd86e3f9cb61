"""Group commit of release-log appends: one transaction, one head lock, one checkpoint per batch.

Releases for the same tenant that arrive while that tenant's previous batch is being written queue up;
the next batch takes up to ``max_batch`` of them (after waiting at most ``max_wait_s`` for more, 0 by
default: a batch is whatever queued during the previous one, so a lone release never waits). A batch runs
in ONE database transaction under the tenant's scope (row-level security as before):

1. each member decides, in two stages around one step shared by the batch: in turn, each prepares
   (challenge consumed, evidence verified, key and policy read); then the shared step runs once for all
   of them (their policy evaluations, in one exchange with one evaluation process); then, in turn, each
   finishes (appraisal, grant, key wrapped, its log entry built) — with no SAVEPOINT (two statements a
   member) unless the batch is being decided again, when each member runs both stages, and its own
   shared step, in its savepoint before the next begins;
2. the head is taken once (``SELECT … FOR UPDATE``) and all decided entries are appended in order;
3. ONE checkpoint is signed for the new size; each member's inclusion proof is made against it;
4. the transaction commits;
5. each member is answered with its own entry and proof (and, with witnesses configured, then waits in
   the tenant's cosigning stage, keyserver/witness/cosigning.py, which serves a whole batch with one
   round: it cosigns the latest committed head).

Failure semantics (docs/release-log.md, "Group commit"):

- A member's ordinary refusals (bad evidence, policy, backend unavailable, budget) are not failures:
  they are decided as a *denied* entry, exactly as without batching.
- A member that raises anything else (a bug, an unexpected exception from a verifier) aborts the pass: the
  transaction rolls back whole (nothing of anyone's is written), that member gets its exception, and the
  batch is decided again without it, each member then in its own SAVEPOINT, so that a further failure
  costs only itself: its challenge is not used, it has no entry; the others go on. No batch is decided
  more than twice, whatever its members do.
- A database failure (the kinds ``Database.transaction`` turns into 503) aborts the whole batch: the
  transaction rolls back, nobody's entry or challenge is written, no key leaves, every member gets 503.
- A crash of the process before the commit leaves nothing (the transaction dies with the connection);
  after the commit, every member's entry is durable, and keys that had not yet been answered are lost
  with the process (never sent without their entry).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.db.models import Tenant
from keyserver.db.session import Database, Scope
from keyserver.faults import ReleaseStep
from keyserver.releaselog.store import Appended, ReleaseLog

T = TypeVar("T")
T_co = TypeVar("T_co", covariant=True)
R = TypeVar("R")

StepHook = Callable[[ReleaseStep, AsyncSession | None], Awaitable[None]]


class Decide(Protocol[T_co]):
    """A member's decision, made inside the batch's transaction in two stages around the batch's shared
    step; it ends with the log entry to append and whatever the member answers with once that entry is
    committed."""

    async def prepare(self, session: AsyncSession) -> Any:
        """Up to the shared step: this member's input to it, or None if it needs none (already refused)."""
        ...

    async def finish(self, session: AsyncSession, shared: Any) -> tuple[dict[str, Any], T_co]:
        """From the shared step's result for this member (None if it gave no input) to its entry."""
        ...


# The step a batch's members share: their inputs in, one result per input out (same order), never an
# exception for one input's sake (a result says it failed).
SharedStep = Callable[[Tenant, list[Any]], Awaitable[list[Any]]]

# Failures of the database rather than of a member: they abort the whole batch (see module docstring).
_DATABASE_FAILURES = (DBAPIError, TimeoutError, OSError)


@dataclass(frozen=True)
class BatchLimits:
    """How large a batch may grow, how long its first member may wait for company, and how many of one
    tenant's batches may be in flight at once in this process (``in_flight``)."""

    max_batch: int = 64
    max_wait_s: float = 0.0
    # More than one: a tenant's next batch decides its members (verification, appraisal, wrapping)
    # while the previous one is still deciding or committing; the batches then take the log head one
    # after the other. With one, a busy tenant's releases are decided one at a time however many
    # arrive, while every other tenant's run side by side: measured, a hot tenant beside a crowd of
    # other tenants got a fifth of its share (docs/performance.md, "Scale-out").
    in_flight: int = 1

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError("a batch holds at least one release")
        if not 0 <= self.max_wait_s <= 1:
            raise ValueError("a batch waits between 0 and 1 s for more members")
        if not 1 <= self.in_flight <= 64:
            raise ValueError("1 to 64 batches of a tenant may be in flight at once")


@dataclass(frozen=True)
class Committed(Generic[T]):
    """One member's share of a committed batch: its value, its entry's index and inclusion proof."""

    value: T
    appended: Appended  # the whole batch's append: size and checkpoint cover every member
    index: int
    proof: list[bytes]
    entry: bytes
    batch_size: int


@dataclass
class _Member:
    decide: Decide[Any]
    future: asyncio.Future[Committed[Any]]

    def fail(self, exc: BaseException) -> None:
        if not self.future.done():
            self.future.set_exception(exc)


@dataclass
class _TenantQueue:
    pending: list[_Member] = field(default_factory=list)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


class GroupCommitter:
    def __init__(
        self, db: Database, log: ReleaseLog, limits: BatchLimits, step: StepHook, shared: SharedStep
    ) -> None:
        self.db, self.log, self.limits, self._step, self._shared = db, log, limits, step, shared
        self._queues: dict[uuid.UUID, _TenantQueue] = {}
        # Counters for tests and the benchmark: how many batches committed, and how many members.
        self.batches = 0
        self.members = 0

    async def submit(self, tenant: Tenant, decide: Decide[T]) -> Committed[T]:
        """Decide and log one release as part of the tenant's next batch; answer once it committed."""
        member = _Member(decide, asyncio.get_running_loop().create_future())
        # If the caller is gone (its task cancelled) nobody reads the result: mark a failure as seen so
        # asyncio does not report it as never retrieved (the batch's own error is logged by the others).
        member.future.add_done_callback(_mark_seen)
        queue = self._queues.setdefault(tenant.id, _TenantQueue())
        queue.pending.append(member)
        if len(queue.tasks) < self.limits.in_flight:
            # A batch runs in a task of its own: a caller that goes away (client disconnect) must not
            # cancel a transaction that carries other releases.
            queue.tasks.add(asyncio.create_task(self._drain(tenant, queue)))
        result: Committed[T] = await asyncio.shield(member.future)
        return result

    def waiting(self, tenant_id: uuid.UUID) -> int:
        """How many releases of this tenant are queued for its next batch (not the running one)."""
        queue = self._queues.get(tenant_id)
        return 0 if queue is None else len(queue.pending)

    async def _drain(self, tenant: Tenant, queue: _TenantQueue) -> None:
        try:
            while queue.pending:
                if self.limits.max_wait_s > 0 and len(queue.pending) < self.limits.max_batch:
                    await asyncio.sleep(self.limits.max_wait_s)
                    if not queue.pending:
                        break  # another of this tenant's tasks took them meanwhile
                batch = queue.pending[: self.limits.max_batch]
                del queue.pending[: self.limits.max_batch]
                await self._run(tenant, batch)
        finally:
            current = asyncio.current_task()
            if current is not None:
                queue.tasks.discard(current)
            if not queue.tasks:
                if queue.pending:  # only when the last task was cancelled (shutdown): nobody will run them
                    for member in queue.pending:
                        member.fail(asyncio.CancelledError())
                    queue.pending.clear()
                if self._queues.get(tenant.id) is queue:
                    del self._queues[tenant.id]

    async def _run(self, tenant: Tenant, batch: Sequence[_Member]) -> None:
        members = list(batch)
        # First without savepoints (each costs a member two statements). A member that raises then takes
        # the transaction down with it: it gets its exception, and the batch is decided again without it,
        # each member in its own savepoint this time, so that no batch is decided more than twice.
        isolated = False
        while True:
            try:
                committed = await self._commit(tenant, members, isolated)
            except _MemberRaised as raised:
                raised.member.fail(raised.error)
                members = [member for member in members if member is not raised.member]
                if not members:
                    return
                isolated = True
                continue
            except BaseException as exc:
                for member in members:
                    member.fail(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            break
        if committed is None:
            return
        decided, appended, proofs = committed
        self.batches += 1
        self.members += len(decided)
        for offset, (member, _entry, value) in enumerate(decided):
            index = appended.first_index + offset
            member.future.set_result(
                Committed(value, appended, index, proofs[offset], appended.entries[offset], len(decided))
            )

    async def _commit(
        self, tenant: Tenant, members: Sequence[_Member], isolated: bool
    ) -> tuple[list[tuple[_Member, dict[str, Any], Any]], Appended, list[list[bytes]]] | None:
        """One pass over ``members`` in one transaction, committed; None if none of them was decided.
        ``isolated``: each member in its own savepoint (a member that raises is left out and the others go
        on); otherwise a member that raises aborts the pass as :class:`_MemberRaised`."""
        decided: list[tuple[_Member, dict[str, Any], Any]] = []
        async with self.db.transaction(Scope.for_tenant(tenant.id)) as session:
            if not isolated:
                # Each stage of every member in turn, the shared step once between them.
                inputs = [await _as_member(member, member.decide.prepare(session)) for member in members]
                wanted = [i for i, given in enumerate(inputs) if given is not None]
                results = await self._shared(tenant, [inputs[i] for i in wanted]) if wanted else []
                shared = dict(zip(wanted, results, strict=True))
                for i, member in enumerate(members):
                    entry, value = await _as_member(member, member.decide.finish(session, shared.get(i)))
                    decided.append((member, entry, value))
            else:
                # A lone member needs no savepoint: its failure rolls the transaction back whole.
                in_savepoint = len(members) > 1
                for member in members:
                    try:
                        if in_savepoint:
                            async with session.begin_nested():
                                entry, value = await self._decide_alone(session, tenant, member)
                        else:
                            entry, value = await self._decide_alone(session, tenant, member)
                    except _DATABASE_FAILURES:
                        raise  # the whole batch: the transaction is gone or unusable
                    except Exception as exc:  # this member's alone (module docstring)
                        if not in_savepoint:
                            raise _MemberRaised(member, exc) from exc  # out of the block: all rolled back
                        member.fail(exc)
                        continue
                    decided.append((member, entry, value))
            if not decided:
                return None
            appended = await self.log.append(session, tenant, [entry for _, entry, _ in decided])
            await self._step(ReleaseStep.LOG_APPENDED, session)
            proofs = [
                await self.log.inclusion_proof_of_appended(
                    session, tenant, appended, appended.first_index + offset
                )
                for offset in range(len(decided))
            ]
            await self._step(ReleaseStep.BEFORE_COMMIT, session)
        # Committed: every member's entry is durable. Only now may keys leave.
        await self._step(ReleaseStep.COMMITTED, None)
        return decided, appended, proofs

    async def _decide_alone(
        self, session: AsyncSession, tenant: Tenant, member: _Member
    ) -> tuple[dict[str, Any], Any]:
        given = await member.decide.prepare(session)
        shared = None if given is None else (await self._shared(tenant, [given]))[0]
        return await member.decide.finish(session, shared)


async def _as_member(member: _Member, stage: Awaitable[R]) -> R:
    """A stage of ``member`` in a pass without savepoints: what it raises aborts the pass as the member's
    (:class:`_MemberRaised`), unless it is the database's (the whole batch's)."""
    try:
        return await stage
    except _DATABASE_FAILURES:
        raise
    except Exception as exc:
        raise _MemberRaised(member, exc) from exc


class _MemberRaised(Exception):
    """A member raised (not a refusal, not the database) in a pass without savepoints."""

    def __init__(self, member: _Member, error: Exception) -> None:
        super().__init__(str(error))
        self.member, self.error = member, error


def _mark_seen(future: asyncio.Future[Committed[Any]]) -> None:
    if not future.cancelled():
        future.exception()
