"""NVIDIA RIMs: XML signatures (signxml) and signer chains to the pinned CoRIM root at a time inside the
signer's window; measurement comparison with RIM index i = SPDM block i+1 on the real vector pairs; RIMs
turned into nvidia-gpu reference values that a policy applies to the GPU."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keyserver.errors import EvidenceError
from keyserver.evidence.nvidia.certs import trusted_root
from keyserver.evidence.nvidia.rim import (
    compare_with_rims,
    corim_root,
    parse_rim_unverified,
    reference_values_from_rims,
    verify_rim,
)
from keyserver.evidence.nvidia.verify import verify_gpu_report
from policy.document import ReferenceValueSet, parse_policy, parse_reference_values
from policy.evaluate import evaluate
from tests.fuzzing import fuzz_settings

from .vectors import NV, by_id, expected_json, iso

NOW = datetime(2026, 11, 23, tzinfo=UTC)
INSIDE = datetime(2024, 6, 1, tzinfo=UTC)  # inside every VBIOS and 545 driver RIM signer's window


def rim_bytes(name: str) -> bytes:
    return (NV / "rims" / name).read_bytes()


def test_the_shipped_corim_root_is_the_pinned_one() -> None:
    assert corim_root().sha256 == expected_json()["rim_root"]["sha256"]


@pytest.mark.parametrize(
    "name",
    [
        "NV_GPU_DRIVER_GH100_550.144.03.xml",
        "1010_0200_882_96005E0001_PROD.swidtag",
        "1010_0200_882_960074001A_PROD.swidtag",
        "1010_0205_862_96005E0004_PROD.swidtag",
        "1010_0205_862_9600740020_PROD.swidtag",
        "Driver_RIM_test_no_gpu.swidtag",
        "1010_0200_882_96005E0001_test_no_gpu.swidtag",
        "NV_GPU_VBIOS_1010_0200_882_96005E0001_measurement_mismatch.xml",
    ],
)
def test_genuine_rims_verify_inside_their_window(name: str) -> None:
    info = expected_json()["rims"][f"rims/{name}"]
    start, end = (iso(t) for t in info["chain_window"])
    for now in (start, end):
        rim = verify_rim(rim_bytes(name), now=now)
        assert rim.version == info["colloquialVersion"]
        assert sorted(rim.measurements) == info["measurements_active"]
        assert rim.manufacturer_id == "5703"
        assert rim.signed
    with pytest.raises(EvidenceError) as info_exc:
        verify_rim(rim_bytes(name), now=end.replace(microsecond=1))
    assert info_exc.value.reason == "rim-certificate-expired"


def test_driver_rim_550_as_nvidia_sdk_asserts() -> None:
    rim = verify_rim(rim_bytes("NV_GPU_DRIVER_GH100_550.144.03.xml"), now=NOW.replace(year=2025))
    assert (rim.product, rim.version, rim.manufacturer_id) == ("GH100", "550.144.03", "5703")
    # With the wrong root pinned (attestation-sdk's incorrect_rim_root.crt) the chain fails.
    wrong = trusted_root(rim_bytes("incorrect_rim_root.crt"))
    with pytest.raises(EvidenceError) as info:
        verify_rim(rim_bytes("NV_GPU_DRIVER_GH100_550.144.03.xml"), now=NOW.replace(year=2025), roots=[wrong])
    assert info.value.reason == "rim-chain-untrusted"


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("incorrect_signature_driver_rim.xml", "rim-signature-invalid"),
        ("incorrect_cert_chain_driver_rim.xml", "rim-chain-invalid"),
        ("NV_GPU_DRIVER_GH100_535.86.09_measurement_mismatch.xml", "rim-signature-invalid"),  # edited
        ("NV_GPU_DRIVER_GH100_570.124.03_expired.xml", "rim-certificate-expired"),
    ],
)
def test_bad_rims_refused(name: str, reason: str) -> None:
    with pytest.raises(EvidenceError) as info:
        verify_rim(rim_bytes(name), now=datetime(2026, 1, 1, tzinfo=UTC))
    assert info.value.reason == reason


@pytest.mark.parametrize(
    "data",
    [b"", b"<x/>", b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY a 'b'>]><x>&a;</x>", b"\x00" * 10],
)
def test_malformed_rims_refused(data: bytes) -> None:
    with pytest.raises(EvidenceError) as info:
        verify_rim(data, now=NOW)
    assert info.value.reason == "rim-malformed"


def test_a_tampered_measurement_breaks_the_signature() -> None:
    data = rim_bytes("1010_0200_882_96005E0001_PROD.swidtag")
    rim = verify_rim(data, now=INSIDE)
    value = rim.measurements[9][0].encode()
    with pytest.raises(EvidenceError) as info:
        verify_rim(data.replace(value, b"0" * 96), now=INSIDE)
    assert info.value.reason == "rim-signature-invalid"


def measurements(vector_id: str) -> tuple[list[str], bool]:
    v = by_id(vector_id)
    claims = verify_gpu_report(v.report, v.chain, expected_nonce=v.nonce, now=NOW)
    return list(claims["gpu.measurements"]), bool(claims["gpu.nvdec0_disabled"])  # type: ignore[arg-type]


@pytest.mark.parametrize("vector_id", [v["id"] for v in expected_json()["vectors"] if "rim_comparison" in v])
def test_comparison_matches_the_collectors(vector_id: str) -> None:
    expected = next(v for v in expected_json()["vectors"] if v["id"] == vector_id)["rim_comparison"]
    rims = [parse_rim_unverified((NV / name).read_bytes()) for name in expected["rims"]]
    values, nvdec = measurements(vector_id)
    result = compare_with_rims(values, rims, nvdec0_disabled=nvdec)
    assert list(result.mismatched) == expected["mismatched_rim_indices"]
    assert result.all_match is expected["all_match"]
    # The offset matters: compared without it, the known-good pairs do not match.
    if expected["all_match"]:
        assert not compare_with_rims(values[1:], rims, nvdec0_disabled=nvdec).all_match


def test_comparison_with_the_mismatch_rims() -> None:
    v = next(v for v in expected_json()["vectors"] if v["id"] == "hopper-nvat-535")
    spec = v["rim_comparison_mismatch_rims"]
    rims = [parse_rim_unverified((NV / name).read_bytes()) for name in spec["rims"]]
    values, nvdec = measurements("hopper-nvat-535")
    assert (
        list(compare_with_rims(values, rims, nvdec0_disabled=nvdec).mismatched)
        == spec["mismatched_rim_indices"]
    )


def test_overlapping_rims_refused() -> None:
    rim = parse_rim_unverified(rim_bytes("1010_0200_882_96005E0001_PROD.swidtag"))
    with pytest.raises(EvidenceError) as info:
        compare_with_rims(["00" * 48] * 64, [rim, rim], nvdec0_disabled=False)
    assert info.value.reason == "rim-overlap"


def test_rims_become_reference_values_a_policy_applies_to_the_gpu() -> None:
    """The only vector with both RIMs offline: its driver + VBIOS RIMs (verified) pin its 33 blocks; the
    policy grants that GPU and denies one with other firmware."""
    rims = [
        verify_rim(rim_bytes("Driver_RIM_test_no_gpu.swidtag"), now=INSIDE),
        verify_rim(rim_bytes("1010_0200_882_96005E0001_test_no_gpu.swidtag"), now=INSIDE),
    ]
    document = reference_values_from_rims(rims)
    assert len(document["expected"]) == 33
    values = parse_reference_values("nvidia-gpu", document)
    sets = [
        ReferenceValueSet("gpu-fw", "nvidia-gpu", 1, values),
        ReferenceValueSet(
            "gpu-fw", "tpm", 2, parse_reference_values("tpm", {"version": 1, "minimums": {"tpm.clock": 0}})
        ),
    ]
    policy = parse_policy({"version": 1, "tees": ["tpm"], "reference_values": ["gpu-fw"]})

    def composite(vector_id: str) -> dict[str, object]:
        v = by_id(vector_id)
        gpu = verify_gpu_report(v.report, v.chain, expected_nonce=v.nonce, now=NOW)
        claims: dict[str, object] = {"tee": "tpm", "debug": False, "tpm.clock": 5, "gpu.count": 1}
        claims.update({f"gpu.0.{k[4:]}": value for k, value in gpu.items() if k.startswith("gpu.")})
        return claims

    assert evaluate(policy, composite("hopper-gonvtrust-545"), sets, NOW).granted
    denied = evaluate(policy, composite("hopper-nvat-535"), sets, NOW)
    assert not denied.granted
    assert denied.reason == "reference-value-mismatch"
    with pytest.raises(EvidenceError):
        reference_values_from_rims([parse_rim_unverified(rim_bytes("Driver_RIM_test_no_gpu.swidtag"))])


@pytest.mark.fuzz
@fuzz_settings(150)
@given(st.data())
def test_mutated_rims_fail_typed_or_mean_the_same(data: st.DataObject) -> None:
    """Byte flips, cuts and XML-ish insertions anywhere in a genuine RIM: a typed refusal, or — when the
    change is one canonicalisation removes (whitespace in base64 or between attributes) — exactly the
    same RIM. Found: signxml's schema check raises lxml's DocumentInvalid, now a typed refusal."""
    original = rim_bytes("1010_0200_882_96005E0001_PROD.swidtag")
    expected = verify_rim(original, now=INSIDE)
    offset = data.draw(st.integers(0, len(original) - 1))
    kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    if kind == "flip":
        mutated = (
            original[:offset]
            + bytes([original[offset] ^ data.draw(st.integers(1, 255))])
            + original[offset + 1 :]
        )
    elif kind == "cut":
        mutated = original[:offset] + original[offset + data.draw(st.integers(1, 64)) :]
    else:
        insert = data.draw(
            st.sampled_from([b"<", b">", b'"', b"&amp;", b"<x/>", b" ", b"\n", b"=", b"ds:", b"<!--c-->"])
        )
        mutated = original[:offset] + insert + original[offset:]
    try:
        rim = verify_rim(mutated, now=INSIDE)
    except EvidenceError:
        return
    assert (rim.version, rim.measurements, rim.product) == (
        expected.version,
        expected.measurements,
        expected.product,
    )
