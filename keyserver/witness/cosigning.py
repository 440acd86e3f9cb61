"""The keyserver's cosigning stage: its witnesses cosign a tenant's committed checkpoint before a release's
receipt is handed out.

Per tenant there is at most one *round* in flight. A round reads the latest committed head of the
tenant's log (whatever batch of releases made it), asks every configured witness at once
(:class:`keyserver.witness.client.WitnessClient`, each bounded by the witness timeout, a 409 "old size"
answered with a consistency proof from that size), stops as soon as ``m`` answers verify under the keys
the tenant configured (a slow witness does not slow every release), and keeps that checkpoint as
*cosigned*. A release whose entry is at index ``i``
waits — at most the cosigning wait — for a cosigned checkpoint of size ``> i``; releases that arrive
while a round runs are covered by the next one, so one round serves however many releases committed in
the meantime, independently of how the release transaction itself is batched.

The receipt then carries that checkpoint as one C2SP signed note (the log's signature line, then the
cosignature lines) and an inclusion proof against *that* checkpoint (it may be larger than the tree the
release's own transaction made). When no cosigned checkpoint comes in time, the tenant's failure mode
decides (:mod:`keyserver.witness.tenant_config`): ``refuse`` turns a grant into 503 ``unavailable``
with no key; ``release-weak`` releases with the receipt as it is.

Each process has its own stage; several processes (or replicas) of one keyserver ask the same witnesses
with heads of one log, and a witness that is ahead of a process's head answers 409 — the next round
reads the newer head and catches up.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import httpx

from audit.checkpoint import Checkpoint, parse_signed_checkpoint
from keyserver.db.models import Tenant
from keyserver.db.session import Database, Scope
from keyserver.errors import ConfigurationError
from keyserver.releaselog.store import ReleaseLog
from keyserver.witness.client import (
    ProofSource,
    WitnessClient,
    WitnessEndpoint,
    WitnessOutcome,
    WitnessUnavailable,
)
from keyserver.witness.outbound import OutboundRefused, WitnessOutbound
from keyserver.witness.tenant_config import REFUSE, WitnessConfig, load_config, record_cosigned

if TYPE_CHECKING:
    from keyserver.release import Outcome

__all__ = ["QUORUM_UNAVAILABLE", "CosignedHead", "CosigningStage", "shielded_proofs"]

QUORUM_UNAVAILABLE = "witness-quorum-unavailable"
log = logging.getLogger("keyserver.witness.cosigning")
# After a round without a quorum, the next waits this long: witnesses that are down are not hammered.
_RETRY_PAUSE_S = 0.2
# How long a tenant's witness configuration is reused before it is read again (another process's change
# is seen within this; this process's own changes at once, see CosigningStage.forget).
_CONFIG_TTL_S = 2.0


@dataclass(frozen=True)
class CosignedHead:
    """A checkpoint of the tenant's log with its log signature and at least ``m`` verified cosignatures."""

    size: int
    note: str
    cosigned_by: tuple[str, ...]


@dataclass
class _TenantStage:
    best: CosignedHead | None = None
    wanted: int = 0  # the largest tree size a waiting release needs
    waiting: int = 0
    round: asyncio.Task[None] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    failures: dict[str, str] = field(default_factory=dict)
    # Bumped when the tenant's witnesses change: a round asked under the old list keeps nothing.
    generation: int = 0

    def covers(self, size: int) -> bool:
        return self.best is not None and self.best.size >= size

    def notify(self) -> None:
        self.changed.set()
        self.changed = asyncio.Event()


