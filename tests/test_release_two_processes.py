"""Two real `keyserver serve` processes on one database (both databases), with truly concurrent requests
split between them (an in-process test client runs requests one at a time): release limits are counted in
the database, so the processes together admit exactly the budget, and a challenge is consumed once.

* A key's grant budget of 3: of 8 concurrent releases with valid, bound TPM quotes (swtpm), exactly 3 are
  granted; the other 5 are 429 ``release-budget-exhausted`` with ``Retry-After``, each a logged denial
  that used its challenge.
* One challenge with a valid quote, presented 20 times at once: exactly one release; 19 logged
  ``challenge-replayed`` denials.
* A tenant's attempt budget of 6: of 20 concurrent release requests, exactly 6 are evaluated (denied and
  logged: the evidence is junk); 14 are 429 ``rate-limited``, not logged, their challenges unused.
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey
from tpm2_pytss import ESAPI

from keyserver.bootstrap import initialise
from keyserver.config import Settings
from keyserver.db.session import Database
from keyserver.jwe import unwrap_released
from tests.conftest import Service, bearer
from tests.fixtures.server import ServerProcess, clean_env, start_server
from tests.test_release_swtpm import Loader, extend, loader_ak, setup_tenant
from tests.test_tenancy import TenantFixture, make_tenant

pytestmark = pytest.mark.swtpm

PROBLEM = "application/problem+json"
DAY = 86400
JUNK = {"tee": "sev-snp", "report": "AAAA"}


@dataclass
class Remote:
    """What tests/test_release_swtpm.py's helpers use of a Service, over HTTP to a real server."""

    client: httpx.AsyncClient
    operator_token: str


@pytest.fixture
def servers(database_url: str, tmp_path: Path) -> Iterator[tuple[list[ServerProcess], str]]:
    """Two server processes on one database (and one software KEK), and the operator credential."""
    settings = Settings(data_dir=tmp_path / "data", database_url=database_url)
    announced: list[str] = []

    async def init() -> None:
        db = Database(settings)
        try:
            await initialise(db, announced.append)
        finally:
            await db.dispose()

    asyncio.run(init())
    env = clean_env(
        KEYSERVER_DATA_DIR=str(tmp_path / "data"),
        KEYSERVER_DATABASE_URL=database_url,
        KEYSERVER_LOG_LEVEL="WARNING",
    )
    started: list[ServerProcess] = []
    try:
        for _ in range(2):
            started.append(start_server(tmp_path, env))
        yield started, announced[0]
    finally:
        for server in started:
            server.stop()


@asynccontextmanager
async def clients(servers: list[ServerProcess]) -> AsyncIterator[list[httpx.AsyncClient]]:
    a = httpx.AsyncClient(base_url=servers[0].url, timeout=60)
    b = httpx.AsyncClient(base_url=servers[1].url, timeout=60)
    try:
        yield [a, b]
    finally:
        await a.aclose()
        await b.aclose()


async def log_entries(client: httpx.AsyncClient, tenant: TenantFixture) -> list[dict[str, Any]]:
    auditor = bearer(tenant.auditor)
    size = int(
        (await client.get(f"/v1/tenants/{tenant.name}/log/checkpoint", headers=auditor)).text.split()[1]
    )
    page = await client.get(
        f"/v1/tenants/{tenant.name}/log/entries", params={"start": 0, "end": size}, headers=auditor
    )
    return [e["entry"] for e in page.json()["entries"]]


def day() -> int:
    return int(time.time()) // DAY


async def test_budgets_and_replays_across_two_processes(
    servers: tuple[list[ServerProcess], str], swtpm: Any, tpm_esapi: ESAPI
) -> None:
    """One test for all three: starting two servers is the slow part."""
    await key_budget_then_replay(servers, swtpm, tpm_esapi)
    await tenant_budget(servers)


