"""The demo's witness chapter (docs/release-log.md, "Witnesses"): three independent witnesses cosign the
tenant's release log; a loader that pins their keys and a quorum of 2 accepts a cosigned receipt, and a
split view — another history of the same size, signed with the log's own key — is refused by every
witness and by the loader.

Each witness is a ``keyserver witness serve`` process with its own key and its own database, configured
with the tenant log's verifier key (as a witness operator would be, out of band). The forger here plays
a compromised keyserver: it reads the log's signing key from the demo keyserver's own data directory.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from audit import merkle
from audit.checkpoint import Checkpoint, parse_signed_checkpoint, sign_checkpoint
from audit.cosignature import CosignaturePolicy, parse_cosigner_vkey, require_quorum
from audit.entry import canonical_bytes, decode_entry
from clients.demo.deployment import AK_HANDLE, KEY_NAME, PCR, TENANT, Deployment
from clients.demo.processes import DemoError, Process, free_port, http_ready, python_module, wait_until
from clients.loader.collectors.tpm import TpmCollector, extend_pcr
from clients.loader.keyserver_api import LoaderKeyserver, Receipt
from clients.loader.measure import config_digest, image_digest_for
from clients.loader.receipt import ExpectedRelease, ReceiptInvalid, verify_receipt
from clients.loader.release import EphemeralKey, LogTrust, release_key
from keyserver.witness.client import WitnessClient, WitnessEndpoint

QUORUM = 2
MAX_AGE = timedelta(minutes=10)


@dataclass(frozen=True)
class DemoWitness:
    name: str
    url: str
    vkey: str


def start_witness(deployed: Deployment, name: str, log_vkey: str) -> DemoWitness:
    home = deployed.workdir / name.replace("/", "_")
    home.mkdir(parents=True, exist_ok=True)
    env = deployed.env()
    done = subprocess.run(  # noqa: S603 - a fixed program
        python_module(
            "keyserver", "witness", "keygen", "--name", name, "--key-file", str(home / "witness.key")
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise DemoError(f"witness keygen failed: {done.stderr.strip()[-500:]}")
    (home / "witness.toml").write_text(
        f'name = "{name}"\nkey_file = "witness.key"\n'
        f'database_url = "sqlite+aiosqlite:///{home / "state.sqlite3"}"\n[[log]]\nvkey = "{log_vkey}"\n'
    )
    port = free_port()
    argv = python_module(
        "keyserver", "witness", "serve", "--config", str(home / "witness.toml"), "--port", str(port)
    )
    process = deployed.start(Process(name, argv, home / "witness.log", env))
    url = f"http://127.0.0.1:{port}"
    wait_until(http_ready(url + "/healthz"), f"witness {name}", process.start())
    return DemoWitness(name, url, done.stdout.strip())


async def _log_key(data_dir: Path) -> Any:
    """The log's private signing key, as a compromised keyserver (or a thief of its KEK) holds it."""
    from sqlalchemy import select

    from keyserver.backends.factory import backend_from_settings
    from keyserver.config import Settings
    from keyserver.db.models import Tenant
    from keyserver.db.session import Database, Scope
    from keyserver.releaselog.signing import LogSigner

    settings = Settings(data_dir=data_dir)
    db = Database(settings)
    try:
        async with db.transaction(Scope.for_operator()) as session:
            tenant_id = (await session.execute(select(Tenant.id).where(Tenant.name == TENANT))).scalar_one()
        signer = LogSigner(backend_from_settings(settings, create_kek=False), settings.log_origin)
        async with db.transaction(Scope.for_tenant(tenant_id)) as session:
            return (await signer.log_and_key(session, tenant_id, TENANT))[1]
    finally:
        await db.dispose()


