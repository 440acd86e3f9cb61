"""Every real SEV-SNP vector of MANIFEST §2 (and the SNP reports inside the Azure vTPM evidence of §6):
accepted at a `now` inside its window with exactly the claims MANIFEST/expected.json state, rejected just
outside the window, and with a wrong product."""

from __future__ import annotations

import base64
import json
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from keyserver.errors import EvidenceError
from keyserver.evidence.snp import (
    ChainCache,
    SnpProduct,
    verify_snp_certificate,
    verify_snp_files,
    verify_snp_report,
)
from keyserver.evidence.snp.certs import load_der_certificate, parse_amd_extensions, split_certificates

from .helpers import VECTORS, expected_vectors, utc, vec

ONE_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class Vector:
    name: str
    report: str
    cert: str
    now: datetime
    not_before: datetime  # intersection of the leaf/ASK/ARK windows (the leaf's, here)
    not_after: datetime
    product: SnpProduct
    signing_key: str
    debug: bool


VECTORS_2 = [
    Vector(
        "gsg-milan",
        "snp/gsg-milan/attestation.bin",
        "snp/gsg-milan/vcek.testcer",
        utc("2022-09-24T01:00:00Z"),  # the source's pinned time
        utc("2022-09-24T00:55:28Z"),
        utc("2029-09-24T00:55:28Z"),
        SnpProduct.MILAN,
        "vcek",
        True,  # policy 0xb0000: bit 19 DEBUG
    ),
    Vector(
        "trustee-milan-vcek",
        "snp/trustee-milan-vcek/test-report.bin",
        "snp/trustee-milan-vcek/test-vcek.der",
        utc("2026-11-23T00:00:00Z"),
        utc("2023-01-24T17:58:26Z"),
        utc("2030-01-24T17:58:26Z"),
        SnpProduct.MILAN,
        "vcek",
        False,
    ),
    Vector(
        "trustee-milan-vlek-aws",
        "snp/trustee-milan-vlek-aws/test-vlek-report.bin",
        "snp/trustee-milan-vlek-aws/test-vlek.der",
        utc("2025-06-01T00:00:00Z"),
        utc("2024-12-10T22:14:21Z"),
        utc("2025-12-10T22:14:21Z"),
        SnpProduct.MILAN,
        "vlek",
        False,
    ),
    Vector(
        "azure-milan-from-hcl",
        "snp/azure-milan-from-hcl/snp-report-from-hcl-report.bin",
        "snp/azure-milan-from-hcl/vcek.pem",
        utc("2026-11-23T00:00:00Z"),
        utc("2023-05-02T21:22:19Z"),
        utc("2030-05-02T21:22:19Z"),
        SnpProduct.MILAN,
        "vcek",
        False,
    ),
    Vector(
        "trustee-e2e-genoa-from-json",
        "snp/trustee-e2e-genoa-from-json/report-reconstructed-from-evidence-json.bin",
        "snp/trustee-e2e-genoa-from-json/vcek-from-evidence-json.der",
        utc("2026-11-23T00:00:00Z"),
        utc("2025-05-27T17:57:03Z"),
        utc("2032-05-27T17:57:03Z"),
        SnpProduct.GENOA,
        "vcek",
        False,
    ),
]
IDS = [v.name for v in VECTORS_2]


def _verify(v: Vector, now: datetime, product: str | None = None, **kw: Any) -> dict[str, Any]:
    return verify_snp_report(vec(v.report), vcek_or_vlek=vec(v.cert), product=product, now=now, **kw)


