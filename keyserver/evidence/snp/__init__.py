"""AMD SEV-SNP evidence verifier (pure: report bytes + VCEK/VLEK + roots + time in, claims out).

Public API:

* :func:`verify_snp_report` - verify a raw 1184-byte report, return :data:`~keyserver.evidence.claims.Claims`
* :func:`verify_snp_certificate` - verify a VCEK/VLEK chain alone (no report)
* :func:`verify_snp_files` / :func:`parse_now` - file front-end for the CLI
  (``keyserver evidence verify --tee sev-snp``)
* :func:`parse_report`, :class:`AttestationReport`, :func:`decode_tcb` - the ATTESTATION_REPORT parser
* :func:`decode_report_input` - raw binary or hex text -> report bytes (strict)
* :class:`SnpRoots`, :class:`ProductRoots`, :func:`default_snp_roots` - trust anchors (ARKs pinned)
* :class:`ChainCache` - optional cache of verified VCEK/VLEK chains
* :class:`SnpProduct`, :class:`SigningKey`
"""

from keyserver.evidence.timeparse import parse_now

from .cache import ChainCache, VerifiedLeaf
from .inputs import decode_report_input
from .report import (
    REPORT_SIZE,
    SIGNED_LENGTH,
    AttestationReport,
    Cpuid,
    SignerInfo,
    SigningKey,
    SnpProduct,
    Tcb,
    decode_tcb,
    parse_report,
    product_from_cpuid,
)
from .trust import AMD_ARK_SHA256, ProductRoots, SnpRoots, TrustedCert, default_snp_roots
from .verify import verify_snp_certificate, verify_snp_files, verify_snp_report

__all__ = [
    "AMD_ARK_SHA256",
    "REPORT_SIZE",
    "SIGNED_LENGTH",
    "AttestationReport",
    "ChainCache",
    "Cpuid",
    "ProductRoots",
    "SignerInfo",
    "SigningKey",
    "SnpProduct",
    "SnpRoots",
    "Tcb",
    "TrustedCert",
    "VerifiedLeaf",
    "decode_report_input",
    "decode_tcb",
    "default_snp_roots",
    "parse_now",
    "parse_report",
    "product_from_cpuid",
    "verify_snp_certificate",
    "verify_snp_files",
    "verify_snp_report",
]
