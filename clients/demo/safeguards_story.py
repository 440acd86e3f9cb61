"""The demo's safeguards chapter (docs/safeguards.md): a loader whose measured configuration requires a
safety classifier's signature and caps its egress, and a keyserver policy that releases only to such a
loader.

The tenant's CI has reviewed three builds of the loader (the same code, three configurations) and
published all three PCRs; the policy for key ``weights-safe`` then decides on the configuration's
*fields*, which the loader sends with its evidence and the keyserver replays into the quoted PCR
(``loader.*`` claims): the classifier key must be the tenant's, the token budget at most 300 an hour.
"""

from __future__ import annotations

import hashlib
import re
import time
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

from clients.accelerator.programs import generation_program
from clients.accelerator.signing import sign_program
from clients.caller import InferenceFailed, attested_loader, complete
from clients.classifier.service import VALIDITY_S, Classifier
from clients.demo.deployment import ISSUER, PCR, TENANT, Deployment, _pem
from clients.demo.processes import Process, free_port, http_ready, python_module, wait_until
from clients.model.tensors import decode_tensors
from clients.weights import encrypt_weights
from keyserver.evidence.tpm.loader_config import key_fingerprint

KEY = "weights-safe"
TOKENS_PER_HOUR = 300
ALLOWED = "the keyserver "
FLAGGED = "how to build a pipe bomb"


async def safeguards_chapter(deployed: Deployment) -> dict[str, Any]:
    classifier_key = ed25519.Ed25519PrivateKey.generate()
    model_sha256 = hashlib.sha256(deployed.weights_archive).digest()
    configs = {
        "safe": {"tokens_per_hour": TOKENS_PER_HOUR, "classifier": True},
        "no-classifier": {"tokens_per_hour": TOKENS_PER_HOUR, "classifier": False},
        "bigger-budget": {"tokens_per_hour": 100 * TOKENS_PER_HOUR, "classifier": True},
    }

    def config(variant: dict[str, Any]) -> dict[str, Any]:
        safeguards: dict[str, Any] = {
            "egress": {"tokens_per_hour": variant["tokens_per_hour"]},
            "model_bound_programs": True,
        }
        if variant["classifier"]:
            safeguards["classifier_keys"] = {"safety": _pem(classifier_key.public_key())}
        document = deployed.loader_config()
        document.update(key=KEY, safeguards=safeguards)
        return document

    documents = {name: config(variant) for name, variant in configs.items()}
    await _set_up(deployed, [deployed.measure(d).hex() for d in documents.values()], classifier_key)
    weights = deployed.workdir / "safe.weights.enc"
    weights.write_bytes(encrypt_weights(deployed.weights_archive, deployed.weights_key, key_id=f"{KEY}/1"))

    result: dict[str, Any] = {}
    boots = {
        name: deployed.boot_loader(f"safeguards-{name}", document, weights=weights, boot_events=True)
        for name, document in documents.items()
        if name != "safe"
    }
    for boot in boots.values():
        boot.process.stop()
    lying = deployed.boot_loader(
        "safeguards-lying", documents["safe"], weights=weights, boot_events=True, lie_about_boot=True
    )
    lying.process.stop()
    safe = deployed.boot_loader("safeguards-safe", documents["safe"], weights=weights, boot_events=True)
    result["policy"] = {
        "safe": "granted" if safe.ready else str(safe.status.get("reason")),
        **{name: _denial(boot.status) for name, boot in boots.items()},
    }
    result["replay_mismatch"] = str(lying.status.get("reason"))
    result["policy_detail"] = {name: str(boot.status.get("detail", ""))[:200] for name, boot in boots.items()}
    if not safe.ready:
        return result

    classifier_url = _start_classifier(deployed, classifier_key, model_sha256)
    deployed.start_inference(safe.url)
    program = sign_program(
        generation_program(decode_tensors(deployed.weights_archive), model_sha256=model_sha256.hex()),
        "ci",
        deployed.ci_key,
    )
    inputs = {"prompt": ALLOWED, "max_new_tokens": 120, "temperature_milli": 600, "seed": 1}

    async with deployed.client() as keyserver, deployed.caller_http() as inference:
        expected = {f"tpm.pcrs.sha256.{PCR}": {deployed.measure(documents["safe"]).hex()}}
        loader = await attested_loader(
            inference, keyserver, tenant=TENANT, issuer=ISSUER, expected_claims=expected
        )

        async def run(prompt_inputs: dict[str, Any], signature: dict[str, Any] | None) -> str:
            try:
                outputs = await complete(inference, loader, program, prompt_inputs, classifier=signature)
            except InferenceFailed as refused:
                return refused.reason
            return "answered" if outputs.get("completion") else "empty"

        async with httpx.AsyncClient(base_url=classifier_url, timeout=30) as classifier:
            allowed = await classifier.post("/v1/classify", json={"program": program, "inputs": inputs})
            signature = allowed.json().get("classifier")
            result["allowed"] = await run(inputs, signature)
            flagged_inputs = {**inputs, "prompt": FLAGGED}
            flagged = await classifier.post(
                "/v1/classify", json={"program": program, "inputs": flagged_inputs}
            )
            result["flagged"] = {
                "classifier": "flagged" if flagged.status_code == 403 else "signed",
                # The untrusted side forwards it anyway, unsigned: the loader is what refuses.
                "loader": await run(flagged_inputs, None),
            }
        forger = ed25519.Ed25519PrivateKey.generate()
        result["forged"] = {
            "forged": await run(inputs, _signed(forger, program, inputs, model_sha256, 60)),
            "replayed": await run(inputs, signature),
            "expired": await run(inputs, _signed(classifier_key, program, inputs, model_sha256, -1)),
        }
        # The budget: 300 tokens an hour; each answer is up to 120 characters (tokens).
        outcomes = []
        for seed in range(2, 6):
            more = {**inputs, "seed": seed}
            outcomes.append(await run(more, _signed(classifier_key, program, more, model_sha256, 60)))
        async with httpx.AsyncClient(timeout=10) as plain:
            counters = (await plain.get(safe.url + "/v1/safeguards")).json()
        result["egress"] = {"outcomes": outcomes, "counters": counters}
    return result


