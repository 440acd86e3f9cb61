"""The known-bad variants of mutations.json (applied at test time), plus wrong product / wrong roots /
mis-assembled certificate bundles."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from keyserver.errors import ConfigurationError, EvidenceError
from keyserver.evidence.snp import ProductRoots, SnpProduct, SnpRoots, default_snp_roots, verify_snp_report
from keyserver.evidence.snp.certs import split_certificates

from .helpers import apply_mutation, mutations, utc, vec

NOW = utc("2025-06-01T00:00:00Z")  # inside every Milan vector's window, incl. the AWS VLEK

# what verifies each mutated file: (report, certificate)
CONTEXT = {
    "snp/trustee-milan-vcek/test-report.bin": (
        "snp/trustee-milan-vcek/test-report.bin",
        "snp/trustee-milan-vcek/test-vcek.der",
    ),
    "snp/trustee-milan-vlek-aws/test-vlek-report.bin": (
        "snp/trustee-milan-vlek-aws/test-vlek-report.bin",
        "snp/trustee-milan-vlek-aws/test-vlek.der",
    ),
    "snp/trustee-milan-vcek/test-vcek.der": (
        "snp/trustee-milan-vcek/test-report.bin",
        "snp/trustee-milan-vcek/test-vcek.der",
    ),
}

# acceptable rejection reasons per expectation in mutations.json
REPORT_BYTE_REASONS = {"signature-invalid", "tcb-mismatch"}
CERT_BYTE_REASONS = {"chain-invalid", "certificate-unparseable"}

BYTE_RECIPES = [m for m in mutations()["snp"] if "offset" in m]


def test_recipe_inventory() -> None:
    """Guard against silently skipping recipes: 5 byte edits + 1 chain substitution."""
    assert len(BYTE_RECIPES) == 5
    assert len(mutations()["snp"]) == 6
    assert all(m["file"] in CONTEXT for m in BYTE_RECIPES)


@pytest.mark.parametrize(
    "recipe", BYTE_RECIPES, ids=[f"{m['file'].split('/')[-1]}@{m['offset']}" for m in BYTE_RECIPES]
)
def test_snp_mutation_recipe(recipe: dict[str, Any]) -> None:
    report_path, cert_path = CONTEXT[recipe["file"]]
    report, cert = vec(report_path), vec(cert_path)
    # the unmutated pair verifies
    verify_snp_report(report, vcek_or_vlek=cert, product=None, now=NOW)
    if recipe["file"] == report_path:
        report = apply_mutation(report, recipe)
        allowed = REPORT_BYTE_REASONS
    else:
        cert = apply_mutation(cert, recipe)
        allowed = CERT_BYTE_REASONS
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(report, vcek_or_vlek=cert, product=None, now=NOW)
    assert exc.value.reason in allowed, (recipe["expect"], exc.value.reason, exc.value.message)


def test_asvk_used_as_ask() -> None:
    """mutations.json: use the ASVK (SEV-VLEK-Milan) in place of the ASK for trustee's Milan VCEK."""
    recipe = next(m for m in mutations()["snp"] if "offset" not in m)
    assert recipe["file"] == "roots/amd/ask_ark_milan_vlek.pem"
    asvk, ark = split_certificates(vec("roots/amd/ask_ark_milan_vlek.pem"), "chain")
    roots = SnpRoots(products=(ProductRoots.build(SnpProduct.MILAN, ark_der=ark, ask_der=asvk),))
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(
            vec("snp/trustee-milan-vcek/test-report.bin"),
            vcek_or_vlek=vec("snp/trustee-milan-vcek/test-vcek.der"),
            product=None,
            now=NOW,
            roots=roots,
        )
    assert exc.value.reason == "chain-invalid"


