"""End-to-end attested releases over HTTP, release latency against log size, and ``keyserver audit verify``.

A real ``keyserver serve`` (uvicorn, ``--workers N``) on a durable throwaway PostgreSQL cluster (fsync on,
synchronous commit, as in production) or on SQLite (WAL, synchronous=FULL), set up through its HTTP API
like a tenant admin would: a software EK pinned, a software AK enrolled by credential activation
(MakeCredential on the server, ActivateCredential in software), reference values, an activated policy,
a key. Loaders then run the protocol: ``POST /challenges``, a TPM-format quote bound to the nonce and the
loader's ephemeral key signed by the software AK (so that no TPM simulator bounds the rate, see
bench/softtpm.py), ``POST /keys/weights/release``; every release is verified, appraised, logged and
committed, and answered with a JWE and a receipt.

Figures per concurrency: attested releases/s (median over runs), the latency of one whole release
(challenge + release; p50/p99 over every sample), and the ratio to the reference measured alongside, run
by run: ``POST /challenges`` alone at the same concurrency (one HTTP request and one committed
transaction, the cheapest committed request the server has). CPU seconds of the server, PostgreSQL and
the load generator per release say where the 2 cores went.
"""

from __future__ import annotations

import asyncio
import base64
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from bench.common import percentile, summary
from bench.loadgen import (
    Connection,
    Samples,
    TpmLoader,
    cpu_seconds,
    run_challenges,
    run_loaders,
    run_open_loop,
)
from bench.log_bench import entry as log_entry
from bench.softtpm import SoftQuoter
from keyserver.backends.software import SoftwareBackend
from keyserver.bootstrap import initialise
from keyserver.config import Settings
from keyserver.db.session import Database, Scope
from keyserver.evidence.tpm import structures as st
from keyserver.releaselog.signing import LogSigner
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import lookup_tenant
from tests.fixtures._proc import free_port
from tests.tpm.helpers import activate_credential, soft_ek

KEYSERVER = str(Path(sys.executable).parent / "keyserver")
HOST = "127.0.0.1"
FILL_BATCH = 1000


@dataclass
class Stack:
    kind: str
    settings: Settings
    operator_token: str
    postgres_pid: int | None
    workers: int
    # Every ``keyserver serve`` process on this store (more than one: as separate hosts would run them,
    # sharing the database and the key-encryption key), with its port and its log.
    ports: tuple[int, ...]
    servers: tuple[subprocess.Popen[bytes], ...]
    server_logs: tuple[Path, ...]

    @property
    def port(self) -> int:
        return self.ports[0]

    @property
    def server(self) -> subprocess.Popen[bytes]:
        return self.servers[0]

    def cpu(self) -> dict[str, float]:
        figures = {"server": sum(cpu_seconds(p.pid) for p in self.servers), "loadgen": _own_cpu()}
        if self.postgres_pid is not None:
            figures["postgres"] = cpu_seconds(self.postgres_pid)
        return figures


def _own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def _postmaster_pid(url: str) -> int:
    import asyncpg
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    conn = await asyncpg.connect(
        host=parsed.host, port=parsed.port, user=parsed.username, database=parsed.database
    )
    try:
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        with open(f"/proc/{backend}/stat") as f:  # while the backend lives: its parent is the postmaster
            raw = f.read()
    finally:
        await conn.close()
    return int(raw[raw.rindex(")") + 2 :].split()[1])


@contextmanager
def _database(kind: str, tmp: Path) -> Iterator[str | None]:
    if kind == "sqlite":
        yield None
        return
    from tests.fixtures.postgres import throwaway_cluster

    with throwaway_cluster(durable=True) as server:
        yield server.url(server.create_migrated_database())


