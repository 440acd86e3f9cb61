"""The start-up checks' list (keyserver/readiness.py), without a database: order, once-only, refusals."""

from __future__ import annotations

import pytest

from keyserver.errors import ConfigurationError, Unavailable
from keyserver.readiness import NotReady, Readiness


class Scripted:
    """A check that raises the given outcomes in turn, then passes; it counts its runs."""

    def __init__(self, *outcomes: BaseException) -> None:
        self.outcomes = list(outcomes)
        self.runs = 0

    async def __call__(self) -> None:
        self.runs += 1
        if self.outcomes:
            raise self.outcomes.pop(0)


async def test_checks_run_in_order_until_each_has_passed_once() -> None:
    readiness = Readiness(retry_interval_s=0)
    first, second = Scripted(), Scripted(ConnectionRefusedError(), OSError("reset"))
    readiness.register("first", first)
    readiness.register("second", second)
    await readiness.start()  # the database does not answer: the start goes on
    assert not readiness.ready
    with pytest.raises(NotReady, match="waiting for its database") as not_ready:
        await readiness.ensure()
    assert isinstance(not_ready.value, Unavailable)  # 503
    await readiness.ensure()
    assert readiness.ready
    assert (first.runs, second.runs) == (1, 3)  # a check that passed is not run again
    await readiness.ensure()
    assert (first.runs, second.runs) == (1, 3)
    # A check registered late (the KEK's identity needs the backend, built after the first attempt)
    # makes the service not ready until it passes too; the others are not run again.
    late = Scripted(ConnectionRefusedError())
    readiness.register("late", late)
    assert not readiness.ready
    with pytest.raises(NotReady):
        await readiness.ensure()
    await readiness.ensure()
    assert readiness.ready
    assert (first.runs, second.runs, late.runs) == (1, 3, 2)


async def test_a_refusal_at_start_stops_the_start() -> None:
    readiness = Readiness(retry_interval_s=0)
    readiness.register("role", Scripted(ConfigurationError("the role is a superuser")))
    with pytest.raises(ConfigurationError, match="superuser"):
        await readiness.start()


async def test_a_refusal_found_later_keeps_refusing_until_a_check_passes() -> None:
    readiness = Readiness(retry_interval_s=0)
    role = Scripted(OSError("refused"), *[ConfigurationError("the role owns the schema")] * 3)
    readiness.register("role", role)
    await readiness.start()
    for _ in range(3):
        with pytest.raises(NotReady, match="refuses to serve"):
            await readiness.ensure()
    await readiness.ensure()
    assert readiness.ready


async def test_attempts_are_spaced_by_the_retry_interval() -> None:
    readiness = Readiness(retry_interval_s=3600)
    check = Scripted(OSError("refused"))
    readiness.register("db", check)
    await readiness.start()
    for _ in range(5):  # a flood of requests costs the database nothing more
        with pytest.raises(NotReady):
            await readiness.ensure()
    assert check.runs == 1