def test_azure_hcl_reported_tcb_snp_zeroed() -> None:
    """mutations.json (azure): HCL byte 0x1a6 = report offset 0x186 (REPORTED_TCB.snp) set to 0."""
    recipe = next(m for m in mutations()["azure"] if m["offset"] == "0x01a6")
    hcl = apply_mutation(vec(recipe["file"]), recipe)
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(
            hcl[0x20:0x4C0], vcek_or_vlek=vec("snp/azure-milan-from-hcl/vcek.pem"), product=None, now=NOW
        )
    assert exc.value.reason in REPORT_BYTE_REASONS


# --- wrong product / wrong roots ------------------------------------------------------------------


def _milan_vcek(**kw: Any) -> dict[str, Any]:
    return verify_snp_report(
        vec("snp/trustee-milan-vcek/test-report.bin"),
        vcek_or_vlek=kw.pop("cert", vec("snp/trustee-milan-vcek/test-vcek.der")),
        now=NOW,
        **{"product": None, **kw},
    )


def test_genoa_product_for_milan_report() -> None:
    with pytest.raises(EvidenceError) as exc:
        _milan_vcek(product="Genoa")
    assert exc.value.reason == "product-mismatch"


def test_only_genoa_roots_for_milan_report() -> None:
    genoa = default_snp_roots().get(SnpProduct.GENOA)
    assert genoa is not None
    with pytest.raises(EvidenceError) as exc:
        _milan_vcek(roots=SnpRoots(products=(genoa,)))
    assert exc.value.reason == "roots-missing"


def test_genoa_chain_cannot_be_configured_as_milan() -> None:
    g_ask, g_ark = split_certificates(vec("roots/amd/ask_ark_genoa.pem"), "chain")
    _m_ask, m_ark = split_certificates(vec("roots/amd/ask_ark_milan.pem"), "chain")
    with pytest.raises(ConfigurationError, match="not a pinned AMD root"):
        ProductRoots.build(SnpProduct.MILAN, ark_der=g_ark, ask_der=g_ask)
    with pytest.raises(ConfigurationError, match="not issued and signed by the ARK"):
        ProductRoots.build(SnpProduct.MILAN, ark_der=m_ark, ask_der=g_ask)


def test_genoa_report_with_milan_vcek() -> None:
    """The v3 Genoa report's CPUID says Genoa; a Milan VCEK cannot be its signer."""
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(
            vec("snp/trustee-e2e-genoa-from-json/report-reconstructed-from-evidence-json.bin"),
            vcek_or_vlek=vec("snp/trustee-milan-vcek/test-vcek.der"),
            product=None,
            now=NOW,
        )
    assert exc.value.reason == "product-mismatch"


def test_vlek_report_cpuid_against_caller_product() -> None:
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(
            vec("snp/trustee-milan-vlek-aws/test-vlek-report.bin"),
            vcek_or_vlek=vec("snp/trustee-milan-vlek-aws/test-vlek.der"),
            product="Turin",
            now=NOW,
        )
    assert exc.value.reason == "product-mismatch"


def test_vlek_report_with_vcek_and_vice_versa() -> None:
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(
            vec("snp/trustee-milan-vlek-aws/test-vlek-report.bin"),
            vcek_or_vlek=vec("snp/trustee-milan-vcek/test-vcek.der"),
            product=None,
            now=NOW,
        )
    assert exc.value.reason == "signing-key-mismatch"
    with pytest.raises(EvidenceError) as exc:
        _milan_vcek(cert=vec("snp/trustee-milan-vlek-aws/test-vlek.der"))
    assert exc.value.reason == "signing-key-mismatch"


def test_vlek_without_asvk_configured() -> None:
    ask, ark = split_certificates(vec("roots/amd/ask_ark_milan.pem"), "chain")
    roots = SnpRoots(products=(ProductRoots.build(SnpProduct.MILAN, ark_der=ark, ask_der=ask),))
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(
            vec("snp/trustee-milan-vlek-aws/test-vlek-report.bin"),
            vcek_or_vlek=vec("snp/trustee-milan-vlek-aws/test-vlek.der"),
            product=None,
            now=NOW,
            roots=roots,
        )
    assert exc.value.reason == "roots-missing"


