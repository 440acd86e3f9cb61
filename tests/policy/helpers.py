"""Real claim sets for policy tests, produced by running the project's verifiers on the shared vectors at
their own dates (tests/vectors/MANIFEST.md), plus builders for policies and reference-value sets.

Plain functions (no fixtures), cached: each verifier runs once per test session.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from keyserver.evidence.snp.verify import verify_snp_report
from keyserver.evidence.tdx import load_collateral, verify_tdx_quote
from keyserver.evidence.tpm.quote import verify_quote
from policy import ReferenceValueSet, parse_reference_set
from tests.snp.helpers import vec as snp_vec
from tests.tdx.helpers import DCAP_QVL, DCAP_QVL_NOW, utc
from tests.tdx.helpers import vec as tdx_vec
from tests.tpm.helpers import GCE_NONCES, gce_ak, gce_pcrs, gce_quote

Claims = Mapping[str, object]

# Dates inside every certificate window of the vector they verify (MANIFEST.md).
SNP_GSG_NOW = datetime(2022, 9, 24, 1, 0, tzinfo=UTC)  # gsg-milan: authentic, DEBUG guest (policy 0xb0000)
SNP_TRUSTEE_NOW = datetime(2024, 6, 1, tzinfo=UTC)  # trustee-milan-vcek: authentic, policy 0x3001f (no debug)
TDX_NOW = utc(DCAP_QVL_NOW)  # dcap-qvl tdx_quote with its own collateral: UpToDate
TPM_NOW = datetime(2026, 11, 23, tzinfo=UTC)  # GCE vTPM quote (no certificate involved in the quote itself)


@functools.cache
def snp_debug_claims() -> Claims:
    claims = verify_snp_report(
        snp_vec("snp/gsg-milan/attestation.bin"),
        vcek_or_vlek=snp_vec("snp/gsg-milan/vcek.testcer"),
        product="Milan",
        now=SNP_GSG_NOW,
    )
    return MappingProxyType(claims)


@functools.cache
def snp_claims() -> Claims:
    claims = verify_snp_report(
        snp_vec("snp/trustee-milan-vcek/test-report.bin"),
        vcek_or_vlek=snp_vec("snp/trustee-milan-vcek/test-vcek.der"),
        product="Milan",
        now=SNP_TRUSTEE_NOW,
    )
    return MappingProxyType(claims)


@functools.cache
def tdx_claims() -> Claims:
    from tests.tdx.helpers import VECTORS

    collateral = load_collateral(VECTORS / "tdx/dcap-qvl/tdx_quote_collateral.json")
    return MappingProxyType(verify_tdx_quote(tdx_vec(DCAP_QVL), now=TDX_NOW, collateral=collateral))


@functools.cache
def tpm_claims() -> Claims:
    attest, sig = gce_quote("nonce9009", "quote1_sha256")
    result = verify_quote(
        attest,
        sig,
        gce_ak(),
        expected_extra_data=GCE_NONCES["nonce9009"],
        pcr_values=gce_pcrs("sha256"),
        expected_selection={"sha256": range(24)},
    )
    return MappingProxyType(result.claims)


def integer(claims: Claims, name: str) -> int:
    value = claims[name]
    assert isinstance(value, int)
    return value


@functools.cache
def tdx_debug_claims() -> Claims:
    """trustee's tdx_quote_4: authentic, a DEBUG TD (no collateral: no TCB status)."""
    from tests.tdx.helpers import GO_TDX_GUEST_NOW, TRUSTEE_4

    return MappingProxyType(verify_tdx_quote(tdx_vec(TRUSTEE_4), now=utc(GO_TDX_GUEST_NOW)))


def with_claims(claims: Claims, **changes: object) -> dict[str, object]:
    """A copy of ``claims`` with changes; keyword ``snp__measurement`` stands for ``snp.measurement``."""
    out = dict(claims)
    for key, value in changes.items():
        out[key.replace("__", ".")] = value
    return out


def reference_set(
    name: str,
    tee: str,
    *,
    expected: Mapping[str, list[Any]] | None = None,
    minimums: Mapping[str, int] | None = None,
    version: int = 1,
    revoked: bool = False,
    not_before: str | None = None,
    not_after: str | None = None,
) -> ReferenceValueSet:
    values: dict[str, Any] = {"version": 1}
    if expected:
        values["expected"] = dict(expected)
    if minimums:
        values["minimums"] = dict(minimums)
    if not_before:
        values["not_before"] = not_before
    if not_after:
        values["not_after"] = not_after
    return parse_reference_set(
        {"name": name, "tee": tee, "version": version, "revoked": revoked, "values": values}
    )


def snp_reference(claims: Claims, name: str = "loader-snp", **kw: Any) -> ReferenceValueSet:
    """The reference values a CI signer would publish for the build that produced ``claims``."""
    return reference_set(
        name,
        "sev-snp",
        expected={"snp.measurement": [claims["snp.measurement"]], "snp.product": ["Milan", "Genoa"]},
        minimums={
            "snp.reported_tcb.snp": integer(claims, "snp.reported_tcb.snp"),
            "snp.reported_tcb.microcode": integer(claims, "snp.reported_tcb.microcode"),
        },
        **kw,
    )


def tdx_reference(claims: Claims, name: str = "loader-tdx", **kw: Any) -> ReferenceValueSet:
    return reference_set(
        name,
        "tdx",
        expected={
            "tdx.mrtd": [claims["tdx.mrtd"]],
            **{f"tdx.rtmr{i}": [claims[f"tdx.rtmr{i}"]] for i in range(4)},
            "tdx.tcb_status": ["UpToDate", "SWHardeningNeeded"],
        },
        minimums={"tdx.module_svn": integer(claims, "tdx.module_svn")},
        **kw,
    )


def tpm_reference(claims: Claims, name: str = "loader-tpm", **kw: Any) -> ReferenceValueSet:
    return reference_set(
        name,
        "tpm",
        expected={f"tpm.pcrs.sha256.{i}": [claims[f"tpm.pcrs.sha256.{i}"]] for i in (0, 4, 7, 9)},
        **kw,
    )


def policy_doc(**members: Any) -> dict[str, Any]:
    """A valid policy document (all three tees, the three loader sets), with members replaced."""
    doc: dict[str, Any] = {
        "version": 1,
        "tees": ["tpm", "sev-snp", "tdx"],
        "reference_values": ["loader-snp", "loader-tdx", "loader-tpm"],
    }
    doc.update(members)
    return doc
