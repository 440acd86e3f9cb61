"""Scale-out (issue 15, item 4): two replicas on one PostgreSQL, and many tenants beside a hot one.

One durable PostgreSQL and two ``keyserver serve`` processes on it (each ``--workers N``, sharing the
store and the key-encryption key, as two hosts behind a load balancer would), set up like bench/e2e.py.
Measured run by run, interleaved so that the shared machine's noise hits every mode alike:

* **replicas**: the same loaders sent to one replica, then spread over both — for one hot tenant
  (every release of both replicas serialises on that tenant's log head) and for loaders spread over
  many tenants (nothing shared but the database). The reference is the one-replica run beside it.
* **tenants**: a hot tenant's loaders alone, then the same loaders while as many more loaders release
  for ``tenants`` other tenants at once (one replica). The reference is the hot tenant alone: what
  the crowd costs it, in throughput and in p99.

Figures only: nothing asserts them (tests/test_bench_smoke.py runs the quick mode for form).
"""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass
from typing import Any

from bench import e2e
from bench.common import summary
from bench.loadgen import Samples, TpmLoader, run_loaders
from bench.softtpm import SoftQuoter


@dataclass
class Group:
    """Loaders measured together; each is tied to a tenant and a replica's port."""

    name: str
    loaders: list[TpmLoader]


async def measure(
    s: e2e.Stack, groups: list[Group], seconds: float, warmup: float
) -> tuple[dict[str, tuple[Samples, float]], dict[str, float]]:
    """Every group releasing at once; each group's samples and window, and the CPU seconds spent."""
    # CPU over the measured window only (the groups' windows open together; the first one's reads it).
    marks: list[dict[str, float]] = []
    results = await asyncio.gather(
        *(
            run_loaders(g.loaders, seconds, warmup, (lambda: marks.append(s.cpu())) if i == 0 else None)
            for i, g in enumerate(groups)
        )
    )
    after = s.cpu()
    (before,) = marks
    for group in groups:
        await e2e._close(group.loaders)
    return (
        {g.name: r for g, r in zip(groups, results, strict=True)},
        {k: after[k] - before[k] for k in after},
    )


@dataclass
class Tally:
    """One mode's figures over its runs."""

    rates: list[float]
    samples: Samples
    cpu: dict[str, float]
    releases: int = 0

    @classmethod
    def empty(cls) -> Tally:
        return cls([], Samples(), {})

    def add(self, samples: Samples, window: float, cpu: dict[str, float] | None = None) -> None:
        self.rates.append(len(samples.total) / window)
        self.samples.total += samples.total
        for reason, n in samples.failures.items():
            self.samples.failures[reason] = self.samples.failures.get(reason, 0) + n
        if cpu is not None:
            self.releases += len(samples.total)
            for name, value in cpu.items():
                self.cpu[name] = self.cpu.get(name, 0.0) + value

    def figures(self) -> dict[str, Any]:
        latency = summary(self.samples.total) if self.samples.total else {"p50_ms": None, "p99_ms": None}
        cpu = {k: round(1000 * v / self.releases, 2) for k, v in self.cpu.items()} if self.releases else {}
        return {
            "releases_per_s": round(statistics.median(self.rates), 1) if self.rates else 0.0,
            "releases_per_s_runs": [round(r, 1) for r in self.rates],
            "p50_ms": latency["p50_ms"],
            "p99_ms": latency["p99_ms"],
            "failures": self.samples.failures,
            **({"cpu_ms_per_release": cpu} if cpu else {}),
        }


async def replicas(
    s: e2e.Stack,
    hot: e2e.BenchTenant,
    spread: list[e2e.BenchTenant],
    concurrency: int,
    *,
    runs: int,
    seconds: float,
    warmup: float,
) -> dict[str, Any]:
    """One replica against two, for one hot tenant and for loaders spread over ``spread`` tenants."""
    modes = {
        (tenants, n): Tally.empty() for tenants in ("one_tenant", "spread_tenants") for n in (1, len(s.ports))
    }
    for _ in range(runs):
        for (tenants, n), tally in modes.items():
            which = [hot] if tenants == "one_tenant" else spread
            group = Group("all", e2e.make_loaders(s, which, concurrency, n))
            results, cpu = await measure(s, [group], seconds, warmup)
            tally.add(*results["all"], cpu)
    out: dict[str, Any] = {"concurrency": concurrency, "replicas": len(s.ports), "spread_over": len(spread)}
    for tenants in ("one_tenant", "spread_tenants"):
        one, many = modes[(tenants, 1)].figures(), modes[(tenants, len(s.ports))].figures()
        out[tenants] = {
            "one_replica": one,
            f"{len(s.ports)}_replicas": many,
            "reference": "the same loaders on one replica, run by run",
            "ratio": _ratio(many, one),
        }
    return out


