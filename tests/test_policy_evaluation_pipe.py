"""The evaluation pool's pipe (keyserver/evaluation.py): read and written on the event loop, so every way a
worker can misbehave on it — an answer too large to be a decision, a pipe closed mid-answer, no answer at
all — is a denial, the worker is killed and the next evaluation gets a working one; and a worker started
on one event loop serves the next loop too (the socket belongs to none)."""

from __future__ import annotations

import asyncio
import os
import struct
import time
import uuid
from datetime import UTC, datetime
from multiprocessing.connection import Connection

import pytest

from keyserver.evaluation import (
    MAX_ANSWER_BYTES,
    READY,
    EvaluationPool,
    Job,
    Request,
    _Worker,
    evaluate_job,
    worker_main,
)
from policy.evaluate import EVALUATION_ERROR, Decision

DOCUMENT = b'{"version": 1, "tees": ["tpm"], "rules": [{"name": "x", "expr": "claims[\\"x\\"] == \\"a\\""}]}'
CLAIMS = {"tee": "tpm", "debug": False, "x": "a"}
TENANT = uuid.UUID(int=1)


def _misbehave(conn: Connection, answer: bytes, then_exit: bool) -> None:
    """Answer the first job with raw bytes on the pipe (a frame of our choosing), then exit or hang."""
    conn.send(READY)
    conn.recv()
    os.write(conn.fileno(), answer)
    if then_exit:
        os._exit(0)
    time.sleep(60)


def oversized_answer(conn: Connection) -> None:
    _misbehave(conn, struct.pack("!i", MAX_ANSWER_BYTES + 1), then_exit=False)


def huge_answer(conn: Connection) -> None:
    # The 64-bit form of the length: 2^40 bytes announced.
    _misbehave(conn, struct.pack("!i", -1) + struct.pack("!Q", 1 << 40), then_exit=False)


def truncated_answer(conn: Connection) -> None:
    _misbehave(conn, struct.pack("!i", 1000) + b"\x80" * 10, then_exit=True)


def not_a_decision(conn: Connection) -> None:
    conn.send(READY)
    conn.recv()
    conn.send({"granted": True})  # well framed, well pickled, and not a Decision
    time.sleep(60)


def silent(conn: Connection) -> None:
    conn.send(READY)
    conn.recv()
    time.sleep(60)


async def _evaluate(pool: EvaluationPool) -> Decision:
    return await pool.evaluate(TENANT, DOCUMENT, CLAIMS, (), datetime.now(UTC))


@pytest.mark.parametrize(
    ("target", "error"),
    [
        (oversized_answer, "OSError"),
        (huge_answer, "OSError"),
        (truncated_answer, "EOFError"),
        (not_a_decision, "OSError"),
    ],
)
async def test_a_broken_answer_is_a_denial_and_the_worker_is_killed(target: object, error: str) -> None:
    pool = EvaluationPool(1, 10.0, worker_target=target)  # type: ignore[arg-type]
    try:
        decision = await _evaluate(pool)
        assert not decision.granted
        assert decision.reason == EVALUATION_ERROR
        assert f"failed ({error})" in decision.results[0].detail
        assert pool._idle == [], "a worker that broke its pipe is never reused"
        # The pool still works: the next evaluation starts a new worker (this target breaks it again).
        again = await _evaluate(pool)
        assert not again.granted
        assert f"failed ({error})" in again.results[0].detail
    finally:
        pool.close()


async def test_no_answer_is_a_denial_at_the_deadline() -> None:
    pool = EvaluationPool(1, 0.3, worker_target=silent)
    try:
        await pool.start()
        (worker,) = pool._idle
        decision = await _evaluate(pool)
        assert not decision.granted
        assert "did not finish within 0.3 s" in decision.results[0].detail
        worker.process.join(10)
        assert worker.process.exitcode is not None, "the silent worker was killed"
        assert worker.sock.fileno() == -1, "and its pipe closed"
    finally:
        pool.close()


def test_a_worker_serves_one_event_loop_after_another() -> None:
    """The service has one loop per process, the tests one per test: an idle worker from an earlier loop
    must answer on the next."""
    pool = EvaluationPool(1, 10.0)
    try:
        first = asyncio.run(_evaluate(pool))
        (worker,) = pool._idle
        second = asyncio.run(_evaluate(pool))
        assert pool._idle == [worker], "the same process answered on the second loop"
        assert first.granted
        assert second.granted
        assert second == evaluate_job(Job(DOCUMENT, dict(CLAIMS), (), datetime.now(UTC)))
    finally:
        pool.close()


