"""``make bench`` / ``python -m bench``: every benchmark, a table on stdout, figures in bench/results.json.

Sections (``--only`` picks some): ``verifiers`` (bench/verifiers.py), ``e2e`` (attested releases per second
over HTTP at several concurrencies, PostgreSQL and SQLite), ``log-size`` (release latency with the
tenant's log at 10^3 vs 10^6 entries) and ``audit`` (``keyserver audit verify`` at 10^5 and 10^6 entries);
the last two share the PostgreSQL stack. ``scale-out`` (bench/scale_out.py: two replicas on one
PostgreSQL, many tenants beside a hot one) and ``requests`` (bench/requests.py: server CPU per request
kind — the HTTP stack alone, a challenge, a whole release), ``evaluation`` (bench/evaluation.py: what
handing a policy evaluation to its worker process costs) and ``open-loop`` (releases arriving at fixed
rates, ``--rates``, whatever the answers: the latency a release gets at a given arrival rate) run only when
asked for (``--only …``).
``--quick`` (or ``BENCH_QUICK=1``) runs every code path with
tiny sizes and durations: a smoke run, not a measurement. The release-log micro-benchmark stays
``python -m bench.log_bench``.

Nothing here asserts a time: figures are printed and recorded, each with the reference it was measured
against in the same run, because the machine may be shared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from typing import Any

from bench import e2e, evaluation, requests, scale_out, verifiers
from bench.common import quick_mode, record
from bench.softtpm import SoftQuoter

SECTIONS = ("verifiers", "e2e", "log-size", "audit")
# Not in the default run: scale-out is PostgreSQL only and minutes of set-up; requests is a breakdown.
ON_REQUEST = ("scale-out", "requests", "evaluation", "open-loop")


def _ints(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",") if x]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run (same as BENCH_QUICK=1)")
    parser.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated: {','.join(SECTIONS + ON_REQUEST)}"
    )
    parser.add_argument("--db", choices=["postgres", "sqlite", "both"], default="both", help="for e2e")
    parser.add_argument(
        "--workers",
        type=int,
        help="keyserver serve --workers (default: e2e 2 on PostgreSQL, 1 on SQLite; requests 1; scale-out 2)",
    )
    parser.add_argument("--concurrency", help="loaders, comma-separated (default 1,16,64)")
    parser.add_argument(
        "--http-edges",
        help="e2e only: compare HTTP edges in one run, e.g. asyncio/h11,uvloop/httptools (LOOP/HTTP each;"
        " default: the serve default, uvloop/httptools, alone)",
    )
    parser.add_argument("--seconds", type=float, help="measured seconds per run (default 8)")
    parser.add_argument("--runs", type=int, help="runs per concurrency (default 3)")
    parser.add_argument("--log-sizes", help="small,large log sizes (default 1000,1000000)")
    parser.add_argument("--audit-sizes", help="log sizes for audit verify (default 100000,1000000)")
    parser.add_argument("--tenants", type=int, help="scale-out: tenants beside the hot one (default 100)")
    parser.add_argument(
        "--rates", help="open-loop: arrivals per second, comma-separated (default 100,200,300)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        os.environ["BENCH_QUICK"] = "1"
    quick = quick_mode()
    args.sections = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS + ON_REQUEST)
    if unknown:
        parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
    args.workers_given, args.workers = args.workers, args.workers or 2
    args.concurrency_given = args.concurrency is not None
    args.concurrency = _ints(args.concurrency or ("1,4" if quick else "1,16,64"))
    args.seconds = args.seconds or (1.0 if quick else 8.0)
    args.runs = args.runs or (1 if quick else 3)
    args.log_sizes = _ints(args.log_sizes or ("100,1000" if quick else "1000,1000000"))
    args.audit_sizes = _ints(args.audit_sizes or ("1000" if quick else "100000,1000000"))
    args.rates = _ints(args.rates or ("20" if quick else "100,200,300"))
    args.tenants = args.tenants or (3 if quick else 100)
    return args


def e2e_table(kind: str, rows: dict[str, Any]) -> str:
    lines = [
        f"{kind}: attested TPM releases over HTTP (software-held AK, TPM-format quotes: no TPM simulator in"
        " the loop)",
        f"{'loaders':>8}{'rel/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'ref/s':>9}{'ratio':>8}  cpu ms/release",
    ]
    for f in rows.values():
        cpu = ", ".join(f"{k} {v:.2f}" for k, v in f["cpu_ms_per_release"].items())
        p50 = f"{f['p50_ms']:.1f}" if f["p50_ms"] is not None else "-"
        p99 = f"{f['p99_ms']:.1f}" if f["p99_ms"] is not None else "-"
        failed = f"  FAILURES {f['failures']}" if f["failures"] else ""
        lines.append(
            f"{f['concurrency']:>8}{f['releases_per_s']:>9.1f}{p50:>9}{p99:>9}{f['reference_per_s']:>9.1f}"
            f"{f['ratio']:>8.2f}  {cpu}{failed}"
        )
    lines.append("  ref = POST /challenges alone at the same concurrency; ratio = releases/s / ref/s per run")
    return "\n".join(lines)


def e2e_workers(kind: str, args: argparse.Namespace) -> int:
    """``keyserver serve --workers`` for the e2e stack: as given, else 2 on PostgreSQL and 1 on SQLite.

    SQLite has one writer and a release holds it from its first statement to its commit, so a second
    process adds no parallelism, only contention for the file lock (measured: 48 against 67 releases/s at
    16 loaders, docs/performance.md); one worker is ``keyserver serve``'s default and what the README
    recommends on SQLite."""
    if args.workers_given:
        return int(args.workers)
    return 1 if kind == "sqlite" else 2


async def run_stack(kind: str, args: argparse.Namespace, figures: dict[str, Any], *, first: bool) -> None:
    """e2e on every database asked for; log-size and audit on the first one only (PostgreSQL by default)."""
    want_e2e = "e2e" in args.sections
    want_log = first and "log-size" in args.sections
    want_audit = first and "audit" in args.sections
    if not (want_e2e or want_log or want_audit):
        return
    warmup = 0.3 if quick_mode() else 1.5
    workers = e2e_workers(kind, args)
    grown: dict[int, e2e.BenchTenant] = {}  # log size -> a tenant whose log was grown to it
    edges = [e for e in (args.http_edges or "").split(",") if e]
    if want_e2e and edges:
        # The HTTP edges side by side, same harness, same store kind, back to back.
        for edge in edges:
            async with e2e.stack(kind, workers, edge) as s:
                tenant = await e2e.setup_tenant(s, "acme", SoftQuoter.create("ecc"))
                edge_rows: dict[str, Any] = {}
                for c in args.concurrency:
                    edge_rows[f"c{c}"] = await e2e.throughput(
                        s, tenant, c, runs=args.runs, seconds=args.seconds, warmup=warmup
                    )
                print(f"HTTP edge {edge}:\n" + e2e_table(kind, edge_rows), flush=True)
                edge_figures = {"workers": workers, **edge_rows}
                figures.setdefault("http_edge", {}).setdefault(kind, {})[edge] = edge_figures
        return
    async with e2e.stack(kind, workers) as s:
        quoter = SoftQuoter.create("ecc")
        if want_e2e:
            tenant = await e2e.setup_tenant(s, "acme", quoter)
            rows: dict[str, Any] = {}
            for c in args.concurrency:
                rows[f"c{c}"] = await e2e.throughput(
                    s, tenant, c, runs=args.runs, seconds=args.seconds, warmup=warmup
                )
                print(e2e_table(kind, {f"c{c}": rows[f"c{c}"]}).splitlines()[-2], flush=True)
            figures.setdefault("e2e", {})[kind] = {"workers": workers, **rows}
            print(e2e_table(kind, rows), flush=True)
        if want_log:
            small, large = args.log_sizes[0], args.log_sizes[-1]
            small_t = await e2e.setup_tenant(s, "small", quoter)
            large_t = await e2e.setup_tenant(s, "large", quoter)
            rounds, per_round = (2, 10) if quick_mode() else (10, 40)
            result = await e2e.log_size_latency(
                s, small_t, large_t, small, large, rounds=rounds, per_round=per_round
            )
            figures["log_size"] = {kind: result}
            grown[large] = large_t
            a, b = result["release_request_small_log"], result["release_request_large_log"]
            print(
                f"{kind}: release request at {result['small_log_entries']:,} entries p50 {a['p50_ms']:.2f} ms"
                f" (p99 {a['p99_ms']:.2f}); at {result['large_log_entries']:,} entries p50 {b['p50_ms']:.2f}"
                f" ms (p99 {b['p99_ms']:.2f}); ratio {result['ratio']:.2f}"
                f" ({result['ratio_range'][0]:.2f}-{result['ratio_range'][1]:.2f}), p99 ratio"
                f" {result['p99_ratio']:.2f}",
                flush=True,
            )
        if want_audit:
            audits: dict[str, Any] = {}
            audited = await e2e.setup_tenant(s, "audited", quoter)
            for size in sorted(args.audit_sizes):
                # The log-size section's large log serves when it has this size (growing 10^6 takes minutes).
                tenant = grown.get(size, audited)
                await e2e.fill_log(s, tenant.name, size)
                runs = 1 if quick_mode() or size >= 1_000_000 else 3
                result = await e2e.audit_verify(s, tenant, runs=runs)
                audits[str(size)] = result
                print(
                    f"{kind}: keyserver audit verify, {result['entries']:,} entries:"
                    f" {result['seconds_p50']:.1f} s"
                    f" ({result['entries_per_s']:,.0f} entries/s); fetch-only reference"
                    f" {result['reference_seconds_p50']:.1f} s; ratio {result['ratio']:.2f}",
                    flush=True,
                )
            figures["audit_verify"] = {kind: audits}


async def open_loop(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """The open-loop section on one store: the e2e stack and tenant, each rate in turn."""
    workers = e2e_workers(kind, args)
    rows: dict[str, Any] = {"workers": workers}
    async with e2e.stack(kind, workers) as s:
        tenant = await e2e.setup_tenant(s, "acme", SoftQuoter.create("ecc"))
        for rate in args.rates:
            rows[f"r{rate}"] = await e2e.open_loop(
                s, tenant, rate, seconds=args.seconds, warmup=0.3 if quick_mode() else 1.5
            )
    return rows


def open_loop_table(kind: str, rows: dict[str, Any]) -> str:
    lines = [
        f"{kind}, {rows['workers']} workers: releases arriving at a rate (Poisson), latency from arrival"
    ]
    lines.append(
        f"{'offered/s':>10}{'done/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'waited':>8}  server/pg/loadgen CPU ms"
    )
    for key, f in rows.items():
        if not key.startswith("r"):
            continue
        cpu = f["cpu_ms_per_release"]
        p50 = "-" if f["p50_ms"] is None else f"{f['p50_ms']:.1f}"
        p99 = "-" if f["p99_ms"] is None else f"{f['p99_ms']:.1f}"
        lines.append(
            f"{f['offered_per_s']:>10}{f['releases_per_s']:>9.1f}{p50:>9}{p99:>9}"
            f"{f['arrivals_that_waited_for_a_loader']:>8}  "
            + "/".join(str(cpu.get(k, "-")) for k in ("server", "postgres", "loadgen"))
        )
        if f["failures"]:
            lines.append(f"{'':>10}failures: {f['failures']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    figures: dict[str, Any] = {}
    if "verifiers" in args.sections:
        figures["verifiers"] = verifiers.main()
    kinds = ["postgres", "sqlite"] if args.db == "both" else [args.db]
    for i, kind in enumerate(kinds):
        asyncio.run(run_stack(kind, args, figures, first=i == 0))
    if "scale-out" in args.sections:
        warmup = 0.3 if quick_mode() else 1.5
        figures["scale_out"] = asyncio.run(
            scale_out.run(
                args.workers,
                args.concurrency,
                tenants=args.tenants,
                runs=args.runs,
                seconds=args.seconds,
                warmup=warmup,
            )
        )
    if "requests" in args.sections:
        for kind in ["postgres", "sqlite"] if args.db == "both" else [args.db]:
            result = asyncio.run(
                requests.run(
                    kind,
                    args.workers_given or 1,
                    args.concurrency[-1] if args.concurrency_given else 4,
                    runs=args.runs,
                    seconds=args.seconds,
                )
            )
            print(requests.table(kind, result), flush=True)
            figures.setdefault("requests", {})[kind] = result
    if "open-loop" in args.sections:
        for kind in ["postgres", "sqlite"] if args.db == "both" else [args.db]:
            result = asyncio.run(open_loop(kind, args))
            print(open_loop_table(kind, result), flush=True)
            figures.setdefault("open_loop", {})[kind] = result
    if "evaluation" in args.sections:
        result = asyncio.run(evaluation.run(runs=args.runs, seconds=args.seconds))
        print(evaluation.table(result), flush=True)
        figures["evaluation"] = result
    notes = {
        "loadgen": "loaders and server share the machine; quotes are TPM wire format signed by a software AK",
        "concurrency": args.concurrency,
        "workers": args.workers if args.workers_given else "2 on PostgreSQL, 1 on SQLite (see each section)",
    }
    sections = (
        "e2e",
        "http_edge",
        "log_size",
        "audit_verify",
        "scale_out",
        "requests",
        "evaluation",
        "open_loop",
    )
    for section in sections:
        if section in figures:
            record(section, {**figures[section], "notes": notes})


if __name__ == "__main__":
    main()
