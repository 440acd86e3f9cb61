"""`keyserver serve` as a real process on an empty data directory: what `make run` does."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from tests.fixtures.server import clean_env, start_server


def test_serve_on_an_empty_data_dir(tmp_path: Path) -> None:
    server = start_server(tmp_path, clean_env())
    try:
        assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
        assert httpx.get(server.url + "/readyz").status_code == 200
        assert (tmp_path / "keyserver-data" / "keyserver.sqlite3").exists()
        assert (tmp_path / "keyserver-data").stat().st_mode & 0o777 == 0o700
    finally:
        stderr = server.stop()
    assert stderr.count("ks1.operator.") == 1
    # Every other stderr line is one JSON log record.
    records = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    access = [r for r in records if r["logger"] == "keyserver.access"]
    assert {r["path"] for r in access} >= {"/healthz", "/readyz"}
    assert all("request_id" in r for r in access)
