"""`keyserver serve` as a real process on an empty data directory: what `make run` does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

KEYSERVER = str(Path(sys.executable).parent / "keyserver")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_healthy(url: str, process: subprocess.Popen[str], seconds: float = 30) -> httpx.Response:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"keyserver exited early: {process.communicate()[1]}")
        try:
            return httpx.get(url, timeout=1)
        except httpx.TransportError:
            time.sleep(0.1)
    raise AssertionError("keyserver did not answer in time")


def test_serve_on_an_empty_data_dir(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KEYSERVER_")}
    process = subprocess.Popen(
        [KEYSERVER, "serve", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        health = wait_until_healthy(f"http://127.0.0.1:{port}/healthz", process)
        assert health.json() == {"status": "ok"}
        assert httpx.get(f"http://127.0.0.1:{port}/readyz").status_code == 200
        assert (tmp_path / "keyserver-data" / "keyserver.sqlite3").exists()
        assert (tmp_path / "keyserver-data").stat().st_mode & 0o777 == 0o700
    finally:
        process.terminate()
        _stdout, stderr = process.communicate(timeout=30)
    assert stderr.count("ks1.operator.") == 1
    # Every other stderr line is one JSON log record.
    import json

    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    access = [r for r in records if r["logger"] == "keyserver.access"]
    assert {r["path"] for r in access} >= {"/healthz", "/readyz"}
    assert all("request_id" in r for r in access)
