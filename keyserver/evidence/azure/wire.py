"""Azure CVM evidence as a release request carries it (JSON, base64 fields; docs/evidence.md):

``{"tee": "azure-snp-vtpm", "hcl_report", "certificate"?, "tpm_quote", "tpm_signature", "pcrs": [24 hex],
"event_log"?}``; ``azure-tdx-vtpm`` has ``"td_quote"`` and an optional dcap-qvl ``"collateral"`` object
instead of ``"certificate"``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import datetime
from typing import TYPE_CHECKING, Any

from keyserver.errors import EvidenceError
from keyserver.evidence.claims import TEE_AZURE_SNP_VTPM, Claims

from .verify import TPM_PCR_COUNT, verify_azure_snp_vtpm, verify_azure_tdx_vtpm

if TYPE_CHECKING:
    from keyserver.evidence.snp import ChainCache

_COMMON = {"tee", "hcl_report", "tpm_quote", "tpm_signature", "pcrs", "event_log"}
_FIELDS = {TEE_AZURE_SNP_VTPM: _COMMON | {"certificate"}}
_TDX_FIELDS = _COMMON | {"td_quote", "collateral"}


def _pcrs(value: object) -> list[bytes]:
    if not isinstance(value, list) or len(value) != TPM_PCR_COUNT:
        raise EvidenceError("evidence-malformed", f"'pcrs' must list the {TPM_PCR_COUNT} SHA-256 PCRs as hex")
    out = []
    for item in value:
        try:
            out.append(bytes.fromhex(item) if isinstance(item, str) and len(item) == 64 else b"")
        except ValueError:
            out.append(b"")
        if not out[-1]:
            raise EvidenceError("evidence-malformed", "every entry of 'pcrs' is 64 hex digits (SHA-256)")
    return out


def verify_azure_evidence(
    tee: str,
    evidence: Mapping[str, Any],
    *,
    expected_nonce: bytes,
    now: datetime,
    chain_cache: ChainCache | None = None,
) -> tuple[Claims, bytes | None]:
    """Decode and verify; return the claims and the canonical TDX collateral bytes (for the log)."""
    from keyserver.evidence.dispatch import field

    allowed = _FIELDS.get(tee, _TDX_FIELDS)
    unknown = set(evidence) - allowed
    if unknown:
        raise EvidenceError("evidence-malformed", f"unknown evidence fields: {', '.join(sorted(unknown))}")
    hcl, quote, signature = (
        field(evidence, "hcl_report"),
        field(evidence, "tpm_quote"),
        field(evidence, "tpm_signature"),
    )
    assert hcl is not None
    assert quote is not None
    assert signature is not None
    pcrs = _pcrs(evidence.get("pcrs"))
    event_log = field(evidence, "event_log", required=False)
    if tee == TEE_AZURE_SNP_VTPM:
        claims = verify_azure_snp_vtpm(
            hcl,
            vcek=field(evidence, "certificate", required=False),
            quote=quote,
            signature=signature,
            pcrs=pcrs,
            expected_nonce=expected_nonce,
            now=now,
            event_log=event_log,
            chain_cache=chain_cache,
        )
        return claims, None
    from keyserver.evidence.tdx import parse_dcap_qvl_collateral

    td_quote = field(evidence, "td_quote")
    assert td_quote is not None
    raw = evidence.get("collateral")
    collateral = collateral_bytes = None
    if raw is not None:
        if not isinstance(raw, dict):
            raise EvidenceError("evidence-malformed", "evidence 'collateral' is dcap-qvl's JSON object")
        collateral_bytes = json.dumps(raw, sort_keys=True).encode()
        collateral = parse_dcap_qvl_collateral(collateral_bytes)
    claims = verify_azure_tdx_vtpm(
        hcl,
        td_quote=td_quote,
        quote=quote,
        signature=signature,
        pcrs=pcrs,
        expected_nonce=expected_nonce,
        now=now,
        event_log=event_log,
        collateral=collateral,
    )
    return claims, collateral_bytes
