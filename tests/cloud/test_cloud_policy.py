"""Policies and reference values over the Azure CVM and AWS Nitro claims (issue 19): the real vectors'
claims are granted by a policy pinning them, denied when a pinned value differs, and a Nitro debug-mode
document is denied unless the policy allows debug TEEs."""

from __future__ import annotations

from datetime import datetime

import pytest

from keyserver.evidence.claims import Claims
from keyserver.evidence.nitro.verify import verify_nitro_document
from policy import PolicyError, evaluate, parse_policy
from policy.evaluate import DEBUG_NOT_ALLOWED, REFERENCE_VALUE_MISMATCH
from tests.cloud.test_azure import verify as verify_azure
from tests.cloud.vectors import AZURE, NITRO
from tests.policy.helpers import reference_set

pytestmark = pytest.mark.filterwarnings(
    "ignore:Parsed a serial number:cryptography.utils.CryptographyDeprecationWarning"
)


def _mid(name: str) -> datetime:
    v = NITRO[name]
    return v.not_before + (v.not_after - v.not_before) / 2


def _nitro(name: str) -> Claims:
    return verify_nitro_document(NITRO[name].document, now=_mid(name))


def test_azure_snp_claims_are_granted_by_a_policy_pinning_all_three_layers() -> None:
    v = AZURE["snp/hcl-report"]
    claims = verify_azure(v)
    now = v.validity()[0]
    pinned = reference_set(
        "azure-cvm",
        "azure-snp-vtpm",
        expected={
            "snp.measurement": [claims["snp.measurement"]],
            "tpm.pcrs.sha256.0": [claims["tpm.pcrs.sha256.0"]],
            "azure.secure_boot": [True],
            "azure.vm_id": [claims["azure.vm_id"]],
        },
        minimums={"snp.reported_tcb.snp": 8},
    )
    rules = [{"name": "console-off-or-known", "expr": 'claims["azure.tpm_enabled"] == true'}]
    policy = parse_policy(
        {"version": 1, "tees": ["azure-snp-vtpm"], "reference_values": ["azure-cvm"], "rules": rules}
    )
    decision = evaluate(policy, claims, [pinned], now)
    assert decision.granted, decision.results
    other = reference_set("azure-cvm", "azure-snp-vtpm", expected={"tpm.pcrs.sha256.0": ["00" * 32]})
    denied = evaluate(policy, claims, [other], now)
    assert not denied.granted
    assert denied.reason == REFERENCE_VALUE_MISMATCH


def test_azure_tdx_claims_are_granted_and_other_tees_do_not_match() -> None:
    v = AZURE["tdx/evidence-v0"]
    claims = verify_azure(v)
    pinned = reference_set("azure-tdx", "azure-tdx-vtpm", expected={"tdx.mrtd": [claims["tdx.mrtd"]]})
    policy = parse_policy({"version": 1, "tees": ["azure-tdx-vtpm"], "reference_values": ["azure-tdx"]})
    assert evaluate(policy, claims, [pinned], v.validity()[0]).granted
    snp_only = parse_policy({"version": 1, "tees": ["sev-snp"], "reference_values": ["azure-tdx"]})
    assert not evaluate(snp_only, claims, [pinned], v.validity()[0]).granted


def test_reference_sets_refuse_claims_of_another_tee() -> None:
    with pytest.raises(PolicyError):
        reference_set("x", "azure-snp-vtpm", expected={"tdx.mrtd": ["00" * 48]})
    with pytest.raises(PolicyError):
        reference_set("x", "aws-nitro", expected={"nitro.pcrs.0": ["00" * 32]})  # PCRs are SHA-384
    with pytest.raises(PolicyError):
        reference_set("x", "aws-nitro", expected={"nitro.pcrs.32": ["00" * 48]})


def test_nitro_production_document_granted_by_its_pcrs() -> None:
    name = "valid-attestation-doc-bytes"
    claims = _nitro(name)
    pinned = reference_set(
        "enclave",
        "aws-nitro",
        expected={f"nitro.pcrs.{i}": [claims[f"nitro.pcrs.{i}"]] for i in (0, 1, 2, 8)},
    )
    policy = parse_policy({"version": 1, "tees": ["aws-nitro"], "reference_values": ["enclave"]})
    assert evaluate(policy, claims, [pinned], _mid(name)).granted


@pytest.mark.parametrize("name", ["debug-mode-attestation-doc-bytes", "valid-attestation-doc-base64"])
def test_nitro_debug_documents_are_denied_unless_debug_is_allowed(name: str) -> None:
    claims = _nitro(name)
    assert claims["debug"] is True
    pinned = reference_set("enclave", "aws-nitro", expected={"nitro.pcrs.0": ["00" * 48]})
    doc = {"version": 1, "tees": ["aws-nitro"], "reference_values": ["enclave"]}
    denied = evaluate(parse_policy(doc), claims, [pinned], _mid(name))
    assert not denied.granted
    assert denied.reason == DEBUG_NOT_ALLOWED
    assert evaluate(parse_policy({**doc, "allow_debug": True}), claims, [pinned], _mid(name)).granted