async def crowd(
    s: e2e.Stack,
    hot: e2e.BenchTenant,
    others: list[e2e.BenchTenant],
    hot_loaders: int,
    crowd_loaders: int,
    *,
    runs: int,
    seconds: float,
    warmup: float,
) -> dict[str, Any]:
    """The hot tenant alone, then beside ``crowd_loaders`` loaders spread over ``others`` (one replica)."""
    alone, beside, crowd_tally = Tally.empty(), Tally.empty(), Tally.empty()
    for _ in range(runs):
        solo = [Group("hot", e2e.make_loaders(s, [hot], hot_loaders, 1))]
        results, cpu = await measure(s, solo, seconds, warmup)
        alone.add(*results["hot"], cpu)
        groups = [
            Group("hot", e2e.make_loaders(s, [hot], hot_loaders, 1)),
            Group("crowd", e2e.make_loaders(s, others, crowd_loaders, 1)),
        ]
        results, _cpu = await measure(s, groups, seconds, warmup)
        beside.add(*results["hot"])
        crowd_tally.add(*results["crowd"])
    hot_alone, hot_beside = alone.figures(), beside.figures()
    return {
        "tenants": len(others),
        "hot_loaders": hot_loaders,
        "crowd_loaders": crowd_loaders,
        "hot_alone": hot_alone,
        "hot_beside_crowd": hot_beside,
        "crowd": crowd_tally.figures(),
        "reference": "the hot tenant's loaders alone, run by run",
        "hot_ratio": _ratio(hot_beside, hot_alone),
    }


async def run(
    workers: int, concurrency: list[int], *, tenants: int, runs: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """Both measurements on one PostgreSQL with two replicas; the tables are printed as they come."""
    figures: dict[str, Any] = {"workers": workers, "replicas": {}, "tenants": {}}
    async with e2e.stack("postgres", workers, replicas=2) as s:
        quoter = SoftQuoter.create("ecc")
        hot = await e2e.setup_tenant(s, "hot", quoter)
        others = [await e2e.setup_tenant(s, f"tenant-{i:03d}", quoter) for i in range(tenants)]
        for c in concurrency:
            row = await replicas(s, hot, others, c, runs=runs, seconds=seconds, warmup=warmup)
            figures["replicas"][f"c{c}"] = row
            print(replicas_table(row), flush=True)
        for c in concurrency:
            row = await crowd(s, hot, others, c, c, runs=runs, seconds=seconds, warmup=warmup)
            figures["tenants"][f"c{c}"] = row
            print(crowd_table(row), flush=True)
    return figures


def _ratio(measured: dict[str, Any], reference: dict[str, Any]) -> float | None:
    rate, base = measured["releases_per_s"], reference["releases_per_s"]
    return round(rate / base, 3) if base else None


def _cell(f: dict[str, Any]) -> str:
    p99 = "-" if f["p99_ms"] is None else f"{f['p99_ms']:.0f}"
    failed = f" FAILURES {f['failures']}" if f["failures"] else ""
    cpu = f.get("cpu_ms_per_release", {})
    cpu_text = f", cpu ms/rel server {cpu['server']:.1f} pg {cpu.get('postgres', 0):.1f}" if cpu else ""
    return f"{f['releases_per_s']:.1f}/s p99 {p99} ms{cpu_text}{failed}"


def replicas_table(row: dict[str, Any]) -> str:
    n = row["replicas"]
    lines = [f"replicas, {row['concurrency']} loaders ({n} x keyserver serve on one PostgreSQL):"]
    for tenants in ("one_tenant", "spread_tenants"):
        f = row[tenants]
        label = "one tenant" if tenants == "one_tenant" else f"{row['spread_over']} tenants"
        lines.append(
            f"  {label:>12}: 1 replica {_cell(f['one_replica'])} | {n} replicas {_cell(f[f'{n}_replicas'])}"
            f" | ratio {f['ratio']}"
        )
    return "\n".join(lines)


def crowd_table(row: dict[str, Any]) -> str:
    return (
        f"tenants: hot tenant, {row['hot_loaders']} loaders: alone {_cell(row['hot_alone'])};"
        f" beside {row['crowd_loaders']} loaders over {row['tenants']} tenants"
        f" {_cell(row['hot_beside_crowd'])}"
        f" (hot ratio {row['hot_ratio']}); the crowd {_cell(row['crowd'])}"
    )
