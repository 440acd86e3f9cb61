"""Every real TDX quote of MANIFEST §3 (and the Azure TD quote): fields, validity windows, versions and the
byte-level negatives of ``mutations.json``."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from keyserver.errors import EvidenceError
from keyserver.evidence.tdx import parse_quote, verify_tdx_quote

from .helpers import (
    SPR,
    V4_QUOTES,
    V5_QUOTES,
    apply_mutation,
    expected_vectors,
    tdx_mutations,
    utc,
    vec,
)

CLAIM_FIELDS = {
    "tdx.mrtd": "mrtd",
    "tdx.rtmr0": "rtmr0",
    "tdx.rtmr1": "rtmr1",
    "tdx.rtmr2": "rtmr2",
    "tdx.rtmr3": "rtmr3",
    "tdx.mrseam": "mrseam",
    "tdx.mrsignerseam": "mrsignerseam",
    "tdx.seam_attributes": "seam_attributes",
    "tdx.mrconfigid": "mrconfigid",
    "tdx.mrowner": "mrowner",
    "tdx.mrownerconfig": "mrownerconfig",
    "tdx.td_attributes": "td_attributes",
    "tdx.xfam": "xfam",
    "tdx.tee_tcb_svn": "tee_tcb_svn",
    "tdx.fmspc": "fmspc",
    "report_data": "report_data",
    "tdx.qe_svn": "qe_isvsvn",
    "tdx.qe_mrenclave": "qe_mrenclave",
    "tdx.qe_mrsigner": "qe_mrsigner",
}


def _window(exp: dict[str, Any]) -> tuple[Any, Any]:
    start, end = exp["valid_window"].split(" .. ")
    return utc(start), utc(end)


@pytest.mark.parametrize("name", V4_QUOTES)
def test_v4_quote_claims_match_manifest(name: str) -> None:
    exp = expected_vectors()[name]
    start, _ = _window(exp)
    claims = verify_tdx_quote(vec(name), now=start + timedelta(days=1))
    for claim, field in CLAIM_FIELDS.items():
        assert claims[claim] == exp[field], claim
    assert claims["tee"] == "tdx"
    assert claims["tdx.quote_version"] == 4
    assert claims["debug"] is bool(bytes.fromhex(exp["td_attributes"])[0] & 1)
    assert claims["tdx.pce_svn"] == exp["pck"]["pcesvn"]
    assert claims["tdx.pce_id"] == exp["pck"]["pceid"]
    assert claims["tdx.cpu_svn"] == exp["pck"]["cpusvn"]
    assert claims["tdx.pck_ca"] == "platform"
    # No collateral: no TCB verdict.
    for claim in ("tdx.tcb_status", "tdx.advisory_ids", "tdx.tcb_date", "tdx.qe_tcb_status"):
        assert claims[claim] is None
    # Byte strings are lowercase hex.
    for key, value in claims.items():
        if isinstance(value, str) and key not in ("tee", "tdx.sgx_type", "tdx.pck_ca"):
            assert value == value.lower(), key


@pytest.mark.parametrize("name", V4_QUOTES)
def test_v4_quote_structure_matches_manifest(name: str) -> None:
    exp = expected_vectors()[name]
    quote = parse_quote(vec(name))
    assert quote.header.version == exp["version"]
    assert quote.header.att_key_type == exp["att_key_type"]
    assert hex(quote.header.tee_type) == exp["tee_type"]
    assert quote.header.qe_vendor_id.hex() == exp["qe_vendor_id"]
    assert quote.signature_data_length == exp["sig_data_len"]
    assert quote.trailing_bytes == exp["trailing_bytes"]
    assert quote.qe_report.isv_prod_id == exp["qe_isvprodid"]
    assert quote.qe_report.attributes.hex() == exp["qe_attributes"]


@pytest.mark.parametrize("name", V4_QUOTES)
def test_accepted_inside_and_rejected_outside_the_pck_window(name: str) -> None:
    start, end = _window(expected_vectors()[name])
    quote = vec(name)
    # Inclusive bounds (RFC 5280 §4.1.2.5).
    verify_tdx_quote(quote, now=start)
    verify_tdx_quote(quote, now=end)
    with pytest.raises(EvidenceError) as early:
        verify_tdx_quote(quote, now=start - timedelta(seconds=1))
    assert early.value.reason == "certificate-not-yet-valid"
    with pytest.raises(EvidenceError) as late:
        verify_tdx_quote(quote, now=end + timedelta(seconds=1))
    assert late.value.reason == "certificate-expired"
    assert "PCK leaf" in late.value.message


def test_go_tdx_guest_source_asserted_dates() -> None:
    # TestRawQuoteVerifyWithoutCollateral: verifies at 2023-07-01T01:00:00Z.
    claims = verify_tdx_quote(vec(SPR), now=utc("2023-07-01T01:00:00Z"))
    assert claims["tdx.ppid"] == "089ddfdb9c0359c82a3bc7719239574e"
    assert claims["tdx.cpu_svn"] == "03030202020100020000000000000000"
    # TestNegativeVerifyPckChainWithoutRevocation: expired at 2053.
    with pytest.raises(EvidenceError) as exc:
        verify_tdx_quote(vec(SPR), now=utc("2053-07-01T00:00:00Z"))
    assert exc.value.reason == "certificate-expired"


@pytest.mark.parametrize("name", V5_QUOTES)
def test_v5_quotes_are_unsupported_version(name: str) -> None:
    assert expected_vectors()[name]["version"] == 5
    with pytest.raises(EvidenceError) as exc:
        verify_tdx_quote(vec(name), now=utc("2026-03-01T00:00:00Z"))
    assert exc.value.reason == "unsupported-version"
    assert "version 5" in exc.value.message
    assert "v4" in exc.value.message


def test_debug_td_is_reported_not_rejected() -> None:
    # trustee tdx_quote_4: authentic, TD_ATTRIBUTES.DEBUG set - rejecting it is the policy's job.
    claims = verify_tdx_quote(vec("tdx/trustee/tdx_quote_4.dat"), now=utc("2024-01-01T00:00:00Z"))
    assert claims["debug"] is True
    assert claims["tdx.td_attributes"] == "0100001000000000"


# Reason each mutation recipe must produce (the recipe's "expect" text, as this verifier names it).
MUTATION_REASONS = {
    "0x00": "unsupported-version",  # version 3: an SGX quote, not TDX
    "0x278": "quote-malformed",  # signature data length no longer matches its contents
    "0x1343": "pck-chain-malformed",  # PEM of the embedded chain broken
    "0x1329": "untrusted-root",  # embedded root no longer self-verifies
    "0xF5F": "pck-chain-invalid",  # intermediate's signature
    "0xB77": "pck-chain-invalid",  # leaf's signature
    "0x1E": "signature-invalid",  # header byte
    "0x3C": "signature-invalid",  # TD quote body byte
}


@pytest.mark.parametrize(
    "recipe", tdx_mutations(), ids=lambda r: f"{r['file'].rsplit('/', 1)[-1]}@{r['offset']}"
)
def test_mutation_recipes_are_rejected(recipe: dict[str, Any]) -> None:
    original = vec(recipe["file"])
    mutated = apply_mutation(original, recipe)
    assert mutated != original
    now = utc("2023-07-01T01:00:00Z")
    verify_tdx_quote(original, now=now)
    with pytest.raises(EvidenceError) as exc:
        verify_tdx_quote(mutated, now=now)
    assert exc.value.reason == MUTATION_REASONS[recipe["offset"]], (recipe["expect"], exc.value.message)


def test_every_mutation_recipe_has_an_expected_reason() -> None:
    assert {r["offset"] for r in tdx_mutations()} == set(MUTATION_REASONS)