# --- certificate bundles ---------------------------------------------------------------------------


def test_bundle_with_foreign_product_root() -> None:
    bundle = vec("snp/azure-milan-from-hcl/vcek.pem") + vec("roots/amd/ask_ark_genoa.pem")
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(
            vec("snp/azure-milan-from-hcl/snp-report-from-hcl-report.bin"),
            vcek_or_vlek=bundle,
            product=None,
            now=NOW,
        )
    assert exc.value.reason == "chain-invalid"


def test_bundle_with_two_leaves() -> None:
    bundle = vec("snp/azure-milan-from-hcl/vcek.pem") + b"-----BEGIN CERTIFICATE-----\n"
    bundle += base64.encodebytes(vec("snp/gsg-milan/vcek.testcer")) + b"-----END CERTIFICATE-----\n"
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(
            vec("snp/azure-milan-from-hcl/snp-report-from-hcl-report.bin"),
            vcek_or_vlek=bundle,
            product=None,
            now=NOW,
        )
    assert exc.value.reason == "certificate-malformed"


def test_bundle_without_leaf() -> None:
    with pytest.raises(EvidenceError) as exc:
        _milan_vcek(cert=vec("roots/amd/ask_ark_milan.pem"))
    assert exc.value.reason == "certificate-missing"


@pytest.mark.parametrize(
    "cert",
    [
        b"",
        b"garbage",
        b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        b"\x30\x03\x02\x01\x00",
    ],
    ids=["empty", "garbage", "bad-base64", "not-a-certificate-block", "tiny-der"],
)
def test_unusable_certificate_input(cert: bytes) -> None:
    with pytest.raises(EvidenceError) as exc:
        _milan_vcek(cert=cert)
    assert exc.value.reason in {"certificate-missing", "certificate-malformed", "certificate-unparseable"}


# --- the unsigned envelope of a certificate ----------------------------------------------------------


def _signature_bitstring_offset(der: bytes) -> int:
    """Offset of the signatureValue BIT STRING's unused-bits byte (the last TLV of the certificate)."""
    sig_len = int.from_bytes(der[-515:-513], "big") if der[-517:-515] == b"\x03\x82" else None
    assert sig_len == 513  # RSA-4096 signature + the unused-bits byte
    return len(der) - 513


@pytest.mark.parametrize(
    ("report", "cert"),
    [
        ("snp/trustee-milan-vlek-aws/test-vlek-report.bin", "snp/trustee-milan-vlek-aws/test-vlek.der"),
        ("snp/trustee-milan-vcek/test-report.bin", "snp/trustee-milan-vcek/test-vcek.der"),
    ],
)
def test_noncanonical_certificate_envelope(report: str, cert: str) -> None:
    """Bytes outside tbsCertificate are not signed: a non-zero BIT STRING unused-bits count (which
    cryptography tolerates) or an outer signatureAlgorithm differing from the inner one must not verify."""
    der = bytearray(vec(cert))
    unused_bits = _signature_bitstring_offset(bytes(der))
    assert der[unused_bits] == 0
    der[unused_bits] = 1
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(vec(report), vcek_or_vlek=bytes(der), product=None, now=NOW)
    assert exc.value.reason == "certificate-unparseable"
    der = bytearray(vec(cert))
    # the outer AlgorithmIdentifier (just before the BIT STRING) carries the PSS saltLength [2] INTEGER 48
    salt = der.rindex(b"\xa2\x03\x02\x01\x30", 0, unused_bits) + 4
    assert salt > unused_bits - 16
    der[salt] = 0x31
    with pytest.raises(EvidenceError) as exc:
        verify_snp_report(vec(report), vcek_or_vlek=bytes(der), product=None, now=NOW)
    assert exc.value.reason == "certificate-unparseable"
