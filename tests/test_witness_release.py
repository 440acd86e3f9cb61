"""Releases cosigned by witnesses, every part a real process over real HTTP (issue 16, "Must show").

A `keyserver serve` process (its own SQLite database) and three `keyserver witness serve` processes (each
its own database), a tenant whose loader is a real software TPM (swtpm) and whose witnesses are set with
the admin API. The loader's own verifier (clients.loader.receipt) checks every receipt with the witness
keys, quorum and max age pinned in *its* configuration:

* all three up: the receipt carries ≥ 2 cosignatures on the very checkpoint its proof is against, and
  the loader accepts it; the same receipt checked later than the max age, or with the cosignatures moved
  onto another checkpoint, is refused;
* a forked checkpoint (same size, another root, signed with the log's own key) is refused by every
  honest witness, and a loader fed a receipt for it refuses it; a rollback is refused too;
* one witness down: still released (2 of 3); two down: 503 with no key in ``refuse`` mode (the grant is
  logged), and in ``release-weak`` mode the key comes with a receipt the strict loader refuses.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import select
from tpm2_pytss import ESAPI

from audit import merkle
from audit.checkpoint import Checkpoint, parse_note, parse_signed_checkpoint, sign_checkpoint
from audit.cosignature import CosignaturePolicy, cosigner_vkey, parse_cosigner_vkey
from audit.entry import canonical_bytes, decode_entry
from clients.loader.keyserver_api import Receipt
from clients.loader.receipt import ExpectedRelease, ReceiptInvalid, verify_receipt
from keyserver.backends.factory import backend_from_settings
from keyserver.binding import jwk_thumbprint_b64url
from keyserver.bootstrap import initialise
from keyserver.config import Settings
from keyserver.db.models import Tenant
from keyserver.db.session import Database, Scope
from keyserver.releaselog.signing import LogSigner
from keyserver.witness.client import WitnessClient, WitnessEndpoint
from keyserver.witness.protocol import format_add_checkpoint
from tests.conftest import Service, bearer
from tests.fixtures._proc import stop_process
from tests.fixtures.server import ServerProcess, clean_env, start_server
from tests.test_release_swtpm import Loader, extend, loader_ak, setup_tenant
from tests.test_release_two_processes import Remote
from tests.test_tenancy import TenantFixture
from tests.test_witness import KEYSERVER, WitnessProcess, start_witness

pytestmark = pytest.mark.swtpm

ORIGIN_PREFIX = "keyserver.local"
MAX_AGE = timedelta(minutes=10)


@pytest.fixture
def keyserver(tmp_path: Path) -> Iterator[tuple[ServerProcess, str, Settings]]:
    settings = Settings(data_dir=tmp_path / "data")
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
        KEYSERVER_LOG_LEVEL="WARNING",
        KEYSERVER_WITNESS_TIMEOUT_S="2",
        KEYSERVER_COSIGN_WAIT_S="3",
        # The witnesses run on loopback: the operator allows it (by default only public https hosts).
        KEYSERVER_WITNESS_URL_PREFIXES="http://127.0.0.1:",
    )
    server = start_server(tmp_path, env)
    yield server, announced[0], settings
    server.stop()


def loader_receipt(answer: dict[str, Any]) -> Receipt:
    r = answer["receipt"]
    return Receipt(
        r["log_index"],
        r["tree_size"],
        r["checkpoint"],
        [bytes.fromhex(h) for h in r["inclusion_proof"]],
        base64.b64decode(r["entry"]),
    )


def expected(loader: Loader, answer: dict[str, Any]) -> ExpectedRelease:
    name, version = answer["kid"].split("/")
    return ExpectedRelease(
        name,
        int(version),
        jwk_thumbprint_b64url(loader.jwk),
        hashlib.sha256(answer["jwe"].encode()).hexdigest(),
    )


def cosigners_of(note: str, vkeys: list[str]) -> set[str]:
    names = {parse_cosigner_vkey(v).name for v in vkeys}
    return {s.key_name for s in parse_note(note)[1] if s.key_name in names}


async def log_key(settings: Settings, tenant: str) -> Ed25519PrivateKey:
    """The tenant log's private signing key, as a compromised keyserver holds it."""
    db = Database(settings)
    try:
        async with db.transaction(Scope.for_operator()) as session:
            tenant_id = (await session.execute(select(Tenant.id).where(Tenant.name == tenant))).scalar_one()
        signer = LogSigner(backend_from_settings(settings, create_kek=False), settings.log_origin)
        async with db.transaction(Scope.for_tenant(tenant_id)) as session:
            _log, key = await signer.log_and_key(session, tenant_id, tenant)
        return key
    finally:
        await db.dispose()