def _expected_claims(name: str) -> dict[str, Any]:
    """The claims a correct verifier must produce, transcribed from expected.json / MANIFEST §2."""
    e = expected_vectors()[name]
    out: dict[str, Any] = {
        "tee": "sev-snp",
        "report_data": e["report_data"],
        "debug": bool(int(e["policy"], 16) >> 19 & 1),
        "snp.version": e["version"],
        "snp.guest_svn": e["guest_svn"],
        "snp.policy": int(e["policy"], 16),
        "snp.vmpl": e["vmpl"],
        "snp.signer_info": int(e["signer_info"], 16),
        "snp.platform_info": int(e["plat_info"], 16),
        "snp.family_id": e["family_id"],
        "snp.image_id": e["image_id"],
        "snp.measurement": e["measurement"],
        "snp.host_data": e["host_data"],
        "snp.id_key_digest": e["id_key_digest"],
        "snp.author_key_digest": e["author_key_digest"],
        "snp.report_id": e["report_id"],
        "snp.chip_id": e["chip_id"],
        "snp.product": e["product"],
        "snp.signing_key": e["signer"].lower(),
        "snp.product_name": e["signing_cert_tcb"]["productName"],
        "snp.csp_id": e["signing_cert_tcb"].get("cspId"),
        "snp.cpuid": None if e["version"] == 2 else e["cpuid_fam_mod_step"],
        "snp.signing_cert_not_before": e["signing_cert_validity"][0].replace("+00:00", "Z"),
        "snp.signing_cert_not_after": e["signing_cert_validity"][1].replace("+00:00", "Z"),
    }
    for tcb in ("current_tcb", "reported_tcb", "committed_tcb", "launch_tcb"):
        for field, value in e[tcb].items():
            out[f"snp.{tcb}.{field}"] = value
    return out


@pytest.mark.parametrize("v", VECTORS_2, ids=IDS)
def test_vector_verifies_with_expected_claims(v: Vector) -> None:
    claims = _verify(v, v.now)
    expected = _expected_claims(v.name)
    assert {k: claims.get(k) for k in expected} == expected
    assert claims["debug"] is v.debug
    assert claims["snp.signing_key"] == v.signing_key
    assert claims["snp.product"] == v.product.value
    # REPORTED_TCB equals the certificate's TCB extensions (the collector's check).
    cert_tcb = expected_vectors()[v.name]["signing_cert_tcb"]
    for field in ("bootloader", "tee", "snp", "microcode"):
        assert claims[f"snp.reported_tcb.{field}"] == cert_tcb[field]
    assert "snp.reported_tcb.fmc" not in claims  # not Turin
    # every byte-string claim is lowercase hex
    for key, value in claims.items():
        if isinstance(value, str) and key not in (
            "tee",
            "snp.product",
            "snp.product_name",
            "snp.signing_key",
            "snp.csp_id",
            "snp.current_version",
            "snp.committed_version",
            "snp.signing_cert_not_before",
            "snp.signing_cert_not_after",
        ):
            assert value == value.lower(), key
            assert len(bytes.fromhex(value)) * 2 == len(value), key


def test_manifest_spot_values() -> None:
    """The values MANIFEST §2 spells out in prose."""
    gsg = _verify(VECTORS_2[0], VECTORS_2[0].now)
    assert gsg["report_data"] == "0102030405" + "00" * 59
    assert gsg["snp.policy"] == 0xB0000
    assert gsg["debug"] is True
    tr = _verify(VECTORS_2[1], VECTORS_2[1].now)
    assert tr["snp.family_id"] == "01" + "00" * 15
    assert tr["snp.image_id"] == "02" + "00" * 15
    assert tr["snp.guest_svn"] == 4
    assert tr["snp.id_key_digest"].startswith("0356215882a82527")
    vlek = _verify(VECTORS_2[2], VECTORS_2[2].now)
    assert vlek["snp.signing_key"] == "vlek"
    assert vlek["snp.vmpl"] == 1
    assert vlek["snp.chip_id"] == "00" * 64
    assert vlek["snp.chip_id_masked"] is True
    assert vlek["snp.csp_id"] == "CN=cc-us-east-2.amazonaws.com"
    assert vlek["snp.cpuid"] == "190101"
    genoa = _verify(VECTORS_2[4], VECTORS_2[4].now)
    assert genoa["snp.cpuid"] == "19a002"
    assert genoa["snp.product"] == "Genoa"


@pytest.mark.parametrize("v", VECTORS_2, ids=IDS)
def test_vector_window_bounds(v: Vector) -> None:
    # inclusive bounds (RFC 5280)
    assert _verify(v, v.not_before)["tee"] == "sev-snp"
    assert _verify(v, v.not_after)["tee"] == "sev-snp"
    with pytest.raises(EvidenceError) as early:
        _verify(v, v.not_before - ONE_SECOND)
    assert early.value.reason == "certificate-not-yet-valid"
    with pytest.raises(EvidenceError) as late:
        _verify(v, v.not_after + ONE_SECOND)
    assert late.value.reason == "certificate-expired"


