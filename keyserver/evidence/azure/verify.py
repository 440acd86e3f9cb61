"""Azure confidential VM evidence (SEV-SNP or TDX behind the paravisor's vTPM): pure verification.

Bytes, roots and time in; claims out. The chain of trust, each link checked with its own failure reason:

1. the hardware report: the SEV-SNP report inside the HCL report (existing SNP verifier, VCEK chain to the
   pinned AMD roots), or the TD quote the guest sends alongside (existing TDX verifier, Intel root);
2. REPORT_DATA = hash(runtime data) as the HCL defines it (hash type from its header, rest zero)
   [``azure-report-data-mismatch``]; for TDX the TDREPORT inside the HCL report carries the same
   REPORTDATA as the quote [``azure-tdreport-mismatch``];
3. the vTPM AK is HCLAkPub from that runtime data: the hardware vouches for it, so it needs no enrolment;
4. the TPM quote is signed by that AK, its extraData is the expected nonce (keyserver's binding), its PCRs
   are the values sent (existing TPM verifier, ``tpm-*`` reasons); an event log, when sent, replays into
   them.

Claims: the hardware layer's (``snp.*`` or ``tdx.*``, its REPORT_DATA as ``snp.report_data`` /
``tdx.report_data``), the TPM layer's (``tpm.*``), and ``azure.*`` from the runtime data. The top-level
``report_data`` is the TPM quote's extraData: that is where the binding is (docs/binding.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.asymmetric import rsa

from keyserver.errors import EvidenceError
from keyserver.evidence.claims import TEE_AZURE_SNP_VTPM, TEE_AZURE_TDX_VTPM, Claims

from .hcl import REPORT_TYPE_SNP, REPORT_TYPE_TDX, TDREPORT_REPORT_DATA_OFFSET, HclReport, parse_hcl_report

if TYPE_CHECKING:
    from cryptography import x509

    from keyserver.evidence.snp import ChainCache, SnpRoots
    from keyserver.evidence.tdx.collateral import Collateral

TPM_PCR_COUNT = 24
_SHA256_BYTES = 32
# TPMT_SIGNATURE header for RSASSA-PKCS1-v1_5 with SHA-256 (TPM_ALG_RSASSA 0x0014, TPM_ALG_SHA256 0x000B).
_RSASSA_SHA256 = bytes.fromhex("0014000b")
_MIN_AK_BITS = 2048


def _b64url_int(value: str, what: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    except (ValueError, TypeError):
        raise EvidenceError("azure-hcl-malformed", f"the runtime data's {what} is not base64url") from None
    return int.from_bytes(raw, "big")


def ak_public_key(hcl: HclReport) -> rsa.RSAPublicKey:
    """HCLAkPub as a key; ``azure-ak-invalid`` if it is not a usable RSA key."""
    n = _b64url_int(hcl.runtime.ak_jwk["n"], "HCLAkPub modulus")
    e = _b64url_int(hcl.runtime.ak_jwk["e"], "HCLAkPub exponent")
    if n.bit_length() < _MIN_AK_BITS or e != 65537:
        raise EvidenceError("azure-ak-invalid", "HCLAkPub is not an RSA key of 2048 bits or more, e=65537")
    try:
        return rsa.RSAPublicNumbers(e, n).public_key()
    except ValueError:
        raise EvidenceError("azure-ak-invalid", "HCLAkPub is not a valid RSA public key") from None


def tpm_signature(signature: bytes) -> bytes:
    """The quote signature as a TPMT_SIGNATURE: Azure's tooling sends the raw 256-byte RSASSA signature,
    tpm2-tools sends the structure; both are accepted."""
    if signature[:4] == _RSASSA_SHA256 and len(signature) == 6 + int.from_bytes(signature[4:6], "big"):
        return signature
    return _RSASSA_SHA256 + len(signature).to_bytes(2, "big") + signature


def _check_report_data(hcl: HclReport, report_data: bytes) -> None:
    digest = hcl.variable_data_digest()
    expected = digest + bytes(len(report_data) - len(digest))
    if not hmac.compare_digest(expected, report_data):
        raise EvidenceError(
            "azure-report-data-mismatch",
            f"the hardware report's REPORT_DATA is {report_data.hex()} but the HCL runtime data hashes to "
            f"{digest.hex()} ({hcl.hash_type}): the runtime data (and the AK in it) is not the one the "
            "hardware attested",
        )


def _azure_claims(hcl: HclReport) -> Claims:
    config = hcl.runtime.vm_configuration

    def flag(name: str) -> bool | None:
        value = config.get(name)
        return value if isinstance(value, bool) else None

    vm_id = config.get("vmUniqueId")
    return {
        "azure.vm_id": vm_id.lower() if isinstance(vm_id, str) else None,
        "azure.secure_boot": flag("secure-boot"),
        "azure.tpm_enabled": flag("tpm-enabled"),
        "azure.tpm_persisted": flag("tpm-persisted"),
        "azure.console_enabled": flag("console-enabled"),
        "azure.user_data": hcl.runtime.user_data.lower() if hcl.runtime.user_data is not None else None,
        "azure.runtime_data_sha256": hashlib.sha256(hcl.variable_data).hexdigest(),
    }


def _verify_tpm_layer(
    hcl: HclReport,
    quote: bytes,
    signature: bytes,
    pcrs: Sequence[bytes],
    expected_nonce: bytes,
    event_log: bytes | None,
) -> Claims:
    from keyserver.evidence.tpm.eventlog import verify_event_log
    from keyserver.evidence.tpm.quote import AkPublic, verify_quote

    if len(pcrs) != TPM_PCR_COUNT or any(len(p) != _SHA256_BYTES for p in pcrs):
        raise EvidenceError("azure-pcrs-invalid", "the vTPM evidence carries the 24 SHA-256 PCR values")
    ak = AkPublic.from_public_key(ak_public_key(hcl))
    result = verify_quote(
        quote,
        tpm_signature(signature),
        ak,
        expected_extra_data=expected_nonce,
        pcr_values={"sha256": dict(enumerate(pcrs))},
        accept_bare_ak=True,  # the hardware report vouches for HCLAkPub (step 2)
    )
    claims = dict(result.claims)
    if event_log is not None:
        claims.update(verify_event_log(event_log, result.pcrs).claims)
    return claims


def verify_azure_snp_vtpm(
    hcl_report: bytes,
    *,
    vcek: bytes | None,
    quote: bytes,
    signature: bytes,
    pcrs: Sequence[bytes],
    expected_nonce: bytes,
    now: datetime,
    event_log: bytes | None = None,
    roots: SnpRoots | None = None,
    chain_cache: ChainCache | None = None,
) -> Claims:
    """Verify Azure SEV-SNP CVM evidence. ``vcek``: the VCEK (PEM bundle as THIM returns it, or DER);
    ``quote``/``signature``: TPMS_ATTEST and its signature by HCLAkPub; ``pcrs``: the 24 SHA-256 PCRs;
    ``expected_nonce``: what the quote's extraData must be."""
    from keyserver.evidence.snp import verify_snp_report

    hcl = parse_hcl_report(hcl_report)
    if hcl.report_type != REPORT_TYPE_SNP:
        raise EvidenceError("azure-hcl-type-mismatch", "the HCL report holds a TDX report, not SEV-SNP")
    snp = verify_snp_report(
        hcl.hardware_report, vcek_or_vlek=vcek, product=None, now=now, roots=roots, chain_cache=chain_cache
    )
    report_data = bytes.fromhex(str(snp["report_data"]))
    _check_report_data(hcl, report_data)
    tpm = _verify_tpm_layer(hcl, quote, signature, pcrs, expected_nonce, event_log)
    claims: Claims = {k: v for k, v in snp.items() if k.startswith("snp.")}
    claims["snp.report_data"] = report_data.hex()
    claims.update({k: v for k, v in tpm.items() if k.startswith("tpm.")})
    claims.update(_azure_claims(hcl))
    claims.update({"tee": TEE_AZURE_SNP_VTPM, "debug": snp["debug"], "report_data": tpm["report_data"]})
    return claims


