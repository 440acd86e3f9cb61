"""The loader's GPU collector, driven by NVML simulations: recorded real GPUs (the vectors) and synthetic
GPUs that answer the binding's nonce; its output is what the keyserver's composite verifier accepts."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from clients.demo.gpus import GpuTestCa, SyntheticGpu
from clients.loader.collectors.errors import GpuNotConfidential, GpuReportMismatch, GpuUnavailable
from clients.loader.collectors.nvidia_gpu import CcState, GpuCollector
from keyserver.binding import binding, report_data_for
from keyserver.evidence.nvidia.certs import trusted_root
from keyserver.evidence.nvidia.composite import gpu_claims
from keyserver.evidence.nvidia.verify import verify_gpu_report

from .nvml_sim import RecordedNvml, SyntheticNvml
from .vectors import all_vectors

NOW = datetime(2026, 11, 23, tzinfo=UTC)
NONCE = bytes(range(32))
FOUR_GPUS = [v for v in all_vectors() if v.id.startswith("nvat-multi_gpu_hopper")]


class VmCollector:
    tee = "tpm"

    def __init__(self) -> None:
        self.bindings: list[bytes] = []

    def collect(self, binding: bytes) -> dict[str, Any]:
        self.bindings.append(binding)
        return {"tee": "tpm", "quote": "…"}


@pytest.fixture
def jwk() -> dict[str, Any]:
    return dict(ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict())


def test_recorded_gpus_give_reports_the_verifier_accepts() -> None:
    """Four real H100s (one PPCIe system) asked for their recorded nonce: four verified reports."""
    assert len(FOUR_GPUS) == 4
    nvml = RecordedNvml(FOUR_GPUS)
    entries = GpuCollector(VmCollector(), nvml).gpu_reports(FOUR_GPUS[0].nonce)
    assert len(entries) == 4
    for entry, vector in zip(entries, FOUR_GPUS, strict=True):
        claims = verify_gpu_report(
            base64.b64decode(entry["report"]),
            base64.b64decode(entry["certificates"]),
            expected_nonce=vector.nonce,
            now=NOW,
        )
        assert claims["gpu.driver_version"] == vector.expected["driver_version"]


def test_a_recorded_report_cannot_answer_a_new_binding(jwk: dict[str, Any]) -> None:
    nvml = RecordedNvml(FOUR_GPUS[:1])
    vm = VmCollector()
    with pytest.raises(GpuReportMismatch):
        GpuCollector(vm, nvml).collect(binding(NONCE, jwk))
    assert nvml.asked == [binding(NONCE, jwk)[:32]]  # the derived nonce is what the GPU was asked for


@pytest.mark.parametrize(
    ("state", "error"),
    [
        (CcState(cc_on=False, dev_tools=False), GpuNotConfidential),
        (CcState(cc_on=True, dev_tools=True), GpuNotConfidential),
    ],
)
def test_cc_mode_is_checked_by_the_loader(
    state: CcState, error: type[Exception], jwk: dict[str, Any]
) -> None:
    nvml = SyntheticNvml([SyntheticGpu(GpuTestCa())], state=state)
    with pytest.raises(error):
        GpuCollector(VmCollector(), nvml).collect(binding(NONCE, jwk))


def test_no_gpu_or_a_broken_report_is_refused(jwk: dict[str, Any]) -> None:
    with pytest.raises(GpuUnavailable):
        GpuCollector(VmCollector(), SyntheticNvml([])).collect(binding(NONCE, jwk))
    broken = RecordedNvml(FOUR_GPUS[:1])
    broken.devices = [type(FOUR_GPUS[0])("cut", FOUR_GPUS[0].report[:100], FOUR_GPUS[0].chain, {})]
    with pytest.raises(GpuReportMismatch):
        GpuCollector(VmCollector(), broken).gpu_reports(FOUR_GPUS[0].nonce)


def test_synthetic_gpus_give_composite_evidence_the_keyserver_accepts(jwk: dict[str, Any]) -> None:
    ca = GpuTestCa()
    vm = VmCollector()
    evidence = GpuCollector(vm, SyntheticNvml([SyntheticGpu(ca), SyntheticGpu(ca)])).collect(
        binding(NONCE, jwk)
    )
    assert evidence["tee"] == "tpm"
    assert vm.bindings == [binding(NONCE, jwk)]
    claims = gpu_claims(
        evidence["gpus"], nonce=NONCE, ephemeral_jwk=jwk, now=NOW, roots=[trusted_root(ca.pem)]
    )
    assert claims["gpu.count"] == 2
    assert report_data_for("nvidia-gpu", binding(NONCE, jwk)).hex() == claims["gpu.0.nonce"]
