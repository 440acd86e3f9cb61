"""Issue 13 (review findings): attestation results as strict as releases, the log and reference values
closed to abuse. Each test here fails on the code before the fix.

1. /attest checks the binding of every TEE's evidence (every real SNP and TDX vector, genuine but not
   made for our challenge, is refused ``binding-mismatch``; gsg-milan over real HTTP too).
2. A correctly bound SNP attestation (a synthetic report signed by a test VCEK chain whose ARK is pinned
   for the test) gives a token that releases a key; the token with another key is refused.
3. What an unauthenticated request can put into a log entry is bounded (≤ 2 KiB), and so is the answer.
4. Revoking the newest reference values denies; it never re-trusts the superseded version; going back is
   a new, logged version.
5. /attest never affirms a debug TEE, and the caller requires ``debug: false``.
6. Challenges are budgeted; a failed /attest uses its challenge.
"""

from __future__ import annotations

import base64
import json
import subprocess
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from clients.caller import LoaderNotTrusted, check_expected_claims
from keyserver.attestation import AttestationIssuer
from keyserver.backends.factory import backend_from_settings
from keyserver.binding import binding, report_data_for
from keyserver.config import Budget, Settings
from keyserver.db.session import Database
from keyserver.errors import EvidenceError
from keyserver.evidence.snp import SnpProduct
from keyserver.ratelimits import ReleaseLimiter
from keyserver.release import ReleaseService
from keyserver.releaselog.signing import LogSigner
from keyserver.releaselog.store import ReleaseLog
from keyserver.tenancy import lookup_tenant
from tests.clients.test_collectors_tsm import SNP_VECTORS, tdx_now
from tests.conftest import Service, bearer
from tests.fixtures.server import KEYSERVER, ServerProcess, clean_env, start_server
from tests.snp.helpers import build_report, fake_pki, vec
from tests.tdx.helpers import V4_QUOTES
from tests.test_tenancy import TenantFixture, make_tenant

MAX_UNAUTHENTICATED_ENTRY = 2048
MAX_ANSWER = 4096


def new_jwk() -> dict[str, Any]:
    return ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False)


def release_service_on_this_loop(settings: Settings, db: Database) -> ReleaseService:
    """The release service over the test's own connections (the app's run on the test client's loop)."""
    backend = backend_from_settings(settings)
    return ReleaseService(
        db,
        ReleaseLog(LogSigner(backend, settings.log_origin)),
        backend,
        AttestationIssuer(backend, settings.log_origin),
        ReleaseLimiter(db, settings),
    )


async def challenge(service: Service, tenant: str = "acme") -> dict[str, Any]:
    response = await service.client.post(f"/v1/tenants/{tenant}/challenges")
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def nonce_of(issued: dict[str, Any]) -> bytes:
    return base64.urlsafe_b64decode(issued["nonce"] + "==")


async def setup_key(service: Service, tenant: TenantFixture, tees: list[str], **policy: Any) -> None:
    admin = bearer(tenant.admin)
    document = {
        "version": 1,
        "tees": tees,
        "rules": [{"name": "any", "expr": "claims['tee'] != ''"}],
        **policy,
    }
    created = await service.client.post(
        f"/v1/tenants/{tenant.name}/policies", json={"name": "prod", "document": document}, headers=admin
    )
    assert created.status_code == 201, created.text
    activated = await service.client.post(
        f"/v1/tenants/{tenant.name}/policies/prod/1/activate", headers=admin
    )
    assert activated.status_code == 200, activated.text
    key = await service.client.post(
        f"/v1/tenants/{tenant.name}/keys", json={"name": "weights", "policy": "prod"}, headers=admin
    )
    assert key.status_code == 201, key.text


# --- 1. the binding of every real SNP and TDX vector, at its own date ------------------------------------


def real_vectors() -> list[tuple[str, dict[str, str], datetime]]:
    cases = [
        (
            f"snp/{v.name}",
            {
                "tee": "sev-snp",
                "report": base64.b64encode(vec(v.report)).decode(),
                "certificate": base64.b64encode(vec(v.certificate)).decode(),
            },
            v.now,
        )
        for v in SNP_VECTORS
    ]
    cases += [
        (f"tdx/{name}", {"tee": "tdx", "quote": base64.b64encode(vec(name)).decode()}, tdx_now(name))
        for name in V4_QUOTES
    ]
    return cases


