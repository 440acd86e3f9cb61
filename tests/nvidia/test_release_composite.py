"""A composite release over HTTP: the VM's evidence from a real TPM (swtpm) and GPU reports whose nonce
the test controls (a synthetic device chain issued by a test CA, pinned for the test only), all bound to
one challenge and one ephemeral key; granted and logged in one entry, denied when a GPU's firmware does
not match the tenant's CI-signed GPU reference values."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from tpm2_pytss import ESAPI

from audit.entry import canonical_bytes
from clients.demo.gpus import GpuTestCa, SyntheticGpu
from keyserver.binding import binding, report_data_for
from keyserver.evidence.nvidia.composite import TEST_ROOTS_ENV
from keyserver.jwe import unwrap_released
from keyserver.release import digest
from tests.conftest import Service, bearer
from tests.test_release_swtpm import Loader, extend, loader_ak, log_entry, setup_tenant

pytestmark = pytest.mark.swtpm


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


async def publish_gpu_values(service: Service, acme: Any, gpu: SyntheticGpu) -> None:
    """The build pipeline publishes the approved GPU firmware as the nvidia-gpu version of the policy's
    reference-value set 'loader', CI-signed like the VM's."""
    signer = ed25519.Ed25519PrivateKey.generate()
    pem = signer.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo).decode()
    added = await service.client.post(
        "/v1/tenants/acme/ci-signers", json={"name": "ci-gpu", "public_key": pem}, headers=bearer(acme.admin)
    )
    assert added.status_code == 201, added.text
    expected = {f"gpu.measurement.{n}": [gpu.measurements[n - 1].hex()] for n in (1, 2, 10, 36)}
    bundle = {
        "v": 1,
        "tenant": "acme",
        "name": "loader",
        "tee": "nvidia-gpu",
        "values": {
            "version": 1,
            "expected": {**expected, "gpu.driver_version": ["550.90.07"], "gpu.arch": ["hopper"]},
        },
    }
    published = await service.client.post(
        "/v1/tenants/acme/reference-values/bundles",
        json={"signer": "ci-gpu", "bundle": bundle, "signature": b64(signer.sign(canonical_bytes(bundle)))},
        headers=bearer(acme.ci_signer),
    )
    assert published.status_code == 201, published.text


class CompositeLoader(Loader):
    """The loader in a confidential VM with GPUs: one challenge, one ephemeral key, the TPM quote and
    every GPU report bound to them."""

    gpus: list[SyntheticGpu]

    def evidence(self, nonce: bytes, jwk: dict[str, Any] | None = None) -> dict[str, Any]:
        gpu_nonce = report_data_for("nvidia-gpu", binding(nonce, jwk or self.jwk))
        return {
            **super().evidence(nonce, jwk),
            "gpus": [
                {"report": b64(g.report(gpu_nonce)), "certificates": b64(g.chain_pem)} for g in self.gpus
            ],
        }