def test_vlek_rejected_at_collection_date() -> None:
    v = VECTORS_2[2]
    with pytest.raises(EvidenceError) as exc:
        _verify(v, utc("2026-11-23T00:00:00Z"))
    assert exc.value.reason == "certificate-expired"
    assert "2025-12-10T22:14:21Z" in exc.value.message


@pytest.mark.parametrize("v", VECTORS_2, ids=IDS)
def test_vector_product_argument(v: Vector) -> None:
    assert _verify(v, v.now, product=v.product.value)["snp.product"] == v.product.value
    assert _verify(v, v.now, product=v.product.value.upper())["snp.product"] == v.product.value
    for other in SnpProduct:
        if other is v.product:
            continue
        with pytest.raises(EvidenceError) as exc:
            _verify(v, v.now, product=other.value)
        assert exc.value.reason == "product-mismatch"


@pytest.mark.parametrize("v", VECTORS_2, ids=IDS)
def test_vector_via_files_and_hex(v: Vector, tmp_path: Any) -> None:
    claims = verify_snp_files(VECTORS / v.report, VECTORS / v.cert, v.now)
    hex_report = tmp_path / "report.hex"
    raw = vec(v.report).hex()
    hex_report.write_text("\n".join(raw[i : i + 60] for i in range(0, len(raw), 60)) + "\n")
    assert verify_snp_files(hex_report, VECTORS / v.cert, v.now) == claims


@pytest.mark.parametrize("v", VECTORS_2, ids=IDS)
def test_vector_with_chain_cache(v: Vector) -> None:
    cache = ChainCache()
    first = _verify(v, v.now, chain_cache=cache)
    second = _verify(v, v.now, chain_cache=cache)
    assert first == second
    assert cache.hits == 1
    assert len(cache) == 1
    # the cache never skips the validity check
    with pytest.raises(EvidenceError) as exc:
        _verify(v, v.not_after + ONE_SECOND, chain_cache=cache)
    assert exc.value.reason == "certificate-expired"


@pytest.mark.parametrize("v", VECTORS_2, ids=IDS)
def test_vector_needs_its_certificate(v: Vector) -> None:
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(vec(v.report), vcek_or_vlek=None, product=None, now=v.now)
    assert exc.value.reason == "certificate-missing"