@asynccontextmanager
async def stack(
    kind: str, workers: int, edge: str = "uvloop/httptools", replicas: int = 1
) -> AsyncIterator[Stack]:
    """A fresh store and ``replicas`` ``keyserver serve`` processes on it (``edge``: their event loop and
    HTTP parser, ``LOOP/HTTP``); everything removed afterwards."""
    loop, http = edge.split("/")
    with (
        tempfile.TemporaryDirectory(prefix="keyserver-e2e-") as tmp_name,
        _database(kind, Path(tmp_name)) as url,
    ):
        tmp = Path(tmp_name)
        settings = Settings(data_dir=tmp / "data", database_url=url, auto_migrate=True)
        announced: list[str] = []
        db = Database(settings)
        try:
            await initialise(db, announced.append)
        finally:
            await db.dispose()
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSERVER_")}
        # The tenant's release budget (600/60 s by default) and challenge budget (1200/60 s) would cap
        # what is being measured (the reference run alone asks for thousands of challenges), yet they
        # are on in every deployment and each costs a counter write: so on here, but out of reach.
        unreachable = "1000000000/60"
        env.update(
            KEYSERVER_DATA_DIR=str(settings.data_dir),
            KEYSERVER_LOG_LEVEL="WARNING",
            KEYSERVER_RELEASE_LIMIT_TENANT=unreachable,
            KEYSERVER_CHALLENGE_LIMIT=unreachable,
        )
        if url:
            env["KEYSERVER_DATABASE_URL"] = url
        env.update(server_settings())
        serve_args = [KEYSERVER, "serve", "--host", HOST, "--workers", str(workers)]
        serve_args += ["--loop", loop, "--http", http]
        ports: list[int] = []
        servers: list[subprocess.Popen[bytes]] = []
        logs = [tmp / f"server-{replica}.log" for replica in range(replicas)]
        try:
            for log_path in logs:
                port = free_port()
                with log_path.open("wb") as log_file:
                    servers.append(
                        subprocess.Popen(
                            [*serve_args, "--port", str(port)],
                            env=env,
                            stdout=log_file,
                            stderr=subprocess.STDOUT,
                        )
                    )
                ports.append(port)
                await _wait_ready(port, servers[-1], log_path)
            pg = await _postmaster_pid(url) if url else None
            yield Stack(kind, settings, announced[0], pg, workers, tuple(ports), tuple(servers), tuple(logs))
        finally:
            for server in servers:
                server.terminate()
            for server in servers:
                try:
                    server.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    server.kill()


def server_settings() -> dict[str, str]:
    """``BENCH_SERVER_ENV="KEYSERVER_A=1,KEYSERVER_B=2"``: settings for the servers under test (the
    benchmark's own environment is not passed on, so that a developer's settings do not leak in)."""
    pairs = [p for p in os.environ.get("BENCH_SERVER_ENV", "").split(",") if p.strip()]
    settings = dict(p.strip().split("=", 1) for p in pairs)
    unknown = [name for name in settings if not name.startswith("KEYSERVER_")]
    if unknown:
        raise SystemExit(f"BENCH_SERVER_ENV sets only KEYSERVER_* settings, not {', '.join(unknown)}")
    return settings


async def _wait_ready(port: int, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"keyserver exited early:\n{log.read_text()[-3000:]}")
        conn = Connection(HOST, port)
        try:
            status, _ = await conn.request("GET", "/readyz")
            if status == 200:
                return
        except OSError:
            pass
        finally:
            await conn.close()
        await asyncio.sleep(0.2)
    raise RuntimeError("keyserver did not become ready in 60 s")


@dataclass(frozen=True)
class BenchTenant:
    name: str
    admin: str
    auditor: str
    quoter: SoftQuoter
    key: str = "weights"


