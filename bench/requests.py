"""Server CPU per request, by kind: what the HTTP stack, a challenge and a whole release each cost.

    python -m bench --only requests [--db postgres|sqlite] [--workers 1] [--concurrency 4] [--seconds 5]
                                    [--runs 2]

On one ``keyserver serve`` (one worker by default, so that no run-queue wait between two workers is
charged to a request), each of three kinds is driven alone at the given concurrency for ``seconds``, and
the server's CPU (its processes and their children: the policy-evaluation workers) is divided by the
requests served. The kinds alternate run by run:

* ``healthz``: ``GET /healthz`` — uvicorn, Litestar, the request-id/access-log and Prometheus middlewares,
  and nothing else: the floor every request pays;
* ``challenge``: ``POST …/challenges`` — the tenant's lookup, the challenge budget and the INSERT;
* ``release``: what one loader does per key: a challenge, then the release (evidence verified, policy
  appraised, logged, committed, the key wrapped).

The release minus the challenge is the release request's own cost; the release minus two ``healthz`` is
what is spent beyond the HTTP stack.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from bench import e2e
from bench.loadgen import Connection, cpu_seconds, run_loaders
from bench.softtpm import SoftQuoter

KINDS = ("healthz", "challenge", "release")


async def _hammer(conns: list[Connection], seconds: float, method: str, path: str, body: Any) -> int:
    served = 0
    stop = time.perf_counter() + seconds

    async def loop(conn: Connection) -> None:
        nonlocal served
        while time.perf_counter() < stop:
            status, _ = await conn.request(method, path, body)
            if status >= 300:
                raise RuntimeError(f"{method} {path}: {status}")
            served += 1

    await asyncio.gather(*(loop(conn) for conn in conns))
    return served


async def run(kind: str, workers: int, concurrency: int, *, runs: int, seconds: float) -> dict[str, Any]:
    async with e2e.stack(kind, workers) as s:
        tenant = await e2e.setup_tenant(s, "acme", SoftQuoter.create("ecc"))
        conns = [Connection(e2e.HOST, s.port) for _ in range(concurrency)]
        loaders = e2e.make_loaders(s, [tenant], concurrency)
        await run_loaders(loaders, seconds=min(seconds, 2.0), warmup=0.5)  # caches and pools warm
        cpu_ms: dict[str, list[float]] = {k: [] for k in KINDS}
        per_s: dict[str, list[float]] = {k: [] for k in KINDS}
        try:
            for _ in range(runs):
                for what in KINDS:
                    before, started = cpu_seconds(s.server.pid), time.perf_counter()
                    if what == "healthz":
                        served = await _hammer(conns, seconds, "GET", "/healthz", None)
                    elif what == "challenge":
                        path = f"/v1/tenants/{tenant.name}/challenges"
                        served = await _hammer(conns, seconds, "POST", path, {})
                    else:
                        samples, _ = await run_loaders(loaders, seconds, 0.0)
                        served = len(samples.total)
                    elapsed = time.perf_counter() - started
                    used = cpu_seconds(s.server.pid) - before
                    if served:
                        cpu_ms[what].append(1000 * used / served)
                        per_s[what].append(served / elapsed)
        finally:
            for conn in conns:
                await conn.close()
            for loader in loaders:
                await loader.conn.close()
    return {
        "workers": workers,
        "concurrency": concurrency,
        "seconds_per_run": seconds,
        "runs": runs,
        **{
            what: {
                "server_cpu_ms": round(statistics.median(cpu_ms[what]), 3) if cpu_ms[what] else None,
                "server_cpu_ms_runs": [round(v, 3) for v in cpu_ms[what]],
                "per_s_runs": [round(v, 1) for v in per_s[what]],
            }
            for what in KINDS
        },
    }


def table(kind: str, figures: dict[str, Any]) -> str:
    lines = [
        f"{kind}: server CPU per request, {figures['workers']} worker(s),"
        f" {figures['concurrency']} connections (median of runs; each run's figure in brackets)",
        f"{'request':>10}{'cpu ms':>9}  runs ms{'':>20}per s",
    ]
    for what in KINDS:
        f = figures[what]
        runs = ", ".join(f"{v:.2f}" for v in f["server_cpu_ms_runs"])
        rates = ", ".join(f"{v:.0f}" for v in f["per_s_runs"])
        median = "-" if f["server_cpu_ms"] is None else f"{f['server_cpu_ms']:.2f}"
        lines.append(f"{what:>10}{median:>9}  [{runs}]  [{rates}]")
    lines.append("  release = a challenge + the release request, as a loader makes them")
    return "\n".join(lines)
