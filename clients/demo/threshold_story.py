"""The demo's k-of-n chapter (docs/threshold.md): three keyservers run by three operators hold one key,
2 of 3.

Each operator is its own ``keyserver serve`` process with its own data directory, SQLite database, log
key and log origin; each enrols the VM's TPM attestation key, records the loader's reference value and
activates its own release policy, and imports one share of the owner's key (``keyserver key split``'s
format, through the SDK) as an ordinary key. The loader's measured configuration names the three
keyservers and the owner's commitment. Then:

1. the loader boots: each keyserver releases its share, the loader combines two against the commitment;
2. a caller configured for 2 of 3 attestation results refuses to seal with only one, accepts with two;
3. operator B revokes the loader's reference value: the loader still boots (one veto is not enough),
   and the refusal is in B's log;
4. operator C revokes too: the loader does not boot, and says which keyservers refused and why.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx

from clients.caller import LoaderNotTrusted, TrustedKeyserver, verify_attestation_quorum
from clients.demo.deployment import AK_HANDLE, PCR, TENANT, Deployment, _pem, loader_policy
from clients.demo.processes import Process, free_port, http_ready, python_module, run_json, wait_until
from clients.loader.collectors.tpm_ak import activate_credential, enrolment_material
from clients.loader.config import threshold_config_document
from clients.sdk import KeyserverClient
from clients.sdk.threshold import split_key
from clients.weights import encrypt_weights

OPERATORS = ("ks-a", "ks-b", "ks-c")
SHARE_KEY = "weights-share"
KEY_IDENTITY = ("weights", 1)  # the owner's key: name and version (the weights file's key id)
K = 2


@dataclass
class Operator:
    name: str
    url: str
    origin: str
    admin_token: str
    auditor_token: str = ""
    log_key: str = ""

    def client(self, token: str | None = None) -> KeyserverClient:
        return KeyserverClient(self.url, token=token or self.admin_token, tenant=TENANT)


def start_operator(deployed: Deployment, name: str) -> Operator:
    origin = f"{name}.example"
    env = deployed.env(KEYSERVER_DATA_DIR=str(deployed.workdir / name), KEYSERVER_LOG_ORIGIN=origin)
    run_json(python_module("keyserver", "tenant", "create", TENANT, "--json"), env)
    issued = run_json(
        python_module("keyserver", "token", "create", "--tenant", TENANT, "--role", "tenant-admin", "--json"),
        env,
    )
    port = free_port()
    argv = python_module("keyserver", "serve", "--port", str(port))
    server = deployed.start(Process(name, argv, deployed.workdir / f"{name}.log", env))
    url = f"http://127.0.0.1:{port}"
    wait_until(http_ready(url + "/readyz"), f"keyserver {name}", server.start())
    return Operator(name, url, origin, issued["token"])


async def enrol(deployed: Deployment, operator: Operator) -> None:
    """The operator's own trust in the VM's TPM: its EK CA, then the AK proven by credential activation."""
    assert deployed.tpm is not None
    async with operator.client() as admin:
        operator.auditor_token = (await admin.admin.issue_token("auditor", description="demo")).token
        operator.log_key = (await admin.with_token(operator.auditor_token).auditor.log_key()).verifier_key
        for path in deployed.tpm.ek_ca_certs:
            await admin.admin.add_anchor("ek-ca", path.stem, path.read_text())
        material = enrolment_material(deployed.tpm.tcti, AK_HANDLE)
        challenge = await admin.admin.start_enrolment(
            material.ek_public, material.ak_public, ek_certificate=material.ek_certificate
        )
        secret = activate_credential(
            deployed.tpm.tcti, AK_HANDLE, challenge.credential_blob, challenge.encrypted_secret
        )
        await admin.admin.activate_enrolment(challenge.enrolment_id, secret)


async def hold_share(operator: Operator, expected_pcr: str, share: bytes) -> None:
    """The operator's own reference value and policy, and the share as an ordinary imported key."""
    async with operator.client() as admin:
        values = {"version": 1, "expected": {f"tpm.pcrs.sha256.{PCR}": [expected_pcr]}}
        await admin.admin.add_reference_values("loader", "tpm", values)
        await admin.admin.add_policy("loader-policy", loader_policy("loader"))
        await admin.admin.activate_policy("loader-policy", 1)
        await admin.admin.create_key(SHARE_KEY, "loader-policy", material=share)


