"""Verify the evidence of a release request: the tee's verifier, then (separately, so that the caller
can log what verified before refusing it) the binding to the challenge.

This is the edge between the wire (base64 in JSON, docs/binding.md) and the pure verifiers. It needs the
database for one thing only — a TPM quote's AK must be enrolled with the tenant — and reads it through
the caller's session. Every problem is an ``EvidenceError`` with a stable reason.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import logging
import uuid
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ParamSpec

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncSession

from keyserver.binding import report_data_for
from keyserver.ephemeral_key import check_binding
from keyserver.errors import EvidenceError, KeyserverError
from keyserver.evidence.claims import (
    TEE_AWS_NITRO,
    TEE_AZURE_SNP_VTPM,
    TEE_AZURE_TDX_VTPM,
    TEE_SEV_SNP,
    TEE_TDX,
    TEE_TPM,
    TEES,
    Claims,
)

if TYPE_CHECKING:
    from keyserver.evidence.snp.cache import ChainCache
    from keyserver.evidence.tdx.cache import CollateralCache
    from keyserver.tpm_enrolment import EnrolledAk

MAX_EVIDENCE_FIELD = 4 * 1024 * 1024
# Every value of a request's "tee" that the service knows (a release's log entry records anything
# else as "unknown"). Verifiers added here must add their tee.
KNOWN_TEES = frozenset({*TEES, "attestation-result"})

_snp_chains: ChainCache | None = None


def snp_chain_cache() -> ChainCache:
    """The process's cache of verified VCEK/VLEK chains (keyserver/evidence/snp/cache.py: keyed by the
    leaf's exact DER and bound to the roots it chained to; validity windows, CRL, report signature and
    TCB are checked on every use)."""
    global _snp_chains
    if _snp_chains is None:
        from keyserver.evidence.snp.cache import ChainCache

        _snp_chains = ChainCache(max_entries=4096)
    return _snp_chains


_tdx_collateral: CollateralCache | None = None


def tdx_collateral_cache() -> CollateralCache:
    """The process's cache of parsed, authenticated TDX collateral (keyserver/evidence/tdx/cache.py: keyed
    by the exact bytes and bound to the pinned Intel root; collateral that does not authenticate is never
    kept; bounded in entries and bytes; validity windows, freshness and everything that depends on the
    quote are checked on every use)."""
    global _tdx_collateral
    if _tdx_collateral is None:
        from keyserver.evidence.tdx.cache import CollateralCache

        _tdx_collateral = CollateralCache(max_entries=256)
    return _tdx_collateral


log = logging.getLogger("keyserver.evidence")
P = ParamSpec("P")


@dataclass(frozen=True)
class VerifiedEvidence:
    tee: str
    claims: Claims
    collateral: bytes | None  # what the TDX collateral digest in the log covers
    # True where verification itself established the binding to this challenge and ephemeral key (a TPM
    # quote's qualifyingData; an attestation result's cnf.jkt). Otherwise check_evidence_binding must.
    binding_checked: bool = False


def field(evidence: Mapping[str, Any], name: str, *, required: bool = True) -> bytes | None:
    value = evidence.get(name)
    if value is None:
        if required:
            raise EvidenceError("evidence-malformed", f"the evidence has no {name!r}")
        return None
    if not isinstance(value, str) or len(value) > MAX_EVIDENCE_FIELD:
        raise EvidenceError("evidence-malformed", f"evidence {name!r} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise EvidenceError("evidence-malformed", f"evidence {name!r} is not valid base64") from None


def _only(evidence: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = set(evidence) - allowed
    if unknown:
        raise EvidenceError("evidence-malformed", f"unknown evidence fields: {', '.join(sorted(unknown))}")


def _refusing_verifier_bugs(
    verify: Callable[P, Coroutine[Any, Any, VerifiedEvidence]],
) -> Callable[P, Coroutine[Any, Any, VerifiedEvidence]]:
    """Evidence is hostile input: anything a verifier raises that is not a refusal (``EvidenceError`` or
    another typed error) nor the database's is a verifier bug reached by that input, and it too becomes
    a refusal (``evidence-unverifiable``), logged here with its stack — so the request is still denied
    and logged like any other, never a 500 with its challenge left unused (found by review: a key on a
    curve ``cryptography`` does not support raised ``UnsupportedAlgorithm`` through three parsers)."""

    @functools.wraps(verify)
    async def refusing(*args: P.args, **kwargs: P.kwargs) -> VerifiedEvidence:
        try:
            return await verify(*args, **kwargs)
        except (KeyserverError, SQLAlchemyError, TimeoutError, OSError):
            raise  # a refusal of its own, or the database's failure (the whole batch's: 503)
        except Exception as exc:
            log.exception("a verifier raised on hostile evidence; refused as evidence-unverifiable")
            raise EvidenceError(
                "evidence-unverifiable",
                f"the evidence could not be verified ({type(exc).__name__} in keyserver's verifier; logged)",
            ) from None

    return refusing


@_refusing_verifier_bugs
async def verify_evidence(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    evidence: Mapping[str, Any],
    *,
    nonce: bytes,
    ephemeral_jwk: Mapping[str, Any],
    now: datetime,
    enrolled_ak: EnrolledAk | None = None,
) -> VerifiedEvidence:
    """``enrolled_ak``: a TPM AK already read in this transaction (keyserver/release_reads.py); used only
    for the AK the evidence names. A verifier's bug on this evidence is a refusal (the decorator)."""
    if "gpus" in evidence:  # composite: the VM's evidence, then its GPUs' reports (docs/nvidia-gpu.md)
        from keyserver.evidence.nvidia.composite import gpu_claims

        vm_evidence = {name: value for name, value in evidence.items() if name != "gpus"}
        vm = await verify_evidence(
            session,
            tenant_id,
            vm_evidence,
            nonce=nonce,
            ephemeral_jwk=ephemeral_jwk,
            now=now,
            enrolled_ak=enrolled_ak,
        )
        gpus = gpu_claims(evidence["gpus"], nonce=nonce, ephemeral_jwk=ephemeral_jwk, now=now)
        return VerifiedEvidence(vm.tee, {**vm.claims, **gpus}, vm.collateral, vm.binding_checked)
    tee = evidence.get("tee")
    collateral_bytes = None
    if tee == TEE_TPM:
        claims = await _verify_tpm(session, tenant_id, evidence, nonce, ephemeral_jwk, enrolled_ak)
        return VerifiedEvidence(tee, claims, None, binding_checked=True)
    if tee == TEE_SEV_SNP:
        from keyserver.evidence.snp import verify_snp_report

        _only(evidence, {"tee", "report", "certificate", "product"})
        report = field(evidence, "report")
        product = evidence.get("product")
        if product is not None and not isinstance(product, str):
            raise EvidenceError("evidence-malformed", "evidence 'product' must be a string")
        assert report is not None
        claims = verify_snp_report(
            report,
            vcek_or_vlek=field(evidence, "certificate", required=False),
            product=product,
            now=now,
            chain_cache=snp_chain_cache(),
        )
    elif tee == TEE_TDX:
        from keyserver.evidence.tdx import verify_tdx_quote

        _only(evidence, {"tee", "quote", "collateral"})
        quote = field(evidence, "quote")
        assert quote is not None
        raw = evidence.get("collateral")
        collateral = None
        if raw is not None:
            if not isinstance(raw, dict):
                raise EvidenceError("evidence-malformed", "evidence 'collateral' is dcap-qvl's JSON object")
            collateral_bytes = json.dumps(raw, sort_keys=True).encode()
            collateral = tdx_collateral_cache().parse(collateral_bytes)
        claims = verify_tdx_quote(
            quote, now=now, collateral=collateral, collateral_cache=tdx_collateral_cache()
        )
    elif tee == "nvidia-gpu":
        raise EvidenceError(
            "evidence-malformed",
            "GPU reports do not stand alone (they say nothing of where the loader runs): send the VM's "
            "evidence with 'gpus' (docs/nvidia-gpu.md)",
        )
    elif tee in (TEE_AZURE_SNP_VTPM, TEE_AZURE_TDX_VTPM):
        from keyserver.binding import binding
        from keyserver.evidence.azure.wire import verify_azure_evidence

        # The vTPM quote's qualifyingData carries the binding, as a TPM's does (report_data_for).
        expected = report_data_for(tee, binding(nonce, ephemeral_jwk))
        claims, collateral_bytes = verify_azure_evidence(
            tee, evidence, expected_nonce=expected, now=now, chain_cache=snp_chain_cache()
        )
    elif tee == TEE_AWS_NITRO:
        from keyserver.evidence.nitro.verify import verify_nitro_document

        _only(evidence, {"tee", "document"})
        document = field(evidence, "document")
        assert document is not None
        claims = verify_nitro_document(document, now=now)
    else:
        raise EvidenceError(
            "evidence-malformed",
            "evidence 'tee' must be tpm, sev-snp, tdx, azure-snp-vtpm, azure-tdx-vtpm or aws-nitro",
        )
    return VerifiedEvidence(tee, claims, collateral_bytes)