async def entries(client: httpx.AsyncClient, tenant: TenantFixture, size: int) -> list[bytes]:
    page = await client.get(
        f"/v1/tenants/{tenant.name}/log/entries",
        params={"start": 0, "end": size},
        headers=bearer(tenant.auditor),
    )
    assert page.status_code == 200, page.text
    return [base64.b64decode(e["data"]) for e in page.json()["entries"]]


async def test_releases_carry_a_quorum_of_cosignatures_and_the_loader_requires_it(
    keyserver: tuple[ServerProcess, str, Settings], tmp_path: Path, swtpm: Any, tpm_esapi: ESAPI
) -> None:
    server, operator, settings = keyserver
    extend(tpm_esapi, b"reviewed loader build 1")
    witnesses: list[WitnessProcess] = []
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        remote = cast(Service, Remote(client, operator))
        with loader_ak(tpm_esapi) as ak:
            acme = await setup_tenant(remote, swtpm, tpm_esapi, ak)
            admin = bearer(acme.admin)
            log_vkey = (await client.get("/v1/tenants/acme/log/key", headers=admin)).json()["verifier_key"]
            try:
                for i in range(3):
                    witnesses.append(start_witness(tmp_path, f"w{i}.example/witness", [log_vkey]))
                await scenario(client, settings, acme, Loader(remote, tpm_esapi, ak), log_vkey, witnesses)
            finally:
                for w in witnesses:
                    stop_process(w.process)


async def configure(
    client: httpx.AsyncClient, acme: TenantFixture, ws: list[WitnessProcess], mode: str
) -> None:
    body = {
        "witnesses": [{"name": w.name, "url": w.url, "vkey": w.vkey} for w in ws],
        "quorum": 2,
        "failure_mode": mode,
    }
    answer = await client.put("/v1/tenants/acme/witnesses", json=body, headers=bearer(acme.admin))
    assert answer.status_code == 200, answer.text
    assert answer.json()["failure_mode"] == mode


