"""Every real NVIDIA GPU vector: accepted at its date with the claims nvidia/expected.json states, refused
one second before its chain's validity, and the known-bad inputs of the source repos refused with a reason."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from keyserver.errors import EvidenceError
from keyserver.evidence.nvidia import parse_gpu_report
from keyserver.evidence.nvidia.certs import nvidia_device_root, trusted_root
from keyserver.evidence.nvidia.verify import verify_gpu_report

from .vectors import NV, GpuVector, all_vectors, by_id, expected_json, genuine

NOW = datetime(2026, 11, 23, tzinfo=UTC)  # the collection date
ARCH = {"Hopper (GH100)": "hopper", "HOPPER": "hopper", "Blackwell (GB100)": "blackwell"}


def ids(vectors: list[GpuVector]) -> list[str]:
    return [v.id for v in vectors]


def test_the_shipped_root_is_the_pinned_one() -> None:
    anchor = expected_json()["trust_anchor"]
    assert nvidia_device_root().sha256 == anchor["sha256"]
    assert trusted_root((NV / anchor["file"]).read_bytes()).der == nvidia_device_root().der


def test_every_vector_is_listed() -> None:
    assert len(all_vectors()) == 22
    assert len(genuine()) == 21


@pytest.mark.parametrize("vector", genuine(), ids=ids(genuine()))
def test_genuine_vector_accepted_with_expected_claims(vector: GpuVector) -> None:
    e = vector.expected
    claims = verify_gpu_report(vector.report, vector.chain, expected_nonce=vector.nonce, now=NOW)
    assert claims["tee"] == "nvidia-gpu"
    assert claims["gpu.arch"] == ARCH[e["arch"]]
    assert claims["gpu.driver_version"] == e["driver_version"]
    assert claims["gpu.vbios_version"] == e["vbios_version"]
    assert claims["gpu.ueid"] == e["leaf_ueid_decimal_from_subject_serialNumber"]
    assert claims["gpu.measurements"] == [
        e["measurements"][str(i)] for i in range(1, e["measurement_count"] + 1)
    ]
    assert claims["gpu.fwid"] == e["collector"]["fwid_cert"]
    assert claims["gpu.report_fwid_present"] is (e["collector"]["fwid_opaque"] is not None)
    assert claims["gpu.nonce"] == e["nonce"]
    assert claims["gpu.project"] == e["opaque"].get("PROJECT")
    assert claims["gpu.chip_sku"] == e["opaque"].get("CHIP_SKU")
    assert claims["gpu.nvdec0_disabled"] is (e["opaque"].get("NVDEC0_STATUS") == "55")
    assert claims["gpu.leaf_sha256"] == e["chain"][0]["sha256"]
    assert claims["gpu.root_sha256"] == expected_json()["trust_anchor"]["sha256"]
    assert claims["gpu.revocation"] == "not-checked"
    assert claims["gpu.cc_mode_attested"] is False
    report = parse_gpu_report(vector.report)
    assert report.trailing_bytes == e["lengths"]["trailing_bytes_after_signature"]
    assert len(report.opaque) >= 1
    assert len(report.signed_bytes) == e["lengths"]["total"] - 96 - report.trailing_bytes


@pytest.mark.parametrize("vector", genuine(), ids=ids(genuine()))
def test_refused_one_second_before_the_chain_is_valid(vector: GpuVector) -> None:
    verify_gpu_report(vector.report, vector.chain, expected_nonce=vector.nonce, now=vector.not_before)
    with pytest.raises(EvidenceError) as info:
        verify_gpu_report(
            vector.report,
            vector.chain,
            expected_nonce=vector.nonce,
            now=vector.not_before - timedelta(seconds=1),
        )
    assert info.value.reason == "gpu-certificate-not-yet-valid"


def test_blackwell_claims_match_nvidia_sdk() -> None:
    claims = verify_gpu_report(
        by_id("blackwell-nvat-575").report,
        by_id("blackwell-nvat-575").chain,
        expected_nonce=by_id("blackwell-nvat-575").nonce,
        now=NOW,
    )
    assert claims["gpu.hwmodel"] == "GB100 A01 GSP BROM"
    assert claims["gpu.ueid"] == "474146966256510137525212816567191319424869109849"
    assert claims["gpu.driver_version"] == "575.32"


def test_the_chain_is_refused_after_the_end_of_time() -> None:
    v = by_id("hopper-trustee-550")
    after = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC) + timedelta(microseconds=1)
    with pytest.raises(EvidenceError) as info:
        verify_gpu_report(v.report, v.chain, expected_nonce=v.nonce, now=after)
    assert info.value.reason == "gpu-certificate-expired"


def test_invalid_signature_vector_refused() -> None:
    v = by_id("hopper-nvat-invalid-signature")
    with pytest.raises(EvidenceError) as info:
        verify_gpu_report(v.report, v.chain, expected_nonce=v.nonce, now=NOW)
    assert info.value.reason == "gpu-signature-invalid"


def test_zero_nonce_refused_as_nvidia_does() -> None:
    v = by_id("hopper-nvat-535")
    with pytest.raises(EvidenceError) as info:
        verify_gpu_report(v.report, v.chain, expected_nonce=bytes(32), now=NOW)
    assert info.value.reason == "gpu-nonce-mismatch"


@pytest.mark.parametrize(
    ("chain", "reason"),
    [
        ("hopper-trustee-550/hopper_cert_chain_case2.txt", "gpu-chain-incomplete"),  # root only
        ("hopper-trustee-550/hopper_cert_chain_case3.txt", "gpu-chain-invalid"),  # Provisioner ICA missing
        ("hopper-trustee-550/hopper_cert_chain_case4.txt", "gpu-fwid-missing"),  # FMC leaf missing
        ("hopper-gonvtrust-545/invalidCertChain.txt", "gpu-chain-invalid"),  # BROM missing
    ],
)
def test_source_chain_negatives(chain: str, reason: str) -> None:
    v = by_id("hopper-trustee-550")
    with pytest.raises(EvidenceError) as info:
        verify_gpu_report(v.report, (NV / chain).read_bytes(), expected_nonce=v.nonce, now=NOW)
    assert info.value.reason == reason


def test_trailing_byte_rule() -> None:
    """The CoCo report's one trailing byte is ignored (not signed, not a claim); more than 64 is refused;
    changing the ignored byte changes nothing."""
    v = by_id("hopper-trustee-coco-580")
    assert parse_gpu_report(v.report).trailing_bytes == 1
    base = verify_gpu_report(v.report, v.chain, expected_nonce=v.nonce, now=NOW)
    assert verify_gpu_report(v.report[:-1], v.chain, expected_nonce=v.nonce, now=NOW) == base
    assert verify_gpu_report(v.report[:-1] + b"\xff" * 64, v.chain, expected_nonce=v.nonce, now=NOW) == base
    with pytest.raises(EvidenceError) as info:
        verify_gpu_report(v.report[:-1] + bytes(65), v.chain, expected_nonce=v.nonce, now=NOW)
    assert info.value.reason == "gpu-report-malformed"
    with pytest.raises(EvidenceError) as info:
        verify_gpu_report(v.report[:-2], v.chain, expected_nonce=v.nonce, now=NOW)  # into the signature
    assert info.value.reason == "gpu-report-malformed"


def _split_pem(chain: bytes) -> list[bytes]:
    return [c.public_bytes(Encoding.PEM) for c in x509.load_pem_x509_certificates(chain)]


def test_chain_to_another_root_refused() -> None:
    """The same chain re-signed at the top by a self-made 'NVIDIA Device Identity CA' is not trusted."""
    v = by_id("hopper-trustee-550")
    certs = x509.load_pem_x509_certificates(v.chain)
    fake_key = ec.generate_private_key(ec.SECP384R1())
    root = certs[-1]
    fake_root = (
        x509.CertificateBuilder()
        .subject_name(root.subject)
        .issuer_name(root.subject)
        .public_key(fake_key.public_key())
        .serial_number(1)
        .not_valid_before(root.not_valid_before_utc)
        .not_valid_after(root.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(fake_key, hashes.SHA384())
    )
    identity = certs[3]
    fake_identity = (
        x509.CertificateBuilder()
        .subject_name(identity.subject)
        .issuer_name(fake_root.subject)
        .public_key(identity.public_key())
        .serial_number(identity.serial_number)
        .not_valid_before(identity.not_valid_before_utc)
        .not_valid_after(identity.not_valid_after_utc)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(fake_key, hashes.SHA384())
    )
    pems = _split_pem(v.chain)
    for chain in (
        b"".join([*pems[:3], fake_identity.public_bytes(Encoding.PEM), fake_root.public_bytes(Encoding.PEM)]),
        b"".join([*pems[:3], fake_identity.public_bytes(Encoding.PEM)]),
    ):
        with pytest.raises(EvidenceError) as info:
            verify_gpu_report(v.report, chain, expected_nonce=v.nonce, now=NOW)
        assert info.value.reason == "gpu-chain-untrusted"
    # And the genuine chain against a root that is not NVIDIA's.
    with pytest.raises(EvidenceError) as info:
        verify_gpu_report(
            v.report,
            v.chain,
            expected_nonce=v.nonce,
            now=NOW,
            roots=[trusted_root(fake_root.public_bytes(Encoding.DER))],
        )
    assert info.value.reason == "gpu-chain-untrusted"


def test_the_chain_without_its_shipped_root_still_verifies() -> None:
    v = by_id("hopper-trustee-550")
    chain = b"".join(_split_pem(v.chain)[:-1])
    verify_gpu_report(v.report, chain, expected_nonce=v.nonce, now=NOW)


def test_a_report_with_another_gpus_chain_is_refused() -> None:
    a, b = by_id("hopper-trustee-550"), by_id("hopper-nvat-570")
    assert a.nonce == b.nonce
    with pytest.raises(EvidenceError) as info:
        verify_gpu_report(a.report, b.chain, expected_nonce=a.nonce, now=NOW)
    assert info.value.reason in ("gpu-signature-invalid", "gpu-fwid-mismatch")


def test_naive_time_is_a_caller_error() -> None:
    v = by_id("hopper-trustee-550")
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_gpu_report(v.report, v.chain, expected_nonce=v.nonce, now=datetime(2026, 1, 1))


def test_claims_agree_with_trustees_claims_file() -> None:
    """trustee's test_build_claims_for_one_hopper_device expects hopperAttestationReport-claims.txt."""
    import json

    v = by_id("hopper-trustee-550")
    theirs = json.loads((NV / "hopper-trustee-550" / "hopperAttestationReport-claims.txt").read_text())
    ours = verify_gpu_report(v.report, v.chain, expected_nonce=v.nonce, now=NOW)
    assert ours["gpu.measurements"] == [theirs["measurements"][str(i)] for i in range(1, 65)]
    config = theirs["config"]
    assert ours["gpu.driver_version"] == config["driver_version"]
    assert str(ours["gpu.vbios_version"]).lower() == config["vbios_version"]
    assert ours["gpu.fwid"] == config["fwid"]
    assert (ours["gpu.project"], ours["gpu.chip_sku"]) == (config["project"], config["chip_sku"])
    # report.rs verifies the signature with hopper_signing_cert.pem: it is our leaf.
    leaf = x509.load_pem_x509_certificate(
        (NV / "hopper-trustee-550" / "hopper_signing_cert.pem").read_bytes()
    )
    assert ours["gpu.leaf_sha256"] == hashlib.sha256(leaf.public_bytes(Encoding.DER)).hexdigest()