def check_evidence_binding(
    verified: VerifiedEvidence, nonce: bytes, ephemeral_jwk: Mapping[str, Any]
) -> None:
    """The report proves it answers this challenge and names this ephemeral key (SEV-SNP, TDX).

    Every path that accepts evidence — a release and ``/attest`` alike — must call this after
    :func:`verify_evidence`: a genuine report that is not bound to *this* challenge and key proves
    nothing about the requester. Where verification already established the binding (a TPM quote's
    qualifyingData, an attestation result's ``cnf.jkt``) there is nothing left to check; any other
    verified evidence without a ``report_data`` claim is refused, never waved through."""
    if verified.binding_checked:
        return
    report_data = verified.claims.get("report_data")
    if not isinstance(report_data, str):
        raise EvidenceError("binding-mismatch", f"{verified.tee} evidence carries no report_data to bind it")
    check_binding(verified.tee, bytes.fromhex(report_data), nonce, ephemeral_jwk)


async def _verify_tpm(
    session: AsyncSession,
    tenant_id: uuid.UUID,
    evidence: Mapping[str, Any],
    nonce: bytes,
    ephemeral_jwk: Mapping[str, Any],
    enrolled_ak: EnrolledAk | None,
) -> Claims:
    from keyserver.binding import binding
    from keyserver.evidence.tpm.eventlog import verify_event_log
    from keyserver.evidence.tpm.quote import pcr_values_from_hex, verify_quote
    from keyserver.tpm_enrolment import trusted_ak

    _only(evidence, {"tee", "ak_name", "quote", "signature", "pcrs", "event_log", "loader_config"})
    ak_name, pcrs = evidence.get("ak_name"), evidence.get("pcrs")
    if not isinstance(ak_name, str) or not isinstance(pcrs, dict):
        raise EvidenceError("evidence-malformed", "TPM evidence needs 'ak_name' (hex) and 'pcrs' (object)")
    attest, signature = field(evidence, "quote"), field(evidence, "signature")
    assert attest is not None
    assert signature is not None
    ak = await trusted_ak(session, tenant_id, ak_name, enrolled_ak)
    try:
        pcr_values = pcr_values_from_hex(pcrs)
    except (ValueError, TypeError, AttributeError) as exc:
        raise EvidenceError("evidence-malformed", f"'pcrs' is not {{bank: {{index: hex}}}}: {exc}") from None
    expected = report_data_for(TEE_TPM, binding(nonce, ephemeral_jwk))
    result = verify_quote(attest, signature, ak, expected_extra_data=expected, pcr_values=pcr_values)
    claims = dict(result.claims)
    event_log = field(evidence, "event_log", required=False)
    if event_log is not None:
        claims.update(verify_event_log(event_log, result.pcrs).claims)
    if "loader_config" in evidence:
        # The loader's measured configuration, replayed into the quoted PCR: its fields as loader.* claims.
        from keyserver.evidence.tpm.loader_config import verify_loader_config

        claims.update(verify_loader_config(evidence["loader_config"], result.pcrs))
    return claims