async def setup_tenant(s: Stack, name: str, quoter: SoftQuoter) -> BenchTenant:
    """What a tenant admin and a machine do before the first release, over HTTP."""
    conn = Connection(HOST, s.port)

    async def call(method: str, path: str, body: Any, token: str | None, expect: int) -> Any:
        status, answer = await conn.request(method, path, body, token)
        if status != expect:
            raise RuntimeError(f"{method} {path}: {status} {answer}")
        return answer

    try:
        op = s.operator_token
        await call("POST", "/v1/tenants", {"name": name}, op, 201)
        t = f"/v1/tenants/{name}"
        admin = (await call("POST", f"{t}/tokens", {"role": "tenant-admin"}, op, 201))["token"]
        auditor = (await call("POST", f"{t}/tokens", {"role": "auditor"}, admin, 201))["token"]
        # A software EK, pinned by the tenant admin; the AK proves it lives with it by credential activation.
        ek_private = rsa.generate_private_key(65537, 2048)
        ek_public = soft_ek(ek_private)
        ek_blob = b64(st.marshal_tpm2b_public(ek_public))
        await call("POST", f"{t}/tpm/pinned-eks", {"ek_public": ek_blob}, admin, 201)
        started = await call(
            "POST",
            f"{t}/tpm/enrolments",
            {"ek_public": ek_blob, "ak_public": b64(quoter.tpm2b_public)},
            None,
            201,
        )
        secret = activate_credential(
            ek_private,
            ek_public,
            base64.b64decode(started["credential_blob"]),
            base64.b64decode(started["encrypted_secret"]),
            quoter.ak.public.name(),
        )
        await call(
            "POST",
            f"{t}/tpm/enrolments/{started['enrolment_id']}/activate",
            {"secret": b64(secret)},
            None,
            201,
        )
        pcr8 = quoter.pcrs["sha256"][8].hex()
        values = {"version": 1, "expected": {"tpm.pcrs.sha256.8": [pcr8]}}
        await call(
            "POST", f"{t}/reference-values", {"name": "loader", "tee": "tpm", "values": values}, admin, 201
        )
        policy = {
            "version": 1,
            "tees": ["tpm"],
            "reference_values": ["loader"],
            "rules": [{"name": "fresh-boot", "expr": "claims['tpm.reset_count'] >= 0"}],
        }
        await call("POST", f"{t}/policies", {"name": "prod", "document": policy}, admin, 201)
        await call("POST", f"{t}/policies/prod/1/activate", None, admin, 200)
        await call("POST", f"{t}/keys", {"name": "weights", "policy": "prod"}, admin, 201)
    finally:
        await conn.close()
    return BenchTenant(name, admin, auditor, quoter)


def make_loaders(s: Stack, tenants: list[BenchTenant], count: int, replicas: int = 1) -> list[TpmLoader]:
    """``count`` loaders, round-robin over ``tenants`` and over the first ``replicas`` servers."""
    ports = s.ports[:replicas]
    picked = [tenants[i % len(tenants)] for i in range(count)]
    return [TpmLoader(HOST, ports[i % len(ports)], t.name, t.key, t.quoter) for i, t in enumerate(picked)]


async def _close(loaders: list[TpmLoader]) -> None:
    for loader in loaders:
        await loader.conn.close()


def _mark_cpu(s: Stack, marks: list[dict[str, float]]) -> None:
    marks.append(s.cpu())