async def scenario(
    client: httpx.AsyncClient,
    settings: Settings,
    acme: TenantFixture,
    loader: Loader,
    log_vkey: str,
    witnesses: list[WitnessProcess],
) -> None:
    vkeys = [w.vkey for w in witnesses]
    # The loader's own trust: these keys, 2 of them, cosignatures at most MAX_AGE old.
    policy = CosignaturePolicy(tuple(parse_cosigner_vkey(v) for v in vkeys), 2, MAX_AGE)
    origin = f"{ORIGIN_PREFIX}/acme"

    def check(answer: dict[str, Any], *, strict: bool = True, now: datetime | None = None) -> dict[str, Any]:
        return verify_receipt(
            loader_receipt(answer),
            log_verifier_key=log_vkey,
            origin=origin,
            expected=expected(loader, answer),
            cosignatures=policy if strict else None,
            now=now,
        )

    await configure(client, acme, witnesses, "refuse")

    # --- all three witnesses up: a cosigned receipt the loader accepts ---------------------------------
    first = await loader.release()
    assert first.status_code == 200, first.text
    answer = first.json()
    assert len(cosigners_of(answer["receipt"]["checkpoint"], vkeys)) >= 2
    assert check(answer)["decision"] == "granted"
    # Stale: the same receipt, checked after its cosignatures' max age.
    with pytest.raises(ReceiptInvalid) as stale:
        check(answer, now=datetime.now(UTC) + MAX_AGE + timedelta(minutes=1))
    assert stale.value.reason == "receipt-cosignatures-insufficient"
    assert "older than" in stale.value.message

    second = (await loader.release()).json()
    assert check(second)["decision"] == "granted"
    assert second["receipt"]["tree_size"] > answer["receipt"]["tree_size"]
    # Cosignatures on another checkpoint than the one the proof is against: the second receipt's log
    # signature with the first receipt's cosignature lines.
    lines = answer["receipt"]["checkpoint"].splitlines(keepends=True)
    second_lines = second["receipt"]["checkpoint"].splitlines(keepends=True)
    moved = "".join(second_lines[:5]) + "".join(lines[5:])
    with pytest.raises(ReceiptInvalid) as elsewhere:
        check({**second, "receipt": {**second["receipt"], "checkpoint": moved}})
    assert elsewhere.value.reason == "receipt-cosignature-invalid"
    # And the first receipt's (honest) note with the second's proof: the root does not match.
    with pytest.raises(ReceiptInvalid):
        check({**second, "receipt": {**second["receipt"], "checkpoint": answer["receipt"]["checkpoint"]}})

    # --- an auditor checks the witnesses' cosigned checkpoint against the history it rebuilt ------------
    audited = await audit_verify(
        client, acme, log_vkey, ["--quorum", "2", *(a for v in vkeys for a in ("--witness", v))]
    )
    assert audited["verified"] is True
    assert audited["witnesses"]["cosigned_size"] == second["receipt"]["tree_size"]
    assert len(audited["witnesses"]["cosigners"]) >= 2
    # The monitor reports the cosigners at every poll.
    witness_args = ["--quorum", "2", *(a for v in vkeys for a in ("--witness", v))]
    argv = [KEYSERVER, "audit", "monitor", "--url", str(client.base_url), "--tenant", "acme"]
    argv += ["--token", acme.auditor, "--key", log_vkey, "--trust-on-first-use", "--iterations", "1"]
    monitored = await asyncio.to_thread(
        subprocess.run, [*argv, *witness_args], capture_output=True, text=True, timeout=120
    )
    assert monitored.returncode == 0, monitored.stderr
    assert f"cosigned at size {second['receipt']['tree_size']} by " in monitored.stderr
    # An auditor who trusts a witness that never cosigned, and requires it: fails.
    stranger = cosigner_vkey("stranger.example", Ed25519PrivateKey.generate().public_key())
    refused = await audit_verify(client, acme, log_vkey, ["--quorum", "1", "--witness", stranger], ok=False)
    assert "quorum" in refused["error"]

    # --- a split view: the log's own key signs another history of the same size ------------------------
    await split_view(client, settings, acme, loader, second, check, witnesses)

    # --- one witness down: still released --------------------------------------------------------------
    stop_process(witnesses[0].process)
    third = await loader.release()
    assert third.status_code == 200, third.text
    assert cosigners_of(third.json()["receipt"]["checkpoint"], vkeys) == {
        witnesses[1].name,
        witnesses[2].name,
    }
    check(third.json())

    # --- two down, refuse: 503, no key; the grant is in the log ------------------------------------------
    stop_process(witnesses[1].process)
    refused = await loader.release()
    assert refused.status_code == 503, refused.text
    problem = refused.json()
    assert problem["reason"] == "witness-quorum-unavailable"
    assert "jwe" not in problem
    logged = decode_entry(base64.b64decode(problem["receipt"]["entry"]))
    assert logged["decision"] == "granted"  # committed before the witnesses were asked (docs/release-log.md)

    # --- two down, release-weak: released, and the strict loader refuses the receipt ---------------------
    await configure(client, acme, witnesses, "release-weak")
    weak = await loader.release()
    assert weak.status_code == 200, weak.text
    with pytest.raises(ReceiptInvalid) as insufficient:
        check(weak.json())
    assert insufficient.value.reason == "receipt-cosignatures-insufficient"
    assert check(weak.json(), strict=False)["decision"] == "granted"  # a loader without witnesses takes it


async def audit_verify(
    client: httpx.AsyncClient, acme: TenantFixture, log_vkey: str, extra: list[str], *, ok: bool = True
) -> dict[str, Any]:
    argv = [KEYSERVER, "audit", "verify", "--url", str(client.base_url), "--tenant", "acme"]
    argv += ["--token", acme.auditor, "--key", log_vkey, "--json", *extra]
    done = await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=120)
    assert (done.returncode == 0) == ok, done.stderr
    document: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1] if not ok else done.stdout)
    return document


