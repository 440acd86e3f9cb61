"""A worker that starts while PostgreSQL is down (issue 23), in process and as the chaos run found it.

* In process: an app started with its database stopped starts; ``/healthz`` 200, ``/readyz`` and every
  request that needs the store 503; once the database is started again the start-up checks run and it
  serves, with no restart. A role that would bypass row-level security, found only then, is refused.
* ``keyserver serve --workers 2``, PostgreSQL stopped, one worker ``kill -9``'d, PostgreSQL started:
  the replacement worker starts without the database, the server stays up, and releases (real swtpm
  quotes) are granted again without any restart. Before the fix the replacement failed its start-up,
  uvicorn stopped the parent with the healthy worker, and ``keyserver serve`` exited 0.
* A stop nobody asked for (a replacement worker that refuses its role) ends ``keyserver serve`` with a
  non-zero status; SIGTERM ends it with 0.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from litestar.testing import AsyncTestClient
from tpm2_pytss import ESAPI

from keyserver.app import create_app
from keyserver.bootstrap import initialise
from keyserver.config import Settings
from keyserver.db.session import Database
from tests.conftest import Service, bearer
from tests.fixtures._proc import free_port
from tests.fixtures.postgres import PostgresCluster, throwaway_cluster
from tests.fixtures.server import KEYSERVER, ServerProcess, clean_env, start_server
from tests.test_release_swtpm import Loader, extend, loader_ak, setup_tenant

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def cluster() -> Iterator[PostgresCluster]:
    with throwaway_cluster(crash_safe=True) as running:
        yield running


@pytest.fixture
def database_url(cluster: PostgresCluster) -> Iterator[str]:
    if not cluster.is_running():
        cluster.start()
    name = cluster.create_migrated_database()
    yield cluster.url(name)
    if not cluster.is_running():
        cluster.start()
    cluster.admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _initialise(settings: Settings) -> str:
    announced: list[str] = []
    db = Database(settings)
    try:
        await initialise(db, announced.append)
    finally:
        await db.dispose()
    return announced[0]


async def _wait_ready(client: Any, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if (await client.get("/readyz")).status_code == 200:
            return
        await asyncio.sleep(0.2)
    raise AssertionError("not ready in time after the database came back")


async def test_app_starts_without_its_database_and_serves_once_it_answers(
    cluster: PostgresCluster, database_url: str, tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url, db_timeout_s=1.0)
    operator = await _initialise(settings)
    cluster.stop("immediate")
    app = create_app(settings, announce=lambda _token: None)
    async with AsyncTestClient(app=app) as client:  # the start-up itself must not fail
        assert (await client.get("/healthz")).status_code == 200
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["type"] == "urn:keyserver:problem:unavailable"
        assert (await client.get("/v1/whoami", headers=bearer(operator))).status_code == 503
        assert (await client.post("/v1/tenants/acme/challenges")).status_code == 503
        cluster.start()
        await _wait_ready(client)
        whoami = await client.get("/v1/whoami", headers=bearer(operator))
        assert whoami.status_code == 200, whoami.text


async def test_a_bad_role_found_when_the_database_comes_back_is_refused(
    cluster: PostgresCluster, database_url: str, tmp_path: Path
) -> None:
    superuser_url = database_url.replace(f"{cluster.service_role}@", "postgres@")
    assert superuser_url != database_url
    settings = Settings(data_dir=tmp_path / "data", database_url=superuser_url, db_timeout_s=1.0)
    cluster.stop("immediate")
    app = create_app(settings, announce=lambda _token: None)
    async with AsyncTestClient(app=app) as client:
        cluster.start()
        details = []
        for _ in range(40):  # an attempt is made at most once a second; each one refuses again
            response = await client.get("/readyz")
            assert response.status_code == 503
            details.append(response.json()["detail"])
            await asyncio.sleep(0.2)
        refusals = [i for i, detail in enumerate(details) if "refuses to serve" in detail]
        assert refusals, details
        assert refusals == list(range(refusals[0], len(details))), details
        assert (await client.get("/healthz")).status_code == 200


async def test_serve_starts_while_postgres_is_down(
    cluster: PostgresCluster, database_url: str, tmp_path: Path
) -> None:
    """A whole `keyserver serve` (re)started by its supervisor during an outage runs, ready once it ends."""
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    operator = await _initialise(settings)
    cluster.stop("immediate")
    env = clean_env(
        KEYSERVER_DATA_DIR=str(settings.data_dir),
        KEYSERVER_DATABASE_URL=database_url,
    )
    server = start_server(tmp_path, env)
    try:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            assert (await client.get("/readyz")).status_code == 503
            cluster.start()
            await _wait_ready(client)
            assert (await client.get("/v1/whoami", headers=bearer(operator))).status_code == 200
    finally:
        stderr = server.stop()
    assert "the database did not answer at start" in stderr
    # Asked to stop: uvicorn's single-worker server re-raises the SIGTERM it handled once it has shut down.
    assert server.process.returncode in (0, -signal.SIGTERM), stderr[-3000:]


def _wait_for(condition: Any, seconds: float, what: str) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def _replace_a_worker(server: ServerProcess) -> int:
    """kill -9 one worker; return the pid of the worker the supervisor started in its place."""
    before = _wait_for(lambda: len(server.worker_pids()) == 2 and server.worker_pids(), 30, "two workers")
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    after = _wait_for(
        lambda: (pids := server.worker_pids()) - before and len(pids) == 2 and pids, 30, "a new worker"
    )
    (replacement,) = after - before
    return cast(int, replacement)


def _start_logged(cwd: Path, env: dict[str, str], stderr_path: Path) -> ServerProcess:
    """``keyserver serve --workers 2`` with its log in a file, to be read while it runs."""
    port = free_port()
    with stderr_path.open("w") as stderr:
        process = subprocess.Popen(
            [KEYSERVER, "serve", "--port", str(port), "--workers", "2"],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
        )
    server = ServerProcess(f"http://127.0.0.1:{port}", cwd, process)
    _wait_for(lambda: process.poll() is not None or _healthz(server), 60, "the server to answer")
    assert process.poll() is None, stderr_path.read_text()[-3000:]
    return server


def _startups(stderr_path: Path) -> int:
    """Worker start-ups that have ended, well or not (uvicorn logs one line for each)."""
    return sum(
        1
        for line in stderr_path.read_text().splitlines()
        if "Application startup complete" in line or "Application startup failed" in line
    )


def _healthz(server: ServerProcess) -> bool:
    try:
        return httpx.get(server.url + "/healthz", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


@pytest.mark.swtpm
async def test_two_workers_survive_a_worker_killed_while_postgres_is_down(
    cluster: PostgresCluster, database_url: str, tmp_path: Path, swtpm: Any, tpm_esapi: ESAPI
) -> None:
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    operator = await _initialise(settings)
    env = clean_env(
        KEYSERVER_DATA_DIR=str(settings.data_dir),
        KEYSERVER_DATABASE_URL=database_url,
    )
    stderr_path = tmp_path / "serve.stderr"
    server = _start_logged(tmp_path, env, stderr_path)
    try:
        extend(tpm_esapi, b"reviewed loader build 1")
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            remote = cast(Service, _Remote(client, operator))
            # Alive (/healthz) is not ready: a worker whose start-up check did not get its answer in time
            # (a loaded machine) answers 503 until its next try. The outage below is what this test is about.
            await _wait_ready(client)
            with loader_ak(tpm_esapi) as ak:
                await setup_tenant(remote, swtpm, tpm_esapi, ak)
                loader = Loader(remote, tpm_esapi, ak)
                assert (await loader.release()).status_code == 200

                cluster.stop("immediate")
                replacement = _replace_a_worker(server)
                # The replacement finishes its start-up without the database (before: it failed, and
                # uvicorn stopped the parent with the healthy worker, exit status 0).
                _wait_for(
                    lambda: server.process.poll() is not None or _startups(stderr_path) == 3,
                    60,
                    "the replacement worker's start-up to end",
                )
                log = stderr_path.read_text()
                assert log.count("Application startup complete") == 3, log[-3000:]
                await asyncio.sleep(2)  # the supervisor looks every 0.5 s
                assert server.process.poll() is None, stderr_path.read_text()[-3000:]
                assert replacement in server.worker_pids()
                assert _healthz(server)
                assert (await client.get("/readyz")).status_code == 503

                cluster.start()
                await _wait_ready(client)
                # Fresh connections land on either worker; every release is granted, none needs a restart.
                for _ in range(6):
                    async with httpx.AsyncClient(base_url=server.url, timeout=30) as fresh:
                        assert (await fresh.get("/readyz")).status_code == 200
                    granted = await loader.release()
                    assert granted.status_code == 200, granted.text
                assert replacement in server.worker_pids()
                assert server.process.poll() is None
    finally:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
    assert server.process.returncode == 0, stderr_path.read_text()[-3000:]


def test_an_unrequested_stop_exits_non_zero(
    cluster: PostgresCluster, database_url: str, tmp_path: Path
) -> None:
    """A replacement worker that refuses its role fails to start; uvicorn then stops the parent: the
    exit status must say so (before: 0, and a restart-on-failure supervisor left the service down)."""
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    asyncio.run(_initialise(settings))
    env = clean_env(KEYSERVER_DATA_DIR=str(settings.data_dir), KEYSERVER_DATABASE_URL=database_url)
    server = start_server(tmp_path, env, workers=2)
    try:
        _wait_for(lambda: len(server.worker_pids()) == 2, 30, "two workers")
        cluster.admin(f"ALTER ROLE {cluster.service_role} BYPASSRLS")
        os.kill(min(server.worker_pids()), signal.SIGKILL)
        server.process.wait(timeout=60)
    finally:
        cluster.admin(f"ALTER ROLE {cluster.service_role} NOBYPASSRLS")
        stderr = server.stop()
    assert server.process.returncode not in (0, None), stderr[-3000:]
    assert "stopped without being asked to" in stderr


class _Remote:
    """What tests/test_release_swtpm.py's helpers use of a Service, over HTTP to a real server."""

    def __init__(self, client: httpx.AsyncClient, operator_token: str) -> None:
        self.client, self.operator_token = client, operator_token