async def witness_chapter(deployed: Deployment) -> dict[str, Any]:
    """``{"cosigned_release": bool, "cosigners": [names], "split_view": {"witnesses_cosigned": n,
    "loader": "refused" | "accepted", "why": …}}``."""
    assert deployed.tpm is not None
    witnesses = [start_witness(deployed, f"w{i}.demo/witness", deployed.log_verifier_key) for i in range(3)]
    async with deployed.client(deployed.admin_token) as admin:
        await admin.admin.set_witnesses(
            [{"name": w.name, "url": w.url, "vkey": w.vkey} for w in witnesses], QUORUM, "refuse"
        )
    # The loader's own trust: these keys, 2 of them, at most 10 minutes old. Never from the keyserver.
    policy = CosignaturePolicy(tuple(parse_cosigner_vkey(w.vkey) for w in witnesses), QUORUM, MAX_AGE)
    log = LogTrust(deployed.log_verifier_key, deployed.log_origin, cosignatures=policy)

    deployed.tpm.reboot()
    config = deployed.loader_config()
    extend_pcr(deployed.tpm.tcti, PCR, image_digest_for(config))
    extend_pcr(deployed.tpm.tcti, PCR, config_digest(canonical_bytes(dict(config))))
    client = LoaderKeyserver(deployed.keyserver_url, tenant=TENANT, timeout=30)
    vm = TpmCollector(deployed.tpm.tcti, AK_HANDLE, f"sha256:{PCR}")
    released = release_key(client, vm, EphemeralKey(), tenant=TENANT, key_name=KEY_NAME, log=log)

    async with deployed.client(deployed.auditor_token) as auditor:
        cosigned_note = await auditor.auditor.cosigned_checkpoint()
        counted = require_quorum(cosigned_note, policy, datetime.now(UTC))
        head, _ = parse_signed_checkpoint(cosigned_note)
        leaves = [e.data for e in await auditor.auditor.entries(0, head.size)]
    result: dict[str, Any] = {
        "cosigned_release": len(released.material) == 32 and len(counted) >= QUORUM,
        "cosigners": sorted(c.cosigner for c in counted),
    }
    result["split_view"] = await _split_view(deployed, witnesses, policy, head, leaves)
    return result


async def _split_view(
    deployed: Deployment,
    witnesses: list[DemoWitness],
    policy: CosignaturePolicy,
    head: Checkpoint,
    leaves: list[bytes],
) -> dict[str, Any]:
    index = head.size - 1
    forged_entry = canonical_bytes({**decode_entry(leaves[index]), "time": "2020-01-01T00:00:00.000000Z"})
    fork = merkle.MemoryNodeStore()
    fork.extend([*leaves[:index], forged_entry])
    key = await _log_key(deployed.workdir / "keyserver")
    forked = Checkpoint(head.origin, head.size, fork.root())
    forked_note = sign_checkpoint(forked, head.origin, key)

    async def proofs(old: int, new: int) -> list[bytes]:
        return fork.consistency_proof(old, new)

    async with httpx.AsyncClient() as http:
        endpoints = [WitnessEndpoint(parse_cosigner_vkey(w.vkey), w.url) for w in witnesses]
        outcome = await WitnessClient(http, timeout=5).cosign_all(endpoints, forked_note, forked, proofs)
    entry = decode_entry(forged_entry)
    receipt = Receipt(index, head.size, forked_note, fork.inclusion_proof(index, head.size), forged_entry)
    expected = ExpectedRelease(
        entry["key"]["name"],
        entry["key"]["version"],
        str(entry.get("requester_thumbprint")),
        str(entry.get("jwe_sha256")),
        entry.get("requested_version"),
    )
    try:
        verify_receipt(
            receipt,
            log_verifier_key=deployed.log_verifier_key,
            origin=deployed.log_origin,
            expected=expected,
            cosignatures=policy,
        )
        loader, why = "accepted", ""
    except ReceiptInvalid as refused:
        loader, why = "refused", f"{refused.reason}: {refused.message}"
    return {"witnesses_cosigned": outcome.cosigned_by, "loader": loader, "why": why}
