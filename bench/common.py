"""Shared pieces of the benchmarks: timing statistics, the results file, database set-up."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keyserver.bootstrap import initialise
from keyserver.config import Settings
from keyserver.db.session import Database

RESULTS = Path(__file__).with_name("results.json")


def summary(samples_s: Sequence[float]) -> dict[str, float]:
    """Median and p99 in milliseconds."""
    ordered = sorted(samples_s)
    p99 = percentile(ordered, 0.99)
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 4),
        "p99_ms": round(p99 * 1000, 4),
        "n": len(ordered),
    }


def percentile(ordered: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (q in [0, 1])."""
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def quick_mode() -> bool:
    """Smoke runs (``BENCH_QUICK=1`` or ``--quick``): tiny sizes and durations, same code paths."""
    return os.environ.get("BENCH_QUICK", "") not in ("", "0", "false", "no")


def machine() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "quick": quick_mode(),
    }


def record(section: str, figures: dict[str, Any]) -> None:
    """Merge ``figures`` into ``section`` of bench/results.json: other sections, and keys of this
    section that this run did not measure (e.g. the other database), are kept."""
    path = results_path()
    current = json.loads(path.read_text()) if path.exists() else {}
    current[section] = {**current.get(section, {}), "machine": machine(), **figures}
    path.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")


def results_path() -> Path:
    """bench/results.json, or ``$BENCH_RESULTS`` (the smoke test writes elsewhere)."""
    return Path(os.environ.get("BENCH_RESULTS") or RESULTS)


def compare(
    cases: dict[str, Callable[[], object]], *, runs: int, iterations: int, warmup: int = 3
) -> dict[str, list[list[float]]]:
    """Time each case ``iterations`` times per run, for ``runs`` runs, the cases interleaved (their order
    rotates each run) so that a noisy neighbour on a shared machine slows all of them alike. Returns the
    per-call samples (seconds) of each case, run by run."""
    names = list(cases)
    samples: dict[str, list[list[float]]] = {name: [] for name in names}
    for name in names:
        for _ in range(warmup):
            cases[name]()
    clock = time.perf_counter
    for run in range(runs):
        for name in names[run % len(names) :] + names[: run % len(names)]:
            call, times = cases[name], []
            for _ in range(iterations):
                started = clock()
                call()
                times.append(clock() - started)
            samples[name].append(times)
    return samples


def ratio_figures(
    ours: list[list[float]], reference: list[list[float]], reference_name: str
) -> dict[str, Any]:
    """The summary of ``ours`` over all runs, and its ratio to ``reference`` measured alongside: the median
    over runs of (run median / reference run median), with the smallest and largest run ratio."""
    flat = summary([t for run in ours for t in run])
    ratios = sorted(statistics.median(o) / statistics.median(r) for o, r in zip(ours, reference, strict=True))
    return {
        **flat,
        "runs": len(ours),
        "ops_per_s": round(1000 / flat["p50_ms"], 1) if flat["p50_ms"] else None,
        "reference": reference_name,
        "reference_p50_ms": summary([t for run in reference for t in run])["p50_ms"],
        "ratio": round(statistics.median(ratios), 3),
        "ratio_range": [round(ratios[0], 3), round(ratios[-1], 3)],
    }


@asynccontextmanager
async def bench_database(kind: str) -> AsyncIterator[Database]:
    """A fresh, migrated database: SQLite in a temporary directory, or a durable throwaway PostgreSQL."""
    with tempfile.TemporaryDirectory(prefix="keyserver-bench-") as tmp:
        if kind == "sqlite":
            db = Database(Settings(data_dir=Path(tmp)))
            await initialise(db, announce=lambda _token: None)
            try:
                yield db
            finally:
                await db.dispose()
            return
        from tests.fixtures.postgres import throwaway_cluster

        with throwaway_cluster(durable=True) as server:
            name = await asyncio.to_thread(server.create_migrated_database)
            db = Database(Settings(data_dir=Path(tmp), database_url=server.url(name)))
            await initialise(db, announce=lambda _token: None)
            try:
                yield db
            finally:
                await db.dispose()