async def revoke(operator: Operator) -> None:
    async with operator.client() as admin:
        await admin.admin.revoke_reference_values("loader", 1)


def denials_logged(deployed: Deployment, operator: Operator) -> int:
    """Denied releases in the operator's log, as ``keyserver audit verify`` counts them."""
    argv = python_module(
        "keyserver", "audit", "verify", "--url", operator.url, "--tenant", TENANT,
        "--key", operator.log_key, "--json",
    )  # fmt: skip
    report = run_json(argv, deployed.env(KEYSERVER_TOKEN=operator.auditor_token))
    by_key = report.get("decisions_by_key", {}).get(SHARE_KEY, {})
    return int(by_key.get("denied", 0)) if report.get("verified") else -1


async def caller_quorum(operators: list[Operator], loader_url: str, expected_pcr: str) -> dict[str, str]:
    """A caller configured for 2 of 3: one attestation result is not enough, two are."""
    async with httpx.AsyncClient(base_url=loader_url, timeout=60) as loader:
        document = (await loader.get("/v1/attestation")).json()
    with_jwks = []
    for operator in operators:
        async with KeyserverClient(operator.url, tenant=TENANT) as keyserver:
            jwks = await keyserver.loader.jwks()
            trusted = TrustedKeyserver(operator.name, TENANT, operator.origin, keyserver)
            with_jwks.append((trusted, jwks))
    expected = {f"tpm.pcrs.sha256.{PCR}": {expected_pcr}}
    observed = {}
    for label, tokens in (("one", document["tokens"][:1]), ("two", document["tokens"][:2])):
        try:
            verify_attestation_quorum(
                document["public_key"],
                tokens,
                with_jwks,
                k=K,
                expected_claims=expected,
                now=datetime.now(UTC),
            )
            observed[label] = "accepted"
        except LoaderNotTrusted:
            observed[label] = "refused"
    return observed


async def threshold_chapter(deployed: Deployment) -> dict[str, Any]:
    operators = [start_operator(deployed, name) for name in OPERATORS]
    for operator in operators:
        await enrol(deployed, operator)
    # The model owner: a fresh key for the weights, split 2 of 3; the key itself is kept nowhere.
    name, version = KEY_IDENTITY
    key = bytearray(secrets.token_bytes(32))
    shares, commitment = split_key(key, name=name, version=version, k=K, n=len(operators))
    weights = deployed.workdir / "threshold.weights.enc"
    weights.write_bytes(encrypt_weights(deployed.weights_archive, bytes(key), key_id=f"{name}/{version}"))
    key[:] = bytes(len(key))
    config = threshold_config_document(
        commitment=commitment.to_json(),
        keyservers=[
            {
                "name": o.name,
                "tenant": TENANT,
                "key": SHARE_KEY,
                "log": {"verifier_key": o.log_key, "origin": f"{o.origin}/{TENANT}"},
            }
            for o in operators
        ],
        program_signers={"ci": _pem(deployed.ci_key.public_key())},
        pcr_selection=f"sha256:{PCR}",
    )
    expected_pcr = deployed.measure(config).hex()
    for operator, share in zip(operators, shares, strict=True):
        await hold_share(operator, expected_pcr, share.to_bytes())
        share.wipe()
    urls = {o.name: o.url for o in operators}

    first = deployed.boot_loader("threshold-loader", config, keyservers=urls, weights=weights)
    result: dict[str, Any] = {"boots_2_of_3": first.ready, "first": first.status}
    result["caller"] = (
        await caller_quorum(operators, first.url, expected_pcr) if first.ready else {"one": "?", "two": "?"}
    )
    first.process.stop()

    await revoke(operators[1])
    second = deployed.boot_loader("threshold-loader-one-veto", config, keyservers=urls, weights=weights)
    report = second.status.get("boot_report", {})
    result["one_veto"] = {
        "booted": second.ready,
        "refused_by": sorted(n for n, e in report.items() if not e.get("released")),
        "refusal_logged": denials_logged(deployed, operators[1]) >= 1,
    }
    second.process.stop()

    await revoke(operators[2])
    third = deployed.boot_loader("threshold-loader-two-vetoes", config, keyservers=urls, weights=weights)
    detail = str(third.status.get("detail", ""))
    result["two_vetoes"] = {
        "booted": third.ready,
        "reason": third.status.get("reason"),
        "names_refusals": all(name in detail for name in OPERATORS[1:]),
    }
    result["two_vetoes_detail"] = detail
    return result