def test_vectors_emit_no_warning() -> None:
    """cryptography's serial-number-0 warning is contained; nothing leaks even with warnings as errors."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for v in VECTORS_2:
            _verify(v, v.now)


def test_wrong_vcek_for_report() -> None:
    """gsg's VCEK (another chip, another TCB) for trustee's report: the signature does not verify."""
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(
            vec("snp/trustee-milan-vcek/test-report.bin"),
            vcek_or_vlek=vec("snp/gsg-milan/vcek.testcer"),
            product=None,
            now=utc("2026-01-01T00:00:00Z"),
        )
    assert exc.value.reason == "signature-invalid"


# --- Turin: chain only ------------------------------------------------------------------------------


def test_turin_vcek_chain_and_extensions() -> None:
    der = vec("snp/virtee-turin-chain-only/vcek_turin.der")
    leaf = verify_snp_certificate(der, product=None, now=utc("2026-11-23T00:00:00Z"))
    assert leaf.product is SnpProduct.TURIN
    ext = leaf.extensions
    assert ext.product_name == "Turin"
    assert (ext.fmc, ext.bootloader, ext.tee, ext.snp, ext.microcode) == (0, 0, 0, 0, 9)
    assert ext.hwid == bytes.fromhex("1e550a8ee5cf9f4d")  # 8-byte Turin hwID
    assert ext.struct_version == 1
    assert verify_snp_certificate(der, product="Turin", now=utc("2026-11-23T00:00:00Z")) == leaf


def test_turin_vcek_window_and_product() -> None:
    der = vec("snp/virtee-turin-chain-only/vcek_turin.der")
    cert = load_der_certificate(der, "VCEK")
    with pytest.raises(EvidenceError) as exc:
        verify_snp_certificate(der, product=None, now=cert.not_valid_after_utc + ONE_SECOND)
    assert exc.value.reason == "certificate-expired"
    with pytest.raises(EvidenceError) as exc:
        verify_snp_certificate(der, product=None, now=cert.not_valid_before_utc - ONE_SECOND)
    assert exc.value.reason == "certificate-not-yet-valid"
    with pytest.raises(EvidenceError) as exc:
        verify_snp_certificate(der, product="Milan", now=utc("2026-11-23T00:00:00Z"))
    assert exc.value.reason == "product-mismatch"
    with pytest.raises(EvidenceError) as exc:
        verify_snp_certificate(der, signing_key="vlek", product=None, now=utc("2026-11-23T00:00:00Z"))
    assert exc.value.reason == "signing-key-mismatch"


# --- trustee's tampered VCEKs -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["test-vcek-invalid-legacy.der", "test-vcek-invalid-new.der"])
def test_tampered_vcek_hwid_parses_in_both_encodings_but_chain_fails(name: str) -> None:
    der = vec(f"snp/trustee-tampered-vcek/{name}")
    cert = load_der_certificate(der, "VCEK")
    assert parse_amd_extensions(cert, SnpProduct.MILAN, is_vcek=True).hwid == bytes(range(64))
    with pytest.raises(EvidenceError) as exc:
        verify_snp_certificate(der, product=None, now=utc("2026-01-01T00:00:00Z"))
    assert exc.value.reason == "chain-invalid"
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(
            vec("snp/trustee-milan-vcek/test-report.bin"),
            vcek_or_vlek=der,
            product=None,
            now=utc("2026-01-01T00:00:00Z"),
        )
    assert exc.value.reason == "chain-invalid"


# --- the SNP reports inside Azure vTPM evidence (MANIFEST §6) -----------------------------------------


def _azure(name: str) -> tuple[bytes, bytes]:
    """(SNP report = HCL report bytes 0x20..0x4C0, VCEK bytes) from an Azure evidence JSON."""
    d = json.loads(vec(f"other/azure-snp-vtpm/{name}"))
    if "report" in d:  # v0 encoding: byte arrays + PEM
        hcl = bytes(d["report"])
        vcek = d["vcek"].encode()
    else:  # v1/v2: base64url HCL report + base64url DER VCEK
        hcl = base64.urlsafe_b64decode(d["hcl_report"] + "=" * (-len(d["hcl_report"]) % 4))
        vcek = base64.urlsafe_b64decode(d["vcek"] + "=" * (-len(d["vcek"]) % 4))
    assert hcl[:4] == b"HCLA"
    return hcl[0x20:0x4C0], vcek


AZURE = [
    ("evidence-v0.json", SnpProduct.MILAN),
    ("evidence-v1.json", SnpProduct.MILAN),
    ("evidence-v2.json", SnpProduct.MILAN),
    ("evidence-genoa.json", SnpProduct.GENOA),
]


@pytest.mark.parametrize(("name", "product"), AZURE, ids=[a[0] for a in AZURE])
def test_azure_vtpm_snp_reports(name: str, product: SnpProduct) -> None:
    report, vcek = _azure(name)
    cert = load_der_certificate(split_certificates(vcek, "VCEK")[0], "VCEK")
    now = cert.not_valid_before_utc + timedelta(days=30)
    claims = verify_snp_report(report, vcek_or_vlek=vcek, product=None, now=now)
    assert claims["snp.product"] == product.value
    assert claims["snp.version"] == 3
    assert claims["snp.signing_key"] == "vcek"
    assert claims["snp.chip_id_masked"] is False
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(report, vcek_or_vlek=vcek, product=None, now=cert.not_valid_after_utc + ONE_SECOND)
    assert exc.value.reason == "certificate-expired"


def test_azure_hcl_report_bin() -> None:
    hcl = vec("other/azure-snp-vtpm/hcl-report.bin")
    report = hcl[0x20:0x4C0]
    assert report == vec("snp/azure-milan-from-hcl/snp-report-from-hcl-report.bin")
    claims = verify_snp_report(
        report, vcek_or_vlek=vec("snp/azure-milan-from-hcl/vcek.pem"), product=None, now=datetime.now(UTC)
    )
    assert str(claims["snp.measurement"]).startswith("9ac48fcac8a2d88a")