class CosigningStage:
    def __init__(
        self,
        db: Database,
        release_log: ReleaseLog,
        http: httpx.AsyncClient,
        *,
        witness_timeout_s: float,
        wait_s: float,
        outbound: WitnessOutbound,
    ) -> None:
        for name, value in (("witness timeout", witness_timeout_s), ("cosigning wait", wait_s)):
            if not 0 < value < 3600:  # also refuses NaN
                raise ConfigurationError(f"the {name} must be between 0 and 3600 seconds, not {value}")
        self._db, self._log = db, release_log
        self._client = WitnessClient(http, timeout=witness_timeout_s)
        self._witness_timeout_s = witness_timeout_s
        self._wait_s = wait_s
        self._outbound = outbound
        self._stages: dict[uuid.UUID, _TenantStage] = {}
        self._configs: dict[uuid.UUID, tuple[float, WitnessConfig | None]] = {}

    # --- what a release calls ------------------------------------------------------------------------

    async def apply(self, tenant: Tenant, outcome: Outcome, config: WitnessConfig | None) -> Outcome:
        """``outcome`` with a cosigned receipt, or as the tenant's failure mode says when none comes in time.

        Called after the release's transaction committed, with the configuration :meth:`config` gave
        before it (so that a tenant without witnesses needs nothing of the database after its commit);
        without witnesses the outcome passes through as is.
        """
        if config is None:
            return outcome
        receipt = outcome.receipt
        head = await self.wait_for(tenant, receipt.log_index + 1)
        if head is not None:
            async with self._db.transaction(Scope.for_tenant(tenant.id)) as session:
                proof = await self._log.inclusion_proof(session, tenant, receipt.log_index, head.size)
            cosigned = replace(receipt, tree_size=head.size, checkpoint=head.note, inclusion_proof=proof)
            return replace(outcome, receipt=cosigned)
        stage = self._stage(tenant.id)
        # Names only: the caller may be anyone, and a witness's answer is not for them (the log has it).
        missing = ", ".join(sorted(stage.failures)) or "no round finished"
        detail = (
            f"fewer than {config.quorum} of {len(config.witnesses)} witnesses cosigned the log within"
            f" {self._wait_s:g} s (not cosigned by: {missing})"
        )
        log.warning(
            "witness quorum not reached",
            extra={
                "fields": {
                    "tenant": tenant.name,
                    "log_index": receipt.log_index,
                    "granted": outcome.granted,
                    "failure_mode": config.failure_mode,
                    "failures": dict(stage.failures),
                }
            },
        )
        if outcome.granted and config.failure_mode == REFUSE:
            # The decision entry is committed (a grant), but the key does not leave: 503, no JWE.
            return replace(
                outcome,
                granted=False,
                reason=QUORUM_UNAVAILABLE,
                detail=detail + "; the release is logged but the key was not released",
                jwe=None,
                unavailable=True,
            )
        return outcome

    async def wait_for(self, tenant: Tenant, size: int) -> CosignedHead | None:
        """A cosigned checkpoint of at least ``size`` entries, or None after the cosigning wait."""
        stage = self._stage(tenant.id)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._wait_s
        stage.waiting += 1
        try:
            while not stage.covers(size):
                stage.wanted = max(stage.wanted, size)
                if stage.round is None:
                    stage.round = asyncio.create_task(self._rounds(tenant, stage))
                changed = stage.changed
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return None
                try:
                    await asyncio.wait_for(changed.wait(), remaining)
                except TimeoutError:
                    return None if not stage.covers(size) else stage.best
            return stage.best
        finally:
            stage.waiting -= 1

    # --- configuration -------------------------------------------------------------------------------

    async def config(self, tenant: Tenant) -> WitnessConfig | None:
        cached = self._configs.get(tenant.id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        async with self._db.transaction(Scope.for_tenant(tenant.id)) as session:
            config = await load_config(session, tenant.id)
        self._configs[tenant.id] = (time.monotonic() + _CONFIG_TTL_S, config)
        return config

    def forget(self, tenant_id: uuid.UUID) -> None:
        """The configuration changed here: read it again, drop what the old witnesses cosigned."""
        self._configs.pop(tenant_id, None)
        stage = self._stages.get(tenant_id)
        if stage is not None:
            stage.best = None
            stage.generation += 1

    # --- rounds --------------------------------------------------------------------------------------

    def _stage(self, tenant_id: uuid.UUID) -> _TenantStage:
        return self._stages.setdefault(tenant_id, _TenantStage())

    async def _rounds(self, tenant: Tenant, stage: _TenantStage) -> None:
        try:
            while stage.waiting > 0 and not stage.covers(stage.wanted):
                config = await self.config(tenant)
                if config is None:
                    return
                reached = await self._round(tenant, stage, config)
                stage.notify()
                if not reached:
                    await asyncio.sleep(_RETRY_PAUSE_S)
        except Exception:
            # A round never takes a release down with it: the waiters time out into the failure mode.
            log.exception("cosigning round failed", extra={"fields": {"tenant": tenant.name}})
        finally:
            stage.round = None
            stage.notify()

    async def _round(self, tenant: Tenant, stage: _TenantStage, config: WitnessConfig) -> bool:
        scope = Scope.for_tenant(tenant.id)
        generation = stage.generation
        async with self._db.transaction(scope) as session:
            head = await self._log.head(session, tenant)
            note, size = head.checkpoint, head.size
        checkpoint, _ = parse_signed_checkpoint(note)

        async def consistency(old: int, new: int) -> list[bytes]:
            async with self._db.transaction(scope) as session:
                return await self._log.consistency_proof(session, tenant, old, new)

        proofs = shielded_proofs(consistency)

        endpoints = [WitnessEndpoint(w.key, w.url) for w in config.witnesses]
        outcome = await self._ask(endpoints, note, checkpoint, proofs, config.quorum)
        stage.failures = dict(outcome.failures)
        if outcome.failures:
            log.info(
                "witnesses did not cosign",
                extra={"fields": {"tenant": tenant.name, "size": size, "failures": outcome.failures}},
            )
        if outcome.cosigned_by < config.quorum or generation != stage.generation:
            return False
        names = tuple(line[2:].split(" ", 1)[0] for line in outcome.lines)
        cosigned = CosignedHead(size, note + "".join(outcome.lines), names)
        # Kept for auditors (GET …/log/checkpoint/cosigned) before any receipt carries it.
        async with self._db.transaction(scope) as session:
            await record_cosigned(session, tenant.id, size, cosigned.note)
        if stage.best is None or size > stage.best.size:
            stage.best = cosigned
        return True

    async def _ask(
        self,
        endpoints: Sequence[WitnessEndpoint],
        note: str,
        checkpoint: Checkpoint,
        proofs: ProofSource,
        quorum: int,
    ) -> WitnessOutcome:
        """Ask every witness at once; done when ``quorum`` verified cosignatures are in (the others are
        cancelled: a slow witness must not slow every release) or every witness answered or timed out."""

        async def one(witness: WitnessEndpoint) -> tuple[str, str | None, str | None]:
            try:
                await self._outbound.check_resolved(witness.url)
            except OutboundRefused as exc:
                return witness.key.name, None, str(exc)
            try:
                line = await asyncio.wait_for(
                    self._client.cosign(witness, note, checkpoint, proofs), self._witness_timeout_s
                )
            except TimeoutError:
                return witness.key.name, None, f"no answer within {self._witness_timeout_s:g} s"
            except WitnessUnavailable as exc:
                return witness.key.name, None, str(exc)
            return witness.key.name, line, None

        outcome = WitnessOutcome()
        pending = {asyncio.create_task(one(w)) for w in endpoints}
        try:
            while pending and outcome.cosigned_by < quorum:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    name, line, failure = task.result()
                    if line is not None:
                        outcome.lines.append(line)
                    else:
                        outcome.failures[name] = failure or "unknown failure"
        finally:
            for task in pending:
                task.cancel()
        return outcome


def shielded_proofs(read: Callable[[int, int], Awaitable[list[bytes]]]) -> ProofSource:
    """``read`` as a proof source whose reads are never cancelled half-way, one read per (old, new).

    A witness's request is cancelled once the quorum is in (or at its timeout); a database transaction
    cancelled half-way would leave its connection — on SQLite, the write lock — held. Shielded, the read
    finishes (and its transaction ends) whoever stops waiting for it. Witnesses at the same size share it.
    """
    started: dict[tuple[int, int], asyncio.Task[list[bytes]]] = {}

    async def proofs(old: int, new: int) -> Sequence[bytes]:
        if (old, new) not in started:
            task = asyncio.ensure_future(read(old, new))
            task.add_done_callback(_retrieve)
            started[(old, new)] = task
        return await asyncio.shield(started[(old, new)])

    return proofs


def _retrieve(task: asyncio.Task[list[bytes]]) -> None:
    """Collect the outcome of a proof read whose waiters were all cancelled (else asyncio reports it)."""
    if not task.cancelled():
        task.exception()
