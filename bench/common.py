"""Shared pieces of the benchmarks: timing statistics, the results file, database set-up."""

from __future__ import annotations

import asyncio
import json
import platform
import statistics
import tempfile
from collections.abc import AsyncIterator, Sequence
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
    p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))]
    return {
        "p50_ms": round(statistics.median(ordered) * 1000, 4),
        "p99_ms": round(p99 * 1000, 4),
        "n": len(ordered),
    }


def machine() -> dict[str, Any]:
    import os

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def record(section: str, figures: dict[str, Any]) -> None:
    """Merge ``figures`` into ``section`` of bench/results.json: other sections, and keys of this
    section that this run did not measure (e.g. the other database), are kept."""
    current = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    current[section] = {**current.get(section, {}), "machine": machine(), **figures}
    RESULTS.write_text(json.dumps(current, indent=2, sort_keys=True) + "\n")


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
            name = await asyncio.to_thread(server.create_database)
            db = Database(Settings(data_dir=Path(tmp), database_url=server.url(name), auto_migrate=True))
            await initialise(db, announce=lambda _token: None)
            try:
                yield db
            finally:
                await db.dispose()
