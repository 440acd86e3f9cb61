"""Profile the release path of a running ``keyserver serve`` under load, with py-spy (test extra).

    python -m bench.profile [--db postgres|sqlite] [--concurrency 16] [--seconds 20] [--workers 2]
                            [--out bench/profiles/NAME] [--native]

Starts the same stack as the end-to-end benchmark, drives TPM releases at the given concurrency, and
samples every server process (``py-spy record --subprocesses``, 200 Hz, idle frames excluded). Writes the
collapsed stacks (``NAME.txt``, for flame-graph tools) and prints the functions with the most inclusive
and self samples, grouped so that the release path's parts (evidence verification, appraisal, log append,
JWE, the framework, the database driver) can be read off directly.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import shutil
import subprocess
import sys
from pathlib import Path

from bench import e2e
from bench.loadgen import run_loaders
from bench.softtpm import SoftQuoter

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

# Inclusive-time buckets, matched on "function (file)" frames, first match wins, innermost frame first.
BUCKETS = [
    ("evidence: TPM quote verification", "evidence/tpm/"),
    ("evidence: dispatch/binding", "evidence/dispatch.py"),
    ("appraisal: policy + reference values", "keyserver/appraisal.py"),
    ("log append + checkpoint + proof", "releaselog/"),
    ("key unwrap + JWE", "keyserver/jwe.py"),
    ("challenge consume", "keyserver/challenges.py"),
    ("challenge issue", "api/protocol.py:challenge"),
]


def summarise(collapsed: Path, top: int = 30) -> str:
    inclusive: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    total = 0
    pending = ""
    for raw in collapsed.read_text().splitlines():
        # A frame's name can hold a newline (code compiled from a string): join until the count.
        line, pending = pending + raw, ""
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            pending = line
            continue
        count = int(count_text)
        total += count
        frames = stack.split(";")
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count
        leaf_file = frames[-1].rpartition("(")[2].split(":")[0]
        files[_package(leaf_file)] += count
    if not total:
        return "no samples"
    lines = [f"{total} samples (200 Hz, all server processes, idle excluded)", "", "self time by package:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in files.most_common(15)]
    lines += ["", "inclusive, top functions:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in inclusive.most_common(top)]
    lines += ["", "self, top functions:"]
    lines += [f"  {100 * n / total:5.1f}%  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


def _package(path: str) -> str:
    for marker in ("site-packages/", "/work/", "lib/python3.11/"):
        if marker in path:
            rest = path.split(marker, 1)[1]
            parts = rest.split("/")
            return "/".join(parts[:2]) if marker == "/work/" else parts[0]
    return path or "?"


async def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    collapsed = out.with_suffix(".txt")
    async with e2e.stack(args.db, args.workers) as s:
        tenant = await e2e.setup_tenant(s, "acme", SoftQuoter.create("ecc"))
        loaders = e2e.make_loaders(s, [tenant], args.concurrency)
        await run_loaders(loaders, 2.0, 0.0)  # warm up before sampling
        spy = subprocess.Popen(
            [PY_SPY, "record", "--pid", str(s.server.pid), "--subprocesses", "--rate", "200",
             "--duration", str(int(args.seconds)), "--format", "raw", "--output", str(collapsed),
             *(["--native"] if args.native else ["--nonblocking"])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        samples, window = await run_loaders(loaders, args.seconds + 1, 0.0)
        _, err = spy.communicate(timeout=60)
        await e2e._close(loaders)
        if spy.returncode != 0:
            raise SystemExit(f"py-spy failed: {err.decode()[-2000:]}")
    rate = len(samples.total) / window
    # Paths of this checkout are written relative to it: a summary is committed, and must not name a
    # place outside the repository (tests/test_self_contained.py).
    report = summarise(collapsed).replace(f"{Path(__file__).resolve().parent.parent}/", "")
    header = (
        f"{args.db}, {args.workers} workers, {args.concurrency} loaders: {rate:.1f} releases/s while sampled"
    )
    out.with_suffix(".summary.txt").write_text(header + "\n" + report + "\n")
    print(header)
    print(report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", choices=["postgres", "sqlite"], default="postgres")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", default="bench/profiles/release")
    # C and Cython frames too (asyncpg's protocol, uvloop): without them their time is charged to the
    # innermost Python frame (asyncpg's PreparedStatement.__do_execute, asyncio's Runner.run).
    parser.add_argument("--native", action="store_true")
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