def verify_azure_tdx_vtpm(
    hcl_report: bytes,
    *,
    td_quote: bytes,
    quote: bytes,
    signature: bytes,
    pcrs: Sequence[bytes],
    expected_nonce: bytes,
    now: datetime,
    event_log: bytes | None = None,
    collateral: Collateral | None = None,
    root: x509.Certificate | None = None,
) -> Claims:
    """Verify Azure TDX CVM evidence: as :func:`verify_azure_snp_vtpm` with the TD quote (and optional
    Intel collateral) as the hardware layer."""
    from keyserver.evidence.tdx import verify_tdx_quote

    hcl = parse_hcl_report(hcl_report)
    if hcl.report_type != REPORT_TYPE_TDX:
        raise EvidenceError("azure-hcl-type-mismatch", "the HCL report holds a SEV-SNP report, not TDX")
    tdx = verify_tdx_quote(td_quote, now=now, collateral=collateral, root=root)
    report_data = bytes.fromhex(str(tdx["report_data"]))
    _check_report_data(hcl, report_data)
    tdreport_data = hcl.hardware_report[TDREPORT_REPORT_DATA_OFFSET : TDREPORT_REPORT_DATA_OFFSET + 64]
    if not hmac.compare_digest(tdreport_data, report_data):
        raise EvidenceError(
            "azure-tdreport-mismatch",
            "the TDREPORT in the HCL report does not carry the TD quote's REPORTDATA: the quote was not made "
            "for this HCL report",
        )
    tpm = _verify_tpm_layer(hcl, quote, signature, pcrs, expected_nonce, event_log)
    claims: Claims = {k: v for k, v in tdx.items() if k.startswith("tdx.")}
    claims["tdx.report_data"] = report_data.hex()
    claims.update({k: v for k, v in tpm.items() if k.startswith("tpm.")})
    claims.update(_azure_claims(hcl))
    claims.update({"tee": TEE_AZURE_TDX_VTPM, "debug": tdx["debug"], "report_data": tpm["report_data"]})
    return claims
