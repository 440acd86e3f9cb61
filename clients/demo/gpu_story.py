"""The demo's GPU chapter (docs/nvidia-gpu.md): the VM's TPM quote and two simulated CC GPUs' reports in
one release, bound to one challenge and ephemeral key; granted while the GPUs run the firmware the CI
signer approved, denied (and logged) when one does not.

The GPUs are simulated (clients/demo/gpus.py), as the TPM is (swtpm): the demo's keyserver pins their
test CA through ``KEYSERVER_NVIDIA_GPU_TEST_ROOTS``; a production keyserver pins NVIDIA's root only.
"""

from __future__ import annotations

import secrets

from audit.entry import canonical_bytes
from clients.demo.deployment import AK_HANDLE, PCR, TENANT, Deployment
from clients.demo.gpus import SimulatedNvml, SyntheticGpu
from clients.loader.collectors.nvidia_gpu import GpuCollector
from clients.loader.collectors.tpm import TpmCollector, extend_pcr
from clients.loader.keyserver_api import KeyserverRefused, LoaderKeyserver
from clients.loader.measure import config_digest, image_digest_for
from clients.loader.release import EphemeralKey, LogTrust, release_key
from clients.sdk import make_bundle

GPU_KEY = "gpu-weights"
# The SPDM blocks the CI signer pins (a real deployment pins every block NVIDIA's RIMs name: `keyserver
# evidence rim-values`).
PINNED_BLOCKS = (1, 2, 3, 10, 36)


async def gpu_chapter(deployed: Deployment) -> dict[str, bool]:
    """``{"composite_release_granted": …, "wrong_firmware_denied": …}``: True when each behaved."""
    assert deployed.tpm is not None
    approved = SyntheticGpu(deployed.gpu_ca)
    fleet = [approved, SyntheticGpu(deployed.gpu_ca, measurements=list(approved.measurements))]
    values = {
        "version": 1,
        "expected": {
            **{f"gpu.measurement.{n}": [approved.measurements[n - 1].hex()] for n in PINNED_BLOCKS},
            "gpu.driver_version": [approved.driver_version],
            "gpu.arch": ["hopper"],
        },
    }
    async with deployed.client(deployed.admin_token) as admin:
        ci_token = (await admin.admin.issue_token("ci-signer", description="demo GPU firmware")).token
        async with deployed.client(ci_token) as ci:
            await ci.ci.publish("ci", make_bundle(TENANT, "gpus", "nvidia-gpu", values), deployed.ci_key)
        policy = {
            "version": 1,
            "tees": ["tpm"],
            "reference_values": ["loader", "gpus"],
            "rules": [{"name": "two-gpus", "expr": "claims['gpu.count'] == 2"}],
        }
        await admin.admin.add_policy("gpu-policy", policy)
        await admin.admin.activate_policy("gpu-policy", 1)
        await admin.admin.create_key(GPU_KEY, "gpu-policy", material=secrets.token_bytes(32))

    # The VM boots the reviewed loader (the boot chain measures its image, the loader its configuration).
    deployed.tpm.reboot()
    config = deployed.loader_config()
    extend_pcr(deployed.tpm.tcti, PCR, image_digest_for(config))
    extend_pcr(deployed.tpm.tcti, PCR, config_digest(canonical_bytes(dict(config))))
    vm = TpmCollector(deployed.tpm.tcti, AK_HANDLE, f"sha256:{PCR}")
    log = LogTrust(deployed.log_verifier_key, deployed.log_origin)
    outcomes: dict[str, bool] = {}
    # The loader's own client (standard library HTTP, like the measured loader), not the SDK.
    client = LoaderKeyserver(deployed.keyserver_url, tenant=TENANT, timeout=30)
    released = release_key(
        client,
        GpuCollector(vm, SimulatedNvml(fleet)),
        EphemeralKey(),
        tenant=TENANT,
        key_name=GPU_KEY,
        log=log,
    )
    outcomes["composite_release_granted"] = len(released.material) == 32
    rogue = SyntheticGpu(deployed.gpu_ca, measurements=list(approved.measurements))
    rogue.measurements[9] = bytes(48)  # block 10: firmware the CI signer never approved
    try:
        release_key(
            client,
            GpuCollector(vm, SimulatedNvml([approved, rogue])),
            EphemeralKey(),
            tenant=TENANT,
            key_name=GPU_KEY,
            log=log,
        )
        outcomes["wrong_firmware_denied"] = False
    except KeyserverRefused as denied:
        outcomes["wrong_firmware_denied"] = denied.reason == "reference-value-mismatch"
        deployed.gpu_denial = f"{denied.reason}: {denied.detail}"
    return outcomes