async def test_composite_release_granted_logged_and_denied_on_wrong_gpu_firmware(
    service: Service, swtpm: Any, tpm_esapi: ESAPI, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ca = GpuTestCa()
    roots = tmp_path / "gpu-test-roots.pem"
    roots.write_bytes(ca.pem)
    monkeypatch.setenv(TEST_ROOTS_ENV, str(roots))
    approved = SyntheticGpu(ca)
    extend(tpm_esapi, b"reviewed loader build 1")
    with loader_ak(tpm_esapi) as ak:
        acme = await setup_tenant(service, swtpm, tpm_esapi, ak)
        await publish_gpu_values(service, acme, approved)
        loader = CompositeLoader(service, tpm_esapi, ak)
        loader.gpus = [approved, SyntheticGpu(ca, measurements=list(approved.measurements))]

        granted = await loader.release()
        assert granted.status_code == 200, granted.text
        material, _ = unwrap_released(granted.json()["jwe"], loader.private)
        assert len(material) == 32
        data, entry = await log_entry(service, acme, granted.json()["receipt"]["log_index"])
        assert entry["decision"] == "granted"
        assert entry["tee"] == "tpm"
        # One entry for the whole decision: the VM's set and its GPU version both applied.
        assert entry["reference_values"] == [
            {"name": "loader", "version": 1},
            {"name": "loader", "version": 2},
        ]
        # GPU evidence is logged as digests only: the entry stays small whatever the reports weigh.
        assert len(data) < 2048
        assert "gpus" not in json.dumps(entry)

        async def denied(response: Any, reason: str) -> dict[str, Any]:
            assert response.status_code == 403, response.text
            problem = response.json()
            assert problem["reason"] == reason, problem
            raw, logged = await log_entry(service, acme, problem["log_index"])
            assert (logged["decision"], logged["reason"]) == ("denied", reason)
            assert len(raw) < 2048
            return dict(problem)

        # One GPU runs other firmware (SPDM block 10 differs): denied, the GPU named.
        rogue = SyntheticGpu(ca, measurements=list(approved.measurements))
        rogue.measurements[9] = b"\x66" * 48
        loader.gpus = [approved, rogue]
        problem = await denied(await loader.release(), "reference-value-mismatch")
        assert "gpu1:gpu.measurement.10" in problem["detail"]

        # Another driver: denied.
        loader.gpus = [SyntheticGpu(ca, driver_version="535.86.09", measurements=list(approved.measurements))]
        await denied(await loader.release(), "reference-value-mismatch")

        # A GPU report that answers another challenge (replayed): refused as evidence, and logged.
        challenge = await loader.challenge()
        nonce = base64.urlsafe_b64decode(challenge["nonce"] + "==")
        loader.gpus = [approved]
        evidence = loader.evidence(nonce)
        stale = loader.evidence(base64.urlsafe_b64decode((await loader.challenge())["nonce"] + "=="))
        evidence["gpus"] = stale["gpus"]
        await denied(await loader.release(challenge=challenge, evidence=evidence), "gpu-nonce-mismatch")

        # The policy's set pins GPU firmware: the VM's evidence alone no longer suffices.
        challenge = await loader.challenge()
        nonce = base64.urlsafe_b64decode(challenge["nonce"] + "==")
        vm_only = Loader.evidence(loader, nonce)
        await denied(await loader.release(challenge=challenge, evidence=vm_only), "reference-value-mismatch")

        # The same GPU's report twice does not make two GPUs.
        loader.gpus = [approved, approved]
        await denied(await loader.release(), "gpu-duplicate")

        # Attest once (composite evidence → an attestation result carrying the GPU claims), release
        # with the token: the GPU reference values are appraised on the token's claims.
        loader.gpus = [approved, SyntheticGpu(ca, measurements=list(approved.measurements))]
        challenge = await loader.challenge()
        nonce = base64.urlsafe_b64decode(challenge["nonce"] + "==")
        attested = await service.client.post(
            "/v1/tenants/acme/attest",
            json={
                "challenge": challenge["id"],
                "evidence": loader.evidence(nonce),
                "ephemeral_key": loader.jwk,
            },
        )
        assert attested.status_code == 200, attested.text
        token = attested.json()["token"]
        by_token = await loader.release(evidence={"tee": "attestation-result", "token": token})
        assert by_token.status_code == 200, by_token.text
        # ... and attest refuses a GPU report bound to another challenge, as the release does.
        challenge = await loader.challenge()
        stale_nonce = base64.urlsafe_b64decode((await loader.challenge())["nonce"] + "==")
        evidence = loader.evidence(base64.urlsafe_b64decode(challenge["nonce"] + "=="))
        evidence["gpus"] = loader.evidence(stale_nonce)["gpus"]
        refused = await service.client.post(
            "/v1/tenants/acme/attest",
            json={"challenge": challenge["id"], "evidence": evidence, "ephemeral_key": loader.jwk},
        )
        assert refused.status_code == 403, refused.text
        assert refused.json()["reason"] == "gpu-nonce-mismatch"

        # Back to the approved GPUs: granted again, and the log digests cover the GPU evidence.
        loader.gpus = [approved]
        again = await loader.release()
        assert again.status_code == 200, again.text
        _, entry = await log_entry(service, acme, again.json()["receipt"]["log_index"])
        assert entry["digests"]["evidence"] != digest({})
