"""A small HTTP/1.1 keep-alive client and the TPM loader it drives, for the end-to-end benchmark.

httpx costs about a millisecond of CPU per request, which on a 2-core machine shared with the server
would measure the client. This client writes a request and reads ``Content-Length`` bytes back, nothing
more; each loader owns one connection (as one loader in one VM would).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from bench.softtpm import SoftQuoter
from keyserver.binding import binding, report_data_for


class HttpError(Exception):
    pass


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._reader is None or self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self._reader, self._writer

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            with contextlib.suppress(OSError):
                await self._writer.wait_closed()
        self._reader = self._writer = None

    async def request(
        self, method: str, path: str, body: Any = None, token: str | None = None
    ) -> tuple[int, Any]:
        reused = self._reader is not None
        try:
            return await self._request(method, path, body, token)
        except (asyncio.IncompleteReadError, ConnectionResetError, BrokenPipeError):
            if not reused:
                raise
            # The server closed an idle keep-alive connection (uvicorn: after 5 s): once more, afresh.
            await self.close()
            return await self._request(method, path, body, token)

    async def _request(self, method: str, path: str, body: Any, token: str | None) -> tuple[int, Any]:
        reader, writer = await self._open()
        data = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
        head = f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Length: {len(data)}\r\n"
        if body is not None:
            head += "Content-Type: application/json\r\n"
        if token is not None:
            head += f"Authorization: Bearer {token}\r\n"
        writer.write(head.encode() + b"\r\n" + data)
        status_line = await reader.readuntil(b"\r\n")
        status = int(status_line.split(b" ", 2)[1])
        length, close = 0, False
        while True:
            line = await reader.readuntil(b"\r\n")
            if line == b"\r\n":
                break
            name, _, value = line.partition(b":")
            lowered = name.strip().lower()
            if lowered == b"content-length":
                length = int(value)
            elif lowered == b"transfer-encoding":
                raise HttpError("chunked responses are not supported by this client")
            elif lowered == b"connection" and value.strip().lower() == b"close":
                close = True
        payload = await reader.readexactly(length) if length else b""
        if close:
            await self.close()
        return status, json.loads(payload) if payload else None


@dataclass
class Samples:
    """Per-release latencies (seconds): the whole attested release (challenge + release) and the
    release request alone, and what went wrong."""

    total: list[float] = field(default_factory=list)
    release: list[float] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)


class TpmLoader:
    """One loader: an ephemeral P-256 key, one connection, quotes from the shared software AK."""

    def __init__(self, host: str, port: int, tenant: str, key: str, quoter: SoftQuoter) -> None:
        self.conn = Connection(host, port)
        self.tenant, self.key, self.quoter = tenant, key, quoter
        private = ec.generate_private_key(ec.SECP256R1())
        self.jwk = ECKey.import_key(private.public_key()).as_dict(private=False)
        self.ak_name, self.pcrs = quoter.name_hex, quoter.pcrs_hex()

    async def release_once(self, samples: Samples, arrived: float | None = None) -> None:
        """One attested release on a fresh connection (a real loader releases once per boot: the
        connections then also spread over the server's worker processes as real ones would). Its
        latency runs from ``arrived`` (an open-loop arrival's scheduled time) if given, else from now."""
        try:
            await self._release(samples, arrived)
        finally:
            await self.conn.close()

    async def _release(self, samples: Samples, arrived: float | None) -> None:
        started = time.perf_counter() if arrived is None else arrived
        status, challenge = await self.conn.request("POST", f"/v1/tenants/{self.tenant}/challenges", {})
        if status != 201:
            samples.failures[f"challenge-{status}"] = samples.failures.get(f"challenge-{status}", 0) + 1
            return
        nonce = base64.urlsafe_b64decode(challenge["nonce"] + "==")
        attest, signature = self.quoter.quote(report_data_for("tpm", binding(nonce, self.jwk)))
        body = {
            "challenge": challenge["id"],
            "evidence": {
                "tee": "tpm",
                "ak_name": self.ak_name,
                "quote": base64.b64encode(attest).decode(),
                "signature": base64.b64encode(signature).decode(),
                "pcrs": self.pcrs,
            },
            "ephemeral_key": self.jwk,
        }
        sent = time.perf_counter()
        status, answer = await self.conn.request(
            "POST", f"/v1/tenants/{self.tenant}/keys/{self.key}/release", body
        )
        done = time.perf_counter()
        if status != 200:
            reason = f"release-{status}-{(answer or {}).get('reason')}"
            samples.failures[reason] = samples.failures.get(reason, 0) + 1
            return
        samples.total.append(done - started)
        samples.release.append(done - sent)


def _at_window_start(
    measure_from: float, on_window: Callable[[], object] | None
) -> asyncio.Task[None] | None:
    """``on_window`` called once when the measured window opens (for CPU read over that window only: the
    releases counted are those started in it, so CPU spent in the warm-up must not be divided by them)."""
    if on_window is None:
        return None

    async def call() -> None:
        await asyncio.sleep(max(0.0, measure_from - time.perf_counter()))
        on_window()

    return asyncio.create_task(call())


async def run_loaders(
    loaders: list[TpmLoader],
    seconds: float,
    warmup: float,
    on_window: Callable[[], object] | None = None,
) -> tuple[Samples, float]:
    """Every loader releases in a loop for ``warmup`` + ``seconds``; samples from the measured window
    only (``on_window`` is called as it opens). Returns the samples and the measured window's length."""
    samples, discard = Samples(), Samples()
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    opened = _at_window_start(measure_from, on_window)

    async def loop(loader: TpmLoader) -> None:
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            await loader.release_once(samples if now >= measure_from else discard)

    await asyncio.gather(*(loop(loader) for loader in loaders))
    if opened is not None:
        await opened
    # Releases that started inside the window and finished after it count; the window is then longer.
    return samples, max(time.perf_counter() - measure_from, seconds)


async def run_open_loop(
    loaders: list[TpmLoader],
    rate: float,
    seconds: float,
    warmup: float,
    seed: int = 1,
    on_window: Callable[[], object] | None = None,
) -> tuple[Samples, float, int]:
    """Releases ARRIVING at ``rate`` per second (Poisson arrivals, seeded), whatever the answers: a fleet
    that reboots does not wait for one VM's key before the next VM asks. Each arrival is served by an
    idle loader; its latency runs from its scheduled arrival, so time spent waiting for a loader (or
    for a server that fell behind) counts — no coordinated omission. Samples are those that arrived in
    the measured window; returns them, the window, and how many arrivals found no loader idle."""
    idle: asyncio.Queue[TpmLoader] = asyncio.Queue()
    for loader in loaders:
        idle.put_nowait(loader)
    samples, discard = Samples(), Samples()
    arrivals = random.Random(seed)
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds
    opened = _at_window_start(measure_from, on_window)
    waited = 0
    tasks: list[asyncio.Task[None]] = []

    async def serve(arrived: float) -> None:
        nonlocal waited
        if idle.empty():
            waited += arrived >= measure_from
        loader = await idle.get()
        try:
            await loader.release_once(samples if arrived >= measure_from else discard, arrived)
        finally:
            idle.put_nowait(loader)

    at = start
    while True:
        at += arrivals.expovariate(rate)
        if at >= stop_at:
            break
        delay = at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(serve(at)))
    await asyncio.gather(*tasks)
    if opened is not None:
        await opened
    return samples, max(time.perf_counter() - measure_from, seconds), waited


async def run_challenges(
    conns: list[Connection], tenant: str, seconds: float, warmup: float
) -> tuple[list[float], float]:
    """The reference: POST /challenges alone (one HTTP request, one committed transaction)."""
    samples: list[float] = []
    start = time.perf_counter()
    measure_from, stop_at = start + warmup, start + warmup + seconds

    async def loop(conn: Connection) -> None:
        while True:
            now = time.perf_counter()
            if now >= stop_at:
                return
            status, _ = await conn.request("POST", f"/v1/tenants/{tenant}/challenges", {})
            if status == 201 and now >= measure_from:
                samples.append(time.perf_counter() - now)

    try:
        await asyncio.gather(*(loop(c) for c in conns))
    finally:
        for conn in conns:
            await conn.close()
    return samples, max(time.perf_counter() - measure_from, seconds)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of ``pid``, its reaped children, and its live descendants."""
    tick = os.sysconf("SC_CLK_TCK")
    stats: dict[int, tuple[int, list[str]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                raw = f.read()
        except OSError:
            continue
        fields = raw[raw.rindex(")") + 2 :].split()
        stats[int(entry)] = (int(fields[1]), fields)  # ppid, fields from "state" on
    total, todo, seen = 0, [pid], set()
    while todo:
        current = todo.pop()
        if current in seen or current not in stats:
            continue
        seen.add(current)
        fields = stats[current][1]
        # utime, stime, cutime, cstime are fields 14-17 of /proc/PID/stat (11-14 from "state").
        total += sum(int(x) for x in fields[11:15])
        todo += [child for child, (ppid, _) in stats.items() if ppid == current]
    return total / tick
