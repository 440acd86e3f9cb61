"""The confidential-inference deployment end to end, every part a real process: keyserver (embedded
default), swtpm, the measured loader, the untrusted inference server, and a caller.

What it must show (issue 7): the inference server never holds cleartext — its memory and both of its
network hops are searched for the prompt, the completion, the weights and their key, with the loader's
memory as the positive control that the search finds what is there; programs that are not signed by the
registered CI signer are refused by the loader before anything runs; and a loader refuses a key whose
release receipt does not verify, even though the keyserver granted it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from clients.accelerator.signing import sign_program
from clients.caller import AttestedLoader, InferenceFailed, LoaderNotTrusted, attested_loader, complete
from clients.channel import ChannelKeyError
from clients.demo.deployment import ISSUER, PCR, TENANT, Deployment, LoaderBoot, deployment
from clients.demo.run import ask
from clients.loader.release import EphemeralKey
from clients.model.charlm import vocabulary
from clients.model.tensors import decode_tensors
from keyserver.jwe import ReleasedKeyMetadata, wrap_for_recipient
from tests.clients.snoop import Rewrite, TamperingProxy, process_memory_contains
from tests.fixtures.tcpproxy import TcpProxy

pytestmark = pytest.mark.swtpm


class Running:
    def __init__(self, deployed: Deployment, loader: LoaderBoot, front: TcpProxy, back: TcpProxy):
        self.deployed, self.loader, self.front, self.back = deployed, loader, front, back
        self.inference_pid = 0


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One deployment for the module: tenant set up, the reviewed loader booted, the inference server
    started behind a recording proxy on each of its two hops (caller → it → loader)."""
    with deployment(tmp_path_factory.mktemp("e2e")) as deployed:
        asyncio.run(deployed.set_up_tenant())
        loader = deployed.boot_loader("loader", deployed.loader_config())
        assert loader.ready, loader.status
        back = TcpProxy(loader.port)
        inference = deployed.start_inference(back.url)
        front = TcpProxy(int(deployed.inference_url.rsplit(":", 1)[1]))
        deployed.inference_url = front.url  # the caller reaches the inference server through `front`
        state = Running(deployed, loader, front, back)
        assert inference.proc is not None
        state.inference_pid = inference.proc.pid
        try:
            yield state
        finally:
            front.close()
            back.close()


