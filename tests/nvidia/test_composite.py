"""Composite evidence without a VM: the GPU part (nonce derived from the binding, duplicates, limits) and
how a policy's nvidia-gpu reference values apply to every GPU."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from joserfc.jwk import ECKey

from clients.demo.gpus import GpuTestCa, SyntheticGpu
from keyserver.binding import binding, report_data_for
from keyserver.errors import EvidenceError
from keyserver.evidence.nvidia.certs import trusted_root
from keyserver.evidence.nvidia.composite import MAX_GPUS, gpu_claims
from keyserver.evidence.nvidia.verify import verify_gpu_report
from policy.document import PolicyError, ReferenceValueSet, parse_policy, parse_reference_values
from policy.evaluate import evaluate

NOW = datetime(2026, 11, 23, tzinfo=UTC)
NONCE = bytes(range(32))


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.fixture(scope="module")
def ca() -> GpuTestCa:
    return GpuTestCa()


@pytest.fixture(scope="module")
def jwk() -> dict[str, Any]:
    return dict(ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict(private=False))


def entry(gpu: SyntheticGpu, nonce: bytes) -> dict[str, str]:
    return {"report": b64(gpu.report(nonce)), "certificates": b64(gpu.chain_pem)}


def test_synthetic_gpu_passes_the_real_verifier(ca: GpuTestCa) -> None:
    gpu = SyntheticGpu(ca)
    claims = verify_gpu_report(
        gpu.report(NONCE), gpu.chain_pem, expected_nonce=NONCE, now=NOW, roots=[trusted_root(ca.pem)]
    )
    assert claims["gpu.vbios_version"] == "96.00.9F.00.01"
    assert claims["gpu.driver_version"] == "550.90.07"
    # ... and only because the test pins its CA: NVIDIA's root alone refuses it.
    with pytest.raises(EvidenceError) as info:
        verify_gpu_report(gpu.report(NONCE), gpu.chain_pem, expected_nonce=NONCE, now=NOW)
    assert info.value.reason == "gpu-chain-untrusted"


def test_gpu_nonce_is_derived_from_the_binding(ca: GpuTestCa, jwk: dict[str, Any]) -> None:
    gpus = [SyntheticGpu(ca), SyntheticGpu(ca, driver_version="580.95.05")]
    gpu_nonce = report_data_for("nvidia-gpu", binding(NONCE, jwk))
    assert gpu_nonce == binding(NONCE, jwk)[:32]
    roots = [trusted_root(ca.pem)]
    claims = gpu_claims(
        [entry(g, gpu_nonce) for g in gpus], nonce=NONCE, ephemeral_jwk=jwk, now=NOW, roots=roots
    )
    assert claims["gpu.count"] == 2
    assert claims["gpu.1.driver_version"] == "580.95.05"
    assert len(claims["gpu.0.measurements"]) == 64  # type: ignore[arg-type]
    # A report answering the raw challenge nonce, or bound to another key, is refused.
    other = dict(ECKey.import_key(ec.generate_private_key(ec.SECP256R1()).public_key()).as_dict())
    for wrong in (NONCE, report_data_for("nvidia-gpu", binding(NONCE, other))):
        with pytest.raises(EvidenceError) as info:
            gpu_claims([entry(gpus[0], wrong)], nonce=NONCE, ephemeral_jwk=jwk, now=NOW, roots=roots)
        assert info.value.reason == "gpu-nonce-mismatch"
        assert info.value.message.startswith("GPU 0:")


def test_the_same_gpu_twice_is_refused(ca: GpuTestCa, jwk: dict[str, Any]) -> None:
    gpu = SyntheticGpu(ca)
    nonce = report_data_for("nvidia-gpu", binding(NONCE, jwk))
    with pytest.raises(EvidenceError) as info:
        gpu_claims(
            [entry(gpu, nonce), entry(gpu, nonce)],
            nonce=NONCE,
            ephemeral_jwk=jwk,
            now=NOW,
            roots=[trusted_root(ca.pem)],
        )
    assert info.value.reason == "gpu-duplicate"


@pytest.mark.parametrize(
    "gpus",
    [
        [],
        {},
        "x",
        [{"report": "AA=="}],
        [{"report": "!!", "certificates": "AA=="}],
        [{"report": "AA==", "certificates": "AA==", "extra": 1}],
        [{}] * (MAX_GPUS + 1),
    ],
)
def test_malformed_gpu_lists_refused(gpus: object, jwk: dict[str, Any]) -> None:
    with pytest.raises(EvidenceError) as info:
        gpu_claims(gpus, nonce=NONCE, ephemeral_jwk=jwk, now=NOW)
    assert info.value.reason == "evidence-malformed"


def _composite(ca: GpuTestCa, jwk: dict[str, Any], *gpus: SyntheticGpu) -> dict[str, Any]:
    nonce = report_data_for("nvidia-gpu", binding(NONCE, jwk))
    vm = {"tee": "tpm", "debug": False, "tpm.pcrs.sha256.10": "00" * 32}
    return {
        **vm,
        **gpu_claims(
            [entry(g, nonce) for g in gpus],
            nonce=NONCE,
            ephemeral_jwk=jwk,
            now=NOW,
            roots=[trusted_root(ca.pem)],
        ),
    }


def test_gpu_reference_values_apply_to_every_gpu(ca: GpuTestCa, jwk: dict[str, Any]) -> None:
    good, bad = SyntheticGpu(ca), SyntheticGpu(ca)
    bad.measurements = [*good.measurements[:9], b"\x01" * 48, *good.measurements[10:]]
    gpu_values = parse_reference_values(
        "nvidia-gpu",
        {
            "version": 1,
            "expected": {
                "gpu.measurement.10": [good.measurements[9].hex()],
                "gpu.driver_version": ["550.90.07"],
                "gpu.arch": ["hopper"],
            },
        },
    )
    vm_values = parse_reference_values("tpm", {"version": 1, "expected": {"tpm.pcrs.sha256.10": ["00" * 32]}})
    sets = [
        ReferenceValueSet("fleet", "tpm", 1, vm_values),
        ReferenceValueSet("fleet", "nvidia-gpu", 2, gpu_values),
    ]
    policy = parse_policy({"version": 1, "tees": ["tpm"], "reference_values": ["fleet"]})

    granted = evaluate(policy, _composite(ca, jwk, good, SyntheticGpu(ca)), sets, NOW)
    assert granted.granted, granted.to_json()
    assert ("fleet", 2) in granted.reference_values

    denied = evaluate(policy, _composite(ca, jwk, good, bad), sets, NOW)
    assert not denied.granted
    assert denied.reason == "reference-value-mismatch"
    assert denied.detail is not None
    assert denied.detail.startswith("reference-values:fleet:gpu1:gpu.measurement.10")

    # A policy whose set pins GPU firmware requires a GPU: the VM alone is denied.
    vm_only = {"tee": "tpm", "debug": False, "tpm.pcrs.sha256.10": "00" * 32}
    alone = evaluate(policy, vm_only, sets, NOW)
    assert not alone.granted
    assert alone.reason == "reference-value-mismatch"


def test_a_gpu_only_set_leaves_the_vm_unchecked_and_is_denied(ca: GpuTestCa, jwk: dict[str, Any]) -> None:
    gpu_values = parse_reference_values("nvidia-gpu", {"version": 1, "expected": {"gpu.arch": ["hopper"]}})
    policy = parse_policy({"version": 1, "tees": ["tpm"], "reference_values": ["gpus"]})
    decision = evaluate(
        policy,
        _composite(ca, jwk, SyntheticGpu(ca)),
        [ReferenceValueSet("gpus", "nvidia-gpu", 1, gpu_values)],
        NOW,
    )
    assert not decision.granted
    assert decision.reason == "reference-values-missing"


@pytest.mark.parametrize(
    "name", ["gpu.0.driver_version", "gpu.count", "gpu.measurements", "gpu.measurement.65"]
)
def test_gpu_sets_pin_every_gpu_names_only(name: str) -> None:
    with pytest.raises(PolicyError):
        parse_reference_values("nvidia-gpu", {"version": 1, "expected": {name: ["00" * 48]}})


async def test_gpu_evidence_alone_is_refused(jwk: dict[str, Any]) -> None:
    import uuid

    from keyserver.evidence.dispatch import verify_evidence

    with pytest.raises(EvidenceError) as info:
        await verify_evidence(
            None,  # type: ignore[arg-type]  # refused before the database is needed
            uuid.uuid4(),
            {"tee": "nvidia-gpu", "gpu": "…"},
            nonce=NONCE,
            ephemeral_jwk=jwk,
            now=NOW,
        )
    assert info.value.reason == "evidence-malformed"
    assert "do not stand alone" in info.value.message


def test_an_absurd_gpu_count_is_refused_not_iterated() -> None:
    gpu_values = parse_reference_values("nvidia-gpu", {"version": 1, "expected": {"gpu.arch": ["hopper"]}})
    vm_values = parse_reference_values("tpm", {"version": 1, "minimums": {"tpm.clock": 0}})
    sets = [ReferenceValueSet("s", "tpm", 1, vm_values), ReferenceValueSet("s", "nvidia-gpu", 2, gpu_values)]
    policy = parse_policy({"version": 1, "tees": ["tpm"], "reference_values": ["s"]})
    claims = {"tee": "tpm", "debug": False, "tpm.clock": 1, "gpu.count": 10**18, "gpu.0.arch": "hopper"}
    decision = evaluate(policy, claims, sets, NOW)
    assert not decision.granted
    assert decision.reason == "reference-value-mismatch"
    # A count the claims do not back (gpu.1.* absent) is a mismatch too.
    decision = evaluate(policy, {**claims, "gpu.count": 2}, sets, NOW)
    assert not decision.granted
    assert decision.detail is not None
    assert decision.detail.startswith("reference-values:s:gpu1:gpu.arch")