async def key_budget_then_replay(
    servers: tuple[list[ServerProcess], str], swtpm: Any, tpm_esapi: ESAPI
) -> None:
    processes, operator = servers
    extend(tpm_esapi, b"reviewed loader build 1")
    async with clients(processes) as (a, b):
        remote = cast(Service, Remote(a, operator))
        with loader_ak(tpm_esapi) as ak:
            acme = await setup_tenant(remote, swtpm, tpm_esapi, ak)
            budget = {"max_releases": 3, "window_seconds": DAY}
            limited = await b.put(
                "/v1/tenants/acme/release-limits/keys/weights", json=budget, headers=bearer(acme.admin)
            )
            assert limited.status_code == 200, limited.text
            loader = Loader(remote, tpm_esapi, ak)
            # Quotes first (one TPM, one at a time), then every release at once, split between processes.
            prepared = []
            for _ in range(8):
                challenge = await loader.challenge()
                prepared.append(
                    (challenge, loader.evidence(base64.urlsafe_b64decode(challenge["nonce"] + "==")))
                )
            replayed = await loader.challenge()
            replayed_evidence = loader.evidence(base64.urlsafe_b64decode(replayed["nonce"] + "=="))
        first_day = day()
        responses = await asyncio.gather(
            *(
                (a, b)[i % 2].post(
                    "/v1/tenants/acme/keys/weights/release",
                    json={"challenge": c["id"], "evidence": e, "ephemeral_key": loader.jwk},
                )
                for i, (c, e) in enumerate(prepared)
            )
        )
        granted = [r for r in responses if r.status_code == 200]
        refused = [r for r in responses if r.status_code != 200]
        if day() == first_day:
            assert len(granted) == 3, [r.text for r in refused]
        else:  # a window boundary fell inside the burst: two windows' budgets
            assert 3 <= len(granted) <= 6
        for response in granted:
            assert len(unwrap_released(response.json()["jwe"], loader.private)[0]) == 32
        for response in refused:
            assert response.status_code == 429, response.text
            assert response.headers["content-type"] == PROBLEM
            problem = response.json()
            assert (problem["type"], problem["reason"]) == (
                "urn:keyserver:problem:rate-limited",
                "release-budget-exhausted",
            )
            assert "jwe" not in problem
            assert 1 <= int(response.headers["retry-after"]) <= DAY
        # Each grant and each budget refusal is one entry; every challenge was used once.
        releases = [e for e in await log_entries(a, acme) if e["kind"] == "key-release"]
        assert sorted(e["decision"] for e in releases) == sorted(
            ["granted"] * len(granted) + ["denied"] * len(refused)
        )
        assert {e["reason"] for e in releases if e["decision"] == "denied"} <= {"release-budget-exhausted"}
        assert len({e["challenge"] for e in releases}) == 8
        indices = [
            r.json()["receipt"]["log_index"] if r.status_code == 200 else r.json()["log_index"]
            for r in responses
        ]
        assert len(set(indices)) == 8

        # Replay: one challenge, one valid quote, twenty requests at once across both processes.
        removed = await a.delete("/v1/tenants/acme/release-limits/keys/weights", headers=bearer(acme.admin))
        assert removed.status_code == 200, removed.text
        body = {"challenge": replayed["id"], "evidence": replayed_evidence, "ephemeral_key": loader.jwk}
        raced = await asyncio.gather(
            *((a, b)[i % 2].post("/v1/tenants/acme/keys/weights/release", json=body) for i in range(20))
        )
        assert sorted(r.status_code for r in raced) == [200] + [403] * 19, [r.text for r in raced]
        assert {r.json()["reason"] for r in raced if r.status_code == 403} == {"challenge-replayed"}
        logged = [e for e in await log_entries(b, acme) if e.get("challenge") == replayed["id"]]
        assert sorted(e["decision"] for e in logged) == ["denied"] * 19 + ["granted"]


async def tenant_budget(servers: tuple[list[ServerProcess], str]) -> None:
    processes, operator = servers
    jwk = ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False)
    async with clients(processes) as (a, b):
        beta = await make_tenant(cast(Service, Remote(a, operator)), "beta")
        budget = {"max_releases": 6, "window_seconds": DAY}
        limited = await b.put(
            "/v1/tenants/beta/release-limits/tenant", json=budget, headers=bearer(beta.admin)
        )
        assert limited.status_code == 200, limited.text
        challenges = [(await a.post("/v1/tenants/beta/challenges")).json()["id"] for _ in range(20)]
        first_day = day()
        responses = await asyncio.gather(
            *(
                (a, b)[i % 2].post(
                    "/v1/tenants/beta/keys/weights/release",
                    json={"challenge": c, "evidence": JUNK, "ephemeral_key": jwk},
                )
                for i, c in enumerate(challenges)
            )
        )
        evaluated = [r for r in responses if r.status_code == 403]
        limited_out = [r for r in responses if r.status_code == 429]
        assert len(evaluated) + len(limited_out) == 20, [r.text for r in responses]
        if day() == first_day:
            assert len(evaluated) == 6
        else:
            assert 6 <= len(evaluated) <= 12
        for response in limited_out:
            assert response.json()["type"] == "urn:keyserver:problem:rate-limited"
            assert "log_index" not in response.json()
            assert 1 <= int(response.headers["retry-after"]) <= DAY
        # Only the evaluated attempts are in the log.
        releases = [e for e in await log_entries(b, beta) if e["kind"] == "key-release"]
        assert len(releases) == len(evaluated)
        # A refused challenge is still good: with a larger budget it is evaluated, not "replayed".
        refused_challenge = challenges[responses.index(limited_out[0])]
        raised = {"max_releases": 100, "window_seconds": DAY}
        await a.put("/v1/tenants/beta/release-limits/tenant", json=raised, headers=bearer(beta.admin))
        again = await b.post(
            "/v1/tenants/beta/keys/weights/release",
            json={"challenge": refused_challenge, "evidence": JUNK, "ephemeral_key": jwk},
        )
        assert again.status_code == 403
        assert again.json()["reason"] not in ("challenge-replayed", "challenge-unknown", "challenge-expired")