def largest_tensor_slice(archive: bytes) -> bytes:
    """64 bytes from the middle of the largest weight tensor: unique to these weights."""
    tensors = decode_tensors(archive)
    data = max(tensors.values(), key=lambda t: t.nbytes).tobytes()
    return data[len(data) // 2 : len(data) // 2 + 64]


def test_the_inference_server_never_holds_cleartext(running: Running) -> None:
    deployed = running.deployed
    letters = [c for c in vocabulary(decode_tensors(deployed.weights_archive)) if c.isalpha()]
    prompt = "".join(secrets.choice(letters) for _ in range(40))  # unique, and the model can read it
    outputs = asyncio.run(ask(deployed, prompt, deployed.signed_program))
    completion = str(outputs["completion"])
    assert len(completion) >= 40, outputs
    weights = largest_tensor_slice(deployed.weights_archive)
    secrets_ = {
        "prompt": prompt.encode(),
        "completion": completion[:40].encode(),
        "weights": weights,
        "weights key": deployed.weights_key,
        "weights key (hex)": deployed.weights_key.hex().encode(),
        "weights key (base64url)": base64.urlsafe_b64encode(deployed.weights_key).rstrip(b"="),
    }
    # The traffic did flow through both hops (so an empty recording cannot pass the test) ...
    assert len(running.front.recorded) > 1000
    assert len(running.back.recorded) > 1000
    for what, needle in secrets_.items():
        assert needle not in running.front.recorded, f"the {what} crossed the caller → inference hop in clear"
        assert needle not in running.back.recorded, f"the {what} crossed the inference → loader hop in clear"
    # The sealed request crossed both hops, as the same text: the inference server forwarded ciphertext.
    sealed = re.findall(rb'\{"message":\s*"([A-Za-z0-9_-]{200,})"', bytes(running.front.recorded))
    assert sealed, "no sealed request crossed the caller -> inference hop"
    assert sealed[-1] in running.back.recorded
    found = process_memory_contains(running.inference_pid, [*secrets_.values(), sealed[-1][:96]])
    leaked = [what for what, needle in secrets_.items() if found[needle]]
    assert leaked == [], f"the inference server's memory holds {leaked} in clear"
    # The search sees this process's memory: the ciphertext it handled is there.
    assert found[sealed[-1][:96]], "the memory search did not find the sealed request: it is blind"
    # ... and the search finds what is there: the loader holds the decrypted weights.
    assert running.loader.process.proc is not None
    in_loader = process_memory_contains(running.loader.process.proc.pid, [weights, b"not-in-any-memory-" * 3])
    assert in_loader[weights], "the memory search did not find the weights in the loader: it is blind"
    assert not in_loader[b"not-in-any-memory-" * 3]


def _refusal(deployed: Deployment, program: dict[str, Any]) -> str:
    with pytest.raises(InferenceFailed) as refused:
        asyncio.run(ask(deployed, "the keyserver ", program))
    return refused.value.reason


def test_programs_not_signed_by_the_ci_signer_are_refused(running: Running) -> None:
    deployed = running.deployed
    signed = deployed.signed_program
    intruder = ed25519.Ed25519PrivateKey.generate()
    unsigned = {k: v for k, v in signed.items() if k != "signature"}
    forged = {**signed, "signature": base64.b64encode(bytes(64)).decode()}
    by_intruder_as_ci = sign_program(signed["program"], "ci", intruder)
    by_unknown_signer = sign_program(signed["program"], "intruder", intruder)
    altered = json.loads(json.dumps(signed))
    altered["program"]["name"] = altered["program"]["name"] + "-x"
    assert _refusal(deployed, unsigned) in {"program-unsigned", "program-malformed"}
    assert _refusal(deployed, forged) == "program-signature-invalid"
    assert _refusal(deployed, by_intruder_as_ci) == "program-signature-invalid"
    assert _refusal(deployed, by_unknown_signer) == "program-signer-unknown"
    assert _refusal(deployed, altered) == "program-signature-invalid"
    # The genuine program still runs: the refusals were about the signatures, not a broken loader.
    assert asyncio.run(ask(deployed, "the keyserver ", signed))["completion"]


def test_a_caller_refuses_a_loader_it_does_not_expect(running: Running) -> None:
    async def check() -> None:
        deployed = running.deployed
        async with deployed.client() as keyserver, deployed.caller_http() as inference:
            with pytest.raises(LoaderNotTrusted, match=r"tpm\.pcrs\.sha256"):
                await attested_loader(
                    inference, keyserver, tenant=TENANT, issuer=ISSUER,
                    expected_claims={f"tpm.pcrs.sha256.{PCR}": {"00" * 32}},
                )  # fmt: skip
            with pytest.raises(LoaderNotTrusted, match="another keyserver"):
                await attested_loader(
                    inference, keyserver, tenant=TENANT, issuer="keyserver.elsewhere",
                    expected_claims={f"tpm.pcrs.sha256.{PCR}": {deployed.expected_pcr}},
                )  # fmt: skip
            with pytest.raises(LoaderNotTrusted, match="no expected claims"):
                await attested_loader(inference, keyserver, tenant=TENANT, issuer=ISSUER, expected_claims={})
            loader = await attested_loader(
                inference, keyserver, tenant=TENANT, issuer=ISSUER,
                expected_claims={f"tpm.pcrs.sha256.{PCR}": {deployed.expected_pcr}},
            )  # fmt: skip
            # A key that is not the attested one (a valid P-256 key of someone else's): the seal refuses
            # it, because the attested thumbprint names the loader's key.
            impostor = EphemeralKey().public_jwk
            swapped = AttestedLoader(impostor, loader.claims, loader.attested_jkt)
            with pytest.raises(ChannelKeyError):
                await complete(inference, swapped, deployed.signed_program, {})

    asyncio.run(check())


def _flip_proof(request: dict[str, Any], granted: dict[str, Any]) -> None:
    proof = granted["receipt"]["inclusion_proof"]
    proof[0] = ("0" if proof[0][0] != "0" else "1") + proof[0][1:]


def _other_entry(request: dict[str, Any], granted: dict[str, Any]) -> None:
    entry = json.loads(base64.b64decode(granted["receipt"]["entry"]))
    entry["time"] = "2020-01-01T00:00:00.000000Z"
    forged = json.dumps(entry, separators=(",", ":"), sort_keys=True).encode()
    granted["receipt"]["entry"] = base64.b64encode(forged).decode()


def _resigned_checkpoint(request: dict[str, Any], granted: dict[str, Any]) -> None:
    lines = granted["receipt"]["checkpoint"].split("\n")
    lines[-2] = lines[-2][:-6] + ("AAAAA=" if not lines[-2].endswith("AAAAA=") else "BBBBB=")
    granted["receipt"]["checkpoint"] = "\n".join(lines)


def _no_entry(request: dict[str, Any], granted: dict[str, Any]) -> None:
    del granted["receipt"]["entry"]


def _shrunk_tree(request: dict[str, Any], granted: dict[str, Any]) -> None:
    granted["receipt"]["tree_size"] -= 1


def _swapped_jwe(request: dict[str, Any], granted: dict[str, Any]) -> None:
    # The ephemeral key is public (it is in the request): anyone can wrap a key of their own to it. The
    # receipt stays the genuine one; only the logged JWE digest tells the two apart.
    metadata = ReleasedKeyMetadata(tenant=TENANT, name="weights", version=1)
    granted["jwe"] = wrap_for_recipient(
        bytes(32), request["ephemeral_key"], kid=granted["kid"], metadata=metadata
    )


def _pinned_version(request: dict[str, Any]) -> None:
    request["version"] = 1  # an old version (here the only one): the request body is not in the evidence


TAMPERING: dict[str, tuple[Rewrite, Callable[[dict[str, Any]], None] | None, str]] = {
    "flipped inclusion proof": (_flip_proof, None, "receipt-inclusion-invalid"),
    "entry that is not in the log": (_other_entry, None, "receipt-inclusion-invalid"),
    "checkpoint signature altered": (_resigned_checkpoint, None, "receipt-checkpoint-invalid"),
    "entry left out": (_no_entry, None, "receipt-entry-missing"),
    "tree size changed": (_shrunk_tree, None, "receipt-tree-size-mismatch"),
    "JWE swapped for another key": (_swapped_jwe, None, "receipt-entry-mismatch"),
    "version pinned in the request": (
        lambda request, granted: None,
        _pinned_version,
        "receipt-entry-mismatch",
    ),
}


@pytest.mark.parametrize("lie", sorted(TAMPERING))
def test_the_loader_refuses_a_key_whose_receipt_does_not_verify(running: Running, lie: str) -> None:
    response, request, reason = TAMPERING[lie]
    proxy = TamperingProxy(running.deployed.keyserver_url, response=response, request=request)
    try:
        boot = running.deployed.boot_loader(
            "tampered", running.deployed.loader_config(), keyserver_url=proxy.url
        )
    finally:
        proxy.stop()
    assert proxy.tampered == 1, (
        boot.status
    )  # the keyserver granted the key; only what crossed the path changed
    assert not boot.ready, boot.status
    assert boot.status["reason"] == reason, boot.status
    assert boot.process.proc is not None
    assert boot.process.proc.wait(timeout=30) == 1  # it stopped instead of serving


def test_an_honest_path_through_the_same_proxy_boots(running: Running) -> None:
    # The control for the test above: the proxy itself does not break a release.
    proxy = TamperingProxy(running.deployed.keyserver_url)
    try:
        boot = running.deployed.boot_loader(
            "proxied", running.deployed.loader_config(), keyserver_url=proxy.url
        )
    finally:
        proxy.stop()
    assert proxy.tampered == 1
    assert boot.ready, boot.status


def test_the_demo_command_runs_from_nothing(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "keyserver", "demo", "--json", "--workdir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # --json: the outcomes on stdout, one document; the narration on stderr.
    outcomes = json.loads(done.stdout)
    for name in (
        "release.reviewed_loader_booted",
        "inference.encrypted_prompt_answered",
        "programs.forged_signature_refused",
        "audit.log_verified",
        "release.changed_loader_denied",
        "audit.denial_logged",
        "gpu.composite_release_granted",
        "gpu.wrong_firmware_denied",
        "witness.cosigned_release",
        "witness.split_view_refused",
        "threshold.boots_2_of_3",
        "threshold.one_veto_still_boots",
        "threshold.two_vetoes_refused",
        "threshold.caller_needs_2_of_3",
        "safeguards.allowed_prompt_answered",
        "safeguards.flagged_prompt_refused",
        "safeguards.forged_signature_refused",
        "safeguards.egress_budget_refused",
        "safeguards.policy_denies_unsafe_loader",
        "safeguards.config_replay_mismatch_refused",
    ):
        assert outcomes[name]["ok"] is True, (name, outcomes[name])
        assert set(outcomes[name]) == {"expected", "observed", "ok"}
    out = done.stderr
    assert "encrypted prompt → completion" in out
    assert "a program with a forged signature is refused\n    program-signature-invalid" in out
    assert (
        "a changed loader (it also trusts another program signer) is denied\n    reference-value-mismatch"
        in out
    )
    assert "verified True" in out
    assert "'weights': {'granted': 1, 'denied': 1}" in out
    # The GPU chapter (docs/nvidia-gpu.md): composite evidence with simulated CC GPUs.
    assert "==> gpu.composite_release_granted\n" in out
    assert "==> gpu.wrong_firmware_denied\n    reference-value-mismatch: reference-values:gpus:gpu1:" in out
    # The witness chapter (docs/release-log.md): three witness processes, a forked checkpoint refused.
    assert outcomes["witness.split_view_refused"]["observed"] == {
        "witnesses_cosigned": 0,
        "loader": "refused",
    }
    assert "receipt-cosignatures-insufficient" in out
    # The k-of-n chapter (docs/threshold.md): three operators' keyservers, 2 of 3.
    assert outcomes["threshold.one_veto_still_boots"]["observed"]["refused_by"] == ["ks-b"]
    assert "Refused: ks-b (reference-values-revoked), ks-c (reference-values-revoked)" in out, (
        "the failed boot names both refusals and their reasons"
    )
