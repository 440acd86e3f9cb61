"""What handing a policy evaluation to its worker process costs (keyserver/evaluation.py).

    python -m bench --only evaluation [--seconds 5] [--runs 3]

One evaluation at a time, on one event loop, of the e2e benchmark's policy (one reference-value set, one
CEL rule) over TPM-shaped claims: through the pool (pickled, sent on the worker's pipe, evaluated in the
worker, the decision read back) and, as the reference, ``evaluate_job`` called in this process on the same
job. Reported per evaluation: the wall time, the CPU of this process (what a service worker pays) and the
CPU of the evaluation worker. Runs alternate pool, in-process, pool, ...
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keyserver.evaluation import EvaluationPool, Job, evaluate_job
from policy.document import ReferenceValueSet, parse_reference_values

DOCUMENT = json.dumps(
    {
        "version": 1,
        "tees": ["tpm"],
        "reference_values": ["loader"],
        "rules": [{"name": "fresh-boot", "expr": "claims['tpm.reset_count'] >= 0"}],
    }
).encode()
PCR8 = "ab" * 32
CLAIMS: dict[str, Any] = {
    "tee": "tpm",
    "debug": False,
    "tpm.reset_count": 3,
    **{f"tpm.pcrs.sha256.{i}": ("00" * 32 if i != 8 else PCR8) for i in range(24)},
}
TENANT = uuid.UUID(int=1)


def _sets() -> tuple[ReferenceValueSet, ...]:
    values = parse_reference_values("tpm", {"version": 1, "expected": {"tpm.pcrs.sha256.8": [PCR8]}})
    return (ReferenceValueSet("loader", "tpm", 1, values),)


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _cpu_of(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, in clock ticks


async def _pool_run(pool: EvaluationPool, seconds: float) -> dict[str, float]:
    sets = _sets()
    pids = [worker.process.pid for worker in pool._idle if worker.process.pid is not None]
    n, start, cpu0 = 0, time.perf_counter(), _own_cpu()
    child0 = sum(_cpu_of(pid) for pid in pids)
    while time.perf_counter() - start < seconds:
        decision = await pool.evaluate(TENANT, DOCUMENT, CLAIMS, sets, datetime.now(UTC))
        if not decision.granted:
            raise RuntimeError(f"the benchmark's policy denied: {decision.detail}")
        n += 1
    wall = time.perf_counter() - start
    return {
        "n": n,
        "wall_ms": 1000 * wall / n,
        "parent_cpu_ms": 1000 * (_own_cpu() - cpu0) / n,
        "worker_cpu_ms": 1000 * (sum(_cpu_of(pid) for pid in pids) - child0) / n,
    }


def _in_process_run(seconds: float) -> dict[str, float]:
    job = Job(DOCUMENT, dict(CLAIMS), _sets(), datetime.now(UTC))
    n, start, cpu0 = 0, time.perf_counter(), _own_cpu()
    while time.perf_counter() - start < seconds:
        evaluate_job(job)
        n += 1
    wall = time.perf_counter() - start
    return {"n": n, "wall_ms": 1000 * wall / n, "parent_cpu_ms": 1000 * (_own_cpu() - cpu0) / n}


async def run(*, runs: int, seconds: float) -> dict[str, Any]:
    pool = EvaluationPool(1, 10.0)  # one worker: every evaluation goes to the process measured
    try:
        await pool.start()
        await _pool_run(pool, min(seconds, 0.5))  # warm: the worker has parsed and compiled the policy
        pooled, local = [], []
        for _ in range(runs):
            pooled.append(await _pool_run(pool, seconds))
            local.append(_in_process_run(seconds))
    finally:
        pool.close()

    def median(rows: list[dict[str, float]], key: str) -> float:
        return round(statistics.median(r[key] for r in rows), 4)

    return {
        "pool": {k: median(pooled, k) for k in ("wall_ms", "parent_cpu_ms", "worker_cpu_ms")}
        | {"runs": [round(r["parent_cpu_ms"], 4) for r in pooled]},
        "in_process": {k: median(local, k) for k in ("wall_ms", "parent_cpu_ms")}
        | {"runs": [round(r["parent_cpu_ms"], 4) for r in local]},
        "reference": "evaluate_job on the same job in this process (no hand-off)",
        "runs": runs,
        "seconds_per_run": seconds,
    }


def table(result: dict[str, Any]) -> str:
    pool, local = result["pool"], result["in_process"]
    return "\n".join(
        [
            "policy evaluation, one at a time (median of runs)",
            "             wall ms  this process cpu ms  worker cpu ms",
            f"  pool      {pool['wall_ms']:8.3f}  {pool['parent_cpu_ms']:19.3f}"
            f"  {pool['worker_cpu_ms']:13.3f}",
            f"  in process{local['wall_ms']:8.3f}  {local['parent_cpu_ms']:19.3f}  {'-':>13}",
        ]
    )