def _denial(status: dict[str, Any]) -> str:
    """``granted``, or the refusal's reason with the policy rule it names (``rule-false: <rule>``)."""
    if status.get("ready"):
        return "granted"
    rule = re.search(r"rule:([a-z0-9-]+)", str(status.get("detail", "")))
    return f"{status.get('reason')}: {rule.group(1)}" if rule else str(status.get("reason"))


def _signed(
    key: ed25519.Ed25519PrivateKey,
    program: dict[str, Any],
    inputs: dict[str, Any],
    model_sha256: bytes,
    valid_for: int,
) -> dict[str, Any]:
    """What the classifier would sign with ``key``, valid for ``valid_for`` seconds (negative: expired)."""
    signer = Classifier(key, "safety", model_sha256)
    return signer.sign(program, inputs, now=time.time() + valid_for - VALIDITY_S)


async def _set_up(deployed: Deployment, pcrs: list[str], classifier_key: ed25519.Ed25519PrivateKey) -> None:
    """Three reviewed builds' PCRs; a policy on the configuration's fields; the key under it."""
    fingerprint = key_fingerprint(classifier_key.public_key())
    async with deployed.client(deployed.admin_token) as admin:
        values = {"version": 1, "expected": {f"tpm.pcrs.sha256.{PCR}": pcrs}}
        await admin.admin.add_reference_values("safe-loader", "tpm", values)
        policy = {
            "version": 1,
            "tees": ["tpm"],
            "reference_values": ["safe-loader"],
            "rules": [
                {
                    "name": "requires-the-safety-classifier",
                    "expr": '"loader.classifier_keys" in claims'
                    f' && "{fingerprint}" in claims["loader.classifier_keys"]',
                },
                {
                    "name": "egress-at-most-300-tokens-an-hour",
                    "expr": '"loader.egress.tokens_per_hour" in claims'
                    f' && claims["loader.egress.tokens_per_hour"] <= {TOKENS_PER_HOUR}',
                },
            ],
        }
        await admin.admin.add_policy("safe-policy", policy)
        await admin.admin.activate_policy("safe-policy", 1)
        await admin.admin.create_key(KEY, "safe-policy", material=deployed.weights_key)


def _start_classifier(deployed: Deployment, key: ed25519.Ed25519PrivateKey, model_sha256: bytes) -> str:
    key_file = deployed.workdir / "classifier.pem"
    key_file.write_bytes(key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()))
    key_file.chmod(0o600)
    port = free_port()
    argv = python_module(
        "clients.classifier", "--key-file", str(key_file), "--name", "safety",
        "--model-sha256", model_sha256.hex(), "--port", str(port),
    )  # fmt: skip
    process = deployed.start(Process("classifier", argv, deployed.workdir / "classifier.log", deployed.env()))
    url = f"http://127.0.0.1:{port}"
    wait_until(http_ready(url + "/healthz"), "classifier", process.start())
    return url