@pytest.mark.parametrize(("name", "evidence", "when"), real_vectors(), ids=[c[0] for c in real_vectors()])
async def test_attest_refuses_every_real_vector_not_bound_to_its_challenge(
    service: Service, settings: Settings, db: Database, name: str, evidence: dict[str, str], when: datetime
) -> None:
    await make_tenant(service, "acme")
    issued = await challenge(service)
    tenant = await lookup_tenant(db, "acme")
    releases = release_service_on_this_loop(settings, db)
    with pytest.raises(EvidenceError) as refused:
        await releases.attest(tenant, uuid.UUID(issued["id"]), evidence, new_jwk(), now=when)
    assert refused.value.reason == "binding-mismatch", refused.value.message
    # The refusal used the challenge: it cannot be tried again.
    again = await service.client.post(
        "/v1/tenants/acme/attest",
        json={"challenge": issued["id"], "evidence": evidence, "ephemeral_key": new_jwk()},
    )
    assert again.json()["reason"] == "challenge-replayed"


@pytest.fixture
def keyserver_with_tenant(tmp_path: Path) -> Iterator[ServerProcess]:
    env = clean_env(KEYSERVER_DATA_DIR=str(tmp_path / "data"))
    subprocess.run(
        [KEYSERVER, "tenant", "create", "acme"], env=env, cwd=tmp_path, check=True, capture_output=True
    )
    server = start_server(tmp_path, env)
    yield server
    server.stop()


def test_gsg_milan_at_attest_over_real_http_is_403(keyserver_with_tenant: ServerProcess) -> None:
    url = keyserver_with_tenant.url
    issued = httpx.post(f"{url}/v1/tenants/acme/challenges").json()
    evidence = {
        "tee": "sev-snp",
        "report": base64.b64encode(vec("snp/gsg-milan/attestation.bin")).decode(),
        "certificate": base64.b64encode(vec("snp/gsg-milan/vcek.testcer")).decode(),
    }
    answer = httpx.post(
        f"{url}/v1/tenants/acme/attest",
        json={"challenge": issued["id"], "evidence": evidence, "ephemeral_key": new_jwk()},
    )
    assert answer.status_code == 403
    assert answer.json()["reason"] == "binding-mismatch"
    assert "token" not in answer.json()


# --- 2 and 5. a bound synthetic SNP attestation releases; debug never gets a token ----------------------