async def split_view(
    client: httpx.AsyncClient,
    settings: Settings,
    acme: TenantFixture,
    loader: Loader,
    honest: dict[str, Any],
    check: Any,
    witnesses: list[WitnessProcess],
) -> None:
    receipt = honest["receipt"]
    head, _ = parse_signed_checkpoint(receipt["checkpoint"])
    index, size = receipt["log_index"], receipt["tree_size"]
    assert index == size - 1  # nothing was appended after this release
    leaves = await entries(client, acme, size)
    # The forked history: the same release, logged at another time (any change gives another root).
    forged_entry = canonical_bytes({**decode_entry(leaves[index]), "time": "2020-01-01T00:00:00.000000Z"})
    fork = merkle.MemoryNodeStore()
    fork.extend([*leaves[:index], forged_entry])
    assert fork.size == size
    assert fork.root() != head.root_hash
    key = await log_key(settings, "acme")
    forked_note = sign_checkpoint(Checkpoint(head.origin, size, fork.root()), head.origin, key)

    async def fork_proofs(old: int, new: int) -> list[bytes]:
        return fork.consistency_proof(old, new)

    endpoints = [WitnessEndpoint(parse_cosigner_vkey(w.vkey), w.url) for w in witnesses]
    honest_tree = merkle.MemoryNodeStore()
    honest_tree.extend(leaves)

    async def honest_proofs(old: int, new: int) -> list[bytes]:
        return honest_tree.consistency_proof(old, new)

    async with httpx.AsyncClient() as http:
        # First every witness sees the honest head: the release's round ends once the quorum has
        # cosigned, so a third witness may not have got it yet, and a witness that never saw a head
        # cannot tell a fork of it from an honest extension of what it did see.
        honest_note = "".join(receipt["checkpoint"].splitlines(keepends=True)[:5])  # the log's signature
        seen = await WitnessClient(http, timeout=5).cosign_all(
            endpoints, honest_note, Checkpoint(head.origin, size, head.root_hash), honest_proofs
        )
        assert seen.cosigned_by == len(witnesses), seen.failures
        # Every honest witness, asked directly as the spec's client would: refused, nothing cosigned.
        for w in witnesses:
            for old in (0, size):
                answer = await http.post(
                    w.url + "/add-checkpoint", content=format_add_checkpoint(old, [], forked_note)
                )
                assert answer.status_code in (409, 422), (w.name, old, answer.status_code, answer.text)
        outcome = await WitnessClient(http, timeout=5).cosign_all(
            endpoints, forked_note, Checkpoint(head.origin, size, fork.root()), fork_proofs
        )
        assert outcome.cosigned_by == 0, outcome.lines
        # A rollback: the log's own, validly signed checkpoint of an earlier size.
        earlier = leaves[: size - 1]
        tree = merkle.MemoryNodeStore()
        tree.extend(earlier)
        old_note = sign_checkpoint(Checkpoint(head.origin, size - 1, tree.root()), head.origin, key)

        async def proofs(old: int, new: int) -> list[bytes]:
            return tree.consistency_proof(old, new)

        rolled = await WitnessClient(http, timeout=5).cosign_all(
            endpoints, old_note, Checkpoint(head.origin, size - 1, tree.root()), proofs
        )
        assert rolled.cosigned_by == 0, rolled.lines
        assert all("cosigned size" in why for why in rolled.failures.values()), rolled.failures

    # The loader fed the forked receipt: signed by the log key, proof and entry consistent with it.
    forked = {
        **receipt,
        "checkpoint": forked_note,
        "inclusion_proof": [h.hex() for h in fork.inclusion_proof(index, size)],
        "entry": base64.b64encode(forged_entry).decode(),
    }
    forged_answer = {**honest, "receipt": forked}
    assert check(forged_answer, strict=False)["time"].startswith("2020")  # a log key alone is not enough
    with pytest.raises(ReceiptInvalid) as caught:
        check(forged_answer)
    assert caught.value.reason == "receipt-cosignatures-insufficient"
    # Nor with the honest checkpoint's cosignatures copied onto it.
    cosignature_lines = receipt["checkpoint"].splitlines(keepends=True)[5:]
    with pytest.raises(ReceiptInvalid) as copied:
        check({**honest, "receipt": {**forked, "checkpoint": forked_note + "".join(cosignature_lines)}})
    assert copied.value.reason == "receipt-cosignature-invalid"
