"""Release-log benchmark: append rate and proof time at 10^3, 10^5 and 10^6 entries, on SQLite and on
(durable) PostgreSQL. Run: `make bench` or `python -m bench.log_bench [--sizes 1000,100000] [--db sqlite]`.

The log is grown in batches of 1,000 entries per transaction (one append call, the store's batched
path). At each size it measures: single-entry appends (one transaction each, as a key release makes
them), inclusion proofs for random indices, and a consistency proof from a random earlier size.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from typing import Any

from bench.common import bench_database, record, summary
from keyserver.backends.software import SoftwareBackend
from keyserver.db.models import Tenant
from keyserver.db.session import Database, Scope
from keyserver.releaselog.signing import LogSigner
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import create_tenant

BATCH = 1000
SINGLE_APPENDS = 50
PROOFS = 200


def entry(n: int) -> dict[str, Any]:
    return {
        "v": 1,
        "kind": "key-release",
        "time": "2026-11-23T12:00:00.000000Z",
        "principal": None,
        "decision": "granted",
        "reason": None,
        "key": {"name": "model-weights", "version": 3},
        "digests": {"evidence": f"{n:064x}", "claims": f"{n + 1:064x}", "collateral": None},
        "policy": {"name": "prod", "version": 7},
        "reference_values": [{"name": "loader", "version": 12}],
        "requester_thumbprint": "x" * 43,
    }


async def measure_at(db: Database, log: ReleaseLog, tenant: Tenant, size: int) -> dict[str, Any]:
    appends = []
    for i in range(SINGLE_APPENDS):
        started = time.perf_counter()
        async with db.transaction(Scope.for_tenant(tenant.id)) as session:
            await log.append(session, tenant, [entry(size + i)])
        appends.append(time.perf_counter() - started)
    current = size + SINGLE_APPENDS
    rng = random.Random(size)
    inclusion, consistency = [], []
    async with db.transaction(Scope.for_tenant(tenant.id)) as session:
        for _ in range(PROOFS):
            started = time.perf_counter()
            await log.inclusion_proof(session, tenant, rng.randrange(current), current)
            inclusion.append(time.perf_counter() - started)
            started = time.perf_counter()
            await log.consistency_proof(session, tenant, rng.randrange(1, current + 1), current)
            consistency.append(time.perf_counter() - started)
    single = summary(appends)
    return {
        "single_append": single,
        "single_appends_per_s": round(1000 / single["p50_ms"], 1),
        "inclusion_proof": summary(inclusion),
        "consistency_proof": summary(consistency),
    }


async def settle(db: Database) -> None:
    """After a bulk growth PostgreSQL's autovacuum and checkpointer work for a while and a measurement
    taken then shows their cost, not the log's (an early run saw 60 ms appends at 10^5 entries and 5 ms
    at 10^6). Vacuum and analyse first, as a live system with autovacuum would have done long since."""
    if db.dialect != "postgresql":
        return
    async with db.engine.connect() as connection:
        autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.exec_driver_sql("VACUUM ANALYZE log_entries, log_nodes, log_heads")


async def run(kind: str, sizes: list[int]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    async with bench_database(kind) as db:
        log = ReleaseLog(LogSigner(SoftwareBackend.from_file(db.settings.effective_kek_file), "bench"))
        async with db.transaction(Scope.for_operator()) as session:
            tenant = await create_tenant(session, "bench")
        size = 0
        for target in sizes:
            started, grown_from = time.perf_counter(), size
            while size < target:
                count = min(BATCH, target - size)
                async with db.transaction(Scope.for_tenant(tenant.id)) as session:
                    await log.append(session, tenant, [entry(size + i) for i in range(count)])
                size += count
            grown = time.perf_counter() - started
            await settle(db)
            at = await measure_at(db, log, tenant, size)
            size += SINGLE_APPENDS
            at["batched_entries_per_s"] = (
                round((target - grown_from) / grown, 1) if target > grown_from else None
            )
            figures[str(target)] = at
            single, inclusion = at["single_append"], at["inclusion_proof"]
            print(
                f"{kind:>8} {target:>9,} entries: single append p50 {single['p50_ms']:.2f} ms"
                f" (p99 {single['p99_ms']:.2f}), inclusion p50 {inclusion['p50_ms']:.2f} ms,"
                f" consistency p50 {at['consistency_proof']['p50_ms']:.2f} ms; grew in {grown:.1f} s",
                flush=True,
            )
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,100000,1000000")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    kinds = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    results = {kind: asyncio.run(run(kind, sizes)) for kind in kinds}
    record("release_log", {"sizes": sizes, "batch": BATCH, **results})


if __name__ == "__main__":
    main()