@pytest.fixture
def test_amd_root(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A throw-away AMD-shaped PKI whose ARK the service pins for this test only."""
    pki = fake_pki(SnpProduct.MILAN)
    monkeypatch.setattr("keyserver.evidence.snp.verify.default_snp_roots", pki.roots)
    return pki


def synthetic_snp(pki: Any, nonce: bytes, jwk: dict[str, Any], *, debug: bool = False) -> dict[str, str]:
    key, cert = pki.leaf(hwid=bytes(range(64)), tcb=(3, 0, 8, 115, None))
    policy = 0x30000 | ((1 << 19) if debug else 0)
    report = build_report(key, policy=policy, report_data=report_data_for("sev-snp", binding(nonce, jwk)))
    return {
        "tee": "sev-snp",
        "report": base64.b64encode(report).decode(),
        "certificate": base64.b64encode(cert).decode(),
        "product": "Milan",
    }


async def attest(
    service: Service, evidence: dict[str, str], jwk: dict[str, Any], issued: dict[str, Any]
) -> httpx.Response:
    return await service.client.post(
        "/v1/tenants/acme/attest",
        json={"challenge": issued["id"], "evidence": evidence, "ephemeral_key": jwk},
    )


async def test_bound_snp_attestation_result_releases_and_only_to_its_key(
    service: Service, test_amd_root: Any
) -> None:
    acme = await make_tenant(service, "acme")
    await setup_key(service, acme, ["sev-snp"])
    jwk = new_jwk()
    issued = await challenge(service)
    attested = await attest(service, synthetic_snp(test_amd_root, nonce_of(issued), jwk), jwk, issued)
    assert attested.status_code == 200, attested.text
    token = attested.json()["token"]
    for _ in range(2):  # one verification, several releases, each with a fresh challenge
        released = await service.client.post(
            "/v1/tenants/acme/keys/weights/release",
            json={
                "challenge": (await challenge(service))["id"],
                "evidence": {"tee": "attestation-result", "token": token},
                "ephemeral_key": jwk,
            },
        )
        assert released.status_code == 200, released.text
    stolen = await service.client.post(
        "/v1/tenants/acme/keys/weights/release",
        json={
            "challenge": (await challenge(service))["id"],
            "evidence": {"tee": "attestation-result", "token": token},
            "ephemeral_key": new_jwk(),
        },
    )
    assert stolen.status_code == 403
    assert stolen.json()["reason"] == "attestation-result-key-mismatch"


async def test_attest_binds_snp_to_the_requesters_key(service: Service, test_amd_root: Any) -> None:
    await make_tenant(service, "acme")
    jwk, other = new_jwk(), new_jwk()
    issued = await challenge(service)
    # A genuine, fresh report bound to *another* key (a captured one, replayed by a man in the middle).
    answer = await attest(service, synthetic_snp(test_amd_root, nonce_of(issued), other), jwk, issued)
    assert answer.status_code == 403
    assert answer.json()["reason"] == "binding-mismatch"


async def test_attest_refuses_a_debug_tee(service: Service, test_amd_root: Any) -> None:
    await make_tenant(service, "acme")
    jwk = new_jwk()
    issued = await challenge(service)
    answer = await attest(
        service, synthetic_snp(test_amd_root, nonce_of(issued), jwk, debug=True), jwk, issued
    )
    assert answer.status_code == 403
    assert answer.json()["reason"] == "debug-tee"


def test_caller_requires_a_non_debug_tee_by_default() -> None:
    expected = {"tpm.pcrs.sha256.16": {"ab" * 32}}
    good = {"tee": "tpm", "debug": False, "tpm.pcrs.sha256.16": "ab" * 32}
    check_expected_claims(good, expected)
    for debug in (True, None, 0, "false"):
        with pytest.raises(LoaderNotTrusted, match="debug"):
            check_expected_claims({**good, "debug": debug}, expected)
    check_expected_claims({**good, "debug": True}, expected, allow_debug=True)
    # Values match by type: 1 is not True.
    with pytest.raises(LoaderNotTrusted):
        check_expected_claims({**good, "flag": 1}, {"flag": {True}})


# --- 3. bounded entries and answers -------------------------------------------------------------------------


async def entry_bytes(service: Service, response: httpx.Response) -> bytes:
    return base64.b64decode(response.json()["receipt"]["entry"])


HOSTILE_EVIDENCE: list[dict[str, Any]] = [
    {"tee": "x" * 60_000},
    {"tee": "sev-snp", "report": "A" * 60_000},
    {"tee": "tpm", "ak_name": "y" * 60_000, "pcrs": {}},
    {"tee": "tdx", ("z" * 30_000): "q"},
    {("k" * 50_000): 1},
    {"tee": ["a"] * 5_000},
    {"tee": "attestation-result", "token": "t." * 20_000},
]


@pytest.mark.parametrize("evidence", HOSTILE_EVIDENCE, ids=lambda e: str(list(e))[:24])
async def test_unauthenticated_entries_and_answers_are_bounded(
    service: Service, evidence: dict[str, Any]
) -> None:
    acme = await make_tenant(service, "acme")
    await setup_key(service, acme, ["tpm", "sev-snp", "tdx"])
    answer = await service.client.post(
        "/v1/tenants/acme/keys/weights/release",
        json={
            "challenge": (await challenge(service))["id"],
            "evidence": evidence,
            "ephemeral_key": new_jwk(),
        },
    )
    assert answer.status_code == 403
    assert len(answer.content) <= MAX_ANSWER + len(json.dumps(answer.json()["receipt"]))
    entry = await entry_bytes(service, answer)
    assert len(entry) <= MAX_UNAUTHENTICATED_ENTRY, entry[:200]
    logged = json.loads(entry)
    assert logged["tee"] in (None, "unknown", "tpm", "sev-snp", "tdx", "attestation-result")


async def test_a_60000_character_tee_leaves_a_small_entry(service: Service) -> None:
    acme = await make_tenant(service, "acme")
    await setup_key(service, acme, ["tpm"])
    answer = await service.client.post(
        "/v1/tenants/acme/keys/weights/release",
        json={
            "challenge": (await challenge(service))["id"],
            "evidence": {"tee": "é" * 60_000},
            "ephemeral_key": new_jwk(),
        },
    )
    entry = json.loads(await entry_bytes(service, answer))
    assert entry["tee"] == "unknown"
    assert entry["digests"]["evidence"]  # what was sent is identified by its digest
    assert len(answer.content) < 2 * MAX_ANSWER


async def test_a_key_name_outside_the_grammar_is_refused_before_the_log(service: Service) -> None:
    acme = await make_tenant(service, "acme")
    await setup_key(service, acme, ["tpm"])
    auditor = bearer(acme.auditor)
    before = (await service.client.get("/v1/tenants/acme/log/checkpoint", headers=auditor)).text
    issued = await challenge(service)
    for name in ("K" * 5000, "has space", "../weights"):
        answer = await service.client.post(
            f"/v1/tenants/acme/keys/{name}/release",
            json={"challenge": issued["id"], "evidence": {"tee": "tpm"}, "ephemeral_key": new_jwk()},
        )
        assert answer.status_code in (400, 404), answer.text
        assert len(answer.content) <= MAX_ANSWER
    after = (await service.client.get("/v1/tenants/acme/log/checkpoint", headers=auditor)).text
    assert before == after  # nothing logged
    # The challenge was not used by the refused requests.
    used = await service.client.post(
        "/v1/tenants/acme/keys/weights/release",
        json={"challenge": issued["id"], "evidence": {"tee": "tpm"}, "ephemeral_key": new_jwk()},
    )
    assert used.json()["reason"] != "challenge-replayed"


# --- 4. revocation and rollback of reference values ----------------------------------------------


async def test_revoking_the_newest_reference_values_denies_and_rollback_is_a_new_version(
    service: Service,
) -> None:
    acme = await make_tenant(service, "acme")
    admin = bearer(acme.admin)
    old_build, new_build = "aa" * 32, "bb" * 32

    async def publish(pcr: str) -> dict[str, Any]:
        response = await service.client.post(
            "/v1/tenants/acme/reference-values",
            json={
                "name": "loader",
                "tee": "tpm",
                "values": {"version": 1, "expected": {"tpm.pcrs.sha256.16": [pcr]}},
            },
            headers=admin,
        )
        assert response.status_code in (200, 201), response.text
        body: dict[str, Any] = response.json()
        return body

    assert (await publish(old_build))["version"] == 1
    assert (await publish(new_build))["version"] == 2
    assert (await publish(new_build))["version"] == 2  # the same content again: idempotent
    await setup_key(service, acme, ["tpm"], reference_values=["loader"])

    async def dry_run(pcr: str) -> dict[str, Any]:
        claims = {"tee": "tpm", "debug": False, "tpm.pcrs.sha256.16": pcr}
        response = await service.client.post(
            "/v1/tenants/acme/policies/prod/dry-run", json={"claims": claims}, headers=admin
        )
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    assert (await dry_run(new_build))["granted"] is True
    assert (await dry_run(old_build))["granted"] is False
    revoked = await service.client.post("/v1/tenants/acme/reference-values/loader/2/revoke", headers=admin)
    assert revoked.status_code == 200, revoked.text
    # Revoking v2 does not bring v1 back: the set denies, and says why.
    for build in (old_build, new_build):
        result = await dry_run(build)
        assert (result["granted"], result["reason"]) == (False, "reference-values-revoked")
    # Publishing v2's content again after its revocation is a new version, not the revoked row.
    # Going back to v1's content is an explicit, logged, new version.
    rollback = await publish(old_build)
    assert rollback["version"] == 3
    assert (await dry_run(old_build))["granted"] is True
    assert (await dry_run(new_build))["granted"] is False
    auditor = bearer(acme.auditor)
    size = int(
        (await service.client.get("/v1/tenants/acme/log/checkpoint", headers=auditor)).text.split("\n")[1]
    )
    entries = (
        await service.client.get(
            "/v1/tenants/acme/log/entries", params={"start": 0, "end": size}, headers=auditor
        )
    ).json()["entries"]
    added = [
        e["entry"]["reference_values"]["version"]
        for e in entries
        if e["entry"]["kind"] == "reference-values-added"
    ]
    assert added == [1, 2, 3]


# --- 6. challenges are budgeted -----------------------------------------------------------------


@pytest.fixture
def settings(database_url: str, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", database_url=database_url, challenge_limit=Budget(30, 3600))


async def test_challenge_issuance_is_budgeted(service: Service) -> None:
    await make_tenant(service, "acme")
    statuses = [(await service.client.post("/v1/tenants/acme/challenges")).status_code for _ in range(32)]
    assert statuses[:30] == [201] * 30
    refused = await service.client.post("/v1/tenants/acme/challenges")
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