async def throughput(
    s: Stack, tenant: BenchTenant, concurrency: int, *, runs: int, seconds: float, warmup: float
) -> dict[str, Any]:
    """Releases at ``concurrency`` loaders, interleaved run by run with the challenge-only reference."""
    loaders = make_loaders(s, [tenant], concurrency)
    conns = [Connection(HOST, s.port) for _ in range(concurrency)]
    rates, ref_rates, ratios = [], [], []
    all_samples, ref_samples = Samples(), []
    cpu: dict[str, float] = {}
    releases = 0
    try:
        for _ in range(runs):
            refs, ref_window = await run_challenges(conns, tenant.name, seconds, warmup)
            # CPU over the measured window only: the releases counted are those started in it.
            marks: list[dict[str, float]] = []
            samples, window = await run_loaders(loaders, seconds, warmup, partial(_mark_cpu, s, marks))
            after = s.cpu()
            (before,) = marks
            for name, value in after.items():
                cpu[name] = cpu.get(name, 0.0) + value - before[name]
            releases += len(samples.total)
            rate, ref_rate = len(samples.total) / window, len(refs) / ref_window
            rates.append(rate)
            ref_rates.append(ref_rate)
            ratios.append(rate / ref_rate if ref_rate else 0.0)
            all_samples.total += samples.total
            all_samples.release += samples.release
            for reason, n in samples.failures.items():
                all_samples.failures[reason] = all_samples.failures.get(reason, 0) + n
            ref_samples += refs
    finally:
        await _close(loaders)
        for conn in conns:
            await conn.close()
    ratios.sort()
    total = summary(all_samples.total) if all_samples.total else {"p50_ms": None, "p99_ms": None, "n": 0}
    return {
        "concurrency": concurrency,
        "releases_per_s": round(statistics.median(rates), 1),
        "releases_per_s_runs": [round(r, 1) for r in rates],
        **total,
        "release_request": summary(all_samples.release) if all_samples.release else None,
        "failures": all_samples.failures,
        "reference": "POST /challenges alone, same concurrency, same server (one committed transaction)",
        "reference_per_s": round(statistics.median(ref_rates), 1),
        "reference_latency": summary(ref_samples) if ref_samples else None,
        "ratio": round(statistics.median(ratios), 3),
        "ratio_range": [round(ratios[0], 3), round(ratios[-1], 3)],
        "cpu_ms_per_release": {k: round(1000 * v / releases, 3) for k, v in cpu.items()} if releases else {},
        "runs": runs,
        "seconds_per_run": seconds,
    }


async def open_loop(
    s: Stack, tenant: BenchTenant, rate: float, *, seconds: float, warmup: float, loaders: int = 512
) -> dict[str, Any]:
    """Releases arriving at ``rate`` per second (bench/loadgen.py, ``run_open_loop``): the latency a
    release gets at that arrival rate, which a closed loop of N loaders cannot show (there the mean
    latency is N / throughput whatever the server does: Little's law)."""
    pool = make_loaders(s, [tenant], loaders)
    try:
        marks: list[dict[str, float]] = []
        samples, window, waited = await run_open_loop(
            pool, rate, seconds, warmup, on_window=partial(_mark_cpu, s, marks)
        )
        after = s.cpu()
        (before,) = marks
    finally:
        await _close(pool)
    done = len(samples.total)
    total = summary(samples.total) if samples.total else {"p50_ms": None, "p99_ms": None, "n": 0}
    return {
        "offered_per_s": rate,
        "releases_per_s": round(done / window, 1),
        **total,
        "release_request": summary(samples.release) if samples.release else None,
        "failures": samples.failures,
        "arrivals_that_waited_for_a_loader": waited,
        "loaders": loaders,
        "cpu_ms_per_release": {k: round(1000 * (after[k] - before[k]) / done, 3) for k in after}
        if done
        else {},
        "seconds": seconds,
    }


async def fill_log(s: Stack, tenant_name: str, target: int) -> dict[str, Any]:
    """Grow a tenant's log to ``target`` entries directly in the store (1,000 per transaction, as
    bench/log_bench.py does), with the server's own checkpoint key; then let PostgreSQL settle."""
    db = Database(s.settings)
    started = time.perf_counter()
    try:
        log = ReleaseLog(LogSigner(SoftwareBackend.from_file(s.settings.effective_kek_file), "bench"))
        tenant = await lookup_tenant(db, tenant_name)
        async with db.transaction(Scope.for_tenant(tenant.id)) as session:
            size = (await log.head(session, tenant)).size
        grown_from = size
        while size < target:
            count = min(FILL_BATCH, target - size)
            async with db.transaction(Scope.for_tenant(tenant.id)) as session:
                await log.append(session, tenant, [log_entry(size + i) for i in range(count)])
            size += count
        if db.dialect == "postgresql":
            async with db.engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.exec_driver_sql("VACUUM ANALYZE log_entries, log_nodes, log_heads")
    finally:
        await db.dispose()
    elapsed = time.perf_counter() - started
    return {"size": size, "grown_by": size - grown_from, "seconds": round(elapsed, 1)}