# --- a batch's evaluations: one exchange, and a failure costs only the requests it belongs to -------------

SLOW = b'{"version": 1, "tees": ["tpm"], "rules": [{"name": "slow", "expr": "true"}]}'


def _slow_for_one_document(job: Job) -> Decision:
    if job.document == SLOW:
        time.sleep(60)  # until the pool kills this process
    return evaluate_job(job)


def slow_for_one_document(conn: Connection) -> None:
    worker_main(conn, _slow_for_one_document)


def breaks_on_a_batch(conn: Connection) -> None:
    """Answers a lone job; exits on a batch (a worker that fails mid-exchange)."""
    conn.send(READY)
    while True:
        message = conn.recv()
        if isinstance(message, tuple):
            os._exit(0)
        conn.send(evaluate_job(message))


def _requests(*documents_and_x: tuple[bytes, str]) -> list[Request]:
    now = datetime.now(UTC)
    return [Request(document, {**CLAIMS, "x": x}, (), now) for document, x in documents_and_x]


def _expected(request: Request) -> Decision:
    return evaluate_job(Job(request.document, dict(request.claims), (), request.now))


async def test_a_batch_is_one_exchange_and_each_answer_is_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    exchanges = 0
    send = _Worker.send

    async def counted(self: _Worker, message: Job | tuple[Job, ...]) -> None:
        nonlocal exchanges
        exchanges += 1
        await send(self, message)

    monkeypatch.setattr(_Worker, "send", counted)
    pool = EvaluationPool(1, 10.0)
    try:
        await pool.start()
        requests = _requests((DOCUMENT, "a"), (DOCUMENT, "b"), (DOCUMENT, "a"), (b'{"version": 2}', "a"))
        decisions = await pool.evaluate_all(TENANT, requests)
        assert exchanges == 1
        assert [d.granted for d in decisions] == [True, False, True, False]
        assert decisions == [_expected(r) for r in requests]
        assert len(pool._idle) == 1, "the worker is kept for the next batch"
    finally:
        pool.close()


async def test_a_batch_whose_worker_fails_denies_the_job_under_way_and_evaluates_the_rest_anew() -> None:
    pool = EvaluationPool(1, 10.0, worker_target=breaks_on_a_batch)
    try:
        requests = _requests((DOCUMENT, "a"), (DOCUMENT, "b"), (DOCUMENT, "a"))
        first, *rest = await pool.evaluate_all(TENANT, requests)
        assert not first.granted
        assert "failed (EOFError)" in first.results[0].detail
        # The rest went to a new worker as a batch again (this one fails again: its first is denied),
        # then the last alone, which this worker answers.
        assert not rest[0].granted
        assert rest[1] == _expected(requests[2])
    finally:
        pool.close()


def _slowish(job: Job) -> Decision:
    time.sleep(0.3)
    return evaluate_job(job)


def slowish(conn: Connection) -> None:
    worker_main(conn, _slowish)


async def test_each_job_of_a_batch_has_its_own_deadline() -> None:
    """Found by review: a batch under one deadline killed its worker whenever its jobs together took
    longer than one is allowed. Three jobs of 0.3 s under a 0.5 s deadline: all answered, none killed."""
    pool = EvaluationPool(1, 0.5, worker_target=slowish)
    try:
        await pool.start()
        (worker,) = pool._idle
        requests = _requests((DOCUMENT, "a"), (DOCUMENT, "b"), (DOCUMENT, "a"))
        assert await pool.evaluate_all(TENANT, requests) == [_expected(r) for r in requests]
        assert pool._idle == [worker], "the worker was kept"
    finally:
        pool.close()


async def test_a_slow_rule_in_a_batch_denies_only_its_own_release() -> None:
    """The batch misses its deadline as a whole; each request is then evaluated under its own: the slow one
    is denied at its deadline, the others get their own decisions."""
    pool = EvaluationPool(2, 0.5, per_tenant=1, worker_target=slow_for_one_document)
    try:
        requests = _requests((DOCUMENT, "a"), (SLOW, "a"), (DOCUMENT, "b"))
        fast, slow, denied = await pool.evaluate_all(TENANT, requests)
        assert fast == _expected(requests[0])
        assert denied == _expected(requests[2])
        assert not slow.granted
        assert slow.reason == EVALUATION_ERROR
        assert "did not finish within 0.5 s" in slow.results[0].detail
    finally:
        pool.close()
