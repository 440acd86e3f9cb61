"""Policy evaluation off the event loop, in worker processes, under a wall-clock deadline.

The CEL runtime holds the GIL while it evaluates (measured: a thread running a 0.5 s evaluation stalls
the event loop for 0.5 s), so a thread pool would not protect other tenants from a slow rule. The static
cost bound (policy/cel.py) is meant to make every accepted rule fast; this is what bounds the damage if
the bound is ever wrong: each evaluation runs in one of ``workers`` child processes, and one that does not
answer within ``deadline_s`` is killed (a process can be; a thread cannot) and replaced, and its release
or dry run is a denial (``evaluation-error``). A tenant may hold at most ``per_tenant`` workers at once,
so with two or more workers another tenant always finds one within one deadline.

A worker receives the stored policy document's bytes (it parses and compiles them itself, once per
document: compiled CEL programs cannot cross a process boundary) with the claims, the reference-value
sets and the time, and sends back the :class:`~policy.evaluate.Decision`. A release batch's members are
sent together (:meth:`EvaluationPool.evaluate_all`): one message for the batch, since the exchange,
not the evaluation, is most of what one costs; the worker answers each job as it finishes it, and each
answer is held to the deadline on its own, so that a slow rule denies only the release under it (the
worker is killed and the jobs after it are evaluated anew).

Workers are started with ``spawn`` (the service process has threads; forking it is unsafe), which imports
the parent's main module again in each worker: an entry point must guard its start with
``if __name__ == "__main__"`` (keyserver's own, uvicorn's and pytest's do). The parent sends a job and reads
its decision on the event loop itself (no thread per evaluation). Measured (``python -m bench --only
evaluation``, one evaluation at a time): ~0.19 ms of the parent's CPU and ~0.17 ms of the worker's per
evaluation, against ~0.29 ms of the parent's through a thread before and ~0.06 ms to evaluate in process
(docs/performance.md, "Fourth pass").
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import multiprocessing
import os
import socket
import struct
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.reduction import ForkingPickler
from types import MappingProxyType
from typing import Any

from policy.cel import engine
from policy.document import Policy, PolicyError, ReferenceValueSet, parse_policy
from policy.evaluate import EVALUATION_ERROR, Decision, RuleResult, evaluate

log = logging.getLogger(__name__)

DEFAULT_WORKERS = 2
DEFAULT_DEADLINE_S = 2.0
# Starting a worker (a new interpreter importing the CEL runtime) is not an evaluation: it has its own,
# generous, bound, and does not count against the deadline.
START_TIMEOUT_S = 30.0
READY = "ready"


def _mappingproxy(items: dict[Any, Any]) -> MappingProxyType[Any, Any]:
    return MappingProxyType(items)


def _reduce_mappingproxy(m: MappingProxyType[Any, Any]) -> tuple[Any, tuple[dict[Any, Any]]]:
    return _mappingproxy, (dict(m),)


# Parsed reference values and policy examples are read-only mappings; they cross to the worker as such.
ForkingPickler.register(MappingProxyType, _reduce_mappingproxy)


@dataclass(frozen=True)
class Request:
    """What one evaluation needs: the stored policy document, the claims, the sets it names, the time."""

    document: bytes
    claims: Mapping[str, Any]
    sets: Sequence[ReferenceValueSet]
    now: datetime


@dataclass(frozen=True)
class Job:
    document: bytes
    claims: dict[str, Any]
    sets: tuple[ReferenceValueSet, ...]
    now: datetime


def worker_main(conn: Connection, handle: Callable[[Job], Decision] | None = None) -> None:
    """The child: handle jobs until the pipe closes (``handle`` is a test seam; the tests make it slow).
    A message is one job, or a tuple of jobs (a batch's); each job is answered with its decision, in
    order."""
    engine()  # the CEL environment built before the first job's deadline starts
    conn.send(READY)
    run = handle or evaluate_job
    while True:
        try:
            message = conn.recv()
        except EOFError:
            return
        # A batch's decisions go back one by one, as each is made: the parent holds each to its own
        # deadline, and knows which job a slow or failing evaluation was.
        for job in message if isinstance(message, tuple) else (message,):
            conn.send(run(job))


_parsed: dict[bytes, Policy | Mapping[str, Any]] = {}


def evaluate_job(job: Job) -> Decision:
    """Evaluate one job; parsed policies are kept per document digest (in the child process)."""
    key = hashlib.sha256(job.document).digest()
    policy = _parsed.get(key)
    if policy is None:
        document = json.loads(job.document)
        try:
            policy = parse_policy(document)
        except PolicyError:
            policy = document  # evaluate() turns it into a policy-invalid decision, with the reason
        if len(_parsed) >= 256:
            _parsed.clear()
        _parsed[key] = policy
    return evaluate(policy, job.claims, job.sets, job.now)


# The pipe's framing, as multiprocessing.connection writes it (the child keeps using a Connection): a
# signed 32-bit big-endian length, or -1 followed by an unsigned 64-bit one for a message of 2 GiB or more.
_SHORT, _LONG = struct.Struct("!i"), struct.Struct("!Q")
# A decision is a few rule results; anything far larger is not one (a broken or hostile child), refused
# before it is read into memory.
MAX_ANSWER_BYTES = 16 * 1024 * 1024


@dataclass
class _Worker:
    """A worker process and the parent's end of its pipe, read and written on the event loop itself.

    No thread per evaluation: the loop sends the job and waits for the answer on the (non-blocking)
    socket, so a deadline is a plain cancellation, after which the process is killed and the socket
    closed on the same loop (any failure mid-message leaves the framing unknown: the worker is never
    reused). The socket is bound to no loop: each call uses the running one."""

    process: BaseProcess
    sock: socket.socket

    def kill(self) -> None:
        # No join: the next Process.start() reaps finished children, and joining would block the loop.
        self.process.kill()
        self.sock.close()

    async def receive(self) -> Any:
        """The next message from the child (EOFError if it is gone)."""
        loop = asyncio.get_running_loop()
        (size,) = _SHORT.unpack(await self._read(loop, _SHORT.size))
        if size == -1:
            (size,) = _LONG.unpack(await self._read(loop, _LONG.size))
        if size < 0 or size > MAX_ANSWER_BYTES:
            raise OSError(f"the evaluation process sent a message of {size} bytes")
        return ForkingPickler.loads(await self._read(loop, size))

    async def send(self, message: Job | tuple[Job, ...]) -> None:
        """One job, or a batch's jobs in one message (answered one decision each, in order)."""
        if self.sock.fileno() < 0:
            raise EOFError("the evaluation process was killed")
        data = ForkingPickler.dumps(message)
        header = _SHORT.pack(len(data)) if len(data) < 0x7FFFFFFF else _SHORT.pack(-1) + _LONG.pack(len(data))
        await asyncio.get_running_loop().sock_sendall(self.sock, header + bytes(data))

    async def decision(self) -> Decision:
        """The next decision the child sends."""
        decision = await self.receive()
        if not isinstance(decision, Decision):
            raise OSError("the evaluation process answered with something other than a decision")
        return decision

    async def _read(self, loop: asyncio.AbstractEventLoop, size: int) -> bytes:
        buffer = bytearray(size)
        view, got = memoryview(buffer), 0
        while got < size:
            n = await loop.sock_recv_into(self.sock, view[got:])
            if n == 0:
                raise EOFError("the evaluation process closed its pipe")
            got += n
        return bytes(buffer)


def _denial(detail: str) -> Decision:
    return Decision(False, EVALUATION_ERROR, (RuleResult("evaluation", False, detail, EVALUATION_ERROR),))


@dataclass
class EvaluationPool:
    workers: int = DEFAULT_WORKERS
    deadline_s: float = DEFAULT_DEADLINE_S
    per_tenant: int = 0  # 0: half the workers (at least one)
    # What each worker process runs: a picklable module-level function (a test seam, like faults.py).
    worker_target: Callable[[Connection], None] = worker_main
    _idle: list[_Worker] = field(default_factory=list)
    _busy: int = 0
    _by_tenant: dict[uuid.UUID, int] = field(default_factory=dict)
    _changed: asyncio.Condition | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    # Cleared while the service starts the workers ahead (see warm_up), set otherwise: /readyz waits for
    # it, so that "ready" means "can evaluate".
    warmed: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.warmed.set()
        if self.workers < 1 or self.deadline_s <= 0:
            raise ValueError("an evaluation pool needs at least one worker and a positive deadline")
        if self.per_tenant <= 0:
            self.per_tenant = max(1, self.workers // 2)

    def warm_up(self) -> asyncio.Task[None]:
        """Start the workers in the background; ``warmed`` is clear until they are up (or gave up)."""
        self.warmed.clear()
        return asyncio.create_task(self.start())

    async def start(self) -> None:
        """Start the idle workers up to the pool's size now (otherwise each starts at its first use)."""
        try:
            await self._start_idle()
        finally:
            self.warmed.set()

    async def _start_idle(self) -> None:
        missing = self.workers - len(self._idle) - self._busy
        try:
            started = await asyncio.gather(*(self._start() for _ in range(missing)))
        except (TimeoutError, EOFError, OSError):
            log.warning("policy evaluation workers could not be started ahead; each starts at first use")
            return
        for worker in started:
            self._release(worker)

    def _release(self, worker: _Worker) -> None:
        # A request may have started its own worker while start() was under way: keep the pool's size.
        if len(self._idle) + self._busy >= self.workers + 1 or len(self._idle) >= self.workers:
            worker.kill()
        else:
            self._idle.append(worker)

    async def _start(self) -> _Worker:
        worker = self._spawn()
        try:
            ready = await asyncio.wait_for(worker.receive(), START_TIMEOUT_S)
        except BaseException:
            worker.kill()
            raise
        if ready != READY:
            worker.kill()
            raise OSError("the evaluation process did not start")
        return worker

    def _spawn(self) -> _Worker:
        # spawn, not fork: the service process has threads (the database driver's, to_thread's).
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        process = context.Process(target=self.worker_target, args=(child,), daemon=True, name="policy-eval")
        process.start()
        child.close()
        # The parent's end as a plain non-blocking socket (a duplex Pipe is a socketpair), for the loop.
        sock = socket.socket(fileno=os.dup(parent.fileno()))
        parent.close()
        sock.setblocking(False)
        return _Worker(process, sock)

    async def evaluate(
        self,
        tenant_id: uuid.UUID,
        document: bytes,
        claims: Mapping[str, Any],
        sets: Sequence[ReferenceValueSet],
        now: datetime,
    ) -> Decision:
        """The decision on ``claims`` under the stored policy ``document``; a denial (never an exception)
        if the evaluation fails or does not finish within the deadline."""
        (decision,) = await self.evaluate_all(tenant_id, [Request(document, claims, sets, now)])
        return decision

    async def evaluate_all(self, tenant_id: uuid.UUID, requests: Sequence[Request]) -> list[Decision]:
        """:meth:`evaluate` for each of ``requests`` (one batch of one tenant's releases) with one worker
        and one message to it, whatever their number (measured: the exchange, not the evaluation, is most
        of a lone evaluation's cost). The worker answers each job as it finishes it, and each answer is
        held to the deadline on its own: a job that misses it, or during which the worker fails, is
        denied as a lone one would be, the worker killed, and the jobs after it evaluated anew."""
        if not requests:
            return []
        jobs = tuple(Job(r.document, dict(r.claims), tuple(r.sets), r.now) for r in requests)
        decisions: list[Decision] = []
        sent = False
        async with self._slot(tenant_id):
            try:
                worker = self._idle.pop() if self._idle else await self._start()
            except Exception as exc:  # TimeoutError, EOFError, OSError, or the spawn itself failing
                return [_denial(f"no evaluation process could be started ({type(exc).__name__})")] * len(jobs)
            try:
                await worker.send(jobs[0] if len(jobs) == 1 else jobs)
                sent = True
                for _ in jobs:
                    async with asyncio.timeout(self.deadline_s):
                        decisions.append(await worker.decision())
            except TimeoutError:
                log.warning("policy evaluation exceeded its deadline of %ss; worker killed", self.deadline_s)
                worker.kill()
                failure = f"the evaluation did not finish within {self.deadline_s:g} s"
            except (EOFError, OSError) as exc:
                worker.kill()
                failure = f"the evaluation process failed ({type(exc).__name__})"
            except Exception as exc:  # a bug (a value that cannot cross to the worker): still a denial
                log.exception("policy evaluation failed")
                worker.kill()
                failure = f"internal error: {type(exc).__name__}"
            except asyncio.CancelledError:
                # The request went away mid-evaluation: the worker's answers would be read by nobody.
                worker.kill()
                raise
            else:
                self._release(worker)
                return decisions
        if not sent and len(jobs) > 1:
            # The batch never reached the worker (one of its jobs cannot cross): each on its own.
            return [(await self.evaluate_all(tenant_id, [request]))[0] for request in requests]
        # Jobs are evaluated in order: the one under way failed; those after it start again (the slot
        # was given back first, as anyone's).
        failed = len(decisions)
        rest = await self.evaluate_all(tenant_id, requests[failed + 1 :])
        return [*decisions, _denial(failure), *rest]

    @contextlib.asynccontextmanager
    async def _slot(self, tenant_id: uuid.UUID) -> AsyncIterator[None]:
        """One of the pool's workers held for ``tenant_id`` (at most ``per_tenant`` of them at once)."""
        loop = asyncio.get_running_loop()
        if self._changed is None or self._loop is not loop:
            # A condition belongs to one loop (tests run one loop per test; the service, one per worker).
            self._changed, self._loop, self._busy, self._by_tenant = asyncio.Condition(), loop, 0, {}
        changed = self._changed
        async with changed:
            await changed.wait_for(
                lambda: self._busy < self.workers and self._by_tenant.get(tenant_id, 0) < self.per_tenant
            )
            self._busy += 1
            self._by_tenant[tenant_id] = self._by_tenant.get(tenant_id, 0) + 1
        try:
            yield
        finally:
            async with changed:
                self._busy -= 1
                left = self._by_tenant[tenant_id] - 1
                if left:
                    self._by_tenant[tenant_id] = left
                else:
                    del self._by_tenant[tenant_id]
                changed.notify_all()

    def close(self) -> None:
        while self._idle:
            self._idle.pop().kill()


_pool: EvaluationPool | None = None


def configure(workers: int, deadline_s: float) -> EvaluationPool:
    """Replace the process's pool (the app's start-up calls this with the settings)."""
    global _pool
    if _pool is not None:
        _pool.close()
    _pool = EvaluationPool(workers, deadline_s)
    return _pool


def pool() -> EvaluationPool:
    global _pool
    if _pool is None:
        _pool = EvaluationPool()
    return _pool