async def sequential_latencies(s: Stack, tenant: BenchTenant, count: int) -> list[float]:
    loader = make_loaders(s, [tenant], 1)[0]
    samples = Samples()
    try:
        for _ in range(count):
            await loader.release_once(samples)
    finally:
        await loader.conn.close()
    if samples.failures:
        raise RuntimeError(f"releases failed: {samples.failures}")
    return samples.release


async def log_size_latency(
    s: Stack,
    small: BenchTenant,
    large: BenchTenant,
    small_size: int,
    large_size: int,
    *,
    rounds: int,
    per_round: int,
) -> dict[str, Any]:
    """One loader, releases of the small-log tenant and of the large-log tenant alternated round by round
    (so that the shared machine's noise hits both alike), after the large one was grown."""
    await fill_log(s, small.name, small_size)
    before = await sequential_latencies(s, small, rounds * per_round // 2)
    filled = await fill_log(s, large.name, large_size)
    small_runs: list[list[float]] = []
    large_runs: list[list[float]] = []
    for r in range(rounds):
        order = [(small, small_runs), (large, large_runs)]
        for tenant, runs in order if r % 2 == 0 else order[::-1]:
            runs.append(await sequential_latencies(s, tenant, per_round))
    ratios = sorted(
        statistics.median(big) / statistics.median(little)
        for big, little in zip(large_runs, small_runs, strict=True)
    )
    flat_small = [t for run in small_runs for t in run]
    flat_large = [t for run in large_runs for t in run]
    return {
        "small_log_entries": small_size,
        "large_log_entries": filled["size"],
        "fill": filled,
        "release_request_small_log": summary(flat_small),
        "release_request_large_log": summary(flat_large),
        "release_request_small_log_before_fill": summary(before),
        "reference": "the same release on a tenant whose log has the small size, alternated round by round",
        "ratio": round(statistics.median(ratios), 3),
        "ratio_range": [round(ratios[0], 3), round(ratios[-1], 3)],
        "p99_ratio": round(percentile(sorted(flat_large), 0.99) / percentile(sorted(flat_small), 0.99), 3),
        "rounds": rounds,
        "releases_per_round": per_round,
    }


async def audit_verify(s: Stack, tenant: BenchTenant, *, runs: int) -> dict[str, Any]:
    """``keyserver audit verify`` (the CLI, as an auditor runs it) against the reference: fetching every
    entry page with the same HTTP client and verifying nothing."""
    from audit.http import HttpLogSource

    url = f"http://{HOST}:{s.port}"
    source = HttpLogSource(url, tenant.name, tenant.auditor)
    try:
        key = source.verifier_key()
        size = int(source.checkpoint().split("\n")[1])
        cli, fetch = [], []
        for _ in range(runs):
            started = time.perf_counter()
            proc = await asyncio.to_thread(
                subprocess.run,
                [KEYSERVER, "audit", "verify", "--url", url, "--tenant", tenant.name,
                 "--token", tenant.auditor, "--key", key, "--json"],
                capture_output=True,
                text=True,
                check=False,
            )  # fmt: skip
            cli.append(time.perf_counter() - started)
            if proc.returncode != 0:
                raise RuntimeError(f"audit verify failed: {proc.stderr[-2000:]}")
            started = time.perf_counter()

            def fetch_all() -> None:
                for start in range(0, size, 1000):
                    source.entries(start, min(start + 1000, size))

            await asyncio.to_thread(fetch_all)
            fetch.append(time.perf_counter() - started)
    finally:
        source.close()
    ratios = sorted(c / f for c, f in zip(cli, fetch, strict=True))
    return {
        "entries": size,
        "seconds_p50": round(statistics.median(cli), 2),
        "seconds_max": round(max(cli), 2),
        "seconds_runs": [round(c, 2) for c in cli],
        "entries_per_s": round(size / statistics.median(cli), 1),
        "reference": "fetching every entry page over HTTP (same client), no verification",
        "reference_seconds_p50": round(statistics.median(fetch), 2),
        "ratio": round(statistics.median(ratios), 3),
        "ratio_range": [round(ratios[0], 3), round(ratios[-1], 3)],
        "runs": runs,
    }
